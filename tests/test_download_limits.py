"""Transfers that cannot hang, fill the disk or be fooled: deadlines, byte budgets, free space,
resumable partials across processes, sweeping what killed fetches left, and failures that say which."""
from __future__ import annotations

import hashlib
import os
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import requests

from lc0weights.client.download import (ByteBudget, HttpSource, LocalSource, PolicyError,
                                              TransferPolicy, check_free_space, sweep_stale, work_folder)
from lc0weights.repository.errors import DownloadError, IntegrityError
from lc0weights.client.staging import StagedFile

from conftest import run_paths
from transfer_server import scripted_server

ROOT = Path(__file__).resolve().parents[1]


def policy(**changes) -> TransferPolicy:
    settings = dict(timeout=5.0, retries=2, backoff=0.01, progress=False)
    return TransferPolicy(**{**settings, **changes})


@pytest.fixture(scope="module")
def net_bytes() -> bytes:
    """A real published net object (.pb.gz) from the shared training run."""
    return run_paths()[0].read_bytes()


@pytest.fixture(scope="module")
def other_net_bytes() -> bytes:
    return run_paths()[1].read_bytes()


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def object_path(data: bytes) -> str:
    return f"nets/{sha(data)}.pb.gz"


def served(data: bytes) -> dict:
    return {"/" + object_path(data): data}


def files_in(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))


# -- deadlines -------------------------------------------------------------------------------------

@pytest.mark.parametrize("action", ["trickle-body", "trickle-headers"])
def test_server_trickling_a_byte_at_a_time_is_cut_at_the_deadline(net_bytes, tmp_path, action):
    """Every read succeeds well within the 5 s timeout, yet the whole transfer is cut at 1.5 s."""
    data = net_bytes[:3000]
    slow = policy(min_rate=6000, allowance=1.0)             # deadline 1 s + 3000 B / 6000 B/s
    with scripted_server({"/" + object_path(data): data}, {"/" + object_path(data): [action]},
                         tick=0.02) as srv:
        source = HttpSource(srv.url, slow)
        started = time.monotonic()
        with pytest.raises(DownloadError) as err:
            source.fetch_object(object_path(data), tmp_path / "net", len(data), sha(data))
        waited = time.monotonic() - started
    message = str(err.value)
    assert "timed out at its deadline of 1.5 s" in message and "\n" not in message
    assert 1.4 <= waited < 3.0
    assert source.bytes_downloaded < len(data) // 2         # far less than a full object arrived
    assert files_in(tmp_path) == []


def test_document_read_from_a_trickling_server_is_cut_at_the_deadline_of_its_declared_length(net_bytes):
    """read_document's deadline starts from max_bytes and is brought forward to the declared length."""
    doc = net_bytes[:2000]
    slow = policy(min_rate=2000, allowance=0.5)             # 1 MB would allow 500 s; 2000 B allow 1.5 s
    with scripted_server({"/timestamp.json": doc}, {"/timestamp.json": ["trickle-body"]}, tick=0.01) as srv:
        started = time.monotonic()
        with pytest.raises(DownloadError, match="deadline of 1.5 s"):
            HttpSource(srv.url, slow).read_document("timestamp.json", 1 << 20)
        assert time.monotonic() - started < 3.0


@pytest.fixture(scope="module")
def loopback_tls(tmp_path_factory):
    """A throwaway self-signed certificate for 127.0.0.1: (server context, certificate file)."""
    if shutil.which("openssl") is None:
        pytest.skip("openssl is needed to make a test certificate")
    folder = tmp_path_factory.mktemp("tls")
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
                    "-nodes", "-keyout", str(folder / "key.pem"), "-out", str(folder / "cert.pem"),
                    "-days", "1", "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1"],
                   check=True, capture_output=True, timeout=60)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(folder / "cert.pem", folder / "key.pem")
    return context, str(folder / "cert.pem")


