"""``lc0weights mirror`` beside a stand-in lczero-client, over loopback, on the shared run."""
from __future__ import annotations

import gzip
import hashlib
import os
import re
import shutil
import threading
import time
from contextlib import contextmanager
from pathlib import Path

import pytest
import requests

from lc0weights import Net
from lc0weights.client import TransferPolicy
from lc0weights.serving.mirror import Mirror, MirrorServer, _parse_range, mirror_limits
from service.publish import publish
from service.repository import Repository

from conftest import NETS, run_paths
from lczero_client_standin import ClientError, StandInClient
from repo_fixtures import FAST_CODEC, faulty_handler, leftovers, serving, running

POLICY = TransferPolicy(retries=0, progress=False)
LINE = re.compile(r"GET (\w{16}) 200 route=(.+?) upstream=(\d+) saved=(\d+) sent=(\d+)")


@pytest.fixture(scope="module")
def ids():
    return [Net.load(p).id for p in run_paths()]


@pytest.fixture(scope="module")
def repo(published_three_in_steps):
    return published_three_in_steps


@contextmanager
def mirror_at(upstream: str, cache: Path, client_cache: Path | None = None, **kw):
    mirror = Mirror(upstream, cache_dir=cache, client_cache=client_cache, policy=POLICY, **kw)
    server = MirrorServer(mirror, "127.0.0.1", 0, max_connections=16)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server, mirror
    finally:
        server.shutdown()
        server.server_close()


def gunzip_id(data: bytes) -> str:
    return hashlib.sha256(gzip.decompress(data)).hexdigest()


def mirror_lines(caplog) -> list[tuple]:
    """(sha16, route, upstream, saved) of each GET the mirror logged, in order."""
    out = [LINE.search(r.getMessage()) for r in caplog.records if r.name.endswith("mirror")]
    return [(m.group(1), m.group(2), int(m.group(3)), int(m.group(4))) for m in out if m]


def test_the_client_follows_the_run_through_the_mirror_with_patches_and_a_restart(tmp_path, ids, caplog):
    caplog.set_level("INFO", logger="lc0weights.serving.mirror")
    paths = run_paths()[:6]
    repo = Repository.create(tmp_path / "repo")
    own, client_dir = tmp_path / "mirror", tmp_path / "client"
    with serving(repo.root) as upstream:
        for first, last in ((0, 3), (3, 6)):        # the mirror is restarted mid-run
            with mirror_at(upstream.url, own, client_dir) as (server, _):
                client = StandInClient(client_dir, server.url, retry_pause=0.1)
                for i in range(first, last):
                    publish(repo, [paths[i]], codec=FAST_CODEC, skips=(1,))
                    assert client.check(client.get_network(ids[i]), ids[i])
                # The restarted mirror still holds what it held: asking again costs nothing upstream.
                again = requests.get(server.url + ids[4], timeout=30) if first else None
        assert gunzip_id(again.content) == ids[4]

    lines = mirror_lines(caplog)
    assert [sha for sha, *_ in lines] == [i[:16] for i in ids[:6]] + [ids[4][:16]]
    full = [p.stat().st_size for p in paths]
    assert lines[0][1].startswith("full") and lines[0][2] > full[0]
    for i in range(1, 6):                         # the restart at 3 changed nothing
        sha, route, upstream_bytes, saved = lines[i]
        assert route == f"{ids[i - 1][:8]}->{ids[i][:8]}", route
        assert upstream_bytes < 0.75 * full[i] and saved > 0.25 * full[i]
    assert lines[6][1:3] == ("held", 0)
    assert [d[0] for d in client.downloads] == ids[3:6]
    assert leftovers(own) == [] and client.nets() == sorted(ids[:6])


def test_a_fresh_mirror_rebuilds_from_the_net_in_the_client_cache(repo, ids, tmp_path, caplog):
    caplog.set_level("INFO", logger="lc0weights.serving.mirror")
    client_dir = tmp_path / "client"
    client_dir.mkdir()
    shutil.copyfile(run_paths()[1], client_dir / ids[1])        # what the client got last time
    with serving(repo.root) as upstream, mirror_at(upstream.url, tmp_path / "own", client_dir) as (server, _):
        client = StandInClient(client_dir, server.url)
        client.get_network(ids[2])
    (_, route, upstream_bytes, _), = mirror_lines(caplog)
    assert route == f"{ids[1][:8]}->{ids[2][:8]}"
    assert upstream_bytes < 0.75 * run_paths()[2].stat().st_size
    assert (client_dir / ids[1]).read_bytes() == run_paths()[1].read_bytes()    # only read


