"""sigmoid_attn_with_kvcache: values against a float64 reference over each sequence's keys, the
cache after the append, opcheck, torch.compile, decode vs one causal forward, and bad input.

CPU everywhere; the CUDA tests at the end skip without a GPU.
"""

import math

import pytest
import torch

import flashsigmoid as fs
from helpers import BOUNDS
from sigmoid_ref import attn_dense, rel_l2


def make_cache(B, cached, Nq, Hkv, D, dtype, *, page_size=0, batch_idx=False, append=True, spare=5,
               device="cpu"):
    """A cache holding `cached[b]` random keys per sequence; unused rows and pages hold NaN.

    Returns (k_cache, v_cache, seqlens, block_table, cache_batch_idx, k_new, v_new, positions) where
    positions[b] is a function t -> (cache dim-0 index, dim-1 index) of key t of sequence b."""
    keys = [n + (Nq if append else 0) for n in cached]
    cap = max(keys) + spare
    gen = torch.Generator().manual_seed(int(torch.randint(0, 2**31, ()).item()))
    if page_size:
        max_pages = -(-cap // page_size)
        used = [-(-n // page_size) for n in keys]
        num_pages = sum(used) + 2
        perm = torch.randperm(num_pages, generator=gen).tolist()
        table = torch.full((B, max_pages), -1, dtype=torch.int32)
        pages, nxt = [], 0
        for b in range(B):
            pages.append(perm[nxt:nxt + used[b]])
            table[b, :used[b]] = torch.tensor(pages[b], dtype=torch.int32)
            nxt += used[b]
        shape = (num_pages, page_size, Hkv, D)
        positions = [lambda t, pg=pages[b]: (pg[t // page_size], t % page_size) for b in range(B)]
        bidx = None
    else:
        rows = B + 2 if batch_idx else B
        perm = torch.randperm(rows, generator=gen)[:B].tolist() if batch_idx else list(range(B))
        shape = (rows, cap, Hkv, D)
        positions = [lambda t, r=perm[b]: (r, t) for b in range(B)]
        table = None
        bidx = torch.tensor(perm, dtype=torch.int32) if batch_idx else None
    k_cache = torch.full(shape, float("nan"), dtype=dtype)
    v_cache = torch.full(shape, float("nan"), dtype=dtype)
    for b in range(B):
        for t in range(cached[b]):
            r, s = positions[b](t)
            k_cache[r, s] = torch.randn(Hkv, D).to(dtype)
            v_cache[r, s] = torch.randn(Hkv, D).to(dtype)
    seqlens = torch.tensor(cached, dtype=torch.int32)
    k_new = torch.randn(B, Nq, Hkv, D).to(dtype) if append else None
    v_new = torch.randn(B, Nq, Hkv, D).to(dtype) if append else None
    to = (lambda x: None if x is None else x.to(device))
    return (to(k_cache), to(v_cache), to(seqlens), to(table), to(bidx), to(k_new), to(v_new), positions)


def gather(cache, positions, n):
    """[n, H, D] keys of one sequence."""
    return torch.stack([cache[positions(t)] for t in range(n)]) if n else cache.new_empty((0,) + cache.shape[2:])


def expected_cache(cache, new, seqlens, positions):
    out = cache.clone()
    if new is not None:
        for b in range(new.shape[0]):
            for i in range(new.shape[1]):
                out[positions[b](int(seqlens[b]) + i)] = new[b, i]
    return out


def reference(q, k_after, v_after, seqlens, positions, append, *, alibi_slopes=None, **kw):
    B, Nq = q.shape[:2]
    outs = []
    for b in range(B):
        n = int(seqlens[b]) + (Nq if append else 0)
        kb = gather(k_after.cpu(), positions[b], n)[None].double()
        vb = gather(v_after.cpu(), positions[b], n)[None].double()
        a = alibi_slopes
        if a is not None:
            a = a.cpu()[b] if a.dim() == 2 else a.cpu()
        bias = kw.pop("bias")
        kw["bias"] = bias.cpu().double() if isinstance(bias, torch.Tensor) else bias
        outs.append(attn_dense(q[b:b + 1].cpu().double(), kb, vb, alibi_slopes=a, **kw))
    return torch.cat(outs)


CASES = [
    dict(id="dense-decode", cached=[37, 5], Nq=1, Hq=4, Hkv=2),
    dict(id="dense-batch-idx-append3", cached=[20, 0, 61], Nq=3, Hq=4, Hkv=1, batch_idx=True),
    dict(id="dense-no-append", cached=[20, 33], Nq=2, Hq=2, Hkv=2, append=False, causal=True),
    dict(id="paged1", cached=[30, 3], Nq=1, Hq=4, Hkv=2, page_size=1),
    dict(id="paged16-causal-append5", cached=[100, 0], Nq=5, Hq=8, Hkv=2, page_size=16, causal=True),
    dict(id="paged64-alibi-batch", cached=[70, 129], Nq=2, Hq=4, Hkv=4, page_size=64, causal=True,
         alibi="batch"),
    dict(id="paged256-window-head-bias", cached=[300, 40], Nq=4, Hq=4, Hkv=2, page_size=256, window=(30, 0),
         bias="head", alibi="head"),
    dict(id="paged16-splits3", cached=[400, 90], Nq=2, Hq=4, Hkv=1, page_size=16, causal=True, num_splits=3),
]


def run_case(case, dtype, device="cpu", D=64):
    c = dict(case)
    B = len(c["cached"])
    Nq, Hq, Hkv = c["Nq"], c["Hq"], c["Hkv"]
    append = c.get("append", True)
    kc, vc, seqlens, table, bidx, kn, vn, pos = make_cache(
        B, c["cached"], Nq, Hkv, D, dtype, page_size=c.get("page_size", 0), batch_idx=c.get("batch_idx", False),
        append=append, device=device)
    q = torch.randn(B, Nq, Hq, D).to(dtype).to(device)
    bias = (-1.0 - 3.0 * torch.rand(Hq)).to(device) if c.get("bias") == "head" else -2.5
    alibi = None
    if c.get("alibi"):
        alibi = (0.02 + 0.3 * torch.rand((Hq,) if c["alibi"] == "head" else (B, Hq))).to(device)
    kw = dict(causal=c.get("causal", False), window=c.get("window", (-1, -1)), bias=bias)
    k_exp = expected_cache(kc.cpu(), None if kn is None else kn.cpu(), seqlens.cpu(), pos)
    v_exp = expected_cache(vc.cpu(), None if vn is None else vn.cpu(), seqlens.cpu(), pos)
    out = fs.sigmoid_attn_with_kvcache(q, kc, vc, kn, vn, cache_seqlens=seqlens, block_table=table,
                                       cache_batch_idx=bidx, alibi_slopes=alibi,
                                       num_splits=c.get("num_splits", 0), **kw)
    assert out.shape == q.shape and out.dtype == q.dtype and out.device == q.device
    ref = reference(q, k_exp, v_exp, seqlens.cpu(), pos, append, alibi_slopes=alibi, **kw)
    err = rel_l2(out.cpu(), ref)
    assert err <= BOUNDS[dtype], f"{c['id']} {dtype}: rel L2 error {err}"
    # The cache after the call: the appended rows, every other byte (NaN included) unchanged.
    assert torch.equal(kc.cpu().view(torch.uint8 if dtype != torch.float64 else torch.int64),
                       k_exp.view(torch.uint8 if dtype != torch.float64 else torch.int64))
    assert torch.equal(vc.cpu().view(torch.uint8 if dtype != torch.float64 else torch.int64),
                       v_exp.view(torch.uint8 if dtype != torch.float64 else torch.int64))
    return err


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("case", CASES, ids=lambda c: c["id"])
def test_values_and_cache(case, dtype):
    run_case(case, dtype)


@pytest.mark.parametrize("dtype", [torch.float16, torch.float64], ids=["fp16", "fp64"])
def test_other_dtypes(dtype):
    run_case(CASES[4], dtype, D=32)


def test_decode_matches_causal_forward():
    """Prefill a prompt, then decode one token per call into a paged cache: the rows equal one causal
    forward over the whole sequence with the same scalar bias (GQA, ALiBi, a window)."""
    B, N, prompt, Hq, Hkv, D, ps = 2, 40, 7, 4, 2, 64, 16
    q, k, v = torch.randn(B, N, Hq, D), torch.randn(B, N, Hkv, D), torch.randn(B, N, Hkv, D)
    alibi = 0.05 + 0.2 * torch.rand(Hq)
    kw = dict(causal=True, bias=-math.log(128.0), window=(12, -1), alibi_slopes=alibi)
    full = fs.sigmoid_attn(q, k, v, **kw)
    max_pages = -(-N // ps)
    k_cache = torch.full((B * max_pages, ps, Hkv, D), float("nan"))
    v_cache = torch.full_like(k_cache, float("nan"))
    table = torch.arange(B * max_pages, dtype=torch.int32).view(max_pages, B).t().contiguous().flip(0)
    got, i0 = [], 0
    while i0 < N:
        n = prompt if i0 == 0 else 1
        seqlens = torch.full((B,), i0, dtype=torch.int32)
        got.append(fs.sigmoid_attn_with_kvcache(q[:, i0:i0 + n], k_cache, v_cache, k[:, i0:i0 + n], v[:, i0:i0 + n],
                                                cache_seqlens=seqlens, block_table=table, **kw))
        i0 += n
    err = rel_l2(torch.cat(got, dim=1), full.double())
    assert err <= BOUNDS[torch.float32], err


def _small_problem(append=True):
    B, Nq, Hq, Hkv, D = 2, 2, 4, 2, 32
    kc, vc, seqlens, table, _, kn, vn, _ = make_cache(B, [9, 17], Nq, Hkv, D, torch.float32, page_size=4,
                                                      append=append)
    q = torch.randn(B, Nq, Hq, D)
    return q, kc, vc, kn, vn, seqlens, table


def test_opcheck():
    q, kc, vc, kn, vn, seqlens, table = _small_problem()
    kc = torch.nan_to_num(kc)  # opcheck compares runs; NaN != NaN
    vc = torch.nan_to_num(vc)
    bias = torch.full((4,), -2.0)
    args = (q, kc, vc, kn, vn, seqlens, table, None, True, None, fs._C.BIAS_PER_HEAD, 0.0, bias, -1, -1, None, 0)
    torch.library.opcheck(torch.ops.flashsigmoid.fwd_kvcache.default, args)
    args = (q, kc, vc, None, None, seqlens, table, None, False, 0.2, fs._C.BIAS_SCALAR, -1.0, None, 3, -1, None, 2)
    torch.library.opcheck(torch.ops.flashsigmoid.fwd_kvcache.default, args)


def test_compile_fullgraph_decode_step():
    torch._dynamo.reset()
    q, kc, vc, kn, vn, seqlens, table = _small_problem()
    kc2, vc2 = kc.clone(), vc.clone()

    def step(q, kc, vc, kn, vn, seqlens, table):
        out = fs.sigmoid_attn_with_kvcache(q, kc, vc, kn, vn, cache_seqlens=seqlens, block_table=table,
                                           causal=True, bias=-2.0)
        return out * 2.0

    eager = step(q, kc, vc, kn, vn, seqlens, table)
    compiled = torch.compile(step, backend="aot_eager", fullgraph=True)
    got = compiled(q, kc2, vc2, kn, vn, seqlens, table)
    torch._dynamo.reset()
    assert rel_l2(got, eager) <= BOUNDS[torch.float32]
    # The compiled graph kept the op's mutation of the caches.
    assert torch.equal(torch.nan_to_num(kc2), torch.nan_to_num(kc))
    assert torch.equal(torch.nan_to_num(vc2), torch.nan_to_num(vc))


class _CountingOp:
    """Stands in for the registered op in flashsigmoid._kvcache, counting the calls that take it."""

    def __init__(self, op):
        self.op, self.calls = op, 0

    def __call__(self, *args):
        self.calls += 1
        return self.op(*args)


class _PassThroughMode(torch.utils._python_dispatch.TorchDispatchMode):
    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        return func(*args, **(kwargs or {}))


def test_eager_calls_skip_the_dispatcher_only_when_nothing_watches(monkeypatch):
    """Plain eager calls go straight to the implementation (the dispatcher's host time is a large share
    of a decode step); under a dispatch mode, autocast or the profiler the registered op runs, and
    both paths give the same bits and the same caches."""
    from flashsigmoid import _kvcache
    counting = _CountingOp(_kvcache._fwd_kvcache)
    monkeypatch.setattr(_kvcache, "_fwd_kvcache", counting)
    q, kc, vc, kn, vn, seqlens, table = _small_problem()
    kc, vc = torch.nan_to_num(kc), torch.nan_to_num(vc)

    def call(kc, vc):
        return fs.sigmoid_attn_with_kvcache(q, kc, vc, kn, vn, cache_seqlens=seqlens, block_table=table,
                                            causal=True, bias=-2.0, num_splits=2)

    kc0, vc0 = kc.clone(), vc.clone()
    direct = call(kc0, vc0)
    assert counting.calls == 0
    watched = []
    for name, ctx in (("dispatch mode", _PassThroughMode()), ("autocast", torch.autocast("cpu")),
                      ("profiler", torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]))):
        kc1, vc1 = kc.clone(), vc.clone()
        before = counting.calls
        with ctx as prof:
            out = call(kc1, vc1)
        assert counting.calls == before + 1, name
        assert torch.equal(out, direct), name
        assert torch.equal(kc1, kc0) and torch.equal(vc1, vc0), name
        watched.append(prof)
    assert any("flashsigmoid::fwd_kvcache" in e.name for e in watched[2].events())

    # torch.jit.trace records the op (a direct call would leave only the output's allocation in the trace).
    before = counting.calls
    traced = torch.jit.trace(lambda q_: fs.sigmoid_attn_with_kvcache(
        q_, kc.clone(), vc.clone(), cache_seqlens=seqlens, block_table=table, causal=True, bias=-2.0), (q,),
        check_trace=False)
    assert counting.calls == before + 1
    assert torch.equal(traced(q), fs.sigmoid_attn_with_kvcache(q, kc.clone(), vc.clone(), cache_seqlens=seqlens,
                                                                block_table=table, causal=True, bias=-2.0))
    # All on meta: the op's fake kernel propagates the shape.
    meta = fs.sigmoid_attn_with_kvcache(q.to("meta"), kc.to("meta"), vc.to("meta"), kn.to("meta"), vn.to("meta"),
                                        cache_seqlens=seqlens.to("meta"), block_table=table.to("meta"), bias=-2.0)
    assert meta.is_meta and meta.shape == q.shape


def _bytes(t):
    return t.view(torch.uint8).clone()


@pytest.mark.parametrize("breakage,match", [
    ("negative_seqlen", "cache_seqlens\\[1\\] is -1"),
    ("table_too_short", "needs .* keys"),
    ("page_out_of_range", "outside the cache's"),
    ("shared_written_page", "must not be shared"),
    ("k_without_v", "was given without v"),
    ("dtype", "k_cache has dtype float64"),
    ("seqlens_dtype", "cache_seqlens must be int32"),
    ("splits", "num_splits is -2"),
    ("table_int64", "block_table has dtype int64, which flashsigmoid does not take"),
    ("q_rank5", "q has rank 5 \\[2, 2, 4, 32, 1\\]; accepted: rank 4"),
])
def test_bad_input_leaves_cache_unchanged(breakage, match):
    q, kc, vc, kn, vn, seqlens, table = _small_problem()
    kw = dict(cache_seqlens=seqlens, block_table=table, bias=-1.0)
    args = [q, kc, vc, kn, vn]
    if breakage == "negative_seqlen":
        seqlens[1] = -1
    elif breakage == "table_too_short":
        kw["block_table"] = table[:, :3].contiguous()
    elif breakage == "page_out_of_range":
        table[0, 1] = kc.shape[0]
    elif breakage == "shared_written_page":
        table[0, 2] = table[1, 4]  # both sequences append into this page (positions 9-10 and 17-18)
    elif breakage == "k_without_v":
        args[4] = None
    elif breakage == "dtype":
        args[1] = kc.double()
    elif breakage == "seqlens_dtype":
        kw["cache_seqlens"] = seqlens.float()
    elif breakage == "splits":
        kw["num_splits"] = -2
    elif breakage == "table_int64":
        kw["block_table"] = table.long()
    elif breakage == "q_rank5":
        args[0] = q.unsqueeze(-1)
    before = (_bytes(kc), _bytes(vc))
    with pytest.raises(fs.FlashSigmoidError, match=match):
        fs.sigmoid_attn_with_kvcache(*args, **kw)
    assert torch.equal(_bytes(kc), before[0]) and torch.equal(_bytes(vc), before[1])


def test_registration():
    """Tagged PT2-compliant (torch.compile may insist); a meta tensor among real ones is an error, not an
    uninitialised output from the fake kernel: through the registered op (its fake kernel's check) and
    through the public function's direct call (the C++ validation)."""
    assert torch.Tag.pt2_compliant_tag in torch.ops.flashsigmoid.fwd_kvcache.default.tags
    q, kc, vc, kn, vn, seqlens, table = _small_problem()
    args = (q, kc.to("meta"), vc, None, None, seqlens, table, None, False, None, fs._C.BIAS_SCALAR, -1.0, None,
            -1, -1, None, 0)
    with pytest.raises(fs.FlashSigmoidError, match="k_cache is on meta but q is on cpu"):
        torch.ops.flashsigmoid.fwd_kvcache.default(*args)
    with pytest.raises(fs.FlashSigmoidError, match="k_cache is on device type 'meta'; accepted: cpu, cuda"):
        fs.sigmoid_attn_with_kvcache(q, kc.to("meta"), vc, cache_seqlens=seqlens, block_table=table, bias=-1.0)


def test_bias_is_required():
    q, kc, vc, kn, vn, seqlens, table = _small_problem()
    with pytest.raises(TypeError, match="bias"):
        fs.sigmoid_attn_with_kvcache(q, kc, vc, kn, vn, cache_seqlens=seqlens, block_table=table)
    with pytest.raises(TypeError, match="trained with"):
        fs.sigmoid_attn_with_kvcache(q, kc, vc, kn, vn, cache_seqlens=seqlens, block_table=table, bias=None)


def test_not_differentiable_and_versions_bumped():
    """An inference op: a backward through it fails loudly (no silently missing gradient); appending
    bumps the caches' version counters, attending alone does not write them."""
    q, kc, vc, kn, vn, seqlens, table = _small_problem()
    kw = dict(cache_seqlens=seqlens, block_table=table, bias=-2.0)
    qg = q.clone().requires_grad_()
    out = fs.sigmoid_attn_with_kvcache(qg, kc, vc, **kw)
    assert out.requires_grad
    fs.sigmoid_attn_with_kvcache(qg, kc, vc, **kw).mul_(2.0)  # not a view: in-place ops are fine
    with pytest.raises(fs.FlashSigmoidError, match="not differentiable"):
        out.sum().backward()
    with torch.no_grad():
        assert not fs.sigmoid_attn_with_kvcache(qg, kc, vc, **kw).requires_grad
    expect = fs.sigmoid_attn_with_kvcache(q, kc.clone(), vc.clone(), **kw)
    assert torch.equal(torch.nan_to_num(out.detach()), torch.nan_to_num(expect))

    versions = (kc._version, vc._version)
    fs.sigmoid_attn_with_kvcache(q, kc, vc, **kw)
    assert (kc._version, vc._version) == versions
    fs.sigmoid_attn_with_kvcache(q, kc, vc, kn, vn, **kw)
    assert kc._version > versions[0] and vc._version > versions[1]


# ---------------------------------------------------------------------------------------------
# CUDA (skipped without a GPU)
# ---------------------------------------------------------------------------------------------

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="no GPU: torch.cuda.is_available() is False")


def _skip_unbuilt(D):
    if D not in fs.cuda_head_dims():
        pytest.skip(f"head dim {D} is not built (built: {fs.cuda_head_dims()})")


@cuda
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
@pytest.mark.parametrize("D", [64, 128, 256])
@pytest.mark.parametrize("case", CASES, ids=lambda c: c["id"])
def test_cuda_values_and_cache(case, dtype, D):
    _skip_unbuilt(D)
    run_case(case, dtype, device="cuda", D=D)


@cuda
def test_cuda_graph_capture_decode():
    """A decode step captured in a CUDA graph and replayed for several tokens gives the eager results."""
    built = [D for D in (64, 128, 256) if D in fs.cuda_head_dims()]  # the KV-cache kernel's head dims
    if not built:
        pytest.skip(f"no KV-cache head dim is built (built: {fs.cuda_head_dims()})")
    D = built[0]
    B, Hq, Hkv, ps, steps, dt = 2, 8, 2, 16, 5, torch.bfloat16
    k_cache = torch.randn(64, ps, Hkv, D, device="cuda", dtype=dt)
    v_cache = torch.randn_like(k_cache)
    k_ref, v_ref = k_cache.clone(), v_cache.clone()
    table = torch.randperm(64, device="cuda", dtype=torch.int32)[:B * 32].view(B, 32)
    seqlens = torch.tensor([100, 37], dtype=torch.int32, device="cuda")
    q = torch.randn(B, 1, Hq, D, device="cuda", dtype=dt)
    kn, vn = torch.randn(B, 1, Hkv, D, device="cuda", dtype=dt), torch.randn(B, 1, Hkv, D, device="cuda", dtype=dt)
    kw = dict(block_table=table, causal=True, bias=-3.0)

    def step():
        return fs.sigmoid_attn_with_kvcache(q, k_cache, v_cache, kn, vn, cache_seqlens=seqlens, **kw)

    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        step()  # warm-up (appends at 100 / 37), outside the graph
    torch.cuda.current_stream().wait_stream(s)
    seqlens += 1
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        out = step()
    # Eager replay on a copy of the cache, one step at a time.
    fs.sigmoid_attn_with_kvcache(q, k_ref, v_ref, kn, vn, cache_seqlens=seqlens - 1, **kw)
    for i in range(steps):
        seqlens_now = seqlens.clone()
        g.replay()
        ref = fs.sigmoid_attn_with_kvcache(q, k_ref, v_ref, kn, vn, cache_seqlens=seqlens_now, **kw)
        torch.cuda.synchronize()
        assert torch.equal(out, ref), f"step {i}"
        seqlens += 1


def test_generate_example_runs():
    """examples/python/generate.py asserts cached decode == full recomputation at every step."""
    import os
    import subprocess
    import sys
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    r = subprocess.run([sys.executable, os.path.join(root, "examples", "python", "generate.py"), "--tokens", "6"],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "every step matched" in r.stdout


def test_decode_bench_smoke(tmp_path):
    """bench/decode_bench.py runs end to end (two tiny shapes) and writes its tables."""
    import json
    import os
    import subprocess
    import sys
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    r = subprocess.run([sys.executable, os.path.join(root, "bench", "decode_bench.py"), "--device", "cpu", "--smoke",
                        "--reps", "2", "--warmup", "1", "--out", str(tmp_path), "--name", "smoke"],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    rows = json.load(open(tmp_path / "smoke.json"))["rows"]
    assert len(rows) == 2 and all(row["fs_ms"] and row["fs_ms"] > 0 for row in rows), rows
    assert "| B | N |" in (tmp_path / "smoke.md").read_text()


def test_op_overhead_smoke():
    """bench/op_overhead.py runs and times every layer (few calls)."""
    import os
    import subprocess
    import sys
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    r = subprocess.run([sys.executable, os.path.join(root, "bench", "op_overhead.py"), "--calls", "20",
                        "--rounds", "2"], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    for layer in ("public", "dispatch", "op", "C++"):
        assert any(line.split()[:1] == [layer] and line.endswith("us per call") for line in r.stdout.splitlines()), \
            r.stdout
