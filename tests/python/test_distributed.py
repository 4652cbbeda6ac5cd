"""flashsigmoid.distributed on the CPU: Gloo process groups of 1 to 4 spawned processes.

One spawn of 4 processes (starting processes and importing torch is most of the time on a small
machine) makes groups of 1, 2, 3 and 4 ranks (the 4: the default world group) and in each runs
every case (ring and all-to-all, causal and not, both layouts, GQA, ALiBi, windows, the three
bias kinds, fp32 and bf16; packed varlen input through the all-to-all), then the error cases, then one more good call (the group still works
after the errors). Each case compares the gathered output and gradients with the single-process
flashsigmoid result and with the float64 reference. The 2-rank group also runs bench/cp_bench.py's
measurement in its tiny CPU configuration. On a machine with 2 GPUs the same cases run once more
over NCCL (groups of 1 and 2, bf16). The parent kills the processes when they run past the time
limit, so a hang fails the tests instead of blocking.
"""

import json
import math
import queue
import socket
import traceback

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from helpers import BOUNDS, load_bench
from sigmoid_ref import attn_dense, attn_varlen, rel_l2

TIME_LIMIT_S = 200
BENCH_ARGS = ["unused-out-dir", "--device", "cpu", "--world", "2", "--n", "128", "--heads", "2", "--dim", "32",
              "--dtype", "fp32", "--reps", "1", "--warmup", "0"]
ROWS_PER_CHUNK = 20  # rows per zigzag chunk: 40 per rank


# (id, function, dtype, causal, layout, bias kind, alibi kind, window, Hq, Hkv)
CASES = [
    ("ring-noncausal-gqa", "ring", torch.float32, False, None, "default", None, (-1, -1), 6, 2),
    ("ring-causal-zigzag-headbias", "ring", torch.float32, True, None, "head", None, (-1, -1), 6, 2),
    ("ring-causal-contiguous-alibi", "ring", torch.float32, True, "contiguous", "scalar", "head", (-1, -1), 6, 6),
    ("ring-causal-window-alibi-batch", "ring", torch.float32, True, "zigzag", "default", "batch", (50, -1), 6, 3),
    ("ring-window-both-sides", "ring", torch.float32, False, "contiguous", "head", None, (30, 17), 6, 2),
    ("ring-causal-bf16", "ring", torch.bfloat16, True, None, "default", None, (-1, -1), 6, 2),
    ("ulysses-causal-gqa-headbias", "ulysses", torch.float32, True, "contiguous", "head", None, (-1, -1), 12, 4),
    ("ulysses-zigzag-alibi", "ulysses", torch.float32, False, "zigzag", "default", "head", (-1, -1), 12, 12),
    ("ulysses-mqa-bf16", "ulysses", torch.bfloat16, True, "contiguous", "scalar", None, (-1, -1), 12, 1),
]

# packed varlen through the all-to-all: (id, dtype, causal, bias kind, per-sequence ALiBi, window, Hq, Hkv)
VARLEN_CASES = [
    ("ulysses-varlen-causal-gqa-headbias", torch.float32, True, "head", False, (-1, -1), 12, 4),
    ("ulysses-varlen-alibi-window", torch.float32, False, "default", True, (9, 5), 12, 12),
    ("ulysses-varlen-mqa-bf16", torch.bfloat16, True, "scalar", False, (-1, -1), 12, 1),
]


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _head_dims(device):
    """(head_dim of the cases, another supported one) per device: the GPU check builds D 64 and 128."""
    return (32, 64) if device == "cpu" else (64, 128)


