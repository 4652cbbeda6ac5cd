"""Argument checks that must happen in Python, before (or instead of) the C++ validation."""

from typing import Optional

from torch import Tensor

from ._C import FlashSigmoidError


def check_same_device(q: Tensor, **others: Optional[Tensor]) -> None:
    """Every tensor on q's device.

    The C++ validation cannot see this case: a meta tensor among real ones sends the call to
    the fake (meta) implementation, which would return an uninitialised tensor.
    """
    for name, t in others.items():
        if t is not None and t.device != q.device:
            raise FlashSigmoidError(
                f"flashsigmoid: {name} is on {t.device} but q is on {q.device}; all tensor arguments "
                "must be on one device"
            )
