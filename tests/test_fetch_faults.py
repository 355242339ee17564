"""The client against a server that cuts, fails, hangs, lies: retry, fall back, or fail cleanly."""
import threading
import time

import pytest

from lc0weights import Net
from lc0weights.client import HttpSource, TransferPolicy, fetch
from lc0weights.repository.errors import (DownloadError, IntegrityError, NoRouteError,
                                            RepositoryIndexError)

from repo_fixtures import (FaultyHandler, cache_files, faulty_handler, leftovers,
                           serving)

FAST = TransferPolicy(timeout=2.0, retries=2, backoff=0.01, progress=False)


@pytest.fixture(scope="module")
def repo(published_three):
    return published_three


@pytest.fixture(scope="module")
def nets(run_nets):
    return run_nets[:3]


def patch_path(repo, base, target):
    """The patch a client holding only ``base`` takes to ``target``: the smallest without history."""
    plain = [p for p in repo.read_index().patches_between(base.id, target.id) if p.history is None]
    p = min(plain, key=lambda p: p.size)
    return "/" + p.path, p


def net_path(repo, net):
    return "/" + repo.read_index().net(net.id).path


def assert_clean_cache(cache, expected_ids, resumable=()):
    """Only the expected nets, and partials only of objects cut short (kept, by sha256, to resume)."""
    assert leftovers(cache) == sorted(f".partial/{sha}.part" for sha in resumable)
    assert cache_files(cache) == sorted(f"{i}.pb.gz" for i in expected_ids)
    for i in expected_ids:
        assert Net.load(cache / f"{i}.pb.gz").id == i


def test_download_cut_mid_file_is_resumed_with_a_range(repo, nets, held_cache):
    path, entry = patch_path(repo, nets[1], nets[2])
    handler = faulty_handler(faults={path: ["cut"]})
    with serving(repo.root, handler) as srv:
        result = fetch(srv.url, cache_dir=held_cache, policy=FAST)
    assert result.net_id == nets[2].id and result.patches == 1 and not result.fallbacks
    assert handler.calls[path] == 2
    resumed_at = int(handler.ranges[path][1].removeprefix("bytes=").rstrip("-"))
    assert 0 < resumed_at <= entry.size // 2          # from what the partial file held
    assert result.bytes_downloaded == entry.size + result.metadata_bytes     # nothing fetched twice
    assert result.metadata_bytes < 4096
    assert_clean_cache(held_cache, [nets[1].id, nets[2].id])


def test_resume_restarts_when_the_server_ignores_the_range(repo, nets, held_cache):
    path, entry = patch_path(repo, nets[1], nets[2])
    handler = faulty_handler(faults={path: ["cut", "ignore-range"]})
    with serving(repo.root, handler) as srv:
        result = fetch(srv.url, cache_dir=held_cache, policy=FAST)
    assert result.net_id == nets[2].id and handler.calls[path] == 2
    assert_clean_cache(held_cache, [nets[1].id, nets[2].id])


def test_wrong_content_range_fails_the_object_and_removes_the_partial(repo, nets, tmp_path):
    path, entry = patch_path(repo, nets[1], nets[2])
    handler = faulty_handler(faults={path: ["cut", "always:bad-range"]})
    with serving(repo.root, handler) as srv:
        source = HttpSource(srv.url, FAST)
        with pytest.raises(DownloadError, match="Content-Range"):
            source.fetch_object(entry.path, tmp_path / "patch", entry.size, entry.sha256)
    assert list(tmp_path.iterdir()) == []


def test_server_errors_are_retried(repo, nets, held_cache):
    path, _ = patch_path(repo, nets[1], nets[2])
    handler = faulty_handler(faults={path: ["500", "500"], "/timestamp.json": ["500"]})
    with serving(repo.root, handler) as srv:
        result = fetch(srv.url, cache_dir=held_cache, policy=FAST)
    assert result.patches == 1 and not result.fallbacks
    assert handler.calls[path] == 3 and handler.calls["/timestamp.json"] == 2


def test_hanging_server_times_out_then_the_client_falls_back_to_the_full_net(repo, nets, held_cache):
    path, _ = patch_path(repo, nets[1], nets[2])
    handler = faulty_handler(faults={path: ["always:hang"]}, hang_seconds=2.0)
    policy = TransferPolicy(timeout=0.3, retries=1, backoff=0.01, progress=False)
    with serving(repo.root, handler) as srv:
        result = fetch(srv.url, cache_dir=held_cache, policy=policy)
    assert result.net_id == nets[2].id
    assert result.route.startswith("full") and "timed out" in result.fallbacks[0]
    assert handler.calls[path] == 2                  # one try plus one retry
    assert_clean_cache(held_cache, [nets[1].id, nets[2].id])


