"""Layer encodings: bytes to float32 exactly as the engine decodes, and back.

Encodings are the ``Weights.Layer.encoding`` numbers. An absent field means
LINEAR16. LINEAR16 is decoded in float32 arithmetic, the way the engine does:
``theta = u16 / 65535.0f; value = min*(1-theta) + max*theta`` (lc0 master).
Released engines decode it two other ways (:data:`LINEAR16_DECODINGS`):
``theta*(max-min) + min`` (v0.32.1) and the same line contracted to a fused
multiply-add (what compilers make of it with FMA instructions). A bound on a
decoded weight holds for the engine only if it holds under all three, so
:func:`worst_difference` measures every one of them.
"""
from __future__ import annotations

import numpy as np

from .errors import NetFormatError

UNKNOWN, LINEAR16, FLOAT16, BFLOAT16, FLOAT32 = 0, 1, 2, 3, 4
NAMES = {UNKNOWN: "UNKNOWN", LINEAR16: "LINEAR16", FLOAT16: "FLOAT16",
         BFLOAT16: "BFLOAT16", FLOAT32: "FLOAT32"}
ELEMENT_SIZE = {LINEAR16: 2, FLOAT16: 2, BFLOAT16: 2, FLOAT32: 4}
_CODE_DTYPE = {LINEAR16: "<u2", FLOAT16: "<u2", BFLOAT16: "<u2", FLOAT32: "<u4"}
_SIGN = {2: 0x8000, 4: 0x80000000}


def effective(encoding: int | None) -> int:
    """The encoding the engine uses for a layer whose field holds ``encoding``."""
    return LINEAR16 if encoding is None else encoding


def is_codable(encoding: int, nbytes: int) -> bool:
    """True when a payload can be read as whole elements of a known encoding."""
    size = ELEMENT_SIZE.get(encoding)
    return size is not None and nbytes % size == 0


def codes(encoding: int, payload) -> np.ndarray:
    """The payload as unsigned integer codes (uint16, or uint32 for FLOAT32)."""
    return np.frombuffer(payload, dtype=_CODE_DTYPE[encoding])


def to_bytes(encoding: int, code_array: np.ndarray) -> bytes:
    return np.ascontiguousarray(code_array, dtype=_CODE_DTYPE[encoding]).tobytes()


def f32(bits: int) -> np.float32:
    return np.array([bits], dtype=np.uint32).view(np.float32)[0]


def _theta(code_array: np.ndarray) -> np.ndarray:
    return code_array.astype(np.float32) / np.float32(65535.0)


def linear16_master(code_array, lo: np.float32, hi: np.float32) -> np.ndarray:
    """lc0 master: ``min*(1-t) + max*t``, every operation rounded to float32."""
    theta = _theta(code_array)
    return lo * (np.float32(1.0) - theta) + hi * theta


def linear16_v0321(code_array, lo: np.float32, hi: np.float32) -> np.ndarray:
    """lc0 v0.32.1: ``t*(max-min) + min``, every operation rounded to float32."""
    return _theta(code_array) * np.float32(hi - lo) + lo


def linear16_fma(code_array, lo: np.float32, hi: np.float32) -> np.ndarray:
    """``fmaf(t, max-min, min)``: t*(max-min)+min rounded once, to float32."""
    return fma_f32(_theta(code_array), np.float32(hi - lo), lo)


def fma_f32(a: np.ndarray, b: np.float32, c: np.float32) -> np.ndarray:
    """``fmaf(a, b, c)`` for float32 arrays: a*b+c rounded once, nearest, ties to even.

    numpy has no fma, so it is emulated exactly: the product of two float32s
    is exact in float64 (48 significant bits); the sum with ``c`` is rounded
    to float64 as ``s`` and its rounding error ``err`` recovered exactly
    (TwoSum). Rounding ``s`` to float32 equals rounding the exact sum
    ``s + err`` unless ``s`` lies exactly halfway between two float32s and
    ``err`` is not zero (|err| is far below a float32 half-ulp): a plain
    double rounding would then break the tie by round-to-even, while the exact
    sum lies on the side of ``err``, and that neighbour is taken.
    """
    prod = np.asarray(a, np.float32).astype(np.float64) * np.float64(np.float32(b))   # exact
    c64 = np.float64(np.float32(c))
    s = prod + c64
    bv = s - prod
    err = (prod - (s - bv)) + (c64 - bv)
    r = s.astype(np.float32)
    gap = s - r.astype(np.float64)
    neighbour = np.nextafter(r, np.where(gap > 0, np.float32(np.inf), np.float32(-np.inf)))
    halfway = (gap != 0) & (2 * np.abs(gap) == np.abs(neighbour.astype(np.float64) - r))
    beyond = halfway & (np.sign(err) == np.sign(gap))            # err != 0, past the midpoint
    return np.where(beyond, neighbour, r).astype(np.float32)