def test_six_concurrent_requests_for_one_net_make_one_upstream_fetch(repo, ids, tmp_path):
    base = faulty_handler()

    class Slow(base):
        def do_GET(self):
            if self.path.startswith("/timestamp.json"):
                time.sleep(0.5)
            return super().do_GET()

    with serving(repo.root, Slow) as upstream, mirror_at(upstream.url, tmp_path / "own") as (server, mirror):
        barrier = threading.Barrier(6)
        bodies = [None] * 6

        def get(i):
            barrier.wait()
            bodies[i] = requests.get(f"{server.url}get_network?sha={ids[2]}", timeout=60)

        threads = [threading.Thread(target=get, args=(i,)) for i in range(6)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert all(r.status_code == 200 and gunzip_id(r.content) == ids[2] for r in bodies)
    assert mirror.upstream_fetches == 1
    assert Slow.calls.get("/timestamp.json") == 1
    objects = {k: v for k, v in Slow.calls.items() if k.startswith(("/nets/", "/patches/"))}
    assert list(objects.values()) == [1]


def test_unknown_and_malformed_shas(repo, ids, tmp_path):
    unknown = Net.load(NETS / "maia-1100.pb.gz").id
    with serving(repo.root) as upstream, mirror_at(upstream.url, tmp_path / "own") as (server, _):
        assert requests.get(server.url + unknown, timeout=30).status_code == 404
        crowded = "get_network?" + "&".join(f"sha={ids[0]}" for _ in range(20))
        for bad in ("xyz", ids[0][:63], ids[0] + "0", "get_network?sha=abc", "get_network?sha=" + "g" * 64,
                    f"get_network?sha={ids[0]}&sha={ids[0]}", crowded):
            assert requests.get(server.url + bad, timeout=30).status_code == 400, bad
        assert requests.get(server.url + "nets/" + ids[0], timeout=30).status_code == 404
    assert not list((tmp_path / "own").glob("*.pb.gz"))


@contextmanager
def plain_files(folder):
    """Any static web server, as lc0's own network server would be: serves bare-sha files."""
    import functools
    import http.server
    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args):
            pass
    handler = functools.partial(Quiet, directory=str(folder))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.url = f"http://127.0.0.1:{server.server_address[1]}/"
    with running(server):
        yield server


def test_fallback_passes_through_only_verified_nets(repo, ids, tmp_path):
    other = NETS / "maia-1100.pb.gz"
    other_id = Net.load(other).id
    liar_id = Net.load(NETS / "maia-1200.pb.gz").id
    fb = tmp_path / "fallback"
    fb.mkdir()
    shutil.copyfile(other, fb / other_id)
    shutil.copyfile(other, fb / liar_id)                       # the wrong net under a name
    nowhere = "f" * 64
    own = tmp_path / "own"
    with serving(repo.root) as upstream, plain_files(fb) as fallback, \
            mirror_at(upstream.url, own, fallback=fallback.url) as (server, _):
        good = requests.get(server.url + other_id, timeout=30)
        assert good.status_code == 200 and good.content == other.read_bytes()
        assert requests.get(server.url + liar_id, timeout=30).status_code == 502
        assert requests.get(server.url + nowhere, timeout=30).status_code == 404
        listed = requests.get(server.url + ids[0], timeout=30)      # the repository comes first
        assert gunzip_id(listed.content) == ids[0]
    assert sorted(p.name for p in own.glob("*.pb.gz")) == sorted([f"{other_id}.pb.gz", f"{ids[0]}.pb.gz"])
    assert leftovers(own) == []


