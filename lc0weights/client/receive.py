"""Using a route's objects while they download: one pass over each byte.

A full net is gunzipped and its raw bytes hashed as the gzip arrives
(:class:`NetReceiver`, a tap on the staged file), so verifying it reads
nothing twice and holds one copy of the raw net, or none when the net is the
route's last object (wanted only as its file); the published gzip stays a
file, renamed into the cache. Held nets a patch starts from are read from the
cache into an unnamed file there and mapped (``Net.load``'s spill folder), so
a rebuild holds a few chunks of its base and history, not the whole nets. A
patch is decoded while it arrives (:func:`apply_while_downloading`): a thread
downloads into the staged file and the decoder rebuilds each layer once its
section is in; the last patch of a route rebuilds straight into a gzip file
(:func:`rebuild_file_while_downloading`), so the rebuilt net is never held
beside its base. Either way the result is handed back only after the object's
sha256 (from the signed record) and the net's id have been checked.
"""
from __future__ import annotations

import os
import threading
from contextlib import closing
import time
from pathlib import Path

from .. import gzipio
from ..errors import NetFormatError
from ..durable_files import atomic_file
from ..net import GZIP_LEVEL, Net
from ..net_unpack import RawSink
from ..repository.errors import IntegrityError
from ..repository.index import NetEntry
from .link_rate import rebuild_rate_name, timing

# Slack on top of the transfer's deadline for a reader waiting on the download thread.
_WAIT_SLACK_SECONDS = 30.0


class _CheckingSink(RawSink):
    """Gunzips and hashes, keeping nothing: for a net that is wanted only as its file."""

    def _store(self, piece) -> None:
        pass


class NetReceiver:
    """The tap that gunzips a published net as it is staged (see :class:`.staging.StagedFile`).

    With ``keep`` false the raw bytes are checked (size, id) but not kept: the
    net is wanted as the published file only (the last object of a route).
    """

    def __init__(self, entry: NetEntry, keep: bool = True):
        self.entry = entry
        self.keep = keep
        self._sink: RawSink | None = None

    def reset(self, staged=None) -> None:
        self._sink = None                    # allocated on the first byte, not on every restart

    def feed(self, chunk) -> None:
        e = self.entry
        if self._sink is None:
            # The signed raw size both sizes the buffer and bounds a gzip bomb.
            self._sink = RawSink(e.raw_size, e.raw_size, e.path) if self.keep \
                else _CheckingSink(0, e.raw_size, e.path)
        try:
            self._sink.feed(chunk)
        except NetFormatError as err:
            raise IntegrityError(str(err)) from None

    def net(self) -> Net:
        """The verified net (call once the download returned): raw size and id checked; its
        raw bytes are empty unless ``keep``."""
        e = self.entry
        if self._sink is None:
            raise IntegrityError(f"{e.path}: empty object")
        try:
            raw = self._sink.finish()
        except NetFormatError as err:
            raise IntegrityError(str(err)) from None
        if self._sink.pos != e.raw_size:
            raise IntegrityError(f"{e.path}: {self._sink.pos} raw bytes, the index says {e.raw_size}")
        if self._sink.raw_id != e.id:
            raise IntegrityError(f"{e.path}: the net has id {self._sink.raw_id[:16]}..., "
                                 f"the index says {e.id[:16]}...")
        if not self.keep:
            return None
        net = Net(raw, e.path)
        net._id = e.id                       # just hashed on the way in
        return net


def fetch_full_net(source, entry: NetEntry, where: Path, partial_dir, desc: str, keep: bool = True):
    """Download a published net into ``where`` and return it, verified, with
    ``published_gz`` set to ``where`` (the object as published). With ``keep``
    false it is checked as it arrives but not held: a :class:`RebuiltNetFile`
    of the published file (for the last object of a route)."""
    receiver = NetReceiver(entry, keep)
    source.fetch_object(entry.path, where, entry.size, entry.sha256, desc=desc,
                        partial_dir=partial_dir, tap=receiver)
    net = receiver.net()
    if not keep:
        return RebuiltNetFile(where, entry.id, entry.raw_size)
    net.published_gz = Path(where)
    return net


def apply_while_downloading(source, step, where: Path, partial_dir, desc: str, base: Net | None,
                            history: Net | None, max_size: int | None, book=None,
                            link: str | None = None) -> bytearray:
    """Download patch ``step`` into ``where`` while decoding it against ``base``.

    Returns the rebuilt raw bytes once the patch's checksums (its own and the
    record's) and the id the patch promises have been checked. A failed
    download raises its own error; a failed decode stops the download.

    With a rate ``book``, the download is timed as the ``link`` rate and the
    decoding as the rebuild rate of the patch's tier (``rebuild`` or
    ``rebuild-fast``). The two overlap, so the decoding's time is its
    CPU time spread over the cores it had, not its wall time: on a slow link
    the decoder waits for bytes, and that wait says nothing of how fast it is.
    """
    def rebuild(base, history, open_patch):
        from ..patch import apply_patch       # the codecs load only for a route with a patch
        raw = apply_patch(base, step.path, history=history, max_size=max_size, open_patch=open_patch)
        return raw, len(raw)

    return _while_downloading(source, step, where, partial_dir, desc, book, link, rebuild, base, history)


