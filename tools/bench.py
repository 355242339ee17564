#!/usr/bin/env python3
"""Patch sizes, errors, speed and memory on a run of successive nets, against peers.

    .venv/bin/python tools/bench.py [RUN_DIR] [--pairs N] [--quick] [--synthetic-large] [--out DIR]

Needs the bench extra (pip install -e '.[bench]'; NNCodec optional, see
pyproject.toml).

For every consecutive pair (base -> target) of RUN_DIR/step-*.pb.gz, in one
process on one machine:

* ours: lossless and at tolerances 2^-17, 2^-14, 2^-10, with the baseline codec
  (varint-brotli), the context model (cm1, when registered), the default
  (smallest codec per layer) and the default with history (the base's
  predecessor as context). Every patch is applied again: lossless results
  must have the target's sha256, lossy ones are checked weight by weight
  (the largest error is recorded and must be <= the tolerance).
* peers: the .pb.gz as distributed, xz -9e of the raw net, XOR with the
  previous raw net + gzip -9 (the training server's upload scheme), zstd -19
  with the previous raw net as dictionary (--patch-from), bsdiff4, the
  original request's scheme (float difference x 2^17 truncated to int32,
  zigzag, varints, bz2; lossy), SZ3 in absolute-error mode on the float
  difference at each tolerance (checked on the re-added weights) and NNCodec
  (DeepCABAC, when installed: lossless on our residuals, lossy on the float
  difference in steps of 2T).
* a yardstick: the order-0 entropy of our residuals (static, per layer).

Writes OUT/bench-<run>.md, OUT/bench-<run>.png and the summary in
OUT/BENCHMARKS.md (keeping a final "## Following a run" section if there).
Without --out, OUT is a new temporary folder, named at the end: the checkout's
docs/ change only with an explicit ``--out docs``.
"""
from __future__ import annotations

import argparse
import bz2
import gzip
import hashlib
import json
import lzma
import math
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import lc0weights  # noqa: E402
from lc0weights import Net, apply_patch, make_patch  # noqa: E402
from lc0weights import encodings as enc  # noqa: E402
from lc0weights import residuals as res  # noqa: E402
from lc0weights.codecs import codec_ids  # noqa: E402
from lc0weights.codecs.varint_brotli import leb128, unleb128, unzigzag, zigzag  # noqa: E402

import harness  # noqa: E402  (tools/, beside this file)

DEFAULT_RUN = Path(os.environ.get("LC0WEIGHTS_SHARED", ROOT.parent / "shared")) / "data" / "runs" / "maia-distill"
TOLERANCES = [("2^-17", 2.0 ** -17), ("2^-14", 2.0 ** -14), ("2^-10", 2.0 ** -10)]
MODES = [("lossless", None)] + TOLERANCES
FOLLOW_SECTION = "## Following a run"


# -- measuring helpers -----------------------------------------------------------------

def max_abs_error(approx: Net, target: Net) -> float:
    """Largest |approx - target| over every decoded weight and every engine decoding
    (computed here, not by the library)."""
    worst = 0.0
    for la, lt in zip(approx.layers, target.layers, strict=True):
        if la.path != lt.path or la.count != lt.count:
            return math.inf
        if la.count:
            for name in enc.LINEAR16_DECODINGS:          # every way an engine decodes LINEAR16
                a = enc.decode(la.encoding, approx.codes(la), la.min_bits, la.max_bits, decoding=name)
                t = enc.decode(lt.encoding, target.codes(lt), lt.min_bits, lt.max_bits, decoding=name)
                worst = max(worst, float(np.abs(a.astype(np.float64) - t.astype(np.float64)).max()))
    return worst


def float_values(net: Net) -> np.ndarray:
    """Every codable weight, decoded as the engine decodes, in file order (float64)."""
    return np.concatenate([net.values(l).astype(np.float64) for l in net.layers if l.count])


def entropy_bytes(values: np.ndarray) -> float:
    if values.size == 0:
        return 0.0
    _, counts = np.unique(values, return_counts=True)
    p = counts / counts.sum()
    return float(-(counts * np.log2(p)).sum()) / 8


def residual_entropy(base: Net, target: Net, tolerance: float | None) -> float:
    """Order-0 entropy of our residuals: per layer, static model, sum of count*H."""
    total = 0.0
    base_layers = {l.path: l for l in base.layers}
    for layer in target.layers:
        if not layer.count:
            continue
        bl = base_layers.get(layer.path)
        lt = res.LayerTarget(layer.encoding, layer.count, layer.min_bits, layer.max_bits)
        paired = bl is not None and bl.count == layer.count and bl.encoding == layer.encoding
        if layer.encoding == enc.LINEAR16:
            r = res.linear16_residuals(target.codes(layer), base.values(bl) if paired else None, lt, tolerance)
        elif tolerance:
            r = res.float_step_residuals(target.codes(layer), base.codes(bl) if paired else None, lt, tolerance)
        else:
            r = res.float_image_residuals(target.codes(layer), base.codes(bl) if paired else None, lt)
        total += entropy_bytes(r.values)
    return total


