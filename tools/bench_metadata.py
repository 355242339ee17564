"""What signed metadata costs a client and a publisher as the history grows.

    .venv/bin/python tools/bench_metadata.py [--nets N] [--seed S] [--markdown FILE] [--keep DIR]
    .venv/bin/python tools/bench_metadata.py --measure DIR [--markdown FILE]

Publishes N tiny synthetic nets (a few KB each, successive nets one small
training step apart) into a signed repository, served by the built-in server
on loopback, then measures:

* a poll with nothing new: the conditional timestamp request, body and HTTP
  headers counted separately on the server's socket (and the poll that
  follows a re-sign);
* catching up from 1, 10, 100 and 1,000 nets behind: the metadata bytes and
  route, for a client with a fresh trust state and for one that had followed
  the repository up to the net it holds; what the records read are made of;
  the same with the older longest-link descent; a client holding 100 nets;
* publish time per net near the start, along the way and at the end;
* for comparison, the unsigned schema-1 ``index.json`` that repositories kept
  before signing (no longer read or served), at 1,000 and N nets: its size
  (raw and gzip), which its client downloaded whole on every poll, and the
  time of a JSON round trip and an atomic rewrite (what such a publish paid per net).

Prints a Markdown report; ``--markdown FILE`` also writes it into FILE as
the section "Metadata at N nets" (replacing that section if present).
``--keep DIR`` keeps the repository, key and publish figures, so that
``--measure DIR`` can repeat the client measurements after a client change
without publishing again (it loads a pickle: only folders this tool wrote).
"""
from __future__ import annotations

import argparse
import gzip
import json
import logging
import pickle
import platform
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import harness  # noqa: E402  (tools/, beside this file)

from lc0weights import encodings as enc  # noqa: E402
from lc0weights.errors import Lc0WeightsError  # noqa: E402
from lc0weights.client import TransferPolicy, fetch  # noqa: E402
from lc0weights.repository import updater  # noqa: E402
from lc0weights.repository.keys import SigningKey  # noqa: E402
from lc0weights.durable_files import atomic_write  # noqa: E402
from lc0weights.net import Net, gzip_bytes  # noqa: E402
from lc0weights.proto import lc0net_pb2 as pb  # noqa: E402
from service.publish import publish_net  # noqa: E402
from service.repository import Repository  # noqa: E402
from service.serve import RepositoryHandler, RepositoryServer  # noqa: E402

BEHIND = (1, 10, 100, 1000)
WINDOW = 50                      # publishes per timing median
CODEC = "varint-brotli"
TRUST_DIR = ".lc0weights-trust"
METADATA = re.compile(r"/(timestamp\.json|root\.json|records/.*)\Z")
POLL_TARGET = 1024
CATCH_UP_TARGET = 32 << 10


# -- a tiny training run ------------------------------------------------------------------

# (layer path below Weights, element count, weight scale): about 2,000 weights, 4 KB raw.
TINY_LAYERS = (
    (("input", "weights"), 16 * 8 * 9, 0.05), (("input", "biases"), 16, 0.05),
    (("input", "bn_means"), 16, 0.05), (("input", "bn_stddivs"), 16, 0.5),
    (("policy", "weights"), 80 * 16, 0.05), (("policy", "biases"), 80, 0.05),
    (("ip2_val_w",), 3 * 64, 0.1), (("ip2_val_b",), 3, 0.1),
)


def tiny_run(count: int, seed: int):
    """Yield ``(net, gz)`` for ``count`` checkpoints of a tiny run, one small SGD-like step apart.

    Every weight moves by about 1/1000 of its scale per checkpoint, so a patch
    from the predecessor is much smaller than the net and one from far back
    approaches its size, as in a real run. The step count makes every net distinct.
    """
    rng = np.random.default_rng(seed)
    values = [rng.normal(0.0, scale, n).astype(np.float32) for _, n, scale in TINY_LAYERS]
    momentum = [np.zeros(n, np.float32) for _, n, _ in TINY_LAYERS]
    for step in range(count):
        if step:
            for (_, n, scale), v, m in zip(TINY_LAYERS, values, momentum):
                m *= 0.5
                m += rng.normal(0.0, 1e-3 * scale, n).astype(np.float32)
                v += m
        raw = _tiny_net_bytes(values, 400_000 + 100 * step)
        yield Net.from_bytes(raw), gzip_bytes(raw)