def test_trickling_tls_server_is_cut_at_the_deadline(net_bytes, tmp_path, loopback_tls):
    """Over TLS the socket the watchdog must reach is wrapped: the cut still lands at the deadline."""
    context, cert = loopback_tls
    data = net_bytes[:3000]
    path = "/" + object_path(data)
    with scripted_server({path: data}, {path: ["ok", "trickle-body"]}, tls=context, tick=0.02) as srv:
        session = requests.Session()
        session.verify = cert
        session.trust_env = False                  # REQUESTS_CA_BUNDLE would override verify
        source = HttpSource(srv.url, policy(min_rate=6000, allowance=1.0), session=session)
        source.fetch_object(object_path(data), tmp_path / "first", len(data), sha(data))   # TLS works
        started = time.monotonic()
        with pytest.raises(DownloadError, match="timed out at its deadline of 1.5 s"):
            source.fetch_object(object_path(data), tmp_path / "second", len(data), sha(data))
        assert 1.4 <= time.monotonic() - started < 3.0
    assert (tmp_path / "first").read_bytes() == data and files_in(tmp_path) == ["first"]


def test_a_transfer_within_its_deadline_is_not_disturbed(net_bytes, tmp_path):
    """A slow but steady server that keeps to the minimum rate delivers the whole object."""
    slow = policy(min_rate=len(net_bytes) / 2.0, allowance=1.0)   # 3 s allowed for about 1 s of sending
    with scripted_server(served(net_bytes), {"/" + object_path(net_bytes): ["slow"]},
                         block=1 << 17, tick=0.1) as srv:
        source = HttpSource(srv.url, slow)
        source.fetch_object(object_path(net_bytes), tmp_path / "net", len(net_bytes), sha(net_bytes))
    assert (tmp_path / "net").read_bytes() == net_bytes
    assert files_in(tmp_path) == ["net"]


# -- byte budget -----------------------------------------------------------------------------------

def test_byte_budget_is_enforced_across_retries(net_bytes, tmp_path):
    """A server that always cuts the object half-way and ignores Range: each retry re-reads half."""
    budget = int(len(net_bytes) * 1.2)
    path = "/" + object_path(net_bytes)
    with scripted_server(served(net_bytes), {path: ["cut"]}) as srv:
        source = HttpSource(srv.url, policy(retries=10, byte_budget=budget))
        with pytest.raises(DownloadError, match="over its byte budget of") as err:
            source.fetch_object(object_path(net_bytes), tmp_path / "net", len(net_bytes), sha(net_bytes))
        assert len(srv.requests) == 3                       # two halves fit, the third crosses the budget
    assert "\n" not in str(err.value)
    assert budget < source.bytes_downloaded <= budget + (1 << 16)
    assert files_in(tmp_path) == []


def test_byte_budget_counts_documents_and_refuses_an_object_that_cannot_fit(net_bytes, tmp_path):
    doc = b'{"version": 1}'
    objects = {"/root.json": doc, **served(net_bytes)}
    with scripted_server(objects) as srv:
        source = HttpSource(srv.url, policy(byte_budget=len(net_bytes)))
        assert source.read_document("root.json", 1000).data == doc
        with pytest.raises(DownloadError, match="would exceed this fetch's byte budget"):
            source.fetch_object(object_path(net_bytes), tmp_path / "net", len(net_bytes), sha(net_bytes))
        assert [r[0] for r in srv.requests] == ["/root.json"]     # refused before asking
    assert source.bytes_downloaded == len(doc)


def test_default_budget_follows_the_largest_declared_object():
    budget = ByteBudget()
    assert budget.limit == 64 << 20
    budget.declare(400 << 20)
    budget.declare(1 << 20)
    assert budget.limit == 3 * (400 << 20) + (64 << 20)


# -- free space ------------------------------------------------------------------------------------

def test_free_space_refusal_with_a_simulated_full_disk(net_bytes, tmp_path, monkeypatch):
    """shutil.disk_usage is patched to report 1000 bytes free: refused before any request."""
    real = shutil.disk_usage
    monkeypatch.setattr(shutil, "disk_usage", lambda p: real(p)._replace(free=1000))
    with scripted_server(served(net_bytes)) as srv:
        source = HttpSource(srv.url, policy())
        with pytest.raises(DownloadError) as err:
            source.fetch_object(object_path(net_bytes), tmp_path / "net", len(net_bytes), sha(net_bytes),
                                partial_dir=tmp_path / "partial")
        assert srv.requests == []
    assert str(err.value) == (f"not enough free space in {tmp_path / 'partial'}: {len(net_bytes):,} bytes "
                              "needed, 1,000 free; free some space or use a cache folder on another disk")
    assert files_in(tmp_path) == ["partial"]


