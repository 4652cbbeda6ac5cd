"""PyTorch custom ops around the flashsigmoid C++ library.

The C++ extension (``flashsigmoid._C``) turns tensors into descriptors (data pointer,
shapes, strides, dtype code, device) through their Python attributes and takes the
stream as an integer; it includes nothing of PyTorch. Everything else PyTorch-specific
lives here: ``torch.library.custom_op`` registration (namespace ``flashsigmoid``),
fake (meta) implementations for tracing, and autograd. Input checks happen once, in
C++; this module only converts arguments.
"""

import contextlib
from typing import List, Optional, Tuple, Union

import torch
from torch import Tensor

from . import _C, _args, _autocast, _forward_ad, _vmap
from ._blockwise import alibi_slopes_grad
from ._checks import check_same_device

_DTYPE_CODES = {
    torch.float32: _C.DTYPE_FLOAT32,
    torch.float16: _C.DTYPE_FLOAT16,
    torch.bfloat16: _C.DTYPE_BFLOAT16,
    torch.float64: _C.DTYPE_FLOAT64,
    torch.int32: _C.DTYPE_INT32,
}
_C.set_dtype_codes(list(_DTYPE_CODES.items()))  # the table _C.describe reads

# Test hook: when True, every floating-point output buffer is filled with NaN before
# the kernel runs, so an element the kernel fails to write shows up as a mismatch.
_POISON_OUTPUTS = False


# A torch tensor -> the C++ TensorView descriptor (pointer, dtype, device, sizes, strides); None -> an
# undefined one. Described in C++ from the tensor's attributes, with the errors for dtypes, devices
# and ranks flashsigmoid does not take.
_describe = _C.describe


def _new_like(t: Tensor) -> Tensor:
    out = torch.empty_like(t)
    if _POISON_OUTPUTS and out.is_floating_point():
        out.fill_(float("nan"))
    return out


# The current stream of a device as an integer, without building a torch.cuda.Stream object (a few us
# per call on the host); the public, slower path where this torch lacks the function.
_current_raw_stream = getattr(torch._C, "_cuda_getCurrentRawStream", None) or (
    lambda index: torch.cuda.current_stream(index).cuda_stream)


def _device_guard(q: Tensor):
    """CUDA: make q's device current for the launch (the stream passed belongs to it)."""
    if q.device.type == "cuda":
        return torch.cuda.device(q.device)
    return contextlib.nullcontext()


def _options(
    q: Tensor,
    cu_seqlens_q: Optional[Tensor],
    cu_seqlens_k: Optional[Tensor],
    max_seqlen_q: int,
    max_seqlen_k: int,
    causal: bool,
    scale: Optional[float],
    bias_mode: int,
    bias_value: float,
    bias: Optional[Tensor],
    window_left: int,
    window_right: int,
    alibi_slopes: Optional[Tensor],
    scale_tensor: Optional[Tensor] = None,
    q_offset: Optional[int] = None,
    k_offset: Optional[int] = None,
) -> "_C.Options":
    o = _C.Options()
    if q_offset is not None or k_offset is not None:  # None: bottom-right alignment
        o.positions = (0 if q_offset is None else q_offset, 0 if k_offset is None else k_offset)
    o.scale = scale if scale_tensor is None else _args.scale_from_tensor(scale_tensor, scale)
    o.bias_mode = bias_mode
    o.bias_value = bias_value
    o.bias = _describe(bias, "bias")
    o.causal = causal
    o.window_left = window_left
    o.window_right = window_right
    o.alibi_slopes = _describe(alibi_slopes, "alibi_slopes")
    o.cu_seqlens_q = _describe(cu_seqlens_q, "cu_seqlens_q")
    o.cu_seqlens_k = _describe(cu_seqlens_k, "cu_seqlens_k")
    o.max_seqlen_q = max_seqlen_q
    o.max_seqlen_k = max_seqlen_k
    if q.device.type == "cuda":
        o.stream = _current_raw_stream(q.device.index)
    else:
        o.num_threads = torch.get_num_threads()  # honour torch.set_num_threads on the CPU backend
    return o


# ---------------------------------------------------------------------------
# forward
# ---------------------------------------------------------------------------