# -- peers -------------------------------------------------------------------------------

def peer_xz(raw_prev, raw, **_):
    data = lzma.compress(raw, preset=9 | lzma.PRESET_EXTREME)
    assert lzma.decompress(data) == raw
    return len(data), 0.0


def peer_xor_gzip(raw_prev, raw, **_):
    if len(raw_prev) != len(raw):
        return None, None
    x = (np.frombuffer(raw_prev, np.uint8) ^ np.frombuffer(raw, np.uint8)).tobytes()
    data = gzip.compress(x, compresslevel=9, mtime=0)
    back = np.frombuffer(gzip.decompress(data), np.uint8) ^ np.frombuffer(raw_prev, np.uint8)
    assert back.tobytes() == raw
    return len(data), 0.0


def peer_zstd(raw_prev, raw, **_):
    import zstandard as zstd
    window = min(31, max(20, math.ceil(math.log2(len(raw_prev) + len(raw)))))
    d = zstd.ZstdCompressionDict(raw_prev, dict_type=zstd.DICT_TYPE_RAWCONTENT)
    params = zstd.ZstdCompressionParameters.from_level(19, window_log=window, enable_ldm=True)
    data = zstd.ZstdCompressor(compression_params=params, dict_data=d).compress(raw)
    back = zstd.ZstdDecompressor(dict_data=d, max_window_size=1 << window).decompress(data)
    assert back == raw
    return len(data), 0.0


def peer_bsdiff(raw_prev, raw, **_):
    import bsdiff4
    data = bsdiff4.diff(raw_prev, raw)
    assert bsdiff4.patch(raw_prev, data) == raw
    return len(data), 0.0


ORIGINAL_SCALE = 2 ** 17


def peer_original(raw_prev, raw, base_values=None, target_values=None, **_):
    """The original request: (target - base) * 2^17 truncated to int32, zigzag, varints, bz2."""
    fixed = np.trunc((target_values - base_values) * ORIGINAL_SCALE).astype(np.int32)
    z = zigzag(fixed.astype(np.int64))
    stream = leb128(z)
    data = bz2.compress(stream, 9)
    back = unzigzag(unleb128(bz2.decompress(data), len(fixed))).astype(np.int32)
    rebuilt = base_values + back.astype(np.float64) / ORIGINAL_SCALE
    return len(data), float(np.abs(rebuilt - target_values).max())


def peer_sz3(tolerance):
    def run(raw_prev, raw, base_values=None, target_values=None, **_):
        from pysz import sz, szConfig, szErrorBoundMode
        diff = target_values - base_values
        conf = szConfig(diff.shape)
        conf.errorBoundMode = szErrorBoundMode.ABS
        conf.absErrorBound = tolerance
        data, _ = sz.compress(np.ascontiguousarray(diff), conf)
        back, _ = sz.decompress(data, np.float64, diff.shape)
        rebuilt = base_values + back
        return int(data.nbytes), float(np.abs(rebuilt - target_values).max())
    return run


# -- NNCodec (MPEG-7 part 17, Fraunhofer HHI): DeepCABAC over integer layers ---------------
# Installed from its sdist without dependencies (`pip install --no-deps nncodec`, which
# compiles the DeepCABAC extension with the system C++ compiler; the coding path imports
# only numpy). Every layer's integers are coded with fresh contexts (profile 1, parameter
# optimisation on, no dependent quantisation); with a reference, NNC's temporal context
# modelling (encodeLayer2) uses the co-located integer of the previous update as context.
# The sizes count DeepCABAC's bytes only: no header, no skeleton.

NNC_UNARY_LENGTH = 11


def nncodec_available() -> bool:
    try:
        from nncodec.extensions import deepCABAC  # noqa: F401
    except ImportError:
        return False
    return True


