"""Forward-mode AD (torch.func.jvp, torch.autograd.forward_ad) for flashsigmoid::fwd.

torch.library.custom_op's autograd kernel knows only the backward: given dual tensors it
runs the op on their primals and drops the tangents. This replaces the op's Autograd kernel
with one that unpacks the tangents, runs that same kernel on the primals (reverse mode as
before) and attaches the output's tangent, computed by _blockwise.jvp.
"""

import inspect

import torch
import torch.autograd.forward_ad as fwAD
from torch._library.autograd import make_autograd_impl

from . import _blockwise

# inputs of flashsigmoid::fwd that can carry a tangent
_DIFFERENTIABLE = ("q", "k", "v", "bias", "alibi_slopes")


def install(op, lib: torch.library.Library) -> None:
    """op: the flashsigmoid::fwd CustomOpDef (with its autograd registered); lib: a FRAGMENT library."""
    overload = op._opoverload
    schema_args = overload._schema.arguments
    names = [a.name for a in schema_args]
    positions = [names.index(n) for n in _DIFFERENTIABLE]
    reverse_mode = make_autograd_impl(overload, op)

    def kernel(keyset, *args):
        tangents, primals = {}, list(args)
        for name, i in zip(_DIFFERENTIABLE, positions):
            if i < len(args) and isinstance(args[i], torch.Tensor):
                primal, tangent = fwAD.unpack_dual(args[i])
                if tangent is not None:
                    tangents[name], primals[i] = tangent, primal
        out = reverse_mode(keyset, *primals)
        if not tangents:
            return out
        # the dispatcher leaves out trailing arguments that equal their defaults
        full = primals + [a.default_value for a in schema_args[len(primals):]]
        return fwAD.make_dual(out, _blockwise.jvp(op, dict(zip(names, full)), tangents))

    # custom_op registered its own Autograd kernel through torch.library; replacing it needs
    # allow_override=True where that is not the default (torch 2.11 and others before 2.15).
    override = {"allow_override": True} if "allow_override" in inspect.signature(lib.impl).parameters else {}
    lib.impl(overload._opname, kernel, "Autograd", with_keyset=True, **override)
