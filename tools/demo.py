"""Publish a training run, serve it, and bring an old client up to the latest net.

    .venv/bin/python tools/demo.py [NET_DIR]

With no NET_DIR a small synthetic run is generated first. A signing key is
made (as ``lc0weights-server keygen`` does), the nets are published into a
temporary signed repository (a patch from each predecessor plus skip
patches), served on a free localhost port, a client cache is seeded with the
next-to-last net, and ``fetch`` with the public key pinned (``--trust``)
brings it to the latest one. The last lines compare the bytes downloaded for
that one step with a full download.
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

from lc0weights import Net  # noqa: E402
from lc0weights.client import TransferPolicy, check_repository, fetch  # noqa: E402
from lc0weights.repository.keys import SigningKey  # noqa: E402
from service.publish import publish  # noqa: E402
from service.repository import Repository  # noqa: E402
from service.serve import RepositoryServer  # noqa: E402


def net_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.name.endswith((".pb.gz", ".pb")))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("net_dir", nargs="?", help="folder of successive nets (default: synthetic run)")
    parser.add_argument("--count", type=int, default=6, help="synthetic nets to generate")
    parser.add_argument("--codec", help="force one codec (default: smallest per layer)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(message)s")

    with tempfile.TemporaryDirectory(prefix="lc0weights-demo-") as tmp:
        tmp = Path(tmp)
        if args.net_dir:
            paths = net_files(Path(args.net_dir))
        else:
            from lc0weights.synthetic import write_run
            print(f"generating a synthetic run of {args.count} nets ...")
            paths = write_run(tmp / "run", count=args.count, seed=7)
        if len(paths) < 2:
            print("need at least two nets", file=sys.stderr)
            return 1

        key = SigningKey.generate()
        key.save(tmp / "online.key")
        print(f"signing key {tmp / 'online.key'}; clients pin --trust {key.public.text}")
        repo = Repository.create(tmp / "repo", key)
        started = time.monotonic()
        for result in publish(repo, paths, codec=args.codec):
            sizes = ", ".join(f"{p.size:,}" for p in result.patches) or "-"
            print(f"published {result.source:<22} {result.net_id[:12]}  patches: {sizes}")
        print(f"published {len(paths)} nets in {time.monotonic() - started:.1f} s")

        server = RepositoryServer(repo.root)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        print(f"serving {repo.root} at {server.url}")
        try:
            old = Net.load(paths[-2])
            cache = tmp / "client-cache"
            cache.mkdir()
            old.save(cache / f"{old.id}.pb.gz")
            print(f"client holds {paths[-2].name} ({old.id[:12]}); fetching the latest, "
                  "signatures checked against the pinned key ...")
            policy = TransferPolicy(progress=True)
            result = fetch(server.url, cache_dir=cache, out=tmp / "latest.pb.gz", policy=policy,
                           trust=key.public.text)
            assert Net.load(result.out).id == result.net_id == repo.read_index().latest
            report = check_repository(server.url, trust=key.public)
        finally:
            server.shutdown()
            server.server_close()

        print(f"route: {result.route}  (signed metadata and net id verified: {result.net_id[:12]})")
        print(f"one net behind: downloaded {result.bytes_downloaded:,} bytes "
              f"({result.metadata_bytes:,} of them signed metadata) "
              f"vs {result.full_size:,} bytes for the full net: "
              f"{100.0 * result.bytes_downloaded / result.full_size:.1f}%, "
              f"{result.full_size / max(1, result.bytes_downloaded):.1f}x less, in {result.seconds:.2f} s")
        print(f"check: {report.nets} nets, {report.patches} patches, "
              f"{'all verified' if report.ok else report.failures}")
        return 0 if report.ok else 1


if __name__ == "__main__":
    sys.exit(main())
