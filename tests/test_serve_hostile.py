"""The built-in server under hostile requests: names outside the layout, symlinks out of the
repository, slowloris and connection floods, huge heads, bodies on GET, giant Range values.

Each test builds its hostile input itself; counts and times are small and bounded. Floods run
against a server in a child process with a low descriptor limit, so the test can read the
server's own descriptors and peak memory from /proc.
"""
from __future__ import annotations

import hashlib
import os
import resource
import shutil
import socket
import subprocess
import sys
import threading
import time
from contextlib import closing, contextmanager
from pathlib import Path

import pytest

from service.serve import RepositoryServer, ServerLimits, parse_range, within_descriptor_limit

from repo_fixtures import connect, running

ROOT = Path(__file__).resolve().parents[1]
OBJECT = bytes(range(256)) * 40                     # 10240 bytes
SHA = hashlib.sha256(OBJECT).hexdigest()
NET_ID = "ab" * 32
SECRET = b"secret outside the repository"


def build_repository(root: Path) -> Path:
    for folder in ("nets", "patches", "records", ".state"):
        (root / folder).mkdir(parents=True, exist_ok=True)
    (root / "root.json").write_bytes(b'{"signed": "root"}\n')
    (root / "timestamp.json").write_bytes(b'{"signed": "timestamp"}\n')
    (root / "records" / f"{NET_ID}.json").write_bytes(b'{"record": 1}\n')
    (root / "nets" / f"{NET_ID}.pb.gz").write_bytes(b"\x1f\x8b net bytes")
    (root / "patches" / f"{SHA}.lc0patch").write_bytes(OBJECT)
    (root / ".state" / "lock").write_bytes(b"")
    return root


@contextmanager
def in_process(root: Path, **limits):
    with running(RepositoryServer(root, limits=ServerLimits(**limits))) as server:
        yield server


_CHILD = """
import logging, sys
from service.serve import RepositoryServer, ServerLimits
limits = ServerLimits(**eval(sys.argv[2]))
server = RepositoryServer(sys.argv[1], limits=limits)
print(server.server_address[1], flush=True)
server.serve_forever()
"""


@contextmanager
def child_server(root: Path, nofile: int = 64, **limits):
    """A server in its own process with at most ``nofile`` descriptors; yields (pid, port)."""
    def limit():
        resource.setrlimit(resource.RLIMIT_NOFILE, (nofile, nofile))
    proc = subprocess.Popen([sys.executable, "-c", _CHILD, str(root), repr(limits)], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, preexec_fn=limit)
    try:
        port = int(proc.stdout.readline())
        yield proc.pid, port
        assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
    finally:
        proc.kill()
        proc.wait(timeout=10)


_unread: dict[int, bytes] = {}       # bytes received past the response read, per socket


def read_response(s: socket.socket, to_head: bool = False) -> tuple[int, dict, bytes]:
    """One response: (status, headers, body); status 0 when the server closed without one."""
    data = _unread.pop(s.fileno(), b"")
    while b"\r\n\r\n" not in data:
        try:
            chunk = s.recv(65536)
        except (ConnectionResetError, TimeoutError):
            chunk = b""
        if not chunk:
            return 0, {}, data
        data += chunk
    head, body = data.split(b"\r\n\r\n", 1)
    lines = head.decode("latin-1").split("\r\n")
    headers = {k.strip().lower(): v.strip() for k, v in (line.split(":", 1) for line in lines[1:])}
    bodiless = to_head or lines[0].startswith("HTTP/1.1 304")
    length = 0 if bodiless else int(headers.get("content-length", 0))
    while len(body) < length:
        chunk = s.recv(65536)
        if not chunk:
            break
        body += chunk
    _unread[s.fileno()] = body[length:]
    return int(lines[0].split()[1]), headers, body[:length]


