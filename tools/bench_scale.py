"""lc0weights at lc0's scale: BT4-class nets through the command lines, on a throttled link.

Generates an SWA-like run of lc0-scale nets (tools/lc0_nets.py), publishes it
signed with ``--tolerance 2^-14`` (the last net alone and in steady state:
tools/scale_publish.py), serves it on loopback (``lc0weights-server serve``)
behind throttling proxies of its own (token bucket, 100 Mbit/s and 1 Gbit/s),
then measures, one child process per row (wall, CPU and peak RSS from wait4),
each row beside its acceptance target (``TARGETS``) and whether it holds:

* at 100 Mbit/s, a client holding nets N-1 and N fetches net N+1 with ``--prefer
  time`` (the default; it takes a patch route there) in at most half the time
  a client with nothing takes for the full download, both through the same
  proxy in the same run; ``--prefer bytes`` (the fewest bytes: cm-tier
  patches) is shown beside it;
* at 1 Gbit/s, ``fetch --prefer time`` is no slower than the full download
  (the route it chose is shown); when it chose the full net, the two rows time
  the same download, so a median a hair above the full one's still holds as a
  tie if it lies within the full download's runs and the patch route measured
  beside it was slower (the choice was right); every fetched net is checked
  to be verified and written as .pb.gz;
* ``diff`` in both coding tiers (cm, fast), and ``apply`` of each;
* ``verify`` of the lossless patch against its ``apply``, both on 2 cores (reported:
  "no slower" is asked of verify, not among the figures to show);
* the client's CPU for a full download on loopback: at most 1.5x ``gzip -dc``
  of the same file;
* ``apply`` on 2 cores: at most 0.6x its wall time on one core (``taskset``),
  for the net (the cm-tier patch ``diff`` makes) and for a net with one
  60M-weight layer; the fast tier's apply is reported beside the target;
* ``diff --tolerance 2^-14``: at most 1.5x the CPU of a lossless ``diff``;
* publishing one new net with its steady-state patch set (lossless and the
  2^-14 chain): at most 2 minutes wall for a BT4 net (the budget scaled by
  weight count on smaller runs), and what 16 cores would take;
* peak RSS as a multiple of the raw net: apply at most 2x, diff and publish
  at most 4x (fetch and verify: reported against apply's 2x).

Short measurements are repeated (``--repeats N``, default 3) and reported as
their median run, because on 2 cores a 4-10 s command varies by about 0.8 s
from run to run, enough to flip a verdict. The rule (``Bench.repeated``): a
fetch, ``gzip -dc``, apply or verify whose first run took under 15 s wall, and every
fetch at 1 Gbit/s (full, ``--prefer bytes``, ``--prefer time``: they set one
another's ratios), is run N times, each fetch from a fresh cache seeded from
the same state and each fetched net checked. At 1 Gbit/s the full download
and the ``--prefer time`` fetch (whose target is the full download's time,
and which often takes the very same route) run 5 times each, taking turns, so
a drift in the machine's speed falls on both alike; so do an apply on 1 core
and on 2 cores when both are short (they set each other's ratio). The median is by the figure the
row is judged on (wall; CPU for the client-CPU row and its ``gzip -dc``), its
range shown beside it ("median of 3: 4.30-4.62 s"); ratios are of medians; a
peak RSS row gives the highest peak of the runs. Publish (it changes the
repository), diff, and fetches, applies and verifies of 15 s or more (at BT4
size: the 100 Mbit/s full and ``--prefer bytes`` fetches, ``apply`` and
``verify`` of the cm tier), stay single runs. At BT4 size the repeats add about 3 min (from a run's
row times: 1 Gbit/s fetches 4 + 24 + 5 s, 100 Mbit/s ``--prefer time`` 13 s,
loopback fetch 5 s and ``gzip -dc`` 3 s, fast-tier applies 9 + 7 s, biglayer
applies 10 + 6 s: 86 s a run, twice more, and the extra fetched nets' checks);
``--repeats 1`` measures each row once.

At ``--scale 1`` a row is judged on the whole command, as a user pays it; on
smaller runs on what it costs beyond a command's fixed start-up (imports and
compiled kernels, measured on a tiny pair), which is what grows with the net.
With ``--out docs/BENCHMARKS.md`` the "## At lc0's scale" section is written
there (replaced if present), its first line the exact command.

    python tools/bench_scale.py --quick                       # scale 0.02: 2 min idle
    python tools/bench_scale.py --out docs/BENCHMARKS.md      # BT4 size, 17 + 2 nets: see below

The default run is BT4 size with 17 nets, the fewest whose last one is
published in steady state (``--count``; fewer is allowed and the section
then says what the steady state adds). It took 13-14 min on 2 idle cores
(much longer on a loaded machine) and needs about 14 GB in its work folder
(the nets, the repository's copies and patches, the publisher's lossy nets);
that was before the repeats, which add about 3 min (above).
"""
from __future__ import annotations

import argparse
import gzip
import hashlib
import json
import os
import re
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

TOOLS = Path(__file__).resolve().parent
sys.path.insert(0, str(TOOLS))
sys.path.insert(0, str(TOOLS.parent))

import harness
import lc0_nets
import scale_publish