def _tiny_net_bytes(values, training_steps: int) -> bytes:
    net = pb.Net(magic=0x1C0, license="synthetic benchmark net")
    net.min_version.major, net.min_version.minor = 0, 30
    net.format.weights_encoding = 1
    net.format.network_format.network = 3
    net.training_params.training_steps = training_steps
    for (path, _, _), v in zip(TINY_LAYERS, values):
        layer = net.weights
        for part in path:
            layer = getattr(layer, part)
        lo, hi = float(v.min()), float(v.max())
        layer.min_val, layer.max_val = lo, hi
        layer.params = enc.encode_linear16(v, np.float32(lo), np.float32(hi)).tobytes()
    return net.SerializeToString()


# -- counting what crosses the socket --------------------------------------------------------

@dataclass
class Exchange:
    path: str
    status: int
    request_bytes: int          # request line and headers, as read from the socket
    header_bytes: int           # status line and response headers
    body_bytes: int

    @property
    def wire_bytes(self) -> int:
        return self.request_bytes + self.header_bytes + self.body_bytes


class _CountingReader:
    def __init__(self, inner):
        self.inner, self.count = inner, 0

    def readline(self, *args):
        line = self.inner.readline(*args)
        self.count += len(line)
        return line

    def read(self, *args):
        data = self.inner.read(*args)
        self.count += len(data)
        return data

    def __getattr__(self, name):
        return getattr(self.inner, name)


class _CountingWriter:
    def __init__(self, inner):
        self.inner, self.count = inner, 0

    def write(self, data):
        self.count += len(data)
        return self.inner.write(data)

    def __getattr__(self, name):
        return getattr(self.inner, name)


class CountingHandler(RepositoryHandler):
    """The built-in server's handler, logging every exchange's bytes on the socket."""

    exchanges: list = []
    lock = threading.Lock()

    def setup(self):
        super().setup()
        self.rfile = _CountingReader(self.rfile)
        self.wfile = _CountingWriter(self.wfile)

    def send_response(self, code, message=None):
        self._status = int(code)
        super().send_response(code, message)

    def end_headers(self):
        super().end_headers()           # writes the buffered status line and headers, then the blank line
        self._header_bytes = self.wfile.count

    def handle_one_request(self):
        self.rfile.count = self.wfile.count = 0
        self._status, self._header_bytes = 0, 0
        super().handle_one_request()
        if self._status:
            path = self.path.split("?")[0]
            with self.lock:
                self.exchanges.append(Exchange(path, self._status, self.rfile.count, self._header_bytes,
                                               self.wfile.count - self._header_bytes))


class CountingServer(harness.ServerThread):
    """The repository on loopback; ``take()`` returns and forgets the exchanges logged so far."""

    def __init__(self, root: Path):
        self.handler = type("Counting", (CountingHandler,),
                            {"root": root.resolve(), "exchanges": [], "lock": threading.Lock()})
        server = RepositoryServer(root)
        server.RequestHandlerClass = self.handler
        super().__init__(server)

    def take(self) -> list[Exchange]:
        with self.handler.lock:
            taken = list(self.handler.exchanges)
            self.handler.exchanges.clear()
        return taken


# -- measurements -----------------------------------------------------------------------------

@dataclass
class Fetched:
    """One fetch: what the client counted, and what the server saw for metadata."""

    label: str
    route: str
    patches: int
    bytes_downloaded: int
    metadata_bytes: int
    metadata: list[Exchange]
    others: list[Exchange]

    @property
    def metadata_wire(self) -> int:
        return sum(e.wire_bytes for e in self.metadata)


