"""Simulate publishing a long run: which candidate patches clients take, and what that costs.

No net is encoded in the run itself. Patch sizes are a model of the distance
between the nets, calibrated on a real run (default: maia-swa) by encoding
its patches at distances 1, 2, 4 and 8 and the predecessor's history patch,
relative to the full ``.pb.gz``; further distances follow the fitted
``a + b * log2(distance)``. Each simulated net then gets the publisher's
real candidates (``service.patch_policy.patch_distances``), the real
abandon rule (a patch not smaller than the net is never kept) and the real
prune rule (``keep_on_routes``), and a client population takes its
cheapest routes with the real planner (``lc0weights.client.route``):
clients taking every net, every 4th, every 16th, every 100th, and fresh
starts (nothing held).

    PYTHONPATH=. python tools/simulate_publishing.py [--nets 1000] [--out docs/BENCHMARKS.md]

Only with ``--out`` is the report written into that file (its section
"## Publishing at steady state", replaced or appended).
"""
from __future__ import annotations

import argparse
import hashlib
import json
import math
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from lc0weights.client.route import cheapest_route  # noqa: E402
from lc0weights.repository.index import NetEntry, PatchEntry, Catalogue  # noqa: E402
from service.patch_policy import MAX_POWER_SKIP, SKIPS, keep_on_routes, patch_distances  # noqa: E402

DEFAULT_RUN = next((p for p in (ROOT.parent / "shared/data/runs/maia-swa",
                                ROOT.parents[1] / "shared/data/runs/maia-swa",
                                Path("/work/shared/data/runs/maia-swa")) if p.is_dir()),
                   Path("/work/shared/data/runs/maia-swa"))
CALIBRATION_DISTANCES = (1, 2, 4, 8)
CLIENTS = {"every net": 1, "every 4th": 4, "every 16th": 16, "every 100th": 100, "fresh start": None}
SECTION = "## Publishing at steady state"


# -- calibration on real nets ------------------------------------------------------------

@dataclass(frozen=True)
class SizeModel:
    """Patch bytes over the full net's bytes, by distance; history patch over plain patch."""
    a: float
    b: float
    sigma: float                    # spread of log(ratio) around the fit
    history: float                  # history patch / plain patch from k-1
    history_sigma: float
    measured: dict                  # distance -> (mean ratio, pairs)

    def ratio(self, distance: int) -> float:
        return self.a + self.b * math.log2(distance)


def calibrate(run: Path, codec: str | None = None) -> SizeModel:
    from lc0weights import Net, make_patch
    paths = sorted(run.glob("step-*.pb.gz"))
    if len(paths) < 10:
        raise SystemExit(f"{run}: need at least 10 nets to calibrate, found {len(paths)}")
    nets, full = [Net.load(p) for p in paths], [p.stat().st_size for p in paths]
    ratios: dict[int, list[float]] = {}
    plain1: dict[int, int] = {}
    for d in CALIBRATION_DISTANCES:
        for k in range(d, len(nets)):
            size = len(make_patch(nets[k - d], nets[k], codec=codec, verify=False))
            ratios.setdefault(d, []).append(size / full[k])
            if d == 1:
                plain1[k] = size
    history = [len(make_patch(nets[k - 1], nets[k], codec=codec, history=nets[k - 2], verify=False)) / plain1[k]
               for k in range(2, len(nets))]
    x = np.array([math.log2(d) for d in ratios for _ in ratios[d]])
    y = np.array([r for d in ratios for r in ratios[d]])
    b, a = np.polyfit(x, y, 1)
    sigma = float(np.std(np.log(y / (a + b * x))))
    return SizeModel(float(a), float(b), sigma, float(np.mean(history)), float(np.std(np.log(history))),
                     {d: (float(np.mean(r)), len(r)) for d, r in ratios.items()})


# -- the simulated run ---------------------------------------------------------------------

def _id(k: int) -> str:
    return hashlib.sha256(b"net %d" % k).hexdigest()


@dataclass(frozen=True)
class Policy:
    name: str
    skips: tuple = SKIPS
    max_power: int = MAX_POWER_SKIP
    history: bool = True
    prune: bool = True


