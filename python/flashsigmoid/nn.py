"""PyTorch modules for sigmoid self-attention models, with the practices that make it train like softmax.

The practices (Ramapuram et al., "Theory, Analysis, and Best Practices for Sigmoid Self-Attention",
ICLR 2025) live here as constructor arguments:

- the sigmoid bias ``b = -log n`` (``n`` = the training length), fixed or a learnable per-head
  parameter initialised to it, so that early in training the attention output norm stays small;
- :class:`LayerScale` on the residual branches;
- QK-norm (RMSNorm or LayerNorm over each head's q and k) and, in :class:`TransformerBlock`,
  optional hybrid-norm (the attention's output normalised before the residual add);
- ALiBi (which also pushes scores into sigmoid's near-zero regime) or RoPE.

:class:`SelfAttention` takes ``attn="sigmoid"`` (the library's custom ops
:func:`flashsigmoid.sigmoid_attn` / :func:`flashsigmoid.sigmoid_attn_varlen`: no N x N buffer, CPU
and CUDA) or ``attn="softmax"`` (PyTorch's ``scaled_dot_product_attention``), so one model can be
A/B-tested with only that argument changed.

On the CPU the library computes in the input dtype (float32, bfloat16 or float64); on CUDA it takes
float16 / bfloat16. Head dims: ``flashsigmoid.SUPPORTED_HEAD_DIMS``.
"""

from __future__ import annotations

import math
from typing import Literal, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ._ops import sigmoid_attn, sigmoid_attn_varlen

AttnKind = Literal["sigmoid", "softmax"]
NormKind = Literal["rms", "layer"]
PosKind = Literal["alibi", "rope"]

__all__ = [
    "LayerScale",
    "RotaryEmbedding",
    "SelfAttention",
    "TransformerBlock",
    "alibi_slopes",
    "make_norm",
    "varlen_positions",
]


def alibi_slopes(n_heads: int) -> Tensor:
    """ALiBi's per-head slopes (Press et al.): ``2^(-8 i / n)``, i = 1..n, for a power of two ``n``;
    otherwise those of the power of two below, then every other slope of the power above."""

    def geometric(n: int) -> list:
        return [2.0 ** (-8.0 * (i + 1) / n) for i in range(n)]

    if n_heads < 1:
        raise ValueError(f"alibi_slopes: n_heads must be >= 1, got {n_heads}")
    low = 2 ** int(math.floor(math.log2(n_heads)))
    slopes = geometric(low) + geometric(2 * low)[0::2][: n_heads - low]
    return torch.tensor(slopes, dtype=torch.float32)


def make_norm(kind: NormKind, dim: int, eps: float = 1e-6, **factory) -> nn.Module:
    """``"rms"`` -> :class:`torch.nn.RMSNorm`, ``"layer"`` -> :class:`torch.nn.LayerNorm` over the last dim."""
    if kind == "rms":
        return nn.RMSNorm(dim, eps=eps, **factory)
    if kind == "layer":
        return nn.LayerNorm(dim, eps=eps, **factory)
    raise ValueError(f"norm must be 'rms' or 'layer', got {kind!r}")


def varlen_positions(cu_seqlens: Tensor, total: int) -> Tensor:
    """Each packed token's position inside its own sequence: ``[total]`` int64 from ``cu_seqlens [B + 1]``."""
    idx = torch.arange(total, device=cu_seqlens.device)
    seq = torch.searchsorted(cu_seqlens[1:].to(torch.int64), idx, right=True)
    return idx - cu_seqlens.to(torch.int64)[seq]


class LayerScale(nn.Module):
    """``x * gamma`` with a learnable per-channel ``gamma`` initialised to ``init`` (Touvron et al.).

    A small ``init`` keeps a residual branch near zero at the start of training, which is what lets
    sigmoid attention's large early outputs not swamp the residual stream.
    """

    def __init__(self, dim: int, init: float = 1e-4, **factory) -> None:
        super().__init__()
        self.init = float(init)
        self.gamma = nn.Parameter(torch.full((dim,), self.init, **factory))

    def forward(self, x: Tensor) -> Tensor:
        return x * self.gamma

    def extra_repr(self) -> str:
        return f"{self.gamma.shape[0]}, init={self.init}"


