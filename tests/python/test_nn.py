"""flashsigmoid.nn against plain PyTorch (nn_ref.py): forward and every gradient, in float64."""

import copy
import io
import math

import pytest
import torch

import flashsigmoid as fs
from flashsigmoid.nn import LayerScale, SelfAttention, TransformerBlock, alibi_slopes
from helpers import BOUNDS
from nn_ref import plain_attention, plain_block
from sigmoid_ref import rel_l2

# The library's float64 path carries float32 scale / bias / slopes (helpers.BOUNDS); SDPA in
# float64 is exact to rounding.
TOL = {"sigmoid": BOUNDS[torch.float64], "softmax": 1e-10}

DIM, HEADS = 128, 4  # head_dim 32

ATTN_CONFIGS = {
    "plain": dict(train_len=23),
    "sep-gqa-causal-rms-rope-learnable": dict(
        fused_qkv=False, qkv_bias=True, n_kv_heads=2, causal=True, qk_norm="rms", pos="rope",
        train_len=64, learnable_bias=True),
    "mqa-causal-window-layer-alibi-fixed": dict(
        n_kv_heads=1, causal=True, window=(5, 0), qk_norm="layer", pos="alibi", sigmoid_bias=-2.0),
    "window-alibi-seqlen-bias-scale": dict(window=(3, 4), pos="alibi", scale=0.3),
}


def _randomise(module):
    """Non-trivial values everywhere (norm weights, LayerScale, biases), so each one is exercised."""
    with torch.no_grad():
        for name, p in module.named_parameters():
            if name.endswith("sigmoid_bias"):
                p.add_(0.5 * torch.randn_like(p))
            else:
                p.copy_(torch.randn_like(p) * (0.3 if p.dim() > 1 else 1.0) + (1.0 if p.dim() == 1 else 0.0))
    return module


def _close(got, want, tol):
    """Relative L2 within tol; gradients that are zero in exact arithmetic (softmax ignores a shift of
    k by a constant, so k_norm's bias gets none) leave only rounding, hence the absolute floor."""
    return (got - want).norm() <= tol * want.norm() + 1e-10


def _compare(module, run_ref, x, tol, *extra):
    """Forward and gradients (input and every parameter) of module vs run_ref on a deep copy."""
    ref = copy.deepcopy(module)
    x1 = x.clone().requires_grad_()
    x2 = x.clone().requires_grad_()
    out = module(x1, *extra)
    want = run_ref(ref, x2, *extra[:1])
    assert out.shape == x.shape
    assert rel_l2(out, want) <= tol, f"forward {rel_l2(out, want)}"
    dout = torch.randn_like(out)
    out.backward(dout)
    want.backward(dout)
    assert rel_l2(x1.grad, x2.grad) <= tol, f"dx {rel_l2(x1.grad, x2.grad)}"
    ref_params = dict(ref.named_parameters())
    for name, p in module.named_parameters():
        g, rg = p.grad, ref_params[name].grad
        assert g is not None and rg is not None, name
        assert _close(g, rg, tol), f"d{name} {rel_l2(g, rg)}"


@pytest.mark.parametrize("attn", ["sigmoid", "softmax"])
@pytest.mark.parametrize("cfg", list(ATTN_CONFIGS), ids=list(ATTN_CONFIGS))
def test_attention_matches_plain(attn, cfg):
    kw = dict(ATTN_CONFIGS[cfg])
    if attn == "softmax":
        kw.pop("learnable_bias", None)
    m = _randomise(SelfAttention(DIM, HEADS, attn=attn, dtype=torch.float64, **kw))
    _compare(m, plain_attention, torch.randn(3, 23, DIM, dtype=torch.float64), TOL[attn])


@pytest.mark.parametrize("attn", ["sigmoid", "softmax"])
@pytest.mark.parametrize("cfg", ["sep-gqa-causal-rms-rope-learnable", "window-alibi-seqlen-bias-scale"])
def test_attention_varlen_matches_plain(attn, cfg):
    kw = dict(ATTN_CONFIGS[cfg])
    if attn == "softmax":
        kw.pop("learnable_bias", None)
    m = _randomise(SelfAttention(DIM, HEADS, attn=attn, dtype=torch.float64, **kw))
    lens = [7, 1, 19, 12]
    cu = torch.tensor([0] + lens).cumsum(0).to(torch.int32)
    x = torch.randn(sum(lens), DIM, dtype=torch.float64)
    _compare(m, plain_attention, x, TOL[attn], cu, max(lens))


