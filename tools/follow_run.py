"""Follow a training run as a client would: publish each net, fetch it, count the bytes.

    python tools/follow_run.py [RUN_DIR] [--codec ID] [--every N] [--tolerance T]
    python tools/follow_run.py [RUN_DIR] --mirror [--codec ID]

Nets are published one at a time (as the watcher would) into a temporary
repository served on localhost. After each publish a client that follows
every net fetches the latest; a second client checks in only every N nets.
Prints a Markdown report: bytes downloaded with patches vs full downloads,
and the time of each fetch. With ``--tolerance T`` the repository also keeps
a lossy chain and both clients fetch with that tolerance, so they follow it.

With ``--mirror``, a stand-in for lczero-client (tests/lczero_client_standin.py)
gets each net through ``lc0weights mirror`` instead, in two set-ups: the client
keeps its cache while the mirror starts with an empty one for every net (its
bases come from the client's folder only), and the client keeps no cache (as
the official Docker runner) while the mirror's cache persists. The report is
the mirror's bytes from upstream against full downloads.
"""
from __future__ import annotations

import argparse
import logging
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import harness  # noqa: E402  (tools/, beside this file)

from lc0weights.client import TransferPolicy, fetch  # noqa: E402
from lc0weights.settings import parse_tolerance  # noqa: E402
from service.publish import load_net_file, publish_net  # noqa: E402
from service.repository import Repository  # noqa: E402
from service.serve import RepositoryServer  # noqa: E402

DEFAULT_RUN = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "runs" / "maia-distill"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", nargs="?", default=str(DEFAULT_RUN))
    parser.add_argument("--codec", help="force one codec (default: smallest per layer)")
    parser.add_argument("--every", type=int, default=4, help="the occasional client's period")
    parser.add_argument("--tolerance", type=parse_tolerance,
                        help="publish a lossy chain too and fetch with this tolerance (e.g. 2^-14)")
    parser.add_argument("--mirror", action="store_true",
                        help="drive a stand-in lczero-client through lc0weights mirror")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    if args.mirror:
        return mirror_mode(args)
    paths = sorted(Path(args.run_dir).glob("*.pb.gz"))
    policy = TransferPolicy(progress=False)

    rows, occasional = [], []
    with tempfile.TemporaryDirectory(prefix="lc0weights-follow-") as tmp:
        tmp = Path(tmp)
        repo = Repository.create(tmp / "repo")
        with harness.ServerThread(RepositoryServer(repo.root)) as server:
            for i, path in enumerate(paths):
                net, gz = load_net_file(path)
                t0 = time.monotonic()
                published = publish_net(repo, net, gz, path.name, args.tolerance, codec=args.codec)
                publish_s = time.monotonic() - t0
                result = fetch(server.url, cache_dir=tmp / "follower", policy=policy, tolerance=args.tolerance)
                assert result.target_id == net.id
                rows.append((path.name, len(published.patches), publish_s, result))
                if i % args.every == 0 or i == len(paths) - 1:
                    occasional.append(fetch(server.url, cache_dir=tmp / "occasional", policy=policy,
                                            tolerance=args.tolerance))

    print(f"Run: `{Path(args.run_dir).name}`, {len(paths)} nets; codec: {args.codec or 'smallest per layer'}"
          + (f"; clients fetch with tolerance {args.tolerance:g}" if args.tolerance else "") + ".\n")
    print(harness.md_table(["net", "patches published", "publish s", "route", "history patch", "downloaded bytes",
                            "of which metadata", "full .pb.gz bytes", "fetch s"],
                           [[name, npatches, f"{publish_s:.1f}", r.route, "yes" if r.history_patches else "",
                             f"{r.bytes_downloaded:,}", f"{r.metadata_bytes:,}", f"{r.full_size:,}", f"{r.seconds:.2f}"]
                            for name, npatches, publish_s, r in rows], "lrrllrrrr"))
    follow = sum(r.bytes_downloaded for *_, r in rows)
    full = sum(r.full_size for *_, r in rows)
    after_first = sum(r.bytes_downloaded for *_, r in rows[1:])
    full_after_first = sum(r.full_size for *_, r in rows[1:])
    fetch_times = [r.seconds for *_, r in rows[1:]]
    print()
    print(f"- Client following every net: {follow:,} bytes downloaded vs {full:,} for full downloads "
          f"({100 * follow / full:.1f}%); after the first net {after_first:,} vs {full_after_first:,} "
          f"({100 * after_first / full_after_first:.1f}%, {full_after_first / after_first:.2f}x less).")
    print(f"- Patch fetch time: mean {sum(fetch_times) / len(fetch_times):.2f} s, "
          f"max {max(fetch_times):.2f} s (download + apply + verify, loopback).")
    occ = sum(r.bytes_downloaded for r in occasional)
    occ_full = sum(r.full_size for r in occasional)
    print(f"- Client checking in every {args.every} nets ({len(occasional)} fetches): {occ:,} bytes vs "
          f"{occ_full:,} full ({100 * occ / occ_full:.1f}%); routes: "
          + "; ".join(r.route for r in occasional) + ".")
    print("- Downloaded bytes include the metadata (timestamp and the records on the route).")
    return 0


