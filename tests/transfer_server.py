"""A loopback HTTP server for transfer tests: serves bytes by path and misbehaves on cue.

Each path has a script of actions used one per request (the last one repeats):
  "ok"               the bytes, honouring Range (206) and If-None-Match (304 on the ETag)
  "slow"             like "ok", but ``block`` bytes every ``tick`` seconds
  "trickle-body"     headers at once, then one byte every ``tick`` seconds
  "trickle-headers"  the status line and headers one byte every ``tick`` seconds
  "cut"              200 promising everything, half the bytes, then the connection is closed
  "endless"          200 with no length, bytes until the client hangs up
  "redirect-endless" 302 to the same path (plus "?moved"), with an endless body
  "404", "503"       that status
Every request is logged as (path, Range header, If-None-Match header); ``peak_sending`` is the
most "slow" replies that were being sent at once.
"""
from __future__ import annotations

import hashlib
import threading
import time
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from repo_fixtures import running


class ScriptedHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    objects: dict = {}
    scripts: dict = {}
    requests: list = []
    tick = 0.1
    block = 1 << 14
    sending = 0                  # "slow" replies being sent now, and the most at once
    peak_sending = 0
    lock = threading.Lock()

    def log_message(self, *args):
        pass

    def _action(self, path: str) -> str:
        with self.lock:
            self.requests.append((path, self.headers.get("Range"), self.headers.get("If-None-Match")))
            script = self.scripts.get(path) or ["ok"]
            return script.pop(0) if len(script) > 1 else script[0]

    def do_GET(self):
        path = self.path.split("?")[0]
        action = self._action(path)
        data = self.objects.get(path)
        try:
            if data is None or action == "404":
                return self._status(404)
            if action == "503":
                return self._status(503)
            if action == "trickle-headers":
                head = f"HTTP/1.1 200 OK\r\nContent-Length: {len(data)}\r\n\r\n".encode()
                for byte in head:
                    self.wfile.write(bytes([byte]))
                    self.wfile.flush()
                    time.sleep(self.tick)
                return
            if action in ("endless", "redirect-endless"):
                self.send_response(200 if action == "endless" else 302)
                if action == "redirect-endless":
                    self.send_header("Location", path + "?moved")
                self.send_header("Connection", "close")
                self.end_headers()
                self.close_connection = True
                while True:
                    self.wfile.write(b"x" * (1 << 14))
            etag = '"' + hashlib.sha256(data).hexdigest()[:32] + '"'
            if self.headers.get("If-None-Match") == etag:
                self.send_response(304)
                self.send_header("ETag", etag)
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            start = 0
            wanted = self.headers.get("Range")
            if wanted and action != "cut":
                start = int(wanted.removeprefix("bytes=").rstrip("-"))
                self.send_response(206)
                self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
            else:
                self.send_response(200)
            self.send_header("ETag", etag)
            self.send_header("Content-Length", str(len(data) - start))
            self.end_headers()
            body = data[start:]
            if action == "cut":
                self.wfile.write(body[:len(body) // 2])
                self.close_connection = True
            elif action == "trickle-body":
                for i in range(len(body)):
                    self.wfile.write(body[i:i + 1])
                    self.wfile.flush()
                    time.sleep(self.tick)
            elif action == "slow":
                self._count_sender(+1)
                try:
                    for i in range(0, len(body), self.block):
                        self.wfile.write(body[i:i + self.block])
                        self.wfile.flush()
                        time.sleep(self.tick)
                finally:
                    self._count_sender(-1)
            else:
                self.wfile.write(body)
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True

    def _count_sender(self, step: int):
        cls = type(self)
        with self.lock:
            cls.sending += step
            cls.peak_sending = max(cls.peak_sending, cls.sending)

    def _status(self, code: int):
        self.send_response(code)
        self.send_header("Content-Length", "0")
        self.end_headers()


@contextmanager
def scripted_server(objects: dict, scripts: dict | None = None, tls=None, **attrs):
    """Serve ``objects`` ({"/path": bytes}) on loopback; yields the server (``.url``, ``.requests``).

    With ``tls`` (an ``ssl.SSLContext`` for a server) it speaks HTTPS.
    """
    handler = type("Handler", (ScriptedHandler,), {
        "objects": objects, "scripts": {k: list(v) for k, v in (scripts or {}).items()},
        "requests": [], "lock": threading.Lock(), **attrs})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.daemon_threads = True
    if tls is not None:
        server.socket = tls.wrap_socket(server.socket, server_side=True)
    scheme = "https" if tls is not None else "http"
    server.url = f"{scheme}://127.0.0.1:{server.server_address[1]}/"
    server.requests = handler.requests
    server.handler = handler
    with running(server):
        yield server
