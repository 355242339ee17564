"""The client: bring the cache up to a published net with as few bytes as possible.

Read the index, list the nets the cache holds, take the cheapest route (patches
from a held net, or a full download; cheapest in bytes, or with ``prefer="time"``
in estimated seconds, see :mod:`.route` and :mod:`.link_rate`), check every object's sha256 before
using it and every rebuilt net's id after, and write the result atomically.
A route that fails part-way (corrupt patch, vanished object, server error) is
dropped and the next cheapest route is tried, down to the full net.
"""
from __future__ import annotations

import logging
import os
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from ..errors import Lc0WeightsError
from ..net import Net, atomic_file, write_net_file
from .cache import NetCache
from .download import TransferPolicy, open_source
from .engine import checked_net
from ..repository.errors import NoRouteError
from ..repository.index import NetEntry, parse_index
from .link_rate import RateBook, link_name, timing
from .receive import apply_while_downloading, fetch_full_net
from .route import PREFER, TimeCosts, cheapest_route, route_costs
from .staging import PARTIAL_MIN_AGE, TEMP_MIN_AGE, sweep_stale, work_folder
from ..repository.updater import Updater

log = logging.getLogger(__name__)
MAX_ROUTE_ATTEMPTS = 6
PARTIAL_DIR = ".partial"             # downloads in progress, named by sha256: resumed by the next run


@dataclass
class FetchResult:
    net_id: str                      # the net obtained (a lossy id when a tolerance was accepted)
    target_id: str                   # the net asked for
    path: str                        # where it sits in the cache
    out: str | None
    route: str                       # what was downloaded, e.g. "abcd1234->ef567890"
    start: str | None                # the held net the route began from
    patches: int
    history_patches: int             # of which patches that also needed the net before their base
    bytes_downloaded: int            # every byte read from the source, metadata included
    metadata_bytes: int              # of which metadata (timestamp, root, records, or a schema-1 index)
    full_size: int                   # size of the full .pb.gz of the target (0: held, not looked up)
    seconds: float
    fallbacks: list[str] = field(default_factory=list)  # routes that failed, with why
    prefer: str = "bytes"            # what the route minimised: "bytes" or "time"
    estimate: dict = field(default_factory=dict)        # the route's bytes and seconds, and the rates used

    def to_dict(self) -> dict:
        return asdict(self)


def fetch(location: str, net: str = "latest", cache_dir=None, out=None,
          client_layout: bool = False, tolerance: float | None = None,
          policy: TransferPolicy | None = None, source=None, trust=None, have=(),
          prefer: str = "bytes", rates: RateBook | None = None) -> FetchResult:
    """Fetch ``net`` ("latest" or an id) from a repository URL or directory into the cache.

    ``trust`` pins the repository's root key (``ed25519:...``, ``@FILE`` or a
    PublicKey): every document and object is then checked against signed
    metadata. Without it nothing is authenticated, and a warning says so.
    ``have`` names more files that may hold nets to use as patch bases.
    ``prefer`` is "bytes" (fewest bytes, the default here) or "time" (least
    estimated time at the rates in ``rates``, by default the book kept in the
    cache folder). Transfers and rebuilds are timed into that book either way.
    """
    started = time.monotonic()
    published = None
    source = source or open_source(location, policy)
    cache = NetCache(cache_dir, client_layout, have)
    book = rates if rates is not None else RateBook.load(cache.root)
    plan = _Plan(prefer, book, link_name(source))
    updater = Updater(source, trust, trust_state_dir(cache))
    try:
        held = cache.held_ids()
        index, target = read_catalog(updater, held, net, tolerance)
        _declare_largest(source, index)
        cache.root.mkdir(parents=True, exist_ok=True)
        try:
            result, route, fallbacks = obtain(index, _goals(index, target, tolerance), source, cache, plan)
        except NoRouteError:
            if index.nets or updater.timestamp is None:
                raise
            # The copy held under the wanted net's name is not that net: read the records after all.
            index, target = updater.catalog(net, held - {target}, tolerance)
            _declare_largest(source, index)
            result, route, fallbacks = obtain(index, _goals(index, target, tolerance), source, cache, plan)
        metadata_bytes = updater.metadata_bytes
        if result is None:
            raise NoRouteError(f"cannot fetch {target[:16]}... from {source}: every route failed "
                               f"(last: {fallbacks[-1] if fallbacks else 'none tried'})")
        # Replaces whatever sat under the name (never writing through it); a full download
        # stores the repository's own gzip file.
        published = getattr(result, "published_gz", None)
        if out is not None:
            _write_out(out, result, published)
        with timing(book if route.patch_count else None, "gzip") as stored:   # rates: gzip into the cache
            path = cache.store(result, gz=published)
            stored.amount = len(result.raw)
        updater.save()                  # what was accepted is remembered only once it has been used
    finally:
        updater.close()
        book.save()
        if published is not None:
            published.unlink(missing_ok=True)      # kept: an equal verified file was there already
    target_entry = index.net(target)          # None when the net was held: no record was read
    return FetchResult(
        net_id=result.id, target_id=target, path=str(path), out=None if out is None else str(out),
        route=route.describe(), start=route.start, patches=route.patch_count,
        history_patches=sum(getattr(step, "history", None) is not None for step in route.steps),
        bytes_downloaded=source.bytes_downloaded, metadata_bytes=metadata_bytes,
        full_size=target_entry.size if target_entry else 0,
        seconds=round(time.monotonic() - started, 3), fallbacks=fallbacks,
        prefer=prefer, estimate=plan.estimate(index, route))


