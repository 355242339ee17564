"""The client: bring the cache up to a published net with as few bytes as possible.

A fetch walks five stages once, top to bottom, each in its own module:

1. catalogue (:mod:`..repository.updater`): the signed timestamp, root and the
   records a route needs, checked against the pinned key, as one
   :class:`~..repository.index.Catalogue`;
2. route (:mod:`.route`): the cheapest way from the nets held to the wanted
   one, in bytes or (``prefer="time"``) in estimated seconds at the rates
   :mod:`.link_rate` measured;
3. objects (:mod:`.download` through :mod:`.receive`): each patch or net,
   its sha256 checked against the signed record as it arrives;
4. rebuild (:mod:`.receive`, :mod:`.engine`): each patch decoded while it
   downloads, and every rebuilt net's id checked;
5. store (:mod:`.cache`): the verified net written atomically.

A route that fails part-way (corrupt patch, vanished object, server error) is
dropped and the next cheapest route is tried, down to the full net: stages 2
to 4 repeat, never stage 1. docs/ARCHITECTURE.md tells the walk.
"""
from __future__ import annotations

import logging
import os
import shutil
import tempfile
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from ..errors import Lc0WeightsError
from ..durable_files import atomic_file
from ..net import Net, write_net_file
from ..repository.errors import NoRouteError
from ..repository.index import Catalogue, NetEntry
from ..repository.updater import Updater
from .cache import NetCache
from .client_cache import place_net
from .client_feed import KEEP_BASES, client_bases, client_state_dir, prune
from .download import TransferPolicy, open_source
from .engine import checked_id, checked_net
from .link_rate import RateBook, link_name, timing
from .receive import RebuiltNetFile, apply_while_downloading, fetch_full_net, held, rebuild_file_while_downloading
from .route import PREFER, Route, TimeCosts, cheapest_route, route_costs
from .staging import PARTIAL_MIN_AGE, TEMP_MIN_AGE, sweep_stale, work_folder

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
    metadata_bytes: int              # of which metadata (timestamp, root, records)
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
          prefer: str = "bytes", rates: RateBook | None = None, state_dir=None) -> FetchResult:
    """Fetch ``net`` ("latest" or an id) from a repository URL or directory into the cache.

    ``trust`` pins the repository's root key (``ed25519:...``, ``@FILE`` or a
    PublicKey): every document and object is then checked against signed
    metadata. Without it nothing is authenticated, and a warning says so.
    ``have`` names more files that may hold nets to use as patch bases.
    ``prefer`` is "bytes" (fewest bytes, the default here) or "time" (least
    estimated time at the rates in ``rates``, by default the book kept in the
    cache folder). Transfers and rebuilds are timed into that book either way.

    With ``client_layout``, ``cache_dir`` is lczero-client's folder (default:
    its usual place), which receives only the verified net: the fetch itself
    runs in ``state_dir`` (default: lc0weights' state folder for the client),
    whose newest two nets are kept (:func:`fetch_for_client`).
    """
    if client_layout:
        return fetch_for_client(location, client_dir=cache_dir, state_dir=state_dir, have=have, net=net,
                                out=out, tolerance=tolerance, policy=policy, source=source, trust=trust,
                                prefer=prefer, rates=rates)
    started = time.monotonic()
    published = None
    source = source or open_source(location, policy)
    cache = NetCache(cache_dir, have=have)
    held = cache.held_ids()             # the walk's input: the nets the client holds
    book = rates if rates is not None else RateBook.load(cache.root)
    plan = _Plan(prefer, book, link_name(source))
    updater = Updater(source, trust, trust_state_dir(cache))
    try:
        # 1. catalogue: the signed metadata, read once.
        catalogue, target, ready = read_catalogue(updater, cache, held, net, tolerance)
        metadata_bytes = updater.metadata_bytes
        # 2-4. route, objects, rebuild: the cheapest route, then the next while one fails.
        if ready is not None:
            result, route, fallbacks = ready, Route(start=target, steps=(), cost=0), []
            plan.estimate(catalogue, route)
        else:
            _declare_largest(source, catalogue)
            cache.root.mkdir(parents=True, exist_ok=True)
            result, route, fallbacks = obtain(catalogue, _goals(catalogue, target, tolerance), held,
                                              source, cache, plan)
        if result is None:
            raise NoRouteError(f"cannot fetch {target[:16]}... from {source}: every route failed "
                               f"(last: {fallbacks[-1] if fallbacks else 'none tried'})")
        # 5. store. Replaces whatever sat under the name (never writing through it); a full
        # download stores the repository's own gzip file.
        published = getattr(result, "published_gz", None)
        if out is not None:
            _write_out(out, result, published)
        # rates: gzip into the cache (a net rebuilt into its gzip file was timed as it was written)
        timed = route.patch_count and not isinstance(result, RebuiltNetFile)
        with timing(book if timed else None, "gzip") as stored:
            path = cache.store(result, gz=published)
            stored.amount = result.raw_size
        updater.save()                  # what was accepted is remembered only once it has been used
    finally:
        updater.close()
        book.save()
        if published is not None:
            published.unlink(missing_ok=True)      # kept: an equal verified file was there already
    target_entry = catalogue.net(target)      # None when the net was held: no record was read
    return FetchResult(
        net_id=result.id, target_id=target, path=str(path), out=None if out is None else str(out),
        route=route.describe(), start=route.start, patches=route.patch_count,
        history_patches=sum(getattr(step, "history", None) is not None for step in route.steps),
        bytes_downloaded=source.bytes_downloaded, metadata_bytes=metadata_bytes,
        full_size=target_entry.size if target_entry else 0,
        seconds=round(time.monotonic() - started, 3), fallbacks=fallbacks,
        prefer=prefer, estimate=plan.chosen)