def measured_fetch(server: CountingServer, label: str, cache: Path, key: SigningKey) -> Fetched:
    server.take()
    result = fetch(server.url, cache_dir=cache, trust=key.public, policy=TransferPolicy(progress=False))
    seen = server.take()
    return Fetched(label, result.route, result.patches, result.bytes_downloaded, result.metadata_bytes,
                   [e for e in seen if METADATA.match(e.path)], [e for e in seen if not METADATA.match(e.path)])


def keep_only(cache: Path, net_id: str) -> None:
    """Delete every cached net but ``net_id``, as a client that keeps only the net it plays with.

    A cache of every fetched net would make each fetch place every held net
    (a record read per net the trust state no longer remembers).
    """
    for path in cache.glob("*.pb.gz"):
        if path.name != f"{net_id}.pb.gz":
            path.unlink()


def hold_only(repo: Repository, seq: int, cache: Path, trust_from: Path | None = None) -> None:
    """A client cache holding only net ``seq`` (``<id>.pb.gz``), with a copied or fresh trust state."""
    shutil.rmtree(cache, ignore_errors=True)
    cache.mkdir(parents=True)
    net_id = repo.net_at(seq)
    shutil.copyfile(repo.object_file(f"nets/{net_id}.pb.gz"), cache / f"{net_id}.pb.gz")
    if trust_from is not None:
        shutil.copytree(trust_from / TRUST_DIR, cache / TRUST_DIR)


@dataclass
class Schema1:
    nets: int
    raw_bytes: int
    gzip_bytes: int
    parse_rewrite_s: float      # a JSON round trip of the index (parse, serialise again)
    write_s: float              # write it atomically (temp, fsync, rename)


def schema1_document(catalogue) -> bytes:
    """The catalogue as the retired schema-1 ``index.json`` was written (for its size only)."""
    doc = {"schema": 1, "format": "lc0weights-repository", "updated": "", "latest": catalogue.latest,
           "nets": [n.to_dict() for n in catalogue.nets], "patches": [p.to_dict() for p in catalogue.patches],
           "retired": list(catalogue.retired)}
    return (json.dumps(doc, indent=1) + "\n").encode()


def schema1_figures(repo: Repository, scratch: Path) -> Schema1:
    index = repo.read_index()
    data = schema1_document(index)
    text, parse_rewrite_s = harness.timed(lambda: (json.dumps(json.loads(data), indent=1) + "\n").encode())
    _, write_s = harness.timed(atomic_write, scratch / "index.json", text)
    (scratch / "index.json").unlink()
    return Schema1(len(index.nets), len(data), len(gzip.compress(data, 6)), parse_rewrite_s, write_s)


@dataclass
class Report:
    nets: int
    seed: int
    command: str
    net_bytes: tuple[int, int] = (0, 0)          # raw, gz
    publish_s: list[float] = field(default_factory=list)
    patches_per_net: list[int] = field(default_factory=list)
    patch_bytes: dict[int, list[int]] = field(default_factory=dict)  # distance -> sizes
    publish_wall_s: float = 0.0
    first: Fetched | None = None
    poll: Fetched | None = None
    resigned_poll: Fetched | None = None
    catch_up: list[tuple[int, Fetched, Fetched | None]] = field(default_factory=list)
    catch_up_longest: list[tuple[int, Fetched, Fetched | None]] = field(default_factory=list)
    many_held: Fetched | None = None
    schema1: list[Schema1] = field(default_factory=list)
    top_sizes: dict[str, int] = field(default_factory=dict)
    record_sizes: list[int] = field(default_factory=list)
    anatomy: dict = field(default_factory=dict)  # what the records read catching up from far are made of
    published_at: str = ""                       # library commit of the publish phase
    measured_at: str = ""                        # ... and of the measurements