def nncodec_code(layers) -> int:
    """Bytes of DeepCABAC coding ``layers``: (int32 array, shape, int32 reference or None).
    Decodes the stream again and checks every value."""
    from nncodec.extensions import deepCABAC as dc
    hdsp = (dc.HdspMode.AlwaysOff, np.array((0, 0), np.int8))
    shaped = []
    for q, shape, ref in layers:
        shape = tuple(shape) if len(shape) > 1 and int(np.prod(shape)) == len(q) else (len(q),)
        shaped.append((np.ascontiguousarray(q.reshape(shape), np.int32), shape,
                       None if ref is None else np.ascontiguousarray(ref.reshape(shape), np.int32)))
    total = 0
    for q, shape, ref in shaped:                 # one stream per layer, as NNC's data units
        encoder = dc.Encoder()
        encoder.initCtxModels(NNC_UNARY_LENGTH, 1)
        skip = np.zeros(shape[0], np.int32)
        if ref is None:
            encoder.encodeLayer(q, 0, 0, 1, 0, 0, skip, *hdsp, 0, 0)
        else:
            encoder.encodeLayer2(q, ref, 0, 0, 1, 0, 0, skip, *hdsp, 0, 0)
        stream = np.array(encoder.finish(), np.uint8)                  # a copy: the encoder owns its buffer
        total += len(stream)
        decoder = dc.Decoder()
        padded = np.concatenate([stream, np.zeros(64, np.uint8)])     # the decoder reads ahead
        decoder.setStream(padded)
        decoder.initCtxModels(NNC_UNARY_LENGTH)
        out = np.zeros(shape, np.int32)
        if ref is None:
            decoder.decodeLayer(out, 0, 0, 1, 0, *hdsp, 0, 0)
        else:
            # NNCodec's encodeLayer2 passes its profile as parent_node_id_present_flag
            decoder.decodeLayer2(out, ref, 0, 0, 1, 1, *hdsp, 0, 0)
        decoder.finish()
        if not np.array_equal(out, q):
            raise SystemExit("NNCodec did not decode what it encoded")
    return total


def nncodec_layers(base: Net, target: Net, history: Net | None, tolerance: float | None):
    """What NNCodec codes for a pair: per layer (integers, shape, reference or None), and the
    largest error of its result. Lossless: our residuals (LINEAR16 codes minus the re-gridded
    base, float images), the reference being the base's last step in the same units.
    Lossy: the float difference of the decoded weights quantised to steps of 2T, the
    reference the base's last step in steps; the result is float, not a LINEAR16 net."""
    from lc0weights.patch import _Context, _pair, infer_shape
    from lc0weights.proto import patch_pb2
    counts = {l.path: l.count for l in target.layers if l.codable}
    ctx = _Context(base, history, counts, float(tolerance or 0.0))
    out, worst = [], 0.0
    for layer in target.layers:
        bl = _pair(base, layer)
        if not layer.codable or not layer.count or bl is None:
            continue
        shape = infer_shape(layer.path, layer.count, counts, layer.dims)
        hl = _pair(history, bl) if history is not None else None
        if tolerance is None:
            lt = res.LayerTarget(layer.encoding, layer.count, layer.min_bits, layer.max_bits)
            if layer.encoding == enc.LINEAR16:
                r = res.linear16_residuals(target.codes(layer), base.values(bl), lt)
            else:
                r = res.float_image_residuals(target.codes(layer), base.codes(bl), lt)
            info = ctx.info(layer, patch_pb2.LayerPatch(residual=r.kind), bl)
            ref = None
            if hl is not None and info.scale > 0:
                with np.errstate(invalid="ignore", over="ignore"):
                    ref = np.nan_to_num(np.rint(info.history.astype(np.float64) / info.scale))
            if np.abs(r.values).max(initial=0) >= 2 ** 31:
                raise SystemExit(f"{layer.path}: residuals beyond int32")
            out.append((r.values, shape, None if ref is None else np.clip(ref, -2 ** 30, 2 ** 30)))
            continue
        b = base.values(bl).astype(np.float64)
        d = target.values(layer).astype(np.float64) - b
        q = np.rint(d / (2 * tolerance))
        worst = max(worst, float(np.abs(q * 2 * tolerance - d).max()))
        ref = None
        if hl is not None:
            ref = np.clip(np.rint((b - history.values(hl).astype(np.float64)) / (2 * tolerance)),
                          -2 ** 30, 2 ** 30)
        out.append((q.astype(np.int64), shape, ref))
    return out, worst


def nncodec_lossy_chain(nets, tolerance: float, tcm: bool) -> tuple[list[int], float]:
    """NNCodec along a run, closed loop like our chains: each net's float difference to
    the previous reconstruction, quantised to steps of 2T (every weight within T), coded
    with DeepCABAC; with ``tcm`` the reference is the reconstruction's last step in steps.
    Returns the bytes per pair and the largest error (the result is float, not LINEAR16)."""
    from lc0weights.patch import infer_shape
    step = 2 * tolerance
    first = nets[0]
    counts = {l.path: l.count for l in first.layers if l.codable}
    paths = [l.path for l in first.layers if l.codable and l.count]
    rec = [{l.path: first.values(l).astype(np.float64) for l in first.layers if l.codable and l.count}]
    sizes, worst = [], 0.0
    for i in range(1, len(nets)):
        target = {l.path: l for l in nets[i].layers if l.codable and l.count}
        layers, now = [], {}
        for path in paths:
            t = nets[i].values(target[path]).astype(np.float64)
            q = np.rint((t - rec[-1][path]) / step)
            now[path] = rec[-1][path] + q * step
            worst = max(worst, float(np.abs(now[path] - t).max()))
            ref = np.rint((rec[-1][path] - rec[-2][path]) / step) if tcm and i >= 2 else None
            layers.append((q.astype(np.int64), infer_shape(path, len(q), counts), ref))
        sizes.append(nncodec_code(layers))
        rec.append(now)
        if len(rec) > 2:
            rec.pop(0)
    return sizes, worst