def _full_inputs(seed, world, dtype, Hq, Hkv, device):
    g = torch.Generator().manual_seed(seed)
    B, D, N = 2, _head_dims(device)[0], 2 * ROWS_PER_CHUNK * world
    q = torch.randn(B, N, Hq, D, generator=g).to(device, dtype)
    k = torch.randn(B, N, Hkv, D, generator=g).to(device, dtype)
    v = torch.randn(B, N, Hkv, D, generator=g).to(device, dtype)
    dout = torch.randn(B, N, Hq, D, generator=g).to(device, dtype)
    head_bias = (-2.0 - torch.rand(Hq, generator=g)).to(device)
    slopes = {"head": 0.02 + 0.1 * torch.rand(Hq, generator=g), "batch": 0.02 + 0.1 * torch.rand(B, Hq, generator=g)}
    return q, k, v, dout, head_bias, {n: t.to(device) for n, t in slopes.items()}


def _bias_value(kind, head_bias):
    return {"default": None, "scalar": -3.25, "head": head_bias}[kind]


def _same_on_every_rank(grad, world, group, cid):
    """The learnable bias's gradient is all-reduced: every rank must hold the same bits."""
    every = [torch.empty_like(grad) for _ in range(world)]
    dist.all_gather(every, grad, group=group)
    spread = max((e - grad).abs().max().item() for e in every)
    assert spread == 0.0, f"{cid}: the bias gradient differs between ranks by {spread}"
    return grad


def _run_case(case, seed, group, device="cpu"):
    import flashsigmoid as fs
    import flashsigmoid.distributed as fsd

    rank, world = dist.get_rank(group), dist.get_world_size(group)

    cid, fn, dtype, causal, layout, bias_kind, alibi_kind, window, Hq, Hkv = case
    if device != "cpu" and dtype == torch.float32:
        dtype = torch.bfloat16  # the CUDA kernels take fp16 / bf16
    q, k, v, dout, head_bias, slopes = _full_inputs(seed, world, dtype, Hq, Hkv, device)
    alibi = slopes[alibi_kind] if alibi_kind else None
    lay = layout or ("zigzag" if causal and fn == "ring" else "contiguous")
    kw = dict(causal=causal, window=window, alibi_slopes=alibi)

    # this rank's part, as leaves
    parts = [fsd.shard_sequence(t, group, lay).detach().clone().requires_grad_() for t in (q, k, v)]
    bias = _bias_value(bias_kind, head_bias)
    if isinstance(bias, torch.Tensor):
        bias = bias.clone().requires_grad_()
    attn = fsd.ring_attn if fn == "ring" else fsd.ulysses_attn
    out = attn(*parts, bias=bias, layout=lay, group=group, **kw)
    out.backward(fsd.shard_sequence(dout, group, lay))
    got = {"out": out.detach()}
    got.update({n: t.grad for n, t in zip(("dq", "dk", "dv"), parts)})
    got = {n: fsd.gather_sequence(t, group, lay) for n, t in got.items()}
    if isinstance(bias, torch.Tensor):
        got["dbias"] = _same_on_every_rank(bias.grad, world, group, cid)
    if rank != 0:
        return None

    # the single-process result and the float64 reference of the whole sequence
    def single(run, cast, dev):
        leaves = [t.detach().to(dev, cast).clone().requires_grad_() for t in (q, k, v)]
        b = bias.detach().to(dev, torch.float64 if cast == torch.float64 else torch.float32).clone().requires_grad_() \
            if isinstance(bias, torch.Tensor) else bias
        o = run(*leaves, bias=b, **{**kw, "alibi_slopes": None if alibi is None else alibi.to(dev)})
        o.backward(dout.to(dev, cast))
        res = {"out": o.detach(), "dq": leaves[0].grad, "dk": leaves[1].grad, "dv": leaves[2].grad}
        if isinstance(b, torch.Tensor):
            res["dbias"] = b.grad
        return {n: t.cpu() for n, t in res.items()}

    one = single(fs.sigmoid_attn, dtype, device)
    ref = single(attn_dense, torch.float64, "cpu")
    got = {n: t.cpu() for n, t in got.items()}
    bound = BOUNDS[dtype]
    errs = {}
    for name, t in got.items():
        errs[name] = (rel_l2(t, one[name]), rel_l2(t, ref[name]), rel_l2(one[name], ref[name]))
    bad = {n: e for n, e in errs.items() if not (e[0] <= bound and e[1] <= max(bound, 2 * e[2]))}
    return cid, errs, bad


