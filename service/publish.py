"""``publish``: add nets to a repository, with patches that let clients catch up cheaply.

Each new net is stored whole and gets a patch from its predecessor plus skip
patches from 2, 4, 8 and 16 nets back, so a client any number of nets behind
needs only a few hops. With a tolerance, a lossy chain is published too: each
lossy patch is made against the lossy net clients actually rebuild (closed
loop), so errors never add up along the chain. Publishing a net the
repository already knows does nothing.
"""
from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass, field
from pathlib import Path

from lc0weights.distribution.cache import NetCache
from lc0weights.distribution.download import LocalSource
from lc0weights.distribution.engine import apply_patch, checked_net, make_patch
from lc0weights.distribution.errors import RepositoryError
from lc0weights.distribution.fetch import obtain
from lc0weights.distribution.index import NetEntry, PatchEntry, net_object_path, patch_object_path
from lc0weights.errors import Lc0WeightsError, NetFormatError
from lc0weights.net import GZIP_MAGIC, Net, gzip_bytes
from lc0weights.wire import iter_fields

from .repository import Repository, utc_now

log = logging.getLogger(__name__)
SKIPS = (1, 2, 4, 8, 16)


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


def publish(repo: Repository, paths, tolerance: float | None = None,
            codec: str | None = None, skips=SKIPS) -> list[Published]:
    out = []
    for path in paths:
        net, gz = load_net_file(path)
        out.append(publish_net(repo, net, gz, Path(path).name, tolerance, codec, skips))
    return out


def publish_net(repo: Repository, net: Net, gz: bytes, source: str = "",
                tolerance: float | None = None, codec: str | None = None,
                skips=SKIPS) -> Published:
    """Publish one net: its objects first, then the index naming them."""
    with repo.lock():
        index = repo.read_index()
        if index.known(net.id):
            log.info("%s (%s) is already published", source or net.id[:16], net.id[:16])
            return Published(net.id, source, False)
        log.info("publishing %s as %s", source or "net", net.id)
        entry = NetEntry(id=net.id, path=net_object_path(net.id), size=len(gz),
                         sha256=hashlib.sha256(gz).hexdigest(), raw_size=len(net.raw),
                         training_steps=training_steps(net.raw), published=utc_now(),
                         predecessor=index.latest, source=source[:256])
        repo.write_object(entry.path, gz)

        patches = []
        for back in sorted(set(skips)):
            if back <= len(index.nets):
                base_entry = index.nets[-back]
                base = Net.load(repo.object_file(base_entry.path))
                patches.append(_store_patch(repo, base, net, make_patch(base, net, codec=codec)))
        if tolerance is not None and index.latest is not None:
            patches.append(_lossy_patch(repo, index, net, tolerance, codec))

        index.nets.append(entry)
        index.patches.extend(patches)
        index.latest = net.id
        repo.commit(index)
        for p in patches:
            log.info("  patch %s -> %s: %d bytes (%s)", p.base[:8], p.result[:8], p.size, p.mode)
        return Published(net.id, source, True, patches)


def _store_patch(repo: Repository, base: Net, target: Net, data: bytes, result: str | None = None,
                 tolerance: float | None = None) -> PatchEntry:
    sha = hashlib.sha256(data).hexdigest()
    entry = PatchEntry(base=base.id, target=target.id, result=result or target.id,
                       path=patch_object_path(sha), size=len(data), sha256=sha,
                       mode="lossless" if tolerance is None else "tolerance", tolerance=tolerance)
    repo.write_object(entry.path, data)
    return entry


def _lossy_patch(repo: Repository, index, net: Net, tolerance: float, codec) -> PatchEntry:
    """Next link of the lossy chain, made against the lossy net clients hold (closed loop)."""
    heads = index.lossy_results(index.latest, tolerance)
    lossy_cache = NetCache(repo.state_dir / "lossy")
    if heads:
        base, _route, failures = obtain(index, {heads[-1]}, LocalSource(repo.root), lossy_cache)
        if base is None:
            raise RepositoryError(f"cannot rebuild the lossy net {heads[-1][:16]}...: {failures}")
    else:  # the chain starts from the exact predecessor
        base = Net.load(repo.object_file(index.net(index.latest).path))
    data = make_patch(base, net, tolerance=tolerance, codec=codec)
    try:
        rebuilt = apply_patch(base, data)
    except Lc0WeightsError as e:
        raise RepositoryError(f"the lossy patch does not apply to its own base: {e}") from None
    result = checked_net(rebuilt, hashlib.sha256(rebuilt).hexdigest(), "lossy net")
    lossy_cache.store(result)           # publisher-private: the next link starts from it
    for held in lossy_cache.held_ids() - {result.id, base.id}:
        lossy_cache.file_for(held).unlink(missing_ok=True)
    return _store_patch(repo, base, net, data, result=result.id, tolerance=tolerance)