def peer_nncodec(tolerance):
    def run(raw_prev, raw, **_):
        if not nncodec_available():
            return None, None
        layers, worst = nncodec_layers(Net(raw_prev), Net(raw), None, tolerance)
        return nncodec_code(layers), worst
    return run


PEERS = [("xz -9e", peer_xz, "lossless"), ("XOR prev + gzip -9", peer_xor_gzip, "lossless"),
         ("zstd -19 --patch-from", peer_zstd, "lossless"), ("bsdiff4", peer_bsdiff, "lossless"),
         ("original (x2^17, bz2)", peer_original, "lossy")]
PEERS += [(f"SZ3 T={name}", peer_sz3(t), "lossy") for name, t in TOLERANCES]
PEERS += [("NNCodec lossless", peer_nncodec(None), "lossless")]
PEERS += [(f"NNCodec T={name}", peer_nncodec(t), "lossy") for name, t in TOLERANCES]
SLOW_PEERS = {"bsdiff4", "xz -9e"}


# -- ours --------------------------------------------------------------------------------

def our_variants(has_history: bool):
    codecs = [("varint-brotli", "varint-brotli"), ("default", None)]
    if "cm1" in codec_ids():
        codecs.insert(1, ("cm1", "cm1"))
    out = []
    for mode, tol in MODES:
        for label, codec in codecs:
            out.append((f"ours {label} {mode}", codec, tol, False))
        if has_history:
            out.append((f"ours default+history {mode}", None, tol, True))
    return out


def run_ours(base, target, history, codec, tol):
    patch, enc_s = harness.timed(make_patch, base, target, tolerance=tol, codec=codec, history=history, verify=False)
    rebuilt, dec_s = harness.timed(apply_patch, base, patch, history=history)
    if tol is None:
        if hashlib.sha256(rebuilt).hexdigest() != target.id:
            raise SystemExit(f"lossless patch did not rebuild {target.source}")
        err = 0.0
    else:
        err = max_abs_error(Net(bytes(rebuilt)), target)
        if not err <= tol:
            raise SystemExit(f"patch at tolerance {tol} rebuilt {target.source} with error {err}")
    return len(patch), err, enc_s, dec_s


# -- speed and memory --------------------------------------------------------------------

_APPLY_CHILD = r"""
import hashlib, json, resource, sys, time, tracemalloc
from pathlib import Path
sys.path.insert(0, sys.argv[1])
from lc0weights import Net, apply_patch
from lc0weights.patch import apply_patch_to_file
def rss(field):
    for line in open('/proc/self/status'):
        if line.startswith(field):
            return int(line.split()[1]) * 1024
# Warm up (JIT compilation, imports) on a tiny net pair with the same codecs, then reset the
# high-water mark, so the peak measures applying this patch and not compiling kernels.
from lc0weights import make_patch, read_patch_info
from lc0weights.synthetic import generate
tiny = [Net(raw) for _, raw in generate(count=2, blocks=1, filters=16, seed=1)]
for codec in sorted({l.get("codec") for l in read_patch_info(Path(sys.argv[3]).read_bytes()).layers} - {None}):
    try:
        apply_patch(tiny[0], make_patch(tiny[0], tiny[1], codec=codec, verify=False))
    except Exception:
        pass
try:
    with open('/proc/self/clear_refs', 'w') as f:
        f.write('5')
except OSError:
    pass
before = rss('VmRSS:')
tracemalloc.start()
# What `lc0weights apply BASE PATCH -o OUT.pb.gz` does: load the base, stream the patch
# file, write the rebuilt net through gzip into a temp file, verify its id, rename.
base = Net.load(sys.argv[2])
start = time.perf_counter()
ok = apply_patch_to_file(base, sys.argv[3], Path(sys.argv[3]).with_suffix(".pb.gz"), workers=int(sys.argv[4]))
seconds = time.perf_counter() - start
_, peak = tracemalloc.get_traced_memory()
print(json.dumps({"rss_before": before, "rss_peak": rss('VmHWM:'), "traced_peak": peak,
                  "seconds": seconds, "sha256": ok}))
"""


