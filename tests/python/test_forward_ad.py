"""Forward-mode AD (torch.func.jvp, torch.autograd.forward_ad) against the float64 reference's
own jvp, and against finite differences (gradcheck's forward-AD check)."""

import pytest
import torch
import torch.autograd.forward_ad as fwAD

import flashsigmoid as fs
from helpers import BOUNDS
from sigmoid_ref import attn_dense, attn_varlen, rel_l2

CASES = [
    # B, Nq, Nk, Hq, Hkv, D, keywords
    (2, 37, 37, 2, 2, 32, {}),
    (1, 19, 45, 4, 2, 64, {"causal": True, "bias": "head"}),
    (2, 45, 19, 4, 1, 32, {"causal": True, "window": (7, -1), "alibi": "head", "scale": 0.3}),
    (2, 33, 33, 2, 1, 32, {"window": (5, 3), "bias": 1.5, "alibi": "batch"}),
]
IDS = ["plain", "causal-gqa-bias", "causal-window-mqa-alibi", "window-scalar-bias-alibi-batch"]


def _inputs(B, Nq, Nk, Hq, Hkv, D, kw, dtype):
    kw = dict(kw)
    q = torch.randn(B, Nq, Hq, D, dtype=dtype)
    k, v = (torch.randn(B, Nk, Hkv, D, dtype=dtype) for _ in range(2))
    if kw.get("bias") == "head":
        kw["bias"] = -1.0 - 3.0 * torch.rand(Hq)
    alibi = kw.pop("alibi", None)
    if alibi is not None:
        kw["alibi_slopes"] = 0.05 + 0.3 * torch.rand((Hq,) if alibi == "head" else (B, Hq))
    return (q, k, v), kw


def _primals_and_tangents(inputs, kw):
    """All differentiable inputs (q, k, v, a bias tensor, ALiBi slopes) with random tangents."""
    names = ["q", "k", "v"] + [n for n in ("bias", "alibi_slopes") if isinstance(kw.get(n), torch.Tensor)]
    primals = list(inputs) + [kw[n] for n in names[3:]]
    return names, primals, [torch.randn_like(p) for p in primals]


def _fn(attn, names, kw):
    def f(*xs):
        named = dict(zip(names, xs))
        return attn(named.pop("q"), named.pop("k"), named.pop("v"), **{**kw, **named})
    return f


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["f32", "bf16"])
@pytest.mark.parametrize("B,Nq,Nk,Hq,Hkv,D,kw", CASES, ids=IDS)
def test_func_jvp_matches_reference(B, Nq, Nk, Hq, Hkv, D, kw, dtype):
    inputs, kw = _inputs(B, Nq, Nk, Hq, Hkv, D, kw, dtype)
    names, primals, tangents = _primals_and_tangents(inputs, kw)
    out, t_out = torch.func.jvp(_fn(fs.sigmoid_attn, names, kw), tuple(primals), tuple(tangents))

    d = [p.double() for p in primals]
    ref_out, ref_t = torch.func.jvp(_fn(attn_dense, names, kw), tuple(d), tuple(t.double() for t in tangents))
    assert t_out.dtype == dtype and t_out.shape == out.shape
    assert rel_l2(out, ref_out) <= BOUNDS[dtype]
    err = rel_l2(t_out, ref_t)
    assert err <= BOUNDS[dtype], f"tangent rel L2 error {err}"


def test_forward_ad_api_and_partial_tangents():
    (q, k, v), kw = _inputs(2, 21, 29, 4, 2, 32, {"causal": True, "bias": "head"}, torch.float32)
    tk = torch.randn_like(k)
    with fwAD.dual_level():
        out = fs.sigmoid_attn(q, fwAD.make_dual(k, tk), v, **kw)
        primal, tangent = fwAD.unpack_dual(out)
    assert tangent is not None
    _, ref = torch.func.jvp(lambda k: attn_dense(q.double(), k, v.double(), causal=True, bias=kw["bias"].double()),
                            (k.double(),), (tk.double(),))
    assert rel_l2(tangent, ref) <= BOUNDS[torch.float32]
    assert rel_l2(primal, fs.sigmoid_attn(q, k, v, **kw)) == 0.0


