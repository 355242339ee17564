"""Benchmarks of chunked layers: what chunking costs in bytes, and big nets to time apply on.

    python tools/bench_chunks.py sizes RUN_DIR 262144,65536,16384 [NETS]
        total patch bytes over successive nets of a run (lossless and 2^-14, with
        history), per chunk size, relative to the first size given
    python tools/bench_chunks.py bignet one60m|bt4 DIR
        write DIR/base.pb and DIR/target.pb: one 60M-weight LINEAR16 layer, or a
        BT4-sized net (88 convolutions of 2.1M weights, ~186M weights, 374 MB)

Then time apply, e.g. on one core and on two (peak RSS in "Maximum resident set size"):

    /usr/bin/time -v taskset -c 0   lc0weights apply DIR/base.pb DIR/patch.lc0p -o out.pb --workers 1
    /usr/bin/time -v taskset -c 0,1 lc0weights apply DIR/base.pb DIR/patch.lc0p -o out.pb --workers 2
"""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from lc0weights import Net, make_patch  # noqa: E402
from lc0weights.proto import lc0net_pb2 as pb  # noqa: E402
from netfactory import fill_layer  # noqa: E402


def sizes(run: Path, chunk_sizes: list[int], limit: int = 99) -> None:
    nets = [Net.load(p) for p in sorted(run.glob("*.pb.gz"))[:limit]]
    print(run.name, "largest layer", max(l.count for l in nets[0].layers if l.codable), "nets", len(nets))
    for tolerance in (None, 2.0 ** -14):
        totals = dict.fromkeys(chunk_sizes, 0)
        for i in range(1, len(nets)):
            history = nets[i - 2] if i >= 2 else None
            for c in chunk_sizes:
                totals[c] += len(make_patch(nets[i - 1], nets[i], tolerance, history=history,
                                            verify=False, chunk_size=c))
        ref = totals[chunk_sizes[0]]
        print("tolerance", tolerance, " ".join(f"{c}: {n:,} ({100 * (n - ref) / ref:+.3f}%)"
                                               for c, n in totals.items()), flush=True)


def bignet(kind: str, out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(11)
    nets = [pb.Net(magic=0x1C0), pb.Net(magic=0x1C0)]

    def pair(get, n, scale=0.05):
        w = rng.normal(0, scale, n).astype(np.float32)
        fill_layer(get(nets[0]), w)
        w += rng.normal(0, scale * 4e-3, n).astype(np.float32)
        fill_layer(get(nets[1]), w)

    if kind == "one60m":
        pair(lambda net: net.weights.input.weights, 104167 * 64 * 9)
        pair(lambda net: net.weights.input.biases, 104167)
    else:
        f = 483
        for b in range(44):
            for net in nets:
                net.weights.residual.add()
            for conv in ("conv1", "conv2"):
                pair(lambda net: getattr(net.weights.residual[b], conv).weights, f * f * 9)
                for leaf in ("biases", "bn_means", "bn_stddivs"):
                    pair(lambda net: getattr(getattr(net.weights.residual[b], conv), leaf), f)
            pair(lambda net: net.weights.residual[b].se.w1, f * 32)
            pair(lambda net: net.weights.residual[b].se.b1, 32)
            pair(lambda net: net.weights.residual[b].se.w2, 32 * 2 * f)
            pair(lambda net: net.weights.residual[b].se.b2, 2 * f)
    for name, net in zip(("base", "target"), nets):
        (out / f"{name}.pb").write_bytes(net.SerializeToString())


if __name__ == "__main__":
    if len(sys.argv) >= 4 and sys.argv[1] == "sizes":
        sizes(Path(sys.argv[2]), [int(s) for s in sys.argv[3].split(",")],
              int(sys.argv[4]) if len(sys.argv) > 4 else 99)
    elif len(sys.argv) == 4 and sys.argv[1] == "bignet" and sys.argv[2] in ("one60m", "bt4"):
        bignet(sys.argv[2], Path(sys.argv[3]))
    else:
        sys.exit(__doc__)