PY = sys.executable
CLIENT = [PY, "-m", "lc0weights.cli"]
SERVER = [PY, "-m", "service.cli"]
TOLERANCE = "2^-14"
BT4_WEIGHTS = 186e6
# What a client's cache keeps between fetches: lc0weights.client.link_rate.RATES_NAME and
# lc0weights.client.cache.MEMO_NAME (the ids of held nets already identified).
STATE_FILES = (".lc0weights-rates.json", ".held-ids.json")

# The acceptance targets, on 2 cores, for a BT4-size net.
TARGETS = {
    "patch_vs_full_100mbit": 0.5,   # fetch N+1 holding N, --prefer time (a patch route), wall <= this x full
    "time_vs_full_1gbit": 1.0,      # fetch --prefer time, wall <= this x full download
    "fetch_cpu_vs_gzip": 1.5,       # client CPU of a full download on loopback <= this x `gzip -dc`
    "apply_2cores_vs_1": 0.6,       # apply wall on 2 cores <= this x on 1 core
    "lossy_diff_vs_lossless": 1.5,  # diff --tolerance CPU <= this x lossless diff
    "publish_s_bt4": 120.0,         # one new BT4 net, steady-state patch set, wall; scaled by weight count
    "verify_vs_apply": 1.0,         # verify wall on 2 cores <= this x apply's (the lossless cm patch); reported
    "rss_apply": 2.0,               # peak RSS, x the raw net
    "rss_fetch_verify": 2.0,        # reported against apply's target
    "rss_diff_publish": 4.0,
}
PATCH_RATE, TIME_RATE = 100.0, 1000.0   # Mbit/s the two fetch targets are set at
# Which measurements are repeated (``--repeats``) and reported as their median run: see Bench.repeated.
REPEAT_BELOW_S = 15.0
# The full download and the --prefer time fetch at TIME_RATE run this many times each, in turn.
PAIRED_REPEATS = 5


@dataclass
class Row:
    what: str
    command: str
    measured: str
    target: str
    holds: bool | None
    counted: bool = True        # False: reported against a target, not one of the acceptance targets
    runs: int | None = None     # runs of a repeatable measurement (Bench.repeated); None: never repeated

    def cells(self) -> list[str]:
        if self.holds is None:
            verdict = "-" if self.target == "-" else "too small to judge"
        else:
            verdict = "yes" if self.holds else "**no**"
        return [self.what, f"`{self.command}`", self.measured, self.target,
                verdict if self.counted else f"({verdict}, reported)"]


