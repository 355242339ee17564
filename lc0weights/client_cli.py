"""The ``fetch``, ``check`` and ``mirror`` subcommands of the ``lc0weights`` command line."""
from __future__ import annotations

import json
import os
import sys

from .errors import Lc0WeightsError
from .settings import PREFER_CHOICES, config_path, parse_tolerance, prefer_setting, setting


INTERVAL, KEEP = 60.0, 2          # fetch --follow's defaults


def add_commands(subparsers) -> None:
    p = subparsers.add_parser(
        "fetch", help="get a published net, downloading as few bytes as possible",
        description="Bring the local cache up to a published net: patches from a net the cache "
                    "already holds when that is cheaper, a full download otherwise.")
    p.add_argument("url", metavar="URL", nargs="?",
                   help="repository URL (http://...) or repository directory (default: $LC0WEIGHTS_URL "
                        "or 'url' in the config file)")
    p.add_argument("--net", default="latest", help="'latest' (default) or a net id (16+ hex digits)")
    p.add_argument("--cache", metavar="DIR",
                   help="cache folder (default: $LC0WEIGHTS_CACHE, the config file, else the user cache folder)")
    add_trust_option(p)
    p.add_argument("-o", "--output", metavar="OUT", help="also write the net here (.pb.gz)")
    p.add_argument("-f", "--force", action="store_true", help="overwrite an existing -o file")
    p.add_argument("--client-layout", action="store_true",
                   help="--cache is lczero-client's folder (default: its own): only verified nets go there, "
                        "as gzip files named by net id; lc0weights' state and bases stay in its user cache")
    p.add_argument("--tolerance", type=parse_tolerance, metavar="T",
                   help="accept a published lossy net within T of every weight; 2^-14 and finer keep the "
                        "engine's play, 2^-10 moves it as much as a training step (see README)")
    p.add_argument("--prefer", choices=PREFER_CHOICES,
                   help="route by least estimated time (download at the measured link rate plus "
                        "rebuilding) or by fewest bytes (default: $LC0WEIGHTS_PREFER, 'prefer' in the "
                        "config file, else time)")
    p.add_argument("--timeout", type=float, default=30.0, metavar="SECONDS",
                   help="network timeout in seconds")
    p.add_argument("--retries", type=int, default=4, metavar="N", help="retries per download")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.add_argument("--have", action="append", metavar="FILE",
                   help="a net file held elsewhere, usable as a patch base (repeatable)")
    p.add_argument("--follow", action="store_true",
                   help="keep running: fetch every new latest net as it is published")
    p.add_argument("--interval", type=float, default=None, metavar="SECONDS",
                   help=f"with --follow: seconds between polls (default {INTERVAL:g})")
    p.add_argument("--keep", type=int, default=None, metavar="N",
                   help=f"with --follow: nets kept in the cache (default {KEEP})")
    p.set_defaults(run=run_fetch)

    c = subparsers.add_parser(
        "check", help="re-apply every published patch and verify every net id",
        description="Verify a published repository: every net id, every patch, every tolerance.")
    c.add_argument("url", metavar="REPO_DIR_OR_URL", nargs="?",
                   help="repository URL or directory (default: $LC0WEIGHTS_URL or the config file)")
    add_trust_option(c)
    c.add_argument("--timeout", type=float, default=30.0, metavar="SECONDS",
                   help="network timeout in seconds")
    c.add_argument("--json", action="store_true", help="print the report as JSON")
    c.set_defaults(run=run_check)

    from .serving.mirror_options import add_mirror_command
    add_mirror_command(subparsers, run_mirror)


def add_trust_option(p) -> None:
    p.add_argument("--trust", metavar="KEY",
                   help="the repository's public key, as 'lc0weights-server keygen' printed it "
                        "(ed25519:...), or @FILE holding it; default: $LC0WEIGHTS_TRUST or 'trust' in the "
                        "config file. Without one, nothing is authenticated (a warning -q does not silence)")


