"""``lc0weights-server``: publish, watch, serve and prune a net repository."""
from __future__ import annotations

import argparse
import logging
import sys

from lc0weights.cli import run_command
from lc0weights.errors import Lc0WeightsError


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="lc0weights-server",
                                     description="Publish lc0 nets as small verified patches.")
    parser.add_argument("-v", "--verbose", action="store_true", help="log more")
    sub = parser.add_subparsers(dest="command", required=True)

    def publishing_options(p):
        p.add_argument("--repo", required=True, metavar="DIR", help="repository folder")
        p.add_argument("--tolerance", type=float, metavar="T",
                       help="also publish a lossy chain within T of every weight")
        p.add_argument("--codec", help="force one codec id for every layer (default: smallest)")

    p = sub.add_parser("publish", help="add nets to the repository, in order")
    publishing_options(p)
    p.add_argument("nets", nargs="+", metavar="NET", help=".pb.gz files, oldest first")
    p.set_defaults(func=_publish)

    w = sub.add_parser("watch", help="publish each new net dropped into a folder")
    publishing_options(w)
    w.add_argument("--incoming", required=True, metavar="DIR", help="folder the trainer writes to")
    w.add_argument("--interval", type=float, default=2.0, help="seconds between polls")
    w.add_argument("--once", action="store_true", help="one pass (two polls), then exit")
    w.set_defaults(func=_watch)

    s = sub.add_parser("serve", help="serve the repository over HTTP")
    s.add_argument("--repo", required=True, metavar="DIR")
    s.add_argument("--host", default="127.0.0.1")
    s.add_argument("--port", type=int, default=8000)
    s.set_defaults(func=_serve)

    r = sub.add_parser("prune", help="keep only the newest nets")
    r.add_argument("--repo", required=True, metavar="DIR")
    r.add_argument("--keep", type=int, required=True, metavar="N")
    r.set_defaults(func=_prune)
    return parser


def _publish(args) -> int:
    from .publish import publish
    from .repository import Repository
    for result in publish(Repository.create(args.repo), args.nets, args.tolerance, args.codec):
        state = f"{len(result.patches)} patches" if result.new else "already published"
        sizes = ", ".join(f"{p.size:,}" for p in result.patches)
        print(f"{result.net_id}  {result.source}: {state}{f' ({sizes} bytes)' if sizes else ''}")
    return 0


def _watch(args) -> int:
    from .repository import Repository
    from .watch import Watcher
    watcher = Watcher(args.incoming, Repository.create(args.repo), args.interval,
                      args.tolerance, args.codec)
    if args.once:
        watcher.run_once()
    else:
        try:
            watcher.run()
        except KeyboardInterrupt:
            pass
    return 0


def _serve(args) -> int:
    from .serve import serve
    serve(args.repo, args.host, args.port)
    return 0


def _prune(args) -> int:
    from .prune import prune
    from .repository import Repository
    if args.keep < 1:
        raise Lc0WeightsError("--keep must be at least 1")
    report = prune(Repository(args.repo), args.keep)
    print(f"removed {report.nets_removed} nets, {report.patches_removed} patches; "
          f"deleted {report.files_deleted} files")
    return 0


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(message)s")
    return run_command("lc0weights-server", args.func, args)


if __name__ == "__main__":
    sys.exit(main())