# Every way released lc0 engines decode LINEAR16, by name.
LINEAR16_DECODINGS = {"master": linear16_master, "v0.32.1": linear16_v0321, "fma": linear16_fma}


def decode(encoding: int, code_array: np.ndarray, min_bits: int = 0, max_bits: int = 0,
           decoding: str = "master") -> np.ndarray:
    """Decode codes to float32 exactly as the engine does (LINEAR16: as ``decoding``)."""
    if encoding == LINEAR16:
        return LINEAR16_DECODINGS[decoding](code_array, f32(min_bits), f32(max_bits))
    if encoding == FLOAT16:
        return code_array.astype(np.uint16).view(np.float16).astype(np.float32)
    if encoding == BFLOAT16:
        return (code_array.astype(np.uint32) << 16).view(np.float32)
    if encoding == FLOAT32:
        return code_array.astype(np.uint32).view(np.float32).copy()
    raise NetFormatError(f"cannot decode layer encoding {encoding}")


def encode_linear16(values: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """The trainer's LINEAR16 writer: round((x-min)/(max-min)*65535)."""
    if hi == lo:
        return np.zeros(len(values), np.uint16)
    scaled = (values.astype(np.float64) - lo) / (float(hi) - float(lo)) * 65535.0
    return np.clip(np.rint(scaled), 0, 65535).astype(np.uint16)


def encode_float(encoding: int, values: np.ndarray) -> np.ndarray:
    """Round float values to a float encoding's codes (round to nearest even)."""
    with np.errstate(over="ignore", invalid="ignore"):   # out-of-range values become inf
        if encoding == FLOAT16:
            return values.astype(np.float16).view(np.uint16)
        if encoding == FLOAT32:
            return values.astype(np.float32).view(np.uint32)
    if encoding == BFLOAT16:
        with np.errstate(over="ignore", invalid="ignore"):
            bits = values.astype(np.float32).view(np.uint32).astype(np.uint64)
        rounded = bits + 0x7FFF + ((bits >> 16) & 1)
        nan = np.isnan(values)
        out = (rounded >> 16).astype(np.uint16)
        out[nan] = (bits[nan] >> 16).astype(np.uint16) | 0x40
        return out
    raise NetFormatError(f"not a float encoding: {encoding}")


def ordered_image(encoding: int, code_array: np.ndarray) -> np.ndarray:
    """A bijective, order-preserving map from float bit patterns to int64.

    Positive patterns map to themselves, negative ones below zero (-0.0 to -1),
    so numerically close floats get close integers and differences are small.
    """
    width = 4 if encoding == FLOAT32 else 2
    sign = _SIGN[width]
    bits = code_array.astype(np.int64)
    negative = (bits & sign) != 0
    return np.where(negative, -(bits & (sign - 1)) - 1, bits)


def from_ordered_image(encoding: int, image: np.ndarray) -> np.ndarray:
    width = 4 if encoding == FLOAT32 else 2
    sign = _SIGN[width]
    bits = np.where(image < 0, (-(image + 1)) | sign, image)
    return bits.astype(np.uint32 if width == 4 else np.uint16)


def worst_difference(encoding: int, codes_a: np.ndarray, bounds_a: tuple[int, int],
                     codes_b: np.ndarray, bounds_b: tuple[int, int]) -> np.ndarray:
    """Per element, the largest |a - b| (float64) over every engine decoding.

    ``bounds_*`` are the (min, max) float32 bit patterns of LINEAR16 layers
    (ignored for the others). Elements that decode to the same value,
    NaN included, differ by 0; a NaN against a number, or an infinity against
    a finite value, differs by inf. This is the statement of the measure;
    :mod:`weight_error` computes it in one pass per layer.
    """
    names = LINEAR16_DECODINGS if encoding == LINEAR16 else ("master",)
    worst = np.zeros(len(codes_a), np.float64)
    for name in names:
        a = decode(encoding, codes_a, *bounds_a, decoding=name).astype(np.float64)
        b = decode(encoding, codes_b, *bounds_b, decoding=name).astype(np.float64)
        with np.errstate(invalid="ignore"):
            d = np.where((a == b) | (np.isnan(a) & np.isnan(b)), 0.0, np.abs(a - b))
        np.maximum(worst, np.nan_to_num(d, nan=np.inf, posinf=np.inf), out=worst)
    return worst