@torch.library.custom_op("flashsigmoid::fwd", mutates_args=())
def _fwd(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    cu_seqlens_q: Optional[Tensor],
    cu_seqlens_k: Optional[Tensor],
    max_seqlen_q: int,
    max_seqlen_k: int,
    causal: bool,
    scale: Optional[float],
    bias_mode: int,
    bias_value: float,
    bias: Optional[Tensor],
    window_left: int,
    window_right: int,
    alibi_slopes: Optional[Tensor],
    scale_tensor: Optional[Tensor] = None,
    q_offset: Optional[int] = None,
    k_offset: Optional[int] = None,
) -> Tensor:
    out = _new_like(q)
    opts = _options(q, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, causal, scale,
                    bias_mode, bias_value, bias, window_left, window_right, alibi_slopes, scale_tensor,
                    q_offset, k_offset)
    with _device_guard(q):
        _C.forward(_describe(q, "q"), _describe(k, "k"), _describe(v, "v"), _describe(out, "out"), opts)
    return out


@_fwd.register_fake
def _fwd_fake(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, causal, scale,
              bias_mode, bias_value, bias, window_left, window_right, alibi_slopes, scale_tensor=None,
              q_offset=None, k_offset=None):
    # The dispatcher also lands here when real tensors are mixed with meta ones.
    check_same_device(q, k=k, v=v, bias=bias, alibi_slopes=alibi_slopes, cu_seqlens_q=cu_seqlens_q,
                      cu_seqlens_k=cu_seqlens_k)
    return torch.empty_like(q)


# ---------------------------------------------------------------------------
# backward (recomputes P from q, k, v: sigmoid attention needs no saved statistics)
# ---------------------------------------------------------------------------


@torch.library.custom_op("flashsigmoid::bwd", mutates_args=())
def _bwd(
    dout: Tensor,
    q: Tensor,
    k: Tensor,
    v: Tensor,
    cu_seqlens_q: Optional[Tensor],
    cu_seqlens_k: Optional[Tensor],
    max_seqlen_q: int,
    max_seqlen_k: int,
    causal: bool,
    scale: Optional[float],
    bias_mode: int,
    bias_value: float,
    bias: Optional[Tensor],
    window_left: int,
    window_right: int,
    alibi_slopes: Optional[Tensor],
    need_dbias: bool,
    deterministic: bool,
    scale_tensor: Optional[Tensor] = None,
    q_offset: Optional[int] = None,
    k_offset: Optional[int] = None,
) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
    """Returns (dq, dk, dv, dbias); dbias is an empty fp32 tensor unless need_dbias."""
    dq, dk, dv = _new_like(q), _new_like(k), _new_like(v)
    if need_dbias and bias is not None:
        dbias = _new_like(bias)
        dbias_view = _describe(dbias, "dbias")
    else:
        dbias = q.new_empty((0,), dtype=torch.float32)
        dbias_view = _C.Tensor()
    opts = _options(q, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, causal, scale,
                    bias_mode, bias_value, bias, window_left, window_right, alibi_slopes, scale_tensor,
                    q_offset, k_offset)
    opts.deterministic = deterministic
    with _device_guard(q):
        _C.backward(_describe(q, "q"), _describe(k, "k"), _describe(v, "v"), _describe(dout, "dout"),
                    _describe(dq, "dq"), _describe(dk, "dk"), _describe(dv, "dv"), dbias_view, opts)
    return dq, dk, dv, dbias


@_bwd.register_fake
def _bwd_fake(dout, q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, causal,
              scale, bias_mode, bias_value, bias, window_left, window_right, alibi_slopes,
              need_dbias, deterministic, scale_tensor=None, q_offset=None, k_offset=None):
    check_same_device(q, dout=dout, k=k, v=v, bias=bias, alibi_slopes=alibi_slopes,
                      cu_seqlens_q=cu_seqlens_q, cu_seqlens_k=cu_seqlens_k)
    if need_dbias and bias is not None:
        dbias = torch.empty_like(bias)
    else:
        dbias = q.new_empty((0,), dtype=torch.float32)
    return torch.empty_like(q), torch.empty_like(k), torch.empty_like(v), dbias


# ---------------------------------------------------------------------------
# autograd
# ---------------------------------------------------------------------------

# positions of the differentiable inputs of flashsigmoid::fwd (see _args.OP_ARGS for all of them)
_Q, _K, _V, _BIAS, _ALIBI = 0, 1, 2, 11, 14
_NUM_ARGS = 18