def test_varlen_equals_one_sequence_at_a_time():
    m = _randomise(SelfAttention(DIM, HEADS, causal=True, pos="rope", qk_norm="rms", dtype=torch.float64))
    lens = [5, 17, 9]
    cu = torch.tensor([0] + lens).cumsum(0).to(torch.int32)
    x = torch.randn(sum(lens), DIM, dtype=torch.float64)
    packed = m(x, cu, max(lens))
    for s, e in zip(cu[:-1].tolist(), cu[1:].tolist()):
        alone = m(x[None, s:e])[0]
        assert rel_l2(packed[s:e], alone) <= TOL["sigmoid"]


def test_learnable_bias_init_and_gradient():
    n = 37
    m = SelfAttention(DIM, HEADS, causal=True, train_len=n, learnable_bias=True, dtype=torch.float64)
    assert m.sigmoid_bias.shape == (HEADS,)
    assert torch.allclose(m.sigmoid_bias, torch.full((HEADS,), -math.log(n)))
    ref = copy.deepcopy(m)
    x = torch.randn(2, 19, DIM, dtype=torch.float64)
    m(x).square().sum().backward()
    plain_attention(ref, x).square().sum().backward()
    g = m.sigmoid_bias.grad
    assert g is not None and torch.all(g != 0)
    assert rel_l2(g, ref.sigmoid_bias.grad) <= TOL["sigmoid"]


def test_fixed_bias_defaults():
    assert SelfAttention(64, 2, train_len=100).bias_value == pytest.approx(-math.log(100))
    assert SelfAttention(64, 2, train_len=100, sigmoid_bias=-1.5).bias_value == -1.5
    assert SelfAttention(64, 2).bias_value is None  # the library's per-sequence -log(Nk)
    assert "sigmoid_bias" not in dict(SelfAttention(64, 2, train_len=8).named_parameters())


@pytest.mark.parametrize("attn", ["sigmoid", "softmax"])
@pytest.mark.parametrize("hybrid", [False, True])
def test_block_matches_plain(attn, hybrid):
    blk = _randomise(TransformerBlock(
        DIM, HEADS, attn=attn, causal=True, qk_norm="layer", pos="rope", train_len=23,
        norm="rms" if hybrid else "layer", hybrid_norm=hybrid, layer_scale=0.1 if hybrid else None,
        mlp_ratio=2.0, dtype=torch.float64))
    _compare(blk, plain_block, torch.randn(2, 23, DIM, dtype=torch.float64), TOL[attn])


def test_block_varlen_matches_plain():
    blk = _randomise(TransformerBlock(DIM, HEADS, causal=True, pos="alibi", layer_scale=1e-2,
                                      n_kv_heads=2, dtype=torch.float64))
    lens = [11, 4]
    cu = torch.tensor([0] + lens).cumsum(0).to(torch.int32)
    _compare(blk, plain_block, torch.randn(sum(lens), DIM, dtype=torch.float64), TOL["sigmoid"], cu, max(lens))


def test_bfloat16_block_close_to_float64():
    blk = TransformerBlock(DIM, HEADS, causal=True, qk_norm="rms", train_len=64, layer_scale=1e-1)
    ref = copy.deepcopy(blk).double()
    x = torch.randn(2, 64, DIM)
    got = blk.to(torch.bfloat16)(x.to(torch.bfloat16))
    assert got.dtype == torch.bfloat16
    assert rel_l2(got.double(), plain_block(ref, x.double())) <= 2e-2


def test_layer_scale():
    ls = LayerScale(8, init=1e-3)
    assert torch.all(ls.gamma == 1e-3)
    x = torch.randn(3, 8)
    assert torch.equal(ls(x), x * ls.gamma)


def test_alibi_slopes():
    assert torch.allclose(alibi_slopes(8), torch.tensor([2.0 ** -i for i in range(1, 9)]))
    # not a power of two: the 4-head slopes, then every other one of the 8-head set
    want = [2.0 ** -2, 2.0 ** -4, 2.0 ** -6, 2.0 ** -8, 2.0 ** -1, 2.0 ** -3]
    assert torch.allclose(alibi_slopes(6), torch.tensor(want))


def test_state_dict_round_trip():
    torch.manual_seed(1)
    kw = dict(attn="sigmoid", causal=True, qk_norm="rms", pos="rope", train_len=32, learnable_bias=True,
              layer_scale=1e-4, hybrid_norm=True)
    a = _randomise(TransformerBlock(64, 2, **kw))
    buf = io.BytesIO()
    torch.save(a.state_dict(), buf)
    buf.seek(0)
    b = TransformerBlock(64, 2, **kw)
    assert not torch.equal(a.attn.sigmoid_bias, b.attn.sigmoid_bias)
    b.load_state_dict(torch.load(buf))
    assert {"attn.sigmoid_bias", "attn_scale.gamma", "attn.q_norm.weight"} <= set(b.state_dict())
    x = torch.randn(2, 32, 64)
    assert torch.equal(a(x), b(x))


