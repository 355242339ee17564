"""The codec contract: every entropy codec of lc0weights has this shape.

A codec turns one layer's residuals (a 1-D ``int64`` array) into bytes and
back; a large layer is cut into chunks (:mod:`lc0weights.patching.chunks`),
each of which a codec codes as a layer of its own, so any codec is chunked
without knowing it. It is configured from plain, JSON-safe data and registered by its
``codec_id``, which the patch records per layer, so a patch names exactly
what decodes each of its sections.

- ``codec_id``: a short stable string, never reused for another format.
- ``encode(values, info) -> bytes``: ``values`` is int64; ``info`` is the
  :class:`LayerInfo` of the layer (context a model may use; a codec that
  needs none ignores it).
- ``decode(data, count, info) -> ndarray``: the inverse, exactly ``count``
  int64 values, given the same ``info``. Corrupt data raises
  :class:`~lc0weights.errors.PatchFormatError`, never anything else.
- ``context``: which of the layer's weights ``LayerInfo`` must carry for it:
  "base" (the base weights), "history" (the base's last step); a decoder
  skips decoding what its codec does not read.
- ``get_config() -> dict`` and ``from_config(dict)``: parameters as plain data.
  ``from_config`` accepts exactly the constructor's keyword parameters, each a
  JSON scalar; anything else is a :class:`~lc0weights.errors.PatchFormatError`
  (a patch names its codec's parameters, so one this build does not know may
  change the stream). A codec whose extra parameters only tune its encoder sets
  ``ignores_unknown_config = True`` and then drops unknown keys instead.

Encoders and decoders may be called from several threads at once on different
layers and chunks.
"""
from __future__ import annotations

import inspect
from dataclasses import dataclass, field

import numpy as np

from ..errors import PatchFormatError

_SCALARS = (bool, int, float, str, type(None))


@dataclass
class LayerInfo:
    """What a codec may know about the layer whose residuals it codes.

    Encoder and decoder build the same ``LayerInfo`` from the base net, the
    optional history net and the patch header, so any of it can be a context.
    """

    path: str = ""
    role: str = "other"          # conv, bn, dense, bias, norm, gate, other
    residual: int = 0            # patch_pb2.Residual value
    encoding: int = 1
    count: int = 0               # elements of the layer (escapes come after them)
    dims: tuple = ()             # dims from the file, often empty
    shape: tuple = ()            # inferred (out, in, h, w) / (out, in) / (n,)
    quant_width: int = 1
    tolerance: float = 0.0
    base: np.ndarray | None = None     # base weights, float32, None when intra
    history: np.ndarray | None = None  # base minus the base's predecessor, float32
    scale: float = 0.0           # value of one residual unit (LINEAR16 step, 2T, ...)
    extra: dict = field(default_factory=dict)


class Codec:
    """Base class; subclasses set ``codec_id`` and implement encode/decode."""

    codec_id = ""
    ignores_unknown_config = False
    context: frozenset = frozenset({"base", "history"})     # what a model may read; none: frozenset()

    def encode(self, values: np.ndarray, info: LayerInfo) -> bytes:
        raise NotImplementedError

    def decode(self, data: bytes, count: int, info: LayerInfo) -> np.ndarray:
        raise NotImplementedError

    def get_config(self) -> dict:
        return {"id": self.codec_id}

    @classmethod
    def config_parameters(cls) -> frozenset:
        """The keyword parameters ``from_config`` passes to the constructor."""
        if cls.__init__ is object.__init__:
            return frozenset()
        kinds = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
        return frozenset(name for name, p in inspect.signature(cls.__init__).parameters.items()
                         if name != "self" and p.kind in kinds)

    @classmethod
    def from_config(cls, config: dict) -> "Codec":
        params = {k: v for k, v in config.items() if k != "id"}
        known = cls.config_parameters()
        unknown = sorted(str(k) for k in params if k not in known)
        if unknown and not cls.ignores_unknown_config:
            raise PatchFormatError(f"codec {cls.codec_id!r} has no parameter "
                                   f"{', '.join(map(repr, unknown))[:200]} in this build")
        params = {k: v for k, v in params.items() if k in known}
        for key, value in params.items():
            if not isinstance(value, _SCALARS):
                raise PatchFormatError(f"codec {cls.codec_id!r} parameter {key!r} is not a plain value")
        try:
            return cls(**params)
        except (TypeError, ValueError) as e:
            raise PatchFormatError(f"codec {cls.codec_id!r}: bad configuration ({e})") from None