def apply_in_subprocess(base_path: Path, patch: bytes, workers: int) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        p = Path(tmp) / "patch.lc0p"
        p.write_bytes(patch)
        out = harness.run([sys.executable, "-c", _APPLY_CHILD, ROOT, base_path, p, workers])
    if out.returncode:
        raise SystemExit(f"applying in a fresh process failed:\n{out.stderr[-2000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def speed_rows(base: Net, target: Net, base_path: Path, codecs, modes, workers_list) -> list[dict]:
    rows = []
    n = target.weight_count
    for label, codec in codecs:
        for mode, tol in modes:
            for w in workers_list:
                patch, enc_s = harness.timed(make_patch, base, target, tolerance=tol, codec=codec, workers=w,
                                             verify=False)
                _, dec_s = harness.timed(apply_patch, base, patch, workers=w)
                mem = apply_in_subprocess(base_path, patch, w)
                rows.append({"codec": label, "mode": mode, "workers": w, "size": len(patch),
                             "enc_wps": n / enc_s, "dec_wps": n / dec_s, "enc_s": enc_s, "dec_s": dec_s,
                             "rss_peak": mem["rss_peak"], "rss_before": mem["rss_before"],
                             "traced_peak": mem["traced_peak"], "raw": len(target.raw)})
                if mem["sha256"] != hashlib.sha256(
                        apply_patch(base, patch, workers=w)).hexdigest():
                    raise SystemExit("subprocess apply disagrees")
    return rows


# -- reporting ---------------------------------------------------------------------------

def human(n: float | None) -> str:
    if n is None:
        return "-"
    return f"{n:,.0f}"


def pair_label(a: Path, b: Path) -> str:
    def step(p):
        return p.name.replace(".pb.gz", "").replace("step-", "").lstrip("0") or "0"
    return f"{step(a)}→{step(b)}"


def write_chart(path: Path, labels, results, methods, title):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(13, 6.5))
    markers = "os^vD<>p*hX+x1234"
    colors = plt.get_cmap("tab20").colors
    for k, m in enumerate(methods):
        ys = [results[i].get(m, {}).get("size") for i in range(len(labels))]
        if all(y is None for y in ys):
            continue
        style = "-" if m.startswith("ours") else "--"
        ax.plot(range(len(labels)), [y if y else np.nan for y in ys], style, marker=markers[k % len(markers)],
                color=colors[k % len(colors)],
                label=m, linewidth=1.6 if m.startswith("ours") else 1.0, markersize=4)
    ax.set_yscale("log")
    ax.set_xticks(range(len(labels)))
    ax.set_xticklabels(labels, rotation=45, ha="right", fontsize=8)
    ax.set_ylabel("bytes to ship the next net (log scale)")
    ax.set_xlabel("pair (training step of base → target)")
    ax.set_title(title)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    fig.tight_layout()
    tmp = path.with_suffix(".tmp.png")
    fig.savefig(tmp, dpi=110)
    os.replace(tmp, path)
    plt.close(fig)


def method_table(methods, results, labels, raw_size, pbgz_total):
    rows = []
    for m in methods:
        sizes = [results[i].get(m, {}).get("size") for i in range(len(labels))]
        failed = [labels[i] for i in range(len(labels)) if results[i].get(m, {}).get("failed")]
        if failed:
            rows.append([m, f"FAILED on {', '.join(failed)}", "-", "-", "-", "-", "-"])
            continue
        if any(s is None for s in sizes):
            continue
        errs = [results[i][m].get("err") for i in range(len(labels))]
        total = sum(sizes)
        err = max(e for e in errs) if all(e is not None for e in errs) else None
        encs = [results[i][m].get("enc_s") for i in range(len(labels))]
        rows.append([m, human(total), human(total / len(sizes)), f"{pbgz_total / total:.1f}x",
                     f"{8 * total / len(sizes) / results[0]['_weights']:.2f}",
                     "0 (exact)" if err == 0 else ("-" if err is None else f"{err:.3g}"),
                     f"{sum(encs):.1f}" if all(e for e in encs) else "-"])
    return harness.md_table(["method", "total bytes", "mean per pair", "vs .pb.gz", "bits/weight", "max error",
                     "encode s (all pairs)"], rows)


def per_pair_table(labels, results, columns):
    header = ["pair"] + [c for c, _ in columns]
    rows = []
    for i, lab in enumerate(labels):
        rows.append([lab] + ["FAILED" if results[i].get(m, {}).get("failed") else human(results[i].get(m, {}).get("size"))
                             for _, m in columns])
    rows.append(["**total**"] + [f"**{human(sum(results[i].get(m, {}).get('size') or 0 for i in range(len(labels))))}**"
                                 for _, m in columns])
    return harness.md_table(header, rows)


def speed_table(rows):
    out = []
    for r in rows:
        extra = r["rss_peak"] - r["rss_before"]
        out.append([r["codec"], r["mode"], r["workers"], human(r["size"]), f"{r['enc_wps'] / 1e6:.2f}",
                    f"{r['dec_wps'] / 1e6:.2f}", f"{r['rss_peak'] / 1e6:.0f}",
                    f"{extra / 1e6:.0f} ({extra / r['raw']:.2f}x)",
                    f"{r['traced_peak'] / 1e6:.0f} ({r['traced_peak'] / r['raw']:.2f}x)"])
    return harness.md_table(["codec", "mode", "workers", "patch bytes", "encode Mweights/s", "apply Mweights/s",
                     "apply peak RSS MB", "RSS above start MB (x raw)", "traced peak MB (x raw)"], out)


