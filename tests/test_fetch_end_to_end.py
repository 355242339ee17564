"""The whole path on loopback: the watcher publishes the real training run's first nets one by one,
clients in different states fetch the latest over the built-in server and nginx."""
import os
import shutil
import socket
import subprocess
import threading
import time

import pytest

from lc0weights import Net
from lc0weights.cli import main as lc0weights_main
from lc0weights.client import TransferPolicy, check_repository, fetch
from service.repository import Repository
from service.watch import Watcher

from conftest import run_paths
from repo_fixtures import FAST_CODEC, copy_into_cache, leftovers, serving

POLICY = TransferPolicy(timeout=20, retries=3, backoff=0.05, progress=False)
# Six nets, published with patches from 1 and 4 nets back, give every kind of client the whole run
# gave: one a skip patch away (-5), one a patch away (-2), and two further back (the first net and
# one in the middle) for whom the whole net is the cheaper route.
NETS_PUBLISHED = 6


@pytest.fixture(scope="module")
def run():
    paths = run_paths()[:NETS_PUBLISHED]
    if len(paths) < NETS_PUBLISHED:
        pytest.fail("the maia-distill run is missing from the shared data")
    return [(p, Net.load(p).id) for p in paths]


@pytest.fixture(scope="module")
def repo(tmp_path_factory, run):
    """The run published as a trainer would produce it: one file at a time, into a watched folder."""
    base = tmp_path_factory.mktemp("e2e")
    incoming = base / "incoming"
    incoming.mkdir()
    repo = Repository.create(base / "repo")
    watcher = Watcher(incoming, repo, interval=0, codec=FAST_CODEC, skips=(1, 4))
    for path, net_id in run:
        tmp = incoming / f".{path.name}.tmp"        # trainers write a temp name, then rename
        shutil.copyfile(path, tmp)
        assert watcher.poll() == []
        tmp.rename(incoming / path.name)
        assert watcher.poll() == []                 # not yet seen stable
        published = watcher.poll()
        assert [(p.net_id, p.new) for p in published] == [(net_id, True)]
    restarted = Watcher(incoming, repo, interval=0, codec=FAST_CODEC, skips=(1, 4))
    restarted.poll()
    assert all(not p.new for p in restarted.poll())
    index = repo.read_index()
    assert [n.id for n in index.nets] == [i for _, i in run] and index.latest == run[-1][1]
    return repo


@pytest.fixture(scope="module")
def server(repo):
    with serving(repo.root) as srv:
        yield srv


@pytest.mark.parametrize("holds", [None, 0, 2, -5, -2],
                         ids=["empty", "first", "middle", "four-behind", "one-behind"])
def test_clients_fetch_the_latest_net(server, repo, run, tmp_path, holds):
    cache = tmp_path / "cache"
    if holds is not None:
        copy_into_cache(run[holds][0], cache, run[holds][1])
    out = tmp_path / "latest.pb.gz"
    result = fetch(server.url, cache_dir=cache, out=out, policy=POLICY)
    latest = run[-1][1]
    assert result.net_id == latest and Net.load(out).id == latest
    assert Net.load(cache / f"{latest}.pb.gz").id == latest
    assert out.read_bytes()[:2] == b"\x1f\x8b"
    full = repo.read_index().net(latest).size
    assert result.full_size == full
    assert result.metadata_bytes < 8192                           # a few records, not the history
    assert result.bytes_downloaded <= full + result.metadata_bytes    # never worse than a full download
    if holds in (-5, -2):                                         # one patch away (skip or direct)
        assert result.patches >= 1 and result.bytes_downloaded < full
    if holds is None:
        assert result.route.startswith("full")
    assert leftovers(cache) == []
    print(f"holds={holds}: {result.route}, {result.bytes_downloaded} of {full} bytes")


def test_fetch_command_with_client_layout_and_json(server, run, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))      # lc0weights' own state goes there
    cache = tmp_path / "client"
    cache.mkdir()
    shutil.copyfile(run[-3][0], cache / run[-3][1])             # gzip file named by the id
    code = lc0weights_main(["fetch", server.url, "--cache", str(cache), "--client-layout", "--json"])
    assert code == 0
    out = capsys.readouterr().out
    latest = run[-1][1]
    assert f'"net_id": "{latest}"' in out
    assert sorted(os.listdir(cache)) == sorted([run[-3][1], latest])      # nets only, nothing of ours
    assert Net.load(cache / latest).id == latest


