"""Publishing one net in steady state, for tools/bench_scale.py: the setup it needs and its cost per candidate.

For net ``seq`` service/publish.py codes these candidates (service/patch_policy.py):
a lossless patch from ``seq - d`` for each d of SKIPS (1, 4, 16); the
predecessor's patch again with the net before it as history (from seq 2);
with a tolerance, the next link of the lossy chain, and that link coded with
the base 1, 2 or 4 links back (HISTORY_GAPS) as history. A net of lc0's size
(FAST_TIER_MIN_WEIGHTS and more) has them in the fast coding tier, plus the
predecessor's history patch in the cm tier, and one history gap for the lossy
link. Each candidate is one job of the publisher's worker pool, and a job
checks its own patch by rebuilding it. So the set stops growing at seq =
max(SKIPS) = 16, the 17th net (the lossy part at seq 5: four links behind it).

The setup publishes only what the last net's candidates read, through
service.publish with ``skips=()`` and no history: the nets themselves (the
lossless candidates and the history patch are made from them, not from
their patches), and for the ``max(HISTORY_GAPS)`` nets before the last one
the plain links of the lossy chain (and the lossy nets the publisher keeps
for them), which the last net's lossy candidates start from and take their
histories from. Then the last net goes through the CLI as a user would
publish it, each candidate's CPU taken from the publisher's jobs (``PROFILED``:
the same ``service.cli.main``, with the pool's results recorded).
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

from service.patch_policy import FAST_TIER_MIN_WEIGHTS
from service.publish import HISTORY_GAPS, SKIPS

PY = sys.executable
STEADY_COUNT = max(SKIPS) + 1           # nets in a run whose last one has the full candidate set


def steady_candidates(weights: int) -> dict:
    """The candidates of a net in steady state, by kind (see the module docstring)."""
    if weights < FAST_TIER_MIN_WEIGHTS:
        return {"lossless": len(SKIPS), "lossless with history": 1, "lossy": 1,
                "lossy with history": len(HISTORY_GAPS)}
    return {"lossless, fast tier": len(SKIPS), "lossless with history, fast tier": 1,
            "lossless with history": 1, "lossy, fast tier": 1, "lossy with history, fast tier": 1}

SETUP = """
import datetime, logging, sys
from lc0weights.repository.keys import SigningKey
from lc0weights.settings import parse_tolerance
from service.publish import publish
from service.repository import Repository
logging.basicConfig(level=logging.ERROR)
repo_dir, key, tolerance, chained, *paths = sys.argv[1:]
repo = Repository.create(repo_dir, SigningKey.load(key), datetime.timedelta(days=7))
split = len(paths) - int(chained)
publish(repo, paths[:split], skips=(), history=False)
publish(repo, paths[split:], tolerance=parse_tolerance(tolerance), skips=(), history=False)
"""

PROFILED = """
import json, sys
import service.publish as publisher
from service.cli import main
calls = []
def recorded(run_jobs):
    def wrapper(jobs, *args, **kw):
        done = run_jobs(jobs, *args, **kw)
        for job, result in zip(jobs, done):
            calls.append({"kind": "encode", "lossy": job.tolerance is not None,
                          "history": job.history is not None, "tier": job.tier, "cpu": result.cpu_seconds})
        return done
    return wrapper
publisher.run_jobs = recorded(publisher.run_jobs)
code = main(sys.argv[2:])
with open(sys.argv[1], "w") as f:
    json.dump(calls, f)
sys.exit(code)
"""


def setup_argv(repo: Path, key: Path, tolerance: str, paths) -> list:
    """A child publishing ``paths`` (every net but the last) as the last net's publish needs them."""
    before = list(paths[:-1])
    return [PY, "-c", SETUP, repo, key, tolerance, min(len(before), max(HISTORY_GAPS)), *before]


def profiled_argv(timings: Path, server_args) -> list:
    """``lc0weights-server ARGS`` with each candidate timed into ``timings`` (JSON)."""
    return [PY, "-c", PROFILED, timings, *server_args]


def candidate_name(call: dict) -> str:
    return (("lossy" if call["lossy"] else "lossless") + (" with history" if call["history"] else "")
            + (", fast tier" if call.get("tier") == "fast" else ""))


def candidate_counts(calls: list[dict], steady: dict) -> dict:
    counts = dict.fromkeys(steady, 0)
    for call in calls:
        counts[candidate_name(call)] = counts.get(candidate_name(call), 0) + 1
    return counts


def longest_chain(calls: list[dict]) -> float:
    """CPU seconds of the dearest candidate: each is one job (its check included), all independent."""
    return max((c["cpu"] for c in calls), default=0.0)


def profile_lines(calls: list[dict], wall: float, cpu: float, startup_cpu: float, weights: int,
                  bt4_weights: float) -> list[str]:
    """The section's lines on the candidates: what was coded, what each cost, what 16 cores would take."""
    expected = steady_candidates(weights)
    counts = candidate_counts(calls, expected)
    per_kind = {}
    for call in calls:
        per_kind.setdefault(candidate_name(call), []).append(call["cpu"])
    steady = all(counts.get(k, 0) >= n for k, n in expected.items())
    lines = [(f"Candidates coded by this publish (steady state: "
              f"{'; '.join(f'{n} {k}' for k, n in expected.items())}); CPU each:"), ""]
    for kind, cpus in per_kind.items():
        lines.append(f"- {kind}: {len(cpus)} x, {', '.join(f'{c:.2f}' for c in cpus)} s CPU")
    if not steady:
        missing = {k: n - counts.get(k, 0) for k, n in expected.items() if counts.get(k, 0) < n}
        lines.append(f"- NOT steady state: the steady state adds {'; '.join(f'{n} {k}' for k, n in missing.items())} "
                     f"(run at least --count {STEADY_COUNT})")
    in_candidates = sum(c["cpu"] for c in calls)
    # The candidates ran in the pool's worker processes, whose CPU the publish's own wait4 does not
    # count (they are the pool's children): what it counts is the work outside the candidates.
    serial = cpu
    chain = longest_chain(calls)
    scale = bt4_weights / weights
    bt4_serial = max(serial - startup_cpu, 0.0) * scale + startup_cpu
    lines += ["", (f"On 16 cores: the candidates are independent (a lossy one's check follows it), so with a "
                   f"core or more each, the publish takes the CPU outside the candidates ({serial:.1f} s here, "
                   f"start-up included: reading, hashing, writing, signing) plus the longest chain "
                   f"({chain:.1f} s CPU) = about {serial + chain:.1f} s on an idle machine, against "
                   f"{wall:.1f} s wall on 2 cores here ({cpu:.1f} s CPU in the publishing process, "
                   f"{in_candidates:.1f} s in candidates); scaled to a BT4 net by weight count: about {bt4_serial + chain * scale:.0f} s "
                   f"on 16 cores, {(bt4_serial + in_candidates * scale / 2):.0f} s on 2 idle cores.")]
    return lines


def read_calls(path: Path) -> list[dict]:
    return json.loads(Path(path).read_text())
