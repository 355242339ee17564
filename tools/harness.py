"""Shared benchmark plumbing: run a peer and time it, serve on loopback, write Markdown into BENCHMARKS.md.

Each bench file keeps only what it measures; what they all do lives here:

- measuring: ``run`` (a child process: wall, its own CPU and peak RSS),
  ``timed`` (a call in this process: its result and wall seconds),
  ``median_run`` (a measurement repeated, reported as its median run with
  the spread: ``Runs``);
- serving: ``ServerThread`` (an in-process HTTP server on a thread),
  ``ChildServer`` (a server as a child process), ``ThrottledProxy`` (a link
  of a given rate in front of either);
- reporting: ``command_line`` (how the bench was run, for the section's
  first line), ``md_table``, ``write_section`` (one ``## `` section of a
  Markdown file, replaced in place), ``write_head`` (everything before a
  heading), ``write_text_atomic``, ``machine_line``, ``log``, ``mb``,
  ``seconds``.

Benchmarks drive the command lines as a user would, so each measurement is
one child process: ``run`` starts it, waits for it with ``os.wait4`` and so
gets that child's own CPU time and peak RSS (not a sum over every child the
benchmark ever ran, as RUSAGE_CHILDREN would).
"""
from __future__ import annotations

import os
import platform
import re
import shlex
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]


@dataclass
class Measured:
    """One finished child process: what it printed and what it cost."""

    argv: list[str]
    returncode: int
    stdout: str
    stderr: str
    wall: float           # seconds
    user: float           # CPU seconds
    sys: float
    max_rss: int          # bytes, the child's peak resident set

    @property
    def cpu(self) -> float:
        return self.user + self.sys

    @property
    def command(self) -> str:
        return shell_line(self.argv)

    def check(self) -> Measured:
        """Raise with the child's last words when it failed."""
        if self.returncode:
            raise RuntimeError(f"command failed ({self.returncode}): {self.command}\n{self.stderr[-3000:]}")
        return self


def child_env(extra: dict | None = None) -> dict:
    """The environment children run in: this checkout first on PYTHONPATH."""
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    env.update(extra or {})
    return env


def run(argv, *, cpus: str | None = None, stdout_path: Path | None = None, timeout: float | None = None,
        cwd: Path | None = None, env: dict | None = None) -> Measured:
    """Run ``argv`` to completion; ``cpus`` pins it (``taskset -c``); measure wall, CPU and peak RSS."""
    argv = [str(a) for a in argv]
    if cpus is not None:
        argv = ["taskset", "-c", cpus] + argv
    out = open(stdout_path, "wb") if stdout_path else subprocess.PIPE  # noqa: SIM115 (closed below)
    start = time.perf_counter()
    proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.PIPE, cwd=cwd, env=env or child_env())
    try:
        # The pipes are drained by communicate's threads; the child is reaped below by wait4 only.
        stdout, stderr = _communicate(proc, timeout)
        _, status, usage = os.wait4(proc.pid, 0)
    except BaseException:
        proc.kill()
        raise
    finally:
        if stdout_path:
            out.close()
    wall = time.perf_counter() - start
    proc.returncode = os.waitstatus_to_exitcode(status)
    return Measured(argv, proc.returncode, stdout or "", stderr, wall, usage.ru_utime, usage.ru_stime,
                    usage.ru_maxrss * 1024)


def _communicate(proc: subprocess.Popen, timeout: float | None):
    """Read stdout/stderr to the end without reaping the child (so wait4 gets its rusage)."""
    import threading
    results = {}

    def drain(name, stream):
        results[name] = stream.read().decode(errors="replace") if stream else ""
    threads = [threading.Thread(target=drain, args=(n, s), daemon=True)
               for n, s in (("out", proc.stdout), ("err", proc.stderr))]
    for t in threads:
        t.start()
    deadline = None if timeout is None else time.monotonic() + timeout
    for t in threads:
        t.join(None if deadline is None else max(0.0, deadline - time.monotonic()))
        if t.is_alive():
            raise TimeoutError(f"timed out after {timeout} s: {shell_line(proc.args)}")
    return results["out"], results["err"]


def timed(fn, *args, **kwargs):
    """``fn(*args, **kwargs)`` and the wall seconds it took, as ``(result, seconds)``."""
    start = time.perf_counter()
    result = fn(*args, **kwargs)
    return result, time.perf_counter() - start


