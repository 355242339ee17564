"""Wall time, CPU time and peak memory of one ``lc0weights-server publish`` at steady state.

Copies a prepared repository (``--prepare`` makes one from a run's first
nets: a lossy chain and exact nets, coded fast), publishes the next net into
the copy with the given options, and samples the whole process tree (the
publisher, the forkserver and its workers) every 0.1 s: the sum of RSS, and
the sum of PSS (shared pages, such as the mapped raw nets, counted once).

    PYTHONPATH=. python tools/bench_publish.py --prepare RUN_DIR REPO --count 17 --tolerance 2^-14
    PYTHONPATH=. python tools/bench_publish.py REPO NET [--code DIR] -- --tolerance 2^-14 --workers 2

``--code`` runs another checkout's publisher (say, the one before a change).
"""
from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PAGE = os.sysconf("SC_PAGE_SIZE")
TICK = os.sysconf("SC_CLK_TCK")


def prepare(run: Path, repo: Path, count: int, tolerance: str) -> None:
    """Publish the run's first ``count`` nets: predecessor patches and the lossy chain, stored codec."""
    sys.path.insert(0, str(ROOT))
    from lc0weights.settings import parse_tolerance
    from service.publish import publish
    from service.repository import Repository
    paths = sorted(run.glob("step-*.pb.gz"))[:count]
    publish(Repository.create(repo), paths, tolerance=parse_tolerance(tolerance), codec="stored",
            skips=(1,), history=False)


def _tree(root: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                with open(f"/proc/{name}/stat") as f:
                    ppid = int(f.read().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(name))
    found, todo = [], [root]
    while todo:
        pid = todo.pop()
        found.append(pid)
        todo += children.get(pid, [])
    return found


def _sample(pid: int) -> tuple[int, int, float]:
    """RSS, PSS (bytes) and CPU seconds of one process; zeros when it is gone."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        cpu = (int(fields[11]) + int(fields[12])) / TICK
        rss = int(fields[21]) * PAGE
        pss = 0
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                if line.startswith("Pss:"):
                    pss = int(line.split()[1]) * 1024
        return rss, pss, cpu
    except (OSError, IndexError, ValueError):
        return 0, 0, 0.0


def measure(repo: Path, net: Path, code: Path, options: list[str]) -> dict:
    with tempfile.TemporaryDirectory(dir=repo.parent) as tmp:
        copy = Path(tmp) / "repo"
        shutil.copytree(repo, copy, symlinks=True)
        env = {**os.environ, "PYTHONPATH": str(code)}
        cmd = [sys.executable, "-c", "import sys; from service.cli import main; sys.exit(main())",
               "publish", "--repo", str(copy), *options, str(net)]
        start = time.perf_counter()
        proc = subprocess.Popen(cmd, env=env, cwd=code, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        peak_rss = peak_pss = 0
        cpu: dict[int, float] = {}
        while proc.poll() is None:
            rss = pss = 0
            for pid in _tree(proc.pid):
                r, p, c = _sample(pid)
                rss, pss = rss + r, pss + p
                cpu[pid] = max(cpu.get(pid, 0.0), c)
            peak_rss, peak_pss = max(peak_rss, rss), max(peak_pss, pss)
            time.sleep(0.1)
        wall = time.perf_counter() - start
        output = proc.stdout.read().decode()
        if proc.returncode != 0:
            raise SystemExit(f"publish failed ({proc.returncode}):\n{output}")
        return {"wall_s": wall, "cpu_s": sum(cpu.values()), "peak_rss": peak_rss, "peak_pss": peak_pss,
                "output": output.strip()}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--prepare", type=Path, metavar="RUN_DIR", help="make REPO from RUN_DIR's first nets")
    ap.add_argument("--count", type=int, default=17)
    ap.add_argument("--tolerance", default="2^-14")
    ap.add_argument("--code", type=Path, default=ROOT, help="checkout whose publisher runs (default: this one)")
    ap.add_argument("repo", type=Path)
    ap.add_argument("net", type=Path, nargs="?")
    ap.add_argument("options", nargs="*", help="publish options, after --")
    args = ap.parse_args(argv)
    if args.prepare:
        prepare(args.prepare, args.repo, args.count, args.tolerance)
        return 0
    from lc0weights import Net
    raw = len(Net.load(args.net).raw)
    r = measure(args.repo, args.net, args.code, args.options)
    print(f"{' '.join(args.options) or 'defaults'} ({args.code}): wall {r['wall_s']:.1f} s, "
          f"CPU {r['cpu_s']:.1f} s, peak RSS sum {r['peak_rss'] / 1e6:.0f} MB ({r['peak_rss'] / raw:.2f}x raw), "
          f"peak PSS sum {r['peak_pss'] / 1e6:.0f} MB ({r['peak_pss'] / raw:.2f}x raw); raw {raw / 1e6:.1f} MB")
    print(r["output"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
