"""The mirror behind the bounded front: resets, slowloris, waits, the fallback's bytes, eviction, settings.

Every case is built here over loopback with short limits, so each runs in seconds.
"""
from __future__ import annotations

import gzip
import hashlib
import os
import shutil
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
from contextlib import closing, contextmanager
from pathlib import Path

import pytest
import requests

from lc0weights import Net
from lc0weights.client import TransferPolicy
from lc0weights.serving import net_store
from lc0weights.serving.mirror import Mirror, MirrorServer, mirror_limits

from conftest import NETS, run_paths
from repo_fixtures import connect, faulty_handler, leftovers, running, serving

ROOT = Path(__file__).resolve().parents[1]
POLICY = TransferPolicy(retries=0, progress=False)


@pytest.fixture(scope="module")
def ids(run_nets):
    return [n.id for n in run_nets[:3]]


@pytest.fixture(scope="module")
def repo(published_three_in_steps):
    return published_three_in_steps


@contextmanager
def mirror_at(upstream: str, cache: Path, limits=None, wait_timeout=30.0, **kw):
    mirror = Mirror(upstream, cache_dir=cache, policy=POLICY, **kw)
    server = MirrorServer(mirror, "127.0.0.1", 0, limits=limits or mirror_limits(8),
                          wait_timeout=wait_timeout)
    with running(server):
        yield server, mirror


def holding(cache: Path, ids, i: int = 0) -> Path:
    """An own cache that already holds net ``i`` (served without asking upstream)."""
    cache.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(run_paths()[i], cache / f"{ids[i]}.pb.gz")
    return cache


def status_of(port: int, sha: str, source: str = "127.0.0.1", timeout: float = 10.0) -> tuple[int, bytes]:
    """(status, body) of one GET from ``source``; 0 when the server closed without a word."""
    with closing(connect(port, source, timeout)) as s:
        s.sendall(f"GET /{sha} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
        data = b""
        while True:
            chunk = s.recv(1 << 16)
            if not chunk:
                break
            data += chunk
    if not data:
        return 0, b""
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split()[1]), body


def reset(s: socket.socket) -> None:
    """Close with an RST, as a client killed mid-connection does."""
    s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    s.close()


def gunzip_id(data: bytes) -> str:
    return hashlib.sha256(gzip.decompress(data)).hexdigest()


# -- 2: resets -------------------------------------------------------------------------------

