"""Sigmoid attention over a KV cache (decode, append, chunked prefill) as a PyTorch custom op.

``torch.ops.flashsigmoid.fwd_kvcache`` mutates ``k_cache`` / ``v_cache`` (the append) and returns
the attention output. It reads no tensor values on the host and allocates only its output, so it
can be captured in a CUDA graph with fixed shapes; its fake implementation lets ``torch.compile``
trace it. Input checks happen once, in C++.
"""

from typing import Optional, Tuple

import torch
from torch import Tensor

from . import _C
from ._checks import check_same_device
from ._ops import _device_guard, _new_like, _options, _scale_arg, _window_args


# Registered with torch.library.Library rather than torch.library.custom_op: custom_op adds a Python
# autograd kernel and a Python version-counter kernel to every call (~10 us of a ~30 us decode step
# on the host). The op is inference only: its Autograd kernel falls through, so called directly its
# output never requires grad; the public function below attaches a grad_fn that refuses backward when
# an input requires grad. The kernel bumps the caches' version counters itself when it writes them.
_lib = torch.library.Library("flashsigmoid", "FRAGMENT")
_lib.define(
    "fwd_kvcache(Tensor q, Tensor(a1!) k_cache, Tensor(a2!) v_cache, Tensor? k, Tensor? v, "
    "Tensor cache_seqlens, Tensor? block_table, Tensor? cache_batch_idx, bool causal, float? scale, "
    "SymInt bias_mode, float bias_value, Tensor? bias, SymInt window_left, SymInt window_right, "
    "Tensor? alibi_slopes, SymInt num_splits) -> Tensor",
    tags=(torch.Tag.pt2_compliant_tag,))


def _fwd_kvcache_impl(q, k_cache, v_cache, k, v, cache_seqlens, block_table, cache_batch_idx, causal, scale,
                      bias_mode, bias_value, bias, window_left, window_right, alibi_slopes, num_splits):
    out = _new_like(q)
    opts = _options(q, None, None, 0, 0, causal, scale, bias_mode, bias_value, bias, window_left, window_right,
                    alibi_slopes)
    with _device_guard(q):  # the tensors are described in C++ (a decode step is microseconds)
        _C.forward_with_kvcache_tensors(q, k_cache, v_cache, cache_seqlens, block_table, cache_batch_idx, k, v, out,
                                        opts, num_splits)
    if k is not None:
        torch.autograd.graph.increment_version((k_cache, v_cache))
    return out


def _fwd_kvcache_fake(q, k_cache, v_cache, k, v, cache_seqlens, block_table, cache_batch_idx, causal, scale,
                      bias_mode, bias_value, bias, window_left, window_right, alibi_slopes, num_splits):
    # The dispatcher also lands here when real tensors are mixed with meta ones.
    check_same_device(q, k_cache=k_cache, v_cache=v_cache, k=k, v=v, cache_seqlens=cache_seqlens,
                      block_table=block_table, cache_batch_idx=cache_batch_idx, bias=bias, alibi_slopes=alibi_slopes)
    return torch.empty_like(q)


_lib.impl("fwd_kvcache", _fwd_kvcache_impl, "CompositeExplicitAutograd")  # C++ rejects other devices
_lib.impl("fwd_kvcache", torch.library.fallthrough_kernel, "Autograd")
torch.library.register_fake("flashsigmoid::fwd_kvcache", _fwd_kvcache_fake, lib=_lib)
_fwd_kvcache = torch.ops.flashsigmoid.fwd_kvcache.default


def _predicate(module, name: str):
    """torch's predicate `name`, or one that is always true (take the dispatcher) where this torch lacks it."""
    fn = getattr(module, name, None)
    return fn if fn is not None else (lambda: True)


# What watches or rewrites ops: torch.compile, dispatch and function modes (torch.set_default_device
# is one), functorch transforms, autocast, the profiler, torch.jit.trace. Looked up once: a decode
# step's host time is microseconds.
_WATCHERS = (
    torch.compiler.is_compiling,
    lambda: torch._C._get_tracing_state() is not None,
    _predicate(torch._C, "_len_torch_dispatch_stack"),
    _predicate(torch._C, "_is_torch_function_mode_enabled"),
    _predicate(torch._C, "_are_functorch_transforms_active"),
    _predicate(torch._C, "_is_any_autocast_enabled"),
    _predicate(torch._C._autograd, "_profiler_enabled"),
)


def _direct_call_ok(tensors) -> bool:
    """True when calling the implementation directly does exactly what the dispatcher would: plain
    tensors, q not on meta (the dispatcher's fake kernel propagates shapes there) and no watcher. The
    dispatcher costs a few us of a ~15 us decode step on the host, which bounds a decode loop that is
    not captured in a CUDA graph."""
    for watching in _WATCHERS:
        if watching():
            return False
    if tensors[0].is_meta:
        return False
    for t in tensors:
        if t is not None and type(t) is not Tensor:
            return False
    return True