def _mount_small_tmpfs(where: Path, size: str) -> bool:
    where.mkdir()
    try:
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(where)],
                              capture_output=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return done.returncode == 0


def test_free_space_refusal_on_a_real_small_tmpfs(net_bytes, tmp_path):
    """A 512 KiB tmpfs (only where this user may mount one) cannot take the 1.2 MB net."""
    small = tmp_path / "small"
    if not _mount_small_tmpfs(small, "512k"):
        pytest.skip("mounting a tmpfs is not permitted here")
    try:
        with scripted_server(served(net_bytes)) as srv:
            with pytest.raises(DownloadError, match=f"not enough free space in {small}: "):
                HttpSource(srv.url, policy()).fetch_object(object_path(net_bytes), small / "net",
                                                           len(net_bytes), sha(net_bytes))
            assert srv.requests == []
        assert files_in(small) == []
        check_free_space(small, 1000)                       # a small object would fit
    finally:
        subprocess.run(["umount", str(small)], check=True, timeout=10)


def test_partial_on_another_file_system_is_copied_into_place(net_bytes, tmp_path):
    """Partials on a tmpfs (where this user may mount one), the object lands on the test's disk."""
    other = tmp_path / "other"
    if not _mount_small_tmpfs(other, "8m"):
        pytest.skip("mounting a tmpfs is not permitted here")
    try:
        with scripted_server(served(net_bytes)) as srv:
            HttpSource(srv.url, policy()).fetch_object(object_path(net_bytes), tmp_path / "net", len(net_bytes),
                                                       sha(net_bytes), partial_dir=other / "partial")
        assert (tmp_path / "net").read_bytes() == net_bytes
        assert files_in(other) == ["partial"]
        assert sorted(p.name for p in tmp_path.iterdir()) == ["net", "other"]      # no temp left beside it
    finally:
        subprocess.run(["umount", str(other)], check=True, timeout=10)


# -- resumable partials ----------------------------------------------------------------------------

CHILD = textwrap.dedent("""
    import sys
    from pathlib import Path
    from lc0weights.client.download import HttpSource, TransferPolicy
    url, path, dest, size, digest, partial = sys.argv[1:]
    source = HttpSource(url, TransferPolicy(progress=False))
    source.fetch_object(path, Path(dest), int(size), digest, partial_dir=partial)
""")


