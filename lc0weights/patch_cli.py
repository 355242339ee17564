"""The patch commands of ``lc0weights``: inspect, diff, apply, verify.

Each reads its inputs as hostile (a patch given where a net belongs, or the
two swapped, is named as such), loads the codecs only once it needs them, and
writes its output by temp file and rename.
"""
from __future__ import annotations

import contextlib
import functools
import json
import logging
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from . import encodings as enc
from .cli_args import add_force, parse_codec, parse_size, positive_int
from .console import NO_BASE, check_output
from .container import MAGIC as PATCH_MAGIC
from .container import open_patch
from .durable_files import atomic_write
from .errors import Lc0WeightsError, NetFormatError, VerificationError, WrongBaseError
from .files import require_regular_path
from .net import DEFAULT_MAX_SIZE, GZIP_MAGIC, Net, starts_like_a_net
from .net_arriving import ArrivingNet, SizeNotAsDeclared, load_arriving
from .net_stream import NetStream, file_pieces
from .settings import parse_tolerance
from .tiers import TIERS
from .wire import LayerSpan

log = logging.getLogger("lc0weights")


def add_commands(sub) -> None:
    """The patch commands' parsers, added to the ``lc0weights`` subcommands ``sub``."""
    def max_size(p):
        p.add_argument("--max-size", type=parse_size, default=DEFAULT_MAX_SIZE, metavar="BYTES",
                       help="refuse nets larger than this raw, read or rebuilt "
                            f"(default {DEFAULT_MAX_SIZE >> 30}G; 400M, 2G, ...)")

    p = sub.add_parser("inspect", help="show a net's id and layers, or a patch's header")
    p.add_argument("file", help="a .pb.gz/.pb net or a patch")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.add_argument("--base", metavar="NET", help="a patch's base: check the patch against it too, "
                                                 "as apply does, and name its layers")
    max_size(p)
    p.set_defaults(run=cmd_inspect)

    def common(p):
        p.add_argument("--history", metavar="NET", help="the base's predecessor, as extra context")
        p.add_argument("--workers", type=positive_int, default=None, metavar="N",
                       help="threads (default: all cores)")
        p.add_argument("--json", action="store_true", help="print the result as JSON on stdout")

    p = sub.add_parser("diff", help="make a patch from BASE to TARGET")
    p.add_argument("base", help=f"the net clients hold, or '{NO_BASE}' for a patch against no base")
    p.add_argument("target", help="the new net")
    p.add_argument("-o", "--output", required=True, help="patch file to write")
    add_force(p)
    p.add_argument("--tolerance", type=parse_tolerance, metavar="T",
                   help="allow each weight to differ by up to T (2^-17, 2**-17 or a decimal; "
                        "default: lossless). 2^-14 and finer keep the engine's play (lc0 v0.32.1, "
                        "21 positions: policy 0.16-0.30 points, value 0.0018-0.0037, under one "
                        "training step's 0.75-5.2 / 0.0035-0.027); 2^-10 does not: it moves play "
                        "as much as a whole training step (2.2-5.7 / 0.013-0.046)")
    p.add_argument("--codec", type=parse_codec,
                   help="force one codec for every layer (default: smallest per layer)")
    p.add_argument("--tier", choices=TIERS, default=TIERS[0],
                   help="cm: fewest bytes (default); fast: large layers coded to rebuild about 3x "
                        "faster for a percent or two more bytes (for clients on fast links)")
    common(p)
    p.set_defaults(run=cmd_diff)

    p = sub.add_parser("apply", help="rebuild a net from BASE and PATCH")
    p.add_argument("base", help=f"the base net, or '{NO_BASE}' for an intra patch")
    p.add_argument("patch", help="the patch file")
    p.add_argument("-o", "--output", required=True, help="net to write (.pb.gz gzips, else raw)")
    add_force(p)
    common(p)
    max_size(p)
    p.set_defaults(run=cmd_apply)

    p = sub.add_parser("verify", help="check that BASE + PATCH rebuilds TARGET (or within tolerance)")
    p.add_argument("base", help=f"the base net, or '{NO_BASE}' for an intra patch")
    p.add_argument("patch", help="the patch file")
    p.add_argument("target", help="the net the patch should rebuild")
    common(p)
    max_size(p)
    p.set_defaults(run=cmd_verify)