def _setup_context(ctx, inputs, output):
    (q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, causal, scale,
     bias_mode, bias_value, bias, window_left, window_right, alibi_slopes, scale_tensor,
     q_offset, k_offset) = inputs
    ctx.save_for_backward(q, k, v, cu_seqlens_q, cu_seqlens_k, bias, alibi_slopes, scale_tensor)
    ctx.args = (max_seqlen_q, max_seqlen_k, causal, scale, bias_mode, bias_value,
                window_left, window_right, q_offset, k_offset)


def _backward(ctx, dout):
    q, k, v, cu_seqlens_q, cu_seqlens_k, bias, alibi_slopes, scale_tensor = ctx.saved_tensors
    (max_seqlen_q, max_seqlen_k, causal, scale, bias_mode, bias_value,
     window_left, window_right, q_offset, k_offset) = ctx.args
    needs = ctx.needs_input_grad
    grads: List[Optional[Tensor]] = [None] * _NUM_ARGS
    if dout.stride(-1) != 1:  # e.g. the expanded gradient of out.sum()
        dout = dout.contiguous()
    if needs[_Q] or needs[_K] or needs[_V] or needs[_BIAS]:
        need_dbias = bool(needs[_BIAS]) and bias is not None
        dq, dk, dv, dbias = _bwd(
            dout, q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, causal, scale,
            bias_mode, bias_value, bias, window_left, window_right, alibi_slopes, need_dbias,
            torch.are_deterministic_algorithms_enabled(), scale_tensor, q_offset, k_offset)
        grads[_Q] = dq if needs[_Q] else None
        grads[_K] = dk if needs[_K] else None
        grads[_V] = dv if needs[_V] else None
        grads[_BIAS] = dbias if need_dbias else None
    if needs[_ALIBI] and alibi_slopes is not None:
        # The kernels do not compute it; this recomputes P block by block in PyTorch.
        grads[_ALIBI] = alibi_slopes_grad(dout, q, k, v, cu_seqlens_q, cu_seqlens_k, causal, scale,
                                          bias_mode, bias_value, bias, window_left, window_right,
                                          alibi_slopes, scale_tensor, q_offset, k_offset)
    return tuple(grads)


_fwd.register_autograd(_backward, setup_context=_setup_context)


# ---------------------------------------------------------------------------
# public functions
# ---------------------------------------------------------------------------


def _bias_args(bias):
    """bias -> (bias_mode, bias_value, bias_tensor)."""
    if bias is None:
        return _C.BIAS_NEG_LOG_SEQLEN_K, 0.0, None
    if isinstance(bias, Tensor):
        return _C.BIAS_PER_HEAD, 0.0, _args.as_float32(bias)
    if isinstance(bias, bool) or not isinstance(bias, (int, float)):
        raise TypeError(
            "flashsigmoid: bias must be None (default -log(Nk)), a Python float, or a floating-point "
            f"tensor of shape [Hq]; got {type(bias).__name__}"
        )
    return _C.BIAS_SCALAR, float(bias), None


def _window_args(window):
    if (not isinstance(window, (tuple, list)) or len(window) != 2
            or any(isinstance(w, bool) or not isinstance(w, int) for w in window)):
        raise TypeError(
            f"flashsigmoid: window must be a pair of ints (left, right), -1 = unbounded; got {window!r}"
        )
    return int(window[0]), int(window[1])


def _scale_arg(scale):
    if scale is None:
        return None
    if isinstance(scale, bool) or not isinstance(scale, (int, float)):
        raise TypeError(f"flashsigmoid: scale must be None or a Python float; got {type(scale).__name__}")
    return float(scale)


def _positions_args(positions):
    """None -> (None, None) (bottom-right); (q, k) -> the global positions of the first query / key row."""
    if positions is None:
        return None, None
    if (not isinstance(positions, (tuple, list)) or len(positions) != 2
            or any(isinstance(p, bool) or not isinstance(p, int) for p in positions)):
        raise TypeError(
            "flashsigmoid: positions must be None or a pair of ints (q_offset, k_offset) >= 0; "
            f"got {positions!r}"
        )
    return int(positions[0]), int(positions[1])


def _call(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, causal, scale, bias, window,
          alibi_slopes, positions=None):
    bias_mode, bias_value, bias_t = _bias_args(bias)
    wl, wr = _window_args(window)
    qo, ko = _positions_args(positions)
    scale, scale_t, bias_mode, bias_value, bias_t = _args.traced_scalars(
        q, _scale_arg(scale), bias_mode, bias_value, bias_t)
    return _fwd(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, bool(causal), scale,
                bias_mode, bias_value, bias_t, wl, wr, _args.as_float32(alibi_slopes), scale_t, qo, ko)


