"""The ``fetch`` and ``check`` subcommands of the ``lc0weights`` command line."""
from __future__ import annotations

import json
import sys

from .download import TransferPolicy


def add_commands(subparsers) -> None:
    p = subparsers.add_parser(
        "fetch", help="get a published net, downloading as few bytes as possible",
        description="Bring the local cache up to a published net: patches from a net the cache "
                    "already holds when that is cheaper, a full download otherwise.")
    p.add_argument("url", metavar="URL", help="repository URL (http://...) or repository directory")
    p.add_argument("--net", default="latest", help="'latest' (default) or a net id (8+ hex digits)")
    p.add_argument("--cache", metavar="DIR", help="cache folder (default: the user cache folder)")
    p.add_argument("-o", "--output", metavar="OUT", help="also write the net here (.pb.gz)")
    p.add_argument("--client-layout", action="store_true",
                   help="keep the cache as the training client does: gzip files named by net id")
    p.add_argument("--tolerance", type=float, metavar="T",
                   help="accept a published lossy net within T of every weight")
    p.add_argument("--timeout", type=float, default=30.0, help="network timeout in seconds")
    p.add_argument("--retries", type=int, default=4, help="retries per download")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.add_argument("--have", action="append", metavar="FILE",
                   help="a net file held elsewhere, usable as a patch base (repeatable)")
    p.add_argument("--trust", metavar="KEY", help="the repository's root key (ed25519:... or @FILE)")
    p.add_argument("--follow", action="store_true",
                   help="keep running: fetch every new latest net as it is published")
    p.add_argument("--interval", type=float, default=60.0, metavar="SECONDS",
                   help="with --follow: seconds between polls (default 60)")
    p.add_argument("--keep", type=int, default=2, metavar="N",
                   help="with --follow: nets kept in the cache (default 2)")
    p.set_defaults(run=run_fetch)

    c = subparsers.add_parser(
        "check", help="re-apply every published patch and verify every net id",
        description="Verify a published repository: every net id, every patch, every tolerance.")
    c.add_argument("url", metavar="REPO_DIR_OR_URL")
    c.add_argument("--timeout", type=float, default=30.0, help="network timeout in seconds")
    c.add_argument("--json", action="store_true", help="print the report as JSON")
    c.set_defaults(run=run_check)

    from .mirror import add_mirror_command
    add_mirror_command(subparsers)


def run_fetch(args) -> int:
    from .fetch import fetch
    policy = TransferPolicy(timeout=args.timeout, retries=max(0, args.retries))
    if args.follow:
        if args.net != "latest" or args.output or args.tolerance is not None or args.json:
            raise ValueError("--follow keeps the cache at the latest exact net: "
                             "--net, -o, --tolerance and --json do not apply")
        from .follow import run_follow
        policy.progress = False
        return run_follow(args, policy)
    extra = {} if args.trust is None else {"trust": args.trust}
    result = fetch(args.url, net=args.net, cache_dir=args.cache, out=args.output,
                   client_layout=args.client_layout, tolerance=args.tolerance, policy=policy,
                   have=args.have or (), **extra)
    if args.json:
        print(json.dumps(result.to_dict(), indent=1))
    else:
        share = 100.0 * result.bytes_downloaded / result.full_size if result.full_size else 0.0
        print(f"{result.net_id}  {result.out or result.path}")
        print(f"route: {result.route}; downloaded {result.bytes_downloaded:,} bytes "
              f"({share:.1f}% of the {result.full_size:,}-byte full net) in {result.seconds:.2f} s")
        for failure in result.fallbacks:
            print(f"fell back after: {failure}", file=sys.stderr)
    return 0


def run_check(args) -> int:
    from .check import check_repository
    report = check_repository(args.url, TransferPolicy(timeout=args.timeout, progress=False))
    if args.json:
        print(json.dumps({"nets": report.nets, "patches": report.patches,
                          "failures": report.failures}, indent=1))
    else:
        for failure in report.failures:
            print(f"FAIL {failure}")
        state = "ok" if report.ok else f"{len(report.failures)} failure(s)"
        print(f"checked {report.nets} nets and {report.patches} patches: {state}")
    return 0 if report.ok else 1