def _varlen_lens(g, world):
    """Odd random lengths and a 1, their sum a multiple of the world size (sequences cross ranks)."""
    lens = [2 * int(x) + 1 for x in torch.randint(0, 20, (4,), generator=g)] + [1]
    lens[2] += (-sum(lens)) % world
    return lens


def _run_varlen_case(case, seed, group, device="cpu"):
    import flashsigmoid as fs
    import flashsigmoid.distributed as fsd

    rank, world = dist.get_rank(group), dist.get_world_size(group)
    cid, dtype, causal, bias_kind, with_alibi, window, Hq, Hkv = case
    if device != "cpu" and dtype == torch.float32:
        dtype = torch.bfloat16
    g = torch.Generator().manual_seed(seed)
    lens = _varlen_lens(g, world)
    total, D = sum(lens), _head_dims(device)[0]
    cu = torch.tensor([0] + lens, dtype=torch.int32).cumsum(0, dtype=torch.int32)
    q, dout = (torch.randn(total, Hq, D, generator=g).to(device, dtype) for _ in range(2))
    k, v = (torch.randn(total, Hkv, D, generator=g).to(device, dtype) for _ in range(2))
    bias = _bias_value(bias_kind, (-2.0 - torch.rand(Hq, generator=g)).to(device))
    alibi = (0.02 + 0.1 * torch.rand(len(lens), Hq, generator=g)).to(device) if with_alibi else None
    kw = dict(causal=causal, window=window)

    t = total // world
    parts = [x[rank * t:(rank + 1) * t].detach().clone().requires_grad_() for x in (q, k, v)]
    if isinstance(bias, torch.Tensor):
        bias = bias.clone().requires_grad_()
    out = fsd.ulysses_attn_varlen(*parts, cu.to(device), max(lens), bias=bias, alibi_slopes=alibi, group=group,
                                  **kw)
    out.backward(dout[rank * t:(rank + 1) * t])
    got = {"out": out.detach(), "dq": parts[0].grad, "dk": parts[1].grad, "dv": parts[2].grad}
    got = {n: fsd.gather_sequence(x, group, dim=0) for n, x in got.items()}
    if isinstance(bias, torch.Tensor):
        got["dbias"] = _same_on_every_rank(bias.grad, world, group, cid)
    if rank != 0:
        return None

    def single(run, cast, dev, *seq):
        leaves = [x.detach().to(dev, cast).clone().requires_grad_() for x in (q, k, v)]
        b = bias.detach().to(dev, torch.float64 if cast == torch.float64 else torch.float32).clone().requires_grad_() \
            if isinstance(bias, torch.Tensor) else bias
        o = run(*leaves, *seq, bias=b, alibi_slopes=None if alibi is None else alibi.to(dev), **kw)
        o.backward(dout.to(dev, cast))
        res = {"out": o.detach(), "dq": leaves[0].grad, "dk": leaves[1].grad, "dv": leaves[2].grad}
        if isinstance(b, torch.Tensor):
            res["dbias"] = b.grad
        return {n: x.cpu() for n, x in res.items()}

    one = single(fs.sigmoid_attn_varlen, dtype, device, cu.to(device), cu.to(device), max(lens), max(lens))
    ref = single(attn_varlen, torch.float64, "cpu", cu, cu)
    bound = BOUNDS[dtype]
    errs = {n: (rel_l2(x.cpu(), one[n]), rel_l2(x.cpu(), ref[n]), rel_l2(one[n], ref[n])) for n, x in got.items()}
    bad = {n: e for n, e in errs.items() if not (e[0] <= bound and e[1] <= max(bound, 2 * e[2]))}
    return f"{cid} {lens}", errs, bad