# -- main --------------------------------------------------------------------------------

def bench_run(run_dir: Path, pairs: int | None, quick: bool, log):
    paths = sorted(run_dir.glob("step-*.pb.gz"))
    if len(paths) < 2:
        raise SystemExit(f"{run_dir}: need at least two step-*.pb.gz nets")
    nets = [Net.load(p) for p in paths]
    count = len(nets) - 1 if pairs is None else min(pairs, len(nets) - 1)
    if quick:
        count = min(count, 2)
    labels, results = [], []
    for i in range(count):
        base, target = nets[i], nets[i + 1]
        history = nets[i - 1] if i > 0 else None
        labels.append(pair_label(paths[i], paths[i + 1]))
        row = {"_weights": target.weight_count, ".pb.gz as distributed": {"size": paths[i + 1].stat().st_size, "err": 0.0}}
        bv, tv = float_values(base), float_values(target)
        for name, fn, kind in PEERS:
            if quick and name in SLOW_PEERS:
                continue
            (size, err), enc_s = harness.timed(fn, bytes(base.raw), bytes(target.raw), base_values=bv,
                                               target_values=tv)
            if size is not None:
                row[name] = {"size": size, "err": err if kind == "lossy" else 0.0, "enc_s": enc_s}
        for name, codec, tol, use_hist in our_variants(history is not None):
            if quick and use_hist:
                continue
            try:
                size, err, enc_s, dec_s = run_ours(base, target, history if use_hist else None, codec, tol)
            except lc0weights.Lc0WeightsError as e:
                # A failure is a finding: record it in the tables instead of losing the whole run.
                row[name] = {"size": None, "err": None, "failed": f"{type(e).__name__}: {e}"}
                log(f"pair {labels[-1]}: {name} FAILED: {e}")
                continue
            row[name] = {"size": size, "err": err, "enc_s": enc_s, "dec_s": dec_s}
        for mode, tol in MODES:
            row[f"order-0 entropy {mode}"] = {"size": round(residual_entropy(base, target, tol)), "err": None}
        results.append(row)
        log(f"pair {labels[-1]}: lossless default {row['ours default lossless']['size']:,} B, "
            f".pb.gz {row['.pb.gz as distributed']['size']:,} B")
    # history is missing on the first pair: fill with the plain default for the totals' sake? No:
    # keep it missing and total only over pairs that have it (reported separately).
    return paths, nets, labels, results


def failures_section(labels, results) -> str:
    lines = [f"- {labels[i]}, {m}: {results[i][m]['failed']}" for i in range(len(labels))
             for m in results[i] if not m.startswith("_") and results[i][m].get("failed")]
    return ("## Failures\n\n" + "\n".join(lines) + "\n") if lines else ""


def history_note(labels, results):
    rows = []
    for mode, _ in MODES:
        m = f"ours default+history {mode}"
        idx = [i for i in range(len(labels)) if results[i].get(m, {}).get("size")
               and results[i].get(f"ours default {mode}", {}).get("size")]
        if not idx:
            continue
        with_h = sum(results[i][m]["size"] for i in idx)
        without = sum(results[i][f"ours default {mode}"]["size"] for i in idx)
        rows.append([mode, len(idx), human(without), human(with_h), f"{100 * (with_h / without - 1):+.1f}%"])
    return harness.md_table(["mode", "pairs", "default", "default + history", "change"], rows) if rows else ""


def synthetic_large(log, quick: bool) -> tuple[list[dict], dict]:
    from lc0weights.synthetic import write_run
    blocks, filters, count = (20, 384, 3) if not quick else (10, 256, 2)
    with tempfile.TemporaryDirectory() as tmp:
        paths, gen_s = harness.timed(write_run, tmp, count=count, blocks=blocks, filters=filters, seed=11)
        nets = [Net.load(p) for p in paths]
        info = {"blocks": blocks, "filters": filters, "count": count, "raw": len(nets[0].raw),
                "weights": nets[0].weight_count, "gz": paths[1].stat().st_size, "gen_s": gen_s}
        log(f"synthetic large run: {count} nets of {info['raw'] / 1e6:.0f} MB raw in {gen_s:.0f} s")
        codecs = [("varint-brotli", "varint-brotli"), ("default", None)]
        if "cm1" in codec_ids():
            codecs.insert(1, ("cm1", "cm1"))
        modes = [("lossless", None), ("2^-14", 2.0 ** -14)] if not quick else [("lossless", None)]
        rows = speed_rows(nets[0], nets[1], paths[0], codecs, modes, [1, 2])
        if count > 2:
            p = make_patch(nets[1], nets[2], verify=False)
            info["second_pair_default_lossless"] = len(p)
        info["pair_default_lossless"] = next(r["size"] for r in rows if r["codec"] == "default" and r["mode"] == "lossless")
    return rows, info