class SimulatedRun:
    """Nets 0..n-1, each as big as ``full`` bytes, published with ``policy``."""

    def __init__(self, model: SizeModel, policy: Policy, nets: int, full: int, seed: int = 7):
        self.model, self.policy, self.full = model, policy, full
        self.rng = np.random.default_rng(seed)
        self.patches: list[list[PatchEntry]] = []
        self.encoded = 0
        for k in range(nets):
            self.patches.append(self._publish(k))

    def _size(self, ratio: float, sigma: float) -> int:
        return max(1, int(self.full * ratio * math.exp(self.rng.normal(0.0, sigma))))

    def _entry(self, k: int, back: int, size: int, history: str | None = None) -> PatchEntry:
        return PatchEntry(base=_id(k - back), target=_id(k), result=_id(k), path=f"p/{k}-{back}-{history}",
                          size=size, sha256="", base_seq=k - back, history=history)

    def _publish(self, k: int) -> list[PatchEntry]:
        if k == 0:
            return []
        distances = patch_distances(k, self.policy.skips, self.policy.max_power)
        candidates = []
        for back in distances:
            self.encoded += 1
            size = self._size(self.model.ratio(back), self.model.sigma)
            if size < self.full:                         # the publisher's cap: dearer patches are abandoned
                candidates.append(self._entry(k, back, size))
        if self.policy.history and k >= 2:
            self.encoded += 1
            plain = next((p.size for p in candidates if p.base_seq == k - 1), self.full)
            size = self._size(self.model.ratio(1) * self.model.history, self.model.history_sigma)
            if size < plain:
                candidates.append(self._entry(k, 1, size, history=_id(k - 2)))
        if not self.policy.prune:
            return candidates
        earliest = min((p.base_seq for p in candidates), default=k)
        earlier = [p for s in range(k - 1, earliest, -1) for p in self.patches[s]]
        return keep_on_routes(k, candidates, earlier)

    def index(self, low: int, high: int) -> Catalogue:
        """Nets low..high: the full objects and the patches among them."""
        nets = [NetEntry(_id(k), f"n/{k}", self.full, "", 0, None, "", None) for k in range(low, high + 1)]
        patches = [p for k in range(low, high + 1) for p in self.patches[k] if p.base_seq >= low]
        return Catalogue(nets=nets, patches=patches)


def client_routes(run: SimulatedRun, first: int, last: int):
    """Per client class, over every net first..last (every phase of the class): mean bytes per
    update and how often each kind of patch is on the chosen route.

    A client keeps the last two nets it fetched (lc0's client keeps its old
    nets), so a client taking every net can use the history patch.
    """
    out = {}
    for name, every in CLIENTS.items():
        costs, used = [], {}
        for k in range(first, last + 1):
            held = set() if every is None else {_id(k - every), _id(k - 2 * every)}
            low = k if every is None else k - 2 * every
            route = cheapest_route(run.index(low, k), {_id(k)}, held)
            costs.append(route.cost)
            for step in route.steps:
                key = "full" if isinstance(step, NetEntry) else "h1" if step.history else f"d{_back(step)}"
                used[key] = used.get(key, 0) + 1
        out[name] = (float(np.mean(costs)), len(costs), used)
    return out


def _back(step: PatchEntry) -> int:
    return int(step.path.split("/")[1].split("-")[1])


# -- the report ----------------------------------------------------------------------------