class RotaryEmbedding(nn.Module):
    """Rotary position embedding (rotate-half form) for ``[..., N, H, D]`` tensors.

    The angles are computed in float64 for float64 inputs and in float32 otherwise.
    """

    def __init__(self, head_dim: int, base: float = 10000.0) -> None:
        super().__init__()
        if head_dim % 2:
            raise ValueError(f"RotaryEmbedding needs an even head_dim, got {head_dim}")
        self.head_dim = head_dim
        self.base = float(base)

    def forward(self, x: Tensor, positions: Tensor) -> Tensor:
        """x ``[..., N, H, D]``; positions ``[N]`` or ``[..., N]`` (integer)."""
        work = torch.promote_types(x.dtype, torch.float32)
        half = self.head_dim // 2
        inv_freq = self.base ** (-torch.arange(half, device=x.device, dtype=work) * (2.0 / self.head_dim))
        angles = positions.to(work)[..., None] * inv_freq  # [..., N, D/2]
        cos, sin = angles.cos()[..., None, :], angles.sin()[..., None, :]  # broadcast over heads
        x1, x2 = x[..., :half].to(work), x[..., half:].to(work)
        return torch.cat((x1 * cos - x2 * sin, x2 * cos + x1 * sin), dim=-1).to(x.dtype)

    def extra_repr(self) -> str:
        return f"head_dim={self.head_dim}, base={self.base}"


def _check_attention_args(dim: int, n_heads: int, n_kv_heads: int, attn: str, pos: Optional[str],
                          window: Tuple[int, int], train_len: Optional[int], learnable_bias: bool,
                          sigmoid_bias: Optional[float] = None) -> None:
    if attn not in ("sigmoid", "softmax"):
        raise ValueError(f"attn must be 'sigmoid' or 'softmax', got {attn!r}")
    if dim % n_heads:
        raise ValueError(f"dim {dim} is not a multiple of n_heads {n_heads}")
    if n_kv_heads < 1 or n_heads % n_kv_heads:
        raise ValueError(f"n_kv_heads {n_kv_heads} must divide n_heads {n_heads}")
    if pos not in (None, "alibi", "rope"):
        raise ValueError(f"pos must be None, 'alibi' or 'rope', got {pos!r}")
    if len(window) != 2:
        raise ValueError(f"window must be (left, right), got {window!r}")
    if train_len is not None and train_len < 1:
        raise ValueError(f"train_len must be >= 1, got {train_len}")
    if learnable_bias and attn != "sigmoid":
        raise ValueError("learnable_bias applies to attn='sigmoid' only (softmax ignores a bias)")
    if learnable_bias and train_len is None and sigmoid_bias is None:
        raise ValueError("learnable_bias needs train_len (initial value -log n) or sigmoid_bias")