# measured with the shared maia-distill run (13 nets) on 2 cores shared with other work
RUN_TIME = "on 2 cores about 3 min (--quick: about 40 s; --synthetic-large adds about 8 min)"


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        description=__doc__.splitlines()[0],
        epilog="Needs the bench extra: pip install -e '.[bench]'. Runs " + RUN_TIME + ".")
    ap.add_argument("run_dir", nargs="?", type=Path, default=DEFAULT_RUN,
                    help="folder of step-*.pb.gz nets (default: the shared maia-distill run)")
    ap.add_argument("--pairs", type=int, help="only the first N pairs")
    ap.add_argument("--quick", action="store_true", help="2 pairs, skip slow peers and history, small speed run")
    ap.add_argument("--synthetic-large", action="store_true",
                    help="also generate a large synthetic run (~113 MB raw nets) and measure speed and memory on it")
    ap.add_argument("--out", type=Path,
                    help="folder for the reports, e.g. docs to update the published figures "
                         "(default: a new temporary folder)")
    return ap


def main(argv=None) -> int:
    ap = build_parser()
    args = ap.parse_args(argv)
    if args.out is None:
        args.out = Path(tempfile.mkdtemp(prefix="lc0weights-bench-"))
    command = harness.command_line("tools/bench.py", argv)
    log = harness.log

    run_dir = args.run_dir.resolve()
    paths, nets, labels, results = bench_run(run_dir, args.pairs, args.quick, log)
    name = run_dir.name
    args.out.mkdir(parents=True, exist_ok=True)
    raw_size = len(nets[0].raw)
    pbgz_total = sum(r[".pb.gz as distributed"]["size"] for r in results)
    all_methods = [m for m in results[-1] if not m.startswith("_")]
    for r in results:
        for m in r:
            if not m.startswith("_") and m not in all_methods:
                all_methods.append(m)

    chart_methods = [".pb.gz as distributed", "xz -9e", "XOR prev + gzip -9", "zstd -19 --patch-from", "bsdiff4",
                     "original (x2^17, bz2)", "SZ3 T=2^-17", "SZ3 T=2^-10", "ours varint-brotli lossless",
                     "ours default lossless", "ours default 2^-17", "ours default 2^-14", "ours default 2^-10",
                     "order-0 entropy lossless"]
    png = args.out / f"bench-{name}.png"
    write_chart(png, labels, results, [m for m in chart_methods if m in all_methods],
                f"{name}: bytes per successive net ({nets[0].weight_count:,} weights, {raw_size:,} B raw)")

    # speed and memory on one real pair (the middle one)
    mid = len(labels) // 2
    codecs = [("varint-brotli", "varint-brotli"), ("default", None)]
    if "cm1" in codec_ids():
        codecs.insert(1, ("cm1", "cm1"))
    speed = speed_rows(nets[mid], nets[mid + 1], paths[mid], codecs,
                       [("lossless", None), ("2^-14", 2.0 ** -14)], [1, 2] if not args.quick else [1])
    large_rows, large_info = synthetic_large(log, args.quick) if args.synthetic_large else ([], None)

    core_cols = [(".pb.gz", ".pb.gz as distributed")]
    core_cols += [(f"baseline {mode}", f"ours varint-brotli {mode}") for mode, _ in MODES]
    best_cols = [(".pb.gz", ".pb.gz as distributed")] + [(f"default {mode}", f"ours default {mode}") for mode, _ in MODES]
    if "cm1" in codec_ids():
        best_cols.insert(1, ("cm1 lossless", "ours cm1 lossless"))
    env = (f"Python {platform.python_version()}, numpy {np.__version__}, lc0weights {lc0weights.__version__}, "
           f"{os.cpu_count()} cores ({platform.machine()}), codecs: {', '.join(codec_ids())}")

    detail = [f"# Benchmark: {name}", "",
              f"Produced by `{command}` ({time.strftime('%Y-%m-%d')}; {env}).", "",
              f"{len(labels)} pairs of successive nets from `{name}`: {nets[0].weight_count:,} weights, "
              f"{raw_size:,} bytes raw, {len(nets[0].layers)} layers. Lossy patches are made against the exact "
              "base. Every patch was applied again and checked: lossless ones by sha256, lossy ones weight by "
              "weight (max error column). Sizes in bytes.", "",
              f"![patch size per pair]({png.name})", "",
              "## All methods, summed over the pairs", "",
              method_table(all_methods, results, labels, raw_size, pbgz_total), "",
              "`default+history` rows are missing on the first pair (no predecessor); see the history table.", "",
              failures_section(labels, results),
              "## Per pair: baseline codec (varint-brotli) beside the distributed .pb.gz", "",
              per_pair_table(labels, results, core_cols), "",
              "## Per pair: default (smallest codec per layer)", "",
              per_pair_table(labels, results, best_cols), "",
              "## History as context (pairs with a predecessor)", "",
              history_note(labels, results), "",
              f"## Speed and apply memory (pair {labels[mid]})", "",
              "Encode excludes verification; apply includes the sha256 check. Memory: a fresh process applies "
              "the patch file to the base loaded from .pb.gz and writes the result as .pb.gz, as `lc0weights apply` does; peak RSS is VmHWM (includes the interpreter and imports), "
              "'above start' subtracts the RSS after imports, traced peak is tracemalloc's.", "",
              speed_table(speed), ""]
    if large_info:
        detail += [f"## Large synthetic run ({large_info['blocks']} blocks x {large_info['filters']} filters)", "",
                   f"{large_info['weights']:,} weights, {large_info['raw']:,} bytes raw, .pb.gz "
                   f"{large_info['gz']:,} bytes; {large_info['count']} nets generated in {large_info['gen_s']:.0f} s "
                   "by `lc0weights.synthetic.write_run`.", "", speed_table(large_rows), ""]
    harness.write_text_atomic(args.out / f"bench-{name}.md", "\n".join(detail))
    summary = write_summary(args.out, name, command, env, labels, results, nets, raw_size, pbgz_total, speed,
                            large_rows, large_info)
    harness.write_head(args.out / "BENCHMARKS.md", summary, FOLLOW_SECTION)
    (args.out / f"bench-{name}.json").write_text(json.dumps(
        {"labels": labels, "results": results, "speed": speed, "large": large_rows, "large_info": large_info},
        indent=1, default=float))
    log(f"wrote {args.out / f'bench-{name}.md'}, {png}, {args.out / 'BENCHMARKS.md'}")
    return 0