def request(port: int, raw: bytes, source: str = "127.0.0.1") -> tuple[int, dict, bytes]:
    with closing(connect(port, source)) as s:
        s.sendall(raw)
        return read_response(s)


def get(port: int, path: str, *headers: str, source: str = "127.0.0.1"):
    extra = "".join(h + "\r\n" for h in headers)
    return request(port, f"GET {path} HTTP/1.1\r\nHost: x\r\n{extra}Connection: close\r\n\r\n".encode(),
                   source)


def closed_by_server(s: socket.socket) -> bool:
    """True when the server has closed (or refused) this connection."""
    try:
        s.settimeout(0.05)
        data = s.recv(4096)
        return data == b"" or data.startswith(b"HTTP/1.1 503")
    except TimeoutError:
        return False
    except OSError:
        return True


def descriptors(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def peak_rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    raise AssertionError("no VmHWM")


OUTSIDE_LAYOUT = [
    "README.txt", "nets/notes.txt", f"patches/{SHA}.lc0patch.bak", f"records/{NET_ID.upper()}.json",
    f"nets/{NET_ID}.json", f"records/{NET_ID}.pb.gz", f"other/{NET_ID}.json", f"nets/{NET_ID[:-1]}.pb.gz",
    f"patches/.{SHA}.lc0patch.abc.tmp", ".state/lock", "index.json", "index.json.bak", "nets/sub/index.json"]


@pytest.fixture
def repo(tmp_path):
    return build_repository(tmp_path / "repo")


@pytest.fixture(scope="module")
def shared(tmp_path_factory):
    """One server for the tests that only read: (repository root, port)."""
    root = build_repository(tmp_path_factory.mktemp("shared") / "repo")
    for name in OUTSIDE_LAYOUT:
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(SECRET)
    with in_process(root) as srv:
        yield root, srv.server_address[1]


# -- only the layout, never through a symlink ----------------------------------------------------
def test_every_layout_name_is_served_with_its_caching(shared):
    repo, port = shared
    for name in ("root.json", "timestamp.json"):
        status, headers, body = get(port, f"/{name}")
        assert status == 200 and body == (repo / name).read_bytes()
        assert headers["cache-control"] == "no-cache"
        assert headers["etag"] == f'"{hashlib.sha256(body).hexdigest()}"'
        assert headers["content-type"] == "application/json"
        assert get(port, f"/{name}", f"If-None-Match: {headers['etag']}")[0] == 304
    for path, tag in ((f"/records/{NET_ID}.json", NET_ID), (f"/nets/{NET_ID}.pb.gz", NET_ID),
                      (f"/patches/{SHA}.lc0patch", SHA)):
        status, headers, body = get(port, path)
        assert status == 200 and body == (repo / path[1:]).read_bytes()
        assert headers["etag"] == f'"{tag}"' and "immutable" in headers["cache-control"]
        assert get(port, path, f'If-None-Match: "{tag}"')[0] == 304


def test_a_replaced_top_document_gets_a_new_etag(repo):
    with in_process(repo) as srv:
        port = srv.server_address[1]
        first = get(port, "/timestamp.json")[1]["etag"]
        tmp = repo / ".timestamp.json.x.tmp"
        tmp.write_bytes(b'{"signed": "timestamp 2"}\n')
        os.replace(tmp, repo / "timestamp.json")
        status, headers, body = get(port, "/timestamp.json", f"If-None-Match: {first}")
        assert status == 200 and body == b'{"signed": "timestamp 2"}\n'
        assert headers["etag"] == f'"{hashlib.sha256(body).hexdigest()}"' != first


@pytest.mark.parametrize("name", OUTSIDE_LAYOUT)
def test_files_outside_the_layout_are_never_served(shared, name):
    status, _, body = get(shared[1], "/" + name)
    assert status == 404 and SECRET not in body


def test_symlinks_out_of_the_repository_are_not_followed(repo, tmp_path):
    outside = tmp_path / "outside"
    (outside / "records").mkdir(parents=True)
    (outside / "secret").write_bytes(SECRET)
    other_id = "cd" * 32
    (outside / "records" / f"{other_id}.json").write_bytes(SECRET)
    (repo / "rootlink").symlink_to("/")
    (repo / "timestamp.json").unlink()
    (repo / "timestamp.json").symlink_to(outside / "secret")            # a document
    (repo / "nets" / f"{other_id}.pb.gz").symlink_to(outside / "secret")  # an object
    (repo / "patches" / f"{'ee' * 32}.lc0patch").symlink_to("/etc/passwd")
    (repo / "records").rename(repo / "records-real")
    (repo / "records").symlink_to(outside / "records")              # a whole folder
    with in_process(repo) as srv:
        port = srv.server_address[1]
        for path in ("/timestamp.json", f"/nets/{other_id}.pb.gz", f"/patches/{'ee' * 32}.lc0patch",
                     f"/records/{other_id}.json", "/rootlink/etc/passwd", "/rootlink/etc/shadow"):
            status, _, body = get(port, path)
            assert status == 404 and SECRET not in body and b"root:" not in body, path
        assert get(port, f"/patches/{SHA}.lc0patch")[0] == 200      # the rest is still served


def test_a_fifo_with_an_object_name_is_a_404_not_a_hang(repo):
    os.mkfifo(repo / "patches" / f"{'ff' * 32}.lc0patch")
    with in_process(repo) as srv:
        assert get(srv.server_address[1], f"/patches/{'ff' * 32}.lc0patch")[0] == 404


# -- request heads, bodies and ranges ------------------------------------------------------------
def test_oversized_heads_get_431_or_414(shared):
    port = shared[1]
    many = "".join(f"X-H{i}: v\r\n" for i in range(65))
    assert request(port, f"GET /timestamp.json HTTP/1.1\r\n{many}\r\n".encode())[0] == 431
    long_line = "X-Big: " + "a" * 9000
    assert request(port, f"GET /timestamp.json HTTP/1.1\r\n{long_line}\r\n\r\n".encode())[0] == 431
    huge = "".join(f"X-H{i}: {'b' * 4000}\r\n" for i in range(6))     # 24 KB in all
    assert request(port, f"GET /timestamp.json HTTP/1.1\r\n{huge}\r\n".encode())[0] == 431
    assert request(port, f"GET /{'a' * 3000} HTTP/1.1\r\n\r\n".encode())[0] == 414
    assert request(port, b"GET /timestamp.json\r\n\r\n")[0] == 400          # HTTP/0.9 style
    assert request(port, b"GET /timestamp.json HTTP/2.0\r\n\r\n")[0] == 505
    assert request(port, b"GET /timestamp.json HTTP/1.1\r\n folded\r\n\r\n")[0] == 400
    assert get(port, "/timestamp.json")[0] == 200


def test_a_body_on_get_is_drained_not_parsed_as_a_second_request(shared):
    smuggled = b"GET /patches/" + SHA.encode() + b".lc0patch HTTP/1.1\r\nHost: x\r\n\r\n"
    port = shared[1]
    with closing(connect(port)) as s:
        s.sendall(b"GET /timestamp.json HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % len(smuggled)
                  + smuggled)
        status, headers, body = read_response(s)
        assert status == 200 and body == b'{"signed": "timestamp"}\n' and headers["connection"] == "close"
        assert read_response(s)[0] == 0                  # nothing answered the smuggled request
    for head in ("Content-Length: 1000000", "Transfer-Encoding: chunked",
                 "Content-Length: 1\r\nContent-Length: 2", "Content-Length: -1"):
        status, headers, _ = request(port, f"GET /timestamp.json HTTP/1.1\r\n{head}\r\n\r\n".encode())
        assert status in (413, 400) and headers["connection"] == "close", head
    assert request(port, b"POST /timestamp.json HTTP/1.1\r\nContent-Length: 0\r\n\r\n")[:1] == (405,)


def test_keep_alive_and_pipelined_requests_are_answered_in_order(shared):
    with closing(connect(shared[1])) as s:
        s.sendall(b"GET /timestamp.json HTTP/1.1\r\nHost: x\r\n\r\n"
                  b"HEAD /root.json HTTP/1.1\r\nHost: x\r\n\r\n"
                  b"GET /patches/" + SHA.encode() + b".lc0patch HTTP/1.1\r\nRange: bytes=0-9\r\n\r\n")
        assert read_response(s)[2] == b'{"signed": "timestamp"}\n'
        status, headers, _ = read_response(s, to_head=True)
        assert status == 200 and headers["content-length"] == str(len(b'{"signed": "root"}\n'))
        assert read_response(s)[::2] == (206, OBJECT[:10])


@pytest.mark.parametrize("header,status,start,end", [
    ("bytes=" + "9" * 5000 + "-", 416, None, None),
    ("bytes=0-" + "9" * 5000, 206, 0, len(OBJECT) - 1),
    ("bytes=-" + "9" * 5000, 206, 0, len(OBJECT) - 1),
    ("bytes=" + "0" * 5000 + "7-9", 206, 7, 9),
    ("bytes=" + "1" * 20 + "-" + "2" * 20, 416, None, None),
    ("bytes=5-2", 416, None, None),
    ("bytes=abc", 200, 0, len(OBJECT) - 1),
    ("bytes=1-2-3", 200, 0, len(OBJECT) - 1),
    ("bytes=\u0661-\u0662", 200, 0, len(OBJECT) - 1),     # non-ASCII digits are not numbers here
    ("items=0-1", 200, 0, len(OBJECT) - 1)])
def test_giant_and_malformed_ranges(shared, header, status, start, end):
    port = shared[1]
    raw = f"GET /patches/{SHA}.lc0patch HTTP/1.1\r\nRange: {header}\r\nConnection: close\r\n\r\n"
    got, headers, body = request(port, raw.encode("utf-8"))
    assert got == status
    if start is not None:
        assert body == OBJECT[start:end + 1]
    else:
        assert headers["content-range"] == f"bytes */{len(OBJECT)}"
    assert get(port, "/timestamp.json")[0] == 200            # and the server carries on


def test_parse_range_never_builds_giant_integers():
    assert parse_range("bytes=" + "9" * 100_000 + "-", 10) == "unsatisfiable"
    assert parse_range("bytes=3-" + "9" * 100_000, 10) == (3, 9)
    assert parse_range("bytes=-" + "9" * 100_000, 10) == (0, 9)
    assert parse_range("bytes=-5", 0) == "unsatisfiable"


# -- slow and numerous clients ------------------------------------------------------------------
def test_a_client_trickling_its_head_is_cut_at_the_deadline(repo):
    head = b"GET /timestamp.json HTTP/1.1\r\n" + b"".join(b"X-%d: y\r\n" % i for i in range(60)) + b"\r\n"
    with in_process(repo, request_timeout=1.0) as srv:
        with closing(connect(srv.server_address[1])) as s:
            started = time.monotonic()
            cut = False
            for byte in head:                      # 600+ bytes at one per 20 ms: 12 s if never cut
                try:
                    s.send(bytes([byte]))
                except OSError:
                    cut = True
                    break
                if closed_by_server(s):
                    cut = True
                    break
                time.sleep(0.02)
            assert cut, "the server waited for the whole trickled head"
            assert time.monotonic() - started < 6


def test_slowloris_flood_neither_exhausts_descriptors_nor_locks_out_other_clients(repo):
    limits = dict(max_connections=16, max_per_client=8, max_waiting=32, request_timeout=1.0)
    with child_server(repo, nofile=128, **limits) as (pid, port):
        idle_fds = descriptors(pid)
        flood = []
        try:
            for i in range(200):                   # more than the descriptor limit, from 15 addresses
                s = connect(port, source=f"127.0.0.{2 + i % 15}")
                s.sendall(b"GET /timestamp.json HTTP/1.1\r\nX-a: ")
                flood.append(s)
            time.sleep(0.3)
            assert descriptors(pid) <= idle_fds + 16 + 32 + 2    # slots, waiting room, one refusal
            # a new address gets in once the flood's slots expire, however many wait
            status, deadline = 0, time.monotonic() + 15
            while status != 200 and time.monotonic() < deadline:
                try:
                    status = get(port, "/timestamp.json", source="127.0.0.200")[0]
                except OSError:
                    status = 0
                if status != 200:
                    time.sleep(0.2)
            assert status == 200
            deadline = time.monotonic() + 10
            while not all(closed_by_server(s) for s in flood) and time.monotonic() < deadline:
                time.sleep(0.2)
            assert all(closed_by_server(s) for s in flood)
        finally:
            for s in flood:
                s.close()


def test_one_address_cannot_take_every_slot(repo):
    with in_process(repo, max_connections=16, max_per_client=4, request_timeout=5.0) as srv:
        port = srv.server_address[1]
        hogs = [connect(port, source="127.0.0.9") for _ in range(10)]
        try:
            for s in hogs:
                s.sendall(b"GET /timestamp.json HTTP/1.1\r\n")
            time.sleep(0.2)
            assert sum(closed_by_server(s) for s in hogs) == 2       # 4 served, 4 waiting, 2 refused
            assert get(port, "/timestamp.json", source="127.0.0.10")[0] == 200
        finally:
            for s in hogs:
                s.close()


def test_connections_beyond_the_cap_wait_for_a_slot_and_are_then_served(repo):
    with in_process(repo, max_connections=2, max_per_client=2, queue_timeout=10.0) as srv:
        port = srv.server_address[1]
        results = []

        def client(i):
            results.append(get(port, f"/patches/{SHA}.lc0patch", source=f"127.0.0.{20 + i}")[2] == OBJECT)
        threads = [threading.Thread(target=client, args=(i,)) for i in range(12)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
        assert results == [True] * 12


def test_a_client_that_never_reads_loses_its_slot(repo):
    big_id = "12" * 32
    (repo / "nets" / f"{big_id}.pb.gz").write_bytes(os.urandom(16 << 20))
    with in_process(repo, max_connections=1, max_per_client=1, send_timeout=1.0,
                    request_timeout=1.0, queue_timeout=20.0) as srv:
        port = srv.server_address[1]
        stuck = socket.socket()
        stuck.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        stuck.bind(("127.0.0.30", 0))
        stuck.connect(("127.0.0.1", port))
        try:
            stuck.sendall(f"GET /nets/{big_id}.pb.gz HTTP/1.1\r\n\r\n".encode())
            time.sleep(0.3)                            # it holds the only slot, reading nothing
            assert get(port, "/timestamp.json", source="127.0.0.31")[0] == 200
        finally:
            stuck.close()


def test_descriptor_limit_shrinks_the_caps():
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (100, hard))
    try:
        limits = within_descriptor_limit(ServerLimits(max_connections=64, max_waiting=128))
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    assert limits.max_connections == 17 and limits.max_waiting == 0 and limits.max_per_client == 17


def test_huge_header_floods_take_bounded_memory(repo):
    header = b"X-Big: " + b"h" * (64 * 1024 - 9) + b"\r\n"
    with child_server(repo, nofile=256, max_connections=64, max_per_client=64) as (pid, port):
        get(port, "/timestamp.json")
        before = peak_rss_kb(pid)
        statuses = []

        def attack():
            try:
                with closing(connect(port, timeout=10)) as s:
                    s.sendall(b"GET /timestamp.json HTTP/1.1\r\n")
                    for _ in range(98):            # 6.4 MB of headers, if the server would read them
                        s.sendall(header)
                    statuses.append(read_response(s)[0])
            except OSError:
                statuses.append("reset")
        threads = [threading.Thread(target=attack) for _ in range(40)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
        grown_mb = (peak_rss_kb(pid) - before) / 1024
        assert len(statuses) == 40 and set(statuses) <= {431, "reset"}, statuses
        assert grown_mb < 40, f"server grew by {grown_mb:.0f} MB"
        assert get(port, "/timestamp.json")[0] == 200


# -- the nginx front documented in docs/SECURITY.md -----------------------------------------------
NGINX = shutil.which("nginx") or next((p for p in ("/usr/sbin/nginx",) if os.access(p, os.X_OK)), None)


def documented_nginx_config(root: Path, port: int, prefix: Path) -> str:
    text = (ROOT / "docs" / "SECURITY.md").read_text()
    block = text.split("```nginx\n", 1)[1].split("```", 1)[0]
    http_part, server_part = block.split("server {", 1)
    server_part = ("server {" + server_part).replace("listen 80;", f"listen 127.0.0.1:{port};")
    server_part = server_part.replace("/srv/lc0weights/repo", str(root))
    return f"""
worker_processes 1;
daemon off;
pid {prefix}/nginx.pid;
error_log {prefix}/error.log warn;
{"user root;" if os.geteuid() == 0 else ""}
events {{ worker_connections 64; }}
http {{
    access_log off;
    client_body_temp_path {prefix}/body;
    proxy_temp_path {prefix}/proxy;
    fastcgi_temp_path {prefix}/fastcgi;
    uwsgi_temp_path {prefix}/uwsgi;
    scgi_temp_path {prefix}/scgi;
    {http_part}
    {server_part}
}}
"""


def test_the_documented_nginx_front_serves_exactly_the_layout(tmp_path):
    if NGINX is None:
        if os.environ.get("CI"):
            pytest.fail("nginx is required in CI")
        pytest.skip("nginx is not installed")
    root = build_repository(tmp_path / "repo")
    for name in OUTSIDE_LAYOUT:
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(SECRET)
    (tmp_path / "secret").write_bytes(SECRET)
    (root / "nets" / f"{'cd' * 32}.pb.gz").symlink_to(tmp_path / "secret")
    (root / "rootlink").symlink_to("/")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    prefix = tmp_path / "nginx"
    prefix.mkdir()
    (prefix / "nginx.conf").write_text(documented_nginx_config(root, port, prefix))
    proc = subprocess.Popen([NGINX, "-p", str(prefix), "-c", str(prefix / "nginx.conf")],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                break
            except OSError:
                assert proc.poll() is None, proc.stderr.read().decode()[-1000:]
                assert time.monotonic() < deadline, "nginx did not start"
                time.sleep(0.05)
        for name in ("root.json", "timestamp.json"):
            status, headers, body = get(port, f"/{name}")
            assert status == 200 and body == (root / name).read_bytes()
            assert headers["cache-control"] == "no-cache"
            assert get(port, f"/{name}", f"If-None-Match: {headers['etag']}")[0] == 304
        for path in (f"/records/{NET_ID}.json", f"/nets/{NET_ID}.pb.gz", f"/patches/{SHA}.lc0patch"):
            status, headers, body = get(port, path)
            assert status == 200 and body == (root / path[1:]).read_bytes()
            assert headers["cache-control"] == "public, max-age=31536000, immutable"
        assert get(port, f"/patches/{SHA}.lc0patch", "Range: bytes=10-19")[::2] == (206, OBJECT[10:20])
        for name in OUTSIDE_LAYOUT + [f"nets/{'cd' * 32}.pb.gz", "rootlink/etc/passwd"]:
            status, _, body = get(port, "/" + name)
            assert status in (403, 404) and SECRET not in body and b"root:" not in body, name
    finally:
        proc.terminate()
        proc.wait(timeout=10)
