"""What a patch may declare, and the writer's name: checked before memory is committed."""
from __future__ import annotations





WRITER = "lc0weights 0.1"
MAX_RESULT_SIZE = 16 << 30
# Plausibility bounds on what a patch declares, checked before memory is committed
# (docs/FORMAT.md, "Limits"). Real skeletons take about 20 bytes and 6 fields per
# layer (1,960 bytes for the 105 layers of a 1.7 MB maia net): a megabyte is 500
# times that. A base with a larger skeleton (an ONNX net is all skeleton) allows
# up to twice its own.
SKELETON_CAP = 1 << 20
MAX_SKELETON_FIELDS = 1 << 20
# A layer coded against no base layer decodes to at most this many values per
# stored byte (plus a small allowance for the whole patch). Real intra layers
# reach 13 (a 64-element layer of ones in 5 bytes); the writer never goes past it.
INTRA_VALUES_PER_BYTE = 64
INTRA_ALLOWANCE = 1 << 20
MAX_CODEC_CONFIG = 4096
UNDECODABLE = "patch could not be decoded"
