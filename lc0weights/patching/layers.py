"""Which base layer each target layer is coded against, and what both sides derive from it."""
from __future__ import annotations

import threading
from dataclasses import dataclass, field

import numpy as np

from .. import encodings as enc
from .. import residuals as res
from ..codecs import LayerInfo
from ..errors import (PatchFormatError)
from ..net import Layer, Net
from ..proto import patch_pb2
from .chunks import ChunkSpec, chunk_shape, layer_chunks, total_escapes


# -- layer pairing and codec context ----------------------------------------------------

def paired_layer(base: Net | None, layer: Layer) -> Layer | None:
    """The base layer a target layer is coded against: same path, count and encoding."""
    if base is None or not layer.codable:
        return None
    for candidate in base._by_path().get(layer.path, ()):
        if candidate.codable and candidate.count == layer.count and candidate.encoding == layer.encoding:
            return candidate
    return None


def infer_shape(path: str, count: int, counts: dict[str, int], dims=()) -> tuple:
    """(out, in, h, w) for convolutions, (out, in) for dense layers, else (count,).

    lc0 files rarely carry dims; the output width is read off the layer's bias
    or batch-norm sibling instead.
    """
    if dims and int(np.prod(dims)) == count:
        return tuple(int(d) for d in dims)
    stem, _, leaf = path.rpartition(".")
    if leaf == "weights":
        sibling = counts.get(f"{stem}.biases") or counts.get(f"{stem}.bn_means") or counts.get(f"{stem}.bn_betas")
        if sibling and count % sibling == 0:
            rest = count // sibling
            return (sibling, rest // 9, 3, 3) if rest % 9 == 0 else (sibling, rest, 1, 1)
    elif leaf.endswith("_w") or leaf in ("w1", "w2"):
        bias = leaf[:-2] + "_b" if leaf.endswith("_w") else "b" + leaf[1:]
        out = counts.get(f"{stem}.{bias}" if stem else bias)
        if out and count % out == 0:
            return (out, count // out)
    return (count,)


class TableCache:
    """Per-layer tables (``LayerContext.base_table``), each made once for all the
    layer's chunks (by whichever thread asks first) and dropped when a few later
    layers have one: chunks are coded in layer order, so only the layers in flight
    hold one. Keys sort in layer order."""

    KEEP = 8

    def __init__(self):
        self._tables: dict[tuple, np.ndarray] = {}
        self._lock = threading.Lock()
        self._making: dict[tuple, threading.Lock] = {}

    def get(self, index: tuple, make) -> np.ndarray:
        with self._lock:
            table = self._tables.get(index)
            if table is not None:
                return table
            making = self._making.setdefault(index, threading.Lock())
        with making:
            with self._lock:
                table = self._tables.get(index)
            if table is None:
                table = make()
                with self._lock:
                    self._tables[index] = table
                    for old in sorted(self._tables)[:-self.KEEP]:
                        del self._tables[old]
                    self._making.pop(index, None)
            return table


@dataclass
class LayerContext:
    """Everything both sides derive from the base, history and skeleton alike."""

    base: Net | None
    history: Net | None
    counts: dict[str, int] = field(default_factory=dict)
    tolerance: float = 0.0
    chunk_size: int = 0          # PatchHeader.chunk_size: 0 never splits a layer
    tables: TableCache = field(default_factory=TableCache, compare=False, repr=False)

    def base_table(self, layer: Layer, base_layer: Layer | None) -> np.ndarray | None:
        """The predicted code of every base code (``res.linear16_base_table``) of a large
        LINEAR16 layer coded against a LINEAR16 base layer, made once for all its chunks;
        None where the per-weight float steps are used."""
        if base_layer is None or layer.encoding != enc.LINEAR16 or base_layer.encoding != enc.LINEAR16 \
                or layer.count < res.TABLED_REBUILD_MIN:
            return None
        target = res.LayerTarget(layer.encoding, layer.count, layer.min_bits, layer.max_bits)
        return self.tables.get((base_layer.index, layer.min_bits, layer.max_bits),
                               lambda: res.linear16_base_table(base_layer.min_bits, base_layer.max_bits, target))

    def release(self, base_layer: Layer | None, lo: int, hi: int) -> None:
        """Elements ``lo:hi`` of ``base_layer`` (and of its history layer) are done with:
        a chunk is decoded once, so a mapped base or history lets their pages go."""
        if base_layer is None or not base_layer.count:
            return
        size = base_layer.nbytes // base_layer.count
        for net, paired in ((self.base, base_layer), (self.history, paired_layer(self.history, base_layer))):
            if paired is not None:
                start = paired.span.params_start
                net.release(start + lo * size, start + hi * size)

    def base_layer(self, layer: Layer, lp) -> Layer | None:
        if not pairs_with_base(lp):
            return None
        index = layer.index + lp.base_shift
        found = self.base.layer_at(index) if self.base is not None else None
        if found is None:
            raise PatchFormatError(f"layer {layer.path}: base layer {index} does not exist")
        if not found.codable or found.encoding != layer.encoding or found.count != layer.count:
            raise PatchFormatError(f"layer {layer.path}: base layer {index} does not match")
        return found

    def shape(self, layer: Layer, lp) -> tuple:
        return infer_shape(layer.path, element_count(layer, lp), self.counts, layer.dims)

    def chunks(self, layer: Layer, lp) -> list[ChunkSpec]:
        """The layer's chunks as the header declares them, checked (``chunks.layer_chunks``)."""
        return layer_chunks(lp, element_count(layer, lp), self.shape(layer, lp), self.chunk_size,
                            layer.path)

    def info(self, layer: Layer, lp, base_layer: Layer | None, lo: int = 0,
             hi: int | None = None, context=frozenset({"base", "history"})) -> LayerInfo:
        """The codec context of elements ``lo:hi`` (default: the whole layer), which a
        chunk's codec sees as a layer of its own: base and history cut to the chunk,
        its rows as the shape. Only the chunk's base weights are decoded, and only
        when ``context`` (the codec's) reads them or the history they give."""
        count = element_count(layer, lp)
        hi = count if hi is None else hi
        wants_history = "history" in context and self.history is not None
        base_values = None
        if base_layer is not None and ("base" in context or wants_history):
            base_values = layer_values(self.base, base_layer, lo, hi)
        history = None
        if base_values is not None and wants_history:
            h = paired_layer(self.history, base_layer)
            if h is not None:
                with np.errstate(invalid="ignore", over="ignore"):
                    history = base_values - layer_values(self.history, h, lo, hi)
        shape, dims = self.shape(layer, lp), layer.dims
        if (lo, hi) != (0, count):
            shape, dims = chunk_shape(shape, lo, hi), ()
        return LayerInfo(path=layer.path, role=layer.role, residual=lp.residual, encoding=layer.encoding,
                         count=hi - lo, dims=dims, shape=shape,
                         quant_width=lp.quant_width or 1, tolerance=self.tolerance,
                         base=base_values, history=history, scale=unit_scale(layer, lp, self.tolerance))


def pairs_with_base(lp) -> bool:
    """Whether a layer is coded against a base layer (not intra, not raw bytes)."""
    return not (lp.intra or lp.residual == patch_pb2.RAW_BYTES)


def layer_values(net: Net, layer: Layer, lo: int, hi: int) -> np.ndarray:
    """Weights ``lo:hi`` of a layer as float32, as ``Net.values`` decodes them (the
    decoding is per element, so a slice decodes to the slice of the whole)."""
    return enc.decode(layer.encoding, net.codes(layer)[lo:hi], layer.min_bits, layer.max_bits)


def element_count(layer: Layer, lp) -> int:
    """The layer's values before escapes: its elements, or its payload bytes for RAW_BYTES."""
    return layer.nbytes if lp.residual == patch_pb2.RAW_BYTES else layer.count


def unit_scale(layer: Layer, lp, tolerance: float) -> float:
    """The value of one residual unit, as the rebuild side can compute it."""
    if lp.residual == patch_pb2.LINEAR16_REGRID:
        lo, hi = float(enc.f32(layer.min_bits)), float(enc.f32(layer.max_bits))
        return (hi - lo) / 65535.0 * (lp.quant_width or 1)
    if lp.residual == patch_pb2.FLOAT_STEP:
        return 2.0 * tolerance
    return 0.0


def target_of(layer: Layer) -> res.LayerTarget:
    return res.LayerTarget(layer.encoding, layer.count, layer.min_bits, layer.max_bits)


def value_count(layer: Layer, lp) -> int:
    """How many integers a layer's streams hold: elements, then escape pairs."""
    if lp.residual == patch_pb2.RAW_BYTES:
        return layer.nbytes
    return layer.count + 2 * total_escapes(lp)