def test_a_corrupt_net_in_the_client_cache_is_never_a_base_nor_served(repo, ids, tmp_path, caplog):
    caplog.set_level("INFO", logger="lc0weights.serving.mirror")
    client_dir = tmp_path / "client"
    client_dir.mkdir()
    good = run_paths()[1].read_bytes()
    damaged = bytearray(good)
    damaged[len(damaged) // 2] ^= 0x40
    (client_dir / ids[1]).write_bytes(bytes(damaged))          # corrupt, under its own name
    (client_dir / ids[0]).write_bytes(run_paths()[2].read_bytes())   # another net under a name
    with serving(repo.root) as upstream, mirror_at(upstream.url, tmp_path / "own", client_dir) as (server, _):
        for sha in (ids[2], ids[1], ids[0]):
            r = requests.get(server.url + sha, timeout=30)
            assert r.status_code == 200 and gunzip_id(r.content) == sha
    routes = [route for _, route, *_ in mirror_lines(caplog)]
    assert routes[:2] == [f"full {ids[2][:8]}", f"full {ids[1][:8]}"]     # no base it could trust
    assert (client_dir / ids[1]).read_bytes() == bytes(damaged)   # read only


def test_head_range_and_the_cache_bound(repo, ids, tmp_path):
    own = tmp_path / "own"
    with serving(repo.root) as upstream, mirror_at(upstream.url, own, max_nets=2) as (server, _):
        for sha in ids[:3]:
            assert requests.get(server.url + sha, timeout=30).status_code == 200
        whole = requests.get(server.url + ids[2], timeout=30).content
        head = requests.head(server.url + ids[2], timeout=30)
        assert head.status_code == 200 and int(head.headers["Content-Length"]) == len(whole)
        part = requests.get(server.url + ids[2], headers={"Range": "bytes=100-199"}, timeout=30)
        assert part.status_code == 206 and part.content == whole[100:200]
        assert part.headers["Content-Range"] == f"bytes 100-199/{len(whole)}"
        tail = requests.get(server.url + ids[2], headers={"Range": "bytes=-10"}, timeout=30)
        assert tail.content == whole[-10:]
        over = requests.get(server.url + ids[2], headers={"Range": f"bytes={len(whole)}-"}, timeout=30)
        assert over.status_code == 416
        odd = requests.get(server.url + ids[2], headers={"Range": "bytes=" + "9" * 5000 + "-"}, timeout=30)
        assert odd.status_code == 416          # a start beyond any file, as serve answers it
    assert sorted(p.name for p in own.glob("*.pb.gz")) == sorted(f"{i}.pb.gz" for i in ids[1:3])


def test_parse_range():
    assert _parse_range("bytes=0-9", 100) == (0, 9)
    assert _parse_range("bytes=90-", 100) == (90, 99)
    assert _parse_range("bytes=0-1,5-6", 100) is None
    assert _parse_range("bytes=100-", 100) == "unsatisfiable"


def test_the_mirror_command_says_it_is_loopback_only_and_stops_on_sigterm(repo, tmp_path):
    import os
    import signal
    import socket
    import subprocess
    import sys
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen(
        [sys.executable, "-m", "lc0weights.cli", "mirror", str(repo.root), "--listen", f"127.0.0.1:{port}",
         "--cache", str(tmp_path / "own"), "--client-cache", str(tmp_path / "client")],
        stderr=subprocess.PIPE, text=True, cwd=Path(__file__).resolve().parents[1])
    try:
        first = proc.stderr.readline()
        assert "loopback only" in first and f"--network-mirror http://127.0.0.1:{port}/" in first
        deadline = time.monotonic() + 20
        while True:
            try:
                r = requests.get(f"http://127.0.0.1:{port}/" + "0" * 64, timeout=5)
                break
            except requests.ConnectionError:
                assert time.monotonic() < deadline
                time.sleep(0.1)
        assert r.status_code == 404
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=10) == 0
        log = proc.stderr.read()
        assert re.search(r"GET 0{16} 404", log)
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait()


def test_the_stand_in_client_waits_for_the_lock(tmp_path, ids):
    """The stand-in's flock wait is real: a held <sha>.lck keeps it out until released."""
    import fcntl
    import os
    client = StandInClient(tmp_path, "http://127.0.0.1:9/", lock_wait=0.3)
    fd = os.open(tmp_path / f"{ids[0]}.lck", os.O_RDWR | os.O_CREAT)
    fcntl.flock(fd, fcntl.LOCK_EX)
    try:
        with pytest.raises(ClientError, match="still locked"):
            client.get_network(ids[0])
    finally:
        os.close(fd)


def test_connections_over_the_cap_get_503(repo, ids, tmp_path):
    import socket
    mirror = Mirror(str(repo.root), cache_dir=tmp_path / "own", policy=POLICY)
    server = MirrorServer(mirror, "127.0.0.1", 0, limits=mirror_limits(1, queue_timeout=0.3))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        with socket.create_connection(server.server_address[:2]):   # holds the one slot
            time.sleep(0.2)
            assert requests.get(server.url + ids[0], timeout=10).status_code == 503
        deadline = time.monotonic() + 5
        while requests.get(server.url + ids[0], timeout=10).status_code == 503:
            assert time.monotonic() < deadline                # the slot comes back once it closes
            time.sleep(0.05)
    finally:
        server.shutdown()
        server.server_close()


def test_the_stand_in_client_cleans_up_old_nets_as_lczero_client_does(repo, ids, tmp_path):
    client_dir = tmp_path / "client"
    client_dir.mkdir()
    for i in (0, 1):
        shutil.copyfile(run_paths()[i], client_dir / ids[i])
    old = time.time() - 17 * 3600                                  # past the 16 h keep time
    os.utime(client_dir / ids[0], (old, old))
    with serving(repo.root) as upstream, mirror_at(upstream.url, tmp_path / "own", client_dir) as (server, _):
        StandInClient(client_dir, server.url).get_network(ids[2])
    assert sorted(p.name for p in client_dir.iterdir() if len(p.name) == 64) == sorted(ids[1:3])