def test_download_killed_mid_way_is_resumed_by_the_next_process(net_bytes, tmp_path):
    path, digest, size = object_path(net_bytes), sha(net_bytes), len(net_bytes)
    partial_dir = tmp_path / "partial"
    partial = partial_dir / f"{digest}.part"
    with scripted_server(served(net_bytes), {"/" + path: ["slow", "ok"]}, block=1 << 14, tick=0.05) as srv:
        child = subprocess.Popen([sys.executable, "-c", CHILD, srv.url, path, str(tmp_path / "net"),
                                  str(size), digest, str(partial_dir)], cwd=ROOT)
        deadline = time.monotonic() + 30
        while not (partial.exists() and partial.stat().st_size >= size // 4):
            assert child.poll() is None and time.monotonic() < deadline
            time.sleep(0.02)
        os.kill(child.pid, signal.SIGKILL)
        child.wait()
        held = partial.stat().st_size
        assert 0 < held < size and not (tmp_path / "net").exists()

        source = HttpSource(srv.url, policy())
        read = source.fetch_object(path, tmp_path / "net", size, digest, partial_dir=partial_dir)
        assert srv.requests[-1][1] == f"bytes={held}-"
    assert read == source.bytes_downloaded == size - held          # only the remainder was read again
    assert (tmp_path / "net").read_bytes() == net_bytes
    assert files_in(tmp_path) == ["net", "partial"]


def test_two_processes_fetching_one_object_never_share_a_partial(net_bytes, tmp_path):
    path, digest, size = object_path(net_bytes), sha(net_bytes), len(net_bytes)
    with scripted_server(served(net_bytes), {"/" + path: ["slow"]}, block=1 << 15, tick=0.04) as srv:
        children = [subprocess.Popen([sys.executable, "-c", CHILD, srv.url, path, str(tmp_path / f"net{i}"),
                                      str(size), digest, str(tmp_path / "partial")], cwd=ROOT)
                    for i in range(2)]
        assert [child.wait(timeout=60) for child in children] == [0, 0]
        assert [r[1] for r in srv.requests] == [None, None]     # each read the object once, from zero
        assert srv.handler.peak_sending == 2                     # at the same time
    assert (tmp_path / "net0").read_bytes() == net_bytes == (tmp_path / "net1").read_bytes()
    assert files_in(tmp_path) == ["net0", "net1", "partial"]


def test_interrupted_download_keeps_its_partial_and_the_next_call_resumes(net_bytes, tmp_path):
    """In one process: retries exhausted mid-object keep the partial; the next call finishes it."""
    path, digest = object_path(net_bytes), sha(net_bytes)
    with scripted_server(served(net_bytes), {"/" + path: ["cut", "503", "ok"]}) as srv:
        source = HttpSource(srv.url, policy(retries=1))
        with pytest.raises(DownloadError, match="HTTP 503"):
            source.fetch_object(path, tmp_path / "net", len(net_bytes), digest, partial_dir=tmp_path / "p")
        held = (tmp_path / "p" / f"{digest}.part").stat().st_size
        assert held == len(net_bytes) // 2
        source.fetch_object(path, tmp_path / "net", len(net_bytes), digest, partial_dir=tmp_path / "p")
        assert srv.requests[-1][1] == f"bytes={held}-"
    assert (tmp_path / "net").read_bytes() == net_bytes and files_in(tmp_path / "p") == []


def test_partial_of_another_object_is_never_reused(net_bytes, other_net_bytes, tmp_path):
    partial_dir = tmp_path / "partial"
    partial_dir.mkdir()
    foreign = partial_dir / f"{sha(other_net_bytes)}.part"
    foreign.write_bytes(other_net_bytes[:50_000])
    with scripted_server(served(net_bytes)) as srv:
        source = HttpSource(srv.url, policy())
        source.fetch_object(object_path(net_bytes), tmp_path / "net", len(net_bytes), sha(net_bytes),
                            partial_dir=partial_dir)
        assert srv.requests[0][1] is None                    # from byte zero, no Range
    assert (tmp_path / "net").read_bytes() == net_bytes
    assert foreign.read_bytes() == other_net_bytes[:50_000]  # another object's partial, left alone


def test_corrupt_partial_is_deleted_and_the_object_downloaded_again(net_bytes, other_net_bytes, tmp_path):
    """A partial named for this object but holding other bytes fails the hash: start over once."""
    digest, partial_dir = sha(net_bytes), tmp_path / "partial"
    partial_dir.mkdir()
    (partial_dir / f"{digest}.part").write_bytes(other_net_bytes[:50_000])
    with scripted_server(served(net_bytes)) as srv:
        source = HttpSource(srv.url, policy())
        read = source.fetch_object(object_path(net_bytes), tmp_path / "net", len(net_bytes), digest,
                                   partial_dir=partial_dir)
        assert [r[1] for r in srv.requests] == ["bytes=50000-", None]
    assert read == len(net_bytes) - 50_000 + len(net_bytes)
    assert (tmp_path / "net").read_bytes() == net_bytes and files_in(partial_dir) == []


def test_partial_longer_than_the_object_is_discarded(net_bytes, tmp_path):
    digest, partial_dir = sha(net_bytes), tmp_path / "partial"
    partial_dir.mkdir()
    (partial_dir / f"{digest}.part").write_bytes(net_bytes + b"trailing")
    with scripted_server(served(net_bytes)) as srv:
        HttpSource(srv.url, policy()).fetch_object(object_path(net_bytes), tmp_path / "net", len(net_bytes),
                                                   digest, partial_dir=partial_dir)
        assert [r[1] for r in srv.requests] == [None]
    assert (tmp_path / "net").read_bytes() == net_bytes and files_in(partial_dir) == []


def test_a_partial_locked_by_another_download_is_left_to_it(net_bytes, tmp_path):
    """The second of two concurrent downloads of one object writes its own temp file."""
    digest, partial_dir = sha(net_bytes), tmp_path / "partial"
    other = StagedFile.open(tmp_path / "net", digest, partial_dir, limit=len(net_bytes))
    other.append(b"held by another download")
    other.file.flush()
    try:
        with scripted_server(served(net_bytes)) as srv:
            HttpSource(srv.url, policy()).fetch_object(object_path(net_bytes), tmp_path / "net",
                                                       len(net_bytes), digest, partial_dir=partial_dir)
            assert [r[1] for r in srv.requests] == [None]
        assert (tmp_path / "net").read_bytes() == net_bytes
        assert (partial_dir / f"{digest}.part").read_bytes() == b"held by another download"
        assert files_in(tmp_path) == ["net", "partial", f"partial/{digest}.part"]
    finally:
        other.close()


def test_a_symlink_in_place_of_a_partial_is_refused(net_bytes, tmp_path):
    digest, partial_dir = sha(net_bytes), tmp_path / "partial"
    partial_dir.mkdir()
    victim = tmp_path / "victim"
    victim.write_bytes(b"keep me")
    (partial_dir / f"{digest}.part").symlink_to(victim)
    with scripted_server(served(net_bytes)) as srv:
        with pytest.raises(DownloadError, match="a symlink where a partial download belongs"):
            HttpSource(srv.url, policy()).fetch_object(object_path(net_bytes), tmp_path / "net",
                                                       len(net_bytes), digest, partial_dir=partial_dir)
        linked_dir = tmp_path / "linked"
        linked_dir.symlink_to(tmp_path / "elsewhere", target_is_directory=True)
        with pytest.raises(DownloadError, match="partial download folder is a symlink"):
            HttpSource(srv.url, policy()).fetch_object(object_path(net_bytes), tmp_path / "net",
                                                       len(net_bytes), digest, partial_dir=linked_dir)
        assert srv.requests == []
    assert victim.read_bytes() == b"keep me" and not (tmp_path / "net").exists()
    assert not (tmp_path / "elsewhere").exists()


# -- sweeping --------------------------------------------------------------------------------------

HOLDER = textwrap.dedent("""
    import sys, time
    from pathlib import Path
    from lc0weights.client.staging import StagedFile
    staged = StagedFile.open(Path(sys.argv[1]), sys.argv[2], sys.argv[3])
    staged.append(b"live")
    staged.file.flush()
    print("locked", flush=True)
    time.sleep(60)
""")


def age(path: Path, seconds: float) -> None:
    old = time.time() - seconds
    os.utime(path, (old, old), follow_symlinks=False)


def test_sweep_removes_what_dead_processes_left_and_leaves_live_files_alone(tmp_path):
    cache = tmp_path / "cache"
    cache.mkdir()
    live_digest, dead_digest = "a" * 64, "b" * 64
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(cache / "x"), live_digest, str(cache)],
                              cwd=ROOT, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        (cache / f"{dead_digest}.part").write_bytes(b"abandoned")
        (cache / f".{'c' * 64}.pb.gz.x1y2.tmp").write_bytes(b"abandoned temp")
        (cache / ".young.tmp").write_bytes(b"just written")
        dead_folder = cache / ".fetch-dead"
        dead_folder.mkdir()
        (dead_folder / "step-0").write_bytes(b"abandoned step")
        outside = tmp_path / "outside.tmp"
        outside.write_bytes(b"not the cache's")
        (cache / ".link.tmp").symlink_to(outside)
        kept = cache / "keep.pb.gz"
        kept.write_bytes(b"a net")
        with work_folder(cache) as live_folder:
            (live_folder / "step-0").write_bytes(b"in use")
            for p in [*cache.iterdir(), dead_folder / "step-0", live_folder / "step-0", outside]:
                if p.name != ".young.tmp":
                    age(p, 7200)
            removed = sweep_stale(cache, min_age_seconds=3600)
            assert sorted(p.name for p in removed) == sorted(
                [f"{dead_digest}.part", f".{'c' * 64}.pb.gz.x1y2.tmp", ".fetch-dead"])
            assert (cache / f"{live_digest}.part").read_bytes() == b"live"   # locked by a live process
            assert (live_folder / "step-0").read_bytes() == b"in use"         # locked work folder
            assert (cache / ".young.tmp").exists() and kept.exists()
            assert (cache / ".link.tmp").is_symlink() and outside.read_bytes() == b"not the cache's"
    finally:
        holder.kill()
        holder.wait()
    # Once its process is gone, the partial is abandoned: kept while young, swept when old.
    assert sweep_stale(cache, 3600, partial_min_age_seconds=7 * 24 * 3600) == []
    age(cache / f"{live_digest}.part", 8 * 24 * 3600)
    assert [p.name for p in sweep_stale(cache, 3600, partial_min_age_seconds=7 * 24 * 3600)] == [
        f"{live_digest}.part"]
    assert not live_folder.exists()                           # removed on leaving work_folder


