#!/usr/bin/env python3
"""History patches (temporal prediction, codec cm2) against plain patches and NNCodec.

    .venv/bin/python tools/bench_temporal.py [RUN_DIR ...] [--modes lossless,2^-14,2^-10] [--no-nncodec]
                                   [--out docs/BENCHMARKS.md]

Needs no extra beyond the runtime, but NNCodec unless --no-nncodec (see
pyproject.toml). Prints its tables; writes a file only when given --out.

For every run (default: the shared maia-swa and maia-distill) and mode, three
chains over the run's successive nets, each closed loop (a lossy patch is made
against the net the previous patch of the same chain rebuilt):

* plain: the default patch from the predecessor, no history;
* history, cm1: the first pair plain, every later pair with the base's
  predecessor as history and codec choice as before cm2 (cm1 with history
  contexts, varint-brotli, stored);
* history, cm2: the same with today's default (cm2's signed prediction).

Per pair it prints the three sizes, the order-0 entropy (bytes, static, per
layer) of the residuals and of cm2's prediction errors, and NNCodec's bytes
(DeepCABAC, see tools/bench.py) on the same pairs: plain, and with its temporal
context (the base's last step in the same integer units as reference).
Every patch is applied again and checked (sha256, or every weight under every
engine decoding). NNCodec needs `pip install --no-deps nncodec==2.1.3 pybind11`.

Prints only. With ``--out FILE`` it also writes the tables as the section
"## Temporal prediction and NNCodec" of FILE (replaced if there, else appended).
"""
from __future__ import annotations

import argparse
import hashlib
import sys
import time
from pathlib import Path


ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tools"))

import bench  # noqa: E402
import harness  # noqa: E402
from lc0weights import Net, apply_patch, make_patch  # noqa: E402
from lc0weights import encodings as enc  # noqa: E402
from lc0weights.patching import encode as patch_module  # noqa: E402
from lc0weights import residuals as res  # noqa: E402
from lc0weights.codecs import temporal  # noqa: E402
from lc0weights.patch import _Context, _pair  # noqa: E402
from lc0weights.proto import patch_pb2  # noqa: E402

SHARED = bench.DEFAULT_RUN.parent
DEFAULT_RUNS = [SHARED / "maia-swa", SHARED / "maia-distill"]
MODES = {"lossless": None, "2^-17": 2.0 ** -17, "2^-14": 2.0 ** -14, "2^-10": 2.0 ** -10}
SECTION = "## Temporal prediction and NNCodec"
BEFORE_CM2 = ("varint-brotli", "cm1", "stored")


def entropies(base: Net, target: Net, history: Net, tolerance) -> tuple[float, float]:
    """Order-0 entropy (bytes) of the residuals and of cm2's prediction errors, per layer."""
    ctx = _Context(base, history, {l.path: l.count for l in target.layers if l.codable}, float(tolerance or 0))
    plain = predicted = 0.0
    for layer in target.layers:
        if not layer.has_params:
            continue
        bl = _pair(base, layer)
        lt = res.LayerTarget(layer.encoding, layer.count, layer.min_bits, layer.max_bits)
        if not layer.codable:
            r = res.raw_residuals(target.payload(layer))
        elif layer.encoding == enc.LINEAR16:
            r = res.linear16_residuals(target.codes(layer), base.values(bl) if bl else None, lt, tolerance)
        elif tolerance:
            r = res.float_step_residuals(target.codes(layer), base.codes(bl) if bl else None, lt, tolerance)
        else:
            r = res.float_image_residuals(target.codes(layer), base.codes(bl) if bl else None, lt)
        lp = patch_pb2.LayerPatch(residual=r.kind, quant_width=r.quant_width if r.quant_width > 1 else 0)
        info = ctx.info(layer, lp, bl if bl is not None and r.kind != patch_pb2.RAW_BYTES else None)
        values = r.values.copy()
        count = info.count
        hq = temporal.history_units(info.history, info.scale, count)
        slope = temporal.fit_slope(values[:count], hq) if hq is not None else 0
        if slope:
            values[:count] -= temporal.prediction(hq, slope)[0]
        plain += bench.entropy_bytes(r.values)
        predicted += bench.entropy_bytes(values)
    return plain, predicted


