"""Compiled kernels loaded from numba's cache ahead of their first call, on a helper thread.

The first kernel a command calls pays for numba's code generator (LLVM) and the
kernel's machine code read back from the cache: about 0.3 s whatever the net,
on the thread that calls it. A command that first reads a large net (gunzip and
hashing release the GIL) starts :func:`preload` before, so that cost overlaps
the reading instead of following it. Only versions compiled for this machine
and this source are loaded, exactly those the first call would load: nothing
is compiled here, and any failure leaves the kernels to load at first call.
"""
from __future__ import annotations

import logging
import threading

log = logging.getLogger(__name__)


def _cached_signatures(kernel) -> list:
    """The signatures numba's cache holds for ``kernel`` on this machine (empty if none)."""
    cache = getattr(kernel, "_cache", None)
    index_file = getattr(cache, "_cache_file", None)
    if index_file is None:
        return []
    here = kernel.targetctx.codegen().magic_tuple()
    return [key[0] for key in index_file._load_index() if len(key) == 3 and key[1] == here]


def load_cached(kernels) -> None:
    """Load every cached version of each of ``kernels`` (numba dispatchers) now."""
    for kernel in kernels:
        try:
            for signature in _cached_signatures(kernel):
                kernel.compile(signature)
        except Exception as e:     # noqa: BLE001 - an optimisation only: the first call loads them anyway
            log.debug("kernel %s not preloaded: %s", getattr(kernel, "__name__", kernel), e)


def preload(kernels) -> threading.Thread:
    """:func:`load_cached` on a daemon thread, started; join it or let it finish alone."""
    thread = threading.Thread(target=load_cached, args=(list(kernels),), name="kernel preload", daemon=True)
    thread.start()
    return thread
