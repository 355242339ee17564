"""``fetch --follow``: new nets land verified in lczero-client's cache; stops and outages are clean."""
from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import threading
import time
from contextlib import contextmanager
from pathlib import Path

import pytest

from lc0weights import Net
from lc0weights.client import TransferPolicy
from lc0weights.client.follow import follow
from lc0weights.repository.keys import SigningKey
from service.publish import publish
from service.repository import Repository
from service.serve import RepositoryHandler, RepositoryServer

from conftest import run_paths
from lczero_client_standin import StandInClient
from repo_fixtures import FAST_CODEC, leftovers, serving

POLICY = TransferPolicy(retries=0, timeout=5, progress=False)
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def ids():
    return [Net.load(p).id for p in run_paths()[:3]]


def wait_for(predicate, seconds: float) -> float:
    """Seconds until ``predicate()`` holds; fails after ``seconds``."""
    start = time.monotonic()
    while not predicate():
        assert time.monotonic() - start < seconds, "timed out"
        time.sleep(0.02)
    return time.monotonic() - start


@contextmanager
def following(url, cache, interval, **kw):
    stop = threading.Event()
    box = {}
    kw.setdefault("state_dir", Path(cache).parent / "follow-state")
    thread = threading.Thread(target=lambda: box.setdefault("n", follow(
        url, stop, cache_dir=cache, client_layout=True, interval=interval, policy=POLICY, **kw)))
    thread.start()
    try:
        yield box
    finally:
        stop.set()
        thread.join(10)
        assert not thread.is_alive()


def verified(cache: Path, net_id: str) -> bool:
    return (cache / net_id).exists() and StandInClient.check(cache / net_id, net_id)


def test_a_published_net_is_in_the_client_cache_within_two_intervals(tmp_path, ids):
    interval = 1.0
    repo = Repository.create(tmp_path / "repo")
    publish(repo, run_paths()[:1], codec=FAST_CODEC, skips=(1,))
    cache = tmp_path / "client-cache"
    with serving(repo.root) as upstream, following(upstream.url, cache, interval, keep=2) as box:
        wait_for(lambda: verified(cache, ids[0]), 10)
        for i in (1, 2):
            publish(repo, [run_paths()[i]], codec=FAST_CODEC, skips=(1,))
            assert wait_for(lambda: verified(cache, ids[i]), 2 * interval) <= 2 * interval
    assert box["n"] == 3
    assert sorted(p.name for p in cache.iterdir()) == sorted(ids[1:])     # nets only, nothing of ours
    # The client finds the net in place: it never asks its (here unreachable) mirror.
    client = StandInClient(cache, "http://127.0.0.1:9/", retries=1)
    assert client.get_network(ids[2]) == cache / ids[2] and client.downloads == []


def test_an_upstream_outage_is_survived(tmp_path, ids, caplog):
    caplog.set_level(logging.INFO, logger="lc0weights.client.follow")
    repo = Repository.create(tmp_path / "repo")
    publish(repo, run_paths()[:1], codec=FAST_CODEC, skips=(1,))
    cache = tmp_path / "client-cache"
    server = RepositoryServer(repo.root)
    port = server.server_address[1]
    threading.Thread(target=server.serve_forever, daemon=True).start()
    with following(server.url, cache, 0.2) as box:
        wait_for(lambda: verified(cache, ids[0]), 10)
        server.shutdown()
        server.server_close()                             # the upstream is gone
        time.sleep(0.8)
        publish(repo, [run_paths()[1]], codec=FAST_CODEC, skips=(1,))
        server = RepositoryServer(repo.root, port=port)  # and back, with a new net
        threading.Thread(target=server.serve_forever, daemon=True).start()
        try:
            wait_for(lambda: verified(cache, ids[1]), 15)
        finally:
            server.shutdown()
            server.server_close()
    assert box["n"] == 2
    messages = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert sum("cannot follow" in m for m in messages) == 1
    assert sum("reachable again" in m for m in messages) == 1


class Counting(RepositoryHandler):
    """Records (path, status) of every request it answers."""

    answered: list = []

    def log_request(self, code="-", size="-"):
        self.answered.append((self.path, int(code)))


@pytest.mark.parametrize("signed", [True, False], ids=["signed", "unsigned"])
def test_the_timestamp_is_read_once_per_new_net_and_a_quiet_poll_is_a_304(tmp_path, ids, signed):
    key = SigningKey.generate() if signed else None
    repo = Repository.create(tmp_path / "repo", key)
    publish(repo, run_paths()[:1], codec=FAST_CODEC, skips=(1,))
    cache = tmp_path / "client-cache"
    Counting.answered = answered = []
    trust = {"trust": key.public} if signed else {}
    with serving(repo.root, Counting) as upstream, following(upstream.url, cache, 0.2, keep=2, **trust):
        wait_for(lambda: verified(cache, ids[0]), 10)
        publish(repo, [run_paths()[1]], codec=FAST_CODEC, skips=(1,))
        wait_for(lambda: verified(cache, ids[1]), 10)
        quiet_from = len(answered)
        time.sleep(1.0)                                  # about five polls with nothing new
        quiet = answered[quiet_from:]
    timestamps = [status for path, status in answered if path == "/timestamp.json"]
    assert timestamps.count(200) == 2, answered          # one body per net published, not two
    assert quiet and all(entry == ("/timestamp.json", 304) for entry in quiet), quiet