def _load_net(path: str | None, max_size: int | None = None, spill_dir: Path | None = None,
              arriving: bool = False) -> Net | ArrivingNet | None:
    """The net at ``path`` (None for no base); a large one kept in a file in ``spill_dir``
    while it is patched, see ``Net.load``, and with ``arriving`` read while it is used
    (``net_arriving.load_arriving``)."""
    if path is None or path.lower() == NO_BASE:
        return None
    require_regular_path(path, "net")
    if arriving and spill_dir is not None:
        return load_arriving(path, max_size, spill_dir=spill_dir)
    return Net.load(path, max_size, spill_dir=spill_dir)


def _head(path: str, what: str) -> bytes:
    require_regular_path(path, what)
    try:
        with open(path, "rb") as f:
            return f.read(64)
    except OSError as e:
        raise NetFormatError(f"{path}: cannot read ({e.strerror})") from None


def _is_patch(path: str, what: str = "patch") -> bool:
    return _head(path, what).startswith(PATCH_MAGIC)


def _require_patch(path: str, swapped_with: str | None = None, role: str = "") -> None:
    """Refuse, naming the file and the likely slip, a PATCH argument that is not a patch."""
    head = _head(path, "patch")
    if head.startswith(PATCH_MAGIC):
        return
    if not head:
        raise NetFormatError(f"{path}: empty file (0 bytes), not a patch")
    if head[:2] == GZIP_MAGIC or starts_like_a_net(head):
        if swapped_with is not None and _is_patch(swapped_with):
            raise NetFormatError(f"{path}: is a net, not a patch; did you swap PATCH and {role}?")
        raise NetFormatError(f"{path}: is a net, not a patch; give the patch file 'diff' wrote")
    raise NetFormatError(f"{path}: not an lc0weights patch (no patch magic at the start)")


def _require_history(patch_path: str, history: Net | None, history_path: str | None) -> None:
    """A --history that is not the net the patch was made with is named as the wrong net."""
    if history is None:
        return
    from .patch import read_patch_info
    wanted = read_patch_info(patch_path).history_id
    if wanted is None:
        raise Lc0WeightsError(f"{history_path}: --history given, but {patch_path} was made without one; "
                              "drop --history")
    if history.id != wanted:
        raise Lc0WeightsError(f"{history_path}: is net {history.id[:16]}..., not the history {patch_path} "
                              f"needs (net {wanted[:16]}..., the base's predecessor)")


def _wrong_base(base_path: str, e: WrongBaseError) -> Lc0WeightsError:
    return Lc0WeightsError(f"{base_path}: not this patch's base ({e})")


# -- commands ------------------------------------------------------------------------

def cmd_inspect(args) -> int:
    if _is_patch(args.file, "net or patch"):
        base = _load_net(args.base, args.max_size)
        from .patch import read_patch_info
        try:
            info = read_patch_info(args.file, base, max_size=args.max_size)
        except WrongBaseError as e:
            raise _wrong_base(args.base, e) from None
        if base is not None and info.base_id and base.id != info.base_id:
            raise Lc0WeightsError(f"{args.base}: is net {base.id[:16]}..., not this patch's base "
                                  f"(net {info.base_id[:16]}...)")
        if args.json:
            print(json.dumps(info.__dict__, indent=1))
        else:
            mode = f"tolerance {info.tolerance:g}" if info.tolerance else info.mode
            print(f"patch     {args.file} ({info.patch_size:,} bytes, {mode})")
            print(f"base      {info.base_id or 'none (intra)'}\ntarget    {info.target_id}\n"
                  f"result    {info.result_id} ({info.result_size:,} bytes)")
            if info.history_id:
                print(f"history   {info.history_id}")
            if info.layers and not any(lp["path"] for lp in info.layers):
                print("layers    named by the base net: pass --base NET to see their names")
            print(f"  {'layer':<48} {'kind':<6} {'residual':<16} {'codec':<14} {'bytes':>10}")
            for i, lp in enumerate(info.layers):
                name = lp["path"] or f"layer {i}"
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
    print(f"  {'layer':<48} {'weights':>10} {'encoding':<9} {'min':>12} {'max':>12}")
    for r in rows:
        span = "" if r["min"] is None else f"{r['min']:>12.6g} {r['max']:>12.6g}"
        print(f"  {r['path']:<48} {r['count']:>10,} {r['encoding']:<9} {span}")
    return 0


def _layer_bar(args, desc: str):
    """A progress wrapper over layers for make_patch, or None when bars are off."""
    if not args.progress:
        return None
    from .console import counting_bar
    return lambda layers, total: counting_bar(layers, total, desc)


def _byte_bar(args, desc: str):
    """A progress wrapper over a decoder's chunks, or None when bars are off."""
    if not args.progress:
        return None
    from .console import progress_bar
    return lambda chunks, total: progress_bar(chunks, total, 0, desc)