def publish_phase(report: Report, work: Path, key: SigningKey) -> None:
    """Publish the run; a client follows the last nets and its trust state is kept at n-1-d."""
    repo = Repository.create(work / "repo", key=key, expires=timedelta(days=7))
    policy = TransferPolicy(progress=False)
    nets = report.nets
    last = nets - 1
    snapshot_at = {last - d: d for d in BEHIND if last - d >= 0}
    follow_from = max(0, last - max(BEHIND) - 64)
    follower = work / "follower"
    with CountingServer(repo.root) as server:
        started = time.monotonic()
        for seq, (net, gz) in enumerate(tiny_run(nets, report.seed)):
            if seq == 0:
                report.net_bytes = (len(net.raw), len(gz))
            published, seconds = harness.timed(publish_net, repo, net, gz, f"step-{seq:06d}.pb.gz", codec=CODEC)
            report.publish_s.append(seconds)
            report.patches_per_net.append(len(published.patches))
            for p in published.patches:
                report.patch_bytes.setdefault(seq - p.base_seq, []).append(p.size)
            if seq >= follow_from:
                # A client that polls after every publish, as a long-running one would.
                fetch(server.url, cache_dir=follower, trust=key.public, policy=policy)
                keep_only(follower, net.id)
                if seq in snapshot_at:
                    shutil.copytree(follower / TRUST_DIR, work / f"followed-{snapshot_at[seq]}" / TRUST_DIR)
                server.take()
            if seq + 1 == 1000 and nets > 1000:
                report.schema1.append(schema1_figures(repo, work))
            if seq % 1000 == 999:
                harness.log(f"  published {seq + 1} nets, {time.monotonic() - started:.0f} s")
        report.publish_wall_s = time.monotonic() - started
    report.schema1.append(schema1_figures(repo, work))
    report.record_sizes = [repo.link_to(s).size for s in range(max(0, nets - 1000), nets)]


def measure_phase(report: Report, work: Path, key: SigningKey) -> None:
    """Poll and catch-up measurements against the published repository (repeatable)."""
    repo = Repository.create(work / "repo", key=key, expires=timedelta(days=7))
    last = report.nets - 1
    report.measured_at = code_version()
    report.catch_up = []
    with CountingServer(repo.root) as server:
        poller = work / "poller"
        shutil.rmtree(poller, ignore_errors=True)
        report.first = measured_fetch(server, "first fetch, empty cache", poller, key)
        report.poll = measured_fetch(server, "poll, nothing new", poller, key)
        repo.resign()
        report.resigned_poll = measured_fetch(server, "poll after a re-sign (no new net)", poller, key)
        report.top_sizes = {name: (repo.root / name).stat().st_size for name in ("root.json", "timestamp.json")}
        report.catch_up = catch_up(server, repo, key, work, last)
        report.anatomy = record_anatomy(repo, report.catch_up[-1][1], repo.net_at(last - report.catch_up[-1][0]))
        report.many_held = many_held(server, repo, key, work, last)
        # The same clients descending the way the client did before link plans: longest link first.
        plan_limit, updater.PLAN_LIMIT = updater.PLAN_LIMIT, -1
        try:
            report.catch_up_longest = catch_up(server, repo, key, work, last)
        finally:
            updater.PLAN_LIMIT = plan_limit


HELD = 100


def many_held(server: CountingServer, repo: Repository, key: SigningKey, work: Path, last: int):
    """One net behind, with the cache holding the HELD nets before the latest (a client that keeps nets)."""
    if last < HELD:
        return None
    cache = work / "many-held"
    hold_only(repo, last - 1, cache)
    for seq in range(last - HELD, last - 1):
        net_id = repo.net_at(seq)
        shutil.copyfile(repo.object_file(f"nets/{net_id}.pb.gz"), cache / f"{net_id}.pb.gz")
    return measured_fetch(server, f"fresh trust state, holds nets {last - HELD:,}-{last - 1:,}", cache, key)