def checked(base: Net, patch: bytes, target: Net, history, tolerance) -> Net:
    rebuilt = apply_patch(base, patch, history=history)
    if tolerance is None:
        if hashlib.sha256(rebuilt).hexdigest() != target.id:
            raise SystemExit(f"lossless patch did not rebuild {target.source}")
        return target
    result = Net(bytes(rebuilt))
    err = bench.max_abs_error(result, target)
    if not err <= tolerance:
        raise SystemExit(f"{target.source}: error {err} over {tolerance}")
    return result


def chain(nets, tolerance, use_history: bool, codecs=None, log=None) -> tuple[list[int], list[Net]]:
    """Sizes of a closed-loop chain of patches and the nets it rebuilds."""
    saved = patch_module.DEFAULT_CODECS, patch_module.HISTORY_CODECS
    if codecs:
        patch_module.DEFAULT_CODECS = patch_module.HISTORY_CODECS = codecs
    try:
        held, sizes = [nets[0]], []
        for i in range(1, len(nets)):
            history = held[i - 2] if use_history and i >= 2 else None
            p = make_patch(held[i - 1], nets[i], tolerance, history=history, verify=False)
            sizes.append(len(p))
            held.append(checked(held[i - 1], p, nets[i], history, tolerance))
        return sizes, held
    finally:
        patch_module.DEFAULT_CODECS, patch_module.HISTORY_CODECS = saved


def bench_mode(nets, tolerance, nncodec: bool, log) -> list[dict]:
    start = time.perf_counter()
    plain, _ = chain(nets, tolerance, False)
    today, _ = chain(nets, tolerance, True, BEFORE_CM2)
    new, held = chain(nets, tolerance, True)
    rows = []
    for i in range(1, len(nets)):
        history = held[i - 2] if i >= 2 else None
        row = {"plain": plain[i - 1], "today": today[i - 1], "new": new[i - 1]}
        if history is not None:
            row["h0_residuals"], row["h0_errors"] = entropies(held[i - 1], nets[i], history, tolerance)
        if nncodec and tolerance is None:
            layers, _ = bench.nncodec_layers(nets[i - 1], nets[i], None, None)
            row["nnc"], row["nnc_err"] = bench.nncodec_code(layers), 0.0
            if i >= 2:
                layers, _ = bench.nncodec_layers(nets[i - 1], nets[i], nets[i - 2], None)
                row["nnc_tcm"] = bench.nncodec_code(layers)
            else:
                row["nnc_tcm"] = row["nnc"]
        rows.append(row)
    if nncodec and tolerance is not None:            # closed loop, like our chains
        plain_nnc, err = bench.nncodec_lossy_chain(nets, tolerance, tcm=False)
        tcm_nnc, _ = bench.nncodec_lossy_chain(nets, tolerance, tcm=True)
        for row, a, b in zip(rows, plain_nnc, tcm_nnc):
            row["nnc"], row["nnc_tcm"], row["nnc_err"] = a, b, err
    log(f"  {time.perf_counter() - start:.0f} s")
    return rows


def fmt(n) -> str:
    return "-" if n is None else f"{n:,.0f}"


def ratio(a, b) -> str:
    return "-" if not a or not b else f"{a / b:.3f}"


def tables(name: str, labels, results: dict, nncodec: bool) -> list[str]:
    out = []
    for mode, rows in results.items():
        head = ["pair", "plain", "history cm1", "history cm2", "cm2/plain", "H0 residuals", "H0 cm2 errors"]
        if nncodec:
            head += ["NNCodec", "NNCodec+TCM", "cm2/NNCodec+TCM"]
        body = []
        for label, r in zip(labels, rows):
            line = [label, fmt(r["plain"]), fmt(r["today"]), fmt(r["new"]), ratio(r["new"], r["plain"]),
                    fmt(r.get("h0_residuals")), fmt(r.get("h0_errors"))]
            if nncodec:
                line += [fmt(r["nnc"]), fmt(r["nnc_tcm"]), ratio(r["new"], r["nnc_tcm"])]
            body.append(line)
        tot = {k: sum(r[k] for r in rows) for k in ("plain", "today", "new")}
        total = ["total", fmt(tot["plain"]), fmt(tot["today"]), fmt(tot["new"]), ratio(tot["new"], tot["plain"]),
                 fmt(sum(r.get("h0_residuals", 0) for r in rows)), fmt(sum(r.get("h0_errors", 0) for r in rows))]
        if nncodec:
            nnc, tcm = sum(r["nnc"] for r in rows), sum(r["nnc_tcm"] for r in rows)
            total += [fmt(nnc), fmt(tcm), ratio(tot["new"], tcm)]
        body.append(total)
        out += [f"### {name}, {mode}", "", harness.md_table(head, body), ""]
    return out