# -- failures that say which -----------------------------------------------------------------------

def _refusing_port() -> tuple[socket.socket, int]:
    """A loopback port that is bound but not listening: connecting to it is refused."""
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    return s, s.getsockname()[1]


def test_connection_refused_is_named(tmp_path):
    sock, port = _refusing_port()
    with sock:
        with pytest.raises(DownloadError) as err:
            HttpSource(f"http://127.0.0.1:{port}/", policy(retries=1)).read_document("timestamp.json", 1000)
    message = str(err.value)
    assert f"cannot read timestamp.json: connection refused by 127.0.0.1:{port} (waited " in message
    assert "over 2 attempts); is the server running" in message and "\n" not in message


def test_name_resolution_failure_is_named():
    with pytest.raises(DownloadError) as err:
        HttpSource("http://no-such-host.invalid/", policy(retries=0)).read_document("root.json", 1000)
    message = str(err.value)
    assert "cannot resolve the host name 'no-such-host.invalid'" in message
    assert "over 1 attempt); check the URL" in message and "\n" not in message


def test_tls_to_a_plain_http_server_is_named(net_bytes):
    with scripted_server(served(net_bytes)) as srv:
        tls_url = srv.url.replace("http://", "https://")
        with pytest.raises(DownloadError) as err:
            HttpSource(tls_url, policy(retries=3)).read_document("root.json", 1000)
    message = str(err.value)
    assert "TLS failed with 127.0.0.1:" in message and "use an http:// URL" in message
    assert "over 1 attempt)" in message                        # not retried: it cannot get better


