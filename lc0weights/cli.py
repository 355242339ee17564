"""The ``lc0weights`` command: inspect, diff, apply, verify, fetch, check.

Every command returns an exit code; errors are turned into one line on
stderr here, in one place (exit 1 for failures, 2 for usage).
"""
from __future__ import annotations

import argparse
import json
import logging
import re
import sys
from pathlib import Path

import numpy as np

from . import __version__
from .container import MAGIC as PATCH_MAGIC
from .errors import NetFormatError
from .net import DEFAULT_MAX_SIZE, Net, atomic_write
from .patch import apply_patch, apply_patch_to_file, make_patch, max_error, read_patch_info
from .settings import parse_tolerance
from . import encodings as enc

NO_BASE = "none"


_UNITS = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}


def parse_size(text: str) -> int:
    """A byte count: ``2147483648``, ``400M``, ``2G`` or ``2GiB`` (binary units)."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d*)?)\s*([kmgt]?)(?:i?b)?\s*", text, re.IGNORECASE)
    if not m:
        raise argparse.ArgumentTypeError(f"a size is a number of bytes like 400M or 2G, not {text!r}")
    return int(float(m.group(1)) * _UNITS[m.group(2).lower()])


def _load_net(path: str | None, max_size: int | None = None) -> Net | None:
    return None if path is None or path.lower() == NO_BASE else Net.load(path, max_size)


def _is_patch(path: str) -> bool:
    try:
        with open(path, "rb") as f:
            return f.read(len(PATCH_MAGIC)) == PATCH_MAGIC
    except OSError as e:
        raise NetFormatError(f"{path}: cannot read ({e.strerror})") from None


# -- commands ------------------------------------------------------------------------

def cmd_inspect(args) -> int:
    if _is_patch(args.file):
        info = read_patch_info(args.file, _load_net(args.base, args.max_size), max_size=args.max_size)
        if args.json:
            print(json.dumps(info.__dict__, indent=1))
        else:
            print(f"patch     {args.file} ({info.patch_size:,} bytes, {info.mode}"
                  + (f", tolerance {info.tolerance:g}" if info.tolerance else "") + ")")
            print(f"base      {info.base_id or 'none (intra)'}\ntarget    {info.target_id}\n"
                  f"result    {info.result_id} ({info.result_size:,} bytes)")
            if info.history_id:
                print(f"history   {info.history_id}")
            for i, lp in enumerate(info.layers):
                name = lp["path"] or f"layer {i} (name needs the base)"
                print(f"  {name:<48} {'intra' if lp['intra'] else 'delta':<6} {lp['residual']:<16} "
                      f"{lp['codec']:<14} {lp['stored_size']:>10,}")
        return 0
    net = Net.load(args.file, args.max_size)
    file_size = Path(args.file).stat().st_size
    rows = []
    for layer in net.layers:
        row = {"path": layer.path, "count": layer.count, "bytes": layer.nbytes,
               "encoding": enc.NAMES.get(layer.encoding, str(layer.encoding)),
               "dims": list(layer.dims), "min": None, "max": None}
        if layer.codable and layer.count:
            values = net.values(layer)
            row["min"], row["max"] = float(np.nanmin(values)), float(np.nanmax(values))
        rows.append(row)
    summary = {"id": net.id, "format": net.format_name, "raw_size": len(net.raw),
               "file_size": file_size, "weights": net.weight_count, "layers": rows}
    if args.json:
        print(json.dumps(summary, indent=1))
        return 0
    print(f"net       {args.file}\nid        {net.id}\nformat    {net.format_name}, "
          f"{len(net.raw):,} bytes raw, {file_size:,} on disk, "
          f"{len(rows)} layers, {net.weight_count:,} weights")
    for r in rows:
        span = "" if r["min"] is None else f"{r['min']:>12.6g} {r['max']:>12.6g}"
        print(f"  {r['path']:<48} {r['count']:>10,} {r['encoding']:<9} {span}")
    return 0


def cmd_diff(args) -> int:
    base, target = _load_net(args.base), Net.load(args.target)
    history = _load_net(args.history)
    patch = make_patch(base, target, args.tolerance, codec=args.codec, history=history,
                       workers=args.workers)
    atomic_write(args.output, patch)
    kind = f"tolerance {args.tolerance:g}" if args.tolerance else "lossless"
    print(f"wrote {args.output}: {len(patch):,} bytes ({kind}; target {len(target.raw):,} bytes raw)",
          file=sys.stderr)
    return 0


def cmd_apply(args) -> int:
    base, history = _load_net(args.base, args.max_size), _load_net(args.history, args.max_size)
    net_id = apply_patch_to_file(base, args.patch, args.output, history, workers=args.workers,
                                 max_size=args.max_size)
    print(f"wrote {args.output}: net {net_id}", file=sys.stderr)
    return 0


def cmd_verify(args) -> int:
    base, history = _load_net(args.base, args.max_size), _load_net(args.history, args.max_size)
    info = read_patch_info(args.patch, base, max_size=args.max_size)
    rebuilt = Net(apply_patch(base, args.patch, history, workers=args.workers, max_size=args.max_size),
                  "rebuilt net")
    target = Net.load(args.target, args.max_size)
    if info.mode == "lossless":
        ok = rebuilt.id == target.id
        print(f"{'OK' if ok else 'FAILED'}: rebuilt net {rebuilt.id} "
              f"{'equals' if ok else 'differs from'} target {target.id}")
        return 0 if ok else 1
    error = max_error(rebuilt, target)
    ok = error <= info.tolerance
    print(f"{'OK' if ok else 'FAILED'}: maximum error {error:.6g} "
          f"{'within' if ok else 'exceeds'} tolerance {info.tolerance:g} (rebuilt net {rebuilt.id})")
    return 0 if ok else 1


# -- parser ------------------------------------------------------------------------

def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="lc0weights", description="Leela Chess Zero networks as small, verified patches.")
    parser.add_argument("--version", action="version", version=f"lc0weights {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress to stderr")
    sub = parser.add_subparsers(dest="command", required=True)

    def max_size(p):
        p.add_argument("--max-size", type=parse_size, default=DEFAULT_MAX_SIZE, metavar="BYTES",
                       help="refuse nets larger than this raw, read or rebuilt "
                            f"(default {DEFAULT_MAX_SIZE >> 30}G; 400M, 2G, ...)")

    p = sub.add_parser("inspect", help="show a net's id and layers, or a patch's header")
    p.add_argument("file", help="a .pb.gz/.pb net or a patch")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.add_argument("--base", metavar="NET", help="a patch's base: check the patch against it too, "
                                                 "as apply does")
    max_size(p)
    p.set_defaults(run=cmd_inspect)

    def common(p):
        p.add_argument("--history", metavar="NET", help="the base's predecessor, as extra context")
        p.add_argument("--workers", type=int, default=None, help="threads (default: all cores)")

    p = sub.add_parser("diff", help="make a patch from BASE to TARGET")
    p.add_argument("base", help=f"the net clients hold, or '{NO_BASE}' for a patch against no base")
    p.add_argument("target", help="the new net")
    p.add_argument("-o", "--output", required=True, help="patch file to write")
    p.add_argument("--tolerance", type=parse_tolerance, metavar="T",
                   help="allow each weight to differ by up to T (2^-17, 2**-17 or a decimal)")
    p.add_argument("--codec", help="force one codec for every layer (default: smallest per layer)")
    common(p)
    p.set_defaults(run=cmd_diff)

    p = sub.add_parser("apply", help="rebuild a net from BASE and PATCH")
    p.add_argument("base", help=f"the base net, or '{NO_BASE}' for an intra patch")
    p.add_argument("patch")
    p.add_argument("-o", "--output", required=True, help="net to write (.pb.gz gzips, else raw)")
    common(p)
    max_size(p)
    p.set_defaults(run=cmd_apply)

    p = sub.add_parser("verify", help="check that BASE + PATCH rebuilds TARGET (or within tolerance)")
    p.add_argument("base")
    p.add_argument("patch")
    p.add_argument("target")
    common(p)
    max_size(p)
    p.set_defaults(run=cmd_verify)

    from .distribution.commands import add_commands
    add_commands(sub)
    return parser


def run_command(prog: str, run, args) -> int:
    """Run a command; turn every expected failure into one line on stderr and exit 1.

    Bad input and failed checks raise Lc0WeightsError (a ValueError); file
    system trouble raises OSError. Anything else is a bug and keeps its traceback.
    """
    try:
        return run(args)
    except ValueError as e:
        print(f"{prog}: error: {e}", file=sys.stderr)
    except OSError as e:
        name = f" {e.filename}:" if e.filename else ""
        print(f"{prog}: error:{name} {e.strerror or e}", file=sys.stderr)
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return 130
    return 1


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(name)s: %(message)s")
    return run_command("lc0weights", args.run, args)


if __name__ == "__main__":
    sys.exit(main())
