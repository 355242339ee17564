"""The ``lc0weights`` command: inspect, diff, apply, verify (:mod:`.patch_cli`), fetch, check, mirror
(:mod:`.client_cli`).

Every command returns an exit code; errors are turned into one line on
stderr in one place (:func:`.cli_args.run_command`: exit 1 for failures, 2 for usage).
"""
from __future__ import annotations

import argparse
import logging
import sys

from . import __version__
from .cli_args import (SubcommandParser, compile_notice, finish_parser, output_options, run_command,
                       settle_output_options)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="lc0weights", description="Leela Chess Zero networks as small, verified patches.")
    parser.add_argument("--version", action="version", version=f"lc0weights {__version__}")
    output_options(parser, top=True)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND",
                                parser_class=SubcommandParser)

    from .patch_cli import add_commands as add_patch_commands
    add_patch_commands(sub)
    from .client_cli import add_commands
    add_commands(sub)
    return finish_parser(parser)


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    settle_output_options(args, "lc0weights")
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(name)s: %(message)s")
    if args.command in ("diff", "apply", "verify", "fetch", "check"):
        compile_notice(args)
    return run_command("lc0weights", args.run, args)


if __name__ == "__main__":
    sys.exit(main())