def sigmoid_attn(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    *,
    causal: bool = False,
    scale: Optional[float] = None,
    bias: Union[None, float, Tensor] = None,
    window: Tuple[int, int] = (-1, -1),
    alibi_slopes: Optional[Tensor] = None,
    softmax_scale: Optional[float] = None,
    window_size: Optional[Tuple[int, int]] = None,
    positions: Optional[Tuple[int, int]] = None,
) -> Tensor:
    """Sigmoid self-attention: ``out = sigmoid(scale * q k^T + b + alibi) v``.

    Args:
        q: ``[B, Nq, Hq, D]``; k, v: ``[B, Nk, Hkv, D]`` with ``Hq % Hkv == 0`` (GQA/MQA).
            Same dtype and device; last dimension contiguous. CPU: float32, float16,
            bfloat16, float64; CUDA: float16, bfloat16.
        causal: causal mask, aligned bottom-right when ``Nq != Nk``.
        scale: score scale, default ``1/sqrt(D)``.
        bias: ``None`` -> ``-log(Nk)`` (the default); a Python float -> that constant;
            a floating-point tensor ``[Hq]`` (any float dtype, used as float32) -> a per-head
            (learnable) bias, whose gradient is returned in its dtype.
        window: sliding window ``(left, right)``; ``-1`` = unbounded. Combines with ``causal``.
        alibi_slopes: optional ``[Hq]`` or ``[B, Hq]`` (any float dtype, used as float32): adds
            ``-slope * |i + Nk - Nq - j|``. Slopes that require grad get their gradient (computed
            in PyTorch, block by block: as slow as a plain implementation).
        softmax_scale, window_size: flash-attn's names for ``scale`` and ``window``.
        positions: ``(q_offset, k_offset)``: global positions of the first query and key row (q
            and k are one block of a longer sequence). Query ``i`` is then at ``q_offset + i`` and key
            ``j`` at ``k_offset + j``, and causal, window and ALiBi compare these positions instead of
            aligning bottom-right. The default bias stays ``-log(Nk)`` of this call.

    Returns:
        ``[B, Nq, Hq, D]`` in q's dtype.
    """
    scale, window = _args.flash_attn_aliases(scale, softmax_scale, window, window_size)
    return _call(q, k, v, None, None, 0, 0, causal, scale, bias, window, alibi_slopes, positions)


def sigmoid_attn_varlen(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    cu_seqlens_q: Tensor,
    cu_seqlens_k: Tensor,
    max_seqlen_q: int,
    max_seqlen_k: int,
    *,
    causal: bool = False,
    scale: Optional[float] = None,
    bias: Union[None, float, Tensor] = None,
    window: Tuple[int, int] = (-1, -1),
    alibi_slopes: Optional[Tensor] = None,
    softmax_scale: Optional[float] = None,
    window_size: Optional[Tuple[int, int]] = None,
    positions: Optional[Tuple[int, int]] = None,
) -> Tensor:
    """Sigmoid self-attention over packed variable-length sequences.

    q: ``[total_q, Hq, D]``; k, v: ``[total_k, Hkv, D]``; ``cu_seqlens_q/k``: int32 ``[B + 1]``
    prefix sums of the sequence lengths, on the tensors' device; ``max_seqlen_q/k`` bound every
    length. The default bias is ``-log(Nk)`` with each sequence's own ``Nk``. Other keywords as
    in :func:`sigmoid_attn` (``alibi_slopes`` ``[B, Hq]`` indexes the sequence; ``positions``
    apply to every sequence, counted from its own first row).
    """
    scale, window = _args.flash_attn_aliases(scale, softmax_scale, window, window_size)
    return _call(q, k, v, cu_seqlens_q, cu_seqlens_k, int(max_seqlen_q), int(max_seqlen_k), causal, scale, bias,
                 window, alibi_slopes, positions)


# ---------------------------------------------------------------------------
# dispatcher rules beyond reverse-mode autograd (one module each)
# ---------------------------------------------------------------------------

_lib = torch.library.Library("flashsigmoid", "FRAGMENT")
_forward_ad.install(_fwd, _lib)
_autocast.install(_fwd, _lib)
_vmap.install(_fwd)
