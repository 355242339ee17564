"""lc0weights: Leela Chess Zero networks as small, verified patches.

    >>> from lc0weights import Net, make_patch, apply_patch
    >>> base, target = Net.load("old.pb.gz"), Net.load("new.pb.gz")
    >>> patch = make_patch(base, target)              # lossless
    >>> assert Net(apply_patch(base, patch)).id == target.id
"""
import logging

from .errors import (Lc0WeightsError, MissingHistoryError, NetFormatError,
                     PatchFormatError, UnknownCodecError, VerificationError,
                     WrongBaseError)
from .net import Net

__version__ = "0.1.0"
__all__ = [
    "Net", "make_patch", "apply_patch", "read_patch_info", "PatchInfo", "max_error",
    "Lc0WeightsError", "NetFormatError", "PatchFormatError", "WrongBaseError",
    "MissingHistoryError", "VerificationError", "UnknownCodecError",
]

logging.getLogger(__name__).addHandler(logging.NullHandler())

_PATCH_NAMES = ("PatchInfo", "apply_patch", "make_patch", "max_error", "read_patch_info")


def __getattr__(name: str):
    # The patch functions load the numba kernels: imported on first use, so a command
    # that reads a large net first (apply) starts reading it before they load.
    if name in _PATCH_NAMES:
        from . import patch
        return getattr(patch, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
