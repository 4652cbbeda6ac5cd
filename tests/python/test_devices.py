"""All tensors on one device: a meta tensor among CPU ones is an error, not a call of the fake
(meta) implementation that returns uninitialised memory."""

import re

import pytest
import torch

import flashsigmoid as fs


def _dense():
    return torch.randn(1, 8, 2, 32), torch.randn(1, 8, 2, 32), torch.randn(1, 8, 2, 32)


def _meta_error(name):
    return pytest.raises(fs.FlashSigmoidError, match=re.escape(f"{name} is on meta but q is on cpu"))


@pytest.mark.parametrize("name", ["k", "v", "bias", "alibi_slopes"])
def test_forward_meta_among_cpu(name):
    q, k, v = _dense()
    args = dict(k=k, v=v, bias=torch.full((2,), -1.0), alibi_slopes=torch.rand(2))
    args[name] = args[name].to("meta")
    with _meta_error(name):
        fs.sigmoid_attn(q, **args)


def test_q_on_meta_among_cpu():
    q, k, v = _dense()
    with pytest.raises(fs.FlashSigmoidError, match=re.escape("k is on cpu but q is on meta")):
        fs.sigmoid_attn(q.to("meta"), k, v)


@pytest.mark.parametrize("name", ["cu_seqlens_q", "cu_seqlens_k", "k"])
def test_varlen_meta_among_cpu(name):
    cu = torch.tensor([0, 3, 10], dtype=torch.int32)
    args = dict(k=torch.randn(10, 2, 32), v=torch.randn(10, 2, 32), cu_seqlens_q=cu, cu_seqlens_k=cu)
    args[name] = args[name].to("meta")
    with _meta_error(name):
        fs.sigmoid_attn_varlen(torch.randn(10, 2, 32), args["k"], args["v"], args["cu_seqlens_q"],
                               args["cu_seqlens_k"], 7, 7)


def test_backward_meta_among_cpu():
    q, k, v = _dense()
    with _meta_error("dout"):
        torch.ops.flashsigmoid.bwd(torch.randn(1, 8, 2, 32, device="meta"), q, k, v, None, None, 0, 0, False,
                                   None, 0, 0.0, None, -1, -1, None, False, False)
    with _meta_error("v"):
        torch.ops.flashsigmoid.bwd(torch.randn(1, 8, 2, 32), q, k, v.to("meta"), None, None, 0, 0, False, None,
                                   0, 0.0, None, -1, -1, None, False, False)


def test_all_meta_is_shape_propagation():
    q, k, v = (t.to("meta") for t in _dense())
    out = fs.sigmoid_attn(q, k, v, bias=torch.zeros(2, device="meta"))
    assert out.device.type == "meta" and out.shape == q.shape


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_among_cpu():
    q, k, v = _dense()
    with pytest.raises(fs.FlashSigmoidError, match="k is on cuda:0 but q is on cpu"):
        fs.sigmoid_attn(q, k.cuda(), v)
