"""Entropy codecs for residuals, registered by id.

``get_codec("varint-brotli")`` returns a codec; ``register`` adds one. See
:mod:`lc0weights.codecs.base` for the contract every codec follows.
"""
from __future__ import annotations

from ..errors import UnknownCodecError
from .base import Codec, LayerInfo

_REGISTRY: dict[str, type[Codec]] = {}


def register(cls: type[Codec]) -> type[Codec]:
    """Add a codec class to the registry (usable as a decorator)."""
    if not cls.codec_id:
        raise ValueError("a codec needs a codec_id")
    _REGISTRY[cls.codec_id] = cls
    return cls


def get_codec(codec_id: str, config: dict | None = None) -> Codec:
    """A codec instance by id, configured from plain data."""
    try:
        cls = _REGISTRY[codec_id]
    except KeyError:
        raise UnknownCodecError(codec_id) from None
    return cls.from_config(dict(config or {}, id=codec_id))


def codec_ids() -> list[str]:
    return sorted(_REGISTRY)


from . import varint_brotli, stored  # noqa: E402,F401  (registration)

try:  # the context-model codec, when present in this build
    from . import context_model, temporal, rans  # noqa: F401
except ImportError:  # pragma: no cover
    pass

__all__ = ["Codec", "LayerInfo", "register", "get_codec", "codec_ids"]
