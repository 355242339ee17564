#!/usr/bin/env python3
"""How much of a step can any linear prediction from earlier published nets remove?

    python tools/temporal_limit.py [RUN_DIR ...] [--steps 3] [--weights 20000] [--out FILE]

RUN_DIR defaults to the shared maia-swa and maia-distill.

Two measurements side by side, per pair of the run (lossless, LINEAR16 layers):

* measured: for every layer, the residuals of the pair (target code minus the
  base re-gridded, as a patch codes them) fitted by least squares on the
  base's last 1, 2, ... ``--steps`` steps (base minus its predecessor, that
  one minus its own, ...) in the same units. The order-0 entropy (static,
  per layer) of the rounded errors is what an ideal coder without further
  contexts would spend. Coefficients are fitted on the very residuals (an
  oracle: a patch would have to carry them), so this is a bound from above on
  what more history can give, not a codec.
* modelled: the run's SWA schedule (``swa_steps``, ``swa_max_n``, ``every``
  and the learning-rate drop from ``run_info.json``) applied to live weights
  that take independent random steps, scaled by the learning rate. The
  variance left by the best linear predictor on 1 ... ``--steps`` earlier
  published steps, as a fraction of the step's own variance.

Where the modelled fractions for one step and for several agree, an average of
a random walk leaves nothing for a longer history to predict; where the
measured entropies agree as well, the run behaves like that model and the
prediction error is the live weights' own noise, which no published net holds.
Prints a table; ``--out FILE`` writes it as the section "## How far temporal
prediction can go" of FILE.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tools"))

import bench  # noqa: E402
import harness  # noqa: E402
from lc0weights import Net  # noqa: E402
from lc0weights import encodings as enc  # noqa: E402
from lc0weights import residuals as res  # noqa: E402

SECTION = "## How far temporal prediction can go"
METHOD = ("Residuals of each pair (lossless, LINEAR16 layers, as a patch codes them) fitted per layer by "
          "least squares on the base's last 1, 2 or 3 steps; the coefficients are chosen on the very "
          "residuals (an oracle: a patch would carry them). H0: order-0 entropy of the rounded errors, "
          "static per layer, in bytes. Model: the run's own SWA schedule (`run_info.json`) over live "
          "weights taking independent random steps scaled by the learning rate; the fraction of a "
          "published step's variance that the best predictor on 1, 2 or 3 earlier published steps leaves.")
DEFAULT_RUNS = [bench.DEFAULT_RUN.parent / "maia-swa", bench.DEFAULT_RUN.parent / "maia-distill"]


# -- measured ------------------------------------------------------------------------

def _layer_values(net: Net) -> dict:
    return {l.path: l for l in net.layers if l.encoding == enc.LINEAR16 and l.count}


def measured_pair(nets: list[Net], k: int, steps: int) -> list[float]:
    """Order-0 entropy in bytes of the residuals of nets[k-1] -> nets[k], then of
    their errors after a least-squares fit on 1 .. steps earlier steps (None where
    the run has too few nets)."""
    target, base = nets[k], nets[k - 1]
    older = [_layer_values(nets[k - 1 - j]) for j in range(min(steps + 1, k))]
    totals = [0.0] * (steps + 1)
    usable = min(steps, k - 1)
    for path, layer in _layer_values(target).items():
        if path not in older[0]:
            continue
        lt = res.LayerTarget(layer.encoding, layer.count, layer.min_bits, layer.max_bits)
        r = res.linear16_residuals(target.codes(layer), base.values(older[0][path]), lt)
        values = r.values[:layer.count].astype(np.float64)
        totals[0] += bench.entropy_bytes(r.values)
        if not (r.scale > 0 and np.isfinite(r.scale)):      # a constant layer: nothing to predict
            for s in range(1, steps + 1):
                totals[s] += bench.entropy_bytes(r.values)
            continue
        nets_values = [nets[k - 1 - j].values(older[j][path]).astype(np.float64)
                       for j in range(len(older)) if path in older[j]]
        history = [(nets_values[j] - nets_values[j + 1]) / r.scale for j in range(len(nets_values) - 1)]
        for s in range(1, steps + 1):
            if s > usable or s > len(history):
                totals[s] = float("nan")
                continue
            x = np.stack(history[:s], axis=1)
            coef, *_ = np.linalg.lstsq(x, values, rcond=None)
            totals[s] += bench.entropy_bytes(np.rint(values - x @ coef).astype(np.int64))
    return totals


# -- modelled ------------------------------------------------------------------------

def swa_snapshots(info: dict, weights: int, seed: int = 0) -> np.ndarray:
    """Published nets of the run's SWA schedule (none: the live weights) over live
    weights doing a random walk."""
    rng = np.random.default_rng(seed)
    steps, every = int(info["steps"]), int(info["every"])
    swa_steps, max_n = int(info.get("swa_steps") or 0), int(info.get("swa_max_n") or 0)
    drop_at = int(info.get("lr_drop_at") or steps + 1)
    drop = float(info.get("lr_after_drop") or info["lr"]) / float(info["lr"])
    live = np.zeros(weights)
    average, n = live.copy(), 0
    published = [average.copy()]
    for t in range(1, steps + 1):
        live += rng.standard_normal(weights) * (drop if t > drop_at else 1.0)
        if not swa_steps:                    # a run publishing its live weights
            average = live
        elif t % swa_steps == 0:
            average = average * (n / (n + 1)) + live / (n + 1)
            n = min(n + 1, max_n)
        if t % every == 0:
            published.append(average.copy())
    return np.array(published)


def modelled_fractions(published: np.ndarray, steps: int) -> list[list[float]]:
    """Per pair k >= 2: the variance left by the best predictor on 1 .. steps earlier
    steps, as fractions of the step's variance (nan where too few steps exist)."""
    d = np.diff(published, axis=0)
    out = []
    for k in range(1, len(d)):
        y = d[k]
        row = []
        for s in range(1, steps + 1):
            if s > k:
                row.append(float("nan"))
                continue
            x = np.stack([d[k - j] for j in range(1, s + 1)], axis=1)
            coef, *_ = np.linalg.lstsq(x, y, rcond=None)
            row.append(float(np.var(y - x @ coef) / np.var(y)))
        out.append(row)
    return out


