"""An lc0 network: its raw protobuf bytes, its id, and its layers in file order.

A :class:`Net` never re-serialises anything: it keeps the raw bytes and knows
where each layer's payload sits in them (found by :mod:`lc0weights.wire`), so
what is loaded is exactly what is saved.
"""
from __future__ import annotations

import functools
import hashlib
import mmap
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from . import encodings as enc
from . import gzipio
from .durable_files import atomic_file
from .errors import NetFormatError
from .net_unpack import DEFAULT_MAX_SIZE  # noqa: F401 - the limit callers of Net.load name
from .net_unpack import gunzip_file, gunzip_to_map, maybe_gunzip, size_limit, too_large, trailer_size
from .wire import LayerSpan, find_layers, read_magic

MAGIC = 0x1C0
GZIP_MAGIC = gzipio.MAGIC
# Nets written on a client (rebuilt, fetched) favour speed (see gzipio for the levels).
GZIP_LEVEL = gzipio.FAST_LEVEL
# A gzip net at least this large (raw) that is loaded with a spill folder is kept in a file there
# and mapped, not held on the heap (see Net.load): below it, the file is not worth its writes.
SPILL_MIN = 64 << 20
_FAULT_AROUND = 64 << 10


@dataclass(frozen=True)
class Layer:
    """One ``Weights.Layer`` of a net, located in the net's raw bytes."""

    index: int
    path: str
    span: LayerSpan
    encoding: int          # effective encoding (absent field -> LINEAR16)

    @functools.cached_property
    def nbytes(self) -> int:
        return max(0, self.span.params_end - self.span.params_start)

    @property
    def has_params(self) -> bool:
        return self.span.params_start >= 0

    @functools.cached_property
    def codable(self) -> bool:
        """True when the payload is whole elements of a known encoding."""
        return self.has_params and enc.is_codable(self.encoding, self.nbytes)

    @functools.cached_property
    def count(self) -> int:
        size = enc.ELEMENT_SIZE.get(self.encoding)
        return self.nbytes // size if size and self.codable else 0

    @property
    def dims(self) -> tuple[int, ...]:
        return tuple(self.span.dims)

    @property
    def min_bits(self) -> int:
        return self.span.min_bits

    @property
    def max_bits(self) -> int:
        return self.span.max_bits

    @property
    def role(self) -> str:
        return layer_role(self.path)


def layer_role(path: str) -> str:
    """What a layer is for, from its name: conv, bn, dense, bias, norm, gate, other."""
    leaf = path.rsplit(".", 1)[-1].split("~")[0]
    if leaf.startswith("bn_"):
        return "bn"
    if "ln" in leaf and ("gammas" in leaf or "betas" in leaf):
        return "norm"
    if leaf in ("ip_mult_gate", "ip_add_gate"):
        return "gate"
    if leaf in ("weights",):
        return "conv"
    if leaf in ("biases",) or leaf.endswith("_b") or leaf in ("b1", "b2"):
        return "bias"
    if leaf.endswith("_w") or leaf in ("w1", "w2", "compress") or leaf.startswith("rpe_"):
        return "dense"
    return "other"


