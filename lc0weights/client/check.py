"""``check``: prove a published repository is sound, for CI and for operators.

With a pinned key the signed metadata is verified first (root, timestamp,
every record by its hash, every link between records); then every full net
object is downloaded and must hash to its id; every patch is applied to its
base and must rebuild the net it promises; a tolerance patch's result must
also stay within its tolerance of the target, weight by weight, as the engine
decodes them (``check`` holds every target, so it can test each lossy claim a
client has to take on trust). Failures are grouped by kind; any failure makes
the exit status non-zero.
"""
from __future__ import annotations

import logging
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from .. import max_error
from ..errors import Lc0WeightsError
from ..net import Net
from .download import TransferPolicy, open_source
from .engine import apply_patch, checked_net
from .receive import fetch_full_net
from ..repository.index import parse_index
from ..repository.updater import Updater

log = logging.getLogger(__name__)


@dataclass
class CheckReport:
    nets: int = 0
    patches: int = 0
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
            index = _read_metadata(source, trust, Path(tmp) / "state", report)
        except Lc0WeightsError as e:
            report.fail("metadata", str(e))
            return report
        budget = getattr(source, "budget", None)
        if budget is not None:
            budget.cover(sum(n.size for n in index.nets) + sum(p.size for p in index.patches))
        _check_objects(index, source, Path(tmp), report)
    return report


def _read_metadata(source, trust, state_dir: Path, report: CheckReport):
    updater = Updater(source, trust, state_dir)
    try:
        if updater.refresh() is None:
            return parse_index(source.read_index())
        index = updater.read_all()
        for record in updater.records():
            for link in record.links:
                known = updater.links.get(link.seq)
                if known is not None and known != link:
                    report.fail("metadata", f"record {record.seq} links to record {link.seq} by a "
                                            "length or sha256 that record does not have")
        return index
    finally:
        updater.close()


def _check_objects(index, source, store: Path, report: CheckReport) -> None:
    have: set[str] = set()

    def keep(net: Net) -> None:
        (store / net.id).write_bytes(net.raw)
        have.add(net.id)

    def load(net_id: str) -> Net:
        return Net((store / net_id).read_bytes(), net_id)

    for entry in index.nets:
        report.nets += 1
        try:
            where = store / f"{entry.id}.gz"
            keep(fetch_full_net(source, entry, where, None, ""))
            where.unlink()
        except Lc0WeightsError as e:
            report.fail("net", f"{entry.id[:16]}... ({entry.path}): {e}")

    pending = list(index.patches)
    while pending:
        ready = [p for p in pending if p.base in have and (p.history is None or p.history in have)]
        if not ready:
            for p in pending:
                report.patches += 1
                report.fail("patch", f"{p.path}: its base {p.base[:16]}... is neither published "
                                     "nor rebuilt by another patch")
            break
        for p in ready:
            pending.remove(p)
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
    where = store / "patch"
    source.fetch_object(p.path, where, p.size, p.sha256)
    data = where.read_bytes()
    where.unlink()
    history = load(p.history) if p.history is not None else None
    result = checked_net(apply_patch(load(p.base), data, history=history), p.result, p.path)
    if p.lossy:
        if p.target not in have:
            raise Lc0WeightsError(f"target {p.target[:16]}... is not available to compare with")
        worst = max_error(result, load(p.target))
        if worst > p.tolerance:
            raise _ToleranceExceeded(f"a weight is off by {worst:.3g}, beyond the tolerance {p.tolerance:g}")
        if p.result not in have:
            keep(result)
