"""Held nets are found by content, whatever their names; the cache reports only verified files."""
from __future__ import annotations

import json
import os
import shutil

import pytest

from lc0weights import Net
from lc0weights.cli import main
from lc0weights.client import NetCache, TransferPolicy, fetch
from lc0weights.client import cache as cache_module
from lc0weights.client.cache import MEMO_NAME
from lc0weights.client.client_cache import client_cache_dir

from conftest import run_paths
from repo_fixtures import leftovers

POLICY = TransferPolicy(retries=0, progress=False)


def temp_files(cache) -> list[str]:
    return [name for name in leftovers(cache) if name != MEMO_NAME]     # the memo is meant to stay


@pytest.fixture(scope="module")
def repo(published_two):
    return published_two


@pytest.fixture(scope="module")
def ids(run_nets):
    return [n.id for n in run_nets[:2]]


def _place(kind: str, cache, elsewhere):
    """Put net 0 where the fetch can find it, under a name that says nothing of its id."""
    cache.mkdir(parents=True, exist_ok=True)
    if kind == "renamed .pb.gz":
        shutil.copyfile(run_paths()[0], cache / "maia-step-000000.pb.gz")
        return []
    if kind == "raw .pb":
        (cache / "old.pb").write_bytes(bytes(Net.load(run_paths()[0]).raw))
        return []
    elsewhere.mkdir()
    shutil.copyfile(run_paths()[0], elsewhere / "whatever-name.bin")
    return [str(elsewhere / "whatever-name.bin")]


@pytest.mark.parametrize("kind", ["renamed .pb.gz", "raw .pb", "--have FILE"])
def test_a_held_net_with_any_name_is_used_as_a_base(repo, ids, tmp_path, kind, capsys):
    cache = tmp_path / "cache"
    have = _place(kind, cache, tmp_path / "elsewhere")
    argv = ["fetch", str(repo.root), "--cache", str(cache), "--json"]
    for path in have:
        argv += ["--have", path]
    assert main(argv) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["start"] == ids[0] and result["patches"] == 1
    assert result["bytes_downloaded"] < 0.8 * result["full_size"]
    assert Net.load(cache / f"{ids[1]}.pb.gz").id == ids[1]
    assert temp_files(cache) == []


def test_ids_are_computed_once_and_remembered_until_the_file_changes(tmp_path, ids, monkeypatch):
    shutil.copyfile(run_paths()[0], tmp_path / "a.pb.gz")
    shutil.copyfile(run_paths()[1], tmp_path / "b.pb.gz")
    calls = []
    real = cache_module.file_net_id
    monkeypatch.setattr(cache_module, "file_net_id", lambda p: calls.append(p.name) or real(p))
    assert NetCache(tmp_path).held_ids() == set(ids)
    assert sorted(calls) == ["a.pb.gz", "b.pb.gz"]
    assert NetCache(tmp_path).held_ids() == set(ids)
    assert len(calls) == 2                             # the second scan read no net
    shutil.copyfile(run_paths()[1], tmp_path / "a.pb.gz")
    os.utime(tmp_path / "a.pb.gz", ns=(1, 1))
    assert NetCache(tmp_path).held_ids() == {ids[1]}
    assert calls[2:] == ["a.pb.gz"]
    (tmp_path / "b.pb.gz").unlink()
    NetCache(tmp_path).held_ids()
    memo = json.loads((tmp_path / MEMO_NAME).read_bytes())
    assert list(memo["ids"]) == ["a.pb.gz"]            # entries of vanished files are dropped


def plant_memo(cache, files: dict, net_id: str) -> None:
    """A memo in ``cache`` that says each of ``files`` (key -> path), as it is now, holds ``net_id``."""
    entries = {}
    for key, path in files.items():
        st = path.stat()
        entries[key] = [st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, net_id]
    (cache / MEMO_NAME).write_text(json.dumps({"version": 2, "ids": entries}))


