"""Context-parallel sigmoid attention over ``torch.distributed`` (NCCL on GPUs, Gloo on CPUs).

A sequence of ``N`` tokens is split over the ``W`` ranks of a process group; each rank holds
``n = N / W`` rows of q, k and v (``[B, n, H, D]``) and gets its rows of the output.

- :func:`ring_attn`: K/V blocks travel around the ring (batched ``isend``/``irecv``, posted before
  the local block's compute so that they overlap it). Sigmoid needs no row statistics, so the
  partial outputs of the key blocks simply add (in fp32, cast once), and the backward passes the
  dK/dV accumulators around the ring with no LSE anywhere.
- :func:`ulysses_attn`: all-to-all from sequence-split to head-split, local attention over the
  whole sequence, all-to-all back (DeepSpeed-Ulysses). Needs ``Hq % W == 0``.
- :func:`ulysses_attn_varlen`: the same for packed variable-length input (``[total, H, D]`` with
  the global ``cu_seqlens``): rank ``r`` holds packed rows ``[r t, (r + 1) t)``, ``t = total / W``.
  The ring takes no varlen input (a sequence boundary inside a block would need one kernel call
  per sequence segment and step).

Layouts (:func:`shard_sequence` / :func:`gather_sequence` convert): ``"contiguous"``: rank ``r``
holds rows ``[r n, (r + 1) n)``; ``"zigzag"``: the sequence is cut into ``2 W`` chunks and rank ``r``
holds chunks ``r`` and ``2 W - 1 - r``, which balances causal work. Masks and ALiBi use the global
positions of every row (``Options::positions`` of the kernels); the default bias is
``-log(N)`` of the global sequence. A per-head bias tensor is learnable: its gradient is the sum
over the whole sequence, identical on every rank (do not all-reduce it again over this group).

Every call first agrees across the group that all ranks hold matching inputs, and then that the
first local kernel call was accepted: a bad input on one rank raises ``FlashSigmoidError`` on every
rank instead of leaving the others waiting.
"""

import dataclasses
import math
from dataclasses import dataclass
from typing import List, Optional, Tuple

import torch
import torch.distributed as dist
from torch import Tensor

from . import _C, _ops
from ._C import FlashSigmoidError

__all__ = ["gather_sequence", "ring_attn", "shard_sequence", "ulysses_attn", "ulysses_attn_varlen"]

_LAYOUTS = ("contiguous", "zigzag")


# ---------------------------------------------------------------------------
# layouts
# ---------------------------------------------------------------------------


def _segments(layout: str, rank: int, world: int, n_local: int) -> List[Tuple[int, int, int]]:
    """This rank's rows as (global position, local row, length) runs."""
    if layout == "contiguous":
        return [(rank * n_local, 0, n_local)]
    c = n_local // 2
    return [(rank * c, 0, c), ((2 * world - 1 - rank) * c, c, c)]


def _global_order(layout: str, world: int, n_local: int, device) -> Tensor:
    """Index of each global position in the rank-major concatenation of all ranks' rows."""
    idx = torch.empty(world * n_local, dtype=torch.long)
    for r in range(world):
        for pos, row, length in _segments(layout, r, world, n_local):
            idx[pos:pos + length] = torch.arange(r * n_local + row, r * n_local + row + length)
    return idx.to(device)


def _check_layout(layout: str, n: int, world: int) -> None:
    if layout not in _LAYOUTS:
        raise FlashSigmoidError(f"flashsigmoid.distributed: layout must be one of {_LAYOUTS}, got {layout!r}")
    if layout == "zigzag" and n % 2:
        raise FlashSigmoidError(
            f"flashsigmoid.distributed: the zigzag layout needs an even number of rows per rank, got {n}")


def shard_sequence(x: Tensor, group=None, layout: str = "contiguous", dim: int = 1) -> Tensor:
    """This rank's rows (along ``dim``) of a full-sequence tensor, in ``layout`` (a view where possible)."""
    world, rank = dist.get_world_size(group), dist.get_rank(group)
    n_total = x.shape[dim]
    if n_total % (world * (2 if layout == "zigzag" else 1)):
        raise FlashSigmoidError(
            f"flashsigmoid.distributed: a sequence of {n_total} rows cannot be split into {world} ranks' "
            f"{layout} parts; accepted: a multiple of {world * (2 if layout == 'zigzag' else 1)}")
    n = n_total // world
    _check_layout(layout, n, world)
    parts = [x.narrow(dim, pos, length) for pos, _, length in _segments(layout, rank, world, n)]
    return parts[0] if len(parts) == 1 else torch.cat(parts, dim)