def report(model: SizeModel, runs: dict, nets: int, first: int, full: int) -> str:
    lines = [SECTION, "",
             f"`tools/simulate_publishing.py --nets {nets}`: a simulated run of {nets:,} nets, patch sizes "
             f"modelled on maia-swa (measured mean patch / full `.pb.gz`: "
             + ", ".join(f"distance {d}: {r:.3f} ({n} pairs)" for d, (r, n) in sorted(model.measured.items()))
             + f"; fit {model.a:.3f} + {model.b:.3f} log2(d), log spread {model.sigma:.3f}; the history "
             f"patch {model.history:.3f} of the plain one). Steady state is nets {first:,}-{nets - 1:,}; "
             "every figure is in full nets (1.00 = one full `.pb.gz`). Clients keep the last two nets they "
             "fetched; each class is averaged over every net of the steady state (all its phases).", "",
             "| policy | candidates encoded per net | patches kept per net | storage per net "
             "| every net | every 4th | every 16th | every 100th | fresh start |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    details = []
    for policy, (run, routes) in runs.items():
        kept = [run.patches[k] for k in range(first, nets)]
        storage = 1 + sum(p.size for ps in kept for p in ps) / len(kept) / full
        row = [policy.name, f"{run.encoded / (nets - 1):.2f}", f"{np.mean([len(ps) for ps in kept]):.2f}",
               f"{storage:.2f}"] + [f"{routes[c][0] / full:.3f}" for c in CLIENTS]
        lines.append("| " + " | ".join(row) + " |")
        kept_kinds: dict[str, int] = {}
        for ps in kept:
            for p in ps:
                key = "h1" if p.history else f"d{_back(p)}"
                kept_kinds[key] = kept_kinds.get(key, 0) + 1
        taken: dict[str, int] = {}
        for _cost, _count, used in routes.values():
            for key, n in used.items():
                taken[key] = taken.get(key, 0) + n
        order = sorted(set(kept_kinds) | set(taken) - {"full"}, key=lambda s: (s != "h1", int(s[1:])))
        details.append(f"- {policy.name}: patches kept / taken by some client route, by distance: "
                       + ", ".join(f"{s} {kept_kinds.get(s, 0)}/{taken.get(s, 0)}" for s in order))
    lines += [""] + details + [""]
    before, publisher = next(iter(runs.values())), runs[POLICIES[-2]] if POLICIES[-2] in runs else None
    if publisher is not None:
        encoded = publisher[0].encoded / before[0].encoded
        worst = max(publisher[1][c][0] / before[1][c][0] for c in CLIENTS)
        lines += [f"The publisher's candidates ({POLICIES[-2].name.split(', history')[0]}) are "
                  f"{encoded:.0%} of the encoding work of the candidates before; no client class pays more "
                  f"than {worst - 1:+.1%} for it (each row draws its own sizes, so differences of a "
                  "percent or two are noise).", ""]
    return "\n".join(lines)


def write_section(path: Path, text: str) -> None:
    doc = path.read_text() if path.exists() else ""
    if SECTION in doc:
        start = doc.index(SECTION)
        end = doc.find("\n## ", start + len(SECTION))
        doc = doc[:start] + text + ("" if end < 0 else doc[end + 1:])
    else:
        doc = doc.rstrip("\n") + "\n\n" + text
    path.write_text(doc)


POLICIES = [
    Policy("1, 2, 4, 8, 16 + powers to 1024, history, not pruned (before)", (1, 2, 4, 8, 16), 1024, prune=False),
    Policy("1, 2, 4, 8, 16 + powers to 1024, history, pruned", (1, 2, 4, 8, 16), 1024),
    Policy("1, 2, 4, 8, 16, history, pruned", (1, 2, 4, 8, 16), 0),
    Policy("1, 4, 16 + powers to 1024, history, pruned", (1, 4, 16), 1024),
    Policy(f"{', '.join(map(str, SKIPS))}, history, pruned (the publisher's)", SKIPS, MAX_POWER_SKIP),
    Policy("1, 16, history, pruned", (1, 16), 0),
]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--nets", type=int, default=1000)
    ap.add_argument("--run", type=Path, default=DEFAULT_RUN, help="real run to calibrate patch sizes on")
    ap.add_argument("--codec", help="codec to calibrate with (default: the publisher's, smallest per layer)")
    ap.add_argument("--out", type=Path, help="write the report into this markdown file")
    ap.add_argument("--calibration", type=Path, help="JSON file: read the size model from it if it exists, "
                                                      "else calibrate and write it there")
    args = ap.parse_args(argv)
    if args.calibration and args.calibration.exists():
        doc = json.loads(args.calibration.read_text())
        model = SizeModel(**{**doc, "measured": {int(d): tuple(v) for d, v in doc["measured"].items()}})
    else:
        model = calibrate(args.run, args.codec)
        if args.calibration:
            args.calibration.write_text(json.dumps(model.__dict__))
    full = 1_000_000
    first = min(args.nets - 1, max(200, args.nets // 5))
    runs = {}
    for policy in POLICIES:
        run = SimulatedRun(model, policy, args.nets, full)
        runs[policy] = (run, client_routes(run, first, args.nets - 1))
    text = report(model, runs, args.nets, first, full)
    print(text)
    if args.out:
        write_section(args.out, text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