def test_silence_is_a_timeout_with_the_seconds_waited(net_bytes, tmp_path):
    data = net_bytes[:100]
    with scripted_server({"/root.json": data}, {"/root.json": ["trickle-headers"]}, tick=1.0) as srv:
        with pytest.raises(DownloadError) as err:
            HttpSource(srv.url, policy(timeout=0.3, retries=1)).read_document("root.json", 1000)
    assert "timed out: no data from 127.0.0.1:" in str(err.value) and "for 0.3 s" in str(err.value)


def test_http_status_is_named(net_bytes):
    with scripted_server({}) as srv:
        with pytest.raises(DownloadError, match=r"cannot read root.json: HTTP 404 Not Found; is the URL"):
            HttpSource(srv.url, policy()).read_document("root.json", 1000)
        assert len(srv.requests) == 1                        # a 404 is not retried
    with scripted_server({"/root.json": b"{}"}, {"/root.json": ["503"]}) as srv:
        with pytest.raises(DownloadError, match=r"HTTP 503 Service Unavailable \(waited .* over 3 attempt"):
            HttpSource(srv.url, policy()).read_document("root.json", 1000)


@pytest.mark.parametrize("setting", [
    dict(timeout=0), dict(timeout=-1), dict(timeout=float("nan")), dict(timeout=float("inf")),
    dict(timeout=1e300), dict(retries=-1), dict(retries=1.5), dict(min_rate=0),
    dict(allowance=-1), dict(byte_budget=0), dict(backoff=float("inf"))])
def test_out_of_range_settings_are_one_line_value_errors(setting):
    with pytest.raises(PolicyError) as err:
        TransferPolicy(**setting)
    name = next(iter(setting))
    assert isinstance(err.value, ValueError)
    assert str(err.value).startswith(f"{name} must be") and "\n" not in str(err.value)


# -- top documents ---------------------------------------------------------------------------------

