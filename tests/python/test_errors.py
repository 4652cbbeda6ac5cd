"""Bad input raises flashsigmoid.FlashSigmoidError (a ValueError) with the C++ library's message."""

import re

import pytest
import torch

import flashsigmoid as fs


def qkv(B=1, Nq=8, Nk=8, Hq=2, Hkv=2, D=32, dtype=torch.float32):
    return (torch.randn(B, Nq, Hq, D, dtype=dtype), torch.randn(B, Nk, Hkv, D, dtype=dtype),
            torch.randn(B, Nk, Hkv, D, dtype=dtype))


def raises(match):
    return pytest.raises(fs.FlashSigmoidError, match=match)


def test_error_class():
    assert issubclass(fs.FlashSigmoidError, ValueError)
    with pytest.raises(ValueError):  # catchable as ValueError
        q, k, v = qkv(D=80)
        fs.sigmoid_attn(q, k, v)


def test_wrong_rank():
    q, k, v = qkv()
    with raises(re.escape("q must have rank 4 [batch, seqlen, heads, head_dim], got rank 3 [8, 2, 32]")):
        fs.sigmoid_attn(q[0], k, v)
    with raises(re.escape("k must have rank 4 [batch, seqlen, heads, head_dim], got rank 3")):
        fs.sigmoid_attn(q, k[0], v)
    cu = torch.tensor([0, 8], dtype=torch.int32)
    with raises(re.escape("q must have rank 3 [total, heads, head_dim] (varlen), got rank 4")):
        fs.sigmoid_attn_varlen(q, k[0], v[0], cu, cu, 8, 8)
    with raises("q has rank 5"):
        fs.sigmoid_attn(q[None], k, v)


def test_head_dim_80():
    q, k, v = qkv(D=80)
    with raises(re.escape("head_dim 80 is not supported; accepted: 32, 64, 96, 128, 256")):
        fs.sigmoid_attn(q, k, v)


def test_cuda_head_dims_is_a_subset_of_the_supported_ones():
    built = fs.cuda_head_dims()
    assert isinstance(built, list) and all(isinstance(d, int) for d in built), built
    assert built == sorted(set(built)) and set(built) <= set(fs.SUPPORTED_HEAD_DIMS), built
    # a CUDA-enabled package always has at least one head dim; a CPU-only one has none
    assert bool(built) or not fs.cuda_available()


def test_head_dim_mismatch():
    q, _, _ = qkv(D=64)
    _, k, v = qkv(D=32)
    with raises("k has head_dim 32 but q has head_dim 64"):
        fs.sigmoid_attn(q, k, v)


def test_heads_not_divisible():
    q, k, v = qkv(Hq=3, Hkv=2)
    with raises(re.escape("the number of query heads (3) must be a positive multiple of the number of "
                          "key/value heads (2)")):
        fs.sigmoid_attn(q, k, v)


def test_dtype_mismatch():
    q, k, v = qkv()
    with raises("k has dtype float16 but q has dtype float32; all of q, k, v and the outputs must share one dtype"):
        fs.sigmoid_attn(q, k.half(), v)
    with raises("v has dtype bfloat16 but q has dtype float32"):
        fs.sigmoid_attn(q, k, v.bfloat16())


def test_unsupported_dtype():
    q, k, v = qkv()
    with raises("q has dtype int64, which flashsigmoid does not take"):
        fs.sigmoid_attn(q.long(), k.long(), v.long())


def test_batch_and_shape_mismatch():
    q, _, _ = qkv(B=2)
    _, k, v = qkv(B=3)
    with raises("k has batch 3 but q has batch 2"):
        fs.sigmoid_attn(q, k, v)
    q, k, v = qkv(Nk=8)
    with raises(re.escape("v must have the shape of k [1, 8, 2, 32], got [1, 9, 2, 32]")):
        fs.sigmoid_attn(q, k, torch.randn(1, 9, 2, 32))


def test_last_dim_not_contiguous():
    q, k, v = qkv()
    qt = torch.randn(1, 8, 32, 2).transpose(2, 3)
    with raises("q must be contiguous in its last \\(head_dim\\) dimension, got stride 2"):
        fs.sigmoid_attn(qt, k, v)