def write_summary(out, name, command, env, labels, results, nets, raw_size, pbgz_total, speed, large_rows, large_info):
    def total(m):
        vals = [results[i].get(m, {}).get("size") for i in range(len(labels))]
        return sum(vals) if all(v is not None for v in vals) else None

    head = [".pb.gz as distributed", "xz -9e", "XOR prev + gzip -9", "zstd -19 --patch-from", "bsdiff4",
            "ours varint-brotli lossless", "ours cm1 lossless", "ours default lossless", "order-0 entropy lossless",
            "NNCodec lossless", "original (x2^17, bz2)"]
    for mode, _ in TOLERANCES:
        head += [f"SZ3 T={mode}", f"NNCodec T={mode}", f"ours varint-brotli {mode}", f"ours default {mode}",
                 f"order-0 entropy {mode}"]
    rows = []
    for m in head:
        failed = [labels[i] for i in range(len(labels)) if results[i].get(m, {}).get("failed")]
        if failed:
            rows.append([m, f"FAILED on {', '.join(failed)}", "-", "-", "-"])
            continue
        t = total(m)
        if t is None:
            continue
        errs = [results[i][m].get("err") for i in range(len(labels))]
        err = "-" if any(e is None for e in errs) else ("0" if max(errs) == 0 else f"{max(errs):.3g}")
        rows.append([m, human(t), human(t / len(labels)), f"{pbgz_total / t:.1f}x", err])
    lines = ["# Benchmarks", "",
             f"Produced by `{command}` (needs `.venv/bin/pip install -e '.[bench]'`; runs {RUN_TIME}); details per pair and method in [bench-{name}.md](bench-{name}.md), "
             f"chart [bench-{name}.png](bench-{name}.png). {env}.", "",
             f"Data: `{name}`, {len(labels)} pairs of successive checkpoints of one SGD training run, "
             f"{nets[0].weight_count:,} weights, {raw_size:,} bytes raw per net. Every patch was applied and "
             "checked (sha256 for lossless, every decoded weight for lossy).", "",
             f"![patch size per pair](bench-{name}.png)", "",
             "## Bytes to ship every net of the run after the first", "",
             harness.md_table(["method", "total bytes", "mean per pair", "smaller than .pb.gz by", "max error"],
                              rows), "",
             failures_section(labels, results),
             "The original scheme is lossy (truncation at 2^-17); SZ3 bounds the error of the float difference "
             "and its result is float, not a LINEAR16 net (re-quantising would add up to half a code step). Our "
             "lossy patches output LINEAR16 nets an engine loads, every weight within the tolerance.", "",
             "## Speed and memory", "", speed_table(speed), ""]
    if large_info:
        lines += [f"Large synthetic nets ({large_info['blocks']}x{large_info['filters']}, "
                  f"{large_info['raw'] / 1e6:.0f} MB raw, {large_info['weights'] / 1e6:.1f} M weights; "
                  "memory target: apply peak <= 2.5x raw):", "", speed_table(large_rows), ""]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