# -- report --------------------------------------------------------------------------

def _num(x, fmt):
    return "-" if np.isnan(x) else format(x, fmt)


def report(run: Path, steps: int, weights: int) -> list[str]:
    info = json.loads((run / "run_info.json").read_text())
    paths = [run / name for name in info["checkpoints"]]
    nets = [Net.load(p) for p in paths]
    labels = [p.name.split("-")[-1].split(".")[0].lstrip("0") or "0" for p in paths]
    fractions = modelled_fractions(swa_snapshots(info, weights), steps)
    head = (["pair", "H0 residuals"] + [f"H0 errors, {s} step{'s' if s > 1 else ''}" for s in range(1, steps + 1)]
            + [f"model: left, {s} step{'s' if s > 1 else ''}" for s in range(1, steps + 1)])
    rows, sums = [], np.zeros(steps + 1)
    for k in range(2, len(nets)):
        h = measured_pair(nets, k, steps)
        if k > steps:
            sums += np.array(h)
        rows.append([f"{labels[k - 1]}→{labels[k]}"] + [_num(v, ",.0f") for v in h]
                    + [_num(v, ".3f") for v in fractions[k - 2]])
    lines = harness.md_table(head, rows).splitlines()
    first = labels[steps] + "→" + labels[steps + 1]
    lines.append(f"| total from {first} | " + " | ".join(f"{v:,.0f}" for v in sums)
                 + " |" + " |" * steps)
    return lines


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        description=__doc__.splitlines()[0],
        epilog="Needs no extra; reads each run's step-*.pb.gz and run_info.json. "
               "Runs on 2 cores about 5 s. Prints only, unless --out.")
    ap.add_argument("run_dirs", nargs="*", type=Path, default=DEFAULT_RUNS,
                    help="runs with a run_info.json (default: the shared maia-swa and maia-distill)")
    ap.add_argument("--steps", type=int, default=3, help="most earlier steps to predict from (default 3)")
    ap.add_argument("--weights", type=int, default=20000, help="weights in the model (default 20000)")
    ap.add_argument("--out", type=Path, help="also write the tables as a section of this Markdown file")
    return ap


def main(argv=None) -> int:
    ap = build_parser()
    args = ap.parse_args(argv)
    if not 1 <= args.steps <= 8 or args.weights < 100:
        ap.error("--steps takes 1 to 8 and --weights at least 100")
    for run in args.run_dirs:
        if not (run / "run_info.json").is_file():
            ap.error(f"{run} has no run_info.json")
    text = [SECTION, "", f"Produced by `{harness.command_line('tools/temporal_limit.py', argv)}`.", "", METHOD, ""]
    for run in args.run_dirs:
        lines = [f"### {run.name}", "", *report(run, args.steps, args.weights), ""]
        print("\n".join(lines), flush=True)
        text += lines
    if args.out:
        harness.write_section(args.out, "\n".join(text) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