def client_settings(args):
    """Fill url, cache and trust from the environment or config file when not given."""
    args.url = setting("url", args.url)
    if not args.url:
        raise Lc0WeightsError("no repository given: pass URL, or set LC0WEIGHTS_URL or 'url' in "
                              f"{config_path()}")
    if hasattr(args, "cache"):
        args.cache = setting("cache", args.cache)
        if args.cache and os.path.exists(args.cache) and not os.path.isdir(args.cache):
            raise Lc0WeightsError(f"{args.cache}: is a file; --cache takes a folder (made if missing)")
    args.trust = setting("trust", args.trust)
    return args


def run_fetch(args) -> int:
    from .client.fetch import fetch
    from .client.transfer_policy import TransferPolicy
    client_settings(args)
    args.prefer = prefer_setting(args.prefer)
    policy = TransferPolicy(timeout=args.timeout, retries=args.retries,
                            progress=getattr(args, "progress", True))
    if not args.follow:
        given = [name for name, value in (("--keep", args.keep), ("--interval", args.interval))
                 if value is not None]
        if given:
            raise ValueError(f"{' and '.join(given)} only apply with --follow (fetch once, or add --follow)")
    args.keep = KEEP if args.keep is None else args.keep
    args.interval = INTERVAL if args.interval is None else args.interval
    if args.follow:
        if args.net != "latest" or args.output or args.tolerance is not None or args.json:
            raise ValueError("--follow keeps the cache at the latest exact net: "
                             "--net, -o, --tolerance and --json do not apply")
        from .client.follow import run_follow
        policy.progress = False
        return run_follow(args, policy)
    if args.output:
        from .console import check_output
        check_output(args.output, args.have or (), args.force)
    result = fetch(args.url, net=args.net, cache_dir=args.cache, out=args.output,
                   client_layout=args.client_layout, tolerance=args.tolerance, policy=policy,
                   trust=args.trust, have=args.have or (), prefer=args.prefer)
    if args.json:
        print(json.dumps(result.to_dict(), indent=1))
    else:
        print(f"{result.net_id}  {result.out or result.path}")
        if result.full_size:
            share = 100.0 * result.bytes_downloaded / result.full_size
            print(f"route: {result.route}; downloaded {result.bytes_downloaded:,} bytes "
                  f"({share:.1f}% of the {result.full_size:,}-byte full net) in {result.seconds:.2f} s")
        else:
            print(f"route: {result.route}; downloaded {result.bytes_downloaded:,} bytes of metadata "
                  f"in {result.seconds:.2f} s")
        estimate = result.estimate
        if estimate.get("bytes"):
            link = estimate["rates"]["link"]
            print(f"chosen by {result.prefer}: estimated {estimate['seconds']:.1f} s at "
                  f"{link['bytes_per_s'] / 1e6:.1f} MB/s ({'measured' if link['measured'] else 'default'}) "
                  f"from {estimate['link']}")
        if not getattr(args, "quiet", False):
            for failure in result.fallbacks:
                print(f"fell back after: {failure}", file=sys.stderr)
    return 0


def run_mirror(args) -> int:
    from .serving.mirror import run_mirror
    return run_mirror(args)


def run_check(args) -> int:
    from .client.check import check_repository
    from .client.transfer_policy import TransferPolicy
    client_settings(args)
    report = check_repository(args.url, TransferPolicy(timeout=args.timeout, progress=False), trust=args.trust)
    if args.json:
        print(json.dumps({"nets": report.nets, "patches": report.patches, "skipped": report.skipped,
                          "failures": report.failures, "kinds": report.kinds}, indent=1))
    else:
        for failure in report.first_of_each_kind():
            print(f"FAIL {failure}")
        if len(report.failures) > len(report.kinds):
            print(f"({len(report.failures)} failures in all: "
                  + ", ".join(f"{n} {kind}" for kind, n in report.kinds.items()) + ")")
        from .console import plural
        state = "ok" if report.ok else plural(len(report.failures), "failure")
        skipped = (f" ({plural(report.skipped, 'patch', 'patches')} skipped: only nets pruned from the "
                   "repository rebuild their base)" if report.skipped else "")
        print(f"checked {plural(report.nets, 'net')} and {plural(report.patches, 'patch', 'patches')}: "
              f"{state}{skipped}")
    return 0 if report.ok else 1
