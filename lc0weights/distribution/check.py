"""``check``: prove a published repository is sound, for CI and for operators.

Every full net object is downloaded and must hash to its id; every patch is
applied to its base and must rebuild the net it promises; a tolerance patch's
result must also stay within its tolerance of the target, weight by weight,
as the engine decodes them. Any failure is reported and makes the exit
status non-zero.
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
from .fetch import _full_net
from .index import parse_index

log = logging.getLogger(__name__)


@dataclass
class CheckReport:
    nets: int = 0
    patches: int = 0
    failures: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.failures



def check_repository(location: str, policy: TransferPolicy | None = None) -> CheckReport:
    source = open_source(location, policy or TransferPolicy(progress=False))
    index = parse_index(source.read_index())
    report = CheckReport()
    with tempfile.TemporaryDirectory(prefix="lc0weights-check-") as tmp:
        store = Path(tmp)
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
                source.fetch_object(entry.path, where, entry.size, entry.sha256)
                keep(_full_net(where.read_bytes(), entry))
                where.unlink()
            except Lc0WeightsError as e:
                report.failures.append(f"net {entry.id[:16]}... ({entry.path}): {e}")

        pending = list(index.patches)
        while pending:
            ready = [p for p in pending if p.base in have]
            if not ready:
                for p in pending:
                    report.patches += 1
                    report.failures.append(f"patch {p.path}: its base {p.base[:16]}... "
                                           "is neither published nor rebuilt by another patch")
                break
            for p in ready:
                pending.remove(p)
                report.patches += 1
                try:
                    _check_patch(p, source, store, load, keep, have)
                except Lc0WeightsError as e:
                    report.failures.append(f"patch {p.path} ({p.base[:8]}->{p.result[:8]}): {e}")
    return report


def _check_patch(p, source, store: Path, load, keep, have) -> None:
    where = store / "patch"
    source.fetch_object(p.path, where, p.size, p.sha256)
    data = where.read_bytes()
    where.unlink()
    result = checked_net(apply_patch(load(p.base), data), p.result, p.path)
    if p.lossy:
        if p.target not in have:
            raise Lc0WeightsError(f"target {p.target[:16]}... is not available to compare with")
        worst = max_error(result, load(p.target))
        if worst > p.tolerance:
            raise Lc0WeightsError(f"a weight is off by {worst:.3g}, beyond the tolerance {p.tolerance:g}")
        if p.result not in have:
            keep(result)