class _MirrorRecords(logging.Handler):
    """Keeps the mirror's per-request log records (their arguments are the figures)."""

    def __init__(self):
        super().__init__(logging.INFO)
        self.served = []

    def emit(self, record):
        if record.getMessage().startswith("GET ") and " route=" in record.getMessage():
            _cmd, sha, _code, route, upstream, saved, sent, seconds = record.args
            self.served.append({"sha": sha, "route": route, "upstream": upstream, "sent": sent,
                                "seconds": seconds})


def mirror_mode(args) -> int:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    import shutil

    from lczero_client_standin import StandInClient
    from lc0weights.serving.mirror import Mirror, MirrorServer

    mirror_log = logging.getLogger("lc0weights.serving.mirror")
    records = _MirrorRecords()
    mirror_log.addHandler(records)
    mirror_log.setLevel(logging.INFO)
    mirror_log.propagate = False
    paths = sorted(Path(args.run_dir).glob("*.pb.gz"))
    policy = TransferPolicy(progress=False)

    def start_mirror(upstream, own, client_cache):
        return harness.ServerThread(MirrorServer(Mirror(upstream, cache_dir=own, client_cache=client_cache,
                                                        policy=policy))).start()

    rows = []
    with tempfile.TemporaryDirectory(prefix="lc0weights-mirror-run-") as tmp:
        tmp = Path(tmp)
        repo = Repository.create(tmp / "repo")
        upstream = harness.ServerThread(RepositoryServer(repo.root)).start()
        persistent = start_mirror(upstream.url, tmp / "mirror-b", None)
        try:
            for i, path in enumerate(paths):
                net, gz = load_net_file(path)
                publish_net(repo, net, gz, path.name, codec=args.codec)
                # A: the client keeps its cache; a mirror with an empty cache of its own.
                fresh = start_mirror(upstream.url, tmp / f"mirror-a-{i}", tmp / "client-a")
                client_a = StandInClient(tmp / "client-a", fresh.url)
                client_a.get_network(net.id)
                fresh.stop()
                a = records.served[-1]
                # B: a client with no cache (a new container each time); the mirror keeps its cache.
                shutil.rmtree(tmp / "client-b", ignore_errors=True)
                client_b = StandInClient(tmp / "client-b", persistent.url)
                client_b.get_network(net.id)
                b = records.served[-1]
                assert StandInClient.check(tmp / "client-a" / net.id, net.id)
                assert StandInClient.check(tmp / "client-b" / net.id, net.id)
                rows.append((path.name, len(gz), a, b))
        finally:
            persistent.stop()
            upstream.stop()

    print(f"Run: `{Path(args.run_dir).name}`, {len(paths)} nets; codec: {args.codec or 'smallest per layer'}; "
          "stand-in lczero-client through `lc0weights mirror`, loopback.\n")
    print(harness.md_table(["net", "full .pb.gz bytes", "A: route", "A: upstream bytes", "B: route",
                            "B: upstream bytes", "B: s"],
                           [[name, f"{full:,}", a["route"], f"{a['upstream']:,}", b["route"], f"{b['upstream']:,}",
                             f"{b['seconds']:.2f}"] for name, full, a, b in rows], "lrlrlrr"))
    full = sum(r[1] for r in rows)
    full_after = sum(r[1] for r in rows[1:])
    print()
    for label, key in (("A (client cache kept, mirror cache empty)", 2),
                       ("B (client cache empty, mirror cache kept)", 3)):
        total = sum(r[key]["upstream"] for r in rows)
        after = sum(r[key]["upstream"] for r in rows[1:])
        print(f"- {label}: {total:,} bytes from upstream vs {full:,} for full downloads "
              f"({100 * total / full:.1f}%); after the first net {after:,} vs {full_after:,} "
              f"({full_after / after:.2f}x less).")
    sent = sum(r[3]["sent"] for r in rows)
    print(f"- The client itself always receives whole gzip nets from the mirror ({sent:,} bytes in B, "
          "over loopback); upstream bytes include the index.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