class Trickle(RepositoryHandler):
    """Serves the index, but full nets at about 64 KB/s: a transfer that takes a while."""

    def do_GET(self):
        file = self._resolve()
        if file is None or not self.path.startswith("/nets/"):
            return super().do_GET()
        data = file.read_bytes()
        self.send_response(200)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        try:
            for start in range(0, len(data), 8192):
                self.wfile.write(data[start:start + 8192])
                self.wfile.flush()
                time.sleep(0.125)
        except OSError:
            pass


def _follow_process(url: str, cache: Path) -> subprocess.Popen:
    """``fetch --follow --client-layout`` into ``cache``; its own state goes to ``cache``/../xdg."""
    return subprocess.Popen(
        [sys.executable, "-m", "lc0weights.cli", "fetch", url, "--follow", "--interval", "0.5",
         "--client-layout", "--cache", str(cache), "--retries", "0"],
        stderr=subprocess.PIPE, text=True, cwd=ROOT,
        env={**os.environ, "XDG_CACHE_HOME": str(cache.parent / "xdg")})


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_stops_it_between_polls(tmp_path, ids, sig):
    repo = Repository.create(tmp_path / "repo")
    publish(repo, run_paths()[:1], codec=FAST_CODEC, skips=(1,))
    cache = tmp_path / "client-cache"
    with serving(repo.root) as upstream:
        proc = _follow_process(upstream.url, cache)
        try:
            wait_for(lambda: verified(cache, ids[0]), 30)
            proc.send_signal(sig)
            assert proc.wait(timeout=5) == 0
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    err = proc.stderr.read()
    assert "stopped after" in err and "Traceback" not in err


def test_sigterm_during_a_transfer_stops_within_seconds_leaving_no_partial_file(tmp_path, ids):
    repo = Repository.create(tmp_path / "repo")
    publish(repo, run_paths()[:1], codec=FAST_CODEC, skips=(1,))
    cache = tmp_path / "client-cache"
    with serving(repo.root, Trickle) as upstream:
        proc = _follow_process(upstream.url, cache)
        try:
            state = tmp_path / "xdg" / "lc0weights" / "follow"
            wait_for(lambda: any(state.rglob("*.part")), 30)     # the net is on its way
            proc.send_signal(signal.SIGTERM)
            started = time.monotonic()
            assert proc.wait(timeout=10) == 0
            assert time.monotonic() - started < 4
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    assert not (cache / ids[0]).exists() and leftovers(cache) == []
    # Only the resumable partial stays (named by its sha256, for the next run); nothing under a final name.
    assert [p for p in leftovers(state) if p != ".held-ids.json" and not p.startswith(".partial/")] == []
    assert "Traceback" not in proc.stderr.read()


def test_the_clients_clean_up_leaves_follow_its_state_and_its_bases(tmp_path, ids):
    """lczero-client deletes every entry of its folder older than its keep time but the current net."""
    key = SigningKey.generate()
    repo = Repository.create(tmp_path / "repo", key)
    publish(repo, run_paths()[:1], codec=FAST_CODEC, skips=(1,))
    cache, state = tmp_path / "client-cache", tmp_path / "follow-state"
    results = []
    client = StandInClient(cache, "http://127.0.0.1:9/", retries=1, keep_seconds=0)   # 16 h gone by
    with serving(repo.root) as upstream, \
            following(upstream.url, cache, 0.2, keep=2, trust=key.public, state_dir=state,
                      on_net=results.append):
        for i in range(3):
            if i:
                publish(repo, [run_paths()[i]], codec=FAST_CODEC, skips=(1,))
            wait_for(lambda: verified(cache, ids[i]), 15)
            time.sleep(0.05)
            client.get_network(ids[i])          # finds it in place, then cleans up everything else
            assert sorted(p.name for p in cache.iterdir()) == [ids[i]], list(cache.iterdir())
    assert client.downloads == []
    assert [r.net_id for r in results] == ids
    full = [p.stat().st_size for p in run_paths()[:3]]
    for i in (1, 2):                            # each new net still came as a patch from the last
        assert results[i].route == f"{ids[i - 1][:8]}->{ids[i][:8]}", results[i].route
        assert results[i].bytes_downloaded < 0.75 * full[i]
    assert (state / ".lc0weights-trust").is_dir()
    assert sorted(p.name for p in state.glob("*.pb.gz")) == sorted(f"{i}.pb.gz" for i in ids[1:])
