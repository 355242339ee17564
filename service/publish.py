"""``publish``: add nets to a repository, with patches that let clients catch up cheaply.

Each new net is stored whole and gets a patch from its predecessor plus skip
patches from 2, 4, 8 and 16 nets back and from the skip list's powers of two,
so a client any number of nets behind needs only a few hops. With a
tolerance, a lossy chain is published too: each lossy patch is made against
the lossy net clients actually rebuild (closed loop), so errors never add up
along the chain. With history (the default) the predecessor's patch is also
made with the net before it as history, and the lossy chain's link with an
earlier net of the chain; each is published beside the plain one when smaller. Publishing a net the
repository already knows does nothing.
"""
from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass, field
from pathlib import Path

from lc0weights.client.cache import NetCache
from lc0weights.client.engine import apply_patch, checked_net, make_patch
from lc0weights.repository.errors import RepositoryError
from lc0weights.repository.index import NetEntry, PatchEntry, net_object_path, patch_object_path
from lc0weights.repository.metadata import Record, link_distances
from lc0weights.errors import Lc0WeightsError, NetFormatError
from lc0weights.net import GZIP_MAGIC, Net, gzip_bytes
from lc0weights.wire import iter_fields

from .repository import Repository, utc_text_now

log = logging.getLogger(__name__)
SKIPS = (1, 2, 4, 8, 16)
MAX_POWER_SKIP = 1024      # further back, a patch costs about what the net does
HISTORY_GAPS = (1, 2, 4)   # lossy links back whose base a lossy link's history may be


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
            allow_older: bool = False) -> list[Published]:
    out = []
    for path in paths:
        net, gz = load_net_file(path)
        out.append(publish_net(repo, net, gz, Path(path).name, tolerance, codec, skips, history,
                               allow_older))
    return out


def patch_distances(seq: int, skips=SKIPS) -> list[int]:
    """How far back net ``seq`` gets patches from: the skips, and the skip list's powers of two.

    The powers (every 2^j dividing ``seq``, up to MAX_POWER_SKIP) cost one
    extra patch per 16 nets on average and give a client far behind a route
    of O(log distance) patches along the same links it reads metadata by.
    """
    return [d for d in link_distances(seq, skips) if d in skips or d <= MAX_POWER_SKIP]


def publish_net(repo: Repository, net: Net, gz: bytes, source: str = "",
                tolerance: float | None = None, codec: str | None = None,
                skips=SKIPS, history: bool = True, allow_older: bool = False) -> Published:
    """Publish one net: its objects and record first, then the signed timestamp naming them.

    With ``history`` the predecessor's patch is also made with the net before
    it as history (temporal prediction: published SWA averages move the same
    way step after step) and published beside the plain one when smaller;
    a client holding both nets takes it.
    """
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

        patches = []
        for back in patch_distances(seq, skips):
            if seq - back >= horizon:
                base = Net.load(repo.object_file(net_object_path(repo.net_at(seq - back))))
                data = make_patch(base, net, codec=codec)
                if len(data) < len(gz):             # never a patch dearer than the net itself
                    patches.append(_store_patch(repo, base, net, data, seq - back))
                if back == 1 and history and seq - 2 >= horizon:
                    plain = min([len(data), len(gz)] + [p.size for p in patches if p.base_seq == seq - 1])
                    patches += _history_patch(repo, base, net, seq, plain, codec)
        if tolerance is not None and seq > horizon:
            patches += _lossy_patches(repo, seq, net, tolerance, codec, history)

        if seq > horizon and not any(p.base_seq == seq - 1 for p in patches):
            log.warning("%s shares little with the net before it (no patch from it is smaller than the "
                        "net itself): clients will download it whole. Is it from the same run?",
                        source or net.id[:16])
        links = [repo.link_to(seq - d) for d in link_distances(seq) if seq - d >= horizon]
        repo.add_net(Record(repository=repo.repository_id(), seq=seq, net=entry,
                            patches=patches, links=links))
        for p in patches:
            log.info("  patch %s -> %s: %d bytes (%s%s)", p.base[:8], p.result[:8], p.size, p.mode,
                     f", history {p.history[:8]}" if p.history else "")
        return Published(net.id, source, True, patches)


def _history_patch(repo: Repository, base: Net, net: Net, seq: int, plain: int, codec) -> list[PatchEntry]:
    """The predecessor's patch coded with the net before it as history, when that is smaller."""
    before = Net.load(repo.object_file(net_object_path(repo.net_at(seq - 2))))
    data = make_patch(base, net, codec=codec, history=before)
    if len(data) >= plain:
        return []
    return [_store_patch(repo, base, net, data, seq - 1, history=before.id)]