def gather_sequence(x: Tensor, group=None, layout: str = "contiguous", dim: int = 1) -> Tensor:
    """The full sequence from every rank's rows (all-gather, then global order); no autograd."""
    world = dist.get_world_size(group)
    n = x.shape[dim]
    _check_layout(layout, n, world)
    parts = [torch.empty_like(x) for _ in range(world)]
    dist.all_gather(parts, x.contiguous(), group=group)
    full = torch.cat(parts, dim)
    if layout == "contiguous":
        return full
    return full.index_select(dim, _global_order(layout, world, n, x.device))


# ---------------------------------------------------------------------------
# configuration and cross-rank agreement
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class _Cfg:
    group: object
    world: int
    rank: int
    layout: str
    causal: bool
    scale: Optional[float]
    bias_mode: int
    bias_value: float
    window: Tuple[int, int]
    n_global: int


def _peer(group, rank: int) -> int:
    return rank if group is None else dist.get_global_rank(group, rank)


def _fail(cfg_group, world: int, error: Optional[BaseException], what: str) -> None:
    """Collective: raises FlashSigmoidError on every rank when any rank's `error` is set."""
    device = _comm_device(cfg_group)
    flag = torch.tensor([0 if error is None else 1], dtype=torch.int32, device=device)
    dist.all_reduce(flag, op=dist.ReduceOp.MAX, group=cfg_group)
    if int(flag.item()) == 0:
        return
    msgs: List[Optional[str]] = [None] * world
    dist.all_gather_object(msgs, None if error is None else str(error), group=cfg_group)
    failed = "; ".join(f"rank {r}: {m}" for r, m in enumerate(msgs) if m is not None)
    err = FlashSigmoidError(f"flashsigmoid.distributed: {what} failed on {failed}")
    if error is not None:
        raise err from error
    raise err


def _comm_device(group) -> torch.device:
    backend = dist.get_backend(group)
    if backend == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


_DTYPE_IDS = {torch.float32: 0, torch.float16: 1, torch.bfloat16: 2, torch.float64: 3}


def _describe_inputs(q, k, v, bias, alibi, layout, world) -> Tuple[List[int], Optional[str]]:
    """What every rank must agree on, and this rank's own input error (None when it has none)."""
    meta = [-1] * 13
    try:
        for name, t in (("q", q), ("k", k), ("v", v)):
            if not isinstance(t, Tensor) or t.dim() != 4:
                shape = list(t.shape) if isinstance(t, Tensor) else type(t).__name__
                hint = ("; packed variable-length input takes the all-to-all path, ulysses_attn_varlen "
                        "(the ring does not take varlen)") if isinstance(t, Tensor) and t.dim() == 3 else ""
                return meta, f"{name} must be a [batch, seqlen, heads, head_dim] tensor, got {shape}{hint}"
        if k.shape != v.shape:
            return meta, f"k {list(k.shape)} and v {list(v.shape)} must have one shape"
        if q.shape[0] != k.shape[0] or q.shape[1] != k.shape[1]:
            return meta, (f"q {list(q.shape)} and k {list(k.shape)} must hold the same batch and the same "
                          "rows of the sequence (context parallelism is self-attention)")
        if q.dtype != k.dtype or q.dtype != v.dtype or q.device != k.device or q.device != v.device:
            return meta, "q, k and v must share one dtype and one device"
        if q.dtype not in _DTYPE_IDS:
            return meta, f"q has dtype {q.dtype}; accepted: float32, float16, bfloat16, float64"
        _check_layout(layout, q.shape[1], world)
        bias_kind = 0 if bias is None else (2 if isinstance(bias, Tensor) else 1)
        alibi_kind = 0 if alibi is None else alibi.dim()
        meta = [q.shape[0], q.shape[1], q.shape[2], k.shape[2], q.shape[3], k.shape[3], _DTYPE_IDS[q.dtype],
                q.device.type == "cuda", bias_kind, bias.numel() if isinstance(bias, Tensor) else 0,
                alibi_kind, alibi.numel() if alibi is not None else 0, _LAYOUTS.index(layout)]
        return meta, None
    except FlashSigmoidError as e:
        return meta, str(e).replace("flashsigmoid.distributed: ", "")


_META_NAMES = ["batch", "rows", "query heads", "kv heads", "head_dim", "k head_dim", "dtype", "on cuda", "bias kind",
               "bias size", "alibi rank", "alibi size", "layout"]


_SAME_INPUTS = "every rank must hold the same batch, heads, head_dim, dtype, rows per rank and options"