def test_a_client_resetting_its_connection_leaves_no_traceback(ids, tmp_path, capfd):
    own = holding(tmp_path / "own", ids)
    with mirror_at(str(tmp_path / "no-repo"), own) as (server, _):
        port = server.server_address[1]
        kept = connect(port)
        kept.sendall(f"GET /{ids[0]} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        got = b""
        while len(got) < run_paths()[0].stat().st_size:     # the whole answer, connection kept alive
            got += kept.recv(1 << 16)
        reset(kept)
        mid = connect(port)
        mid.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        mid.sendall(f"GET /{ids[0]} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        mid.recv(100)
        reset(mid)                                           # mid-body
        time.sleep(0.5)
        assert status_of(port, ids[0])[0] == 200
    err = capfd.readouterr().err
    assert "Traceback" not in err and "Exception occurred" not in err, err[-2000:]


# -- 3: slowloris ----------------------------------------------------------------------------

def test_trickled_heads_are_cut_at_the_deadline_and_never_take_every_slot(ids, tmp_path):
    own = holding(tmp_path / "own", ids)
    limits = mirror_limits(4, max_per_client=2, max_waiting=4, request_timeout=1.0, queue_timeout=0.5)
    with mirror_at(str(tmp_path / "no-repo"), own, limits) as (server, _):
        port = server.server_address[1]
        slow = [connect(port) for _ in range(8)]
        started = time.monotonic()
        for s in slow:
            s.sendall(f"GET /{ids[0]} HTTP/1.1\r\n".encode())
        open_ = list(slow)
        while open_ and time.monotonic() - started < 4.0:   # a header line every 0.2 s
            time.sleep(0.2)
            for s in list(open_):
                try:
                    s.sendall(b"X-Slow: 1\r\n")
                except OSError:
                    open_.remove(s)
            if time.monotonic() - started > 0.3:
                # another address is served meanwhile: one address holds at most 2 of 4 slots
                assert status_of(port, ids[0], source="127.0.0.2")[0] == 200
        cut_after = time.monotonic() - started
        for s in slow:
            s.close()
    assert not open_ and cut_after < 3.0, f"{len(open_)} trickling connections still open after {cut_after:.1f} s"


# -- 4: waits are bounded, and a client that leaves gives its slot back -----------------------

def slow_upstream(seconds: float):
    base = faulty_handler()

    class Slow(base):
        def do_GET(self):
            if self.path.startswith(("/nets/", "/patches/")):
                time.sleep(seconds)
            return super().do_GET()
    return Slow


def test_clients_that_leave_while_a_net_is_fetched_give_their_slots_back(repo, ids, tmp_path):
    own = holding(tmp_path / "own", ids)
    limits = mirror_limits(2, queue_timeout=0.5)
    with serving(repo.root, slow_upstream(3.0)) as upstream, \
            mirror_at(upstream.url, own, limits, wait_timeout=60) as (server, mirror):
        port = server.server_address[1]
        for _ in range(2):                                  # both slots wait for the slow net, then leave
            s = connect(port)
            s.sendall(f"GET /{ids[2]} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
            time.sleep(0.2)
            s.close()
        time.sleep(0.6)                                     # a few of the waits' polls
        assert server.active_connections() == 0
        assert status_of(port, ids[0])[0] == 200            # the held net is served at once
        assert mirror.upstream_fetches == 1
        deadline = time.monotonic() + 20                    # the fetch went on: the net is there later
        while status_of(port, ids[2])[0] != 200:
            assert time.monotonic() < deadline
            time.sleep(0.2)


def test_a_wait_longer_than_the_bound_is_a_503_and_the_fetch_goes_on(repo, ids, tmp_path):
    with serving(repo.root, slow_upstream(1.5)) as upstream, \
            mirror_at(upstream.url, tmp_path / "own", wait_timeout=0.3) as (server, mirror):
        first = requests.get(server.url + ids[1], timeout=10)
        assert first.status_code == 503 and first.headers["Retry-After"].isdigit()
        deadline = time.monotonic() + 20
        while (r := requests.get(server.url + ids[1], timeout=10)).status_code == 503:
            assert time.monotonic() < deadline
            time.sleep(0.3)
        assert r.status_code == 200 and gunzip_id(r.content) == ids[1]
        assert mirror.upstream_fetches == 1


# -- 5: the fallback's bytes are read as sent, bounded ---------------------------------------

@contextmanager
def encoding_fallback(body: bytes, encoding: str):
    import http.server

    class Encoded(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(200)
            self.send_header("Content-Encoding", encoding)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Encoded)
    server.url = f"http://127.0.0.1:{server.server_address[1]}/"
    with running(server):
        yield server


def test_a_doubly_gzip_encoded_fallback_writes_only_its_wire_bytes(repo, tmp_path, monkeypatch):
    bomb = gzip.compress(gzip.compress(bytes(64 << 20), 9), 9)      # 64 MiB behind a few KiB
    written = []
    real = net_store.gzip_stream_id

    def measuring(f, *a):
        written.append(os.fstat(f.fileno()).st_size)
        return real(f, *a)
    monkeypatch.setattr(net_store, "gzip_stream_id", measuring)
    unknown = "e" * 64
    with serving(repo.root) as upstream, encoding_fallback(bomb, "gzip, gzip") as fb, \
            mirror_at(upstream.url, tmp_path / "own", fallback=fb.url) as (server, _):
        r = requests.get(server.url + unknown, timeout=30)
    assert r.status_code == 502
    assert written == [len(bomb)] and len(bomb) < 100_000
    assert leftovers(tmp_path / "own") == [] and not list((tmp_path / "own").glob("*.pb.gz"))


def test_a_content_encoding_is_not_undone_and_the_disk_bounds_the_fallback(repo, tmp_path, monkeypatch):
    net = NETS / "maia-1100.pb.gz"
    net_id = Net.load(net).id
    wrapped = gzip.compress(net.read_bytes())           # only a decoded body would be the net
    with serving(repo.root) as upstream, encoding_fallback(wrapped, "gzip") as fb, \
            mirror_at(upstream.url, tmp_path / "own", fallback=fb.url) as (server, _):
        assert requests.get(server.url + net_id, timeout=30).status_code == 502
    with serving(repo.root) as upstream, encoding_fallback(net.read_bytes(), "identity") as fb, \
            mirror_at(upstream.url, tmp_path / "own2", fallback=fb.url) as (server, mirror):
        usage = shutil.disk_usage(tmp_path)
        tight = usage._replace(free=net_store.FREE_SPACE_RESERVE + net.stat().st_size // 2)
        monkeypatch.setattr(net_store.shutil, "disk_usage", lambda _path: tight)
        assert requests.get(server.url + net_id, timeout=30).status_code == 502
        monkeypatch.setattr(net_store.shutil, "disk_usage", lambda _path: usage)
        good = requests.get(server.url + net_id, timeout=30)
        assert good.status_code == 200 and good.content == net.read_bytes()
    assert leftovers(tmp_path / "own") == [] and leftovers(tmp_path / "own2") == []


# -- 6: eviction never removes a net a request is about to send -----------------------------

def test_concurrent_requests_with_one_net_kept_all_verify(repo, ids, tmp_path):
    with serving(repo.root) as upstream, \
            mirror_at(upstream.url, tmp_path / "own", mirror_limits(48), max_nets=1) as (server, _):
        barrier = threading.Barrier(24)
        answers = [None] * 24

        def get(i):
            barrier.wait()
            answers[i] = requests.get(server.url + ids[i % 3], timeout=60)

        threads = [threading.Thread(target=get, args=(i,)) for i in range(24)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    bad = [(i, a.status_code) for i, a in enumerate(answers) if a.status_code != 200]
    assert bad == []
    assert all(gunzip_id(a.content) == ids[i % 3] for i, a in enumerate(answers))
    assert len(list((tmp_path / "own").glob("*.pb.gz"))) == 1      # back within the bound after


# -- 7: settings, checked at startup ---------------------------------------------------------

def mirror_command(*args, env=None, **kw):
    full_env = {**os.environ, "PYTHONPATH": str(ROOT), **(env or {})}
    return subprocess.Popen([sys.executable, "-m", "lc0weights.cli", "mirror", *map(str, args)],
                            stderr=subprocess.PIPE, text=True, cwd=ROOT, env=full_env, **kw)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_no_net_is_evicted_under_a_fetch_and_a_vanished_one_is_no_error(repo, ids, tmp_path, monkeypatch):
    """Another flight's fetch may be patching from any held net: eviction waits for it. A net
    another eviction removed between listing and looking at it is passed over, not an error."""
    mirror = Mirror(str(repo.root), cache_dir=tmp_path / "own", policy=POLICY, max_nets=1)
    for age, sha in enumerate(ids):
        path = mirror.file_for(sha)
        path.write_bytes(b"x" * 10)
        os.utime(path, ns=(age * 10**9, age * 10**9))
    mirror._flights[ids[0]] = object()                  # a fetch of ids[0] in progress
    mirror._evict(keep=ids[2])                          # another flight (ids[2]) ends
    assert sorted(p.name[:64] for p in (tmp_path / "own").glob("*.pb.gz")) == sorted(ids)
    assert mirror._eviction_deferred
    del mirror._flights[ids[0]]
    real_scandir = os.scandir

    def listing_then_gone(folder):
        entries = list(real_scandir(folder))
        os.unlink(mirror.file_for(ids[1]))              # a concurrent eviction got there first
        return iter(entries)
    monkeypatch.setattr(net_store.os, "scandir", listing_then_gone)
    mirror._evict(keep=ids[2])
    monkeypatch.undo()
    assert [p.name[:64] for p in (tmp_path / "own").glob("*.pb.gz")] == [ids[2]]


@pytest.mark.parametrize("where", ["option", "config", "environment"])
def test_a_malformed_trust_key_is_one_line_at_startup(repo, tmp_path, where):
    config = tmp_path / "config"
    config.write_text(f"[lc0weights]\nurl = {repo.root}\n" + ("trust = ed25519:nonsense\n" if where == "config" else ""))
    args = ["--listen", f"127.0.0.1:{free_port()}", "--cache", tmp_path / "own", "--client-cache", tmp_path / "c"]
    env = {"LC0WEIGHTS_CONFIG": str(config), "LC0WEIGHTS_TRUST": ""}
    if where == "option":
        args += ["--trust", "ed25519:nonsense"]
    if where == "environment":
        env["LC0WEIGHTS_TRUST"] = "@" + str(tmp_path / "missing.pub")
    proc = mirror_command(*args, env=env)
    try:
        assert proc.wait(timeout=60) == 1
        err = proc.stderr.read().strip().splitlines()
    finally:
        if proc.poll() is None:
            proc.kill()
    assert len(err) == 1 and err[0].startswith("lc0weights: error:"), err
    assert ("missing.pub" if where == "environment" else "'ed25519:nonsense'") in err[0]


@pytest.mark.parametrize("where", ["config", "environment"])
def test_the_repository_comes_from_the_environment_or_the_config_file(repo, ids, tmp_path, where):
    config = tmp_path / "config"
    config.write_text(f"[lc0weights]\nurl = {repo.root}\n" if where == "config" else "")
    env = {"LC0WEIGHTS_CONFIG": str(config), "LC0WEIGHTS_TRUST": "",
           "LC0WEIGHTS_URL": str(repo.root) if where == "environment" else ""}
    port = free_port()
    proc = mirror_command("--listen", f"127.0.0.1:{port}", "--cache", tmp_path / "own",
                          "--client-cache", tmp_path / "c", env=env)
    try:
        first = proc.stderr.readline()
        assert str(repo.root) in first, first
        deadline = time.monotonic() + 30
        while True:
            try:
                r = requests.get(f"http://127.0.0.1:{port}/{ids[0]}", timeout=30)
                break
            except requests.ConnectionError:
                assert time.monotonic() < deadline
                time.sleep(0.1)
        assert r.status_code == 200 and gunzip_id(r.content) == ids[0]
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=10) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_no_repository_anywhere_is_one_line(tmp_path):
    config = tmp_path / "config"
    config.write_text("")
    proc = mirror_command("--listen", f"127.0.0.1:{free_port()}",
                          env={"LC0WEIGHTS_CONFIG": str(config), "LC0WEIGHTS_URL": ""})
    assert proc.wait(timeout=60) == 1
    err = proc.stderr.read().strip().splitlines()
    assert len(err) == 1 and "no repository given" in err[0]
