"""torch.vmap rule for flashsigmoid::fwd: the vmapped dimension folds into the batch.

q, k, v [V, B, N, H, D] become [V * B, N, H, D] (inputs without the dimension are expanded),
and ALiBi slopes become the per-batch form [V * B, Hq]. Cases that do not fold (varlen, a
vmapped per-head bias or cu_seqlens) run the op once per vmapped entry.
"""

import torch

_FOLDABLE = {"q", "k", "v", "alibi_slopes"}


def install(op) -> None:
    overload = op._opoverload
    names = [a.name for a in overload._schema.arguments]

    def rule(info, in_dims, *args):
        n = info.batch_size
        dims = dict(zip(names, in_dims))
        named = dict(zip(names, args))
        batched = {name for name, d in dims.items() if d is not None}
        if named["cu_seqlens_q"] is not None or not batched <= _FOLDABLE:
            return _loop(overload, n, args, in_dims), 0
        qkv = [_fold(named[x], dims[x], n) for x in ("q", "k", "v")]
        B = qkv[0].shape[0] // n
        folded = dict(named, q=qkv[0], k=qkv[1], v=qkv[2],
                      alibi_slopes=_fold_slopes(named["alibi_slopes"], dims["alibi_slopes"], n, B))
        out = overload(*[folded[x] for x in names[:len(args)]])
        return out.view((n, B) + tuple(out.shape[1:])), 0

    op.register_vmap(rule)


def _fold(t, dim, n):
    """[.., V at dim, ..] or unbatched [B, ...] -> [V * B, ...]."""
    t = t.unsqueeze(0).expand((n,) + tuple(t.shape)) if dim is None else t.movedim(dim, 0)
    return t.reshape((-1,) + tuple(t.shape[2:]))


def _fold_slopes(a, dim, n, B):
    if a is None or (dim is None and a.dim() == 1):
        return a  # absent, or [Hq] shared by every batch entry
    if dim is not None:
        a = a.movedim(dim, 0)  # [V, Hq] or [V, B, Hq]
        if a.dim() == 2:
            a = a.unsqueeze(1)
        a = a.expand(n, B, a.shape[-1])
    else:
        a = a.unsqueeze(0).expand(n, B, a.shape[-1])
    return a.reshape(n * B, -1)


def _loop(overload, n, args, in_dims):
    outs = []
    for i in range(n):
        outs.append(overload(*[a if d is None else a.select(d, i) for a, d in zip(args, in_dims)]))
    return torch.stack(outs)