@pytest.mark.parametrize("fault", ["corrupt", "short"])
def test_altered_or_truncated_patch_is_never_applied(repo, nets, held_cache, fault):
    path, entry = patch_path(repo, nets[1], nets[2])
    handler = faulty_handler(faults={path: [f"always:{fault}"]})
    with serving(repo.root, handler) as srv:
        result = fetch(srv.url, cache_dir=held_cache, policy=FAST)
    assert result.net_id == nets[2].id and result.fallbacks
    assert "->" not in result.route                  # the patch route was abandoned
    # A short reply is a correct prefix: kept to resume; altered bytes never are.
    assert_clean_cache(held_cache, [nets[1].id, nets[2].id], resumable=[entry.sha256] if fault == "short" else [])


def test_when_every_object_fails_the_client_fails_cleanly(repo, nets, held_cache):
    index = repo.read_index()
    faults = {"/" + e.path: ["always:corrupt"] for e in index.nets + index.patches}
    before = (held_cache / f"{nets[1].id}.pb.gz").read_bytes()
    with serving(repo.root, faulty_handler(faults=faults)) as srv:
        with pytest.raises(NoRouteError, match="every route failed"):
            fetch(srv.url, cache_dir=held_cache, policy=FAST)
    assert_clean_cache(held_cache, [nets[1].id])
    assert (held_cache / f"{nets[1].id}.pb.gz").read_bytes() == before


def test_a_repository_without_signed_metadata_is_refused_before_any_object_is_requested(repo, tmp_path):
    # What a repository written before signing looks like to a client now: no timestamp.json.
    handler = faulty_handler(faults={"/timestamp.json": ["always:404"]})
    with serving(repo.root, handler) as srv:
        with pytest.raises(RepositoryIndexError) as info:
            fetch(srv.url, cache_dir=tmp_path / "cache", policy=FAST)
    message = str(info.value)
    assert "no signed metadata (timestamp.json)" in message and "lc0weights-server publish" in message
    assert "\n" not in message
    assert set(handler.calls) == {"/timestamp.json"}
    assert leftovers(tmp_path / "cache") == []


def test_object_larger_than_the_index_declares_is_refused(repo, nets, tmp_path):
    entry = repo.read_index().net(nets[0].id)
    with serving(repo.root) as srv:
        source = HttpSource(srv.url, FAST)
        with pytest.raises(IntegrityError):
            source.fetch_object(entry.path, tmp_path / "net", entry.size - 10, entry.sha256)
    assert list(tmp_path.iterdir()) == []


def test_unreachable_server_is_one_clear_error(tmp_path):
    policy = TransferPolicy(timeout=0.5, retries=1, backoff=0.01, progress=False)
    with pytest.raises(DownloadError, match="cannot read timestamp.json: connection refused"):
        fetch("http://127.0.0.1:9/", cache_dir=tmp_path, policy=policy)


class TricklingHandler(FaultyHandler):
    """Sends the paths in ``trickle`` one byte every 50 ms: each read succeeds, the whole never ends."""

    trickle: set = set()

    def do_GET(self):
        path = self.path.split("?")[0]
        if path not in self.trickle:
            return super().do_GET()
        self._next_fault(path)
        data = self._resolve().read_bytes()
        self.send_response(200)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        try:
            for i in range(len(data)):
                self.wfile.write(data[i:i + 1])
                self.wfile.flush()
                time.sleep(0.05)
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True


def test_trickling_patch_is_cut_at_its_deadline_and_the_full_net_fetched(repo, nets, held_cache):
    path, entry = patch_path(repo, nets[1], nets[2])
    handler = type("T", (TricklingHandler,), {"faults": {}, "calls": {}, "ranges": {},
                                              "lock": threading.Lock(), "trickle": {path}})
    policy = TransferPolicy(timeout=2.0, retries=3, backoff=0.01, progress=False,
                            min_rate=1 << 20, allowance=0.5)
    deadline = policy.deadline_for(entry.size)
    with serving(repo.root, handler) as srv:
        started = time.monotonic()
        result = fetch(srv.url, cache_dir=held_cache, policy=policy)
        took = time.monotonic() - started
    assert result.net_id == nets[2].id and result.route.startswith("full")
    assert f"timed out at its deadline of {deadline:.1f} s" in result.fallbacks[0]
    assert handler.calls[path] == 1                   # the deadline covers retries: none after it
    assert took < deadline + 5
    assert_clean_cache(held_cache, [nets[1].id, nets[2].id], resumable=[entry.sha256])