class Bench:
    """One benchmark run: its work folder, the nets, and the rows measured so far."""

    def __init__(self, args, work: Path):
        self.args, self.work = args, work
        self.full_scale = args.scale >= 1
        self.rows: list[Row] = []
        self.notes: list[str] = []
        self.log = (lambda *a: None) if args.quiet else (lambda *a: print(*a, file=sys.stderr, flush=True))

    def show(self, m: harness.Measured) -> str:
        """The command as a user would type it, with the work folder as $W."""
        text = m.command
        if len(m.argv) > 3 and m.argv[1:3] == ["-c", scale_publish.PROFILED]:
            text = text.replace(harness.shell_line(m.argv[:4]), harness.shell_line(SERVER))
        text = text.replace(str(self.work), "$W")
        text = re.sub(r"http://127\.0\.0\.1:\d+/", "$URL", text)
        text = re.sub(r"ed25519:\S+", "$KEY", text)
        for argv, name in ((CLIENT, "lc0weights"), (SERVER, "lc0weights-server"),
                           ([PY, str(TOOLS / "lc0_nets.py")], "python tools/lc0_nets.py")):
            text = text.replace(harness.shell_line(argv), name)
        return text

    def run(self, argv, what: str = "", **kw) -> harness.Measured:
        self.log(f"[bench_scale] {what or ''} {harness.shell_line(argv)[:300]}")
        # What earlier rows wrote (nets, caches, gigabytes of them) goes to disk first, untimed:
        # otherwise its writeback lands in whichever row comes next and slows that row's fsync.
        os.sync()
        m = harness.run(argv, **kw).check()
        self.log(f"[bench_scale]   wall {m.wall:.2f} s, cpu {m.cpu:.2f} s, peak RSS {m.max_rss / 1e6:.0f} MB")
        return m

    def row(self, what, m, measured, target="-", holds=None, counted=True, runs: int | None = None) -> None:
        self.rows.append(Row(what, self.show(m) if isinstance(m, harness.Measured) else m,
                             measured, target, holds, counted, runs))

    def repeated(self, runner, key, measured=lambda r: r, always: bool = False, first=None) -> harness.Runs:
        """Run a fetch, `gzip -dc` or apply once, and again up to ``--repeats`` runs in all when it is short.

        The one rule for what is repeated: a run is short if its first run took under REPEAT_BELOW_S
        wall, or ``always`` (every fetch at TIME_RATE: its three rows set one another's ratios, and
        its target compares seconds with seconds). On a 2-core machine single runs of 4-10 s commands
        vary by about 0.8 s, enough to flip a verdict; 15 s and more vary by a few per cent. Publish
        (it changes the repository) and diff are always single runs.
        ``key`` is the figure the row is judged on (wall, or CPU for the CPU rows): the median run
        by it is the row's, and its spread is shown.
        """
        first = runner() if first is None else first
        short = always or measured(first).wall < REPEAT_BELOW_S
        return harness.median_run(runner, self.args.repeats if short else 1, key, first=first, measured=measured)

    # -- nets and repository --------------------------------------------------------------

    def generate(self, net: str, count: int) -> dict:
        out = self.work / "nets"
        m = self.run([PY, TOOLS / "lc0_nets.py", out, "--net", net, "--count", count,
                      "--scale", self.args.scale, "--seed", self.args.seed], f"generate {net}")
        info = json.loads((out / f"{net}.json").read_text())
        info["paths"] = [out / f["file"] for f in info["nets"]]
        info["ids"] = [f["id"] for f in info["nets"]]
        info["raw"] = info["nets"][0]["raw_bytes"]
        info["gz"] = info["nets"][-1]["gz_bytes"]
        info["generate"] = m
        return info

    def publish(self, info: dict) -> str:
        """Publish every net but the last (setup), then the last one alone, each candidate timed."""
        key, repo = self.work / "key", self.work / "repo"
        trust = self.run(SERVER + ["keygen", key], "keygen").stdout.strip().splitlines()[-1]
        self.run(scale_publish.setup_argv(repo, key, TOLERANCE, info["paths"]), "publish setup")
        args = ["-q", "publish", "--repo", repo, "--key", key, "--tolerance", TOLERANCE, "--json"]
        timings = self.work / "publish-candidates.json"
        m = self.run(scale_publish.profiled_argv(timings, args + info["paths"][-1:]), "publish")
        patches = json.loads(m.stdout)[0]["patches"]
        budget = TARGETS["publish_s_bt4"] * info["weights"] / BT4_WEIGHTS
        self.row(f"publish one new net, net {len(info['paths'])} of the run (lossless and {TOLERANCE} chain)", m,
                 f"{m.wall:.1f} s wall ({self.wall(m):.1f} s after start-up), {m.cpu:.1f} s CPU, "
                 f"{len(patches)} patches kept, {sum(p['size'] for p in patches) / 1e6:,.1f} MB",
                 f"<= {budget:.1f} s ({TARGETS['publish_s_bt4']:.0f} s per BT4 net)",
                 self.judge(self.judged_wall(m) <= budget, m))
        self.rss_row("publish", m, info, "rss_diff_publish")
        self.notes += scale_publish.profile_lines(scale_publish.read_calls(timings), m.wall, m.cpu,
                                                  self.startup.cpu, info["weights"], BT4_WEIGHTS)
        return trust

    # -- measurements -----------------------------------------------------------------------

    def measure_startup(self) -> None:
        """What a command costs before its first weight (imports, compiled kernels loaded from numba's
        cache, the net's first allocation: what every patch command pays).

        Subtracted from the rows' CPU times and peak RSS, and the start-up's CPU from wall times (its
        own wall is as noisy as the machine's load), so a small-scale run still says something about
        the per-weight costs; at lc0's scale the rows are judged on whole commands.
        """
        self.imports = self.run([PY, "-c", "import lc0weights.cli, service.cli"], "imports")
        tiny = self.work / "tiny"
        self.run([PY, TOOLS / "lc0_nets.py", tiny, "--net", "bt4", "--count", 2, "--scale", 0.0005], "tiny")
        nets = [tiny / "bt4-000.pb.gz", tiny / "bt4-001.pb.gz"]
        self.run(CLIENT + ["-q", "diff", *nets, "-o", tiny / "p.lc0p", "-f"], "tiny diff")
        self.startup = self.run(CLIENT + ["-q", "apply", nets[0], tiny / "p.lc0p", "-o", tiny / "out.pb.gz"],
                                "start-up")

    def base(self, m: harness.Measured) -> harness.Measured:
        """The start-up ``m`` paid: imports only for a full fetch, else imports and kernels."""
        full_fetch = "fetch" in m.argv and "--have" not in m.argv
        return self.imports if full_fetch else self.startup

    def cpu(self, m: harness.Measured) -> float:
        """CPU seconds after the start-up cost."""
        return max(m.cpu - self.base(m).cpu, 1e-3)

    def wall(self, m: harness.Measured) -> float:
        """Wall seconds after the start-up's CPU."""
        return max(m.wall - self.base(m).cpu, 1e-3)

    def measurable(self, *ms: harness.Measured) -> bool:
        """At full scale always; on a smaller run only if each command did work beyond its start-up
        (a quarter of the start-up's CPU or more), else after-start-up figures are its noise."""
        return self.full_scale or all(m.cpu >= 1.25 * self.base(m).cpu for m in ms)

    def judge(self, ok: bool, *ms: harness.Measured) -> bool | None:
        return ok if self.measurable(*ms) else None

    def judged_cpu(self, m: harness.Measured) -> float:
        return m.cpu if self.full_scale else self.cpu(m)

    def judged_wall(self, m: harness.Measured) -> float:
        return m.wall if self.full_scale else self.wall(m)

    def rss_row(self, name: str, m: harness.Measured | harness.Runs, info: dict, target: str,
                counted=True) -> None:
        """Peak RSS of ``m`` against TARGETS[target]; of repeated runs the highest peak of any."""
        runs = m if isinstance(m, harness.Runs) else None
        m = runs.measured(runs.median) if runs else m
        peak = runs.max_rss if runs else m.max_rss
        base = self.base(m).max_rss
        whole, above = peak / info["raw"], (peak - base) / info["raw"]
        limit = TARGETS[target]
        self.row(f"peak RSS: {name}", m,
                 f"{peak / 1e6:,.0f} MB = {whole:.2f}x raw ({above:.2f}x above start-up's "
                 f"{base / 1e6:.0f} MB){f', the highest of {runs.n} runs' if runs and runs.n > 1 else ''}",
                 f"<= {limit:g}x raw", self.judge((whole if self.full_scale else above) <= limit, m), counted)

    def fetcher(self, url: str, trust: str, label: str, have=(), prefer: str | None = None,
                rates_from: Path | None = None):
        """A runner for ``repeated`` or ``take_turns``: each call is one fetch into a fresh cache seeded from
        the same ``rates_from`` and checked to leave the verified net as .pb.gz.

        A run's result is (measurement, JSON result, a folder with the cache's state files after it); the
        median's state folder is the one to seed later fetches from. ``rates_from`` (such a folder) seeds
        the cache with what a client's earlier fetches left: the link and machine rates, and the ids of
        the held nets it already identified (a client that follows a run does not hash its held net
        again on every fetch)."""
        done = []

        def once():
            done.append(None)
            return self.fetch_once(url, trust, label, len(done), have, prefer, rates_from)
        return once

    def fetch(self, url: str, trust: str, label: str, have=(), prefer: str | None = None,
              rates_from: Path | None = None, key=lambda m: m.wall, always: bool = False) -> harness.Runs:
        """A fetch (``fetcher``), repeated if short (``repeated``: ``key`` and ``always``)."""
        once = self.fetcher(url, trust, label, have, prefer, rates_from)
        return self.repeated(once, lambda r: key(r[0]), measured=lambda r: r[0], always=always)

    def fetch_once(self, url: str, trust: str, label: str, run: int, have, prefer, rates_from):
        cache = self.work / "caches" / label
        shutil.rmtree(cache, ignore_errors=True)
        cache.mkdir(parents=True)
        for name in STATE_FILES:
            if rates_from and (rates_from / name).exists():
                shutil.copyfile(rates_from / name, cache / name)
        argv = CLIENT + ["-q", "fetch", url, "--cache", cache, "--trust", trust, "--json"]
        for held in have:
            argv += ["--have", held]
        argv += ["--prefer", prefer] if prefer else []
        m = self.run(argv, f"fetch {label}, run {run}")
        result = json.loads(m.stdout)
        check_fetched(Path(result["path"]), result["net_id"], self.target_id)
        state = self.work / "caches" / f"{label}.{run}.state"
        state.mkdir(exist_ok=True)
        for name in STATE_FILES:
            if (cache / name).exists():
                shutil.copyfile(cache / name, state / name)
        shutil.rmtree(cache, ignore_errors=True)
        return m, result, state

    def fetch_rows(self, info: dict, port: int, trust: str) -> None:
        # A client following the run holds the last two nets (N and N-1: the history patch's second base).
        held = info["paths"][-3:-1]
        self.target_id = info["ids"][-1]
        for mbit in self.args.rates:
            rate = mbit * 1e6 / 8
            paired = mbit == TIME_RATE
            with harness.ThrottledProxy(port, rate) as proxy:
                full_fetch = self.fetcher(proxy.url, trust, f"full-{mbit:g}")
                by_wall, measured = (lambda r: r[0].wall), (lambda r: r[0])
                full_runs = (harness.median_run(full_fetch, 1, by_wall, measured=measured) if paired else
                             self.repeated(full_fetch, by_wall, measured=measured))
                rates = full_runs.median[2]
                bytes_runs = self.fetch(proxy.url, trust, f"patch-{mbit:g}", have=held, prefer="bytes",
                                        rates_from=rates, always=paired)
                # The client's default: the route costed by time, at the rates its earlier fetches measured.
                time_fetch = self.fetcher(proxy.url, trust, f"time-{mbit:g}", have=held, prefer="time",
                                          rates_from=bytes_runs.median[2])
                if paired:
                    # Its target compares it with the full download, often the very route it takes: the two
                    # take turns, so a drift in the machine's speed falls on both alike.
                    time_runs = self.take_turns(time_fetch, full_runs, full_fetch)
                else:
                    time_runs = self.repeated(time_fetch, by_wall, measured=measured)
            self.fetch_row_group(info, mbit, full_runs, bytes_runs, time_runs)

    def in_turns(self, runners: dict, key) -> dict:
        """Each of ``runners`` once; then, if every first run was short (``repeated``'s rule), all of them
        in turn until each has ``--repeats`` runs, so a drift in the machine's speed falls on all alike
        (the 1-core and 2-core applies set each other's ratio); else each repeated by its own rule."""
        firsts = {name: runner() for name, runner in runners.items()}
        if not all(m.wall < REPEAT_BELOW_S for m in firsts.values()):
            return {name: self.repeated(runners[name], key, first=first) for name, first in firsts.items()}
        done = alternate(runners, self.args.repeats, {name: [first] for name, first in firsts.items()})
        return {name: harness.Runs(results, key, lambda m: m) for name, results in done.items()}

    def take_turns(self, runner, other: harness.Runs, other_runner) -> harness.Runs:
        """``runner`` and ``other_runner`` run in turn (this one first) until each has PAIRED_REPEATS runs
        (``other`` already holds some); returns this one's runs, judged like ``other``'s."""
        n = PAIRED_REPEATS if self.args.repeats > 1 else 1
        done = alternate({"this": runner, "other": other_runner}, n, {"this": [], "other": other.results})
        return harness.Runs(done["this"], other.key, other.measured)

    def fetch_row_group(self, info: dict, mbit: float, full_runs, bytes_runs, time_runs) -> None:
        link_s = info["gz"] / (mbit * 1e6 / 8)
        full, r, _ = full_runs.median
        self.row(f"full download, empty cache, {mbit:g} Mbit/s", full,
                 f"{full.wall:.2f} s ({spread(full_runs)}{self.wall(full):.2f} s after start-up; the .pb.gz "
                 f"alone {link_s:.2f} s on the link), {r['bytes_downloaded'] / 1e6:,.1f} MB", runs=full_runs.n)
        patch, r, _ = bytes_runs.median
        ratio = self.judged_wall(patch) / self.judged_wall(full)
        self.row(f"fetch net N+1 holding nets N-1 and N, fewest bytes (--prefer bytes), {mbit:g} Mbit/s", patch,
                 f"{patch.wall:.2f} s ({spread(bytes_runs)}{self.wall(patch):.2f} s after start-up) = "
                 f"{ratio:.2f}x full; {r['bytes_downloaded'] / 1e6:,.1f} MB, {r['patches']} patch(es) "
                 f"(route {r['route']}), {patch.cpu:.1f} s CPU", runs=bytes_runs.n)
        if mbit == self.args.rates[0]:
            self.rss_row("fetch, patch route", bytes_runs, info, "rss_fetch_verify", counted=False)
        chosen, r, _ = time_runs.median
        ratio = self.judged_wall(chosen) / self.judged_wall(full)
        limit = {PATCH_RATE: TARGETS["patch_vs_full_100mbit"], TIME_RATE: TARGETS["time_vs_full_1gbit"]}.get(mbit)
        took_full = r["patches"] == 0
        turns = ("; run in turns with the full download" + (", the same route" if took_full else "")
                 if mbit == TIME_RATE else "")
        holds = ratio <= limit if limit else None
        if limit and not holds and took_full and mbit == TIME_RATE:
            # The very download the full row times, so "no slower" is a tie to judge: the choice was
            # right (the patch route measured beside it was slower) and the median lies within the
            # full download's own runs.
            high = max(self.judged_wall(full_runs.measured(x)) for x in full_runs.results)
            holds = self.judged_wall(chosen) <= high and self.judged_wall(patch) > self.judged_wall(full)
            turns += (f"; a tie: within the full download's runs (up to {high:.2f} s), the patch route "
                      f"{self.judged_wall(patch) / self.judged_wall(full):.1f}x slower" if holds else "")
        self.row(f"fetch net N+1 holding nets N-1 and N, --prefer time (the default), {mbit:g} Mbit/s", chosen,
                 f"{chosen.wall:.2f} s ({spread(time_runs)}{self.wall(chosen):.2f} s after start-up) = "
                 f"{ratio:.2f}x full; chose {'the full net' if took_full else 'the patch route'} "
                 f"(route {r['route']}){turns}, {r['bytes_downloaded'] / 1e6:,.1f} MB, {chosen.cpu:.1f} s CPU",
                 f"<= {limit:g}x full download" if limit else "-",
                 self.judge(holds, chosen, full) if limit else None, runs=time_runs.n)

    def client_cpu_rows(self, info: dict, port: int, trust: str) -> None:
        cpu = lambda m: m.cpu  # the figure these two rows are judged on
        fetches = self.fetch(f"http://127.0.0.1:{port}/", trust, "loopback", key=cpu)
        full = fetches.median[0]
        gunzips = self.repeated(lambda: self.run(["gzip", "-dc", info["paths"][-1]], "gzip -dc",
                                                 stdout_path=Path("/dev/null")), cpu)
        gunzip = gunzips.median
        limit = TARGETS["fetch_cpu_vs_gzip"]
        ratio = self.judged_cpu(full) / max(gunzip.cpu, 1e-3)
        self.row("client CPU of a full download, loopback", full,
                 f"{full.cpu:.2f} s CPU{fetches.note('s CPU')}, {self.cpu(full):.2f} s after start-up "
                 f"({full.wall:.2f} s wall) vs {gunzip.cpu:.2f} s{gunzips.note('s CPU')} for `gzip -dc` = "
                 f"{ratio:.2f}x",
                 f"<= {limit:g}x gzip -dc", self.judge(ratio <= limit, full), runs=min(fetches.n, gunzips.n))
        self.rss_row("fetch, full download", fetches, info, "rss_fetch_verify", counted=False)

    def diff_rows(self, info: dict) -> tuple[Path, Path]:
        """diff in both tiers and lossy; returns the lossless patches (cm tier, fast tier)."""
        base, target = info["paths"][-2], info["paths"][-1]
        lossless_patch, fast_patch = self.work / "lossless.lc0p", self.work / "lossless-fast.lc0p"
        w = ["--workers", str(self.args.workers)]
        lossless = self.run(CLIENT + ["-q", "diff", base, target, "-o", lossless_patch, "-f", "--json"] + w,
                            "diff")
        fast = self.run(CLIENT + ["-q", "diff", base, target, "-o", fast_patch, "-f", "--json",
                                  "--tier", "fast"] + w, "diff fast tier")
        lossy = self.run(CLIENT + ["-q", "diff", base, target, "-o", self.work / "lossy.lc0p", "-f", "--json",
                                   "--tolerance", TOLERANCE] + w, "diff lossy")
        sizes = [json.loads(m.stdout)["bytes"] for m in (lossless, lossy, fast)]
        mw = info["weights"] / 1e6
        self.row("diff lossless", lossless,
                 f"{lossless.cpu:.1f} s CPU ({mw / self.cpu(lossless):.1f} M weights/CPU s after start-up), "
                 f"patch {sizes[0] / 1e6:,.1f} MB = {sizes[0] / info['gz']:.3f} of the .pb.gz")
        self.row("diff lossless, fast tier", fast,
                 f"{fast.cpu:.1f} s CPU ({mw / self.cpu(fast):.1f} M weights/CPU s after start-up), "
                 f"patch {sizes[2] / 1e6:,.1f} MB = {sizes[2] / info['gz']:.3f} of the .pb.gz "
                 f"({sizes[2] / sizes[0]:.3f}x the cm tier's)")
        limit = TARGETS["lossy_diff_vs_lossless"]
        ratio = self.judged_cpu(lossy) / self.judged_cpu(lossless)
        self.row(f"diff --tolerance {TOLERANCE}", lossy,
                 f"{lossy.cpu:.1f} s CPU ({self.cpu(lossy):.1f} s after start-up) = {ratio:.2f}x lossless, "
                 f"patch {sizes[1] / 1e6:,.1f} MB = {sizes[1] / info['gz']:.3f} of the .pb.gz",
                 f"<= {limit:g}x lossless CPU", self.judge(ratio <= limit, lossy, lossless))
        self.rss_row("diff", lossless, info, "rss_diff_publish")
        return lossless_patch, fast_patch

    def verify_rows(self, info: dict, patch: Path, apply_two: harness.Measured) -> None:
        """``verify`` of the lossless patch on 2 cores, against its ``apply`` there (``apply_two``)."""
        base, target = info["paths"][-2], info["paths"][-1]
        runs = self.repeated(lambda: self.run(CLIENT + ["-q", "verify", base, patch, target, "--workers", "2"],
                                              "verify x2", cpus="0,1"), lambda m: m.wall)
        two = runs.median
        limit, ratio = TARGETS["verify_vs_apply"], self.judged_wall(two) / self.judged_wall(apply_two)
        self.row("verify, 2 cores (`taskset -c 0,1`)", two,
                 f"{two.wall:.2f} s wall ({spread(runs)}{two.cpu:.2f} s CPU) = {ratio:.2f}x `apply` on 2 cores",
                 f"<= {limit:g}x apply", self.judge(ratio <= limit, apply_two, two), counted=False, runs=runs.n)
        self.rss_row("verify", runs, info, "rss_fetch_verify", counted=False)

    def apply_rows(self, info: dict, patch: Path, label: str, counted: bool = True) -> harness.Measured:
        """Rows for ``apply`` on 1 and 2 cores; returns the 2-core median run. ``counted``: whether the
        2-core ratio is one of the acceptance targets or reported against it."""
        base, mw = info["paths"][-2], info["weights"] / 1e6
        runners = {}
        for cpus, workers in (("0", 1), ("0,1", 2)):
            out = self.work / f"applied-{label.replace(', ', '-').replace(' ', '-')}-{workers}.pb.gz"

            def once(cpus=cpus, workers=workers, out=out):
                m = self.run(CLIENT + ["-q", "apply", base, patch, "-o", out, "-f", "--workers", workers],
                             f"apply {label} x{workers}", cpus=cpus)
                out.unlink()
                return m
            runners[workers] = once
        runs = self.in_turns(runners, lambda m: m.wall)
        one, two = runs[1].median, runs[2].median
        small = "" if self.measurable(one, two) else " (within start-up's noise)"
        self.row(f"apply {label}, 1 core (`taskset -c 0`)", one,
                 f"{one.wall:.2f} s wall{runs[1].note()}, {one.cpu:.2f} s CPU; after start-up "
                 f"{mw / self.cpu(one):.1f} M weights/CPU s{small}", runs=runs[1].n)
        limit, ratio = TARGETS["apply_2cores_vs_1"], self.judged_wall(two) / self.judged_wall(one)
        self.row(f"apply {label}, 2 cores (`taskset -c 0,1`)", two,
                 f"{two.wall:.2f} s wall ({spread(runs[2])}{two.cpu:.2f} s CPU) = {ratio:.2f}x 1 core; "
                 f"after start-up {mw / self.wall(two):.1f} M weights/s{small}",
                 f"<= {limit:g}x 1 core wall", self.judge(ratio <= limit, one, two), counted, runs=runs[2].n)
        self.rss_row(f"apply {label}", runs[2], info, "rss_apply")
        return two