class Net:
    """A loaded lc0 net. Build one with :meth:`load` or :meth:`from_bytes`.

    ``raw`` holds the raw protobuf bytes, as ``bytes`` or (when loaded from a
    gzip file, or rebuilt by a patch) a ``bytearray`` that is never modified:
    large nets are kept in one buffer, without a second copy. A large net
    loaded with a spill folder has a read-only ``mmap`` of an unnamed file
    instead (:meth:`load`, :meth:`release`).
    """

    def __init__(self, raw: bytes, source: str = "<bytes>"):
        # A bytearray or a map is kept as it is (no copy of a large net); treat it as read-only.
        self.raw = raw if isinstance(raw, (bytes, bytearray, mmap.mmap)) else bytes(raw)
        self.source = source
        try:
            magic = read_magic(self.raw)
            spans = find_layers(self.raw) if magic == MAGIC else []
        except NetFormatError as e:
            raise NetFormatError(f"{source}: not an lc0 net ({e})") from None
        if magic != MAGIC:
            raise NetFormatError(f"{source}: not an lc0 net (no 0x1c0 magic at the start)")
        self.layers = [Layer(i, s.path, s, enc.effective(s.encoding)) for i, s in enumerate(spans)]
        self._id = None
        self._paths = None

    # -- construction -----------------------------------------------------
    @classmethod
    def from_bytes(cls, data: bytes, source: str = "<bytes>", max_size: int | None = None) -> "Net":
        """A net from raw protobuf bytes or a gzip stream of them.

        ``max_size`` bounds the raw size (default :data:`DEFAULT_MAX_SIZE`); a
        gzip stream is decompressed only that far, so a bomb costs no more.
        """
        return cls(maybe_gunzip(data, source, max_size), source)

    @classmethod
    def load(cls, path, max_size: int | None = None, *, spill_dir=None) -> "Net":
        """A net from a ``.pb.gz`` or ``.pb`` file (gzip is detected, not guessed).

        ``max_size`` bounds the raw size as in :meth:`from_bytes` (say, the
        size a repository index declares for the net). With ``spill_dir``, a
        gzip net of :data:`SPILL_MIN` raw bytes or more is gunzipped (and
        hashed) into an unnamed file in that folder and mapped read-only: a
        patch rebuilt from it touches a few chunks of it at a time and lets
        each go (:meth:`release`), so the base's pages stay in the page cache
        instead of the process's memory. Pass a folder on the disk the output
        goes to (a tmpfs would hold the bytes in memory after all).
        """
        path = Path(path)
        limit = size_limit(max_size)
        net_id = None
        try:
            with open(path, "rb") as f:
                if f.read(2) == GZIP_MAGIC:
                    size = trailer_size(f, str(path), limit)
                    if spill_dir is not None and size >= SPILL_MIN:
                        raw, net_id = gunzip_to_map(f, str(path), size, limit, Path(spill_dir))
                    else:
                        raw = gunzip_file(f, str(path), size, limit)
                else:
                    if os.fstat(f.fileno()).st_size > limit:
                        raise too_large(str(path), limit)
                    f.seek(0)
                    raw = f.read(limit + 1)
                    if len(raw) > limit:
                        raise too_large(str(path), limit)
        except OSError as e:
            raise NetFormatError(f"{path}: cannot read ({e.strerror})") from None
        if not raw:
            raise NetFormatError(f"{path}: empty file, not an lc0 net")
        net = cls(raw, str(path))
        net._id = net_id
        return net

    # -- identity -----------------------------------------------------------
    @property
    def id(self) -> str:
        """The network id: sha256 of the raw (un-gzipped) protobuf, in hex."""
        if self._id is None:
            self._id = hashlib.sha256(self.raw).hexdigest()
        return self._id

    @property
    def raw_size(self) -> int:
        """The raw protobuf's size in bytes."""
        return len(self.raw)

    @property
    def format_name(self) -> str:
        return "onnx" if self.layers == [] and b"" != self.raw and _has_onnx(self.raw) else "weights"

    # -- layers -------------------------------------------------------------
    def layer(self, path: str) -> Layer:
        for layer in self._by_path().get(path, ()):
            return layer
        raise KeyError(path)

    def layer_at(self, index: int) -> Layer | None:
        """Layer ``index``, or None if there is no such layer."""
        return self.layers[index] if 0 <= index < len(self.layers) else None

    def _by_path(self) -> dict[str, list[Layer]]:
        if self._paths is None:
            paths: dict[str, list[Layer]] = {}
            for layer in self.layers:
                paths.setdefault(layer.path, []).append(layer)
            self._paths = paths
        return self._paths

    def payload(self, layer: Layer) -> memoryview:
        return memoryview(self.raw)[layer.span.params_start:layer.span.params_end]

    def codes(self, layer: Layer) -> np.ndarray:
        """The layer's payload as integer codes (read-only view of the raw bytes)."""
        return enc.codes(layer.encoding, self.payload(layer))

    def values(self, layer: Layer) -> np.ndarray:
        """The layer's weights as float32, decoded as the engine decodes them."""
        return enc.decode(layer.encoding, self.codes(layer), layer.min_bits, layer.max_bits)

    def release(self, start: int, end: int) -> None:
        """Bytes ``start:end`` will not be read again soon: a mapped net (see :meth:`load`)
        drops their pages from memory (read back from its file if they are after all);
        a net on the heap keeps them."""
        if isinstance(self.raw, mmap.mmap) and end > start:
            # A page fault maps its cached neighbours too (Linux's fault-around, 64 KB), which
            # may lie in bytes released before: the margin takes those back out.
            start = max(0, start - _FAULT_AROUND)
            start -= start % mmap.PAGESIZE
            self.raw.madvise(mmap.MADV_DONTNEED, start, min(end + _FAULT_AROUND, len(self.raw)) - start)

    @property
    def weight_count(self) -> int:
        return sum(layer.count for layer in self.layers)

    # -- output -------------------------------------------------------------
    def save(self, path) -> None:
        """Write as ``.pb.gz`` (gzip) or anything else as raw, by temp file + rename."""
        write_net_file(path, self.raw)


def _has_onnx(raw) -> bool:
    from .wire import iter_fields
    return any(n == 11 for n, *_ in iter_fields(raw, 0, len(raw)))


NET_HEAD = b"\x0d" + MAGIC.to_bytes(4, "little")     # field 1 (fixed32) = 0x1c0: how every net begins


def starts_like_a_net(head) -> bool:
    """Whether ``head`` begins as an lc0 net does; a gzip member after the first that
    does is a second net concatenated onto the file (protobuf would merge the two)."""
    return bytes(head[:len(NET_HEAD)]) == NET_HEAD


def gzip_bytes(raw: bytes) -> bytes:
    """Deterministic gzip (no name, mtime 0), as an engine or client expects (see :mod:`.gzipio`)."""
    return gzipio.gzip_bytes(raw)


def write_net_file(path, raw: bytes) -> None:
    """Save raw net bytes: gzip when the name ends in ``.gz``, raw otherwise.

    The gzip stream goes straight to the file, so saving a large net costs no
    second copy of it in memory.
    """
    path = Path(path)
    with atomic_file(path) as f:
        if not path.name.endswith(".gz"):
            f.write(raw)
            return
        gzipio.write_gzip(f, raw, GZIP_LEVEL)
