"""What every command line of the project shares: argument types, help, output options, errors.

``lc0weights`` and ``lc0weights-server`` parse sizes, counts and codec ids the
same way, show defaults in their help the same way, accept -v, -q and
--no-progress before or after the subcommand, and turn every expected failure
into one line on stderr (:func:`run_command`).
"""
from __future__ import annotations

import argparse
import os
import re
import sys
from pathlib import Path


_UNITS = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}


def parse_size(text: str) -> int:
    """A byte count: ``2147483648``, ``400M``, ``2G`` or ``2GiB`` (binary units)."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d*)?)\s*([kmgt]?)(?:i?b)?\s*", text, re.IGNORECASE)
    if not m:
        raise argparse.ArgumentTypeError(f"a size is a number of bytes like 400M or 2G, not {text!r}")
    return int(float(m.group(1)) * _UNITS[m.group(2).lower()])


def positive_int(text: str) -> int:
    """A whole number of at least 1 (worker counts, ports, limits)."""
    value = int(text) if text.strip().isdigit() else 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number of at least 1, not {text!r}")
    return value


def parse_codec(text: str) -> str:
    """A registered codec id; the error lists the valid ones."""
    from .codecs import codec_ids
    if text not in codec_ids():
        raise argparse.ArgumentTypeError(f"unknown codec {text!r} (valid: {', '.join(codec_ids())})")
    return text


class HelpFormatter(argparse.HelpFormatter):
    """Help that shows each option's default, unless its text already says it."""

    def _get_help_string(self, action):
        text = action.help or ""
        default = action.default
        if ("default" in text or default in (None, False, argparse.SUPPRESS)
                or not (action.option_strings or action.nargs in ("?", "*"))):
            return text
        shown = f"{default >> 30}G" if action.dest == "max_size" else "%(default)s"
        return f"{text} (default: {shown})"


def finish_parser(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Give the parser and every subparser beneath it the same help formatting."""
    parser.formatter_class = HelpFormatter
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                finish_parser(sub)
    return parser


def output_options(parser: argparse.ArgumentParser, top: bool) -> None:
    """-v, -q and --no-progress, accepted before the subcommand (``top``) and after it.

    After the subcommand they default to SUPPRESS, so an option given before it
    is not reset by the subparser's own default.
    """
    default = (lambda value: value) if top else (lambda value: argparse.SUPPRESS)
    group = parser.add_argument_group("output") if not top else parser
    group.add_argument("-v", "--verbose", action="store_true", default=default(False),
                       help="log what is being done to stderr")
    group.add_argument("-q", "--quiet", action="store_true", default=default(False),
                       help="print only results and errors: no progress bars, notes or warnings (except "
                            "that nothing is authenticated, when no --trust key is pinned)")
    group.add_argument("--no-progress", action="store_true", default=default(False),
                       help="no progress bars, even on a terminal (they are only shown on one)")


def add_force(p) -> None:
    p.add_argument("-f", "--force", action="store_true",
                   help="overwrite an existing output file (never one of the inputs)")


class SubcommandParser(argparse.ArgumentParser):
    """A subcommand's parser: it also accepts -v, -q and --no-progress."""

    def __init__(self, *a, **kw):
        super().__init__(*a, **kw)
        output_options(self, top=False)


def run_command(prog: str, run, args) -> int:
    """Run a command; turn every expected failure into one line on stderr and exit 1.

    Bad input and failed checks raise Lc0WeightsError (a ValueError); file
    system trouble raises OSError. Anything else is a bug and keeps its traceback.
    A reader that stops early (``| head``) is not an error.
    """
    try:
        code = run(args)
        sys.stdout.flush()
        return code
    except BrokenPipeError:
        # Python would complain again flushing stdout at exit: point it at nothing.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except ValueError as e:
        print(f"{prog}: error: {e}", file=sys.stderr)
    except OSError as e:
        name = f" {e.filename}:" if e.filename else ""
        print(f"{prog}: error:{name} {e.strerror or e}", file=sys.stderr)
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return 130
    return 1


def settle_output_options(args, prog: str) -> None:
    """Set logging and progress from -v/-q/--no-progress, wherever they were given."""
    if args.verbose and args.quiet:
        print(f"{prog}: error: -v/--verbose and -q/--quiet do not go together", file=sys.stderr)
        raise SystemExit(2)
    args.progress = not (args.quiet or args.no_progress) and sys.stderr.isatty()
    from . import console
    console.SHOW_PROGRESS = args.progress


def compile_notice(args) -> None:
    """One line on a terminal when numba will compile the codecs (first run after install)."""
    if not args.progress or os.environ.get("NUMBA_CACHE_DIR") or os.environ.get("NUMBA_DISABLE_JIT"):
        return
    cache = Path(__file__).resolve().parent / "__pycache__"
    try:
        compiled = any(name.startswith("kernels.") and name.endswith(".nbi") for name in os.listdir(cache))
    except OSError:
        compiled = False
    if not compiled:
        print("compiling codecs (first run only)...", file=sys.stderr, flush=True)
