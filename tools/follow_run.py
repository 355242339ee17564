"""Follow a training run as a client would: publish each net, fetch it, count the bytes.

    python tools/follow_run.py [RUN_DIR] [--codec ID] [--every N]

Nets are published one at a time (as the watcher would) into a temporary
repository served on localhost. After each publish a client that follows
every net fetches the latest; a second client checks in only every N nets.
Prints a Markdown report: bytes downloaded with patches vs full downloads,
and the time of each fetch.
"""
from __future__ import annotations

import argparse
import logging
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from lc0weights.distribution import TransferPolicy, fetch  # noqa: E402
from service.publish import load_net_file, publish_net  # noqa: E402
from service.repository import Repository  # noqa: E402
from service.serve import RepositoryServer  # noqa: E402

DEFAULT_RUN = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "runs" / "maia-distill"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", nargs="?", default=str(DEFAULT_RUN))
    parser.add_argument("--codec", help="force one codec (default: smallest per layer)")
    parser.add_argument("--every", type=int, default=4, help="the occasional client's period")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    paths = sorted(Path(args.run_dir).glob("*.pb.gz"))
    policy = TransferPolicy(progress=False)

    rows, occasional = [], []
    with tempfile.TemporaryDirectory(prefix="lc0weights-follow-") as tmp:
        tmp = Path(tmp)
        repo = Repository.create(tmp / "repo")
        server = RepositoryServer(repo.root)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        try:
            for i, path in enumerate(paths):
                net, gz = load_net_file(path)
                t0 = time.monotonic()
                published = publish_net(repo, net, gz, path.name, codec=args.codec)
                publish_s = time.monotonic() - t0
                result = fetch(server.url, cache_dir=tmp / "follower", policy=policy)
                assert result.net_id == net.id
                rows.append((path.name, len(published.patches), publish_s, result))
                if i % args.every == 0 or i == len(paths) - 1:
                    occasional.append(fetch(server.url, cache_dir=tmp / "occasional", policy=policy))
        finally:
            server.shutdown()
            server.server_close()

    print(f"Run: `{Path(args.run_dir).name}`, {len(paths)} nets; codec: {args.codec or 'smallest per layer'}.\n")
    print("| net | patches published | publish s | route | downloaded bytes | full .pb.gz bytes | fetch s |")
    print("|---|---:|---:|---|---:|---:|---:|")
    for name, npatches, publish_s, r in rows:
        print(f"| {name} | {npatches} | {publish_s:.1f} | {r.route} | {r.bytes_downloaded:,} | "
              f"{r.full_size:,} | {r.seconds:.2f} |")
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
    print("- Downloaded bytes include the index (it grows with the repository).")
    return 0


if __name__ == "__main__":
    sys.exit(main())
