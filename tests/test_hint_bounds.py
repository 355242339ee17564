"""Unverified hint reads for held nets are bounded in bytes and, together, in time.

A cache holding nets of another run makes fetch look up their records (to
learn where they sit); a server trickling those records must not stall the
fetch, which then routes without them.
"""
from __future__ import annotations

import time

import pytest

from lc0weights import Net
from lc0weights.client import TransferPolicy
from lc0weights.client.fetch import fetch
from lc0weights.repository import updater
from lc0weights.repository.keys import SigningKey
from service.publish import publish
from service.repository import Repository

from conftest import NETS, run_paths
from repo_fixtures import FAST_CODEC, copy_into_cache, faulty_handler, serving


def trickling_records(foreign: set[str]):
    base = faulty_handler()

    class Trickle(base):
        hint_requests: list = []

        def do_GET(self):
            name = self.path.split("?")[0].rsplit("/", 1)[-1].removesuffix(".json")
            if not (self.path.startswith("/records/") and name in foreign):
                return super().do_GET()
            self.hint_requests.append((name, self.headers.get("Range")))
            self.send_response(200)
            self.send_header("Content-Length", str(1 << 20))      # a "record" as large as allowed
            self.end_headers()
            try:
                for _ in range(2000):                               # a byte every 0.1 s
                    self.wfile.write(b" ")
                    self.wfile.flush()
                    time.sleep(0.1)
            except OSError:
                pass
            self.close_connection = True
    return Trickle


@pytest.fixture(scope="module")
def signed(tmp_path_factory):
    key = SigningKey.generate()
    repo = Repository.create(tmp_path_factory.mktemp("repo"), key)
    publish(repo, run_paths()[:2], codec=FAST_CODEC, skips=(1,))
    return repo, key


def test_trickled_records_of_another_runs_nets_cost_at_most_the_hint_budget(signed, tmp_path, monkeypatch):
    repo, key = signed
    monkeypatch.setattr(updater, "HINT_SECONDS", 1.5)
    cache = tmp_path / "cache"
    foreign = set()
    for path in (NETS / "maia-1100.pb.gz", NETS / "maia-1200.pb.gz"):
        net_id = Net.load(path).id
        copy_into_cache(path, cache, net_id)
        foreign.add(net_id)
    handler = trickling_records(foreign)
    policy = TransferPolicy(retries=0, timeout=5, progress=False)
    with serving(repo.root, handler) as upstream:
        started = time.monotonic()
        result = fetch(upstream.url, cache_dir=cache, policy=policy, trust=key.public)
        took = time.monotonic() - started
    assert result.net_id == Net.load(run_paths()[1]).id
    assert {name for name, _ in handler.hint_requests} <= foreign and handler.hint_requests
    # Unbounded, each trickled record had its own 94 s deadline; together they now share 1.5 s.
    assert took < 15, took
    assert result.metadata_bytes < 256 << 10


def test_a_hint_larger_than_any_record_is_refused_unread(signed, tmp_path):
    repo, key = signed
    net_id = Net.load(NETS / "maia-1100.pb.gz").id
    copy_into_cache(NETS / "maia-1100.pb.gz", tmp_path / "cache", net_id)
    base = faulty_handler()

    class Huge(base):
        def do_GET(self):
            if not self.path.startswith(f"/records/{net_id}"):
                return super().do_GET()
            body = b"{" + b" " * (updater.HINT_MAX_BYTES + 10) + b"}"
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            try:
                self.wfile.write(body)
            except OSError:
                pass
    with serving(repo.root, Huge) as upstream:
        result = fetch(upstream.url, cache_dir=tmp_path / "cache",
                       policy=TransferPolicy(retries=0, timeout=5, progress=False), trust=key.public)
    assert result.net_id == Net.load(run_paths()[1]).id
    assert result.metadata_bytes < updater.HINT_MAX_BYTES
