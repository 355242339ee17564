"""Reading the small files options name (keys, trust files, the config file), bounded.

An option that names a file expects a regular file of a few kilobytes. A
device (``/dev/zero``), a FIFO or a folder given by mistake must be refused at
once, not read forever or waited on: the file is opened non-blocking (opening
a FIFO with no writer would block), checked with ``fstat`` on the descriptor
that is then read (no race between the check and the read), and read no
further than ``limit`` bytes.
"""
from __future__ import annotations

import os
import stat

from .errors import Lc0WeightsError


class NotARegularFileError(Lc0WeightsError):
    """An option named something other than a regular file of reasonable size."""


def _kind(mode: int) -> str:
    if stat.S_ISDIR(mode):
        return "a folder"
    if stat.S_ISFIFO(mode):
        return "a FIFO (named pipe)"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a device"
    if stat.S_ISSOCK(mode):
        return "a socket"
    return "not a regular file"


def require_regular(fd: int, path, what: str, limit: int | None = None) -> os.stat_result:
    """``fstat`` of ``fd``, refusing anything but a regular file (of at most ``limit`` bytes)."""
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode):
        raise NotARegularFileError(f"{path}: is {_kind(st.st_mode)}, not a {what} file")
    if limit is not None and st.st_size > limit:
        raise NotARegularFileError(f"{path}: {st.st_size:,} bytes, too large to be a {what} file "
                                   f"(at most {limit:,})")
    return st


def read_small_file(path, limit: int, what: str) -> bytes:
    """The bytes of the regular file ``path``, at most ``limit`` of them.

    ``what`` names the file's role in messages ("key", "config"). Raises
    :class:`NotARegularFileError` for a device, FIFO, folder or a file over
    ``limit``; ``OSError`` (missing, unreadable) is left to the caller.
    """
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        require_regular(fd, path, what, limit)
        with os.fdopen(os.dup(fd), "rb") as f:
            data = f.read(limit + 1)
    finally:
        os.close(fd)
    if len(data) > limit:                   # grew since fstat
        raise NotARegularFileError(f"{path}: too large to be a {what} file (at most {limit:,} bytes)")
    return data


def require_regular_path(path, what: str) -> None:
    """Refuse a path naming a device, FIFO or folder, without opening it (a FIFO open blocks).

    A missing path is left to the reader, whose message names it.
    """
    try:
        st = os.stat(path)
    except OSError:
        return
    if not stat.S_ISREG(st.st_mode):
        raise NotARegularFileError(f"{path}: is {_kind(st.st_mode)}, not a {what} file")
