"""sigmoid_attn(..., positions=(q_offset, k_offset)): global positions for causal, window and ALiBi,
forward and backward against the float64 reference; and the argument's errors."""

import pytest
import torch

import flashsigmoid as fs
from helpers import BOUNDS
from sigmoid_ref import attn_dense, rel_l2

CASES = [
    # (id, Nq, Nk, positions, causal, window, alibi, bias kind)
    ("causal-past-keys", 40, 70, (300, 100), True, (-1, -1), False, "default"),
    ("causal-future-keys", 40, 70, (0, 100), True, (-1, -1), False, "default"),  # every output row 0
    ("causal-diagonal-alibi", 90, 70, (50, 20), True, (-1, -1), True, "head"),
    ("window-both", 64, 64, (500, 470), False, (20, 9), False, "scalar"),
    ("alibi-queries-first", 33, 80, (10, 40), False, (-1, -1), True, "default"),
]


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_positions_match_reference(case, dtype):
    _, Nq, Nk, positions, causal, window, alibi, bias_kind = case
    B, Hq, Hkv, D = 2, 4, 2, 32
    q = torch.randn(B, Nq, Hq, D, dtype=dtype, requires_grad=True)
    k = torch.randn(B, Nk, Hkv, D, dtype=dtype, requires_grad=True)
    v = torch.randn(B, Nk, Hkv, D, dtype=dtype, requires_grad=True)
    slopes = 0.02 + 0.1 * torch.rand(Hq) if alibi else None
    bias = {"default": None, "scalar": -2.5, "head": (-2.0 - torch.rand(Hq)).requires_grad_()}[bias_kind]
    kw = dict(causal=causal, window=window, alibi_slopes=slopes, positions=positions)
    out = fs.sigmoid_attn(q, k, v, bias=bias, **kw)
    dout = torch.randn_like(out)
    out.backward(dout)

    leaves = [t.detach().double().requires_grad_() for t in (q, k, v)]
    rb = bias.detach().double().requires_grad_() if isinstance(bias, torch.Tensor) else bias
    ref = attn_dense(*leaves, bias=rb, **kw)
    ref.backward(dout.double())
    pairs = [("out", out, ref)] + [(n, t.grad, r.grad) for n, t, r in zip(("dq", "dk", "dv"), (q, k, v), leaves)]
    if isinstance(bias, torch.Tensor):
        pairs.append(("dbias", bias.grad, rb.grad))
    for name, got, want in pairs:
        if want.norm() == 0:  # keys all in the future: exact zeros
            assert torch.equal(got, torch.zeros_like(got)), name
            continue
        err = rel_l2(got, want)
        assert err <= BOUNDS[dtype], f"{name}: rel L2 {err} over {BOUNDS[dtype]}"


def test_bottom_right_equals_explicit_positions():
    q, k, v = torch.randn(1, 30, 2, 32), torch.randn(1, 50, 2, 32), torch.randn(1, 50, 2, 32)
    a = fs.sigmoid_attn(q, k, v, causal=True, window=(7, -1))
    b = fs.sigmoid_attn(q, k, v, causal=True, window=(7, -1), positions=(20, 0))
    assert torch.equal(a, b)


def test_bad_positions():
    q = torch.randn(1, 8, 2, 32)
    with pytest.raises(fs.FlashSigmoidError, match=r"positions \(q -1, k 0\) are invalid"):
        fs.sigmoid_attn(q, q, q, positions=(-1, 0))
    with pytest.raises(fs.FlashSigmoidError, match=r"at most 2\^29"):
        fs.sigmoid_attn(q, q, q, positions=(0, 2**29))
    with pytest.raises(TypeError, match="positions must be None or a pair of ints"):
        fs.sigmoid_attn(q, q, q, positions=(1.5, 0))
    with pytest.raises(TypeError, match="positions must be None or a pair of ints"):
        fs.sigmoid_attn(q, q, q, positions=3)
