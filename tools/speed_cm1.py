"""Speed and size of the cm1 codec, single thread, JIT warm.

    python tools/speed_cm1.py [--sizes] [--temporal] [--repeat N]

Speed: whole-net ``make_patch(..., codec="cm1", workers=1, verify=False)`` and
``apply_patch(..., workers=1)`` on (a) one consecutive pair of the shared run
maia-distill and (b) a synthetic pair (6 blocks x 256 filters, seed 3), in
million weights per second (best of N). With ``--sizes``: total bytes of the
12 consecutive lossless pairs of the shared run (no history), and of the
same pairs at tolerance 2^-14 and 2^-10. With ``--temporal``: on the averaged
run maia-swa (pair 4->5, history 3), cm1 without history, cm1 with the history
as context and cm2 (signed prediction), encode and decode speed and size.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from lc0weights import Net, apply_patch, make_patch  # noqa: E402
from lc0weights.synthetic import generate  # noqa: E402

SHARED = Path(os.environ.get("LC0WEIGHTS_SHARED", ROOT.parent / "shared"))
RUN = SHARED / "data" / "runs" / "maia-distill"
SWA = SHARED / "data" / "runs" / "maia-swa"


def weights(net: Net) -> int:
    return sum(layer.count for layer in net.layers if layer.codable)


def best_time(fn, repeat: int) -> float:
    best = float("inf")
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return best


def speed(name: str, base: Net, target: Net, repeat: int, codec: str = "cm1", history: Net | None = None) -> None:
    patch = make_patch(base, target, codec=codec, history=history, workers=1, verify=False)    # warms the JIT
    assert bytes(apply_patch(base, patch, history=history, workers=1)) == target.raw
    n = weights(target)
    enc = best_time(lambda: make_patch(base, target, codec=codec, history=history, workers=1, verify=False), repeat)
    dec = best_time(lambda: apply_patch(base, patch, history=history, workers=1), repeat)
    print(f"{name:<22} {n:>10,} weights  patch {len(patch):>10,} B  "
          f"encode {n / enc / 1e6:6.2f} M/s  decode {n / dec / 1e6:6.2f} M/s")


def sizes(nets: list[Net]) -> None:
    for label, tol in (("lossless", None), ("tolerance 2^-14", 2.0 ** -14),
                       ("tolerance 2^-10", 2.0 ** -10)):
        total = sum(len(make_patch(a, b, tol, codec="cm1", verify=False))
                    for a, b in zip(nets, nets[1:]))
        print(f"maia-distill 12 pairs, {label:<16} {total:>12,} B")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", action="store_true", help="also total patch sizes of the run")
    parser.add_argument("--temporal", action="store_true", help="cm1 and cm2 with history on maia-swa")
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    if args.temporal:
        swa = [Net.load(p) for p in sorted(SWA.glob("step-*.pb.gz"))[3:6]]
        if len(swa) < 3:
            sys.exit(f"shared run not found under {SWA}")
        speed("maia-swa 4->5 cm1", swa[1], swa[2], args.repeat)
        speed("  cm1 + history", swa[1], swa[2], args.repeat, history=swa[0])
        speed("  cm2 + history", swa[1], swa[2], args.repeat, codec="cm2", history=swa[0])
        return
    paths = sorted(RUN.glob("step-*.pb.gz"))
    if len(paths) < 2:
        sys.exit(f"shared run not found under {RUN}")
    nets = [Net.load(p) for p in paths]
    speed("maia-distill 5->6", nets[5], nets[6], args.repeat)
    synth = [Net(raw) for _, raw in generate(count=2, blocks=6, filters=256, seed=3)]
    speed("synthetic 6x256", synth[0], synth[1], args.repeat)
    if args.sizes:
        sizes(nets)


if __name__ == "__main__":
    main()