def _store_patch(repo: Repository, base: Net, target: Net, data: bytes, base_seq: int,
                 result: str | None = None, tolerance: float | None = None,
                 history: str | None = None) -> PatchEntry:
    sha = hashlib.sha256(data).hexdigest()
    entry = PatchEntry(base=base.id, target=target.id, result=result or target.id,
                       path=patch_object_path(sha), size=len(data), sha256=sha,
                       mode="lossless" if tolerance is None else "tolerance", tolerance=tolerance,
                       base_seq=base_seq, history=history)
    repo.write_object(entry.path, data)
    return entry


def _lossy_patches(repo: Repository, seq: int, net: Net, tolerance: float, codec,
                   history: bool) -> list[PatchEntry]:
    """Next link of the lossy chain, made against the lossy net clients hold (closed loop),
    and with ``history`` the same link coded with an earlier net of the chain as history.

    The history is the base of the link 1, 2 or 4 links back, whichever codes
    smaller: where a step moves the weights by less than the tolerance's
    quantisation step, several steps of the chain predict better than one. The
    lossy nets the next link may use are kept in ``.state/lossy``; when the
    head is gone (or the chain never started) the chain starts again from the
    exact predecessor, which every client following exactly also holds. Both
    patches of a link must rebuild the same net: history changes how residuals
    are coded, and a history version that would pick other residuals (a float
    layer coding smaller exact, say) is left out rather than fork the chain.
    """
    links = _chain_links(repo, seq - 1, tolerance)
    lossy_cache = NetCache(repo.state_dir / "lossy")
    base = lossy_cache.load(links[0].result) if links else None
    befores = []
    if base is None:
        if links:
            log.warning("lossy net %s... is not in %s; restarting the lossy chain from the exact net",
                        links[0].result[:16], lossy_cache.root)
        base = Net.load(repo.object_file(repo.read_record(seq - 1).net.path))
        links = []
    elif history:
        befores = [n for n in (_held_net(repo, lossy_cache, links[gap - 1].base)
                               for gap in HISTORY_GAPS if gap <= len(links)) if n is not None]
    data = make_patch(base, net, tolerance=tolerance, codec=codec)
    result = _rebuilt(base, data, None)
    if result.id == net.id:
        return []                         # the tolerance changed nothing: the exact patches serve
    lossy_cache.store(result)             # publisher-private: the next link starts from it
    # Every net a later link may take as history: the chain's last max(HISTORY_GAPS) bases.
    keep = {result.id, base.id} | {link.base for link in links[:max(HISTORY_GAPS) - 1]}
    for held in lossy_cache.held_ids() - keep:
        lossy_cache.file_for(held).unlink(missing_ok=True)
    entries = [_store_patch(repo, base, net, data, seq - 1, result=result.id, tolerance=tolerance)]
    coded = [(make_patch(base, net, tolerance=tolerance, codec=codec, history=b), b) for b in befores]
    for with_history, before in sorted(coded, key=lambda c: len(c[0]))[:1]:
        if len(with_history) < len(data) and _rebuilt(base, with_history, before).id == result.id:
            entries.append(_store_patch(repo, base, net, with_history, seq - 1, result=result.id,
                                        tolerance=tolerance, history=before.id))
    return entries


def _chain_links(repo: Repository, seq: int, tolerance: float) -> list[PatchEntry]:
    """The lossy chain's links into net ``seq`` and the nets before it, newest first, as
    many as a history may reach back and as far as they join up (each one's base the
    next one's result)."""
    links = []
    for s in range(seq, seq - max(HISTORY_GAPS), -1):
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


def _rebuilt(base: Net, data: bytes, history: Net | None) -> Net:
    """The net a lossy patch rebuilds, checked as a client checks it."""
    try:
        rebuilt = apply_patch(base, data, history=history)
    except Lc0WeightsError as e:
        raise RepositoryError(f"the lossy patch does not apply to its own base: {e}") from None
    return checked_net(rebuilt, hashlib.sha256(rebuilt).hexdigest(), "lossy net")


def _held_net(repo: Repository, lossy_cache: NetCache, net_id: str) -> Net | None:
    """A net the publisher holds: a lossy one of the chain, or a published one; None if neither."""
    net = lossy_cache.load(net_id) if net_id in lossy_cache.held_ids() else None
    if net is None and repo.known(net_id):
        try:
            net = Net.load(repo.object_file(net_object_path(net_id)))
        except (OSError, Lc0WeightsError):          # pruned since
            return None
    return net