class SelfAttention(nn.Module):
    """Multi-head self-attention, sigmoid (this library) or softmax (PyTorch SDPA).

    Input ``x`` is ``[B, N, dim]``, or packed ``[total, dim]`` with ``cu_seqlens`` (int32 ``[B + 1]``)
    and ``max_seqlen`` for variable-length batches. Output has ``x``'s shape.

    Args:
        dim: model width; ``dim = n_heads * head_dim``.
        n_heads: query heads.
        n_kv_heads: key/value heads (GQA / MQA); must divide ``n_heads``. Default ``n_heads``.
        attn: ``"sigmoid"`` or ``"softmax"``.
        fused_qkv: one ``Linear`` for q, k, v (else three).
        qkv_bias: bias in the q/k/v projections.
        causal: causal mask.
        window: sliding window ``(left, right)``, ``-1`` = unbounded; combines with ``causal``.
        qk_norm: ``None``, ``"rms"`` or ``"layer"``: normalise each head's q and k (over ``head_dim``).
        pos: ``None``, ``"alibi"`` (slopes from :func:`alibi_slopes`) or ``"rope"``.
        rope_base: RoPE's base.
        scale: score scale, default ``1/sqrt(head_dim)``.
        train_len: the training sequence length ``n``; sets the sigmoid bias default ``-log n``.
        sigmoid_bias: the sigmoid bias ``b`` (fixed, or the learnable bias's initial value). Default:
            ``-log(train_len)``; without ``train_len`` the library's ``-log(Nk)`` of each sequence.
        learnable_bias: make ``b`` a per-head ``nn.Parameter`` (``[n_heads]``, float32 on use).
    Softmax ignores the sigmoid bias (a per-row constant does not change softmax). It is the reference
    path: with a window or ALiBi it hands SDPA an explicit N x N mask, and varlen input runs one SDPA
    call per sequence (a graph break under ``torch.compile``). The sigmoid path has neither.

    ``record_output_norm = True`` stores the mean per-token L2 norm of the attention output (all heads,
    before the output projection) of each forward in ``last_output_norm`` (a detached scalar tensor).
    """

    def __init__(
        self,
        dim: int,
        n_heads: int,
        *,
        n_kv_heads: Optional[int] = None,
        attn: AttnKind = "sigmoid",
        fused_qkv: bool = True,
        qkv_bias: bool = False,
        causal: bool = False,
        window: Tuple[int, int] = (-1, -1),
        qk_norm: Optional[NormKind] = None,
        pos: Optional[PosKind] = None,
        rope_base: float = 10000.0,
        scale: Optional[float] = None,
        train_len: Optional[int] = None,
        sigmoid_bias: Optional[float] = None,
        learnable_bias: bool = False,
        device=None,
        dtype=None,
    ) -> None:
        super().__init__()
        factory = {"device": device, "dtype": dtype}
        n_kv_heads = n_heads if n_kv_heads is None else n_kv_heads
        _check_attention_args(dim, n_heads, n_kv_heads, attn, pos, window, train_len, learnable_bias,
                              sigmoid_bias)
        self.dim, self.n_heads, self.n_kv_heads = dim, n_heads, n_kv_heads
        self.head_dim = dim // n_heads
        self.attn, self.causal, self.window = attn, bool(causal), (int(window[0]), int(window[1]))
        self.scale = scale
        self.record_output_norm = False
        self.last_output_norm: Optional[Tensor] = None

        kv_dim = n_kv_heads * self.head_dim
        if fused_qkv:
            self.qkv = nn.Linear(dim, dim + 2 * kv_dim, bias=qkv_bias, **factory)
        else:
            self.q_proj = nn.Linear(dim, dim, bias=qkv_bias, **factory)
            self.k_proj = nn.Linear(dim, kv_dim, bias=qkv_bias, **factory)
            self.v_proj = nn.Linear(dim, kv_dim, bias=qkv_bias, **factory)
        self.fused_qkv = fused_qkv
        self.out_proj = nn.Linear(dim, dim, bias=qkv_bias, **factory)

        self.q_norm = make_norm(qk_norm, self.head_dim, **factory) if qk_norm else None
        self.k_norm = make_norm(qk_norm, self.head_dim, **factory) if qk_norm else None
        self.rope = RotaryEmbedding(self.head_dim, rope_base) if pos == "rope" else None
        if pos == "alibi":
            self.register_buffer("alibi", alibi_slopes(n_heads).to(device), persistent=False)
        else:
            self.alibi = None

        if sigmoid_bias is None and train_len is not None:
            sigmoid_bias = -math.log(train_len)
        # Exactly one of: a learnable per-head parameter, a fixed float, or neither (the library's -log Nk).
        self.sigmoid_bias = (nn.Parameter(torch.full((n_heads,), float(sigmoid_bias), device=device))
                             if learnable_bias else None)
        self.bias_value: Optional[float] = (None if learnable_bias or sigmoid_bias is None
                                            else float(sigmoid_bias))

    # -- pieces ------------------------------------------------------------------------------

    def _project(self, x: Tensor) -> Tuple[Tensor, Tensor, Tensor]:
        lead = x.shape[:-1]
        if self.fused_qkv:
            kv_dim = self.n_kv_heads * self.head_dim
            q, k, v = self.qkv(x).split([self.dim, kv_dim, kv_dim], dim=-1)
        else:
            q, k, v = self.q_proj(x), self.k_proj(x), self.v_proj(x)
        return (q.unflatten(-1, (self.n_heads, self.head_dim)),
                k.reshape(*lead, self.n_kv_heads, self.head_dim),
                v.reshape(*lead, self.n_kv_heads, self.head_dim))

    def _bias_arg(self):
        return self.sigmoid_bias.float() if self.sigmoid_bias is not None else self.bias_value

    def _sigmoid(self, q: Tensor, k: Tensor, v: Tensor, cu_seqlens: Optional[Tensor],
                 max_seqlen: Optional[int]) -> Tensor:
        kw = dict(causal=self.causal, scale=self.scale, bias=self._bias_arg(), window=self.window,
                  alibi_slopes=None if self.alibi is None else self.alibi.float())
        if cu_seqlens is None:
            return sigmoid_attn(q, k, v, **kw)
        return sigmoid_attn_varlen(q, k, v, cu_seqlens, cu_seqlens, max_seqlen, max_seqlen, **kw)

    def _softmax_mask(self, n: int, device, dtype) -> Optional[Tensor]:
        """An additive ``[H or 1, n, n]`` mask for SDPA when a window or ALiBi is on (else None)."""
        left, right = self.window
        if left < 0 and right < 0 and self.alibi is None:
            return None
        i = torch.arange(n, device=device)[:, None]
        j = torch.arange(n, device=device)[None, :]
        visible = torch.ones(n, n, dtype=torch.bool, device=device)
        if self.causal:
            visible &= j <= i
        if left >= 0:
            visible &= j >= i - left
        if right >= 0:
            visible &= j <= i + right
        mask = torch.zeros(n, n, device=device, dtype=dtype).masked_fill(~visible, float("-inf"))
        if self.alibi is not None:
            mask = mask - self.alibi.to(dtype)[:, None, None] * (i - j).abs().to(dtype)
        return mask if mask.dim() == 3 else mask[None]

    def _softmax_dense(self, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
        n = q.shape[1]
        mask = self._softmax_mask(n, q.device, q.dtype)
        out = F.scaled_dot_product_attention(
            q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), attn_mask=mask,
            is_causal=self.causal and mask is None, scale=self.scale,
            enable_gqa=self.n_heads != self.n_kv_heads)
        return out.transpose(1, 2)

    def _softmax(self, q: Tensor, k: Tensor, v: Tensor, cu_seqlens: Optional[Tensor]) -> Tensor:
        if cu_seqlens is None:
            return self._softmax_dense(q, k, v)
        # SDPA has no packed variable-length form on every backend: one call per sequence.
        bounds = cu_seqlens.tolist()
        parts = [self._softmax_dense(q[None, a:b], k[None, a:b], v[None, a:b])[0]
                 for a, b in zip(bounds[:-1], bounds[1:])]
        return torch.cat(parts, dim=0)

    # -- forward -----------------------------------------------------------------------------

    def forward(self, x: Tensor, cu_seqlens: Optional[Tensor] = None,
                max_seqlen: Optional[int] = None) -> Tensor:
        """x ``[B, N, dim]``, or ``[total, dim]`` with ``cu_seqlens`` and ``max_seqlen``."""
        if cu_seqlens is not None:
            if x.dim() != 2 or max_seqlen is None:
                raise ValueError("varlen input is x [total, dim] with cu_seqlens and max_seqlen")
            positions = varlen_positions(cu_seqlens, x.shape[0])
        else:
            if x.dim() != 3:
                raise ValueError(f"x must be [B, N, dim] (or [total, dim] with cu_seqlens), got {list(x.shape)}")
            positions = torch.arange(x.shape[1], device=x.device)
        q, k, v = self._project(x)
        if torch.is_autocast_enabled(x.device.type):
            # The library's ops do not autocast themselves: hand them one low-precision dtype.
            dt = torch.get_autocast_dtype(x.device.type)
            q, k, v = q.to(dt), k.to(dt), v.to(dt)
        if self.q_norm is not None:
            q, k = self.q_norm(q), self.k_norm(k)
        if self.rope is not None:
            q, k = self.rope(q, positions), self.rope(k, positions)
        q, k = q.to(v.dtype), k.to(v.dtype)  # a norm under autocast may hand back float32
        if self.attn == "sigmoid":
            o = self._sigmoid(q, k, v, cu_seqlens, max_seqlen)
        else:
            o = self._softmax(q, k, v, cu_seqlens)
        o = o.flatten(-2)
        if self.record_output_norm:
            self.last_output_norm = o.detach().float().norm(dim=-1).mean()
        return self.out_proj(o)

    def extra_repr(self) -> str:
        b = "learnable" if self.sigmoid_bias is not None else self.bias_value
        return (f"attn={self.attn}, heads={self.n_heads}/{self.n_kv_heads}, head_dim={self.head_dim}, "
                f"causal={self.causal}, window={self.window}, sigmoid_bias={b}")


