"""lc0weights at lc0's scale: BT4-class nets through the command lines, on a throttled link.

Generates a short SWA-like run of lc0-scale nets (tools/lc0_nets.py), publishes
it signed (``lc0weights-server keygen / publish --tolerance 2^-14``), serves
it on loopback (``lc0weights-server serve``) behind throttling proxies of its
own (token bucket, e.g. 100 Mbit/s and 1 Gbit/s), then measures, one child
process per row (wall, CPU and peak RSS from wait4):

* a full fetch with an empty cache, and a fetch of net N+1 by a client that
  holds net N (the patch route), through each proxy;
* the client's CPU for a full fetch on loopback vs ``gzip -dc`` of the file;
* ``apply`` pinned to 1 core vs 2 cores, for the net and for the one-big-layer
  net; ``diff`` lossless vs ``--tolerance 2^-14``; ``verify``;
* publishing one new net with the steady-state patch set (wall);
* peak RSS of apply, fetch, verify, diff, publish as multiples of the raw net.

Each row shows its target beside the measurement (the budget of
/work/shared/docs/DESIGN.md "At lc0's scale"; ``TARGETS`` below) and
whether it holds. With ``--out docs/BENCHMARKS.md`` the "## At lc0's scale"
section is written there (replaced if present).

    python tools/bench_scale.py --scale 0.05                  # small, minutes
    python tools/bench_scale.py --out docs/BENCHMARKS.md      # full BT4: ~1.1 GB of nets, long

Options of the main code that may not exist yet are used only when ``--help``
of the command lists them: ``fetch --prefer time|bytes`` (when present the
patch row forces ``--prefer bytes`` and one more row shows the route
``--prefer time`` picks).
"""
from __future__ import annotations

import argparse
import json
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

TOOLS = Path(__file__).resolve().parent
sys.path.insert(0, str(TOOLS))

import harness
import lc0_nets

PY = sys.executable
CLIENT = [PY, "-m", "lc0weights.cli"]
SERVER = [PY, "-m", "service.cli"]
TOLERANCE = "2^-14"
BT4_WEIGHTS = 186e6

# The budget (DESIGN.md, "At lc0's scale"): a client's budget is its link, so a rebuild must run at
# tens of millions of weights per second on a few cores; memory a small multiple of the net.
TARGETS = {
    "link_overhead": 1.15,        # full fetch wall <= this x the .pb.gz's time on the link
    "fetch_cpu_vs_gzip": 2.0,     # client CPU of a full fetch <= this x `gzip -dc` of the file
    "apply_mw_per_core": 10.0,    # apply, 1 core: >= M weights per CPU second
    "apply_mw_2cores": 20.0,      # apply, 2 cores: >= M weights per wall second
    "apply_speedup": 1.5,         # 2 cores vs 1, wall
    "lossy_diff_vs_lossless": 2.0,  # diff --tolerance CPU <= this x lossless
    "publish_s_full_bt4": 600.0,  # one new BT4 net, whole patch set; scaled by weight count
    "rss_client": 2.5,            # apply, fetch, verify: peak RSS above the interpreter, x raw net
    "rss_publisher": 4.0,         # diff, publish
}


@dataclass
class Row:
    what: str
    command: str
    measured: str
    target: str
    holds: bool | None

    def cells(self) -> list[str]:
        verdict = "-" if self.holds is None else ("yes" if self.holds else "**no**")
        return [self.what, f"`{self.command}`", self.measured, self.target, verdict]


