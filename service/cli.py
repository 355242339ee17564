"""``lc0weights-server``: publish, watch, serve and prune a net repository."""
from __future__ import annotations

import argparse
import logging
import sys

from lc0weights import __version__
from lc0weights.cli_args import (SubcommandParser, finish_parser, output_options, parse_codec,
                                 positive_int, run_command, settle_output_options)
from lc0weights.console import plural
from lc0weights.errors import Lc0WeightsError
from lc0weights.settings import parse_duration, parse_tolerance

from .repository import DEFAULT_EXPIRES, ROOT_EXPIRES

TOLERANCE_HELP = ("also publish a lossy chain within T of every weight. 2^-14 and finer keep the engine's "
                  "play (lc0 v0.32.1, 21 positions: policy moves 0.16-0.30 points, value 0.0018-0.0037, "
                  "well under one training step's 0.75-5.2 / 0.0035-0.027); 2^-10 is smaller but does "
                  "not: it moves play as much as a whole training step (2.2-5.7 / 0.013-0.046), not "
                  "recommended")
DAEMONS = ("watch", "serve")        # log with timestamps at INFO; the others print only their results


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="lc0weights-server",
                                     description="Publish lc0 nets as small verified patches.")
    parser.add_argument("--version", action="version", version=f"lc0weights-server {__version__}")
    output_options(parser, top=True)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND",
                                parser_class=SubcommandParser)

    def signing_options(p):
        p.add_argument("--key", metavar="KEYFILE",
                       help="online signing key (from 'keygen'); every metadata document written is signed "
                            "with it. Without it the repository is unsigned")
        p.add_argument("--expires", type=parse_duration, default=DEFAULT_EXPIRES.total_seconds(),
                       metavar="DURATION", help="how long signed metadata stays valid (default: 7d)")

    def init_option(p):
        p.add_argument("--init", action="store_true",
                       help="create a new repository in DIR if there is none (without it, DIR must be a "
                            "repository or an existing empty folder: a mistyped --repo never starts a "
                            "second repository)")

    def publishing_options(p):
        p.add_argument("--repo", required=True, metavar="DIR", help="repository folder")
        init_option(p)
        p.add_argument("--tolerance", type=parse_tolerance, metavar="T", help=TOLERANCE_HELP)
        p.add_argument("--codec", type=parse_codec,
                       help="force one codec id for every layer (default: smallest)")
        p.add_argument("--workers", type=positive_int, metavar="N",
                       help="processes encoding a net's patches side by side (default: every core); "
                            "the repository gets the same bytes whatever N")
        signing_options(p)

    k = sub.add_parser("keygen", help="make a new Ed25519 signing key; print its public key",
                       description="Write a new private key to KEYFILE (mode 0600; an existing file is "
                                   "never overwritten) and print the public key clients pass to --trust.")
    k.add_argument("keyfile", metavar="KEYFILE", help="where to write the new private key")
    k.set_defaults(func=_keygen)

    c = sub.add_parser("certify", help="sign a new root.json naming the online signing keys",
                       description="With the (offline) root key, write a new version of root.json that "
                                   "certifies the given online keys, and in the same step (under the "
                                   "publisher's lock) re-sign the timestamp with --key, one of those "
                                   "online keys, so clients never see a root and a timestamp that "
                                   "disagree. --key is required once anything is published.")
    c.add_argument("--repo", required=True, metavar="DIR", help="repository folder")
    init_option(c)
    c.add_argument("--root-key", required=True, metavar="KEYFILE", help="the root private key")
    c.add_argument("--online-key", required=True, action="append", metavar="PUBLIC_KEY",
                   help="an online public key (ed25519:... or @FILE); repeat for several")
    c.add_argument("--key", metavar="KEYFILE",
                   help="the private key of one of the online keys: re-signs the timestamp under the new root "
                        "(an empty timestamp in a new repository, so it can be served at once)")
    c.add_argument("--expires", type=parse_duration, default=ROOT_EXPIRES.total_seconds(), metavar="DURATION",
                   help="how long the root stays valid (default: 365d)")
    c.set_defaults(func=_certify)

    g = sub.add_parser("resign", help="sign the timestamp again with a fresh expiry",
                       description="Write a new timestamp version naming the same nets; run it from cron "
                                   "when nothing publishes for days.")
    g.add_argument("--repo", required=True, metavar="DIR", help="repository folder")
    signing_options(g)
    g.set_defaults(func=_resign)

    p = sub.add_parser("publish", help="add nets to the repository, in order")
    publishing_options(p)
    p.add_argument("--allow-older", action="store_true",
                   help="publish a net whose training step is before the latest one's (it becomes the latest)")
    p.add_argument("--json", action="store_true", help="print what was published as JSON")
    p.add_argument("nets", nargs="+", metavar="NET", help=".pb.gz files, oldest first")
    p.set_defaults(func=_publish)

    w = sub.add_parser("watch", help="publish each new net dropped into a folder")
    publishing_options(w)
    w.add_argument("--incoming", required=True, metavar="DIR", help="folder the trainer writes to")
    w.add_argument("--interval", type=float, default=2.0, metavar="SECONDS", help="seconds between polls")
    w.add_argument("--once", action="store_true", help="one pass (two polls), then exit")
    w.set_defaults(func=_watch)

    s = sub.add_parser("serve", help="serve the repository over HTTP")
    s.add_argument("--repo", required=True, metavar="DIR", help="repository folder")
    s.add_argument("--host", default="127.0.0.1", help="address to listen on")
    s.add_argument("--port", type=port_number, default=8000, help="TCP port")
    s.add_argument("--max-connections", type=positive_int, default=64,
                   help="connections served at once (default: 64)")
    s.add_argument("--max-per-client", type=positive_int, default=32,
                   help="of those, from one address; raise it behind a proxy (default: 32)")
    s.add_argument("--request-timeout", type=parse_duration, default=20.0, metavar="SECONDS",
                   help="time allowed for a whole request head and body (default: 20s)")
    s.set_defaults(func=_serve)

    r = sub.add_parser("prune", help="keep only the newest nets")
    r.add_argument("--repo", required=True, metavar="DIR", help="repository folder")
    r.add_argument("--keep", type=positive_int, required=True, metavar="N", help="how many newest nets to keep")
    signing_options(r)
    r.set_defaults(func=_prune)
    return finish_parser(parser)


