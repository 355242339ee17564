"""Byte ranges a client asks for: one ``Range: bytes=`` header read against a file's size.

Only a single range is honoured; anything else (several ranges, another unit,
garbage) means the whole file, as HTTP allows. Positions with more digits than
any file could need are treated as beyond the end, never converted whole.
"""
from __future__ import annotations

import re

_RANGE = re.compile(r"bytes=([0-9]*)-([0-9]*)\Z")
_POSITION_DIGITS = 19          # more digits than this is beyond any file we hold


def _position(digits: str) -> int | None:
    """A byte position, or None when it has more digits than any file size."""
    digits = digits.lstrip("0") or "0"
    return int(digits) if len(digits) <= _POSITION_DIGITS else None


def parse_range(header: str, size: int):
    """(start, end) for one satisfiable range, "unsatisfiable", or None to send everything."""
    m = _RANGE.match(header.strip())
    if not m or not (m.group(1) or m.group(2)):
        return None                     # several ranges or a unit we do not know: whole file
    first, last = m.groups()
    if not first:                       # suffix range: the last N bytes
        n = _position(last)
        if n == 0 or size == 0:
            return "unsatisfiable"
        return (0 if n is None else max(0, size - n)), size - 1
    start = _position(first)
    if start is None or start >= size:
        return "unsatisfiable"
    end = _position(last) if last else None
    if end is None:
        return start, size - 1
    if end < start:
        return "unsatisfiable"
    return start, min(end, size - 1)