@dataclass
class Runs:
    """One measurement run several times: every result in run order, judged by ``key`` (a result's figure,
    e.g. its wall or CPU seconds); ``measured`` finds the ``Measured`` in a result."""

    results: list
    key: Callable[[Any], float]
    measured: Callable[[Any], Measured]

    @property
    def n(self) -> int:
        return len(self.results)

    @property
    def median(self):
        """The median run by ``key`` (an actual run, not an average; of an even count the lower middle one)."""
        return sorted(self.results, key=self.key)[(self.n - 1) // 2]

    @property
    def spread(self) -> tuple[float, float]:
        """The smallest and largest ``key`` over the runs."""
        figures = [self.key(r) for r in self.results]
        return min(figures), max(figures)

    @property
    def max_rss(self) -> int:
        """The highest peak RSS of any run: a peak is a peak, not a median."""
        return max(self.measured(r).max_rss for r in self.results)

    def spread_text(self, unit: str = "s") -> str:
        """``median of 3: 4.30-4.62 s`` (the runs' lowest and highest ``key``); empty for a single run."""
        if self.n == 1:
            return ""
        low, high = self.spread
        return f"median of {self.n}: {low:.2f}-{high:.2f} {unit}"

    def note(self, unit: str = "s") -> str:
        """`` (median of 3: 4.30-4.62 s)`` to follow the median's figure; empty for a single run."""
        return f" ({self.spread_text(unit)})" if self.n > 1 else ""


def median_run(runner: Callable[[], Any], n: int, key: Callable[[Any], float], *, first=None,
               measured: Callable[[Any], Measured] | None = None) -> Runs:
    """Call ``runner()`` until there are ``n`` results (``first``, a result already in hand, counts as
    the first of them) and return them as ``Runs``: its ``median`` by ``key``, ``spread`` and ``max_rss``.
    A result is a ``Measured`` or holds one (``measured`` finds it).

    Each call must start from the same state (the runner's job), so the runs differ only by the
    machine's noise.
    """
    if n < 1:
        raise ValueError(f"need at least one run, not {n}")
    results = [] if first is None else [first]
    while len(results) < n:
        results.append(runner())
    return Runs(results, key, measured or (lambda r: r))


def log(msg) -> None:
    """Progress for the person running the bench: stderr, at once (stdout may be the report)."""
    print(msg, file=sys.stderr, flush=True)


def command_line(script: str, argv=None) -> str:
    """How a bench was run, as a user would type it: ``.venv/bin/python tools/x.py ARGS`` (``argv`` default: sys.argv)."""
    args = sys.argv[1:] if argv is None else argv
    return " ".join([".venv/bin/python", script] + [shlex.quote(str(a)) for a in args])


def shell_line(argv) -> str:
    """A command as one would type it: this Python shown as ``python``, paths kept short."""
    words = ["python" if a == sys.executable else a for a in map(str, argv)]
    return " ".join(shlex.quote(w) for w in words)


def md_table(header, rows, align: str | None = None) -> str:
    """A Markdown table; ``align`` is one letter a column, ``l`` or ``r`` (default: the first left, the rest right)."""
    align = align or "l" + "r" * (len(header) - 1)
    lines = ["| " + " | ".join(header) + " |",
             "|" + "|".join("---" if a == "l" else "---:" for a in align) + "|"]
    lines += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
    return "\n".join(lines)


def write_text_atomic(path: Path, text: str) -> None:
    """Write by temp file and rename: a reader sees the old text or the new, never half of it."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def write_section(path: Path, section: str) -> None:
    """Put ``section`` (starting with its ``## heading``) into a Markdown file, replacing one of that heading.

    The old section runs to the next ``## `` heading or the end; a new one goes at the end.
    """
    path = Path(path)
    text = path.read_text() if path.exists() else "# Benchmarks\n"
    heading = section.splitlines()[0]
    pattern = re.compile(rf"^{re.escape(heading)}\n.*?(?=^## |\Z)", re.MULTILINE | re.DOTALL)
    if pattern.search(text):
        text = pattern.sub(lambda _: section.rstrip("\n") + "\n\n", text, count=1).rstrip("\n") + "\n"
    else:
        text = text.rstrip("\n") + "\n\n" + section.rstrip("\n") + "\n"
    write_text_atomic(path, text)


def write_head(path: Path, head: str, keep_from: str) -> None:
    """Replace what comes before the line ``keep_from`` (a heading) with ``head``; all of it if absent."""
    path = Path(path)
    keep = ""
    if path.exists():
        text = path.read_text()
        at = text.find(keep_from)
        if at >= 0:
            keep = "\n" + text[at:]
    write_text_atomic(path, head.rstrip() + "\n" + keep)


def mb(n: float) -> str:
    return f"{n / 1e6:,.1f} MB"


def seconds(s: float) -> str:
    return f"{s:.2f} s" if s < 100 else f"{s:.0f} s"


def machine_line() -> str:
    """Python, cores and load at the time of measuring, for the section's header."""
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    return (f"Python {platform.python_version()}, {os.cpu_count()} cores ({platform.machine()}), "
            f"load average {load:.1f} when it started")


class ServerThread:
    """An in-process server (``socketserver`` style, with a ``url``) answering on a daemon thread
    while in a ``with``; shut down and closed on leaving it."""

    def __init__(self, server):
        import threading
        self.server = server
        self.thread = threading.Thread(target=server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return self.server.url

    def start(self) -> ServerThread:
        self.thread.start()
        return self

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()


def free_port() -> int:
    """A TCP port free on loopback just now."""
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ChildServer:
    """A server as a child process on a free loopback port: ``argv_for(port)`` starts it, up once
    ``probe`` (a path under its URL) answers; stopped by its own pid on exit."""

    def __init__(self, argv_for, probe: str = "", timeout: float = 60.0):
        self.port, self.probe, self.timeout = free_port(), probe, timeout
        self.proc = subprocess.Popen([str(a) for a in argv_for(self.port)], env=child_env(),
                                     stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/"

    def __enter__(self):
        import urllib.request
        deadline = time.monotonic() + self.timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited: {self.proc.stderr.read().decode()[-2000:]}")
            try:
                urllib.request.urlopen(self.url + self.probe, timeout=2).read()
                return self
            except OSError:
                time.sleep(0.3)
        self.__exit__()
        raise RuntimeError(f"server did not answer within {self.timeout:g} s")

    def __exit__(self, *exc):
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


class TokenBucket:
    """A link's capacity: ``take(n)`` blocks until n bytes fit in ``rate`` bytes per second.

    Shared by every connection of a proxy, so they split the link as they would a real one.
    """

    def __init__(self, rate: float, burst: int = 64 * 1024):
        import threading
        self.rate, self.burst = float(rate), burst
        self.tokens, self.stamp = float(burst), time.monotonic()
        self.lock = threading.Lock()

    def take(self, n: int) -> None:
        with self.lock:
            now = time.monotonic()
            self.tokens = min(self.burst, self.tokens + (now - self.stamp) * self.rate) - n
            self.stamp = now
            debt = -self.tokens
        if debt > 0:     # the bytes are reserved; wait until the link would have carried them
            time.sleep(debt / self.rate)


class ThrottledProxy:
    """A TCP proxy on loopback whose downstream (server to client) runs at ``rate`` bytes per second.

    It forwards bytes as they are (HTTP keep-alive, ranges and all); one thread per direction and
    connection. Use as a context manager; ``url`` is where clients connect.
    """

    def __init__(self, upstream_port: int, rate: float, chunk: int = 256 * 1024):
        import socket
        import threading
        self.upstream_port, self.chunk = upstream_port, chunk
        self.bucket = TokenBucket(rate, burst=max(chunk, 64 * 1024))
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.closed = threading.Event()
        self.thread = threading.Thread(target=self._accept, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/"

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.closed.set()
        self.listener.close()

    def _accept(self) -> None:
        import socket
        import threading
        while not self.closed.is_set():
            try:
                client, _ = self.listener.accept()
                server = socket.create_connection(("127.0.0.1", self.upstream_port))
            except OSError:
                if self.closed.is_set():
                    return
                continue
            # Forward each piece at once, as a CDN's edge does (nginx: tcp_nodelay on), not held
            # back by Nagle's algorithm until the previous one is acknowledged.
            for sock in (client, server):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            threading.Thread(target=self._pump, args=(client, server, None), daemon=True).start()
            threading.Thread(target=self._pump, args=(server, client, self.bucket), daemon=True).start()

    def _pump(self, src, dst, bucket) -> None:
        import socket
        try:
            while True:
                data = src.recv(self.chunk)
                if not data:
                    break
                if bucket:
                    bucket.take(len(data))
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for sock, how in ((dst, socket.SHUT_WR), (src, socket.SHUT_RD)):
                try:
                    sock.shutdown(how)
                except OSError:
                    pass