def test_fetch_a_named_older_net_from_a_local_directory(repo, run, tmp_path):
    result = fetch(str(repo.root), net=run[2][1][:16], cache_dir=tmp_path, policy=POLICY)
    assert result.net_id == run[2][1]


def test_check_passes_over_http_and_fails_on_a_tampered_object(server, repo, run, tmp_path, capsys):
    report = check_repository(server.url)
    assert report.ok and report.nets == len(run) and report.patches == len(repo.read_index().patches)
    copy = tmp_path / "copy"
    shutil.copytree(repo.root, copy)
    victim = copy / repo.read_index().patches[3].path
    data = bytearray(victim.read_bytes())
    data[100] ^= 1
    victim.write_bytes(bytes(data))
    assert lc0weights_main(["check", str(copy)]) == 1
    assert "FAIL patch" in capsys.readouterr().out


def test_fifty_concurrent_clients_all_get_verified_nets(server, run, tmp_path):
    latest = run[-1][1]
    results, errors = [], []

    def client(i):
        cache = tmp_path / f"c{i}"
        if i % 2:
            copy_into_cache(run[-2][0], cache, run[-2][1])
        try:
            results.append(fetch(server.url, cache_dir=cache, policy=POLICY))
            assert Net.load(cache / f"{latest}.pb.gz").id == latest
        except Exception as e:          # collected and reported below
            errors.append(repr(e))

    threads = [threading.Thread(target=client, args=(i,)) for i in range(50)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert errors == [] and len(results) == 50
    assert all(r.net_id == latest for r in results)
    assert sum(r.patches == 1 for r in results) == 25


# -- nginx -----------------------------------------------------------------------
NGINX = shutil.which("nginx") or next((p for p in ("/usr/sbin/nginx",) if os.access(p, os.X_OK)), None)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def nginx(repo, tmp_path):
    if NGINX is None:
        if os.environ.get("CI"):
            pytest.fail("nginx is required in CI")
        pytest.skip("nginx is not installed")
    port = _free_port()
    prefix = tmp_path / "nginx"
    (prefix / "logs").mkdir(parents=True)
    conf = prefix / "nginx.conf"
    conf.write_text(f"""
worker_processes 1;
daemon off;
pid {prefix}/nginx.pid;
error_log {prefix}/logs/error.log warn;
{"user root;" if os.geteuid() == 0 else ""}
events {{ worker_connections 64; }}
http {{
    access_log {prefix}/logs/access.log;
    client_body_temp_path {prefix}/body;
    proxy_temp_path {prefix}/proxy;
    fastcgi_temp_path {prefix}/fastcgi;
    uwsgi_temp_path {prefix}/uwsgi;
    scgi_temp_path {prefix}/scgi;
    types {{ application/json json; }}
    default_type application/octet-stream;
    server {{
        listen 127.0.0.1:{port};
        root {repo.root};
        autoindex off;
        location ~ /\\. {{ return 404; }}
        location ~ ^/(root|timestamp|index)\\.json$ {{ add_header Cache-Control "no-cache"; }}
        location / {{ add_header Cache-Control "public, max-age=31536000, immutable"; }}
    }}
}}
""")
    proc = subprocess.Popen([NGINX, "-p", str(prefix), "-c", str(conf)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                break
            except OSError:
                if proc.poll() is not None:
                    pytest.fail(f"nginx did not start: {proc.stderr.read().decode()[-500:]}")
                time.sleep(0.05)
        yield f"http://127.0.0.1:{port}/"
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def test_fetch_through_nginx(nginx, run, tmp_path):
    cache = tmp_path / "cache"
    copy_into_cache(run[-5][0], cache, run[-5][1])
    result = fetch(nginx, cache_dir=cache, policy=POLICY)
    assert result.net_id == run[-1][1] and result.patches >= 1
    assert result.bytes_downloaded < result.full_size
    empty = fetch(nginx, cache_dir=tmp_path / "empty", policy=POLICY)
    assert empty.net_id == run[-1][1] and empty.route.startswith("full")
    assert check_repository(nginx).ok
