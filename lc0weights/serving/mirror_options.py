"""The mirror's command-line options and defaults: argparse only, so every command's parser
can list ``mirror`` without loading the mirror (and the fetch client and decoders under it)."""
from __future__ import annotations

DEFAULT_LISTEN = "127.0.0.1:8080"
DEFAULT_WAIT = 300.0                # seconds a request waits for a fetch before a 503
DEFAULT_MAX_NETS = 4                # nets kept in the mirror's own cache


def add_mirror_command(subparsers, run) -> None:
    """The ``mirror`` subcommand; ``run(args)`` runs it (the caller's, which loads the mirror)."""
    p = subparsers.add_parser(
        "mirror", help="serve nets to lczero-client (--network-mirror), fetched as patches",
        description="A local HTTP mirror for lczero-client: GET /<sha> (or /get_network?sha=) answers "
                    "with the gzip net, rebuilt from patches against a net already held when cheaper, "
                    "verified before it is sent.")
    p.add_argument("upstream", metavar="UPSTREAM", nargs="?",
                   help="repository URL (http://...) or directory (default: $LC0WEIGHTS_URL or 'url' "
                        "in the config file)")
    p.add_argument("--listen", default=DEFAULT_LISTEN, metavar="HOST:PORT",
                   help=f"address to serve on (default {DEFAULT_LISTEN}: this machine only)")
    p.add_argument("--client-cache", metavar="DIR",
                   help="lczero-client's cache folder, read for bases (default: its usual place)")
    p.add_argument("--cache", metavar="DIR", help="the mirror's own cache (default: the user cache folder)")
    p.add_argument("--max-nets", type=int, default=DEFAULT_MAX_NETS, metavar="N",
                   help=f"nets kept in the own cache (default {DEFAULT_MAX_NETS})")
    p.add_argument("--max-bytes", type=int, metavar="BYTES", help="bytes kept in the own cache (default: no limit beyond --max-nets)")
    p.add_argument("--fallback", metavar="PREFIX",
                   help="for nets the repository does not list, pass through PREFIX<sha> (verified)")
    p.add_argument("--trust", metavar="KEY",
                   help="the repository's root key (ed25519:... or @FILE); default: $LC0WEIGHTS_TRUST "
                        "or 'trust' in the config file")
    p.add_argument("--max-connections", type=int, default=32, metavar="N",
                   help="client connections served at once")
    p.add_argument("--wait", type=float, default=DEFAULT_WAIT, metavar="SECONDS",
                   help=f"longest a request waits for a fetch before a 503 (default {DEFAULT_WAIT:g}); "
                        "the fetch goes on")
    p.add_argument("--timeout", type=float, default=30.0, help="upstream network timeout in seconds")
    p.add_argument("--retries", type=int, default=4, help="upstream retries per download")
    p.add_argument("--prefer", choices=("bytes", "time"), default="bytes",
                   help="upstream routes by fewest bytes (default: the upstream link is shared) or by "
                        "least estimated time")
    p.set_defaults(run=run)

