"""``publish``: add nets to a repository, with patches that let clients catch up cheaply.

Each new net is stored whole and gets a patch from its predecessor plus skip
patches from further back (service/patch_policy.py: 4 and 16 nets), each
kept only when it is smaller than the net and no nearer patches rebuild the
net for less. With a
tolerance, a lossy chain is published too: each lossy patch is made against
the lossy net clients actually rebuild (closed loop), so errors never add up
along the chain. With history (the default) the predecessor's patch is also
made with the net before it as history, and the lossy chain's link with an
earlier net of the chain; each is published beside the plain one when smaller. Nets of at least
``fast_tier_min_weights`` codable weights get their patches in two coding tiers (patch_policy.py:
fast for every candidate, cm too for the predecessor's). Publishing a net the repository already
knows does nothing.
"""
from __future__ import annotations

import hashlib
import logging
import os
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from lc0weights.client.cache import NetCache
from lc0weights.repository.errors import RepositoryError
from lc0weights.repository.index import NetEntry, PatchEntry, net_object_path, patch_object_path
from lc0weights.repository.metadata import Record, link_distances
from lc0weights.errors import Lc0WeightsError, NetFormatError
from lc0weights.net import GZIP_MAGIC, Net, gzip_bytes
from lc0weights.patching.encode import TIERS
from lc0weights.wire import iter_fields

from .encode_pool import Encoded, Job, MappedNet, Scratch, run_jobs, start_workers
from .patch_policy import (FAST_TIER_MIN_WEIGHTS, HISTORY_GAPS, MAX_POWER_SKIP, SKIPS, candidate_tiers,
                           keep_on_routes, lossy_history_gaps, patch_distances, uses_fast_tier)
from .repository import Repository, utc_text_now

log = logging.getLogger(__name__)
__all__ = ["HISTORY_GAPS", "MAX_POWER_SKIP", "SKIPS", "Published", "patch_distances", "publish", "publish_net"]


@dataclass
class Published:
    net_id: str
    source: str
    new: bool
    patches: list[PatchEntry] = field(default_factory=list)


def training_steps(raw: bytes) -> int | None:
    """``Net.training_params.training_steps`` read straight off the wire, if present."""
    steps = None
    try:
        for number, wire, start, end, _ in iter_fields(raw, 0, len(raw)):
            if number == 5 and wire == 2:
                for n, w, _s, _e, value in iter_fields(raw, start, end):
                    if n == 1 and w == 0:
                        steps = value
    except NetFormatError:
        return None
    return steps


def load_net_file(path) -> tuple[Net, bytes]:
    """A net and the gzip bytes to publish for it (the file itself when already gzip)."""
    path = Path(path)
    net = Net.load(path)
    data = path.read_bytes()
    return net, (data if data[:2] == GZIP_MAGIC else gzip_bytes(net.raw))


class OutOfOrderError(RepositoryError):
    """The net is older (by training steps) than the latest published one."""


def publish(repo: Repository, paths, tolerance: float | None = None,
            codec: str | None = None, skips=SKIPS, history: bool = True,
            allow_older: bool = False, workers: int | None = None,
            fast_tier_min_weights: int = FAST_TIER_MIN_WEIGHTS) -> list[Published]:
    """Publish ``paths`` in order; ``workers`` processes encode each net's patches (default: every core).

    ``fast_tier_min_weights``: nets with at least this many codable weights get fast-tier patches
    too (see :mod:`.patch_policy`; lowered by tests to exercise the tiers on small nets)."""
    out = []
    for path in paths:
        # Handed over in a list the callee empties: once the net is in the repository, nothing
        # keeps its bytes (the workers map its raw file instead).
        out.append(_publish_loaded(repo, list(load_net_file(path)), Path(path).name, tolerance, codec, skips,
                                   history, allow_older, workers, fast_tier_min_weights))
    return out


