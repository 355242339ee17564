"""Where a full download starts to beat a patch, by time, for a net of a given size.

    python tools/route_breakeven.py [--cache DIR] [--gz BYTES] [--raw BYTES] [--patch-share S]

Builds a two-net repository index of the given sizes (defaults: lc0's 334 MB
``.pb.gz``, 450 MB raw, a patch 0.4 of the net), takes the machine's rates
from the rate book in ``--cache`` (the defaults when absent or unmeasured),
and bisects the link rate at which ``fetch --prefer time`` switches from the
patch to the full net. Prints that rate and both routes' estimated seconds
at a few usual link speeds. The cost model is :mod:`lc0weights.client.route`.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from lc0weights.client.link_rate import Rate, RateBook, Rates  # noqa: E402
from lc0weights.client.route import TimeCosts, cheapest_route  # noqa: E402
from lc0weights.repository.index import (Catalogue, NetEntry, PatchEntry,  # noqa: E402
                                           net_object_path, patch_object_path)

OLD, NEW = "a" * 64, "b" * 64


def two_nets(gz: int, raw: int, patch: int) -> Catalogue:
    nets = [NetEntry(i, net_object_path(i), gz, "0" * 64, raw, None, "", None) for i in (OLD, NEW)]
    return Catalogue(nets=nets, patches=[PatchEntry(OLD, NEW, NEW, patch_object_path("c" * 64), patch,
                                                          "c" * 64)], latest=NEW)


def with_link(machine: Rates, link: float) -> Rates:
    return Rates(Rate(link, 1), machine.rebuild, machine.gzip, machine.gunzip)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cache", metavar="DIR", help="read the machine's measured rates from this cache folder")
    ap.add_argument("--gz", type=float, default=334e6, help="bytes of the full .pb.gz (default 334e6)")
    ap.add_argument("--raw", type=float, default=450e6, help="bytes of the raw net (default 450e6)")
    ap.add_argument("--patch-share", type=float, default=0.4, help="patch size / .pb.gz size (default 0.4)")
    args = ap.parse_args()
    book = RateBook.load(args.cache) if args.cache else RateBook()
    machine = book.rates("link local")
    index = two_nets(int(args.gz), int(args.raw), int(args.gz * args.patch_share))
    for name in ("rebuild", "gzip", "gunzip"):
        rate = getattr(machine, name)
        print(f"{name:8s} {rate.bytes_per_s / 1e6:8.1f} MB/s ({'measured' if rate.measured else 'default'})")
    lo, hi = 1e3, 1e11
    for _ in range(100):
        mid = (lo * hi) ** 0.5
        costs = TimeCosts(index, with_link(machine, mid))
        lo, hi = (mid, hi) if cheapest_route(index, {NEW}, {OLD}, costs=costs).patch_count else (lo, mid)
    print(f"break-even link: {lo / 1e6:.2f} MB/s ({lo * 8 / 1e6:.0f} Mbit/s); the patch wins below it")
    for mbit in (8, 16, 50, 100, 300, 1000):
        costs = TimeCosts(index, with_link(machine, mbit * 1e6 / 8))
        patch = cheapest_route(index, {NEW}, {OLD}, costs=costs, exclude={index.nets[1].path})
        full = cheapest_route(index, {NEW}, set(), costs=costs)
        print(f"{mbit:5d} Mbit/s: patch {patch.seconds:7.1f} s, full {full.seconds:7.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
