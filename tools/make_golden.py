"""Write the golden patches that pin the patch format (tests/golden/patches/).

    python tools/make_golden.py [CHAIN ...]

Each entry is a small synthetic net coded with a fixed codec. The first patch
of a chain is intra, so no net needs committing: a reader rebuilds every net
from the patches alone and must get the recorded ids on every platform.
Committed patches are never rewritten: the tool writes the chains named (all
by default) whose files do not exist yet and keeps the manifest's other
entries, so a new codec adds its chain and old patches stay as committed.
"""
from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from lc0weights import Net, apply_patch, make_patch  # noqa: E402
from lc0weights.durable_files import atomic_write  # noqa: E402
from lc0weights import encodings as enc  # noqa: E402
from lc0weights.proto import lc0net_pb2 as pb  # noqa: E402
import numpy as np  # noqa: E402

OUT = ROOT / "tests" / "golden" / "patches"

# (chain name, encoding, codec, persistence of the steps); each chain: intra 0,
# lossless 0->1, history 1->2, lossy 2->3 (cm2 adds lossy 3->4 with history)
CHAINS = [("linear16-cm1", "LINEAR16", "cm1", 0.0), ("linear16-varint", "LINEAR16", "varint-brotli", 0.0),
          ("float16-cm1", "FLOAT16", "cm1", 0.0), ("linear16-cm2", "LINEAR16", "cm2", 0.8),
          ("linear16-rans1", "LINEAR16", "rans1", 0.8)]


def tiny_run(encoding: str, count: int = 4, seed: int = 11, persistence: float = 0.0) -> list[Net]:
    """A few small layers of real shapes, moved by small random steps; with
    ``persistence`` each step repeats that fraction of the previous one (an
    averaged run)."""
    code = {"LINEAR16": enc.LINEAR16, "FLOAT16": enc.FLOAT16}[encoding]
    rng = np.random.default_rng(seed)
    shapes = {"input.weights": 8 * 12 * 9, "input.bn_means": 8, "input.bn_stddivs": 8,
              "residual.conv1.weights": 8 * 8 * 9, "residual.conv1.bn_betas": 8,
              "residual.se.w1": 8 * 4, "residual.se.b1": 4, "ip1_val_w": 32 * 16, "ip1_val_b": 16}
    values = {k: rng.normal(0, 0.2, n).astype(np.float32) for k, n in shapes.items()}
    nets, moves = [], {}
    for step in range(count):
        net = pb.Net(magic=0x1C0, license="golden test net")
        net.training_params.training_steps = 100 * step
        net.format.weights_encoding = 1
        for key, v in values.items():
            msg = net.weights
            parts = key.split(".")
            for part in parts[:-1]:
                msg = getattr(msg, part)
                if part == "residual":
                    msg = msg[0] if len(msg) else msg.add()
            layer = getattr(msg, parts[-1])
            if code == enc.LINEAR16:
                layer.min_val, layer.max_val = float(v.min()), float(v.max())
                layer.params = enc.encode_linear16(v, v.min(), v.max()).tobytes()
            else:
                layer.encoding = code
                layer.params = enc.encode_float(code, v).tobytes()
        nets.append(Net(net.SerializeToString()))
        fresh = {k: rng.normal(0, 2e-3, len(v)).astype(np.float32) for k, v in values.items()}
        moves = {k: persistence * moves[k] + fresh[k] for k in values} if step else fresh
        values = {k: v + moves[k] for k, v in values.items()}
    return nets


def main(argv=None) -> int:
    wanted = set((argv if argv is not None else sys.argv[1:]) or [c[0] for c in CHAINS])
    OUT.mkdir(parents=True, exist_ok=True)
    old = json.loads((OUT / "manifest.json").read_text()) if (OUT / "manifest.json").exists() else []
    manifest = list(old)
    for name, encoding, codec, persistence in CHAINS:
        if name not in wanted or any(m["file"].startswith(name + "-") for m in old):
            continue
        nets = tiny_run(encoding, count=5 if persistence else 4, persistence=persistence)
        steps = [("intra", None, nets[0], {}), ("lossless", nets[0], nets[1], {}),
                 ("history", nets[1], nets[2], {"history": nets[0]}),
                 ("tolerance", nets[2], nets[3], {"tolerance": 2 ** -12})]
        if persistence:
            steps.append(("tolerance-history", nets[3], nets[4], {"tolerance": 2 ** -12, "history": nets[2]}))
        held = {}
        for kind, base, target, kw in steps:
            base = held.get(base.id, base) if base is not None else None
            if "history" in kw:
                kw = dict(kw, history=held.get(kw["history"].id, kw["history"]))
            patch = make_patch(base, target, codec=codec, workers=1, **kw)
            result = hashlib.sha256(apply_patch(base, patch, history=kw.get("history"))).hexdigest()
            held[target.id] = Net(apply_patch(base, patch, history=kw.get("history")))
            file = f"{name}-{kind}.lc0p"
            if (OUT / file).exists():
                raise SystemExit(f"{file} exists: committed golden patches are never rewritten")
            atomic_write(OUT / file, patch)
            manifest.append({"file": file, "base": base.id if base else None,
                             "history": kw["history"].id if "history" in kw else None,
                             "codec": codec, "target": target.id, "result": result,
                             "tolerance": kw.get("tolerance"), "sha256": hashlib.sha256(patch).hexdigest()})
    atomic_write(OUT / "manifest.json", (json.dumps(manifest, indent=1) + "\n").encode())
    new = manifest[len(old):]
    print(f"wrote {len(new)} golden patches, {sum((OUT / m['file']).stat().st_size for m in new):,} bytes")
    return 0


if __name__ == "__main__":
    sys.exit(main())