def _error_cases(group, device="cpu"):
    """Bad input on one rank: every rank must raise FlashSigmoidError (and nothing may hang)."""
    import functools

    import flashsigmoid as fs
    import flashsigmoid.distributed as fsd

    rank, world = dist.get_rank(group), dist.get_world_size(group)
    ring_attn = functools.partial(fsd.ring_attn, group=group)
    ulysses_attn = functools.partial(fsd.ulysses_attn, group=group)

    (B, n, H), (D, other_d) = (1, 2 * ROWS_PER_CHUNK, 12), _head_dims(device)
    dtype = torch.float32 if device == "cpu" else torch.bfloat16
    base = [torch.randn(B, n, H, D, device=device, dtype=dtype) for _ in range(3)]
    last = world - 1
    ulysses_attn_varlen = functools.partial(fsd.ulysses_attn_varlen, group=group, max_seqlen=n * world)

    def cu(mid, end=n * world):
        return torch.tensor([0, mid, end], dtype=torch.int32, device=device)

    cases = {
        # rows differ on the last rank (the ring's transfers would not match)
        "rows": lambda: ring_attn(*[t[:, : n - 2] if rank == last else t for t in base], causal=True),
        # k head_dim differs on rank 0
        "k-head-dim": lambda: ring_attn(base[0], base[1].new_zeros(B, n, H, other_d) if rank == 0 else base[1],
                                        base[2].new_zeros(B, n, H, other_d) if rank == 0 else base[2]),
        # only the last rank's ALiBi slopes are float64: the kernel's validation rejects them there
        "alibi-dtype-ring": lambda: ring_attn(*base, causal=True, alibi_slopes=torch.rand(
            H, device=device, dtype=torch.float64 if rank == last else torch.float32)),
        "alibi-dtype-ulysses": lambda: ulysses_attn(*base, alibi_slopes=torch.rand(
            H, device=device, dtype=torch.float64 if rank == last else torch.float32)),
        # a window every rank gets wrong
        "window": lambda: ring_attn(*base, window=(-5, 0)),
        # odd rows per rank cannot be zigzagged (every rank)
        "zigzag-odd": lambda: ring_attn(*[t[:, :-1] for t in base], causal=True),
        "ulysses-heads": lambda: ulysses_attn(*[t[:, :, :5] for t in base]),
        # varlen: the ring takes none; cu_seqlens differ on the last rank; a total that is not W x rows;
        # max_seqlen below a length
        "ring-varlen": lambda: ring_attn(*[t[0] for t in base]),
        "varlen-cu-differs": lambda: ulysses_attn_varlen(*[t[0] for t in base], cu(n * world // 2 + (rank == last))),
        "varlen-total": lambda: ulysses_attn_varlen(*[t[0] for t in base], cu(3, n * world - 1)),
        "varlen-max-seqlen": lambda: ulysses_attn_varlen(*[t[0] for t in base], cu(1), max_seqlen=n * world - 2),
    }
    results = {}
    for name, f in cases.items():
        if world == 1 and name in ("rows", "k-head-dim", "alibi-dtype-ring", "alibi-dtype-ulysses",
                                   "varlen-cu-differs"):
            continue  # these need a second rank to differ from
        if name == "ulysses-heads" and world == 1:
            continue
        try:
            f()
            results[name] = "no error"
        except fs.FlashSigmoidError as e:
            results[name] = "FlashSigmoidError: " + str(e)
        except Exception as e:  # noqa: BLE001 - reported as a failure
            results[name] = f"{type(e).__name__}: {e}"
    return results


WORLDS = (1, 2, 3, 4)
CUDA_WORLDS = (1, 2)


def _worker(rank, port, seed, out_q, device="cpu", worlds=WORLDS):
    try:
        torch.set_num_threads(1)
        if device == "cuda":
            torch.cuda.set_device(rank)
            device = f"cuda:{rank}"
        backend = "gloo" if device == "cpu" else "nccl"
        dist.init_process_group(backend, init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=max(worlds))
        groups = {w: dist.new_group(list(range(w))) for w in worlds[:-1]}  # every rank creates every group
        groups[max(worlds)] = None  # the default group
        for world in worlds:
            if rank < world:
                try:
                    g = groups[world]
                    results = [_run_case(case, seed + i, g, device) for i, case in enumerate(CASES)]
                    results += [_run_varlen_case(case, seed + 50 + i, g, device) for i, case in enumerate(VARLEN_CASES)]
                    errors = _error_cases(g, device)
                    after = _run_case(CASES[1], seed + 100, g, device)  # the group still works after the errors
                    if world == 2 and device == "cpu":  # bench/cp_bench.py's tiny CPU configuration, in this group
                        bench = load_bench("cp_bench")
                        after = (after, bench.measure(bench.parse_args(BENCH_ARGS), g))
                    out_q.put((world, rank, "ok", results, errors, after))
                except BaseException:  # noqa: BLE001 - the parent reports it
                    out_q.put((world, rank, "exception", traceback.format_exc(), None, None))
                    raise
            dist.barrier()
        dist.destroy_process_group()
    except BaseException:  # noqa: BLE001 - already reported, or reported missing by the parent
        pass


def _spawn(device, worlds):
    """{world: {rank: (status, results, errors, after)}} from one spawn; missing ranks hung."""
    seed = int(torch.randint(0, 2**31 - 1, ()).item())
    ctx = mp.get_context("spawn")
    out_q = ctx.Queue()
    port = _free_port()
    procs = [ctx.Process(target=_worker, args=(r, port, seed, out_q, device, worlds), daemon=True)
             for r in range(max(worlds))]
    for p in procs:
        p.start()
    got = {w: {} for w in worlds}
    try:
        for _ in range(sum(worlds)):
            world, rank, status, a, b, c = out_q.get(timeout=TIME_LIMIT_S)
            got[world][rank] = (status, a, b, c)
    except queue.Empty:
        pass
    finally:
        for p in procs:
            p.join(timeout=10)
            if p.is_alive():
                p.kill()
    return got, seed


@pytest.fixture(scope="module")
def reports():
    return _spawn("cpu", WORLDS)


def _have_two_gpus():
    import flashsigmoid as fs

    return torch.cuda.device_count() >= 2 and fs.cuda_available() and 64 in fs.cuda_head_dims()


@pytest.fixture(scope="module")
def cuda_reports():
    if not _have_two_gpus():
        pytest.skip("needs 2 CUDA devices and a CUDA build with head dim 64")
    return _spawn("cuda", CUDA_WORLDS)


@pytest.mark.parametrize("world", WORLDS)
def test_context_parallel_matches_single_process(world, reports):
    _check(world, reports, "cpu")


@pytest.mark.parametrize("world", CUDA_WORLDS)
def test_context_parallel_nccl_matches_single_gpu(world, cuda_reports):
    """The same cases on GPUs over NCCL (bf16 instead of fp32)."""
    _check(world, cuda_reports, "cuda")


def _check(world, reports, device):
    reports, seed = reports
    reports = reports[world]
    assert len(reports) == world, (
        f"world {world}: only ranks {sorted(reports)} reported within {TIME_LIMIT_S} s (a hang?); seed {seed}")
    crashed = {r: rep[1] for r, rep in reports.items() if rep[0] != "ok"}
    assert not crashed, f"world {world}: a rank raised:\n" + "\n".join(f"rank {r}:\n{t}" for r, t in crashed.items())

    status, results, errors, after = reports[0]
    if world == 2 and device == "cpu":
        after = after[0]
    checked = 0
    for cid, errs, bad in results + [after]:
        assert not bad, (f"world {world} {cid} (seed {seed}): over the bound (vs single process, vs float64, single process vs "
                         f"float64): {bad}; all: {errs}")
        checked += len(errs)
    assert checked >= 4 * (len(CASES) + len(VARLEN_CASES))

    # every rank raised FlashSigmoidError for every error case, with a message that names the problem
    expect = {
        "rows": "the ranks' inputs differ (rows: ",
        "k-head-dim": "k head_dim: {1}/{0}".format(*_head_dims(device)),
        "alibi-dtype-ring": f"the local attention failed on rank {world - 1}: flashsigmoid: alibi_slopes must be float32",
        "alibi-dtype-ulysses": f"failed on rank {world - 1}: flashsigmoid: alibi_slopes must be float32",
        "window": "window (-5, 0) is invalid",
        "zigzag-odd": "the zigzag layout needs an even number of rows per rank",
        "ulysses-heads": "to be a multiple of the group size",
        "ring-varlen": "takes the all-to-all path, ulysses_attn_varlen (the ring does not take varlen)",
        "varlen-cu-differs": "the ranks' inputs differ (cu_seqlens[1]: {0}/".format(ROWS_PER_CHUNK * world),
        "varlen-total": "packed rows must equal the group size times the rows per rank ({0} x {1})".format(
            world, 2 * ROWS_PER_CHUNK),
        "varlen-max-seqlen": "max_seqlen ({0}) must bound every length".format(2 * ROWS_PER_CHUNK * world - 2),
    }
    for rank, (_, _, errs, _) in reports.items():
        for name, text in errs.items():
            assert text.startswith("FlashSigmoidError") and expect[name] in text, (
                f"world {world} rank {rank} case {name}: {text}")
        assert len(errs) == (5 if world == 1 else len(expect)), errs


def test_plan_skips_future_blocks_and_merges_visible_ones():
    """The ring's step plan: zigzag causal steps make 1 kernel call off the diagonal and 3 on it;
    a contiguous causal ring skips future blocks."""
    from flashsigmoid.distributed import _plan, _segments

    W, n = 4, 64
    for r in range(W):
        for src in range(W):
            calls = _plan(_segments("zigzag", r, W, n), _segments("zigzag", src, W, n), True, (-1, -1), False)
            assert len(calls) == (3 if src == r else 1), (r, src, calls)
            covered = sum((c.q1 - c.q0) * (c.k1 - c.k0) for c in calls)
            # the same work on every step: half of the n x n block, the diagonal's two causal quarters counted whole
            assert covered == (3 * n * n // 4 if src == r else n * n // 2), (r, src, calls)
            contiguous = _plan(_segments("contiguous", r, W, n), _segments("contiguous", src, W, n), True,
                               (-1, -1), False)
            assert len(contiguous) == (0 if src > r else 1)
    # with ALiBi every visible pair keeps its positions
    calls = _plan(_segments("zigzag", 1, W, n), _segments("zigzag", 0, W, n), True, (-1, -1), True)
    assert all(c.q_pos is not None for c in calls) and len(calls) == 2
    assert math.isclose(sum((c.q1 - c.q0) * (c.k1 - c.k0) for c in calls), n * n / 2)


def test_cp_bench_tiny_cpu_configuration(reports, tmp_path):
    """bench/cp_bench.py's measurement (run in the 2-rank group above) and its report."""
    got, _ = reports
    assert 0 in got[2] and got[2][0][0] == "ok", "the 2-rank group did not finish"
    rows, checks = got[2][0][3][1]
    bench = load_bench("cp_bench")
    a = bench.parse_args([str(tmp_path)] + BENCH_ARGS[1:])
    assert bench.report(a, rows, checks, BENCH_ARGS), checks
    data = json.loads((tmp_path / "cp_bench.json").read_text())
    assert {(r["method"], r["causal"]) for r in data["rows"]} == {
        ("ring", False), ("ring", True), ("ulysses", False), ("ulysses", True)}
    for r in data["rows"]:
        assert r["full_s"] > 0 and r["one_total_s"] > 0 and r["compute_s"] > 0 and r["comm_s"] > 0, r
    assert len(data["checks"]) == 4 and all(c["max_rel_l2"] <= 1e-5 for c in data["checks"]), data["checks"]
    md = (tmp_path / "cp_bench.md").read_text()
    assert md.count("| ring |") == 4 and md.count("| ulysses |") == 4, md  # timing rows and check rows