def fetch_for_client(location: str, client_dir=None, state_dir=None, have=(), keep: int | None = KEEP_BASES,
                     **fetch_args) -> FetchResult:
    """:func:`fetch` for lczero-client's folder ``client_dir`` (default: its usual place).

    The fetch runs in ``state_dir`` (default :func:`.client_feed.client_state_dir`),
    taking the client's nets and ``have`` as bases; the net it gets is then placed
    in the client's folder, verified, under the net's lock, and ``result.path``
    names it there. ``keep`` nets stay in the state folder (the one just fetched
    always does); None keeps all. ``fetch_args`` go to :func:`fetch`.
    """
    client = NetCache(client_dir, client_layout=True)
    state = NetCache(state_dir or client_state_dir())
    result = fetch(location, cache_dir=state.root, have=client_bases(client.root, have), **fetch_args)
    result.path = str(place_net(client.root, result.net_id, result.path))
    if keep is not None:
        prune(state, keep, result.net_id)
    return result


def trust_state_dir(cache: NetCache) -> Path:
    return cache.root / ".lc0weights-trust"


# -- 1. catalogue -------------------------------------------------------------------------------
def read_catalogue(updater: Updater, cache: NetCache, held: set[str], net: str = "latest",
                   tolerance: float | None = None) -> tuple[Catalogue, str, Net | None]:
    """The verified nets and patches a route to ``net`` may use, that net's id, and the net
    itself when the cache already holds it (else None).

    A poll with nothing new reads no record: the updater lists nothing, since
    the wanted net is held. That copy is checked here, and if it is not the
    net (truncated, replaced) the records are read after all, as for a
    client that never held it, so no later stage comes back for them.
    """
    updater.refresh()
    catalogue, target = updater.catalog(net, held, tolerance)
    if catalogue.nets:
        return catalogue, target, None
    ready = cache.load(target)
    if ready is not None:
        return catalogue, target, ready
    held.discard(target)
    catalogue, target = updater.catalog(net, held, tolerance)
    return catalogue, target, None


# -- 2. route -------------------------------------------------------------------------------------
def _goals(catalogue: Catalogue, target: str, tolerance: float | None) -> set[str]:
    """The wanted net, and with a tolerance every published lossy net standing for it."""
    goals = {target}
    if tolerance is not None:
        goals |= {p.result for p in catalogue.patches
                  if p.lossy and p.target == target and p.tolerance <= tolerance}
    return goals


def _declare_largest(source, catalogue: Catalogue) -> None:
    """Size the fetch's byte budget by the largest object it may need."""
    budget = getattr(source, "budget", None)
    if budget is not None:
        budget.declare(max([n.size for n in catalogue.nets] + [p.size for p in catalogue.patches], default=0))


class _Plan:
    """How routes are weighed (``prefer``) and where their work is timed (``book``, ``link``)."""

    def __init__(self, prefer: str, book: RateBook, link: str):
        if prefer not in PREFER:
            raise ValueError(f"prefer must be one of {', '.join(PREFER)}, not {prefer!r}")
        self.prefer, self.book, self.link = prefer, book, link
        self.rates = None               # the rates the last route was chosen with
        self.chosen: dict = {}          # the estimate of the last route chosen

    def costs(self, catalogue: Catalogue):
        self.rates = self.book.rates(self.link)
        return route_costs(self.prefer, catalogue, self.rates)

    def estimate(self, catalogue: Catalogue, route: Route) -> dict:
        """What fetch --json reports, kept as :attr:`chosen`: the route's bytes and estimated
        seconds, and the rates behind them.

        The rates are those the route was chosen with, not the ones its own transfers updated.
        """
        rates = self.rates or self.book.rates(self.link)
        self.chosen = {"bytes": route.cost, "seconds": round(TimeCosts(catalogue, rates).route_seconds(route), 3),
                       "link": self.link[len("link "):], "rates": rates.to_dict()}
        return self.chosen