def publish_net(repo: Repository, net: Net, gz: bytes, source: str = "",
                tolerance: float | None = None, codec: str | None = None,
                skips=SKIPS, history: bool = True, allow_older: bool = False,
                workers: int | None = None, fast_tier_min_weights: int = FAST_TIER_MIN_WEIGHTS) -> Published:
    """Publish one net: its objects and record first, then the signed timestamp naming them.

    The candidate patches (service/patch_policy.py) are encoded side by side
    in ``workers`` processes (service/encode_pool.py); the repository gets
    the same bytes whatever the count. With ``history`` the predecessor's
    patch is also made with the net before it as history (temporal
    prediction: published SWA averages move the same way step after step)
    and published beside the plain one when smaller; a client holding both
    nets takes it.
    """
    return _publish_loaded(repo, [net, gz], source, tolerance, codec, skips, history, allow_older, workers,
                           fast_tier_min_weights)


def _publish_loaded(repo: Repository, loaded: list, source, tolerance, codec, skips, history, allow_older,
                    workers, fast_tier_min_weights=FAST_TIER_MIN_WEIGHTS) -> Published:
    """:func:`publish_net` of ``loaded`` = [net, gz], a list emptied here so the bytes can go."""
    net, gz = loaded
    loaded.clear()
    with repo.lock():
        if repo.known(net.id):
            log.info("%s (%s) is already published", source or net.id[:16], net.id[:16])
            return Published(net.id, source, False)
        ts = repo.read_timestamp()
        seq = 0 if ts is None or ts.latest is None else ts.latest.seq + 1
        horizon = 0 if ts is None else ts.horizon
        steps = training_steps(net.raw)
        if seq > horizon and not allow_older:
            latest_steps = repo.read_record(seq - 1).net.training_steps
            if steps is not None and latest_steps is not None and steps < latest_steps:
                raise OutOfOrderError(f"{source or net.id[:16]} is at training step {steps:,}, before the latest "
                                      f"published net ({latest_steps:,}): publish nets in training order "
                                      "(or pass --allow-older to make it the latest anyway)")
        log.info("publishing %s as net %d, %s", source or "net", seq, net.id)
        entry = NetEntry(id=net.id, path=net_object_path(net.id), size=len(gz),
                         sha256=hashlib.sha256(gz).hexdigest(), raw_size=len(net.raw),
                         training_steps=steps, published=utc_text_now(),
                         predecessor=None, source=source[:256])
        repo.write_object(entry.path, gz)
        del gz

        patches = []
        if seq > horizon:
            scratch = Scratch(repo.state_dir)
            fast = uses_fast_tier(sum(layer.count for layer in net.layers if layer.codable),
                                  fast_tier_min_weights)
            plan = _Plan(repo, scratch, seq, horizon, entry, codec, fast)
            try:
                plan.target = plan.write(net)
                del net                       # from here on the raw file's map stands for it
                plan.add_lossless(skips, history)
                if tolerance is not None:
                    plan.add_lossy(tolerance, history)
                start_workers(workers, len(plan.jobs))
                done = dict(zip((j.key for j in plan.jobs), run_jobs(plan.jobs, workers)))
                patches = plan.choose(done)
            finally:
                plan.stop_reading()
                scratch.close()

        if seq > horizon and not any(p.base_seq == seq - 1 for p in patches):
            log.warning("%s shares little with the net before it (no patch from it is smaller than the "
                        "net itself): clients will download it whole. Is it from the same run?",
                        source or entry.id[:16])
        links = [repo.link_to(seq - d) for d in link_distances(seq) if seq - d >= horizon]
        repo.add_net(Record(repository=repo.repository_id(), seq=seq, net=entry,
                            patches=patches, links=links))
        for p in patches:
            log.info("  patch %s -> %s: %d bytes (%s, %s tier%s)", p.base[:8], p.result[:8], p.size, p.mode,
                     p.tier, f", history {p.history[:8]}" if p.history else "")
        return Published(entry.id, source, True, patches)


