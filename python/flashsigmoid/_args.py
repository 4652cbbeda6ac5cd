"""Public-argument conversions beyond the basic type checks: flash-attn aliases, the dtype of
the per-head bias and ALiBi slopes, and Python-float scalars under torch.compile."""

from typing import Optional, Tuple

import torch
from torch import Tensor

from . import _C
from ._C import FlashSigmoidError


def flash_attn_aliases(scale, softmax_scale, window, window_size) -> Tuple[object, object]:
    """flash-attn's names: softmax_scale for scale, window_size for window.

    Giving both names with different values is an error; window's default (-1, -1) counts as
    not given.
    """
    if softmax_scale is not None:
        if scale is not None and scale != softmax_scale:
            raise FlashSigmoidError(
                f"flashsigmoid: scale={scale!r} and its alias softmax_scale={softmax_scale!r} disagree; "
                "give one of them")
        scale = softmax_scale
    if window_size is not None:
        if _pair(window) != (-1, -1) and _pair(window) != _pair(window_size):
            raise FlashSigmoidError(
                f"flashsigmoid: window={window!r} and its alias window_size={window_size!r} disagree; "
                "give one of them")
        window = window_size
    return scale, window


def _pair(x):
    return tuple(x) if isinstance(x, (tuple, list)) else x


def as_float32(t: Optional[Tensor]) -> Optional[Tensor]:
    """A floating-point per-head bias / ALiBi slope tensor in any dtype -> float32 (the kernels'
    type). The cast is differentiable, so the gradient comes back in the caller's dtype."""
    if t is None or not t.is_floating_point() or t.dtype == torch.float32:
        return t
    return t.to(torch.float32)


def traced_scalars(q: Tensor, scale: Optional[float], bias_mode: int, bias_value: float,
                   bias: Optional[Tensor]):
    """Under torch.compile, Python-float scale and bias become tensors.

    A float argument of a custom op is a constant of the graph, so each new value would
    recompile; as tensors they are graph inputs. The scale travels as a float64 CPU scalar
    tensor (the kernels take it on the host), a scalar bias as a per-head float32 tensor on
    q's device (the same value for every head). Eager calls keep the plain floats.
    Returns (scale, scale_tensor, bias_mode, bias_value, bias).
    """
    if not torch.compiler.is_compiling():
        return scale, None, bias_mode, bias_value, bias
    scale_tensor = None
    if scale is not None:
        scale_tensor = torch.scalar_tensor(scale, dtype=torch.float64)
        scale = None
    if bias_mode == _C.BIAS_SCALAR:
        bias = torch.full((q.shape[-2],), bias_value, dtype=torch.float32, device=q.device)
        bias_mode, bias_value = _C.BIAS_PER_HEAD, 0.0
    return scale, scale_tensor, bias_mode, bias_value, bias


def scale_from_tensor(scale_tensor: Tensor, scale: Optional[float]) -> float:
    """The op's scale_tensor argument -> the float the kernels take."""
    if scale is not None:
        raise FlashSigmoidError("flashsigmoid: give scale or scale_tensor, not both")
    if scale_tensor.device.type != "cpu" or scale_tensor.numel() != 1 or not scale_tensor.is_floating_point():
        raise FlashSigmoidError(
            f"flashsigmoid: scale_tensor must be a floating-point CPU tensor with one element, got "
            f"{str(scale_tensor.dtype).replace('torch.', '')} {list(scale_tensor.shape)} on {scale_tensor.device}")
    return float(scale_tensor)
