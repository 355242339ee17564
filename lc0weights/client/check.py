"""``check``: prove a published repository is sound, for CI and for operators.

With a pinned key the signed metadata is verified first (root, timestamp,
every record by its hash, every link between records); then every full net
object is downloaded and must hash to its id; every patch is applied to its
base and must rebuild the net it promises; a tolerance patch's result must
also stay within its tolerance of the target, weight by weight, as the engine
decodes them (``check`` holds every target, so it can test each lossy claim a
client has to take on trust). Failures are grouped by kind; any failure makes
the exit status non-zero.

After a ``prune``, some patches kept in the records start from a net only
pruned nets rebuild: a history patch whose history net was pruned, and the
lossy chain's links whose first base came from a pruned net. Clients that
held those nets before the prune can still take them, so they stay published,
but nothing in the repository can rebuild their inputs: ``check`` skips them
and counts them as skipped, never as failures. A patch whose input is neither
published, rebuilt, nor from behind the horizon is still a failure.
"""
from __future__ import annotations

import logging
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from ..console import counting_bar
from ..errors import Lc0WeightsError
from ..net import Net
from .download import TransferPolicy, open_source
from .engine import checked_net
from .receive import fetch_full_net
from ..repository.updater import Updater

log = logging.getLogger(__name__)


@dataclass
class CheckReport:
    nets: int = 0
    patches: int = 0
    skipped: int = 0            # patches whose inputs only pruned nets rebuild (see the module doc)
    failures: list[str] = field(default_factory=list)
    kinds: dict[str, int] = field(default_factory=dict)     # failures per kind

    @property
    def ok(self) -> bool:
        return not self.failures

    def fail(self, kind: str, message: str) -> None:
        self.kinds[kind] = self.kinds.get(kind, 0) + 1
        self.failures.append(f"{kind}: {message}")

    def first_of_each_kind(self) -> list[str]:
        firsts = {}
        for failure in self.failures:
            firsts.setdefault(failure.split(":", 1)[0], failure)
        return list(firsts.values())


def check_repository(location: str, policy: TransferPolicy | None = None, trust=None) -> CheckReport:
    source = open_source(location, policy or TransferPolicy(progress=False))
    report = CheckReport()
    with tempfile.TemporaryDirectory(prefix="lc0weights-check-") as tmp:
        try:
            catalogue, horizon = _read_metadata(source, trust, Path(tmp) / "state", report)
        except Lc0WeightsError as e:
            report.fail("metadata", str(e))     # a pinned online key: the refusal says so
            return report
        budget = getattr(source, "budget", None)
        if budget is not None:
            budget.cover(sum(n.size for n in catalogue.nets) + sum(p.size for p in catalogue.patches))
        _check_objects(catalogue, source, Path(tmp), report, horizon)
    return report


def behind_horizon(p, horizon: int) -> set[str]:
    """The inputs of patch ``p`` that came from nets pruned from the repository.

    A history patch made against net ``base_seq`` takes net ``base_seq - 1`` as
    history; a lossy link from net ``base_seq`` starts from the lossy net the link
    into ``base_seq`` rebuilt, from ``base_seq - 1``. When that net is behind the
    horizon, so is the input.
    """
    pruned: set[str] = set()
    if horizon and p.base_seq is not None and p.base_seq - 1 < horizon:
        if p.history is not None:
            pruned.add(p.history)
        if p.lossy:
            pruned.add(p.base)
    return pruned


def _read_metadata(source, trust, state_dir: Path, report: CheckReport):
    updater = Updater(source, trust, state_dir)
    try:
        updater.refresh()
        catalogue = updater.read_all()
        for record in updater.records():
            for link in record.links:
                known = updater.links.get(link.seq)
                if known is not None and known != link:
                    report.fail("metadata", f"record {record.seq} links to record {link.seq} by a "
                                            "length or sha256 that record does not have")
        return catalogue, updater.timestamp.horizon
    finally:
        updater.close()


def _check_objects(catalogue, source, store: Path, report: CheckReport, horizon: int = 0) -> None:
    have: set[str] = set()
    total = len(catalogue.nets) + len(catalogue.patches)
    bar = counting_bar(iter(range(total)), total, "checking", unit="object")     # one bar for everything

    def tick() -> None:
        next(bar, None)

    def keep(net: Net) -> None:
        (store / net.id).write_bytes(net.raw)
        have.add(net.id)

    def load(net_id: str) -> Net:
        return Net((store / net_id).read_bytes(), net_id)

    for entry in catalogue.nets:
        tick()
        report.nets += 1
        try:
            where = store / f"{entry.id}.gz"
            keep(fetch_full_net(source, entry, where, None, ""))
            where.unlink()
        except Lc0WeightsError as e:
            report.fail("net", f"{entry.id[:16]}... ({entry.path}): {e}")

    pruned: set[str] = set()            # nets only pruned nets rebuild: no client can get them now
    for p in catalogue.patches:
        pruned |= behind_horizon(p, horizon) - have

    def inputs(p):
        return [p.base] + ([p.history] if p.history is not None else [])

    pending = list(catalogue.patches)
    while pending:
        ready = [p for p in pending if all(i in have for i in inputs(p))]
        orphans = [p for p in pending if p not in ready and all(i in have or i in pruned for i in inputs(p))]
        for p in orphans:               # their results are as unreachable as their inputs
            pending.remove(p)
            tick()
            report.skipped += 1
            if p.result not in have:
                pruned.add(p.result)
        if not ready and not orphans:
            for p in pending:
                tick()
                report.patches += 1
                report.fail("patch", f"{p.path}: its base {p.base[:16]}... is neither published "
                                     "nor rebuilt by another patch")
            break
        for p in ready:
            pending.remove(p)
            tick()
            report.patches += 1
            try:
                _check_patch(p, source, store, load, keep, have)
            except _ToleranceExceeded as e:
                report.fail("tolerance", f"{p.path} ({p.base[:8]}->{p.result[:8]}): {e}")
            except Lc0WeightsError as e:
                report.fail("patch", f"{p.path} ({p.base[:8]}->{p.result[:8]}): {e}")


class _ToleranceExceeded(Lc0WeightsError):
    pass


def _check_patch(p, source, store: Path, load, keep, have) -> None:
    from ..patch import apply_patch, max_error    # the codecs load for a check, not for a fetch
    where = store / "patch"
    source.fetch_object(p.path, where, p.size, p.sha256)
    data = where.read_bytes()
    where.unlink()
    history = load(p.history) if p.history is not None else None
    result = checked_net(apply_patch(load(p.base), data, history=history), p.result, p.path)   # no bar per patch
    if p.lossy:
        if p.target not in have:
            raise Lc0WeightsError(f"target {p.target[:16]}... is not available to compare with")
        worst = max_error(result, load(p.target))
        if worst > p.tolerance:
            raise _ToleranceExceeded(f"a weight is off by {worst:.3g}, beyond the tolerance {p.tolerance:g}")
        if p.result not in have:
            keep(result)