class _NoBackward(torch.autograd.Function):
    """Identity on the op's output that gives it a grad_fn when an input requires grad, so that a
    backward through the KV-cache attention fails loudly instead of leaving gradients out."""

    @staticmethod
    def forward(ctx, out, *inputs):
        return out.detach()  # not `out`: an input returned as is would be a view, closed to in-place ops

    @staticmethod
    def backward(ctx, *grads):
        raise _C.FlashSigmoidError(
            "flashsigmoid: sigmoid_attn_with_kvcache is not differentiable (an inference op); "
            "use sigmoid_attn for training, or detach its inputs")


def sigmoid_attn_with_kvcache(
    q: Tensor,
    k_cache: Tensor,
    v_cache: Tensor,
    k: Optional[Tensor] = None,
    v: Optional[Tensor] = None,
    *,
    cache_seqlens: Tensor,
    block_table: Optional[Tensor] = None,
    cache_batch_idx: Optional[Tensor] = None,
    causal: bool = False,
    scale: Optional[float] = None,
    bias,
    window: Tuple[int, int] = (-1, -1),
    alibi_slopes: Optional[Tensor] = None,
    num_splits: int = 0,
) -> Tensor:
    """Sigmoid attention of new query tokens over a key/value cache, optionally appending first.

    Args:
        q: ``[B, Nq_new, Hq, D]`` (``Nq_new`` = 1 for decode).
        k_cache, v_cache: dense ``[B_cache, Nmax, Hkv, D]``, or paged ``[num_pages, page_size, Hkv, D]``
            when ``block_table`` is given. Same dtype and device as q.
        k, v: optional new keys / values ``[B, Nq_new, Hkv, D]``, written into the cache (in place) at
            positions ``cache_seqlens[b] ...`` before the attention. Give both or neither.
        cache_seqlens: int32 ``[B]``: keys already in the cache per sequence.
        block_table: int32 ``[B, max_pages]``: key position t of sequence b is in page
            ``block_table[b, t // page_size]``, slot ``t % page_size``.
        cache_batch_idx: int32 ``[B]`` (dense caches): the cache row of each sequence (default b).
        causal: causal mask aligned bottom-right: query row i sits at key position
            ``Nk_b - Nq_new + i`` where ``Nk_b = cache_seqlens[b] (+ Nq_new when appending)``.
        scale: default ``1/sqrt(D)``.
        bias: required: a Python float or a float32 ``[Hq]`` tensor. A model trained with
            ``b = -log(n)`` decodes with that same ``b`` (n its training length), not with
            ``-log`` of the growing cache length, so there is no length-dependent default.
        window: sliding window ``(left, right)``, -1 = unbounded.
        alibi_slopes: optional float32 ``[Hq]`` or ``[B, Hq]``.
        num_splits: split each sequence's keys into this many chunks (0 = a heuristic); the
            partial outputs are summed in a fixed order, so results are deterministic.

    Returns:
        ``[B, Nq_new, Hq, D]`` in q's dtype.

    On CPU tensors the cache indices are checked before anything is written (a rejected call leaves
    the cache unchanged). On CUDA tensors only shapes, dtypes and devices are checked on the host
    (reading values would need a sync); a sequence whose indices are out of range is not appended
    and its output rows are NaN.
    """
    if isinstance(bias, Tensor):
        bias_mode, bias_value, bias_t = _C.BIAS_PER_HEAD, 0.0, bias
    elif isinstance(bias, (int, float)) and not isinstance(bias, bool):
        bias_mode, bias_value, bias_t = _C.BIAS_SCALAR, float(bias), None
    else:
        raise TypeError(
            "flashsigmoid: sigmoid_attn_with_kvcache needs bias= a Python float or a float32 tensor [Hq] "
            f"(the bias the model was trained with, e.g. -log(training length)); got {type(bias).__name__}")
    if isinstance(num_splits, bool) or not isinstance(num_splits, int):
        raise TypeError(f"flashsigmoid: num_splits must be an int (0 = heuristic); got {type(num_splits).__name__}")
    wl, wr = _window_args(window)
    args = (q, k_cache, v_cache, k, v, cache_seqlens, block_table, cache_batch_idx, bool(causal), _scale_arg(scale),
            bias_mode, bias_value, bias_t, wl, wr, alibi_slopes, num_splits)
    tensors = (q, k_cache, v_cache, k, v, cache_seqlens, block_table, cache_batch_idx, bias_t, alibi_slopes)
    out = _fwd_kvcache_impl(*args) if _direct_call_ok(tensors) else _fwd_kvcache(*args)
    if torch.is_grad_enabled():
        needs = [t for t in (q, k_cache, v_cache, k, v, bias_t, alibi_slopes)
                 if isinstance(t, Tensor) and t.requires_grad]  # not fx proxies (symbolic tracing)
        if needs:
            out = _NoBackward.apply(out, *needs)
    return out