def _agree(group, world: int, meta: List[int], error: Optional[str], names: List[str] = _META_NAMES,
           rule: str = _SAME_INPUTS) -> None:
    """Collective: every rank's inputs are well-formed and match; else every rank raises."""
    device = _comm_device(group)
    t = torch.tensor(meta + [0 if error is None else 1], dtype=torch.int64, device=device)
    both = torch.cat([t, -t])
    dist.all_reduce(both, op=dist.ReduceOp.MAX, group=group)
    hi, lo = both[:t.numel()].tolist(), (-both[t.numel():]).tolist()
    if hi[-1] == 0 and hi[:-1] == lo[:-1]:
        return
    infos: List[object] = [None] * world
    dist.all_gather_object(infos, (meta, error), group=group)
    errors = [f"rank {r}: {e}" for r, (_, e) in enumerate(infos) if e is not None]
    if errors:
        raise FlashSigmoidError("flashsigmoid.distributed: bad input on " + "; ".join(errors))
    diff = [i for i in range(len(meta)) if hi[i] != lo[i]]
    detail = ", ".join(f"{names[i]}: " + "/".join(str(m[i]) for m, _ in infos) for i in diff[:4])
    more = f" and {len(diff) - 4} more" if len(diff) > 4 else ""
    raise FlashSigmoidError(
        "flashsigmoid.distributed: the ranks' inputs differ (" + detail + more + " on ranks 0.." + str(world - 1) +
        "); " + rule)


def _bias_args(bias, n_global: int):
    """(bias_mode, bias_value, tensor): the default is -log of the global key count."""
    if bias is None:
        return _C.BIAS_SCALAR, -math.log(n_global) if n_global > 0 else 0.0, None
    return _ops._bias_args(bias)


# ---------------------------------------------------------------------------
# ring: which kernel calls one step makes
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class _Call:
    q0: int  # local query rows [q0, q1)
    q1: int
    k0: int  # local key rows of the block held [k0, k1)
    k1: int
    q_pos: Optional[int]  # global positions of rows q0 / k0; None: no masks, no ALiBi
    k_pos: Optional[int]
    causal: bool


def _pair_visibility(q_seg, k_seg, causal: bool, window: Tuple[int, int]) -> str:
    """'none', 'full' or 'partial': how much of the (query run, key run) block is visible."""
    qa, _, lq = q_seg
    kb, _, lk = k_seg
    left, right = window
    reach_right = 0 if causal else right  # causal is the window's right bound 0 (any right >= 0 is looser)
    q_last, k_last = qa + lq - 1, kb + lk - 1
    if reach_right >= 0 and kb > q_last + reach_right:
        return "none"
    if left >= 0 and k_last < qa - left:
        return "none"
    full_right = reach_right < 0 or k_last <= qa + reach_right
    full_left = left < 0 or kb >= q_last - left
    return "full" if full_right and full_left else "partial"


def _plan(q_segs, k_segs, causal: bool, window: Tuple[int, int], has_alibi: bool) -> List[_Call]:
    """Kernel calls of one ring step: pairs with no visible key are skipped; without ALiBi or a
    window, fully visible pairs need no positions, so neighbouring ones merge into one call."""
    position_free = not has_alibi and window == (-1, -1)
    if position_free and not causal:
        rows_q = sum(s[2] for s in q_segs)
        rows_k = sum(s[2] for s in k_segs)
        return [_Call(0, rows_q, 0, rows_k, None, None, False)]
    calls: List[_Call] = []
    full = [[False] * len(k_segs) for _ in q_segs]
    for a, qs in enumerate(q_segs):
        for b, ks in enumerate(k_segs):
            vis = _pair_visibility(qs, ks, causal, window)
            if vis == "none":
                continue
            if vis == "full" and position_free:
                full[a][b] = True
                continue
            calls.append(_Call(qs[1], qs[1] + qs[2], ks[1], ks[1] + ks[2], qs[0], ks[0], causal))
    # Merge fully visible pairs: runs of query segments that see the same contiguous key segments.
    a = 0
    while a < len(q_segs):
        cols = [b for b in range(len(k_segs)) if full[a][b]]
        if not cols:
            a += 1
            continue
        a_end = a + 1
        while a_end < len(q_segs) and [b for b in range(len(k_segs)) if full[a_end][b]] == cols:
            a_end += 1
        run_start = cols[0]
        for i, b in enumerate(cols):
            if i + 1 == len(cols) or cols[i + 1] != b + 1:
                q_lo, q_hi = q_segs[a][1], q_segs[a_end - 1][1] + q_segs[a_end - 1][2]
                k_lo, k_hi = k_segs[run_start][1], k_segs[b][1] + k_segs[b][2]
                calls.append(_Call(q_lo, q_hi, k_lo, k_hi, None, None, False))
                if i + 1 < len(cols):
                    run_start = cols[i + 1]
        a = a_end
    return calls


