"""The client cache: where it lives, what it holds, and that a bad cached net is never trusted."""
import pytest

from lc0weights import Net
from lc0weights.client import NetCache, TransferPolicy, default_cache_dir, fetch

from conftest import run_paths
from repo_fixtures import copy_into_cache, leftovers

POLICY = TransferPolicy(retries=0, progress=False)


@pytest.fixture(scope="module")
def repo(published_two):
    return published_two


@pytest.fixture(scope="module")
def ids(run_nets):
    return [n.id for n in run_nets[:2]]


def test_default_cache_dir_follows_xdg(monkeypatch, tmp_path):
    monkeypatch.setattr("sys.platform", "linux")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert default_cache_dir() == tmp_path / "lc0weights"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert default_cache_dir() == tmp_path / "home" / ".cache" / "lc0weights"


def test_fetch_uses_the_default_cache_when_none_is_given(repo, ids, monkeypatch, tmp_path):
    monkeypatch.setattr("sys.platform", "linux")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    result = fetch(str(repo.root), policy=POLICY)
    assert result.path == str(tmp_path / "lc0weights" / f"{ids[1]}.pb.gz")


def test_held_ids_name_files_of_either_layout_but_load_verifies(tmp_path, ids):
    copy_into_cache(run_paths()[0], tmp_path, ids[0])
    (tmp_path / ids[1]).write_bytes(b"x")
    (tmp_path / "notes.txt").write_bytes(b"x")
    for layout in (False, True):
        cache = NetCache(tmp_path, client_layout=layout)
        assert cache.held_ids() == {ids[0], ids[1]}      # names are claims for planning
        assert cache.load(ids[0]).id == ids[0]
        assert cache.load(ids[1]) is None                # and a false claim is never used


def test_a_cached_net_that_does_not_match_its_name_is_not_used(repo, ids, tmp_path):
    cache = tmp_path / "cache"
    copy_into_cache(run_paths()[0], cache, ids[0])
    bad = cache / f"{ids[0]}.pb.gz"
    bad.write_bytes(run_paths()[1].read_bytes()[:5000])        # damaged: truncated gzip
    result = fetch(str(repo.root), cache_dir=cache, policy=POLICY)
    assert result.net_id == ids[1] and result.route.startswith("full") and result.fallbacks
    assert bad.read_bytes() == run_paths()[1].read_bytes()[:5000]   # left alone, not trusted
    assert leftovers(cache) == []


def test_holding_the_wanted_net_downloads_only_metadata(repo, ids, tmp_path):
    copy_into_cache(run_paths()[1], tmp_path, ids[1])
    out = tmp_path / "out" / "net.pb.gz"
    out.parent.mkdir()
    result = fetch(str(repo.root), cache_dir=tmp_path, out=out, policy=POLICY)
    assert result.route == "already held" and result.patches == 0
    assert result.bytes_downloaded == result.metadata_bytes < 4096
    assert Net.load(out).id == ids[1]


def test_fetch_an_unknown_net_is_one_clear_error(repo, tmp_path, capsys):
    from lc0weights.cli import main
    code = main(["fetch", str(repo.root), "--cache", str(tmp_path), "--net", "0123456789abcdef"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code != 0 and err[-1].startswith("lc0weights: error:") and "not in the repository" in err[-1]
    assert all(line.startswith(("warning:", "lc0weights: error:")) for line in err)


def test_what_killed_fetches_left_is_swept_by_age(tmp_path):
    import os
    import time
    from lc0weights.client.fetch import PARTIAL_DIR, sweep_cache
    from lc0weights.client.staging import PARTIAL_MIN_AGE, TEMP_MIN_AGE
    old, fresh = tmp_path / ".fetch-old", tmp_path / ".fetch-live"
    (tmp_path / PARTIAL_DIR).mkdir()
    old_part, new_part = tmp_path / PARTIAL_DIR / ("a" * 64 + ".part"), tmp_path / PARTIAL_DIR / ("b" * 64 + ".part")
    for folder in (old, fresh):
        folder.mkdir()
        (folder / "step-0").write_bytes(b"partial")
    for part in (old_part, new_part):
        part.write_bytes(b"resumable")
    hour_ago, week_ago = time.time() - TEMP_MIN_AGE - 60, time.time() - PARTIAL_MIN_AGE - 60
    for path, when in ((old / "step-0", hour_ago), (old, hour_ago), (old_part, week_ago), (new_part, hour_ago)):
        os.utime(path, (when, when))
    sweep_cache(tmp_path)
    assert not old.exists() and fresh.exists()
    assert not old_part.exists() and new_part.exists()         # a partial is kept a week for resuming