def port_number(text: str) -> int:
    value = int(text) if text.isdigit() else -1
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"a TCP port is a number from 0 to 65535, not {text!r}")
    return value


def _signing(args):
    """The signing key and expiry the command was given, loaded before any work is done."""
    import datetime as dt

    from lc0weights.repository.keys import SigningKey
    key = SigningKey.load(args.key) if args.key else None
    return key, dt.timedelta(seconds=args.expires)


def _keygen(args) -> int:
    from lc0weights.repository.keys import SigningKey
    key = SigningKey.generate()
    key.save(args.keyfile)
    print(key.public.text)
    return 0


def _certify(args) -> int:
    import datetime as dt

    from lc0weights.repository.keys import SigningKey, read_trust

    from .repository import Repository
    root_key = SigningKey.load(args.root_key)
    online = [read_trust(k) for k in args.online_key]
    signer = SigningKey.load(args.key) if args.key else None
    repo = Repository.for_writing(args.repo, init=args.init)
    with repo.lock():
        root, ts = repo.certify(root_key, online, dt.timedelta(seconds=args.expires), signer)
    signed = (f"; timestamp version {ts.version} re-signed with {signer.path}" if ts is not None
              else "; publish with --key ONLINE_KEY to sign the first timestamp")
    print(f"root.json version {root.version}: {plural(len(online), 'online key')}, "
          f"expires {root.expires:%Y-%m-%d}{signed}")
    return 0