def _ring_exchange(cfg: _Cfg, send: List[Tensor], recv: List[Tensor]):
    """Posts send -> next rank, recv <- previous rank (all in one batch); returns the requests."""
    nxt = _peer(cfg.group, (cfg.rank + 1) % cfg.world)
    prv = _peer(cfg.group, (cfg.rank - 1) % cfg.world)
    ops = [dist.P2POp(dist.isend, t, nxt, cfg.group) for t in send]
    ops += [dist.P2POp(dist.irecv, t, prv, cfg.group) for t in recv]
    return dist.batch_isend_irecv(ops)


def _wait(reqs) -> None:
    for r in reqs or ():
        r.wait()


def _rows(t: Tensor, r0: int, r1: int) -> Tensor:
    return t if (r0 == 0 and r1 == t.shape[1]) else t[:, r0:r1]


def _call_fwd(cfg: _Cfg, c: _Call, q, k, v, bias_t, alibi) -> Tensor:
    wl, wr = cfg.window
    return _ops._fwd(_rows(q, c.q0, c.q1), _rows(k, c.k0, c.k1), _rows(v, c.k0, c.k1), None, None, 0, 0,
                     c.causal, cfg.scale, cfg.bias_mode, cfg.bias_value, bias_t, wl, wr,
                     alibi if c.q_pos is not None else None, q_offset=c.q_pos, k_offset=c.k_pos)


def _call_bwd(cfg: _Cfg, c: _Call, dout, q, k, v, bias_t, alibi, need_dbias: bool):
    wl, wr = cfg.window
    return _ops._bwd(_rows(dout, c.q0, c.q1), _rows(q, c.q0, c.q1), _rows(k, c.k0, c.k1), _rows(v, c.k0, c.k1),
                     None, None, 0, 0, c.causal, cfg.scale, cfg.bias_mode, cfg.bias_value, bias_t, wl, wr,
                     alibi if c.q_pos is not None else None, need_dbias,
                     torch.are_deterministic_algorithms_enabled(), q_offset=c.q_pos, k_offset=c.k_pos)


def _step_calls(cfg: _Cfg, n: int, src: int, has_alibi: bool) -> List[_Call]:
    return _plan(_segments(cfg.layout, cfg.rank, cfg.world, n), _segments(cfg.layout, src, cfg.world, n),
                 cfg.causal, cfg.window, has_alibi)


def _post_kv(cfg: _Cfg, s: int, comm: bool, k_cur: Tensor, v_cur: Tensor):
    """Posts ring step s's K/V transfer (none on the last step or without comm): (requests or None,
    the [k, v] buffers that receive the previous rank's block)."""
    if s + 1 < cfg.world and comm:
        kv_next = [torch.empty_like(k_cur), torch.empty_like(v_cur)]
        return _ring_exchange(cfg, [k_cur, v_cur], kv_next), kv_next
    return None, None


def _ring_forward(cfg: _Cfg, q, k, v, bias_t, alibi, comm: bool = True, compute: bool = True) -> Tensor:
    """The ring forward. comm / compute: the benchmark's breakdown switches (either part alone)."""
    n = q.shape[1]
    out = torch.zeros(q.shape, dtype=torch.float32, device=q.device)
    k_cur, v_cur = k, v
    for s in range(cfg.world):
        src = (cfg.rank - s) % cfg.world
        reqs, kv_next = _post_kv(cfg, s, comm, k_cur, v_cur)
        error = None
        if compute:
            try:
                for c in _step_calls(cfg, n, src, alibi is not None):
                    out[:, c.q0:c.q1].add_(_call_fwd(cfg, c, q, k_cur, v_cur, bias_t, alibi))
            except Exception as e:  # noqa: BLE001 - reported on every rank below
                if s > 0:
                    raise
                error = e
        if s == 0:
            try:
                _fail(cfg.group, cfg.world, error, "the local attention")
            except FlashSigmoidError:
                _wait(reqs)  # every rank posted its transfers: let them finish before unwinding
                raise
        _wait(reqs)
        if reqs is not None:
            k_cur, v_cur = kv_next
    return out.to(q.dtype)