def summary(all_results: dict, nncodec: bool) -> list[str]:
    head = ["run", "mode", "plain", "history cm1", "history cm2", "cm2/plain", "cm1 history/plain"]
    if nncodec:
        head += ["NNCodec+TCM", "ours/NNCodec+TCM", "max error NNCodec"]
    body = []
    for name, results in all_results.items():
        for mode, rows in results.items():
            t = {k: sum(r[k] for r in rows) for k in ("plain", "today", "new")}
            line = [name, mode, fmt(t["plain"]), fmt(t["today"]), fmt(t["new"]), ratio(t["new"], t["plain"]),
                    ratio(t["today"], t["plain"])]
            if nncodec:
                tcm = sum(r["nnc_tcm"] for r in rows)
                err = max(r["nnc_err"] for r in rows)
                line += [fmt(tcm), ratio(t["new"], tcm), f"{err:.3g}"]
            body.append(line)
    return [harness.md_table(head, body), ""]


# measured on the two shared runs, three modes, on 2 cores shared with other work
RUN_TIME = "on 2 cores about 2 min with --no-nncodec (NNCodec's coding time comes on top)"


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        description=__doc__.splitlines()[0],
        epilog="Needs NNCodec unless --no-nncodec (pip install --no-deps nncodec==2.1.3 pybind11); "
               "no other extra. Runs " + RUN_TIME + ".")
    ap.add_argument("runs", nargs="*", type=Path, default=DEFAULT_RUNS,
                    help="folders of step-*.pb.gz nets (default: the shared maia-swa and maia-distill)")
    ap.add_argument("--modes", default="lossless,2^-14,2^-10",
                    help="comma-separated: lossless and tolerances (default: %(default)s)")
    ap.add_argument("--no-nncodec", action="store_true", help="leave out the NNCodec column")
    ap.add_argument("--out", type=Path, help="also write the tables as a section of this Markdown file")
    return ap


def main(argv=None) -> int:
    ap = build_parser()
    args = ap.parse_args(argv)
    modes = args.modes.split(",")
    if any(m not in MODES for m in modes):
        ap.error(f"modes are {', '.join(MODES)}")
    nncodec = not args.no_nncodec
    if nncodec and not bench.nncodec_available():
        ap.error("NNCodec is not installed (pip install --no-deps nncodec==2.1.3 pybind11), or pass --no-nncodec")
    command = harness.command_line("tools/bench_temporal.py", argv)
    log = harness.log

    all_results, detail = {}, []
    for run in args.runs:
        paths = sorted(run.glob("step-*.pb.gz"))
        if len(paths) < 3:
            raise SystemExit(f"{run}: need at least three step-*.pb.gz nets")
        nets = [Net.load(p) for p in paths]
        labels = [bench.pair_label(a, b) for a, b in zip(paths, paths[1:])]
        results = {}
        for mode in modes:
            log(f"{run.name} {mode}")
            results[mode] = bench_mode(nets, MODES[mode], nncodec, log)
        all_results[run.name] = results
        detail += tables(run.name, labels, results, nncodec)
    text = [SECTION, "", f"Produced by `{command}` ({time.strftime('%Y-%m-%d')}; NNCodec installed as "
                         f"pyproject.toml says, or pass --no-nncodec; runs {RUN_TIME}).", "",
            "Three closed-loop chains per run and mode: plain patches; history patches as before cm2 "
            "(cm1 with the base's last step as context); history patches with cm2 (signed prediction "
            "from the base's last step). The first pair of a history chain has no predecessor and is "
            "plain. Whole patch files, applied again and checked (lossy: every weight under the three "
            "LINEAR16 decodings). H0: order-0 entropy of the residuals and of cm2's prediction errors, "
            "static per layer. NNCodec: DeepCABAC bytes only (no header, no skeleton) on the same "
            "integers: our residuals (lossless), or (lossy) the float difference to its own previous "
            "reconstruction quantised to steps of 2T, closed loop like ours (its result is float, not "
            "LINEAR16; max error in the last column); TCM is its temporal context with the base's last "
            "step (lossy: the reconstruction's), in the same units, as reference.", "",
            *summary(all_results, nncodec), *detail]
    print("\n".join(text))
    if args.out:
        harness.write_section(args.out, "\n".join(text))
        log(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
