"""What the kernels do not compute, in PyTorch, with the scores built one block of query rows
at a time: the forward-mode tangent (jvp) and the ALiBi slopes' gradient.

Memory stays bounded (about ``_BLOCK_SCORES`` scores per block, never N x N at once); time
is that of a plain O(Nq * Nk * D) implementation. The rules below (bias, ALiBi distance,
bottom-right aligned causal mask and window) are those of ``src/common/score_transform.hpp``.
Every function takes the op's arguments by name, so an argument added to the op's schema
fails here loudly instead of being ignored.
"""

import math
from typing import Dict, Iterator, List, Optional

import torch
from torch import Tensor

from . import _C

_BLOCK_SCORES = 1 << 22  # scores per block (16 MiB in float32)


def _acc_dtype(q: Tensor) -> torch.dtype:
    return torch.float64 if q.dtype == torch.float64 else torch.float32


def _scale_value(q: Tensor, scale: Optional[float], scale_tensor: Optional[Tensor]) -> float:
    if scale_tensor is not None:
        return float(scale_tensor)
    return scale if scale is not None else 1.0 / math.sqrt(q.shape[-1])


def _segments(cu_seqlens_q, cu_seqlens_k, q_like: List, k_like: List, alibi_like: List):
    """Dense: one segment, the whole batch. Varlen: one segment per sequence, as a batch of one.

    Yields (q rows, q-like slices, k-like slices, alibi-like slices); None entries pass through.
    """
    if cu_seqlens_q is None:
        yield slice(None), q_like, k_like, alibi_like
        return
    cq, ck = cu_seqlens_q.tolist(), cu_seqlens_k.tolist()
    for b in range(len(cq) - 1):
        rq, rk = slice(cq[b], cq[b + 1]), slice(ck[b], ck[b + 1])
        yield (rq,
               [None if t is None else t[rq].unsqueeze(0) for t in q_like],
               [None if t is None else t[rk].unsqueeze(0) for t in k_like],
               [a if a is None or a.dim() == 1 else a[b:b + 1] for a in alibi_like])


def _per_head(x: Tensor, batch: int, heads_kv: int, group: int, dtype) -> Tensor:
    """[Hq] or [B, Hq] -> broadcastable against scores [B, Hkv, G, rows, Nk]."""
    x = x.to(dtype)
    return x.view(1 if x.dim() == 1 else batch, heads_kv, group, 1, 1)


class _Block:
    """Scores of query rows [i0, i1) of one dense segment: P and the ALiBi distance."""

    def __init__(self, i0, i1, p, keep, dist):
        self.i0, self.i1, self.p, self.keep, self.dist = i0, i1, p, keep, dist