class RebuiltNetFile:
    """A verified net kept as the gzip file it was rebuilt into, not in memory.

    It stands in for a :class:`~lc0weights.net.Net` at the end of a route:
    ``id``, ``raw_size``, and ``published_gz`` (the file, stored into the
    cache as it is, as a downloaded net's gzip is). :attr:`raw` reads the file
    back, checked against the id, only for a caller that needs the bytes.
    """

    def __init__(self, path: Path, net_id: str, raw_size: int):
        self.published_gz = Path(path)
        self.id = net_id
        self.raw_size = raw_size
        self._net: Net | None = None

    @property
    def raw(self):
        if self._net is None:
            net = Net.load(self.published_gz, self.raw_size)
            if net.id != self.id:
                raise IntegrityError(f"{self.published_gz}: changed since it was rebuilt "
                                     f"(id {net.id[:16]}..., not {self.id[:16]}...)")
            net._id = self.id
            self._net = net
        return self._net.raw


def rebuild_file_while_downloading(source, step, where: Path, output: Path, partial_dir, desc: str,
                                   base: Net | None, history: Net | None, max_size: int | None, book=None,
                                   link: str | None = None) -> RebuiltNetFile:
    """:func:`apply_while_downloading`, the net rebuilt straight into the gzip file ``output``.

    The rebuilt bytes are hashed and gzipped as they are decoded, so memory
    holds the base (and history) and a few chunks, never the rebuilt net: the
    last step of a route needs nothing more, the cache stores the file as it
    is (the bytes :func:`~lc0weights.net.write_net_file` would write). The id
    is the one the patch promises, checked on the way. The gzipping is timed
    apart, as the gzip rate, and left out of the rebuild's: routes are
    estimated as a rebuild and then a gzip into the cache.
    """
    gzip_cpu = [0.0]

    def rebuild(base, history, open_patch):
        from ..patching import rebuilt_pieces       # the codecs load only for a route with a patch
        size = 0
        with closing(rebuilt_pieces(base, step.path, history, max_size=max_size, open_patch=open_patch)) \
                as pieces, atomic_file(output) as f:
            sink = gzipio.GzipWriter(f, GZIP_LEVEL)
            while True:
                try:
                    piece = next(pieces)
                except StopIteration as end:
                    net_id = end.value
                    break
                size += len(piece)
                started = time.thread_time()        # the decoding runs on other threads meanwhile
                sink.write(piece)
                gzip_cpu[0] += time.thread_time() - started
            started = time.thread_time()
            sink.close()
            gzip_cpu[0] += time.thread_time() - started
        return RebuiltNetFile(output, net_id, size), size

    return _while_downloading(source, step, where, partial_dir, desc, book, link, rebuild, base, history,
                              gzip_cpu)


def held(net):
    """A held net given either as it is or as a function that reads it (see :func:`_while_downloading`)."""
    return net() if callable(net) else net


def _while_downloading(source, step, where: Path, partial_dir, desc: str, book, link, rebuild, base, history,
                       gzip_cpu=None):
    """Run ``rebuild(base, history, open_patch)`` on patch ``step`` while a thread downloads it
    into ``where``; ``rebuild`` returns (result, rebuilt raw size). ``base`` and ``history``
    may be functions that read the held nets: they are called once the download has started,
    so reading (gunzipping, hashing) them overlaps the patch's first bytes instead of coming
    before them. The result is handed back only once the download's checksums have been
    verified too, and only then are the rates recorded. ``gzip_cpu[0]``, when given, is the
    CPU time ``rebuild`` spent gzipping: the gzip rate's, not the rebuild's."""
    from ..patching.streaming import ArrivingPatch
    policy = getattr(source, "policy", None)
    wait = 2 * policy.deadline_for(step.size) if policy is not None else 3600.0
    arrival = ArrivingPatch(step.size, step.path, wait + _WAIT_SLACK_SECONDS)

    def download():
        try:
            with timing(book if link else None, link or "") as transfer:
                source.fetch_object(step.path, where, step.size, step.sha256, desc=desc,
                                    partial_dir=partial_dir, tap=arrival)
                transfer.amount = step.size
            arrival.complete()
        except BaseException as e:          # noqa: BLE001 - handed to the decoding thread
            arrival.fail(e)

    thread = threading.Thread(target=download, name=f"download {step.path}", daemon=True)
    thread.start()
    try:
        base, history = held(base), held(history)       # read while the patch's first bytes arrive
        cpu_started = time.process_time()
        result, size = rebuild(base, history, lambda _path: arrival.source())
        arrival.wait_verified()
        if book is not None:
            gzipping = gzip_cpu[0] if gzip_cpu is not None else 0.0
            book.record(rebuild_rate_name(step.tier), size, (time.process_time() - cpu_started - gzipping) / (os.cpu_count() or 1))
            if gzip_cpu is not None:
                book.record("gzip", size, gzipping)
    except BaseException:
        arrival.cancel()
        raise
    finally:
        thread.join()
        arrival.close()
    return result
