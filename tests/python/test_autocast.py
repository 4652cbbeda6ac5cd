"""torch.autocast: q, k, v run in the autocast dtype (as SDPA does), bias and slopes stay float32."""

import torch

import flashsigmoid as fs
from helpers import BOUNDS
from sigmoid_ref import attn_dense, rel_l2


def _leaves(B=2, Nq=23, Nk=31, Hq=4, Hkv=2, D=32):
    q = torch.randn(B, Nq, Hq, D, requires_grad=True)
    k, v = (torch.randn(B, Nk, Hkv, D, requires_grad=True) for _ in range(2))
    return q, k, v


def test_fp32_inputs_run_in_the_autocast_dtype():
    q, k, v = _leaves()
    bias = torch.full((4,), -2.0, requires_grad=True)
    slopes = 0.1 * torch.rand(4)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = fs.sigmoid_attn(q, k, v, causal=True, bias=bias, alibi_slopes=slopes)
    assert out.dtype == torch.bfloat16
    # the same as running bf16 inputs directly
    same = fs.sigmoid_attn(q.bfloat16(), k.bfloat16(), v.bfloat16(), causal=True, bias=bias, alibi_slopes=slopes)
    assert torch.equal(out, same)
    ref = attn_dense(*(t.detach().bfloat16().double() for t in (q, k, v)), causal=True, bias=bias.detach().double(),
                     alibi_slopes=slopes)
    assert rel_l2(out, ref) <= BOUNDS[torch.bfloat16]
    out.float().sum().backward()
    for t in (q, k, v, bias):  # gradients reach the fp32 leaves, in their dtype
        assert t.grad is not None and t.grad.dtype == torch.float32 and torch.isfinite(t.grad).all()


def test_mixed_autocast_outputs_and_fp32():
    """q from an autocast layer (bf16), k and v fp32: works under autocast, as SDPA does."""
    q, k, v = _leaves()
    lin = torch.nn.Linear(32, 32)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        qa = lin(q)
        assert qa.dtype == torch.bfloat16
        out = fs.sigmoid_attn(qa, k, v)
    assert out.dtype == torch.bfloat16
    out.float().sum().backward()
    assert lin.weight.grad is not None and k.grad.dtype == torch.float32


def test_float16_autocast_dtype_and_float64_untouched():
    q, k, v = _leaves()
    with torch.autocast("cpu", dtype=torch.float16):
        assert fs.sigmoid_attn(q, k, v).dtype == torch.float16
        qd, kd, vd = (t.detach().double() for t in (q, k, v))
        assert fs.sigmoid_attn(qd, kd, vd).dtype == torch.float64


def test_autocast_under_compile():
    q, k, v = _leaves()

    def f(q, k, v):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            return fs.sigmoid_attn(q, k, v, causal=True)

    torch._dynamo.reset()
    got = torch.compile(f, backend="aot_eager", fullgraph=True)(q, k, v)
    assert got.dtype == torch.bfloat16
    assert torch.equal(got, f(q, k, v))
