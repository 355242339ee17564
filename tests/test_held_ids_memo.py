"""The memo of held files' ids: a file unchanged since it was hashed is not hashed again; it is only a hint."""
from __future__ import annotations

import json
import os
import shutil
import threading

import pytest

from lc0weights import Net
from lc0weights.client import NetCache, TransferPolicy, fetch
from lc0weights.client import cache as cache_module
from lc0weights.client.cache import MEMO_MAX_ENTRIES, MEMO_NAME

from conftest import run_paths

POLICY = TransferPolicy(retries=0, progress=False)


@pytest.fixture(scope="module")
def ids(run_nets):
    return [n.id for n in run_nets[:2]]


@pytest.fixture
def hashed(monkeypatch) -> list:
    """The names of the files whose content is hashed to identify them, in order."""
    calls = []
    real = cache_module.file_net_id
    monkeypatch.setattr(cache_module, "file_net_id", lambda p: calls.append(p.name) or real(p))
    return calls


def _memo(cache) -> dict:
    return json.loads((cache / MEMO_NAME).read_bytes())["ids"]


def test_a_have_file_is_hashed_once_and_again_when_touched(tmp_path, ids, hashed):
    cache, have = tmp_path / "cache", tmp_path / "elsewhere.bin"
    cache.mkdir()
    shutil.copyfile(run_paths()[0], have)
    assert NetCache(cache, have=[have]).held_ids() == {ids[0]}
    assert NetCache(cache, have=[have]).held_ids() == {ids[0]}
    assert hashed == ["elsewhere.bin"]                          # the second time, from the memo
    assert NetCache(cache).held_ids() == set()                  # a fetch without it ...
    assert NetCache(cache, have=[have]).held_ids() == {ids[0]}
    assert hashed == ["elsewhere.bin"]                          # ... does not make it forgotten
    st = have.stat()
    os.utime(have, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))
    assert NetCache(cache, have=[have]).held_ids() == {ids[0]}
    assert hashed == ["elsewhere.bin"] * 2                      # touched: hashed afresh


def test_a_file_replaced_by_another_of_the_same_size_and_mtime_is_hashed_again(tmp_path, hashed):
    cache, have = tmp_path / "cache", tmp_path / "held.pb"
    cache.mkdir()
    have.write_bytes(b"a" * 1000)
    first = NetCache(cache, have=[have]).held_ids()
    st = have.stat()
    replacement = tmp_path / "replacement"
    replacement.write_bytes(b"b" * 1000)
    os.utime(replacement, ns=(st.st_atime_ns, st.st_mtime_ns))
    os.replace(replacement, have)                               # same size and mtime, another inode
    second = NetCache(cache, have=[have]).held_ids()
    assert len(hashed) == 2 and first != second


def test_the_memo_keeps_the_most_recently_used_entries(tmp_path, hashed):
    cache, folder = tmp_path / "cache", tmp_path / "held"
    cache.mkdir()
    folder.mkdir()
    paths = []
    for i in range(MEMO_MAX_ENTRIES + 20):
        paths.append(folder / f"{i:04d}.pb")
        paths[-1].write_bytes(b"%d" % i)
    NetCache(cache, have=paths).held_ids()
    memo = _memo(cache)
    assert list(memo) == [str(p.resolve()) for p in paths[20:]]            # the oldest 20 pushed out
    assert (cache / MEMO_NAME).stat().st_size <= cache_module.MEMO_MAX_BYTES
    del hashed[:]
    NetCache(cache, have=paths[-1:] + paths[:1]).held_ids()
    assert hashed == [paths[0].name]                                          # remembered: the newest only


def test_a_memo_that_is_a_fifo_is_ignored_without_waiting(tmp_path, ids):
    cache = tmp_path / "cache"
    cache.mkdir()
    shutil.copyfile(run_paths()[0], cache / "a.pb.gz")
    os.mkfifo(cache / MEMO_NAME)
    found = []
    reader = threading.Thread(target=lambda: found.append(NetCache(cache).held_ids()), daemon=True)
    reader.start()
    reader.join(30)
    assert found == [{ids[0]}]


@pytest.mark.parametrize("holds, claimed", [(0, 1), (1, 0)], ids=["claims the target", "claims the base"])
def test_a_wrong_id_remembered_for_a_have_file_is_only_a_hint(published_two, ids, tmp_path, holds, claimed):
    cache, have = tmp_path / "cache", tmp_path / "elsewhere.bin"
    cache.mkdir()
    shutil.copyfile(run_paths()[holds], have)
    st = have.stat()
    memo = {str(have.resolve()): [st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, ids[claimed]]}
    (cache / MEMO_NAME).write_text(json.dumps({"version": 2, "ids": memo}))
    result = fetch(str(published_two.root), cache_dir=cache, policy=POLICY, have=[have])
    assert result.net_id == ids[1] and Net.load(result.path).id == ids[1]
    # Planned on the lie, refused when the file was loaded, fetched whole: never a wrong net.
    assert result.patches == 0 and result.start is None
    assert bool(result.fallbacks) == (claimed == 0)        # a route from the claimed base was tried first
    assert have.read_bytes() == run_paths()[holds].read_bytes()             # never written
    assert ids[holds] in NetCache(cache, have=[have]).held_ids()            # the lie was forgotten


def test_a_first_fetch_into_a_new_cache_remembers_the_have_file(published_two, ids, tmp_path, hashed):
    cache, have = tmp_path / "new" / "cache", tmp_path / "elsewhere.bin"
    shutil.copyfile(run_paths()[0], have)
    first = fetch(str(published_two.root), cache_dir=cache, policy=POLICY, have=[have])
    assert first.start == ids[0] and first.patches == 1
    assert hashed == ["elsewhere.bin"]
    assert _memo(cache)[str(have.resolve())][4] == ids[0]
    fetch(str(published_two.root), cache_dir=cache, policy=POLICY, have=[have])
    assert hashed == ["elsewhere.bin"]                          # the second fetch hashed nothing
