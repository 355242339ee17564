"""A fetch killed with SIGKILL again and again: no file under a final name, and the next run resumes."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from lc0weights import Net
from lc0weights.client import TransferPolicy, check_repository, fetch

from conftest import run_paths
from repo_fixtures import FaultyHandler, cache_files, leftovers, publish_run, serving

ROOT = Path(__file__).resolve().parents[1]


class SlowNets(FaultyHandler):
    """Serves full nets at about 200 KB/s, so a kill lands mid-transfer."""

    def do_GET(self):
        path = self.path.split("?")[0]
        if not path.startswith("/nets/"):
            return super().do_GET()
        data = self._resolve().read_bytes()
        start = 0
        if self.headers.get("Range", "").startswith("bytes="):
            start = int(self.headers["Range"][6:].rstrip("-"))
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        else:
            self.send_response(200)
        self.send_header("Content-Length", str(len(data) - start))
        self.send_header("ETag", f'"{path.rsplit("/", 1)[1].split(".")[0]}"')
        self.end_headers()
        try:
            for i in range(start, len(data), 20_000):
                self.wfile.write(data[i:i + 20_000])
                type(self).sent += len(data[i:i + 20_000])
                time.sleep(0.1)
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True


def test_fetch_killed_three_times_then_completes_by_resuming(tmp_path):
    repo = publish_run(tmp_path / "repo", count=2, skips=(1,))
    latest = Net.load(run_paths()[1]).id
    cache = tmp_path / "cache"
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    handler = type("Slow", (SlowNets,), {"sent": 0})
    with serving(repo.root, handler) as srv:
        for _ in range(3):
            proc = subprocess.Popen([sys.executable, "-m", "lc0weights.cli", "fetch", srv.url, "--cache", str(cache)],
                                    env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline and not list(cache.glob(".partial/*.part")):
                time.sleep(0.05)
            time.sleep(0.5)
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            assert latest not in " ".join(cache_files(cache))       # never a final name for a partial
        time.sleep(2.5)                                         # the killed fetches' work folders are stale
        held_before = sum(p.stat().st_size for p in cache.glob(".partial/*.part"))
        assert held_before > 0
        sent_before = handler.sent
        result = fetch(srv.url, cache_dir=cache, policy=TransferPolicy(progress=False))
        sent = handler.sent - sent_before
    assert result.net_id == latest and Net.load(cache / f"{latest}.pb.gz").id == latest
    full = repo.read_index().net(latest).size
    assert sent <= full - held_before + 20_000                     # only the remainder was sent again
    assert leftovers(cache) == [] and cache_files(cache) == [f"{latest}.pb.gz"]
    assert check_repository(str(repo.root)).ok
