"""Helpers for distribution tests: small published repositories and a fault-injecting server."""
from __future__ import annotations

import shutil
import socket
import threading
import time
from contextlib import contextmanager
from pathlib import Path

from lc0weights.client import check_repository
from service.publish import publish
from service.repository import Repository
from service.serve import RepositoryHandler, RepositoryServer

from conftest import run_paths

FAST_CODEC = "rans1"   # the fast tier's codec (encodes several times faster than the others) keeps publishing quick in tests


def assert_consistent(repo: Repository):
    """The index parses, names only complete objects, and every patch rebuilds its net."""
    index = repo.read_index()
    for entry in index.nets + index.patches:
        assert repo.has_object(entry.path, entry.sha256), entry.path
    report = check_repository(str(repo.root))
    assert report.ok, report.failures
    return index


def publish_run(root: Path, count: int | None = None, skips=(1, 2), tolerance=None, key=None) -> Repository:
    repo = Repository.create(root, key)
    paths = run_paths()[:count] if count else run_paths()
    publish(repo, paths, tolerance=tolerance, codec=FAST_CODEC, skips=skips)
    return repo


@contextmanager
def serving(root, handler_cls=None):
    server = RepositoryServer(root)
    server.handle_error = _quiet_on_hangups(server.handle_error)
    if handler_cls is not None:
        server.RequestHandlerClass = type("H", (handler_cls,), {"root": Path(root).resolve()})
    with running(server):
        yield server


@contextmanager
def running(server):
    """Serve ``server`` from a daemon thread for the block, then shut it down and close it."""
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()


def connect(port: int, source: str = "127.0.0.1", timeout: float = 5.0) -> socket.socket:
    """A socket from ``source`` (another loopback address stands for another client) to a local port."""
    s = socket.socket()
    s.settimeout(timeout)
    s.bind((source, 0))
    s.connect(("127.0.0.1", port))
    return s


def _quiet_on_hangups(handle_error):
    """A client hanging up mid-reply is expected in these tests; print other server errors."""
    import sys

    def handle(request, client_address):
        if not isinstance(sys.exc_info()[1], ConnectionError):
            handle_error(request, client_address)
    return handle


class FaultyHandler(RepositoryHandler):
    """Serves the repository, but first consumes a scripted fault for the requested path.

    ``faults`` maps a URL path ("/patches/x.lc0patch") to a list of actions used
    one per request ("ok", "500", "cut", "hang", "corrupt", "short", "bad-range",
    "ignore-range"); an action "always:X" is never used up. ``calls`` counts
    requests per path and ``ranges`` records the Range headers received.
    """

    faults: dict = {}
    calls: dict = {}
    ranges: dict = {}
    hang_seconds = 3.0
    lock = threading.Lock()

    def _next_fault(self, path: str) -> str:
        with self.lock:
            self.calls[path] = self.calls.get(path, 0) + 1
            self.ranges.setdefault(path, []).append(self.headers.get("Range"))
            actions = self.faults.get(path) or []
            if not actions:
                return "ok"
            if actions[0].startswith("always:"):
                return actions[0].split(":", 1)[1]
            return actions.pop(0)

    def do_GET(self):
        path = self.path.split("?")[0]
        fault = self._next_fault(path)
        if fault == "404":
            return self._raw(404, b"not here")
        file = self._resolve()
        data = file.read_bytes() if file else b""
        if fault == "500":
            return self._raw(500, b"boom")
        if fault == "hang":
            time.sleep(self.hang_seconds)
            return self._raw(503, b"late")
        if fault == "cut":        # promise everything, send half, drop the connection
            self.send_response(200)
            self.send_header("ETag", f'"{file.name.split(".")[0]}"')
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data[:len(data) // 2])
            self.wfile.flush()
            self.close_connection = True
            return
        if fault == "corrupt":
            altered = bytearray(data)
            altered[len(altered) // 2] ^= 0xFF
            return self._raw(200, bytes(altered))
        if fault == "short":
            return self._raw(200, data[:-100])
        if fault == "bad-range" and self.headers.get("Range"):
            self.send_response(206)
            self.send_header("Content-Range", f"bytes 0-{len(data) - 1}/{len(data)}")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)
            return
        if fault == "ignore-range":
            return self._raw(200, data)
        return super().do_GET()

    def _raw(self, status: int, body: bytes):
        self.send_response(status)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


def faulty_handler(**attrs):
    """A fresh FaultyHandler subclass with its own fault script and counters."""
    attrs = {"faults": {}, "calls": {}, "ranges": {}, "lock": threading.Lock(), **attrs}
    return type("Faulty", (FaultyHandler,), attrs)


def copy_into_cache(net_path: Path, cache: Path, net_id: str) -> Path:
    cache.mkdir(parents=True, exist_ok=True)
    dest = cache / f"{net_id}.pb.gz"
    shutil.copyfile(net_path, dest)
    return dest


TRUST_STATE = ".lc0weights-trust"      # what a client remembers of a repository: not a leftover
PARTIALS = ".partial"                   # the folder of resumable downloads (a partial in it is one)
RATES = ".lc0weights-rates.json"        # the client's measured link and rebuild rates: not a leftover
CACHE_STATE = {TRUST_STATE, PARTIALS, ".held-ids.json", RATES}


def leftovers(folder: Path) -> list[str]:
    """Temp or partial files anywhere under ``folder`` (there must be none)."""
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*")
                  if TRUST_STATE not in p.parts and not (p.name == PARTIALS and p.is_dir())
                  and p.name != RATES and (p.name.startswith(".") or p.name.endswith((".tmp", ".part"))))


def cache_files(folder: Path) -> list[str]:
    """The names in a cache folder, the client's trust state aside."""
    return sorted(p.name for p in folder.iterdir() if p.name not in CACHE_STATE)

