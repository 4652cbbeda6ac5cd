"""A plain, materialising sigmoid-attention reference for the tests (written for them).

Runs in whatever dtype it is given: float64 for the reference, or the inputs'
low-precision dtype for the "plain implementation" baseline of SPEC.md.
"""

import math

import torch


def attn_dense(q, k, v, *, causal=False, scale=None, bias=None, window=(-1, -1), alibi_slopes=None,
               positions=None):
    """q [B, Nq, Hq, D], k/v [B, Nk, Hkv, D] -> [B, Nq, Hq, D], computed in q's dtype. positions:
    (q_offset, k_offset) global positions of the first query / key row (default: bottom-right)."""
    B, Nq, Hq, D = q.shape
    Nk, Hkv = k.shape[1], k.shape[2]
    dt = q.dtype
    group = Hq // Hkv
    k = k.repeat_interleave(group, dim=2)
    v = v.repeat_interleave(group, dim=2)
    if scale is None:
        scale = 1.0 / math.sqrt(D)
    s = torch.einsum("bqhd,bkhd->bhqk", q, k) * scale
    if bias is None:
        s = s - (math.log(Nk) if Nk > 0 else 0.0)
    elif isinstance(bias, torch.Tensor):
        s = s + bias.to(dt).view(1, Hq, 1, 1)
    else:
        s = s + bias
    q_pos, k_pos = (Nk - Nq, 0) if positions is None else positions
    i = torch.arange(Nq).view(Nq, 1) + q_pos  # query positions (bottom-right: on the key axis)
    j = torch.arange(Nk).view(1, Nk) + k_pos  # key positions
    if alibi_slopes is not None:
        slopes = alibi_slopes.to(dt)
        slopes = slopes.view(1, Hq, 1, 1) if slopes.dim() == 1 else slopes.view(B, Hq, 1, 1)
        s = s - slopes * (i - j).abs().to(dt)
    keep = torch.ones(Nq, Nk, dtype=torch.bool)
    if causal:
        keep &= j <= i
    if window[0] >= 0:
        keep &= j >= i - window[0]
    if window[1] >= 0:
        keep &= j <= i + window[1]
    p = torch.where(keep, torch.sigmoid(s), torch.zeros((), dtype=dt))
    return torch.einsum("bhqk,bkhd->bqhd", p, v)


def attn_varlen(q, k, v, cu_q, cu_k, *, alibi_slopes=None, **kw):
    """Packed q [total_q, Hq, D], k/v [total_k, Hkv, D]; loops over the sequences."""
    outs = []
    cu_q, cu_k = cu_q.tolist(), cu_k.tolist()
    for b in range(len(cu_q) - 1):
        qs = q[cu_q[b]:cu_q[b + 1]].unsqueeze(0)
        ks = k[cu_k[b]:cu_k[b + 1]].unsqueeze(0)
        vs = v[cu_k[b]:cu_k[b + 1]].unsqueeze(0)
        a = alibi_slopes
        if a is not None and a.dim() == 2:
            a = a[b]
        outs.append(attn_dense(qs, ks, vs, alibi_slopes=a, **kw)[0])
    out = torch.cat(outs, 0)
    tail = q.shape[0] - out.shape[0]  # rows past cu_seqlens_q[-1] are not part of any sequence
    assert tail == 0, "tests keep total_q == cu_seqlens_q[-1]"
    return out


def rel_l2(x, ref):
    """Relative L2 error ||x - ref|| / ||ref|| in float64; NaN anywhere -> inf."""
    x = x.detach().to(torch.float64)
    ref = ref.detach().to(torch.float64)
    assert x.shape == ref.shape, (x.shape, ref.shape)
    if not torch.isfinite(x).all():
        return math.inf
    n = ref.norm().item()
    d = (x - ref).norm().item()
    if n == 0.0:
        return 0.0 if d == 0.0 else math.inf
    return d / n
