"""Layer encodings: bytes to float32 exactly as the engine decodes, and back.

Encodings are the ``Weights.Layer.encoding`` numbers. An absent field means
LINEAR16. LINEAR16 is decoded in float32 arithmetic, the way the engine does:
``theta = u16 / 65535.0f; value = min*(1-theta) + max*theta``.
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


def decode(encoding: int, code_array: np.ndarray, min_bits: int = 0, max_bits: int = 0) -> np.ndarray:
    """Decode codes to float32 exactly as the engine does."""
    if encoding == LINEAR16:
        lo, hi = f32(min_bits), f32(max_bits)
        theta = code_array.astype(np.float32) / np.float32(65535.0)
        return lo * (np.float32(1.0) - theta) + hi * theta
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