def test_bad_window():
    q, k, v = qkv()
    with raises(re.escape("window (-2, 0) is invalid; each side must be >= 0, or -1 for unbounded")):
        fs.sigmoid_attn(q, k, v, window=(-2, 0))
    with raises(re.escape("window (3, -5) is invalid")):
        fs.sigmoid_attn(q, k, v, window=(3, -5))
    # conversion errors, raised in Python before the op
    for bad in [(1,), (1, 2, 3), (1.5, 2), 4, None, (True, 1)]:
        with pytest.raises(TypeError, match="window must be a pair of ints"):
            fs.sigmoid_attn(q, k, v, window=bad)


def test_bad_bias_and_alibi():
    q, k, v = qkv(Hq=4, Hkv=2)
    with raises(re.escape("bias must have shape [4] (one value per query head), got [3]")):
        fs.sigmoid_attn(q, k, v, bias=torch.zeros(3))
    with raises("bias must be float32, got int32"):  # floating dtypes are converted, others are not
        fs.sigmoid_attn(q, k, v, bias=torch.zeros(4, dtype=torch.int32))
    with pytest.raises(TypeError, match="bias must be None"):
        fs.sigmoid_attn(q, k, v, bias="learnable")
    with raises(re.escape("alibi_slopes must have shape [4] or [1, 4], got [2]")):
        fs.sigmoid_attn(q, k, v, alibi_slopes=torch.ones(2))
    with raises("alibi_slopes must be float32, got int32"):
        fs.sigmoid_attn(q, k, v, alibi_slopes=torch.ones(4, dtype=torch.int32))
    with raises("scale must be finite"):
        fs.sigmoid_attn(q, k, v, scale=float("inf"))


def _varlen(total_q=10, total_k=10, H=2, D=32):
    return torch.randn(total_q, H, D), torch.randn(total_k, H, D), torch.randn(total_k, H, D)


def test_bad_cu_seqlens():
    q, k, v = _varlen()
    good = torch.tensor([0, 4, 10], dtype=torch.int32)
    with raises(re.escape("cu_seqlens_q[0] must be 0, got 1")):
        fs.sigmoid_attn_varlen(q, k, v, torch.tensor([1, 4, 10], dtype=torch.int32), good, 8, 8)
    with raises("cu_seqlens_k must be non-decreasing, but sequence 1 has length -2"):
        fs.sigmoid_attn_varlen(q, k, v, good, torch.tensor([0, 6, 4], dtype=torch.int32), 8, 8)
    with raises("cu_seqlens_q: sequence 1 has length 6 > max_seqlen 5"):
        fs.sigmoid_attn_varlen(q, k, v, good, good, 5, 8)
    with raises("cu_seqlens_q ends at 12 but the packed tensor has only 10 rows"):
        fs.sigmoid_attn_varlen(q, k, v, torch.tensor([0, 4, 12], dtype=torch.int32), good, 8, 8)
    with raises(re.escape("cu_seqlens_k has 2 entries but cu_seqlens_q has 3; both must be [batch + 1]")):
        fs.sigmoid_attn_varlen(q, k, v, good, torch.tensor([0, 10], dtype=torch.int32), 8, 10)
    with raises("cu_seqlens_q has dtype int64, which flashsigmoid does not take"):
        fs.sigmoid_attn_varlen(q, k, v, good.long(), good, 8, 8)
    with raises("cu_seqlens_k must be int32, got float32"):
        fs.sigmoid_attn_varlen(q, k, v, good, good.float(), 8, 8)
    with raises(re.escape("cu_seqlens_q must have rank 1 [batch + 1], got [1, 3]")):
        fs.sigmoid_attn_varlen(q, k, v, good[None], good, 8, 8)


def test_error_from_backward_op_keeps_type():
    """The backward op validates too (autograd itself casts dout to out's dtype, so call it directly)."""
    q, k, v = qkv()
    dout = torch.randn(q.shape, dtype=torch.float64)
    with raises("dout has dtype float64 but q has dtype float32"):
        torch.ops.flashsigmoid.bwd(dout, q, k, v, None, None, 0, 0, False, None, 0, 0.0, None, -1, -1, None,
                                   False, False)


def test_bad_scale_tensor():
    q, k, v = qkv()
    base = (q, k, v, None, None, 0, 0, False)
    rest = (0, 0.0, None, -1, -1, None)
    with raises("give scale or scale_tensor, not both"):
        torch.ops.flashsigmoid.fwd(*base, 0.5, *rest, torch.scalar_tensor(0.5))
    with raises(re.escape("scale_tensor must be a floating-point CPU tensor with one element, got int64 [2]")):
        torch.ops.flashsigmoid.fwd(*base, None, *rest, torch.tensor([1, 2]))