class TransformerBlock(nn.Module):
    """A pre-norm transformer block: ``x + LS(attn(norm(x)))`` then ``x + LS(mlp(norm(x)))``.

    Args:
        dim, n_heads: as in :class:`SelfAttention`.
        mlp_ratio: the MLP's hidden width is ``mlp_ratio * dim`` (GELU).
        norm: ``"layer"`` or ``"rms"`` for the block's norms.
        hybrid_norm: also normalise the attention's output before the residual add,
            ``x + LS(norm(attn(norm(x))))`` (the paper's hybrid-norm; the MLP branch stays pre-norm).
        layer_scale: LayerScale's initial value on both residual branches, or ``None`` for none.
        **attn_kwargs: passed to :class:`SelfAttention` (``attn``, ``causal``, ``qk_norm``, ``pos``,
            ``train_len``, ``sigmoid_bias``, ...).
    Varlen input as in :class:`SelfAttention`.
    """

    def __init__(
        self,
        dim: int,
        n_heads: int,
        *,
        mlp_ratio: float = 4.0,
        norm: NormKind = "layer",
        hybrid_norm: bool = False,
        layer_scale: Optional[float] = None,
        device=None,
        dtype=None,
        **attn_kwargs,
    ) -> None:
        super().__init__()
        factory = {"device": device, "dtype": dtype}
        hidden = int(round(mlp_ratio * dim))

        def scale() -> nn.Module:
            return LayerScale(dim, layer_scale, **factory) if layer_scale is not None else nn.Identity()

        self.attn_norm = make_norm(norm, dim, **factory)
        self.attn = SelfAttention(dim, n_heads, **attn_kwargs, **factory)
        self.attn_post_norm = make_norm(norm, dim, **factory) if hybrid_norm else nn.Identity()
        self.attn_scale = scale()
        self.mlp_norm = make_norm(norm, dim, **factory)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden, **factory), nn.GELU(), nn.Linear(hidden, dim, **factory))
        self.mlp_scale = scale()

    def forward(self, x: Tensor, cu_seqlens: Optional[Tensor] = None,
                max_seqlen: Optional[int] = None) -> Tensor:
        x = x + self.attn_scale(self.attn_post_norm(self.attn(self.attn_norm(x), cu_seqlens, max_seqlen)))
        return x + self.mlp_scale(self.mlp(self.mlp_norm(x)))
