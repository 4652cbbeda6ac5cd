"""ALiBi slopes that require grad get their gradient (it used to be None without an error)."""

import pytest
import torch

import flashsigmoid as fs
from helpers import BOUNDS
from sigmoid_ref import attn_dense, attn_varlen, rel_l2


@pytest.mark.parametrize("shape", ["head", "batch"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["f32", "bf16"])
def test_alibi_slopes_grad_matches_reference(shape, dtype):
    B, Nq, Nk, Hq, Hkv, D = 2, 29, 41, 4, 2, 32
    q = torch.randn(B, Nq, Hq, D, dtype=dtype)
    k, v = (torch.randn(B, Nk, Hkv, D, dtype=dtype) for _ in range(2))
    slopes = (0.05 + 0.3 * torch.rand((Hq,) if shape == "head" else (B, Hq))).requires_grad_()
    kw = dict(causal=True, window=(17, -1))
    out = fs.sigmoid_attn(q, k, v, alibi_slopes=slopes, **kw)
    dout = torch.randn_like(out)
    out.backward(dout)

    ref_slopes = slopes.detach().double().requires_grad_()
    attn_dense(q.double(), k.double(), v.double(), alibi_slopes=ref_slopes, **kw).backward(dout.double())
    assert slopes.grad is not None and slopes.grad.dtype == torch.float32
    assert rel_l2(slopes.grad, ref_slopes.grad) <= BOUNDS[dtype]


def test_alibi_slopes_grad_varlen_with_qkv_grads():
    lens, Hq, D = [7, 0, 12], 2, 32
    cu = torch.tensor([0] + lens).cumsum(0).to(torch.int32)
    q, k, v = (torch.randn(sum(lens), Hq, D, requires_grad=True) for _ in range(3))
    slopes = (0.1 + 0.2 * torch.rand(3, Hq)).requires_grad_()
    out = fs.sigmoid_attn_varlen(q, k, v, cu, cu, 12, 12, causal=True, alibi_slopes=slopes)
    dout = torch.randn_like(out)
    out.backward(dout)

    r = [t.detach().double().requires_grad_() for t in (q, k, v, slopes)]
    attn_varlen(*r[:3], cu, cu, causal=True, alibi_slopes=r[3]).backward(dout.double())
    for got, ref in zip((q.grad, k.grad, v.grad, slopes.grad), (x.grad for x in r)):
        assert rel_l2(got, ref) <= BOUNDS[torch.float32]