def _refuse_swapped(base: str) -> None:
    """A patch given as the base is the usual slip of swapping the two arguments."""
    if base.lower() != NO_BASE and _is_patch(base, "net"):
        raise Lc0WeightsError(f"{base}: this is a patch; did you swap BASE and PATCH?")


def _report(args, record: dict, text: str) -> None:
    """A result: JSON on stdout with --json, else one line of text on stderr."""
    if args.json:
        print(json.dumps(record, indent=1))
    elif not args.quiet:
        print(text, file=sys.stderr)


def _warn(args, text: str) -> None:
    if not args.quiet:
        print(f"lc0weights: warning: {text}", file=sys.stderr)


def _change(base: Net, target: Net) -> float:
    """The largest change of any weight from base to target (infinite across layouts)."""
    from .patch import max_error
    try:
        return max_error(base, target)
    except Lc0WeightsError:
        return float("inf")


def cmd_diff(args) -> int:
    check_output(args.output, (args.base, args.target, args.history), args.force)
    started = time.monotonic()
    base, target = _load_net(args.base), _load_net(args.target)
    history = _load_net(args.history)
    log.info("read the nets in %.2f s: target %s, %d layers, %s bytes raw; base %s", time.monotonic() - started,
             target.id[:16], len(target.layers), f"{len(target.raw):,}", base.id[:16] if base else "none")
    from .patch import make_patch, read_patch_info
    patch = make_patch(base, target, args.tolerance, codec=args.codec, history=history,
                       workers=args.workers, progress=_layer_bar(args, "encoding"), tier=args.tier)
    log.info("encoded and verified the patch in %.2f s", time.monotonic() - started)
    info = read_patch_info(patch)
    if args.tolerance and base is not None and base.id != target.id and _change(base, target) <= args.tolerance:
        _warn(args, f"tolerance {args.tolerance:g} is at least every weight's change: the patch "
                    "keeps the base's weights")
    elif args.tolerance and info.result_id == target.id:
        _warn(args, f"tolerance {args.tolerance:g} is below the weights' precision: the patch is "
                    "effectively lossless (omit --tolerance for a lossless patch)")
    atomic_write(args.output, patch)
    kind = f"tolerance {args.tolerance:g}" if args.tolerance else "lossless"
    _report(args, {"output": args.output, "bytes": len(patch), "mode": info.mode,
                   "tolerance": info.tolerance, "base_id": info.base_id, "target_id": info.target_id,
                   "result_id": info.result_id, "target_raw_size": len(target.raw)},
            f"wrote {args.output}: {len(patch):,} bytes ({kind}; target {len(target.raw):,} bytes raw)")
    return 0


def cmd_apply(args) -> int:
    _refuse_swapped(args.base)
    _require_patch(args.patch)
    check_output(args.output, (args.base, args.patch, args.history), args.force)
    started = time.monotonic()
    # A large gzip base is gunzipped while its first layers are rebuilt (net_arriving), and
    # from the start: the decoders (numba) load while it is read, as does the patch's checksum.
    spill_dir = Path(args.output).parent          # the output's disk
    base = _load_net(args.base, args.max_size, spill_dir, arriving=True)
    with ThreadPoolExecutor(1, thread_name_prefix="patch") as pool:
        opened = pool.submit(open_patch, args.patch)
        from .patch import apply_patch_to_file, preload_decoders
        preload_decoders()
        history = _load_net(args.history, args.max_size, spill_dir)
        _require_history(args.patch, history, args.history)
        if isinstance(base, ArrivingNet):
            log.info("reading the base while the net is rebuilt from it (its id is checked at the end)")
        else:
            log.info("read the base %s in %.2f s", base.id[:16] if base else "none", time.monotonic() - started)
        rebuild = functools.partial(apply_patch_to_file, patch=args.patch, output=args.output, history=history,
                                    workers=args.workers, progress=_byte_bar(args, "decoding"),
                                    max_size=args.max_size)
        try:
            try:
                net_id = rebuild(base, open_patch=lambda _patch: opened.result())
            except SizeNotAsDeclared as e:
                log.info("%s; reading the base whole first", e)
                net_id = None
            if net_id is None:
                base = None                   # its reserved file goes before the base is read again
                net_id = rebuild(_load_net(args.base, args.max_size, spill_dir))
        except WrongBaseError as e:
            raise _wrong_base(args.base, e) from None
    log.info("rebuilt, checked and wrote the net in %.2f s", time.monotonic() - started)
    _report(args, {"output": args.output, "net_id": net_id}, f"wrote {args.output}: net {net_id}")
    return 0