def test_a_lying_memo_is_only_a_hint(repo, ids, tmp_path):
    cache = tmp_path / "cache"
    cache.mkdir()
    decoy = cache / "decoy.pb.gz"
    shutil.copyfile(run_paths()[1], decoy)                 # holds net 1 ...
    plant_memo(cache, {"decoy.pb.gz": decoy}, ids[0])       # ... but the memo says net 0
    result = fetch(str(repo.root), cache_dir=cache, policy=POLICY)
    assert result.net_id == ids[1] and Net.load(result.path).id == ids[1]
    assert result.fallbacks and "corrupt" in result.fallbacks[0]   # tried as net 0, refused
    assert ids[0] not in NetCache(cache).held_ids()        # the wrong entry was forgotten


@pytest.mark.parametrize("memo", [b"not json", b"[1, 2]", b'{"version": 1, "ids": {"x.pb.gz": [1, -2, "zz"]}}',
                                  b'{"version": 2, "ids": {"a.pb.gz": [1, 2, 3, -4, "' + b"0" * 64 + b'"]}}',
                                  b'{"version": 2, "ids": {"a.pb.gz": [1, 2, 3, 4, "' + b"0" * 63 + b'"]}}',
                                  b'{"version": 2, "ids": {"a.pb.gz": [1, 2, 3, 4, 5]}}',
                                  b'{"version": 1, "ids": ' + b"[" * 100_000 + b"]}",
                                  b'{"version": 1, "ids": {}}' + b" " * (5 << 20)])
def test_a_hostile_memo_is_ignored(tmp_path, ids, memo):
    shutil.copyfile(run_paths()[0], tmp_path / "a.pb.gz")
    (tmp_path / MEMO_NAME).write_bytes(memo)
    assert NetCache(tmp_path).held_ids() == {ids[0]}


def test_a_symlink_in_the_cache_is_not_read_as_a_base(tmp_path, ids):
    outside = tmp_path / "outside.pb.gz"
    shutil.copyfile(run_paths()[0], outside)
    cache = tmp_path / "cache"
    cache.mkdir()
    (cache / "link.pb.gz").symlink_to(outside)
    (cache / f"{ids[0]}.pb.gz").symlink_to(outside)
    c = NetCache(cache)
    assert c.held_ids() == set()
    assert c.load(ids[0]) is None


@pytest.mark.parametrize("client_layout", [False, True])
@pytest.mark.parametrize("state", ["truncated", "another net", "symlink to another net"])
def test_a_wrong_file_under_the_result_name_is_replaced(repo, ids, tmp_path, state, client_layout):
    cache = tmp_path / "cache"
    cache.mkdir()
    name = ids[1] if client_layout else f"{ids[1]}.pb.gz"
    other = tmp_path / "other.pb.gz"
    shutil.copyfile(run_paths()[0], other)
    if state == "truncated":
        (cache / name).write_bytes(run_paths()[1].read_bytes()[:50_000])
    elif state == "another net":
        shutil.copyfile(other, cache / name)
    else:
        (cache / name).symlink_to(other)
    result = fetch(str(repo.root), cache_dir=cache, client_layout=client_layout, policy=POLICY,
                   state_dir=tmp_path / "state")
    assert result.path == str(cache / name)
    assert not (cache / name).is_symlink()
    assert Net.load(cache / name).id == ids[1]
    assert other.read_bytes() == run_paths()[0].read_bytes()      # never written through
    assert temp_files(cache) == []


def test_a_full_download_keeps_the_published_object(repo, ids, tmp_path):
    result = fetch(str(repo.root), cache_dir=tmp_path, client_layout=True, policy=POLICY,
                   state_dir=tmp_path / ".state")
    assert result.route.startswith("full")
    assert (tmp_path / ids[1]).read_bytes() == (repo.root / "nets" / f"{ids[1]}.pb.gz").read_bytes()
    assert not list(tmp_path.glob("*.lck"))


def test_client_layout_defaults_to_the_training_clients_folder(repo, ids, tmp_path, monkeypatch):
    monkeypatch.setattr("sys.platform", "linux")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    result = fetch(str(repo.root), client_layout=True, policy=POLICY)
    assert result.path == str(tmp_path / "xdg" / "lc0" / "client-cache" / ids[1])
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert client_cache_dir() == tmp_path / "home" / ".cache" / "lc0" / "client-cache"
    monkeypatch.setattr("sys.platform", "darwin")
    assert client_cache_dir() == tmp_path / "home" / "Library" / "Caches" / "lc0" / "client-cache"