def _ring_backward(cfg: _Cfg, dout, q, k, v, bias_t, alibi, need_dbias: bool, comm: bool = True,
                   compute: bool = True):
    """dK/dV accumulators (fp32) travel with the K/V block they belong to and reach its owner after
    a full turn; dQ and d(bias) accumulate locally."""
    n = q.shape[1]
    dq = torch.zeros(q.shape, dtype=torch.float32, device=q.device)
    dbias = torch.zeros(bias_t.shape, dtype=torch.float32, device=q.device) if need_dbias else None
    k_cur, v_cur = k, v
    acc_reqs, acc_next = None, None
    for s in range(cfg.world):
        src = (cfg.rank - s) % cfg.world
        kv_reqs, kv_next = _post_kv(cfg, s, comm, k_cur, v_cur)
        parts = []
        if compute:
            for c in _step_calls(cfg, n, src, alibi is not None):
                gq, gk, gv, gb = _call_bwd(cfg, c, dout, q, k_cur, v_cur, bias_t, alibi, need_dbias)
                dq[:, c.q0:c.q1].add_(gq)
                if need_dbias:
                    dbias.add_(gb)
                parts.append((c, gk, gv))
        # This block's accumulators: fresh on the first step, else what the previous rank sent.
        if s == 0 or not comm:
            dk_acc = torch.zeros(k.shape, dtype=torch.float32, device=k.device)
            dv_acc = torch.zeros(v.shape, dtype=torch.float32, device=v.device)
        else:
            _wait(acc_reqs)
            dk_acc, dv_acc = acc_next
        for c, gk, gv in parts:
            dk_acc[:, c.k0:c.k1].add_(gk)
            dv_acc[:, c.k0:c.k1].add_(gv)
        if comm and cfg.world > 1:
            acc_next = (torch.empty_like(dk_acc), torch.empty_like(dv_acc))
            acc_reqs = _ring_exchange(cfg, [dk_acc, dv_acc], list(acc_next))
        _wait(kv_reqs)
        if kv_reqs is not None:
            k_cur, v_cur = kv_next
    if comm and cfg.world > 1:
        _wait(acc_reqs)
        dk_acc, dv_acc = acc_next  # after a full turn: this rank's own block, from every rank
    if need_dbias:
        dist.all_reduce(dbias, group=cfg.group)
    return dq.to(q.dtype), dk_acc.to(k.dtype), dv_acc.to(v.dtype), dbias


class _RingAttn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, bias_t, alibi, cfg: _Cfg):
        ctx.save_for_backward(q, k, v, bias_t, alibi)
        ctx.cfg = cfg
        return _ring_forward(cfg, q, k, v, bias_t, alibi)

    @staticmethod
    def backward(ctx, dout):
        q, k, v, bias_t, alibi = ctx.saved_tensors
        need_dbias = bias_t is not None and ctx.needs_input_grad[3]
        if dout.stride(-1) != 1:
            dout = dout.contiguous()
        dq, dk, dv, db = _ring_backward(ctx.cfg, dout, q, k, v, bias_t, alibi, need_dbias)
        return dq, dk, dv, (db if need_dbias else None), None, None


def _prepare(q, k, v, bias, alibi_slopes, group, layout, causal, scale, window) -> _Cfg:
    world, rank = dist.get_world_size(group), dist.get_rank(group)
    meta, error = _describe_inputs(q, k, v, bias, alibi_slopes, layout, world)
    _agree(group, world, meta, error)
    n_global = q.shape[1] * world
    bias_mode, bias_value, _ = _bias_args(bias, n_global)
    wl, wr = _ops._window_args(window)
    return _Cfg(group, world, rank, layout, bool(causal), _ops._scale_arg(scale), bias_mode, bias_value,
                (wl, wr), n_global)


def ring_attn(q: Tensor, k: Tensor, v: Tensor, *, causal: bool = False, scale: Optional[float] = None, bias=None,
              window: Tuple[int, int] = (-1, -1), alibi_slopes: Optional[Tensor] = None, group=None,
              layout: Optional[str] = None) -> Tensor:
    """Ring attention over this rank's rows of one sequence; returns this rank's rows of the output.

    Args:
        q: ``[B, n, Hq, D]``; k, v: ``[B, n, Hkv, D]`` (``Hq % Hkv == 0``): this rank's ``n`` rows.
        causal, scale, window, alibi_slopes: as in :func:`flashsigmoid.sigmoid_attn`, over global positions.
        bias: ``None`` -> ``-log(N)`` with ``N = n * W`` the global length; a float; or a float32
            tensor ``[Hq]`` (learnable; its gradient is complete and the same on every rank).
        group: the process group (default: the world).
        layout: ``"contiguous"`` or ``"zigzag"``; default zigzag when causal, else contiguous.
    """
    layout = layout or ("zigzag" if causal else "contiguous")
    cfg = _prepare(q, k, v, bias, alibi_slopes, group, layout, causal, scale, window)
    bias_t = bias if isinstance(bias, Tensor) else None
    return _RingAttn.apply(q, k, v, bias_t, alibi_slopes, cfg)


# ---------------------------------------------------------------------------
# all-to-all (Ulysses)
# ---------------------------------------------------------------------------