def catch_up(server: CountingServer, repo: Repository, key: SigningKey, work: Path, last: int) -> list:
    """For each distance: a client holding only net ``last - d``, fresh, then with a follower's trust state."""
    rows = []
    for d in BEHIND:
        if last - d < 0:
            continue
        cache = work / f"behind-{d}"
        hold_only(repo, last - d, cache)
        fresh = measured_fetch(server, "fresh trust state", cache, key)
        followed = None
        if (work / f"followed-{d}").is_dir():
            hold_only(repo, last - d, cache, trust_from=work / f"followed-{d}")
            followed = measured_fetch(server, "followed up to it", cache, key)
        rows.append((d, fresh, followed))
    return rows


HEX64 = re.compile(rb'"[0-9a-f]{64}"')


def record_anatomy(repo: Repository, fetched: Fetched, held_id: str) -> dict:
    """Bytes of the records a catch-up read, by part: net entry, patch entries, links, hex digests."""
    parts = {"records": 0, "bytes": 0, "net": 0, "patches": 0, "links": 0, "patch_entries": 0,
             "link_entries": 0, "hex_bytes": 0, "held_record": 0, "held_reads": 0}
    for e in fetched.metadata:
        if not e.path.startswith("/records/"):
            continue
        data = (repo.root / e.path.lstrip("/")).read_bytes()
        doc = json.loads(data)
        parts["records"] += 1
        parts["bytes"] += len(data)
        for name in ("net", "patches", "links"):
            parts[name] += len(json.dumps(doc[name], separators=(",", ":")))
        parts["patch_entries"] += len(doc["patches"])
        parts["link_entries"] += len(doc["links"])
        parts["hex_bytes"] += 66 * len(HEX64.findall(data))
        if doc["net"]["id"] == held_id:
            parts["held_record"] += len(data)
            parts["held_reads"] += 1
    return parts


