"""Committed golden patches pin the format: they decode to the recorded ids, forever.

The chains start with an intra patch, so every net is rebuilt from the
patches alone. Re-encoding the lossless steps must give the committed bytes
(the encoder is deterministic), with the JIT on and off.
"""
import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from lc0weights import Net, apply_patch, make_patch, read_patch_info

GOLDEN = Path(__file__).resolve().parent / "golden" / "patches"
MANIFEST = json.loads((GOLDEN / "manifest.json").read_text())
ROOT = Path(__file__).resolve().parents[1]


def rebuild_all() -> dict[str, Net]:
    nets: dict[str, Net] = {}
    for entry in MANIFEST:
        patch = (GOLDEN / entry["file"]).read_bytes()
        assert hashlib.sha256(patch).hexdigest() == entry["sha256"]
        base = nets[entry["base"]] if entry["base"] else None
        history = nets[entry["history"]] if entry["history"] else None
        rebuilt = Net(apply_patch(base, patch, history=history))
        assert rebuilt.id == entry["result"], entry["file"]
        nets[rebuilt.id] = rebuilt
    return nets


def test_golden_patches_decode_to_recorded_ids():
    nets = rebuild_all()
    assert set(nets) == {e["result"] for e in MANIFEST}
    codecs = {l["codec"] for e in MANIFEST for l in read_patch_info((GOLDEN / e["file"]).read_bytes()).layers}
    assert {"cm1", "varint-brotli"} <= codecs


@pytest.mark.parametrize("entry", [e for e in MANIFEST if e["tolerance"] is None],
                         ids=lambda e: e["file"])
def test_reencoding_gives_the_committed_bytes(entry):
    nets = rebuild_all()
    base = nets[entry["base"]] if entry["base"] else None
    history = nets[entry["history"]] if entry["history"] else None
    patch = make_patch(base, nets[entry["target"]], codec=entry["codec"], history=history, workers=1)
    assert patch == (GOLDEN / entry["file"]).read_bytes()


def test_encoder_without_jit_gives_the_same_bytes():
    script = (
        "import sys; sys.path.insert(0, %r)\n"
        "from test_golden_patches import rebuild_all, MANIFEST, GOLDEN\n"
        "from lc0weights import make_patch\n"
        "e = next(e for e in MANIFEST if e['file'] == 'linear16-cm1-history.lc0p')\n"
        "nets = rebuild_all()\n"
        "p = make_patch(nets[e['base']], nets[e['target']], codec='cm1', history=nets[e['history']], workers=1)\n"
        "sys.exit(0 if p == (GOLDEN / e['file']).read_bytes() else 3)\n" % str(ROOT / "tests"))
    env = dict(os.environ, NUMBA_DISABLE_JIT="1")
    proc = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
