"""Argument forms a PyTorch / flash-attn user expects: flash-attn's keyword names, and a per-head
bias or ALiBi slopes in any floating dtype (model.bfloat16() / .double())."""

import pytest
import torch

import flashsigmoid as fs
from helpers import BOUNDS
from sigmoid_ref import attn_dense, attn_varlen, rel_l2


def _qkv(dtype=torch.float32, B=2, Nq=17, Nk=21, Hq=4, Hkv=2, D=32):
    return (torch.randn(B, Nq, Hq, D, dtype=dtype), torch.randn(B, Nk, Hkv, D, dtype=dtype),
            torch.randn(B, Nk, Hkv, D, dtype=dtype))


def test_flash_attn_aliases():
    q, k, v = _qkv()
    want = fs.sigmoid_attn(q, k, v, scale=0.2, window=(3, 1))
    assert torch.equal(fs.sigmoid_attn(q, k, v, softmax_scale=0.2, window_size=(3, 1)), want)
    assert torch.equal(fs.sigmoid_attn(q, k, v, scale=0.2, softmax_scale=0.2, window=(3, 1), window_size=[3, 1]),
                       want)
    cu = torch.tensor([0, 7, 17], dtype=torch.int32)
    cu_k = torch.tensor([0, 9, 21], dtype=torch.int32)
    qv, kv, vv = q[0], k[0], v[0]
    assert torch.equal(fs.sigmoid_attn_varlen(qv, kv, vv, cu, cu_k, 10, 12, softmax_scale=0.3, window_size=(2, 0)),
                       fs.sigmoid_attn_varlen(qv, kv, vv, cu, cu_k, 10, 12, scale=0.3, window=(2, 0)))


def test_flash_attn_alias_conflicts():
    q, k, v = _qkv()
    with pytest.raises(fs.FlashSigmoidError, match="scale=0.2 and its alias softmax_scale=0.3 disagree"):
        fs.sigmoid_attn(q, k, v, scale=0.2, softmax_scale=0.3)
    with pytest.raises(fs.FlashSigmoidError, match=r"window=\(3, 1\) and its alias window_size=\(3, 0\) disagree"):
        fs.sigmoid_attn(q, k, v, window=(3, 1), window_size=(3, 0))
    with pytest.raises(TypeError, match="window must be a pair of ints"):
        fs.sigmoid_attn(q, k, v, window_size=(1.5, 0))


@pytest.mark.parametrize("pdtype", [torch.bfloat16, torch.float16, torch.float64])
def test_bias_and_slopes_in_any_float_dtype(pdtype):
    q, k, v = (t.requires_grad_() for t in _qkv())
    bias = (-1.0 - 2.0 * torch.rand(4)).to(pdtype).requires_grad_()
    slopes = (0.05 + 0.2 * torch.rand(2, 4)).to(pdtype)
    out = fs.sigmoid_attn(q, k, v, causal=True, bias=bias, alibi_slopes=slopes)
    dout = torch.randn_like(out)
    out.backward(dout)
    assert bias.grad is not None and bias.grad.dtype == pdtype

    rb = bias.detach().float().double().requires_grad_()  # the values the kernels saw
    ref = attn_dense(q.detach().double(), k.detach().double(), v.detach().double(), causal=True, bias=rb,
                     alibi_slopes=slopes.float().double())
    ref.backward(dout.double())
    assert rel_l2(out, ref) <= BOUNDS[torch.float32]
    grad_bound = BOUNDS[torch.float32] if pdtype == torch.float64 else 1e-2  # dbias rounded to pdtype
    assert rel_l2(bias.grad, rb.grad) <= grad_bound


def test_model_double_and_bfloat16():
    class Attn(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.bias = torch.nn.Parameter(torch.full((4,), -2.0))
            self.register_buffer("slopes", torch.linspace(0.05, 0.2, 4))

        def forward(self, q, k, v):
            return fs.sigmoid_attn(q, k, v, bias=self.bias, alibi_slopes=self.slopes)

    for dtype in (torch.float64, torch.bfloat16):
        m = Attn().to(dtype)
        out = m(*_qkv(dtype))
        out.float().sum().backward()
        assert out.dtype == dtype and m.bias.grad.dtype == dtype


def test_gradcheck_float64_bias():
    q, k, v = (t.double() for t in _qkv(B=1, Nq=4, Nk=5, Hq=2, Hkv=1))
    bias = torch.tensor([-1.5, -0.5], dtype=torch.float64, requires_grad=True)
    # the bias runs in float32 inside: hence the step and tolerance
    assert torch.autograd.gradcheck(lambda b: fs.sigmoid_attn(q, k, v, causal=True, bias=b), (bias,),
                                    eps=1e-2, atol=1e-4, rtol=1e-3)


def test_varlen_bias_dtype():
    cu = torch.tensor([0, 6, 13], dtype=torch.int32)
    q, k, v = (torch.randn(13, 2, 32) for _ in range(3))
    bias = torch.tensor([-1.0, -3.0], dtype=torch.bfloat16)
    out = fs.sigmoid_attn_varlen(q, k, v, cu, cu, 7, 7, bias=bias)
    ref = attn_varlen(q.double(), k.double(), v.double(), cu, cu, bias=bias.double())
    assert rel_l2(out, ref) <= BOUNDS[torch.float32]