def _declare_largest(source, index) -> None:
    """Size the fetch's byte budget by the largest object it may need."""
    budget = getattr(source, "budget", None)
    if budget is not None:
        budget.declare(max([n.size for n in index.nets] + [p.size for p in index.patches], default=0))


def _goals(index, target: str, tolerance: float | None) -> set[str]:
    """The wanted net, and with a tolerance every published lossy net standing for it."""
    goals = {target}
    if tolerance is not None:
        goals |= {p.result for p in index.patches
                  if p.lossy and p.target == target and p.tolerance <= tolerance}
    return goals


def trust_state_dir(cache: NetCache) -> Path:
    return cache.root / ".lc0weights-trust"


def read_catalog(updater: Updater, held, net: str = "latest", tolerance=None):
    """The verified nets and patches a route to ``net`` may use, and that net's id.

    A repository with signed metadata goes through the :class:`Updater`'s
    checks; a schema-1 ``index.json`` is read only when no key is pinned.
    """
    if updater.refresh() is not None:
        return updater.catalog(net, held, tolerance)
    index = parse_index(updater.counted(updater.source.read_index))
    return index, index.resolve(net)


class _Plan:
    """How routes are weighed (``prefer``) and where their work is timed (``book``, ``link``)."""

    def __init__(self, prefer: str, book: RateBook, link: str):
        if prefer not in PREFER:
            raise ValueError(f"prefer must be one of {', '.join(PREFER)}, not {prefer!r}")
        self.prefer, self.book, self.link = prefer, book, link
        self.rates = None               # the rates the last route was chosen with

    def costs(self, index):
        self.rates = self.book.rates(self.link)
        return route_costs(self.prefer, index, self.rates)

    def estimate(self, index, route) -> dict:
        """What fetch --json reports: the route's bytes and estimated seconds, and the rates behind them.

        The rates are those the route was chosen with, not the ones its own transfers updated.
        """
        rates = self.rates or self.book.rates(self.link)
        return {"bytes": route.cost, "seconds": round(TimeCosts(index, rates).route_seconds(route), 3),
                "link": self.link[len("link "):], "rates": rates.to_dict()}


def obtain(index, goals, source, cache: NetCache, plan: _Plan | None = None):
    """Reach any of ``goals`` from what ``cache`` holds; return (net or None, route, failures).

    Each failed route is recorded and its failing object excluded, so the next
    try takes the next cheapest route, ending with a full download.
    """
    held = cache.held_ids()
    fallbacks: list[str] = []
    exclude: set[str] = set()
    route = None
    for _ in range(MAX_ROUTE_ATTEMPTS):
        try:
            route = cheapest_route(index, goals, held, exclude, plan and plan.costs(index))
        except NoRouteError:
            if not fallbacks:
                raise
            break
        if not route.steps:                      # the cache already holds it
            net = cache.load(route.start)
            if net is not None:
                return net, route, fallbacks
            held.discard(route.start)
            continue
        try:
            return _follow(route, source, cache, index, plan), route, fallbacks
        except _BadBase as e:
            held.discard(e.net_id)
            fallbacks.append(f"{route.describe()}: {e}")
        except _StepFailed as e:
            exclude.add(e.object_path)
            fallbacks.append(f"{route.describe()}: {e}")
            log.warning("route %s failed (%s); trying another", route.describe(), e)
    return None, route, fallbacks