def _blocks(q: Tensor, k: Tensor, alibi: Optional[Tensor], *, scale: float, bias_mode: int,
            bias_value: float, bias: Optional[Tensor], causal: bool, window_left: int,
            window_right: int, q_offset: Optional[int] = None,
            k_offset: Optional[int] = None) -> Iterator[_Block]:
    """q [B, Nq, Hq, D], k [B, Nk, Hkv, D] (one dense segment) -> blocks of P [B, Hkv, G, rows, Nk].

    Query row i sits at position q_offset + i and key j at k_offset + j; without offsets the
    rows are aligned bottom-right (i + Nk - Nq against j).
    """
    B, Nq, Hq, D = q.shape
    Nk, Hkv = k.shape[1], k.shape[2]
    G = Hq // Hkv
    acc = _acc_dtype(q)
    kf = k.to(acc)
    if bias_mode == _C.BIAS_PER_HEAD:
        b = _per_head(bias, B, Hkv, G, acc)
    elif bias_mode == _C.BIAS_SCALAR:
        b = bias_value
    else:
        b = -math.log(Nk) if Nk > 0 else 0.0
    slopes = None if alibi is None else _per_head(alibi, B, Hkv, G, acc)
    rows = max(1, _BLOCK_SCORES // max(1, B * Hq * Nk))
    if q_offset is None and k_offset is None:
        q_pos0, k_pos0 = Nk - Nq, 0
    else:
        q_pos0, k_pos0 = q_offset or 0, k_offset or 0
    j = torch.arange(Nk, device=q.device) + k_pos0
    for i0 in range(0, Nq, rows):
        i1 = min(Nq, i0 + rows)
        qi = q[:, i0:i1].to(acc).reshape(B, i1 - i0, Hkv, G, D)
        s = torch.einsum("bihgd,bjhd->bhgij", qi, kf) * scale + b
        # how far key j lies before query row i
        before = (torch.arange(i0, i1, device=q.device) + q_pos0).view(-1, 1) - j.view(1, -1)
        dist = before.abs().to(acc)
        if slopes is not None:
            s = s - slopes * dist
        keep = torch.ones_like(before, dtype=torch.bool)
        if causal:
            keep &= before >= 0
        if window_left >= 0:
            keep &= before <= window_left
        if window_right >= 0:
            keep &= before >= -window_right
        p = torch.where(keep, torch.sigmoid(s), torch.zeros((), dtype=acc, device=q.device))
        yield _Block(i0, i1, p, keep, dist)


def _rows_to_heads(x: Tensor) -> Tensor:
    """[B, Hkv, G, rows, D] -> [B, rows, Hq, D]."""
    B, Hkv, G, R, D = x.shape
    return x.permute(0, 3, 1, 2, 4).reshape(B, R, Hkv * G, D)


def _score_tangent(blk: _Block, q, k, tq, tk, tbias, talibi, scale, B, Hkv, G, acc):
    """dS for the rows of blk: scale (dQ K^T + Q dK^T) + d bias - d slope * distance."""
    D = q.shape[-1]
    rows = slice(blk.i0, blk.i1)
    t = torch.zeros((), dtype=acc, device=q.device)
    if tq is not None:
        t = t + torch.einsum("bihgd,bjhd->bhgij", tq[:, rows].to(acc).reshape(B, -1, Hkv, G, D),
                             k.to(acc)) * scale
    if tk is not None:
        t = t + torch.einsum("bihgd,bjhd->bhgij", q[:, rows].to(acc).reshape(B, -1, Hkv, G, D),
                             tk.to(acc)) * scale
    if tbias is not None:
        t = t + _per_head(tbias, B, Hkv, G, acc)
    if talibi is not None:
        t = t - _per_head(talibi, B, Hkv, G, acc) * blk.dist
    return t


def _optional(**kw):
    """The op's trailing optional arguments that are set (so an op without them still takes the call)."""
    return {n: x for n, x in kw.items() if x is not None}


def jvp(fwd_op, args: Dict, tangents: Dict[str, Tensor]) -> Tensor:
    """The tangent of fwd(**args) along `tangents` (q, k, v, bias, alibi_slopes; absent = zero).

    dO = dP V + P dV with dP = P (1 - P) dS: P dV is the op itself applied to dV; dP V is
    built here block by block.
    """
    return _jvp(fwd_op, tangents, **args)


def _jvp(fwd_op, tangents, *, q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, causal,
         scale, bias_mode, bias_value, bias, window_left, window_right, alibi_slopes, scale_tensor=None,
         q_offset=None, k_offset=None):
    tq, tk, tv, tbias, talibi = (tangents.get(n) for n in ("q", "k", "v", "bias", "alibi_slopes"))
    acc = _acc_dtype(q)
    scale_f = _scale_value(q, scale, scale_tensor)
    opts = dict(scale=scale_f, bias_mode=bias_mode, bias_value=bias_value, causal=causal,
                window_left=window_left, window_right=window_right, q_offset=q_offset, k_offset=k_offset)
    parts = []
    tail = q.shape[0] if cu_seqlens_q is not None else 0
    for rq, (qs, tqs), (ks, vs, tks), (al, tal) in _segments(
            cu_seqlens_q, cu_seqlens_k, [q, tq], [k, v, tk], [alibi_slopes, talibi]):
        B, Nq, Hq, D = qs.shape
        Hkv = ks.shape[2]
        G = Hq // Hkv
        rows_out = []
        for blk in _blocks(qs, ks, al, bias=bias, **opts):
            ds = _score_tangent(blk, qs, ks, tqs, tks, tbias, tal, scale_f, B, Hkv, G, acc)
            dp = torch.where(blk.keep, blk.p * (1 - blk.p) * ds, torch.zeros((), dtype=acc, device=q.device))
            rows_out.append(_rows_to_heads(torch.einsum("bhgij,bjhd->bhgid", dp, vs.to(acc))))
        parts.append(torch.cat(rows_out, 1) if rows_out else qs.new_zeros(qs.shape, dtype=acc))
        if cu_seqlens_q is not None:
            parts[-1] = parts[-1][0]
            tail -= Nq
    if cu_seqlens_q is None:
        d_out = parts[0]
    else:  # rows past cu_seqlens_q[-1] belong to no sequence
        d_out = torch.cat(parts + [q.new_zeros((tail,) + tuple(q.shape[1:]), dtype=acc)], 0)
    if tv is not None:
        d_out = d_out + fwd_op(q, k, tv, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, causal, scale,
                               bias_mode, bias_value, bias, window_left, window_right, alibi_slopes,
                               **_optional(scale_tensor=scale_tensor, q_offset=q_offset,
                                           k_offset=k_offset)).to(acc)
    return d_out.to(q.dtype)


def alibi_slopes_grad(dout, q, k, v, cu_seqlens_q, cu_seqlens_k, causal, scale, bias_mode, bias_value, bias,
                      window_left, window_right, alibi_slopes, scale_tensor=None, q_offset=None,
                      k_offset=None) -> Tensor:
    """d slope_h = -sum_ij dS_hij |i + Nk - Nq - j| with dS = (dO V^T) P (1 - P), in the slopes' shape."""
    acc = _acc_dtype(q)
    opts = dict(scale=_scale_value(q, scale, scale_tensor), bias_mode=bias_mode, bias_value=bias_value,
                causal=causal, window_left=window_left, window_right=window_right, q_offset=q_offset,
                k_offset=k_offset)
    per_segment = []
    for _, (qs, dos), (ks, vs), (al,) in _segments(cu_seqlens_q, cu_seqlens_k, [q, dout], [k, v],
                                                     [alibi_slopes]):
        B, Nq, Hq, D = qs.shape
        Hkv = ks.shape[2]
        G = Hq // Hkv
        g = torch.zeros(B, Hkv, G, dtype=acc, device=q.device)
        for blk in _blocks(qs, ks, al, bias=bias, **opts):
            do = dos[:, blk.i0:blk.i1].to(acc).reshape(B, -1, Hkv, G, D)
            dp = torch.einsum("bihgd,bjhd->bhgij", do, vs.to(acc))
            ds = torch.where(blk.keep, dp * blk.p * (1 - blk.p), torch.zeros((), dtype=acc, device=q.device))
            g = g - (ds * blk.dist).sum((-2, -1))
        per_segment.append(g.reshape(B, Hq))
    g = torch.cat(per_segment, 0)
    if alibi_slopes.dim() == 1:
        g = g.sum(0)
    return g.to(alibi_slopes.dtype)


__all__ = ["alibi_slopes_grad", "jvp"]