def _resign(args) -> int:
    from .repository import Repository
    key, expires = _signing(args)
    repo = Repository.existing(args.repo, key, expires)
    with repo.lock():
        ts = repo.resign()
    print(f"timestamp version {ts.version}, expires {ts.expires:%Y-%m-%d %H:%M} UTC")
    return 0


def _publish(args) -> int:
    from .publish import publish
    from .repository import Repository
    from .watch import check_net_file
    key, expires = _signing(args)
    for path in args.nets:              # before anything is written: bombs, two nets in one file
        check_net_file(path)
    results = publish(Repository.for_writing(args.repo, key, expires, init=args.init), args.nets,
                      args.tolerance, args.codec, allow_older=args.allow_older, workers=args.workers)
    if args.json:
        import json
        print(json.dumps([{"net_id": r.net_id, "source": r.source, "new": r.new,
                           "patches": [p.to_dict() for p in r.patches]} for r in results], indent=1))
        return 0
    for result in results:
        state = plural(len(result.patches), "patch", "patches") if result.new else "already published"
        sizes = "; ".join(f"{p.size:,}{' history' if p.history else ''}{' fast' if p.tier == 'fast' else ''}"
                          for p in result.patches)
        print(f"{result.net_id}  {result.source}: {state}{f' ({sizes} bytes)' if sizes else ''}")
    return 0


def _watch(args) -> int:
    from .repository import Repository
    from .watch import Watcher
    from pathlib import Path
    if not Path(args.incoming).is_dir():
        raise Lc0WeightsError(f"{args.incoming}: no such folder to watch (create it, or fix --incoming)")
    import threading
    key, expires = _signing(args)
    watcher = Watcher(args.incoming, Repository.for_writing(args.repo, key, expires, init=args.init),
                      args.interval, args.tolerance, args.codec, workers=args.workers)
    if args.once:
        watcher.run_once()
        return 0
    stop = threading.Event()
    _stop_on_signals(lambda: stop.set())
    watcher.run(stop)
    print("lc0weights-server watch: stopped", file=sys.stderr)
    return 0


def _stop_on_signals(stop) -> None:
    """SIGTERM and SIGINT call ``stop``: every long-running command (watch, serve, mirror,
    fetch --follow) finishes what it is doing, prints that it stopped and exits 0."""
    import signal
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop())


def _interrupt():
    raise KeyboardInterrupt


def _serve(args) -> int:
    from .repository import Repository
    from .serve import ServerLimits, serve
    Repository.existing(args.repo)
    _stop_on_signals(_interrupt)        # serve() stops on KeyboardInterrupt; SIGTERM does the same
    try:
        serve(args.repo, args.host, args.port,
              ServerLimits(max_connections=args.max_connections, max_per_client=args.max_per_client,
                           request_timeout=args.request_timeout))
    except KeyboardInterrupt:           # a signal before serve() took over its own handling
        pass
    except OSError as e:
        if e.filename is None and e.strerror:     # binding: name the address that could not be had
            raise Lc0WeightsError(f"{args.host}:{args.port}: cannot listen ({e.strerror}); another server "
                                  "there? pick another --port or --host") from None
        raise
    print("lc0weights-server serve: stopped", file=sys.stderr)
    return 0


def _prune(args) -> int:
    from .prune import prune
    from .repository import Repository
    if args.keep < 1:
        raise Lc0WeightsError("--keep must be at least 1")
    key, expires = _signing(args)
    report = prune(Repository.existing(args.repo, key, expires), args.keep)
    print(f"removed {plural(report.nets_removed, 'net')}, {plural(report.patches_removed, 'patch', 'patches')}; "
          f"deleted {plural(report.files_deleted, 'file')}")
    return 0


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    settle_output_options(args, "lc0weights-server")
    daemon = args.command in DAEMONS
    level = (logging.DEBUG if args.verbose else logging.WARNING if args.quiet
             else logging.INFO if daemon else logging.WARNING)
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(message)s" if daemon
                        else "lc0weights-server: %(message)s")
    return run_command("lc0weights-server", args.func, args)


if __name__ == "__main__":
    sys.exit(main())
