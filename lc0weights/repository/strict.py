"""Strict reading of JSON documents that come from the network.

Every repository document (root, timestamp, records) is
read through a :class:`Strict` reader: each value is checked for type, range
and form where it is read, and the first surprise refuses the whole document
with one line naming the document, the field and what was found.
"""
from __future__ import annotations

import json
import math
import re

from .errors import RepositoryIndexError

MAX_OBJECT_BYTES = 16 << 30         # no lc0 net comes near 16 GiB
MAX_ENTRIES = 1_000_000

_HEX64 = re.compile(r"[0-9a-f]{64}\Z")
_SEGMENT = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._-]*\Z")


def show(value) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


class Strict:
    """Checks for one document; failures raise ``error`` as 'refusing <document>: <where>: <what>'."""

    def __init__(self, document: str, error: type = RepositoryIndexError):
        self.document = document
        self.error = error

    def fail(self, where: str, what: str):
        raise self.error(f"refusing {self.document}: {where}: {what}")

    def load_json(self, data: bytes, limit: int):
        if len(data) > limit:
            self.fail(self.document, f"{len(data)} bytes, more than the limit of {limit}")
        try:
            return json.loads(data)
        except (ValueError, RecursionError) as e:
            self.fail(self.document, f"not valid JSON ({e})")

    def hex64(self, value, where: str) -> str:
        if not isinstance(value, str) or not _HEX64.match(value):
            self.fail(where, f"expected 64 lowercase hex digits, found {show(value)}")
        return value

    def opt_hex64(self, value, where: str) -> str | None:
        return None if value is None else self.hex64(value, where)

    def count(self, value, where: str, limit: int = MAX_OBJECT_BYTES) -> int:
        if type(value) is not int or value < 0:
            self.fail(where, f"expected a non-negative integer, found {show(value)}")
        if value > limit:
            self.fail(where, f"declared size {value} exceeds the limit of {limit} bytes")
        return value

    def opt_count(self, value, where: str, limit: int = MAX_OBJECT_BYTES) -> int | None:
        return None if value is None else self.count(value, where, limit)

    def string(self, value, where: str, limit: int = 256) -> str:
        if not isinstance(value, str) or len(value) > limit:
            self.fail(where, f"expected a string of at most {limit} characters, found {show(value)}")
        return value

    def positive(self, value, where: str) -> float:
        if type(value) not in (int, float) or not math.isfinite(value) or value <= 0:
            self.fail(where, f"expected a positive number, found {show(value)}")
        return float(value)

    def path(self, value, where: str) -> str:
        """A relative object path that cannot leave the repository."""
        self.string(value, where, 512)
        segments = value.split("/")
        if value.startswith("/") or "\\" in value or not all(_SEGMENT.match(s) for s in segments):
            self.fail(where, f"unsafe object path {show(value)} (must be relative, no '..', no hidden parts)")
        return value

    def object(self, value, where: str) -> dict:
        if not isinstance(value, dict):
            self.fail(where, f"expected an object, found {type(value).__name__}")
        return value

    def list(self, value, where: str, limit: int = MAX_ENTRIES) -> list:
        if not isinstance(value, list):
            self.fail(where, f"expected a list, found {type(value).__name__}")
        if len(value) > limit:
            self.fail(where, f"{len(value)} entries, more than the limit of {limit}")
        return value