def _seq_to_heads(cfg: _Cfg, xs: List[Tensor], order: Optional[Tensor]) -> List[Tensor]:
    """[B, n, H_i, D] sequence-split tensors -> [B, N, H_i / W, D] head-split ones (one all-to-all)."""
    W = cfg.world
    B, n, _, D = xs[0].shape
    heads = [x.shape[2] // W for x in xs]
    packed = torch.cat([x.reshape(B, n, W, h, D) for x, h in zip(xs, heads)], dim=3)
    send = packed.permute(2, 0, 1, 3, 4).contiguous()  # [W (dest), B, n, sum(h), D]
    recv = torch.empty_like(send)                          # [W (source), B, n, sum(h), D]
    dist.all_to_all_single(recv, send, group=cfg.group)
    full = recv.permute(1, 0, 2, 3, 4).reshape(B, W * n, sum(heads), D)
    if order is not None:
        full = full.index_select(1, order)
    return list(full.split(heads, dim=2))


def _heads_to_seq(cfg: _Cfg, xs: List[Tensor], inverse: Optional[Tensor]) -> List[Tensor]:
    """The inverse of _seq_to_heads: [B, N, h_i, D] -> [B, n, h_i * W, D]."""
    W = cfg.world
    B, N, _, D = xs[0].shape
    n = N // W
    heads = [x.shape[2] for x in xs]
    packed = torch.cat(xs, dim=2)
    if inverse is not None:
        packed = packed.index_select(1, inverse)
    send = packed.reshape(B, W, n, sum(heads), D).permute(1, 0, 2, 3, 4).contiguous()  # [W (dest), B, n, h, D]
    recv = torch.empty_like(send)
    dist.all_to_all_single(recv, send, group=cfg.group)
    full = recv.permute(1, 2, 0, 3, 4)  # [B, n, W (source = head group), h, D]
    outs, at = [], 0
    for h in heads:
        outs.append(full[..., at:at + h, :].reshape(B, n, W * h, D))
        at += h
    return outs


def _kv_repeat(hq: int, hkv: int, world: int) -> int:
    """How often each kv head is repeated so that the kv heads split evenly over the ranks."""
    g = hq // hkv
    for rep in range(1, g + 1):
        if g % rep == 0 and (hkv * rep) % world == 0:
            return rep
    return g


def _head_slice(cfg: _Cfg, t: Optional[Tensor], heads: int) -> Optional[Tensor]:
    if t is None:
        return None
    per = heads // cfg.world
    return t[..., cfg.rank * per:(cfg.rank + 1) * per]


def _local(xs: List[Tensor], cu: Optional[Tensor], max_seqlen: int):
    """The local kernel's tensors and sequence arguments: dense [B, N, h, D] as is; varlen
    ([1, total, h, D] here) as packed [total, h, D] with the global cu_seqlens."""
    if cu is None:
        return xs, (None, None, 0, 0)
    return [x[0] for x in xs], (cu, cu, max_seqlen, max_seqlen)


class _UlyssesAttn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, bias_t, alibi, cfg: _Cfg, rep: int, cu: Optional[Tensor] = None, max_seqlen: int = 0):
        order = inverse = None
        if cfg.layout != "contiguous":
            order = _global_order(cfg.layout, cfg.world, q.shape[1], q.device)
            inverse = torch.argsort(order)
        if rep > 1:
            k, v = k.repeat_interleave(rep, dim=2), v.repeat_interleave(rep, dim=2)
        ql, kl, vl = _seq_to_heads(cfg, [q, k, v], order)
        hq = q.shape[2]
        bl, al = _head_slice(cfg, bias_t, hq), _head_slice(cfg, alibi, hq)
        wl, wr = cfg.window
        error, out = None, None
        (lq, lk, lv), seqs = _local([ql, kl, vl], cu, max_seqlen)
        try:
            out = _ops._fwd(lq, lk, lv, *seqs, cfg.causal, cfg.scale, cfg.bias_mode, cfg.bias_value,
                            bl, wl, wr, al)
        except Exception as e:  # noqa: BLE001 - reported on every rank
            error = e
        _fail(cfg.group, cfg.world, error, "the local attention")
        ctx.save_for_backward(ql, kl, vl, bias_t, alibi, order, inverse, cu)
        ctx.cfg, ctx.rep, ctx.hkv, ctx.max_seqlen = cfg, rep, k.shape[2] // rep, max_seqlen
        return _heads_to_seq(cfg, [out.view(ql.shape)], inverse)[0]

    @staticmethod
    def backward(ctx, dout):
        ql, kl, vl, bias_t, alibi, order, inverse, cu = ctx.saved_tensors
        cfg = ctx.cfg
        need_dbias = bias_t is not None and ctx.needs_input_grad[3]
        (dol,) = _seq_to_heads(cfg, [dout.contiguous()], order)
        hq = ql.shape[2] * cfg.world
        bl, al = _head_slice(cfg, bias_t, hq), _head_slice(cfg, alibi, hq)
        wl, wr = cfg.window
        (ldo, lq, lk, lv), seqs = _local([dol, ql, kl, vl], cu, ctx.max_seqlen)
        dq, dk, dv, db = _ops._bwd(ldo, lq, lk, lv, *seqs, cfg.causal, cfg.scale, cfg.bias_mode,
                                   cfg.bias_value, bl, wl, wr, al, need_dbias,
                                   torch.are_deterministic_algorithms_enabled())
        dq, dk, dv = _heads_to_seq(cfg, [dq.view(ql.shape), dk.view(kl.shape), dv.view(vl.shape)], inverse)
        if ctx.rep > 1:  # the repeated kv heads' gradients add up
            B, n, _, D = dk.shape
            dk = dk.reshape(B, n, ctx.hkv, ctx.rep, D).sum(3)
            dv = dv.reshape(B, n, ctx.hkv, ctx.rep, D).sum(3)
        dbias = None
        if need_dbias:
            dbias = torch.zeros(bias_t.shape, dtype=torch.float32, device=bias_t.device)
            per = hq // cfg.world
            dbias[cfg.rank * per:(cfg.rank + 1) * per] = db
            dist.all_reduce(dbias, group=cfg.group)
        return dq, dk, dv, dbias, None, None, None, None, None