def obtain(catalogue: Catalogue, goals, held: set[str], source, cache: NetCache,
           plan: _Plan | None = None):
    """Reach any of ``goals`` from the ``held`` nets; return (net or None, route, failures).

    Each failed route is recorded and its failing object excluded (a held net
    that fails to load is dropped from ``held``), so the next try takes the
    next cheapest route, ending with a full download.
    """
    fallbacks: list[str] = []
    exclude: set[str] = set()
    route = None
    for _ in range(MAX_ROUTE_ATTEMPTS):
        try:
            route = cheapest_route(catalogue, goals, held, exclude, plan and plan.costs(catalogue))
        except NoRouteError:
            if not fallbacks:
                raise
            break
        if plan is not None:
            plan.estimate(catalogue, route)
        if not route.steps:                      # the cache already holds it
            net = cache.load(route.start)
            if net is not None:
                return net, route, fallbacks
            held.discard(route.start)
            continue
        try:
            return _follow(route, source, cache, catalogue, plan), route, fallbacks
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


class _HeldNet:
    """A held net read when first needed, once: a patch's download starts before its base is
    read (gunzipped and checked), so the two overlap. A net missing or corrupt is _BadBase."""

    def __init__(self, cache: NetCache, net_id: str):
        self.cache, self.id, self._net = cache, net_id, None

    def __call__(self) -> Net:
        if self._net is None:
            self._net = self.cache.load(self.id, spill=True)
            if self._net is None:
                raise _BadBase(self.id)
        return self._net


class _StepFailed(Lc0WeightsError):
    """One object of a route failed; carries its path so the route search skips it."""

    def __init__(self, object_path: str, cause: Exception):
        super().__init__(str(cause))
        self.object_path = object_path


# -- 3-4. objects and rebuild ----------------------------------------------------------------------
def sweep_cache(root: Path) -> None:
    """Remove what killed fetches left: work folders and temp files after an hour, partials after a week.

    Nothing a live process holds a lock on is touched.
    """
    sweep_stale(root, TEMP_MIN_AGE)
    if (root / PARTIAL_DIR).is_dir():
        sweep_stale(root / PARTIAL_DIR, TEMP_MIN_AGE, PARTIAL_MIN_AGE)


def _load_decoders() -> None:
    try:
        from ..patch import preload_decoders
        preload_decoders()
    except Exception as e:  # noqa: BLE001 - an optimisation only: the decoding imports them anyway
        log.debug("decoders not loaded ahead: %s", e)


def _follow(route: Route, source, cache: NetCache, catalogue: Catalogue, plan: _Plan | None = None) -> Net:
    """Download and apply each step of ``route``; return the verified final net.

    A full net is taken whole (:func:`.receive.fetch_full_net`); a patch is
    decoded while it downloads (:func:`.receive.apply_while_downloading`) and
    the net it rebuilds checked (:func:`.engine.checked_net`). The nets a step
    starts from come from the cache's holdings. The net before the current
    one is kept too: a history patch needs it.
    """
    current, previous = None, None
    book = plan and plan.book
    if any(not isinstance(step, NetEntry) for step in route.steps):
        # A route of full nets never loads the codecs; one with a patch loads them on a helper
        # thread (numba's import alone is a third of a second), while the first bytes arrive.
        threading.Thread(target=_load_decoders, name="decoder import", daemon=True).start()
    if route.start is not None:
        current = _HeldNet(cache, route.start)    # read once its patch has started to download
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
                        last = i == len(route.steps) - 1       # wanted as its file: not held
                        current, previous = fetch_full_net(source, step, where, partial_dir, desc,
                                                           keep=not last), None
                        transfer.amount = step.size
                    continue
                history = None
                if step.history is not None:
                    history = previous if previous is not None and previous.id == step.history \
                        else _HeldNet(cache, step.history)
                # The rebuilt net is the size of its target (a lossy one too): refuse
                # a patch that declares more before anything is allocated for it.
                entry = catalogue.net(step.target)
                # Decoded while it downloads; returned only once the patch and the net check out.
                # The download and the decoding are timed apart (link and rebuild rates).
                max_size = entry.raw_size if entry else None
                if i == len(route.steps) - 1:
                    # The last net goes straight into its gzip file: never held beside its base.
                    rebuilt = rebuild_file_while_downloading(
                        source, step, where, Path(tmp) / f"net-{i}.pb.gz", partial_dir, desc, current,
                        history, max_size, book=book, link=plan and plan.link)
                    checked_id(rebuilt.id, step.result, f"patch {step.path}")
                else:
                    raw = apply_while_downloading(source, step, where, partial_dir, desc, current, history,
                                                  max_size, book=book, link=plan and plan.link)
                    rebuilt = checked_net(raw, step.result, f"patch {step.path}")
                where.unlink(missing_ok=True)
                current, previous = rebuilt, held(current)
            except Lc0WeightsError as e:
                if isinstance(e, _BadBase):
                    raise
                raise _StepFailed(step.path, e) from None
        current = held(current)
        _keep_published(current, cache.root)
    return current


# -- 5. store ------------------------------------------------------------------------------------
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