def test_varlen_jvp():
    lens_q, lens_k, Hq, Hkv, D = [5, 0, 17], [9, 4, 13], 2, 1, 32
    cu_q = torch.tensor([0] + lens_q).cumsum(0).to(torch.int32)
    cu_k = torch.tensor([0] + lens_k).cumsum(0).to(torch.int32)
    q = torch.randn(sum(lens_q), Hq, D)
    k, v = torch.randn(sum(lens_k), Hkv, D), torch.randn(sum(lens_k), Hkv, D)
    slopes = 0.1 + 0.2 * torch.rand(3, Hq)
    kw = dict(causal=True, window=(6, -1), alibi_slopes=slopes)
    tangents = tuple(torch.randn_like(x) for x in (q, k, v))
    _, t = torch.func.jvp(lambda q, k, v: fs.sigmoid_attn_varlen(q, k, v, cu_q, cu_k, 17, 13, **kw),
                          (q, k, v), tangents)
    _, ref = torch.func.jvp(lambda q, k, v: attn_varlen(q, k, v, cu_q, cu_k, **kw),
                            (q.double(), k.double(), v.double()), tuple(x.double() for x in tangents))
    assert rel_l2(t, ref) <= BOUNDS[torch.float32]


def test_gradcheck_forward_ad_float64():
    """Finite differences against both modes, every differentiable input (ALiBi slopes included)."""
    B, Nq, Nk, Hq, Hkv, D = 2, 5, 6, 2, 1, 32
    q = torch.randn(B, Nq, Hq, D, dtype=torch.float64, requires_grad=True)
    k, v = (torch.randn(B, Nk, Hkv, D, dtype=torch.float64, requires_grad=True) for _ in range(2))
    slopes = (0.1 + 0.2 * torch.rand(B, Hq, dtype=torch.float64)).requires_grad_()

    def f(q, k, v, slopes):
        return fs.sigmoid_attn(q, k, v, causal=True, window=(3, -1), alibi_slopes=slopes)

    # the slopes run in float32 inside (see README), hence the step and tolerance
    assert torch.autograd.gradcheck(f, (q, k, v, slopes), eps=1e-3, atol=1e-4, rtol=1e-3,
                                    check_forward_ad=True, fast_mode=True)


def test_long_sequence_jvp_is_blocked(monkeypatch):
    """The tangent is built a block of query rows at a time; with a tiny block size the result is
    the same as with one block."""
    import flashsigmoid._blockwise as bw
    (q, k, v), kw = _inputs(1, 50, 50, 2, 2, 32, {"causal": True}, torch.float32)
    tq = torch.randn_like(q)
    _, whole = torch.func.jvp(lambda q: fs.sigmoid_attn(q, k, v, **kw), (q,), (tq,))
    monkeypatch.setattr(bw, "_BLOCK_SCORES", 2 * 50 * 7)  # 7 query rows per block
    _, blocked = torch.func.jvp(lambda q: fs.sigmoid_attn(q, k, v, **kw), (q,), (tq,))
    assert rel_l2(blocked, whole) <= 1e-6


def test_blocks_position_offsets_match_bottom_right():
    """The block builder's explicit positions (q_offset, k_offset) reproduce the default
    bottom-right alignment when they say the same thing, and shift the masks when they differ."""
    import flashsigmoid._blockwise as bw
    B, Nq, Nk, H, D = 1, 9, 14, 2, 32
    q, k = torch.randn(B, Nq, H, D), torch.randn(B, Nk, H, D)
    kw = dict(scale=0.2, bias_mode=0, bias_value=0.0, bias=None, causal=True, window_left=4, window_right=-1)
    slopes = torch.full((H,), 0.3)
    base = list(bw._blocks(q, k, slopes, **kw))
    same = list(bw._blocks(q, k, slopes, q_offset=100 + Nk - Nq, k_offset=100, **kw))
    assert len(base) == len(same) == 1
    assert torch.equal(base[0].p, same[0].p) and torch.equal(base[0].keep, same[0].keep)
    shifted = list(bw._blocks(q, k, slopes, q_offset=0, k_offset=0, **kw))[0]
    i, j = torch.arange(Nq).view(-1, 1), torch.arange(Nk).view(1, -1)
    assert torch.equal(shifted.keep, (j <= i) & (j >= i - 4))
