"""torch.autocast support for flashsigmoid::fwd.

Under autocast, q, k and v (floating point, on the autocast device, not float64) run in the
autocast dtype, as torch.nn.functional.scaled_dot_product_attention does; so fp32 inputs and a
mix of autocast-produced bf16 and fp32 inputs work. torch.library.register_autocast is not
used: it casts to one dtype fixed at registration, not the dtype the autocast region asks for,
and it casts every floating-point tensor, while the per-head bias and the ALiBi slopes stay
float32.
"""

import torch

_CAST = ("q", "k", "v")


def install(op, lib: torch.library.Library, device_types=("cpu", "cuda")) -> None:
    """op: the flashsigmoid::fwd CustomOpDef; lib: a FRAGMENT library of its namespace."""
    overload = op._opoverload
    names = [a.name for a in overload._schema.arguments]
    positions = [names.index(n) for n in _CAST]
    for device_type in device_types:
        key = "Autocast" + torch._C._dispatch_key_for_device(device_type)
        lib.impl(overload._opname, _kernel(overload, positions, device_type, key), key, with_keyset=True)


def _kernel(overload, positions, device_type, key):
    excluded = torch._C.DispatchKeySet(getattr(torch._C.DispatchKey, key))

    def kernel(_keyset, *args):
        dtype = torch.get_autocast_dtype(device_type)
        args = list(args)
        for i in positions:
            t = args[i]
            if t.is_floating_point() and t.device.type == device_type and t.dtype != torch.float64:
                args[i] = t.to(dtype)
        with torch._C._ExcludeDispatchKeyGuard(excluded):
            return overload(*args)

    return kernel