def ulysses_attn(q: Tensor, k: Tensor, v: Tensor, *, causal: bool = False, scale: Optional[float] = None,
                 bias=None, window: Tuple[int, int] = (-1, -1), alibi_slopes: Optional[Tensor] = None, group=None,
                 layout: str = "contiguous") -> Tensor:
    """All-to-all (Ulysses) attention: the same contract as :func:`ring_attn`, with ``Hq`` a multiple of
    the group size (kv heads are repeated as needed when ``Hkv`` is not). ALiBi slopes ``[Hq]`` or
    ``[B, Hq]``."""
    cfg = _prepare(q, k, v, bias, alibi_slopes, group, layout, causal, scale, window)
    if q.shape[2] % cfg.world:  # the ranks agree on the heads: every rank raises here
        raise FlashSigmoidError(
            f"flashsigmoid.distributed: ulysses_attn needs the query heads ({q.shape[2]}) to be a multiple of "
            f"the group size ({cfg.world})")
    if bias is None:  # the whole sequence is local: the kernels' own -log(N) is the global one
        cfg = dataclasses.replace(cfg, bias_mode=_C.BIAS_NEG_LOG_SEQLEN_K, bias_value=0.0)
    bias_t = bias if isinstance(bias, Tensor) else None
    rep = _kv_repeat(q.shape[2], k.shape[2], cfg.world)
    return _UlyssesAttn.apply(q, k, v, bias_t, alibi_slopes, cfg, rep)


_VARLEN_META_NAMES = ["rows", "query heads", "kv heads", "head_dim", "k head_dim", "dtype", "on cuda", "bias kind",
                      "bias size", "alibi rank", "alibi size", "max_seqlen", "cu_seqlens size"]


def _describe_varlen(q, k, v, cu_seqlens, max_seqlen, bias, alibi) -> Tuple[List[int], Optional[str]]:
    """_describe_inputs for packed input: what every rank must agree on, and this rank's own error."""
    meta = [-1] * len(_VARLEN_META_NAMES)
    for name, t in (("q", q), ("k", k), ("v", v)):
        if not isinstance(t, Tensor) or t.dim() != 3:
            shape = list(t.shape) if isinstance(t, Tensor) else type(t).__name__
            return meta, f"{name} must be a packed [rows, heads, head_dim] tensor, got {shape}"
    if k.shape != v.shape:
        return meta, f"k {list(k.shape)} and v {list(v.shape)} must have one shape"
    if q.shape[0] != k.shape[0]:
        return meta, (f"q {list(q.shape)} and k {list(k.shape)} must hold the same packed rows "
                      "(context parallelism is self-attention)")
    if q.dtype != k.dtype or q.dtype != v.dtype or q.device != k.device or q.device != v.device:
        return meta, "q, k and v must share one dtype and one device"
    if q.dtype not in _DTYPE_IDS:
        return meta, f"q has dtype {q.dtype}; accepted: float32, float16, bfloat16, float64"
    if (not isinstance(cu_seqlens, Tensor) or cu_seqlens.dim() != 1 or cu_seqlens.dtype != torch.int32
            or cu_seqlens.numel() < 2):
        got = f"{cu_seqlens.dtype} {list(cu_seqlens.shape)}" if isinstance(cu_seqlens, Tensor) \
            else type(cu_seqlens).__name__
        return meta, f"cu_seqlens must be an int32 [batch + 1] tensor of the global packed rows, got {got}"
    if isinstance(max_seqlen, bool) or not isinstance(max_seqlen, int):
        return meta, f"max_seqlen must be an int, got {type(max_seqlen).__name__}"
    bias_kind = 0 if bias is None else (2 if isinstance(bias, Tensor) else 1)
    meta = [q.shape[0], q.shape[1], k.shape[1], q.shape[2], k.shape[2], _DTYPE_IDS[q.dtype], q.device.type == "cuda",
            bias_kind, bias.numel() if isinstance(bias, Tensor) else 0, 0 if alibi is None else alibi.dim(),
            alibi.numel() if alibi is not None else 0, max_seqlen, cu_seqlens.numel()]
    return meta, None