def test_record_output_norm():
    m = SelfAttention(64, 2, causal=True, sigmoid_bias=0.0)
    m.record_output_norm = True
    x = torch.randn(1, 40, 64)
    m(x)
    with torch.no_grad():
        q, k, v = m._project(x)
        o = fs.sigmoid_attn(q, k, v, causal=True, bias=0.0).flatten(-2)
    assert m.last_output_norm.item() == pytest.approx(o.norm(dim=-1).mean().item(), rel=1e-5)


@pytest.mark.parametrize("varlen", [False, True])
def test_compile_block(varlen):
    torch._dynamo.reset()
    blk = TransformerBlock(64, 2, causal=True, qk_norm="rms", pos="rope", train_len=16, learnable_bias=True,
                           layer_scale=0.5)
    ref = copy.deepcopy(blk)
    compiled = torch.compile(blk, backend="aot_eager", fullgraph=True)
    if varlen:
        cu = torch.tensor([0, 6, 16], dtype=torch.int32)
        x, extra = torch.randn(16, 64), (cu, 10)
    else:
        x, extra = torch.randn(2, 16, 64), ()
    got, want = compiled(x, *extra), ref(x, *extra)
    assert rel_l2(got, want) <= BOUNDS[torch.float32]
    got.sum().backward()
    want.sum().backward()
    ref_params = dict(ref.named_parameters())
    for name, p in blk.named_parameters():
        assert rel_l2(p.grad, ref_params[name].grad) <= BOUNDS[torch.float32], name
    torch._dynamo.reset()


def test_bad_arguments():
    with pytest.raises(ValueError, match="attn"):
        SelfAttention(64, 2, attn="relu")
    with pytest.raises(ValueError, match="n_kv_heads"):
        SelfAttention(64, 4, n_kv_heads=3)
    with pytest.raises(ValueError, match="learnable_bias"):
        SelfAttention(64, 2, learnable_bias=True)
    with pytest.raises(ValueError, match="softmax"):
        SelfAttention(64, 2, attn="softmax", learnable_bias=True, train_len=8)
    with pytest.raises(ValueError, match="varlen"):
        SelfAttention(64, 2)(torch.randn(5, 64), torch.tensor([0, 5], dtype=torch.int32))
    with pytest.raises(fs.FlashSigmoidError, match="head_dim"):
        SelfAttention(48, 3)(torch.randn(1, 4, 48))  # head_dim 16: not one the library takes


# ---- CUDA (skipped without a GPU) -------------------------------------------------------------

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="no GPU: torch.cuda.is_available() is False")
CUDA_TOL = 3e-2  # bf16 everywhere in the block (projections, norms, MLP), not only in the attention


@cuda
@pytest.mark.parametrize("varlen", [False, True])
def test_cuda_bf16_block_matches_plain(varlen):
    blk = _randomise(TransformerBlock(256, 4, n_kv_heads=2, causal=True, qk_norm="rms", pos="rope",
                                      train_len=200, learnable_bias=True, layer_scale=0.5, hybrid_norm=True))
    with torch.no_grad():
        for p in blk.parameters():
            p.mul_(0.5)  # keep bf16 rounding of the residual stream moderate
    ref = copy.deepcopy(blk).double()
    gpu = blk.to("cuda", torch.bfloat16)
    if varlen:
        lens = [150, 33, 200]
        cu = torch.tensor([0] + lens).cumsum(0).to(torch.int32)
        x, extra, ref_extra = torch.randn(sum(lens), 256), (cu.cuda(), max(lens)), (cu,)
    else:
        x, extra, ref_extra = torch.randn(2, 200, 256), (), ()
    xg = x.to("cuda", torch.bfloat16).requires_grad_()
    xr = x.double().requires_grad_()
    out, want = gpu(xg, *extra), plain_block(ref, xr, *ref_extra)
    assert rel_l2(out.double().cpu(), want) <= CUDA_TOL
    dout = torch.randn_like(want)
    out.backward(dout.to("cuda", torch.bfloat16))
    want.backward(dout)
    assert rel_l2(xg.grad.double().cpu(), xr.grad) <= CUDA_TOL
    g, rg = gpu.attn.sigmoid_bias.grad, ref.attn.sigmoid_bias.grad
    assert g is not None and rel_l2(g.double().cpu(), rg) <= CUDA_TOL


@cuda
def test_cuda_autocast_attention():
    m = SelfAttention(256, 4, causal=True, train_len=128, qk_norm="layer").cuda()
    ref = copy.deepcopy(m).double().cpu()
    x = torch.randn(2, 128, 256)
    with torch.autocast("cuda", dtype=torch.bfloat16):
        out = m(x.cuda())
    assert out.dtype == torch.bfloat16
    assert rel_l2(out.double().cpu(), plain_attention(ref, x.double())) <= CUDA_TOL
