"""Plain PyTorch versions of the flashsigmoid.nn modules for the tests (written for them).

They read a module's parameters but compute everything themselves, with a materialised N x N score
matrix, explicit norm formulas and a complex-number RoPE, so they share no code path with the
modules beyond the parameters.
"""

import math

import torch
import torch.nn.functional as F

from flashsigmoid.nn import SelfAttention, TransformerBlock


def plain_norm(norm, x):
    """RMSNorm / LayerNorm by their formulas, with the module's weights."""
    if isinstance(norm, torch.nn.Identity):
        return x
    if isinstance(norm, torch.nn.RMSNorm):
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + norm.eps) * norm.weight
    mean = x.mean(-1, keepdim=True)
    var = (x - mean).pow(2).mean(-1, keepdim=True)
    return (x - mean) / torch.sqrt(var + norm.eps) * norm.weight + norm.bias


def plain_rope(x, base):
    """x [B, N, H, D]: pairs (x_i, x_{i+D/2}) as complex numbers, turned by angle pos * base^(-2i/D)."""
    N, D = x.shape[1], x.shape[-1]
    half = D // 2
    freq = torch.tensor([base ** (-2.0 * i / D) for i in range(half)], dtype=torch.float64)
    angle = torch.arange(N, dtype=torch.float64)[:, None] * freq  # [N, D/2]
    turn = torch.polar(torch.ones_like(angle), angle)[None, :, None, :]
    z = torch.complex(x[..., :half].double(), x[..., half:].double()) * turn
    return torch.cat((z.real, z.imag), dim=-1).to(x.dtype)


def _projections(m: SelfAttention, x):
    if m.fused_qkv:
        kv = m.n_kv_heads * m.head_dim
        ws = m.qkv.weight.split([m.dim, kv, kv])
        bs = m.qkv.bias.split([m.dim, kv, kv]) if m.qkv.bias is not None else (None,) * 3
    else:
        ws = (m.q_proj.weight, m.k_proj.weight, m.v_proj.weight)
        bs = (m.q_proj.bias, m.k_proj.bias, m.v_proj.bias)
    B, N = x.shape[:2]
    heads = (m.n_heads, m.n_kv_heads, m.n_kv_heads)
    return [F.linear(x, w, b).view(B, N, h, m.head_dim) for w, b, h in zip(ws, bs, heads)]


def plain_attention_dense(m: SelfAttention, x):
    """x [B, N, dim] -> [B, N, dim], materialising the scores."""
    B, N, _ = x.shape
    q, k, v = _projections(m, x)
    if m.q_norm is not None:
        q, k = plain_norm(m.q_norm, q), plain_norm(m.k_norm, k)
    if m.rope is not None:
        q, k = plain_rope(q, m.rope.base), plain_rope(k, m.rope.base)
    group = m.n_heads // m.n_kv_heads
    k, v = k.repeat_interleave(group, dim=2), v.repeat_interleave(group, dim=2)
    scale = m.scale if m.scale is not None else 1.0 / math.sqrt(m.head_dim)
    s = torch.einsum("bqhd,bkhd->bhqk", q, k) * scale
    i = torch.arange(N)[:, None]
    j = torch.arange(N)[None, :]
    if m.alibi is not None:
        s = s - m.alibi.to(s.dtype).view(1, -1, 1, 1) * (i - j).abs().to(s.dtype)
    visible = torch.ones(N, N, dtype=torch.bool)
    if m.causal:
        visible &= j <= i
    if m.window[0] >= 0:
        visible &= j >= i - m.window[0]
    if m.window[1] >= 0:
        visible &= j <= i + m.window[1]
    if m.attn == "sigmoid":
        if m.sigmoid_bias is not None:
            s = s + m.sigmoid_bias.to(s.dtype).view(1, -1, 1, 1)
        elif m.bias_value is not None:
            s = s + m.bias_value
        else:
            s = s - math.log(N)
        p = torch.sigmoid(s) * visible
    else:
        p = s.masked_fill(~visible, float("-inf")).softmax(-1)
    o = torch.einsum("bhqk,bkhd->bqhd", p, v).reshape(B, N, m.dim)
    return F.linear(o, m.out_proj.weight, m.out_proj.bias)


def plain_attention(m: SelfAttention, x, cu_seqlens=None):
    """Dense [B, N, dim], or packed [total, dim] with cu_seqlens (one sequence at a time)."""
    if cu_seqlens is None:
        return plain_attention_dense(m, x)
    b = cu_seqlens.tolist()
    return torch.cat([plain_attention_dense(m, x[None, s:e])[0] for s, e in zip(b[:-1], b[1:])])


def _scale(ls, x):
    return x if isinstance(ls, torch.nn.Identity) else x * ls.gamma


def plain_block(blk: TransformerBlock, x, cu_seqlens=None):
    a = plain_attention(blk.attn, plain_norm(blk.attn_norm, x), cu_seqlens)
    x = x + _scale(blk.attn_scale, plain_norm(blk.attn_post_norm, a))
    fc1, fc2 = blk.mlp[0], blk.mlp[2]
    h = F.linear(F.gelu(F.linear(plain_norm(blk.mlp_norm, x), fc1.weight, fc1.bias)), fc2.weight, fc2.bias)
    return x + _scale(blk.mlp_scale, h)