class _BadBase(Lc0WeightsError):
    def __init__(self, net_id: str):
        super().__init__(f"cached net {net_id[:16]}... is missing or corrupt")
        self.net_id = net_id


class _StepFailed(Lc0WeightsError):
    """One object of a route failed; carries its path so the route search skips it."""

    def __init__(self, object_path: str, cause: Exception):
        super().__init__(str(cause))
        self.object_path = object_path


def sweep_cache(root: Path) -> None:
    """Remove what killed fetches left: work folders and temp files after an hour, partials after a week.

    Nothing a live process holds a lock on is touched.
    """
    sweep_stale(root, TEMP_MIN_AGE)
    if (root / PARTIAL_DIR).is_dir():
        sweep_stale(root / PARTIAL_DIR, TEMP_MIN_AGE, PARTIAL_MIN_AGE)


def _follow(route, source, cache: NetCache, index, plan: _Plan | None = None) -> Net:
    """Download and apply each step of ``route``; return the verified final net.

    The net before the current one is kept too: a history patch needs it.
    """
    current, previous = None, None
    book = plan and plan.book
    if route.start is not None:
        current = cache.load(route.start)
        if current is None:
            raise _BadBase(route.start)
    sweep_cache(cache.root)
    partial_dir = cache.root / PARTIAL_DIR
    partial_dir.mkdir(exist_ok=True)
    with work_folder(cache.root) as tmp:
        for i, step in enumerate(route.steps):
            where = Path(tmp) / f"step-{i}"
            desc = f"{'net' if isinstance(step, NetEntry) else 'patch'} {i + 1}/{len(route.steps)}"
            try:
                if isinstance(step, NetEntry):
                    # Gunzipped and hashed as it arrives; the published gzip stays a file.
                    with timing(book, plan and plan.link) as transfer:   # rates: link bytes/s
                        current, previous = fetch_full_net(source, step, where, partial_dir, desc), None
                        transfer.amount = step.size
                    continue
                history = None
                if step.history is not None:
                    history = previous if previous is not None and previous.id == step.history \
                        else cache.load(step.history)
                    if history is None:
                        raise _BadBase(step.history)
                # The rebuilt net is the size of its target (a lossy one too): refuse
                # a patch that declares more before anything is allocated for it.
                entry = index.net(step.target)
                # Decoded while it downloads; returned only once the patch and the net check out.
                # The download and the decoding are timed apart (link and rebuild rates).
                raw = apply_while_downloading(source, step, where, partial_dir, desc, current, history,
                                              entry.raw_size if entry else None,
                                              book=book, link=plan and plan.link)
                where.unlink(missing_ok=True)
                rebuilt = checked_net(raw, step.result, f"patch {step.path}")
                current, previous = rebuilt, current
            except Lc0WeightsError as e:
                if isinstance(e, _BadBase):
                    raise
                raise _StepFailed(step.path, e) from None
        _keep_published(current, cache.root)
    return current


def _keep_published(net: Net, root: Path) -> None:
    """Move a downloaded net's published gzip out of the work folder before it is removed.

    It waits beside the cache under a temp name (swept if the process dies)
    until :meth:`NetCache.store` renames it into place: the cache keeps
    exactly the repository's object, never a second gzip of it.
    """
    gz = getattr(net, "published_gz", None)
    if gz is None:
        return
    fd, name = tempfile.mkstemp(prefix=".published-", suffix=".tmp", dir=root)
    os.close(fd)
    os.replace(gz, name)
    net.published_gz = Path(name)


def _write_out(out, net: Net, published: Path | None) -> None:
    """Write the fetched net to ``out``: a copy of the published gzip when both are gzip."""
    if published is None or not str(out).endswith(".gz"):
        write_net_file(out, net.raw)
        return
    with open(published, "rb") as src, atomic_file(out) as dst:
        shutil.copyfileobj(src, dst, 1 << 20)