def code_version() -> str:
    """The commit the library was at (and whether it had local changes), for the record."""
    root = Path(__file__).resolve().parents[1]
    try:
        head = subprocess.run(["git", "-C", str(root), "rev-parse", "--short", "HEAD"],
                              capture_output=True, text=True, timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--", "lc0weights", "service"],
                               capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return (head or "unknown") + (" with local changes" if dirty else "")


# -- the report -------------------------------------------------------------------------------

def _median_ms(values) -> str:
    return f"{1000 * statistics.median(values):.0f}" if values else "-"


def _patch_share(r: Report, distance: int) -> str:
    sizes = r.patch_bytes.get(distance)
    return f"{100 * statistics.median(sizes) / r.net_bytes[1]:.0f}%" if sizes and r.net_bytes[1] else "-"


def _exchanges_table(exchanges) -> list[str]:
    lines = harness.md_table(["request", "status", "request bytes", "response header bytes", "body bytes", "total"],
                             [[f"`{e.path}`", e.status, f"{e.request_bytes:,}", f"{e.header_bytes:,}",
                               f"{e.body_bytes:,}", f"{e.wire_bytes:,}"] for e in exchanges]).splitlines()
    if len(exchanges) > 1:
        lines.append(f"| all {len(exchanges)} | | {sum(e.request_bytes for e in exchanges):,} "
                     f"| {sum(e.header_bytes for e in exchanges):,} | {sum(e.body_bytes for e in exchanges):,} "
                     f"| {sum(e.wire_bytes for e in exchanges):,} |")
    return lines


def _verdict(value: int, target: int) -> str:
    if value <= target:
        return f"met ({value:,} ≤ {target:,} bytes)"
    return f"MISSED by {value - target:,} bytes ({value:,} > {target:,}, {value / target:.2f}x)"


def render(r: Report) -> str:
    n = r.nets
    out = [f"## Metadata at {n:,} nets", ""]
    out += [
        f"A signed repository of {n:,} tiny synthetic nets ({r.net_bytes[0]:,} bytes raw, "
        f"{r.net_bytes[1]:,} gzip; every weight moves a little at each checkpoint), published one "
        f"at a time with `publish_net(..., codec=\"{CODEC}\")` and one Ed25519 key (root and online), "
        "served by the built-in server on loopback. Clients pin the key (`trust=`). Bytes on the "
        "wire are counted on the server's socket: request line and headers as read, response status "
        "line and headers as written, body as written (TCP/IP framing not counted). Measured on a "
        f"2-core machine shared with other jobs ({platform.python_implementation()} "
        f"{platform.python_version()}), with", "", "```", r.command, "```", "",
        f"Library at commit {r.published_at} for publishing, {r.measured_at} for the client measurements.", ""]

    out += ["### A poll with nothing new", ""]
    p = r.poll
    out += [f"The client holds the latest net (its first fetch downloaded {r.first.bytes_downloaded:,} bytes, "
            f"of which {r.first.metadata_bytes:,} metadata) and polls again:", ""]
    out += _exchanges_table(p.metadata + p.others)
    out += ["", f"- Body bytes (FetchResult.bytes_downloaded): {p.bytes_downloaded:,}; metadata_bytes: "
            f"{p.metadata_bytes:,}; route: {p.route}.",
            f"- Everything on the wire: {p.metadata_wire + sum(e.wire_bytes for e in p.others):,} bytes "
            f"in {len(p.metadata) + len(p.others)} request(s). Target < 1 KB: "
            f"{_verdict(p.metadata_wire + sum(e.wire_bytes for e in p.others), POLL_TARGET)}."]
    rp = r.resigned_poll
    rp_wire = rp.metadata_wire + sum(e.wire_bytes for e in rp.others)
    out += [f"- After `resign()` (a new timestamp version, no new net; `watch` does this before expiry): "
            f"{rp.bytes_downloaded:,} body bytes, {rp_wire:,} on the wire "
            f"({len(rp.metadata) + len(rp.others)} request(s)); {_verdict(rp_wire, POLL_TARGET)}.",
            f"- Sizes: `timestamp.json` {r.top_sizes.get('timestamp.json', 0):,} bytes, `root.json` "
            f"{r.top_sizes.get('root.json', 0):,} bytes; records of the last "
            f"{len(r.record_sizes):,} nets: median {statistics.median(r.record_sizes):,.0f}, "
            f"max {max(r.record_sizes):,} bytes.", ""]

    out += ["### Catching up", "",
            "The client's cache holds only net *n−1−d* (`<id>.pb.gz`) and asks for the latest "
            f"(net {n - 1:,}). *Fresh*: no trust state (it reads `root.json` and the held net's record "
            "to place it). *Followed*: the trust state of a client that polled after every publish "
            "up to the net it holds. The client reads the records before it chooses a route, so the "
            "metadata does not depend on the route; with these tiny nets a patch from one net back "
            f"is already {_patch_share(r, 1)} of the full net and chains of patches soon cost more "
            "than the net itself, hence the full downloads further back.", "",
            harness.md_table(["behind", "trust state", "metadata bytes", "metadata requests", "metadata on the wire",
                              "route", "patches", "all bytes"],
                             [[f"{d:,}", f.label, f"{f.metadata_bytes:,}", len(f.metadata), f"{f.metadata_wire:,}",
                               f.route, f.patches, f"{f.bytes_downloaded:,}"]
                              for d, fresh, followed in r.catch_up for f in (fresh, followed) if f is not None],
                             "rlrrrlrr")]
    if r.catch_up:
        d, fresh, followed = r.catch_up[-1]
        worst = max(fresh.metadata_bytes, followed.metadata_bytes if followed else 0)
        if d == max(BEHIND):
            out += ["", f"Target: catching up from {d:,} behind under 32 KB of metadata: "
                    f"{_verdict(worst, CATCH_UP_TARGET)} (metadata bytes, the larger of the two trust states).", ""]
        else:
            out.append("")
        out += [f"Metadata read catching up from {d:,} behind, fresh trust state:", ""]
        out += _exchanges_table(fresh.metadata)
        a = getattr(r, "anatomy", {})
        if a.get("records"):
            out += ["", f"What those {a['records']} record reads are made of ({a['bytes']:,} bytes): net entries "
                    f"{a['net']:,}, {a['patch_entries']} patch entries {a['patches']:,} "
                    f"({a['patches'] / a['patch_entries']:.0f} each), {a['link_entries']} links {a['links']:,} "
                    f"({a['links'] / a['link_entries']:.0f} each); quoted 64-digit hex digests alone "
                    f"{a['hex_bytes']:,} ({100 * a['hex_bytes'] / a['bytes']:.0f}%). Of these, the held net's own "
                    f"record: {a['held_record']:,} bytes (a fresh client reads it, unverified, only to learn "
                    "where the held net sits; the last hop's link then verifies the net's id)."]
        if r.catch_up[-1][0] == max(BEHIND):
            b64 = 21 * a["hex_bytes"] // 66
            out += ["", "Already applied in these figures: the held net is reached by the link to it (its "
                    "own record is not read to verify it), and a patch entry leaves out a base a link of "
                    f"the same record names. Digests in base64url (43 characters) instead of hex (64) would "
                    f"save about {b64:,} more."]
    longest = getattr(r, "catch_up_longest", [])
    if longest:
        out += ["", "The same clients with the descent the client used before link plans (longest link "
                "first; `PLAN_LIMIT = -1`): from an odd-numbered record the longest link is 16 back and "
                "lands on an odd number again, so the power-of-two links are never reached.", "",
                harness.md_table(["behind", "trust state", "metadata bytes", "record reads", "route"],
                                 [[f"{d:,}", f.label, f"{f.metadata_bytes:,}",
                                   sum(1 for e in f.metadata if e.path.startswith("/records/")), f.route]
                                  for d, fresh, followed in longest for f in (fresh, followed) if f is not None],
                                 "rlrrl")]
    out.append("")

    m = getattr(r, "many_held", None)
    if m is not None:
        reads = sum(1 for e in m.metadata if e.path.startswith("/records/"))
        out += [f"A client that keeps nets: one behind, its cache holding the {HELD} nets before the "
                f"latest, fresh trust state: {m.metadata_bytes:,} bytes of metadata in {len(m.metadata)} "
                f"requests ({reads} record reads), route {m.route}. The client places at most the two newest "
                "held nets (looking up at most eight whose numbers its trust state does not remember), so "
                "this cost stays bounded however many nets it keeps.", ""]
    out += ["### Publishing", ""]
    s = r.publish_s
    windows = [("first 50 (nets 1-50)", s[1:WINDOW + 1])]
    for mark in (1000, 5000):
        if n >= mark + WINDOW:
            windows.append((f"nets {mark - WINDOW // 2:,}-{mark + WINDOW // 2 - 1:,}",
                            s[mark - WINDOW // 2:mark + WINDOW // 2]))
    windows.append((f"last 50 (nets {n - WINDOW:,}-{n - 1:,})", s[-WINDOW:]))
    out += [harness.md_table(["publishes", "median ms per net", "max ms"],
                             [[label, _median_ms(v), f"{1000 * max(v):.0f}"] for label, v in windows if v])]
    counts = r.patches_per_net
    out += ["", "- Each publish writes the same few files whatever the history (the net, its patches, its "
            "record, one line of `.state/sequence`, the timestamp), each fsynced; with nets this small "
            "the time is those writes, the patch coding threads and the machine's load, not the history.",
            f"- Whole run: {r.publish_wall_s:,.0f} s wall for {n:,} publishes "
            f"(including the following client's fetches near the end); "
            f"{statistics.mean(counts):.2f} patches per net on average, at most {max(counts)}.",
            "- Patch size by distance (median bytes): " + ", ".join(
                f"{d}: {statistics.median(v):,.0f}" for d, v in sorted(r.patch_bytes.items()) if d <= 1024)
            + f" (a full net is {r.net_bytes[1]:,}).", ""]

    out += ["### The retired schema-1 `index.json`", "",
            "The same repository written as one unsigned schema-1 index, as repositories kept before "
            "signing (clients no longer read it). A schema-1 client read it whole on every poll (it sends no `If-None-Match`), so its size is "
            "both the poll cost and the catch-up cost; a server may gzip it. A schema-1 publish parsed "
            "and rewrote it once per net.", "",
            harness.md_table(["nets", "index bytes", "gzip -6 bytes", "bytes per net", "JSON parse + serialise ms",
                              "atomic write ms"],
                             [[f"{x.nets:,}", f"{x.raw_bytes:,}", f"{x.gzip_bytes:,}", f"{x.raw_bytes / x.nets:,.0f}",
                               f"{1000 * x.parse_rewrite_s:.0f}", f"{1000 * x.write_s:.0f}"] for x in r.schema1],
                             "rrrrrr")]
    if r.schema1 and r.poll and r.catch_up:
        x = r.schema1[-1]
        poll_wire = r.poll.metadata_wire + sum(e.wire_bytes for e in r.poll.others)
        worst = max(f.metadata_bytes for _, f, g in r.catch_up for f in (f, g) if f is not None)
        out += ["", f"At {x.nets:,} nets: a poll with nothing new costs {poll_wire:,} bytes signed vs "
                f"{x.raw_bytes:,} ({x.gzip_bytes:,} gzip) for schema 1; the largest catch-up above reads "
                f"{worst:,} bytes of metadata vs the same {x.raw_bytes:,}."]
    out.append("")
    return "\n".join(out)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nets", type=int, default=10_000, help="nets to publish (default 10,000)")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--markdown", metavar="FILE", help="also write the section into this file")
    parser.add_argument("--keep", metavar="DIR", help="work in the new folder DIR and keep it")
    parser.add_argument("--measure", metavar="DIR", help="measure again a folder kept with --keep "
                        "(no publishing; publish figures are the kept ones)")
    args = parser.parse_args(argv)
    if args.nets < 2:
        parser.error("--nets must be at least 2")
    logging.basicConfig(level=logging.ERROR)
    if args.measure:
        work = Path(args.measure)
        try:
            report = pickle.loads((work / "report.pickle").read_bytes())
            key = SigningKey.load(work / "key.pem")
        except (OSError, pickle.UnpicklingError, Lc0WeightsError) as e:
            print(f"error: {work}: not a folder kept by --keep ({e})", file=sys.stderr)
            return 2
        measure_phase(report, work, key)
        report.command += f" --keep {work}\n.venv/bin/python tools/bench_metadata.py --measure {work}" + (
            f" --markdown {args.markdown}" if args.markdown else "")
    else:
        shown = [f"--nets {args.nets}"] + ([f"--seed {args.seed}"] if args.seed != 1 else [])
        report = Report(nets=args.nets, seed=args.seed,
                        command=".venv/bin/python tools/bench_metadata.py " + " ".join(shown), published_at=code_version())
        key = SigningKey.generate()
        if args.keep:
            work = Path(args.keep)
            if work.exists() and any(work.iterdir()):
                print(f"error: {work} is not empty", file=sys.stderr)
                return 2
            work.mkdir(parents=True, exist_ok=True)
            key.save(work / "key.pem")
            publish_phase(report, work, key)
            atomic_write(work / "report.pickle", pickle.dumps(report))
            measure_phase(report, work, key)
        else:
            with tempfile.TemporaryDirectory(prefix="lc0weights-metabench-") as tmp:
                publish_phase(report, Path(tmp), key)
                measure_phase(report, Path(tmp), key)
    section = render(report)
    print(section)
    if args.markdown:
        harness.write_section(Path(args.markdown), section)
    return 0


if __name__ == "__main__":
    sys.exit(main())
