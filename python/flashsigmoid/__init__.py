"""flashsigmoid: sigmoid self-attention, ``O = sigmoid(scale * Q K^T + b + alibi) V``.

PyTorch entry points :func:`sigmoid_attn` and :func:`sigmoid_attn_varlen` are
``torch.library`` custom ops (``torch.ops.flashsigmoid.fwd`` / ``.bwd``) with
autograd and fake-tensor support, so they work under ``torch.compile``;
:func:`sigmoid_attn_with_kvcache` (``torch.ops.flashsigmoid.fwd_kvcache``) attends
over a dense or paged KV cache for decoding.
"""

import torch  # noqa: F401  (loaded first: the CUDA build reuses PyTorch's CUDA runtime)

from . import _C
from ._C import FlashSigmoidError
from ._ops import sigmoid_attn, sigmoid_attn_varlen
from ._kvcache import sigmoid_attn_with_kvcache
from . import nn  # noqa: E402  (modules built on the ops above)

__version__ = _C.__version__

SUPPORTED_HEAD_DIMS = _C.SUPPORTED_HEAD_DIMS


def cuda_available() -> bool:
    """True when this build carries the CUDA backend and a CUDA device is visible."""
    return bool(_C.cuda_available())


def cuda_head_dims() -> list:
    """Head dims this build has CUDA kernels for (empty without the CUDA backend); CPU tensors take
    every one of SUPPORTED_HEAD_DIMS."""
    return list(_C.cuda_head_dims())


__all__ = [
    "FlashSigmoidError",
    "SUPPORTED_HEAD_DIMS",
    "__version__",
    "cuda_available",
    "cuda_head_dims",
    "nn",
    "sigmoid_attn",
    "sigmoid_attn_varlen",
    "sigmoid_attn_with_kvcache",
]
