"""Layers split into independently coded chunks (patch format version 2).

A layer of more than ``chunk_size`` values is coded as several streams, each
with fresh model state, so one large layer decodes and encodes on every core
and in memory proportional to a chunk, not to the layer. Where a chunk ends is
a pure function of the layer's value count, its inferred shape and the
patch's ``chunk_size`` (:func:`chunk_step`), never of the thread count, so a
patch's bytes do not depend on how many threads wrote it.

Each chunk is coded as a small layer of its own: its elements' residuals,
then its own escape pairs (positions counted from the chunk's first element),
with the layer's residual kind and quantisation width and a codec of its own.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..errors import PatchFormatError
from ..proto import patch_pb2

# Values per chunk the writer uses, chosen by measurement (docs/FORMAT.md,
# "Chunks"). Fresh model state per chunk costs little: on maia-swa patches,
# forcing chunks of 2^16 values costs +0.04%, 2^14 +0.5%; on a synthetic run
# with 2.4M-value layers, 2^20 costs +0.013%, 2^18 +0.05%. 2^18 leaves every
# layer of the 1.2 MB maia nets whole (the largest has exactly 2^18 values), so
# their patches are unchanged, and cuts a 2.1M-value BT4 layer in 9: enough
# pieces for every core, and some 15 MB of work arrays per thread at most.
CHUNK_SIZE = 1 << 18


def chunk_step(count: int, shape: tuple, chunk_size: int) -> tuple[int, int]:
    """(values per chunk, number of chunks) of a layer of ``count`` values.

    One chunk when ``chunk_size`` is 0 (version 1) or the layer fits in it.
    Otherwise the layer is cut into ``ceil(count / chunk_size)`` near-equal
    runs, each a whole number of output-channel rows when a row
    (``prod(shape[1:])``) is at most ``chunk_size``; the last run is shorter.
    """
    if not chunk_size or count <= chunk_size:
        return max(count, 0), 1
    pieces = -(-count // chunk_size)
    row = 1
    if len(shape) >= 2 and int(np.prod(shape, dtype=np.int64)) == count:
        row = int(np.prod(shape[1:], dtype=np.int64))
    if 1 < row <= chunk_size:
        rows = count // row
        step = -(-rows // pieces) * row
    else:
        step = -(-count // pieces)
    return step, -(-count // step)


def chunk_shape(shape: tuple, lo: int, hi: int) -> tuple:
    """The inferred shape of elements ``lo:hi``: whole rows keep the row shape."""
    if len(shape) >= 2:
        row = int(np.prod(shape[1:], dtype=np.int64))
        if row and lo % row == 0 and (hi - lo) % row == 0:
            return ((hi - lo) // row, *shape[1:])
    return (hi - lo,)


@dataclass(frozen=True)
class ChunkSpec:
    """One chunk of a layer: elements ``lo:hi``, its escapes, and where its stream is."""

    lo: int
    hi: int
    escapes: int
    section: patch_pb2.Section
    offset: int              # of its stream inside the layer's section

    @property
    def count(self) -> int:
        return self.hi - self.lo


def chunk_sections(lp) -> list:
    """The sections that hold a layer's streams: its chunks', or its own."""
    return [c.section for c in lp.chunks] if lp.chunks else [lp.section]


def total_escapes(lp) -> int:
    return sum(c.escapes for c in lp.chunks) if lp.chunks else lp.escapes


def layer_chunks(lp, count: int, shape: tuple, chunk_size: int, path: str) -> list[ChunkSpec]:
    """A layer's chunks, checked against what the header may declare.

    ``count`` is the layer's value count (elements, or payload bytes for
    RAW_BYTES). A layer of more than ``chunk_size`` values must list exactly
    the chunks :func:`chunk_step` gives, with sizes adding up to its section;
    a smaller one must list none.
    """
    step, pieces = chunk_step(count, shape, chunk_size)
    if not lp.chunks:
        if pieces != 1:
            raise PatchFormatError(f"layer {path}: {count:,} values in one stream; "
                                   f"the patch's chunk size {chunk_size:,} requires {pieces} chunks")
        return [ChunkSpec(0, count, lp.escapes, lp.section, 0)]
    if len(lp.chunks) != pieces or pieces == 1:
        raise PatchFormatError(f"layer {path}: {len(lp.chunks)} chunks listed, "
                               f"its size and the chunk size give {pieces}")
    if lp.escapes or lp.section.codec or lp.section.codec_config:
        raise PatchFormatError(f"layer {path}: a chunked layer with its own escapes or codec")
    specs, offset = [], 0
    for i, chunk in enumerate(lp.chunks):
        lo, hi = i * step, min(count, (i + 1) * step)
        if chunk.escapes > hi - lo:
            raise PatchFormatError(f"layer {path}: chunk {i} has more escapes than elements")
        specs.append(ChunkSpec(lo, hi, chunk.escapes, chunk.section, offset))
        offset += chunk.section.stored_size
    if offset != lp.section.stored_size:
        raise PatchFormatError(f"layer {path}: chunk sizes do not add up to its section")
    return specs