class Bench:
    """One benchmark run: its work folder, the nets, and the rows measured so far."""

    def __init__(self, args, work: Path):
        self.args, self.work = args, work
        self.rows: list[Row] = []
        self.log = (lambda *a: None) if args.quiet else (lambda *a: print(*a, file=sys.stderr, flush=True))

    def show(self, m: harness.Measured) -> str:
        """The command as a user would type it, with the work folder as $W."""
        text = m.command.replace(str(self.work), "$W")
        text = re.sub(r"http://127\.0\.0\.1:\d+/", "$URL", text)
        text = re.sub(r"ed25519:\S+", "$KEY", text)
        for argv, name in ((CLIENT, "lc0weights"), (SERVER, "lc0weights-server"),
                           ([PY, str(TOOLS / "lc0_nets.py")], "python tools/lc0_nets.py")):
            text = text.replace(harness.shell_line(argv), name)
        return text

    def run(self, argv, what: str = "", **kw) -> harness.Measured:
        self.log(f"[bench_scale] {what or ''} {harness.shell_line(argv)}")
        m = harness.run(argv, **kw).check()
        self.log(f"[bench_scale]   wall {m.wall:.2f} s, cpu {m.cpu:.2f} s, peak RSS {m.max_rss / 1e6:.0f} MB")
        return m

    def row(self, what, m, measured, target="-", holds=None) -> None:
        self.rows.append(Row(what, self.show(m) if isinstance(m, harness.Measured) else m,
                             measured, target, holds))

    # -- nets and repository --------------------------------------------------------------

    def generate(self, net: str, count: int) -> dict:
        out = self.work / "nets"
        m = self.run([PY, TOOLS / "lc0_nets.py", out, "--net", net, "--count", count,
                      "--scale", self.args.scale, "--seed", self.args.seed], f"generate {net}")
        info = json.loads((out / f"{net}.json").read_text())
        info["paths"] = [out / f["file"] for f in info["nets"]]
        info["raw"] = info["nets"][0]["raw_bytes"]
        info["gz"] = info["nets"][-1]["gz_bytes"]
        info["generate"] = m
        return info

    def publish(self, info: dict) -> str:
        """Publish every net but the last (setup), then the last one alone: the steady-state publish."""
        key, repo = self.work / "key", self.work / "repo"
        trust = self.run(SERVER + ["keygen", key], "keygen").stdout.strip().splitlines()[-1]
        base = SERVER + ["-q", "publish", "--repo", repo, "--key", key, "--tolerance", TOLERANCE, "--json"]
        self.run(base + info["paths"][:-1], "publish setup")
        m = self.run(base + info["paths"][-1:], "publish")
        patches = json.loads(m.stdout)[0]["patches"]
        budget = TARGETS["publish_s_full_bt4"] * info["weights"] / BT4_WEIGHTS
        self.row("publish one new net (steady state: lossless and 2^-14 chain)", m,
                 f"{m.wall:.1f} s wall, {m.cpu:.1f} s CPU, {len(patches)} patches, "
                 f"{sum(p['size'] for p in patches) / 1e6:,.1f} MB",
                 f"<= {budget:.0f} s (600 s per BT4 net)", m.wall <= budget)
        self.rss_row("publish", m, info, "rss_publisher")
        return trust

    # -- measurements -----------------------------------------------------------------------

    def measure_startup(self) -> None:
        """A command's fixed costs: imports alone (a full fetch needs no more), and imports plus loading
        the compiled kernels (``apply`` of a tiny pair: what every patch command pays).

        Subtracted from the rows' CPU times and peak RSS, and the start-up's CPU from wall times (its
        own wall is as noisy as the machine's load), so a small-scale run still says something about
        the per-weight costs; at lc0's scale they are a few percent.
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

    def rss_row(self, name: str, m: harness.Measured, info: dict, target: str) -> None:
        base = self.base(m).max_rss
        above = (m.max_rss - base) / info["raw"]
        limit = TARGETS[target]
        self.row(f"peak RSS: {name}", m,
                 f"{m.max_rss / 1e6:,.0f} MB = {m.max_rss / info['raw']:.2f}x raw "
                 f"({above:.2f}x above start-up's {base / 1e6:.0f} MB)",
                 f"<= {limit}x raw above start-up", above <= limit)

    def fetch(self, url: str, trust: str, label: str, have: Path | None = None, prefer: str | None = None):
        cache = self.work / "caches" / label
        shutil.rmtree(cache, ignore_errors=True)
        argv = CLIENT + ["-q", "fetch", url, "--cache", cache, "--trust", trust, "--json"]
        argv += ["--have", have] if have else []
        argv += ["--prefer", prefer] if prefer else []
        m = self.run(argv, f"fetch {label}")
        result = json.loads(m.stdout)
        shutil.rmtree(cache, ignore_errors=True)
        return m, result

    def fetch_rows(self, info: dict, port: int, trust: str) -> None:
        gz, held = info["gz"], info["paths"][-2]
        prefer_exists = "--prefer" in self.run(CLIENT + ["fetch", "--help"]).stdout
        for mbit in self.args.rates:
            rate = mbit * 1e6 / 8
            link = gz / rate
            with harness.ThrottledProxy(port, rate) as proxy:
                full, r = self.fetch(proxy.url, trust, f"full-{mbit}")
                self.row(f"full fetch, empty cache, {mbit:g} Mbit/s", full,
                         f"{full.wall:.2f} s, {self.wall(full):.2f} s after start-up "
                         f"({r['bytes_downloaded'] / 1e6:,.1f} MB, route {r['route']})",
                         f"<= {TARGETS['link_overhead']} x {link:.2f} s (.pb.gz on the link)",
                         self.wall(full) <= TARGETS["link_overhead"] * link)
                patch, r = self.fetch(proxy.url, trust, f"patch-{mbit}", have=held,
                                      prefer="bytes" if prefer_exists else None)
                self.row(f"fetch net N+1 holding net N, {mbit:g} Mbit/s", patch,
                         f"{patch.wall:.2f} s, {self.wall(patch):.2f} s after start-up "
                         f"({r['bytes_downloaded'] / 1e6:,.1f} MB, {r['patches']} patch(es), {patch.cpu:.1f} s CPU)",
                         f"< full fetch ({full.wall:.2f} s)", patch.wall < full.wall)
                if mbit == self.args.rates[0]:
                    self.rss_row("fetch, patch route", patch, info, "rss_client")
                if prefer_exists:
                    chosen, r = self.fetch(proxy.url, trust, f"time-{mbit}", have=held, prefer="time")
                    self.row(f"fetch net N+1 holding net N, {mbit:g} Mbit/s, --prefer time", chosen,
                             f"{chosen.wall:.2f} s (route {r['route']}, {r['bytes_downloaded'] / 1e6:,.1f} MB)",
                             f"<= min(full, patch) x 1.1 ({min(full.wall, patch.wall) * 1.1:.2f} s)",
                             chosen.wall <= 1.1 * min(full.wall, patch.wall))

    def client_cpu_rows(self, info: dict, port: int, trust: str) -> None:
        full, _ = self.fetch(f"http://127.0.0.1:{port}/", trust, "loopback")
        gunzip = self.run(["gzip", "-dc", info["paths"][-1]], "gzip -dc", stdout_path=Path("/dev/null"))
        limit = TARGETS["fetch_cpu_vs_gzip"]
        self.row("client CPU of a full fetch, loopback", full,
                 f"{full.cpu:.2f} s CPU, {self.cpu(full):.2f} s after start-up ({full.wall:.2f} s wall) vs "
                 f"{gunzip.cpu:.2f} s for `gzip -dc` = {self.cpu(full) / max(gunzip.cpu, 1e-3):.2f}x",
                 f"<= {limit}x gzip -dc", self.cpu(full) <= limit * gunzip.cpu)
        self.rss_row("fetch, full download", full, info, "rss_client")

    def diff_rows(self, info: dict) -> Path:
        base, target = info["paths"][-2], info["paths"][-1]
        lossless_patch = self.work / "lossless.lc0p"
        w = ["--workers", str(self.args.workers)]
        lossless = self.run(CLIENT + ["-q", "diff", base, target, "-o", lossless_patch, "-f", "--json"] + w,
                            "diff")
        lossy = self.run(CLIENT + ["-q", "diff", base, target, "-o", self.work / "lossy.lc0p", "-f", "--json",
                                   "--tolerance", TOLERANCE] + w, "diff lossy")
        sizes = [json.loads(m.stdout)["bytes"] for m in (lossless, lossy)]
        mw = info["weights"] / 1e6
        self.row("diff lossless", lossless,
                 f"{lossless.cpu:.1f} s CPU ({mw / self.cpu(lossless):.1f} M weights/CPU s after start-up), "
                 f"patch {sizes[0] / 1e6:,.1f} MB = {sizes[0] / info['gz']:.3f} of the .pb.gz")
        limit = TARGETS["lossy_diff_vs_lossless"]
        self.row(f"diff --tolerance {TOLERANCE}", lossy,
                 f"{lossy.cpu:.1f} s CPU = {self.cpu(lossy) / self.cpu(lossless):.2f}x lossless after start-up, "
                 f"patch {sizes[1] / 1e6:,.1f} MB = {sizes[1] / info['gz']:.3f} of the .pb.gz",
                 f"<= {limit}x lossless CPU", self.cpu(lossy) <= limit * self.cpu(lossless))
        self.rss_row("diff", lossless, info, "rss_publisher")
        verify = self.run(CLIENT + ["-q", "verify", base, lossless_patch, target] + w, "verify")
        self.rss_row("verify", verify, info, "rss_client")
        return lossless_patch

    def apply_rows(self, info: dict, patch: Path, label: str) -> None:
        base, mw = info["paths"][-2], info["weights"] / 1e6
        times = {}
        for cpus, workers in (("0", 1), ("0,1", 2)):
            out = self.work / f"applied-{label}-{workers}.pb.gz"
            m = self.run(CLIENT + ["-q", "apply", base, patch, "-o", out, "-f", "--workers", workers],
                         f"apply {label} x{workers}", cpus=cpus)
            out.unlink()
            times[workers] = m
            if workers == 1:
                limit = TARGETS["apply_mw_per_core"]
                self.row(f"apply {label}, 1 core", m,
                         f"{m.wall:.2f} s wall, {m.cpu:.2f} s CPU; after start-up "
                         f"{mw / self.cpu(m):.1f} M weights/CPU s",
                         f">= {limit:g} M weights/CPU s", mw / self.cpu(m) >= limit)
            else:
                limit, speedup = TARGETS["apply_mw_2cores"], self.wall(times[1]) / self.wall(m)
                self.row(f"apply {label}, 2 cores", m,
                         f"{m.wall:.2f} s wall ({m.cpu:.2f} s CPU); after start-up {mw / self.wall(m):.1f} "
                         f"M weights/s, {speedup:.2f}x 1 core",
                         f">= {limit:g} M weights/s and >= {TARGETS['apply_speedup']}x 1 core",
                         mw / self.wall(m) >= limit and speedup >= TARGETS["apply_speedup"])
        self.rss_row(f"apply {label}", times[2], info, "rss_client")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Served:
    """``lc0weights-server serve`` as a child process, stopped (by its own pid) on exit."""

    def __init__(self, repo: Path):
        self.port = free_port()
        self.proc = subprocess.Popen(SERVER + ["-q", "serve", "--repo", str(repo), "--port", str(self.port)],
                                     env=harness.child_env(), stdout=subprocess.DEVNULL,
                                     stderr=subprocess.PIPE)

    def __enter__(self):
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"serve exited: {self.proc.stderr.read().decode()[-2000:]}")
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{self.port}/timestamp.json", timeout=2).read()
                return self
            except OSError:
                time.sleep(0.3)
        raise RuntimeError("serve did not answer within 60 s")

    def __exit__(self, *exc):
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()


def net_line(label: str, info: dict) -> str:
    return (f"{label}: {info['layers']} layers, {info['weights']:,} weights (largest layer "
            f"{info['largest_layer']:,}), {info['raw'] / 1e6:,.1f} MB raw, {info['gz'] / 1e6:,.1f} MB .pb.gz; "
            f"{info['count']} nets generated in {info['generate'].wall:.0f} s "
            f"({info['generate'].cpu:.0f} s CPU, peak RSS {info['generate'].max_rss / 1e6:,.0f} MB)")


def render(bench: Bench, infos: dict, command: str, minutes: float, machine: str) -> str:
    a = bench.args
    held = sum(1 for r in bench.rows if r.holds)
    judged = sum(1 for r in bench.rows if r.holds is not None)
    lines = ["## At lc0's scale", "",
             (f"Produced by `{command}` in {minutes:.1f} min on {machine} (a shared, loaded machine: "
              "CPU times are the steadier figures). Nets from `tools/lc0_nets.py` (SWA-like successive nets, "
              f"scale {a.scale:g} of lc0's sizes):"), ""]
    lines += [f"- {net_line(name, info)}" for name, info in infos.items()]
    st, im = bench.startup, bench.imports
    lines += ["", (f"Every row is one child process (wall, CPU and peak RSS from wait4). Where a row says "
              f"\"after start-up\", a command's fixed cost is taken off: imports ({im.cpu:.2f} s CPU, "
              f"{im.max_rss / 1e6:.0f} MB) for a full fetch, imports and compiled kernels (`apply` of a tiny "
              f"pair: {st.cpu:.2f} s CPU, {st.max_rss / 1e6:.0f} MB) for the rest; its CPU time is taken off "
              f"wall times too. `$W` is the work "
              f"folder, the repository is signed and served by `lc0weights-server serve` on loopback behind "
              f"a token-bucket proxy ({', '.join(f'{r:g}' for r in a.rates)} Mbit/s). The client in the "
              f"patch rows holds net N ({infos[a.net]['paths'][-2].name}) and fetches net N+1. Targets: the "
              f"budget in DESIGN.md \"At lc0's scale\" (TARGETS in tools/bench_scale.py). "
              f"{held} of {judged} targets hold."), ""]
    lines.append(harness.md_table(["measurement", "command", "measured", "target", "holds"],
                                  [r.cells() for r in bench.rows]))
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog=__doc__.split("\n\n", 1)[1])
    parser.add_argument("--net", choices=lc0_nets.NETS, default="bt4")
    parser.add_argument("--scale", type=float, default=1.0, help="fraction of lc0's sizes (e.g. 0.05)")
    parser.add_argument("--count", type=int, default=3,
                        help="nets in the run (>= 3: the last is published alone, in steady state)")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--rates", type=lambda s: [float(x) for x in s.split(",")], default=[100.0, 1000.0],
                        help="link rates of the proxies in Mbit/s (default 100,1000)")
    parser.add_argument("--workers", type=int, default=2, help="--workers for diff and verify (default 2)")
    parser.add_argument("--no-biglayer", action="store_true", help="skip the one-big-layer apply rows")
    parser.add_argument("--work", type=Path, help="work folder (default: a temporary one, removed after)")
    parser.add_argument("--keep", action="store_true", help="keep the work folder")
    parser.add_argument("--out", type=Path, help="write the section into this Markdown file")
    parser.add_argument("--quiet", action="store_true", help="no progress on stderr")
    args = parser.parse_args(argv)
    if args.count < 3 or not 0 < args.scale <= 1:
        parser.error("need --count >= 3 and 0 < --scale <= 1")
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
        with Served(work / "repo") as served:
            bench.fetch_rows(info, served.port, trust)
            bench.client_cpu_rows(info, served.port, trust)
        patch = bench.diff_rows(info)
        bench.apply_rows(info, patch, args.net)
        if "biglayer" in infos and args.net != "biglayer":
            big = infos["biglayer"]
            big_patch = work / "biglayer.lc0p"
            bench.run(CLIENT + ["-q", "diff", *big["paths"], "-o", big_patch, "-f",
                                "--workers", str(args.workers)], "diff biglayer")
            bench.apply_rows(big, big_patch, "biglayer")
    finally:
        if not (args.keep or args.work):
            shutil.rmtree(work, ignore_errors=True)
    command = "python tools/bench_scale.py " + " ".join(harness.shell_line([a]) for a in (argv or sys.argv[1:]))
    section = render(bench, infos, command.strip(), (time.perf_counter() - started) / 60, machine)
    print(section)
    if args.out:
        harness.write_section(args.out, section)
    return 0


if __name__ == "__main__":
    sys.exit(main())