def test_redirect_is_followed_without_reading_its_body(net_bytes, tmp_path):
    path = "/" + object_path(net_bytes)
    with scripted_server(served(net_bytes), {path: ["redirect-endless", "ok"]}) as srv:
        source = HttpSource(srv.url, policy())
        source.fetch_object(object_path(net_bytes), tmp_path / "net", len(net_bytes), sha(net_bytes))
        assert len(srv.requests) == 2
    assert source.bytes_downloaded == len(net_bytes)
    assert (tmp_path / "net").read_bytes() == net_bytes


def test_document_etag_gives_not_modified(net_bytes):
    doc = net_bytes[:500]
    with scripted_server({"/timestamp.json": doc}) as srv:
        source = HttpSource(srv.url, policy())
        first = source.read_document("timestamp.json", 1000)
        again = source.read_document("timestamp.json", 1000, etag=first.etag)
        assert srv.requests[-1][2] == first.etag
    assert first.data == doc and not first.not_modified and first.transferred == len(doc)
    assert again.data is None and again.not_modified and again.etag == first.etag and again.transferred == 0
    assert source.bytes_downloaded == len(doc)


def test_document_over_max_bytes_is_refused_without_reading_on(net_bytes):
    with scripted_server({"/root.json": b""}, {"/root.json": ["endless"]}) as srv:
        source = HttpSource(srv.url, policy())
        with pytest.raises(DownloadError, match="larger than the 100,000 bytes allowed"):
            source.read_document("root.json", 100_000)
    assert 100_000 < source.bytes_downloaded <= 100_000 + (1 << 16)
    with scripted_server({"/root.json": net_bytes}) as srv:
        with pytest.raises(DownloadError, match=f"{len(net_bytes):,} bytes, more than the 1,000 allowed"):
            HttpSource(srv.url, policy()).read_document("root.json", 1000)


def test_local_documents_are_read_but_never_through_a_link_out_of_the_root(tmp_path):
    repo, outside = tmp_path / "repo", tmp_path / "secret"
    repo.mkdir()
    outside.write_bytes(b"not the repository's")
    (repo / "root.json").write_bytes(b'{"signed": {}}')
    (repo / "timestamp.json").symlink_to(outside)
    source = LocalSource(repo, policy())
    reply = source.read_document("root.json", 1000, etag='"anything"')
    assert reply.data == b'{"signed": {}}' and not reply.not_modified and reply.transferred == 14
    with pytest.raises(DownloadError, match="outside the repository"):
        source.read_document("timestamp.json", 1000)
    with pytest.raises(DownloadError, match="larger than the 5 bytes allowed"):
        source.read_document("root.json", 5)
    os.mkfifo(repo / "fifo.json")                             # would block a plain open() for ever
    with pytest.raises(DownloadError, match="not a regular file; refused"):
        source.read_document("fifo.json", 1000)
    with pytest.raises(DownloadError, match="No such file"):
        source.read_document("missing.json", 1000)


@pytest.mark.parametrize("name", ["../secret", "/etc/passwd", "//evil.example/x", "a/../../b", ""])
def test_document_names_cannot_leave_the_repository(name, tmp_path):
    for source in (HttpSource("http://127.0.0.1:9/", policy()), LocalSource(tmp_path, policy())):
        with pytest.raises(DownloadError, match="not a repository path"):
            source.read_document(name, 1000)


def test_local_objects_obey_size_hash_and_budget(net_bytes, tmp_path):
    repo = tmp_path / "repo"
    (repo / "nets").mkdir(parents=True)
    (repo / object_path(net_bytes)).write_bytes(net_bytes)
    out = tmp_path / "out"
    out.mkdir()
    source = LocalSource(repo, policy())
    read = source.fetch_object(object_path(net_bytes), out / "net", len(net_bytes), sha(net_bytes))
    assert read == len(net_bytes) == source.bytes_downloaded
    assert (out / "net").read_bytes() == net_bytes
    with pytest.raises(IntegrityError):
        source.fetch_object(object_path(net_bytes), out / "bad", len(net_bytes), "0" * 64)
    small = LocalSource(repo, policy(byte_budget=1000))
    with pytest.raises(DownloadError, match="byte budget"):
        small.fetch_object(object_path(net_bytes), out / "big", len(net_bytes), sha(net_bytes))
    assert files_in(out) == ["net"]
