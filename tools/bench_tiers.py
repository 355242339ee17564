"""Bytes and speed of the two coding tiers, cm and fast, on the shared runs and a BT4-size pair.

    .venv/bin/python tools/bench_tiers.py [--bt4-nets DIR] [--scale 1.0] [--out docs/BENCHMARKS.md]

For each run, patches between successive nets are made in both tiers
(``make_patch(tier=...)``), once without and once with the history net, and
applied; the section reports total bytes, encode and decode CPU seconds and
the decoding rate in weights per CPU second, all on one worker thread (CPU
time of this process, so a busy machine changes the figures little). The
BT4-size nets come from tools/lc0_nets.py (generated into a temporary folder
unless ``--bt4-nets`` names a folder holding bt4-000..002.pb.gz).
"""
from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tools"))

import harness  # noqa: E402
import lc0_nets  # noqa: E402
from lc0weights import Net, apply_patch, make_patch  # noqa: E402

DATA = ROOT.parent / "shared" / "data" / "runs"
TIERS = ("cm", "fast")


def cpu(fn, *args, **kwargs):
    start = time.process_time()
    result = fn(*args, **kwargs)
    return result, time.process_time() - start


def measure(name: str, nets: list[Net], pairs: list[tuple[int, int]]) -> list[list]:
    """Rows (run, prediction, tier, bytes, vs cm, encode CPU, decode CPU, rate) over ``pairs``."""
    rows = []
    for history in (False, True):
        totals = {}
        for tier in TIERS:
            size = enc = dec = weights = 0
            for a, b in pairs:
                hist = nets[a - 1] if history and a > 0 else None
                patch, t_enc = cpu(make_patch, nets[a], nets[b], history=hist, tier=tier, workers=1,
                                   verify=False)
                rebuilt, t_dec = cpu(apply_patch, nets[a], patch, history=hist, workers=1)
                if rebuilt != nets[b].raw:
                    raise RuntimeError(f"{name}: the {tier} patch {a}->{b} did not rebuild the net")
                size, enc, dec = size + len(patch), enc + t_enc, dec + t_dec
                weights += sum(layer.count for layer in nets[b].layers if layer.codable)
                harness.log(f"{name} {'history' if history else 'plain'} {tier} {a}->{b}: "
                            f"{len(patch):,} bytes, {t_enc:.1f} s encode, {t_dec:.1f} s decode")
            totals[tier] = size
            rows.append([name, "with history" if history else "none", tier, f"{size:,}",
                         f"{size / totals['cm']:.3f}", f"{enc:.2f} s", f"{dec:.2f} s",
                         f"{weights / dec / 1e6:.1f} M"])
    return rows


def shared_run(run: str, steps) -> tuple[list[Net], list[tuple[int, int]]]:
    paths = sorted((DATA / run).glob("step-*.pb.gz"))
    if not paths:
        raise SystemExit(f"no nets under {DATA / run}")
    nets = [Net.load(paths[s]) for s in steps]
    return nets, [(k, k + 1) for k in range(1, len(nets) - 1)]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bt4-nets", type=Path, help="folder holding bt4-000..002.pb.gz (default: generate)")
    parser.add_argument("--scale", type=float, default=1.0, help="BT4 size as a fraction of lc0's (default 1)")
    parser.add_argument("--out", type=Path, help="write the section into this Markdown file")
    args = parser.parse_args(argv)
    started, machine = time.perf_counter(), harness.machine_line()
    rows = []
    for run in ("maia-swa", "maia-distill"):
        nets, pairs = shared_run(run, range(0, 13))
        rows += measure(run, nets, pairs)
    work = None
    folder = args.bt4_nets
    if folder is None:
        work = folder = Path(tempfile.mkdtemp(prefix="bench-tiers-"))
        lc0_nets.write_run(folder, "bt4", count=3, scale=args.scale)
    try:
        nets = [Net.load(folder / f"bt4-{k:03d}.pb.gz") for k in range(3)]
        rows += measure(f"BT4-size ({nets[0].raw.__len__() / 1e6:,.0f} MB raw)", nets, [(1, 2)])
    finally:
        if work is not None:
            shutil.rmtree(work, ignore_errors=True)
    argv_shown = sys.argv[1:] if argv is None else argv
    section = "\n".join([
        "## Coding tiers",
        "",
        f"`{harness.command_line('tools/bench_tiers.py', argv_shown)}` "
        f"({(time.perf_counter() - started) / 60:.1f} min; {machine}).",
        "",
        "Patches between successive nets in each tier, one worker thread, CPU seconds of the making "
        "(`make_patch`, without its check) and of the rebuilding (`apply_patch`); every patch rebuilt its "
        "net byte for byte. maia runs: the 11 patches of steps 100 to 1200 (with history: the 11 patches "
        "whose base has a predecessor); BT4-size: one patch between two SWA-like nets of tools/lc0_nets.py. "
        "The fast tier codes chunks of over 16,384 values with `rans1` (docs/FORMAT.md, \"Coding tiers\"); "
        "maia nets have few such layers, so there the tiers differ little in bytes and speed.",
        "",
        harness.md_table(["run", "history", "tier", "bytes", "vs cm", "encode CPU", "decode CPU",
                          "weights / CPU s (decode)"], rows, "lllrrrrr"),
        ""])
    print(section)
    if args.out:
        harness.write_section(args.out, section)
    return 0


if __name__ == "__main__":
    sys.exit(main())
