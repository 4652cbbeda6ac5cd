"""The PyTorch integration on CUDA tensors: autocast, forward-mode AD, ALiBi slope gradients,
vmap, Python-float scalars under torch.compile. Skipped without a GPU."""

import pytest
import torch

import flashsigmoid as fs
from helpers import BOUNDS
from sigmoid_ref import attn_dense, rel_l2

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(),
                                reason="no GPU: torch.cuda.is_available() is False")


def _qkv(dtype, B=2, Nq=130, Nk=190, Hq=4, Hkv=2, D=64):
    return (torch.randn(B, Nq, Hq, D, device="cuda", dtype=dtype),
            torch.randn(B, Nk, Hkv, D, device="cuda", dtype=dtype),
            torch.randn(B, Nk, Hkv, D, device="cuda", dtype=dtype))


def test_cuda_autocast_bf16():
    q, k, v = (t.requires_grad_() for t in _qkv(torch.float32))
    with torch.autocast("cuda", dtype=torch.bfloat16):
        out = fs.sigmoid_attn(q, k, v, causal=True)
    assert out.dtype == torch.bfloat16
    assert torch.equal(out, fs.sigmoid_attn(q.bfloat16(), k.bfloat16(), v.bfloat16(), causal=True))
    out.float().sum().backward()
    assert q.grad.dtype == torch.float32 and torch.isfinite(q.grad).all()


def test_cuda_jvp_matches_reference():
    q, k, v = _qkv(torch.bfloat16)
    slopes = 0.05 + 0.2 * torch.rand(4, device="cuda")
    kw = dict(causal=True, window=(50, -1), alibi_slopes=slopes)
    tangents = tuple(torch.randn_like(x) for x in (q, k, v))
    out, t = torch.func.jvp(lambda q, k, v: fs.sigmoid_attn(q, k, v, **kw), (q, k, v), tangents)
    _, ref = torch.func.jvp(lambda q, k, v: attn_dense(q, k, v, causal=True, window=(50, -1),
                                                       alibi_slopes=slopes.cpu()),
                            tuple(x.cpu().double() for x in (q, k, v)), tuple(x.cpu().double() for x in tangents))
    assert t.device.type == "cuda" and t.dtype == torch.bfloat16
    assert rel_l2(t.cpu(), ref) <= BOUNDS[torch.bfloat16]


def test_cuda_alibi_slopes_grad():
    q, k, v = _qkv(torch.bfloat16)
    slopes = (0.05 + 0.2 * torch.rand(2, 4, device="cuda")).requires_grad_()
    out = fs.sigmoid_attn(q, k, v, causal=True, alibi_slopes=slopes)
    dout = torch.randn_like(out)
    out.backward(dout)
    rs = slopes.detach().cpu().double().requires_grad_()
    attn_dense(*(x.cpu().double() for x in (q, k, v)), causal=True, alibi_slopes=rs).backward(dout.cpu().double())
    assert rel_l2(slopes.grad.cpu(), rs.grad) <= BOUNDS[torch.bfloat16]


def test_cuda_vmap_equals_loop():
    q, k, v = (torch.randn(3, 2, 70, 2, 64, device="cuda", dtype=torch.bfloat16) for _ in range(3))
    got = torch.vmap(lambda q, k, v: fs.sigmoid_attn(q, k, v, causal=True))(q, k, v)
    want = torch.stack([fs.sigmoid_attn(q[i], k[i], v[i], causal=True) for i in range(3)])
    assert torch.equal(got, want)


def test_cuda_compile_float_scale_and_bias():
    from torch._dynamo.testing import CompileCounter

    torch._dynamo.reset()
    q, k, v = _qkv(torch.bfloat16)
    cnt = CompileCounter()

    def f(q, k, v, s, b):
        return fs.sigmoid_attn(q, k, v, scale=s, bias=b)

    cf = torch.compile(f, backend=cnt, fullgraph=True)
    for s, b in [(0.1, -1.0), (0.2, -2.0), (0.15, -3.5), (0.05, -0.5)]:
        # compiled, the scalar bias runs as a per-head tensor: same values, maybe another code path
        assert rel_l2(cf(q, k, v, s, b).cpu(), f(q, k, v, s, b).cpu()) <= BOUNDS[torch.bfloat16] / 10
    assert cnt.frame_count <= 2