class _Plan:
    """One net's candidate patches: the jobs to encode, then which results to publish."""

    def __init__(self, repo: Repository, scratch: Scratch, seq: int, horizon: int,
                 entry: NetEntry, codec: str | None, fast: bool = False):
        self.repo, self.scratch, self.seq, self.horizon = repo, scratch, seq, horizon
        self.target: Future | None = None     # the new net's raw file, being read
        self.entry, self.codec = entry, codec
        # The raw files jobs map are read side by side (gunzip and hash release the GIL): the
        # target and four or five bases of a BT4-size net are half a minute of work on one core.
        self._readers = ThreadPoolExecutor(max_workers=os.cpu_count() or 1)
        self._reads: dict[str, Future] = {}
        self.fast = fast                      # fast-tier candidates (patch_policy.candidate_tiers)
        self.jobs: list[Job] = []
        self.bases: dict[str, tuple[str, int]] = {}      # job key -> (base id, base seq)
        self.tiers: dict[str, str] = {}                  # job key -> coding tier
        self.lossy: tuple | None = None       # (tolerance, chain links, lossy cache, link base id)
        self._keys: dict[str, str] = {}       # patch sha256 -> the job key whose scratch file holds it

    def write(self, net: Net) -> Future:
        """The raw file of the net being published, written from its bytes on a reader thread."""
        self._reads[net.id] = self._readers.submit(self.scratch.put_raw_net, net.id, net.raw)
        return self._reads[net.id]

    def read(self, net_id: str, source: Path) -> Future:
        """The raw file of net ``net_id`` (read from ``source`` once, on a reader thread)."""
        if net_id not in self._reads:
            self._reads[net_id] = self._readers.submit(self.scratch.raw_net, net_id, source)
        return self._reads[net_id]

    def _net_file(self, seq: int) -> tuple[str, Future]:
        net_id = self.repo.net_at(seq)
        return net_id, self.read(net_id, self.repo.object_file(net_object_path(net_id)))

    def stop_reading(self) -> None:
        """Wait for reads in flight (the scratch folder is removed next); start no more."""
        self._readers.shutdown(wait=True, cancel_futures=True)

    def _job(self, key: str, base: tuple[str, str], base_seq: int, tier: str = "cm", **options) -> None:
        self.jobs.append(Job(key, self.target, base[1], codec=self.codec, tier=tier, **options))
        self.bases[key] = (base[0], base_seq)
        self.tiers[key] = tier

    def add_lossless(self, skips, history: bool) -> None:
        """A patch from each distance back in each of its tiers, each abandoned once it outgrows
        the net itself. Keys: ``d<back>`` and ``h1`` (history), ``-fast`` appended in the fast tier."""
        cap = self.entry.size - 1
        with_history = history and self.seq - 2 >= self.horizon
        for back in patch_distances(self.seq, skips):
            if self.seq - back >= self.horizon:
                for tier in candidate_tiers(back, self.fast, with_history):
                    self._job(_key(f"d{back}", tier), self._net_file(self.seq - back), self.seq - back, tier,
                              max_bytes=cap, weight=2 if tier == "cm" else 1)
        if with_history:
            for tier in candidate_tiers(1, self.fast):
                self._job(_key("h1", tier), self._net_file(self.seq - 1), self.seq - 1, tier, max_bytes=cap,
                          weight=2 if tier == "cm" else 1, history=self._net_file(self.seq - 2)[1])

    def add_lossy(self, tolerance: float, history: bool) -> None:
        """The lossy chain's next link, and with ``history`` its versions coded with an earlier net
        of the chain as history: the base of the link 1, 2 or 4 links back (for a net in the fast
        tier, only the gap the previous link's published history version used; 1 when none).

        The next link is made against the lossy net clients hold (closed
        loop). The lossy nets it may use are kept in ``.state/lossy``; when
        the head is gone (or the chain never started) the chain starts again
        from the exact predecessor, which every client following exactly
        also holds.
        """
        repo, seq = self.repo, self.seq
        links = _chain_links(repo, seq - 1, tolerance)
        lossy_cache = NetCache(repo.state_dir / "lossy")
        if links and links[0].result not in lossy_cache.held_ids():
            log.warning("lossy net %s... is not in %s; restarting the lossy chain from the exact net",
                        links[0].result[:16], lossy_cache.root)
            links = []
        if links:
            head = links[0].result
            base = (head, self.read(head, lossy_cache.file_for(head)))
        else:
            base = self._net_file(seq - 1)
        self.lossy = (tolerance, links, lossy_cache, base[0])
        tier = "fast" if self.fast else "cm"
        self._job("lossy", base, seq - 1, tier, tolerance=tolerance, weight=3)
        if history:
            last_gap = _last_gap(repo, seq - 1, tolerance) if self.fast else None
            for gap in lossy_history_gaps(self.fast, last_gap):
                if gap <= len(links):
                    before = self._held_file(lossy_cache, links[gap - 1].base)
                    if before is not None:
                        # Kept only when it rebuilds the link's own (checked) net: no second check.
                        self._job(f"lossy-h{gap}", base, seq - 1, tier, tolerance=tolerance, weight=2,
                                  history=before, check_error=False)

    def _held_file(self, lossy_cache: NetCache, net_id: str) -> str | None:
        """The raw file of a net the publisher holds: a lossy one of the chain or a published one."""
        for source in (lossy_cache.file_for(net_id), self.repo.object_file(net_object_path(net_id))):
            if source.is_file():
                try:
                    return self.read(net_id, source).result()
                except (OSError, EOFError, Lc0WeightsError):        # pruned or damaged since
                    self._reads.pop(net_id, None)
                    continue
        return None

    def choose(self, done: dict[str, Encoded]) -> list[PatchEntry]:
        """The patches to publish, stored: the kept lossless ones, then the lossy link(s)."""
        full = self.entry.size
        lossless = [self._entry(k, done[k]) for k in done if k.startswith("d")
                    and done[k].patch is not None and done[k].size < full]
        for tier in TIERS:
            key = _key("h1", tier)
            plain = [i for i, p in enumerate(lossless) if p.base_seq == self.seq - 1 and p.tier == tier]
            if key in done and done[key].patch is not None \
                    and done[key].size < min([full] + [lossless[i].size for i in plain]):
                lossless.insert(plain[0] + 1 if plain else 0,
                                self._entry(key, done[key], history=self.repo.net_at(self.seq - 2)))
        lossless = _without_dominated(lossless)
        key_of = {id(p): self._keys[p.sha256] for p in lossless}
        earliest = min((p.base_seq for p in lossless), default=self.seq)
        earlier = [p for s in range(self.seq - 1, earliest, -1) for p in self._record_patches(s)]
        kept = keep_on_routes(self.seq, lossless, earlier)
        for p in lossless:
            if p not in kept:
                log.info("  dropped the %s-tier patch from net %d (%d bytes): nearer patches of its tier "
                         "rebuild the net for less", p.tier, p.base_seq, p.size)
        chosen = [self._store(key_of[id(p)], p) for p in kept]
        return chosen + (self._choose_lossy(done) if self.lossy is not None else [])

    def _choose_lossy(self, done: dict[str, Encoded]) -> list[PatchEntry]:
        tolerance, links, lossy_cache, base_id = self.lossy
        link = done["lossy"]
        if link.result == self.entry.id:
            return []                     # the tolerance changed nothing: the exact patches serve
        rebuilt = MappedNet(link.rebuilt)
        lossy_cache.store(rebuilt)        # publisher-private: the next link starts from it
        # Every net a later link may take as history: the chain's last max(HISTORY_GAPS) bases.
        keep = {link.result, base_id} | {lk.base for lk in links[:max(HISTORY_GAPS) - 1]}
        for held in lossy_cache.held_ids() - keep:
            lossy_cache.file_for(held).unlink(missing_ok=True)
        chosen = [self._store("lossy", self._entry("lossy", link, tolerance=tolerance))]
        # Both versions of a link must rebuild the same net: a history version that picked
        # other residuals (a float layer coding smaller exact, say) is left out, not a fork.
        versions = [(done[k].size, gap, k) for gap in HISTORY_GAPS if (k := f"lossy-h{gap}") in done
                    and done[k].result == link.result and done[k].size < link.size]
        for _, gap, key in sorted(versions)[:1]:
            entry = self._entry(key, done[key], tolerance=tolerance, history=links[gap - 1].base)
            chosen.append(self._store(key, entry))
        return chosen

    def _entry(self, key: str, encoded: Encoded, tolerance: float | None = None,
               history: str | None = None) -> PatchEntry:
        base_id, base_seq = self.bases[key]
        self._keys[encoded.sha256] = key
        return PatchEntry(base=base_id, target=self.entry.id, result=encoded.result,
                               path=patch_object_path(encoded.sha256), size=encoded.size,
                               sha256=encoded.sha256,
                               mode="lossless" if tolerance is None else "tolerance",
                               tolerance=tolerance, base_seq=base_seq, history=history,
                               tier=self.tiers[key])

    def _store(self, key: str, entry: PatchEntry) -> PatchEntry:
        with open(self.scratch.root / f"{key}.lc0patch", "rb") as f:
            data = f.read()
        self.repo.write_object(entry.path, data)
        return entry

    def _record_patches(self, seq: int) -> list[PatchEntry]:
        try:
            record = self.repo.read_record(seq)
        except (OSError, Lc0WeightsError):              # pruned
            return []
        return [p for p in record.patches if p.base_seq is not None and not p.lossy]


