#!/usr/bin/env python3
"""Write a synthetic training run (successive lc0 nets) into a folder.

    python tools/make_run.py OUT_DIR [--count N] [--blocks B] [--filters F] [--seed S]

The nets are made here (see lc0weights/synthetic.py), so they can be shipped,
used in tests, demos and benchmarks. 6 blocks x 64 filters has the layout and
size of the small real nets (1.7 MB raw); 20 x 384 gives ~113 MB raw nets.
"""
import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from lc0weights.synthetic import ENCODINGS, write_run  # noqa: E402


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out_dir", type=Path)
    ap.add_argument("--count", type=int, default=8, help="number of checkpoints (default 8)")
    ap.add_argument("--blocks", type=int, default=6, help="residual blocks (default 6)")
    ap.add_argument("--filters", type=int, default=64, help="filters per conv (default 64)")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--encoding", choices=sorted(ENCODINGS), default="LINEAR16")
    ap.add_argument("--every", type=int, default=100, help="training steps between checkpoints")
    ap.add_argument("--lr-drop-at", type=int, default=-1,
                    help="training step of the 10x learning-rate drop (default: 3/4 of the run; "
                         "a negative value other than -1 disables it)")
    args = ap.parse_args(argv)
    if args.count < 1 or args.blocks < 0 or args.filters < 8:
        ap.error("need --count >= 1, --blocks >= 0, --filters >= 8")
    drop = args.lr_drop_at if args.lr_drop_at >= -1 else None
    start = time.perf_counter()
    paths = write_run(args.out_dir, args.count, args.blocks, args.filters, args.seed, args.encoding,
                      every=args.every, lr_drop_at=drop)
    size = sum(p.stat().st_size for p in paths)
    print(f"wrote {len(paths)} nets ({size / 1e6:.1f} MB gzipped) to {args.out_dir} "
          f"in {time.perf_counter() - start:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