def alternate(runners: dict, n: int, done: dict) -> dict:
    """Call ``runners`` in turn until each has ``n`` results in ``done`` (which may hold some already)."""
    while any(len(done[name]) < n for name in runners):
        for name, runner in runners.items():
            if len(done[name]) < n:
                done[name].append(runner())
    return done


def spread(runs: harness.Runs) -> str:
    """``median of 3: 4.30-4.62 s; `` to open a parenthesis after the median's figure; empty for one run."""
    return f"{runs.spread_text()}; " if runs.n > 1 else ""


def check_fetched(path: Path, net_id: str, target_id: str) -> None:
    """The fetched net is the one asked for, written as .pb.gz, and its raw bytes hash to its id."""
    digest = hashlib.sha256()
    with gzip.open(path, "rb") as f:
        while chunk := f.read(1 << 22):
            digest.update(chunk)
    if not path.name.endswith(".pb.gz") or net_id != target_id or digest.hexdigest() != net_id:
        raise RuntimeError(f"{path}: not the verified .pb.gz of net {target_id[:16]} (got {net_id[:16]}, "
                           f"sha256 {digest.hexdigest()[:16]})")


def net_line(label: str, info: dict) -> str:
    return (f"{label}: {info['layers']} layers, {info['weights']:,} weights (largest layer "
            f"{info['largest_layer']:,}), {info['raw'] / 1e6:,.1f} MB raw, {info['gz'] / 1e6:,.1f} MB .pb.gz; "
            f"{info['count']} nets generated in {info['generate'].wall:.0f} s "
            f"({info['generate'].cpu:.0f} s CPU, peak RSS {info['generate'].max_rss / 1e6:,.0f} MB)")