def cmd_verify(args) -> int:
    _refuse_swapped(args.base)
    _require_patch(args.patch, swapped_with=args.target, role="TARGET")
    # As in apply, a large base is read while the net is rebuilt from it (kept in the temp folder).
    spill_dir = Path(tempfile.gettempdir())
    base = _load_net(args.base, args.max_size, spill_dir, arriving=True)
    history = _load_net(args.history, args.max_size, spill_dir)
    _require_history(args.patch, history, args.history)
    from .patch import read_patch_info
    from .patching import rebuilt_pieces
    # The patch is opened (and its checksum read) once, for its header and for its rebuild.
    with open_patch(args.patch) as source:
        opened = lambda _patch: contextlib.nullcontext(source)  # noqa: E731
        try:
            # An arriving base is checked when it is in (the rebuild raises WrongBaseError then).
            info = read_patch_info(args.patch, base if isinstance(base, Net) else None, max_size=args.max_size,
                                   open_patch=opened)
            # The rebuilt net and the target are both walked as they come, never held: memory is
            # the base's and a few layers'. The rebuilt bytes are checked against the patch's
            # result id as they stream by: no second hash.
            rebuilt = rebuilt_pieces(base, args.patch, history, workers=args.workers, max_size=args.max_size,
                                     progress=_byte_bar(args, "decoding"), open_patch=opened)
            record = {"mode": info.mode, "tolerance": info.tolerance, "rebuilt_id": info.result_id}
            if info.mode == "lossless":
                ok, text = _verify_lossless(args, rebuilt, info.result_id, record)
            else:
                ok, text = _verify_tolerance(args, rebuilt, info, record)
        except WrongBaseError as e:
            raise _wrong_base(args.base, e) from None
    record["ok"] = ok
    if args.json:
        print(json.dumps(record, indent=1))
    else:
        print(text)
    return 0 if ok else 1


def _verify_lossless(args, rebuilt, rebuilt_id: str, record: dict) -> tuple[bool, str]:
    """The rebuilt net's id against the target's; the target is read and hashed on a thread
    of its own meanwhile (the two are independent, and each is a core's work at BT4 size)."""
    with ThreadPoolExecutor(1, thread_name_prefix="target") as pool:
        target_id = pool.submit(_streamed_id, args)
        for _ in rebuilt:
            pass
        record["target_id"] = target_id.result()
    ok = rebuilt_id == record["target_id"]
    return ok, (f"{'OK' if ok else 'FAILED'}: rebuilt net {rebuilt_id} "
                f"{'equals' if ok else 'differs from'} target {record['target_id']}")


def _streamed_id(args) -> str:
    """The target's id, its bytes walked as a net is (so a file that is not one is named) and
    hashed; its layers are only passed over, never copied."""
    target = _target_stream(args, locate=LayerSpan)
    for _ in target.layers():
        pass
    return target.id


def _verify_tolerance(args, rebuilt, info, record: dict) -> tuple[bool, str]:
    """The largest weight error of the rebuilt net against the target, within the tolerance?"""
    target = _target_stream(args)
    error = _streamed_error(NetStream(rebuilt, "rebuilt net", hash_raw=False), target)
    record["target_id"] = target.id
    ok = error <= info.tolerance
    record["max_error"] = error
    return ok, (f"{'OK' if ok else 'FAILED'}: maximum error {error:.6g} "
                f"{'within' if ok else 'exceeds'} tolerance {info.tolerance:g} (rebuilt net {info.result_id})")


def _target_stream(args, locate=None) -> NetStream:
    require_regular_path(args.target, "net")
    return NetStream(file_pieces(args.target, args.max_size), args.target, locate=locate)


def _streamed_error(rebuilt: NetStream, target: NetStream) -> float:
    """The largest weight error of the rebuilt net against the target, both streamed.

    A failure of either stream is reported before any difference found, the
    rebuilt net's first (a patch that does not rebuild its net, then a target
    that is not a net), as when the two were loaded whole, one after the other.
    """
    failures: dict[str, Lc0WeightsError] = {}

    def until_failure(name, layers):
        try:
            yield from layers
        except Lc0WeightsError as e:
            failures[name] = e

    from .patching import max_layer_error
    try:
        error = max_layer_error(until_failure("rebuilt", rebuilt.layers()),
                                until_failure("target", target.layers()))
    except VerificationError:
        if not failures:
            raise
    for name in ("rebuilt", "target"):
        if name in failures:
            raise failures[name]
    return error