def _key(name: str, tier: str) -> str:
    """A job's key: ``name`` in the cm tier, ``name-fast`` in the fast one (keys name scratch files)."""
    return name if tier == "cm" else f"{name}-{tier}"


def _without_dominated(patches: list[PatchEntry]) -> list[PatchEntry]:
    """``patches`` less each cm one that a fast one between the same nets (and with the same
    history) matches in bytes: it would be on no route, by bytes or by time. Identical bytes
    (one object path) are published once, as fast."""
    fast = {(p.base, p.result, p.history): p.size for p in patches if p.tier == "fast"}
    return [p for p in patches if p.tier != "cm" or fast.get((p.base, p.result, p.history), p.size + 1) > p.size]


def _last_gap(repo: Repository, seq: int, tolerance: float) -> int | None:
    """The history gap of the published history version of the lossy link into net ``seq``:
    its history is the base of the link ``gap`` links before it. None when there is none."""
    try:
        record = repo.read_record(seq)
    except (OSError, Lc0WeightsError):
        return None
    histories = {p.history for p in record.patches if p.lossy and p.tolerance == tolerance and p.history}
    if not histories:
        return None
    links = _chain_links(repo, seq, tolerance, max(HISTORY_GAPS) + 1)
    return next((gap for gap in HISTORY_GAPS if gap < len(links) and links[gap].base in histories), None)


def _chain_links(repo: Repository, seq: int, tolerance: float, depth: int = max(HISTORY_GAPS)) -> list[PatchEntry]:
    """The lossy chain's links into net ``seq`` and the nets before it, newest first, at most
    ``depth`` (as many as a history may reach back) and as far as they join up (each one's
    base the next one's result)."""
    links = []
    for s in range(seq, seq - depth, -1):
        if s < 0:
            break
        try:
            record = repo.read_record(s)
        except (OSError, Lc0WeightsError):              # pruned, or never published
            break
        found = [p for p in record.patches if p.lossy and p.tolerance == tolerance and p.history is None]
        if not found or (links and found[-1].result != links[-1].base):
            break
        links.append(found[-1])
    return links