def repeats_text(bench: Bench) -> str:
    """What the section says of single runs and medians (the rule: Bench.repeated)."""
    n = bench.args.repeats
    if n == 1:
        return ("Every row is one run of a child process (wall, CPU and peak RSS from wait4), started after "
                "a `sync` so no earlier row's writes are flushed during it.")
    single = [f"\"{r.what}\"" for r in bench.rows if r.runs == 1]
    return (f"Every row is a child process (wall, CPU and peak RSS from wait4), started after a `sync` "
            f"so no earlier row's writes are flushed during it. The short ones are run {n} "
            f"times and reported as their median run: each fetch, `gzip -dc`, apply and verify whose first run took "
            f"under {REPEAT_BELOW_S:g} s wall, and every fetch at {TIME_RATE:g} Mbit/s (the rows that set one "
            f"another's ratios; there the full download and the `--prefer time` fetch run "
            f"{PAIRED_REPEATS} times each, taking turns, so a drift in the machine's speed falls on "
            f"both alike, as do a 1-core and a 2-core apply that are both short); a repeated fetch starts each time from a fresh cache seeded alike and each run's "
            f"net is checked. The median is by the figure the row is judged on (wall; CPU for the client-CPU row "
            f"and its `gzip -dc`), shown as \"median of {n}: lowest-highest\"; ratios are of medians, and a peak "
            f"RSS row gives the highest peak of the runs. Single runs: publish and the diffs"
            + (f", and (their first run {REPEAT_BELOW_S:g} s or more) " + ", ".join(single) if single else "")
            + ".")


