"""torch.autograd.gradcheck on small float64 cases (the CPU backend accumulates in double)."""

import pytest
import torch

import flashsigmoid as fs

D = 32  # the smallest supported head dim


def _rand(*shape):
    return torch.randn(*shape, dtype=torch.float64, requires_grad=True)


@pytest.mark.parametrize(
    "Nq,Nk,Hq,Hkv,kw",
    [
        (4, 4, 2, 2, {}),
        (3, 6, 2, 1, {"causal": True, "alibi": "head"}),
        (6, 3, 2, 2, {"causal": True, "window": (1, -1), "bias": 0.7}),
        (5, 5, 4, 2, {"window": (1, 1), "alibi": "batch", "scale": 0.4}),
    ],
    ids=["plain", "causal-gqa-alibi", "causal-window-scalar-bias", "window-alibi-batch"],
)
def test_gradcheck_dense(Nq, Nk, Hq, Hkv, kw):
    B = 2
    kw = dict(kw)
    alibi = kw.pop("alibi", None)
    if alibi is not None:
        kw["alibi_slopes"] = 0.1 + 0.2 * torch.rand((Hq,) if alibi == "head" else (B, Hq))
    q, k, v = _rand(B, Nq, Hq, D), _rand(B, Nk, Hkv, D), _rand(B, Nk, Hkv, D)
    assert torch.autograd.gradcheck(lambda q, k, v: fs.sigmoid_attn(q, k, v, **kw), (q, k, v),
                                    eps=1e-6, atol=1e-6, rtol=1e-4, fast_mode=True)


def test_gradcheck_per_head_bias():
    # The per-head bias is float32 by contract; its gradient is checked through a float64
    # parameter cast to float32 inside the function (gradcheck's finite differences then
    # need a looser tolerance on that input, so it gets its own step size below).
    B, Nq, Nk, Hq, Hkv = 1, 4, 5, 2, 1
    q, k, v = _rand(B, Nq, Hq, D), _rand(B, Nk, Hkv, D), _rand(B, Nk, Hkv, D)
    bias = torch.tensor([-1.5, -0.5], dtype=torch.float64, requires_grad=True)

    def f(q, k, v):
        return fs.sigmoid_attn(q, k, v, causal=True, bias=bias.detach().float())

    assert torch.autograd.gradcheck(f, (q, k, v), eps=1e-6, atol=1e-6, rtol=1e-4, fast_mode=True)

    def g(b):
        return fs.sigmoid_attn(q.detach(), k.detach(), v.detach(), causal=True, bias=b.float())

    assert torch.autograd.gradcheck(g, (bias,), eps=1e-2, atol=1e-4, rtol=1e-3)


def test_gradcheck_varlen():
    lens_q, lens_k, Hq, Hkv = [3, 0, 2], [2, 3, 4], 2, 1
    cu_q = torch.tensor([0, 3, 3, 5], dtype=torch.int32)
    cu_k = torch.tensor([0, 2, 5, 9], dtype=torch.int32)
    q, k, v = _rand(5, Hq, D), _rand(9, Hkv, D), _rand(9, Hkv, D)
    assert torch.autograd.gradcheck(
        lambda q, k, v: fs.sigmoid_attn_varlen(q, k, v, cu_q, cu_k, 3, 4, causal=True, window=(2, -1)),
        (q, k, v), eps=1e-6, atol=1e-6, rtol=1e-4, fast_mode=True)
