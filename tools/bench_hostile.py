"""Memory and time of hostile patches, beside what real patches cost.

Every case runs in a forked child; its peak resident growth (over the parent
at the fork) and wall time are reported:

- real: applying real patches (and, with ``--big``, a synthetic net of about
  100 MB), as a multiple of the larger of the base and the target;
- hostile: the hand-built patches of issue 10 (declared sizes, bombs, codec
  configurations), each refused before memory is committed;
- fuzz: ``--fuzz N`` structure-aware mutations of real patches, one child
  per case: the outcome counts and the worst time and memory of any case.

    .venv/bin/python tools/bench_hostile.py [--fuzz 2000] [--big] [--json OUT]
"""
from __future__ import annotations

import argparse
import json
import sys
from collections import Counter
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))          # the hostile-patch builders live with the tests

import hostile                                    # noqa: E402
from conftest import NETS, run_paths              # noqa: E402
from lc0weights import Net, apply_patch, make_patch, read_patch_info  # noqa: E402
from lc0weights.patch import SKELETON_CAP, UNDECODABLE  # noqa: E402

MiB = 1 << 20


def row(name, patch_bytes, result, scale=None):
    kind, message, _ = result["outcome"]
    out = {"case": name, "patch_bytes": patch_bytes, "outcome": kind,
           "message": message if isinstance(message, str) else "", "seconds": round(result["seconds"], 3),
           "peak_growth_mib": round(result["peak_growth"] / MiB, 1)}
    if scale:
        out["growth_per_net_byte"] = round(result["peak_growth"] / scale, 2)
    return out


def real_cases(big: bool):
    paths = run_paths()
    base, target = Net.load(paths[0]), Net.load(paths[1])
    pairs = [("maia delta lossless", base, target, None), ("maia delta 2^-10", base, target, 2 ** -10),
             ("meangirl intra", None, Net.load(NETS / "meangirl-8.pb.gz"), None)]
    if big:
        from lc0weights.synthetic import generate
        nets = [Net(raw) for _, raw in generate(count=2, blocks=20, filters=384, seed=9)]
        pairs.append(("synthetic 113 MB delta", nets[0], nets[1], None))
    rows = []
    for name, b, t, tolerance in pairs:
        patch = make_patch(b, t, tolerance, verify=False)
        apply_patch(b, patch)                     # compiled kernels and warm caches before forking
        scale = max(len(t.raw), len(b.raw) if b is not None else 0)
        for workers in (1, 2, 8):
            result = hostile.run_measured(lambda: len(apply_patch(b, patch, workers=workers)))
            rows.append(row(f"{name}, {workers} workers", len(patch), result, scale))
    return rows, (base, target)


def hostile_cases(base, target):
    patch = make_patch(base, target, verify=False)
    varint = make_patch(base, target, codec="varint-brotli", verify=False)

    def config(p, text):
        def change(h):
            h.layers[0].section.codec_config = text
        return hostile.with_header(p, change)
    header, sections = hostile.split(patch)
    for _ in range(1 << 20):
        header.layers.add()
    cases = [
        ("result_size 2 GiB", base, hostile.with_header(patch, lambda h: setattr(h, "result_size", 2 << 30))),
        ("result_size 16 GiB", base, hostile.with_header(patch, lambda h: setattr(h, "result_size", 16 << 30))),
        ("skeleton_size 2^63", base, hostile.with_header(patch, lambda h: setattr(h, "skeleton_size", 1 << 63))),
        ("128 MB layer of zero residuals", None, hostile.zero_layer_patch(64 << 20)),
        ("skeleton bomb, 1 GiB of tiny fields", None, hostile.skeleton_bomb_patch(1 << 30)),
        ("skeleton at the cap, tiny fields", None, hostile.skeleton_bomb_patch(SKELETON_CAP)),
        ("header of a million empty layers", base, hostile.reseal(header, sections + [b""] * (1 << 20))),
        ("codec config with an unknown key", base, config(varint, b'{"quality": 9, "window": 22}')),
        ("codec config nested 2000 deep", base, config(varint, b"[" * 2000 + b"]" * 2000)),
        ("cm1 config with a key", base, config(patch, b'{"order": 2}')),
    ]
    rows = []
    for name, b, p in cases:
        rows.append(row(f"apply: {name}", len(p), hostile.run_measured(apply_patch, b, p)))
        rows.append(row(f"inspect: {name}", len(p), hostile.run_measured(read_patch_info, p, b)))
    bomb = gzip_bomb(1 << 30)
    rows.append(row("Net.from_bytes: 1 GiB gzip bomb, max_size 64 MiB", len(bomb),
                    hostile.run_measured(lambda: Net.from_bytes(bomb, "bomb", 64 * MiB))))
    return rows


def gzip_bomb(size: int) -> bytes:
    import zlib
    z, out, block = zlib.compressobj(9, zlib.DEFLATED, 16 + zlib.MAX_WBITS), [], bytes(MiB)
    for _ in range(size // MiB):
        out.append(z.compress(block))
    out.append(z.flush())
    return b"".join(out)


def fuzz_cases(count: int, seed: int = 99):
    base, target = Net.load(run_paths()[0]), Net.load(run_paths()[1])
    small = Net.load(NETS / "meangirl-8.pb.gz")
    pairs = [(base, make_patch(base, target, verify=False)),
             (base, make_patch(base, target, 2 ** -10, verify=False)),
             (None, make_patch(None, small, 2 ** -8, verify=False))]
    for b, p in pairs:
        apply_patch(b, p)
    rng = np.random.default_rng(seed)
    outcomes, escaped = Counter(), []
    worst_time, worst_memory = (0.0, ""), (0, "")
    for i in range(count):
        b, p = pairs[i % len(pairs)]
        mutated, what = hostile.mutate(p, rng)
        result = hostile.run_measured(lambda: apply_patch(b, mutated, workers=1))
        kind, message, library = result["outcome"]
        outcomes[kind] += 1
        if not library or (isinstance(message, str) and UNDECODABLE in message):
            escaped.append((i, what, kind, message))
        worst_time = max(worst_time, (result["seconds"], f"{what}: {kind}"))
        worst_memory = max(worst_memory, (result["peak_growth"], f"{what}: {kind}"))
    return {"cases": count, "outcomes": dict(outcomes), "escaped": escaped,
            "worst_seconds": [round(worst_time[0], 3), worst_time[1]],
            "worst_peak_growth_mib": [round(worst_memory[0] / MiB, 1), worst_memory[1]],
            "base_raw_mib": round(len(base.raw) / MiB, 2)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fuzz", type=int, default=0, metavar="N", help="mutated real patches to run")
    parser.add_argument("--big", action="store_true", help="also apply a synthetic 113 MB net")
    parser.add_argument("--json", metavar="OUT", help="write the results as JSON")
    args = parser.parse_args()
    real, (base, target) = real_cases(args.big)
    results = {"real": real, "hostile": hostile_cases(base, target)}
    print(f"{'case':<58} {'patch B':>9} {'outcome':<18} {'s':>6} {'MiB':>7} {'x net':>6}")
    for r in results["real"] + results["hostile"]:
        print(f"{r['case']:<58} {r['patch_bytes']:>9,} {r['outcome']:<18} {r['seconds']:>6.2f} "
              f"{r['peak_growth_mib']:>7.1f} {r.get('growth_per_net_byte', ''):>6}")
    if args.fuzz:
        results["fuzz"] = fuzz_cases(args.fuzz)
        print(json.dumps(results["fuzz"], indent=1))
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