def _prepare_varlen(q, k, v, cu_seqlens, max_seqlen, bias, alibi_slopes, group, causal, scale, window) -> _Cfg:
    world, rank = dist.get_world_size(group), dist.get_rank(group)
    meta, error = _describe_varlen(q, k, v, cu_seqlens, max_seqlen, bias, alibi_slopes)
    _agree(group, world, meta, error, _VARLEN_META_NAMES)
    cu = cu_seqlens.tolist()
    _agree(group, world, cu, None, [f"cu_seqlens[{i}]" for i in range(len(cu))],
           "every rank must pass the same global cu_seqlens")
    # Every rank holds the same cu_seqlens and rows here, so every rank raises the same errors below.
    rows, total = q.shape[0], cu[-1]
    if total != rows * world:
        why = f"; {total} is not a multiple of {world}" if total % world else ""
        raise FlashSigmoidError(
            f"flashsigmoid.distributed: cu_seqlens[-1] = {total} packed rows must equal the group size times the "
            f"rows per rank ({world} x {rows}): rank r holds packed rows [r * total / W, (r + 1) * total / W){why}")
    lens = [b - a for a, b in zip(cu, cu[1:])]
    if cu[0] != 0 or min(lens) < 0 or max(lens) > max_seqlen:
        raise FlashSigmoidError(
            f"flashsigmoid.distributed: cu_seqlens must start at 0 and not decrease, and max_seqlen ({max_seqlen}) "
            f"must bound every length; got cu_seqlens starting {cu[:8]} and a longest sequence of {max(lens)}")
    if q.shape[1] % world:
        raise FlashSigmoidError(
            f"flashsigmoid.distributed: ulysses_attn_varlen needs the query heads ({q.shape[1]}) to be a multiple "
            f"of the group size ({world})")
    bias_mode, bias_value, _ = _ops._bias_args(bias)  # None: -log of each sequence's own length
    wl, wr = _ops._window_args(window)
    return _Cfg(group, world, rank, "contiguous", bool(causal), _ops._scale_arg(scale), bias_mode, bias_value,
                (wl, wr), total)


def ulysses_attn_varlen(q: Tensor, k: Tensor, v: Tensor, cu_seqlens: Tensor, max_seqlen: int, *,
                        causal: bool = False, scale: Optional[float] = None, bias=None,
                        window: Tuple[int, int] = (-1, -1), alibi_slopes: Optional[Tensor] = None,
                        group=None) -> Tensor:
    """All-to-all (Ulysses) attention over packed variable-length sequences split across the group.

    Args:
        q: ``[t, Hq, D]``; k, v: ``[t, Hkv, D]``: this rank's slice of the packed rows, rank ``r``
            holding rows ``[r t, (r + 1) t)`` of ``total = t W`` (pad with a dummy sequence when
            ``total`` is not a multiple of ``W``). Sequences may cross rank boundaries.
        cu_seqlens: int32 ``[B + 1]`` prefix sums of the global sequence lengths, on q's device,
            identical on every rank; ``max_seqlen`` bounds every length.
        causal, scale, bias, window, alibi_slopes: as in :func:`flashsigmoid.sigmoid_attn_varlen`
            (``bias=None``: ``-log`` of each sequence's own length; ALiBi ``[Hq]`` or ``[B, Hq]``);
            a ``[Hq]`` bias tensor is learnable, its gradient complete and the same on every rank.
        group: the process group (default: the world); ``Hq`` a multiple of its size.

    Returns:
        This rank's ``[t, Hq, D]`` rows of the output.
    """
    cfg = _prepare_varlen(q, k, v, cu_seqlens, max_seqlen, bias, alibi_slopes, group, causal, scale, window)
    bias_t = bias if isinstance(bias, Tensor) else None
    rep = _kv_repeat(q.shape[1], k.shape[1], cfg.world)
    out = _UlyssesAttn.apply(q.unsqueeze(0), k.unsqueeze(0), v.unsqueeze(0), bias_t, alibi_slopes, cfg, rep,
                             cu_seqlens, max_seqlen)
    return out[0]