def render(bench: Bench, infos: dict, command: str, minutes: float, machine: str) -> str:
    a = bench.args
    counted = [r for r in bench.rows if r.counted and r.holds is not None]
    held = sum(1 for r in counted if r.holds)
    info = infos[a.net]
    n = len(info["paths"])
    steady = (f"the last net is net {n} of the run, so its publish codes the steady state's full candidate set "
              if n >= scale_publish.STEADY_COUNT else
              f"the last net is only net {n} of the run (the candidate set is full from net "
              f"{scale_publish.STEADY_COUNT}: see below what the steady state adds) ")
    lines = ["## At lc0's scale", "", f"`{command}`", "",
             (f"Ran {minutes:.1f} min on {machine} (a shared, loaded machine: CPU times are the steadier "
              f"figures). Nets from `tools/lc0_nets.py` (SWA-like successive nets, scale {a.scale:g} of lc0's "
              "sizes):"), ""]
    lines += [f"- {net_line(name, nets)}" for name, nets in infos.items()]
    st, im = bench.startup, bench.imports
    judged = ("whole commands, as a user pays them" if bench.full_scale else
              "what each command costs after its start-up (this run is smaller than lc0's nets, so the "
              "fixed start-up would otherwise decide the verdicts)")
    lines += ["", (f"{repeats_text(bench)} Where a row says "
              f"\"after start-up\", a command's fixed cost is taken off: imports ({im.cpu:.2f} s CPU, "
              f"{im.max_rss / 1e6:.0f} MB) for a full download, imports and compiled kernels (`apply` of a "
              f"tiny pair: {st.cpu:.2f} s CPU, {st.max_rss / 1e6:.0f} MB) for the rest; its CPU time is taken "
              f"off wall times too. Verdicts are on {judged}. `$W` is the work folder; the repository is "
              f"published with `--tolerance {TOLERANCE}` ({steady}after the setup in "
              f"tools/scale_publish.py), signed and served by `lc0weights-server serve` on loopback behind a "
              f"token-bucket proxy per rate ({', '.join(f'{r:g}' for r in a.rates)} Mbit/s). A client with "
              f"nothing fetches the last net; one holding nets N-1 and N ({info['paths'][-3].name}, "
              f"{info['paths'][-2].name}, as a client following the run does) fetches net N+1, its cache "
              f"seeded with what its earlier fetches on that link left (the measured link and machine rates, "
              f"the ids of its held nets); each fetched net is checked to be the verified .pb.gz. Targets: TARGETS "
              f"in tools/bench_scale.py, for 2 cores and a BT4-size net. {held} of {len(counted)} targets "
              "hold (rows marked \"reported\" are shown against a target but not counted; \"too small to judge\": "
              "at this scale the command's own work was within its start-up's noise)."), ""]
    lines.append(harness.md_table(["measurement", "command", "measured", "target", "holds"],
                                  [r.cells() for r in bench.rows]))
    if bench.notes:
        lines += [""] + bench.notes
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog=__doc__.split("\n\n", 1)[1])
    parser.add_argument("--net", choices=lc0_nets.NETS, default="bt4")
    parser.add_argument("--scale", type=float, default=1.0, help="fraction of lc0's sizes (e.g. 0.05)")
    parser.add_argument("--quick", action="store_true", help="--scale 0.02 (unless --scale is given)")
    parser.add_argument("--count", type=int, default=scale_publish.STEADY_COUNT,
                        help=f"nets in the run (>= 3; default {scale_publish.STEADY_COUNT}, the fewest whose "
                             "last one is published in steady state)")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--rates", type=lambda s: [float(x) for x in s.split(",")],
                        default=[PATCH_RATE, TIME_RATE],
                        help=f"link rates of the proxies in Mbit/s (default {PATCH_RATE:g},{TIME_RATE:g}; "
                             "the fetch targets are set at those two)")
    parser.add_argument("--workers", type=int, default=2, help="--workers for diff and verify (default 2)")
    parser.add_argument("--repeats", type=int, default=3,
                        help="runs of each short measurement, reported as the median run (default 3; 1: all "
                             f"single runs); short: a fetch, apply or gzip -dc under {REPEAT_BELOW_S:g} s wall, "
                             f"every fetch at {TIME_RATE:g} Mbit/s")
    parser.add_argument("--no-biglayer", action="store_true", help="skip the one-big-layer apply rows")
    parser.add_argument("--work", type=Path, help="work folder (default: a temporary one, removed after)")
    parser.add_argument("--keep", action="store_true", help="keep the work folder")
    parser.add_argument("--out", type=Path, help="write the section into this Markdown file")
    parser.add_argument("--quiet", action="store_true", help="no progress on stderr")
    argv = sys.argv[1:] if argv is None else argv
    args = parser.parse_args(argv)
    if args.quick and "--scale" not in argv:
        args.scale = 0.02
    if args.count < 3 or not 0 < args.scale <= 1 or args.repeats < 1:
        parser.error("need --count >= 3, 0 < --scale <= 1 and --repeats >= 1")
    work = args.work or Path(tempfile.mkdtemp(prefix="bench-scale-"))
    work.mkdir(parents=True, exist_ok=True)
    started, machine = time.perf_counter(), harness.machine_line()
    bench = Bench(args, work)
    try:
        infos = {args.net: bench.generate(args.net, args.count)}
        if args.net != "biglayer" and not args.no_biglayer:
            infos["biglayer"] = bench.generate("biglayer", 2)
        info = infos[args.net]
        bench.measure_startup()
        trust = bench.publish(info)
        serve = lambda port: SERVER + ["-q", "serve", "--repo", work / "repo", "--port", port]
        with harness.ChildServer(serve, "timestamp.json") as served:
            bench.fetch_rows(info, served.port, trust)
            bench.client_cpu_rows(info, served.port, trust)
        patch, fast_patch = bench.diff_rows(info)
        bench.verify_rows(info, patch, bench.apply_rows(info, patch, args.net))
        # The apply target is on the patch `diff` makes (the cm tier, above); the fast tier's
        # decoding is a quarter of cm's, so its fixed serial part (start-up, the base's one gunzip
        # stream) weighs four times as much in its ratio: reported beside the target, not counted.
        bench.apply_rows(info, fast_patch, f"{args.net}, fast tier", counted=False)
        if "biglayer" in infos and args.net != "biglayer":
            big = infos["biglayer"]
            big_patch = work / "biglayer.lc0p"
            bench.run(CLIENT + ["-q", "diff", *big["paths"], "-o", big_patch, "-f",
                                "--workers", str(args.workers)], "diff biglayer")
            bench.apply_rows(big, big_patch, "biglayer")
    finally:
        if not (args.keep or args.work):
            shutil.rmtree(work, ignore_errors=True)
    command = harness.shell_line(["python", "tools/bench_scale.py", *argv])
    section = render(bench, infos, command, (time.perf_counter() - started) / 60, machine)
    print(section)
    if args.out:
        harness.write_section(args.out, section)
    return 0


if __name__ == "__main__":
    sys.exit(main())
