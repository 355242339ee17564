"""Making and applying patches; the implementation lives in ``lc0weights.patching``.

This module keeps the names callers have always imported from here.
"""
from .patching import (DEFAULT_CODECS, HISTORY_CODECS, MAX_RESULT_SIZE, SKELETON_CAP, UNDECODABLE, WRITER,
                       LayerContext, PatchInfo, apply_patch, apply_patch_to_file, decode_skeleton,
                       encode_skeleton, infer_shape, make_patch, max_error, paired_layer, preload_decoders,
                       read_patch_info, skeleton_layers, skeleton_stream)

_Context, _pair = LayerContext, paired_layer

__all__ = ["DEFAULT_CODECS", "HISTORY_CODECS", "MAX_RESULT_SIZE", "SKELETON_CAP", "UNDECODABLE", "WRITER",
           "LayerContext", "PatchInfo", "apply_patch", "apply_patch_to_file", "decode_skeleton",
           "encode_skeleton", "infer_shape", "make_patch", "max_error", "paired_layer", "preload_decoders",
           "read_patch_info", "skeleton_layers", "skeleton_stream"]
