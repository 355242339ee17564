"""Making and applying patches: one net into another, a layer at a time.

``make_patch(base, target)`` codes the target against the base: the target's
bytes without layer payloads (the *skeleton*, ``skeleton``) coded against the
base's skeleton, then every layer's residuals with the smallest codec
(``layers`` pairs each layer with its base layer, ``encode`` codes them).
``apply_patch`` (``decode``) checks every size the patch declares (``plan``), runs the
same steps backwards and checks the rebuilt bytes against the id the patch
promises. Both work a chunk at a time (``chunks``: a layer, or a run of a
large layer's elements coded as its own stream), in parallel across chunks
(``parallel``), holding at most the nets and a few chunks' working arrays.
``measure`` gives the largest weight error of a lossy result.
"""
from .chunks import CHUNK_SIZE
from .decode import (PatchInfo, apply_patch, apply_patch_to_file, check_patch, preload_decoders, read_patch_info,
                     rebuilt_pieces)
from .encode import DEFAULT_CODECS, HISTORY_CODECS, TIERS, make_patch
from .layers import LayerContext, infer_shape, paired_layer
from .limits import MAX_RESULT_SIZE, SKELETON_CAP, UNDECODABLE, WRITER
from .measure import max_error, max_layer_error
from .plan import skeleton_layers
from .skeleton import decode_skeleton, encode_skeleton, skeleton_stream

__all__ = ["CHUNK_SIZE", "PatchInfo", "apply_patch", "apply_patch_to_file", "check_patch", "preload_decoders",
           "read_patch_info", "rebuilt_pieces", "skeleton_layers",
           "DEFAULT_CODECS", "HISTORY_CODECS", "TIERS", "make_patch", "LayerContext", "infer_shape", "paired_layer",
           "MAX_RESULT_SIZE", "SKELETON_CAP", "UNDECODABLE", "WRITER", "max_error", "max_layer_error",
           "decode_skeleton", "encode_skeleton", "skeleton_stream"]
