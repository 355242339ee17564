"""A full download is gunzipped and verified as it arrives; the cache keeps the published gzip."""
from __future__ import annotations

import gzip
import hashlib

import pytest
from repo_fixtures import copy_into_cache, leftovers, serving

from lc0weights.client import TransferPolicy, fetch
from lc0weights.client.receive import NetReceiver
from lc0weights.repository.errors import IntegrityError
from lc0weights.repository.index import NetEntry

POLICY = TransferPolicy(timeout=20, retries=2, backoff=0.05, progress=False)


@pytest.fixture(scope="module")
def repo(published_three):
    return published_three


def _entry(repo, i: int) -> NetEntry:
    return repo.read_index().nets[i]


def test_a_full_download_stores_the_published_object_as_is(repo, tmp_path):
    latest = _entry(repo, 2)
    published = (repo.root / latest.path).read_bytes()
    with serving(repo.root) as srv:
        result = fetch(srv.url, cache_dir=tmp_path / "cache", out=tmp_path / "out.pb.gz", policy=POLICY)
    assert result.route.startswith("full") and result.net_id == latest.id
    assert (tmp_path / "cache" / f"{latest.id}.pb.gz").read_bytes() == published
    assert (tmp_path / "out.pb.gz").read_bytes() == published
    assert leftovers(tmp_path / "cache") == []


def test_a_partial_that_is_not_the_net_is_dropped_and_downloaded_afresh(repo, tmp_path):
    latest = _entry(repo, 2)
    cache = tmp_path / "cache"
    (cache / ".partial").mkdir(parents=True)
    (cache / ".partial" / f"{latest.sha256}.part").write_bytes(b"not gzip at all" * 100)
    with serving(repo.root) as srv:
        result = fetch(srv.url, cache_dir=cache, policy=POLICY)
    assert result.net_id == latest.id and result.bytes_downloaded - result.metadata_bytes == latest.size
    assert (cache / f"{latest.id}.pb.gz").read_bytes() == (repo.root / latest.path).read_bytes()


def test_a_patch_route_is_decoded_while_downloading_and_verified(repo, tmp_path):
    base, latest = _entry(repo, 1), _entry(repo, 2)
    cache = tmp_path / "cache"
    copy_into_cache(repo.root / base.path, cache, base.id)
    with serving(repo.root) as srv:
        result = fetch(srv.url, cache_dir=cache, policy=POLICY)
    assert result.patches == 1 and result.net_id == latest.id
    stored = gzip.decompress((cache / f"{latest.id}.pb.gz").read_bytes())
    assert hashlib.sha256(stored).hexdigest() == latest.id
    assert leftovers(cache) == []


def _feed(receiver: NetReceiver, data: bytes) -> None:
    receiver.reset(None)
    for start in range(0, len(data), 1000):
        receiver.feed(data[start:start + 1000])


def test_the_receiver_holds_a_net_to_its_signed_size_and_id(repo):
    entry = _entry(repo, 0)
    gz = (repo.root / entry.path).read_bytes()
    receiver = NetReceiver(entry)
    _feed(receiver, gz)
    assert receiver.net().id == entry.id
    raw = gzip.decompress(gz)
    bomb = NetEntry(**{**entry.to_dict(), "raw_size": len(raw) - 1})
    with pytest.raises(IntegrityError, match="larger than"):
        _feed(NetReceiver(bomb), gz)
    other = NetEntry(**{**entry.to_dict(), "id": "0" * 64})
    receiver = NetReceiver(other)
    _feed(receiver, gz)
    with pytest.raises(IntegrityError, match="the index says 0000"):
        receiver.net()
    receiver = NetReceiver(entry)
    _feed(receiver, gz[:-10])
    with pytest.raises(IntegrityError, match="truncated"):
        receiver.net()


@pytest.mark.parametrize("keep", [True, False])
def test_a_net_wanted_as_its_file_is_checked_as_strictly(repo, keep):
    """The last object of a route is checked as it arrives but not held (keep=False):
    the same size and id checks refuse the same streams."""
    entry = _entry(repo, 0)
    gz = (repo.root / entry.path).read_bytes()
    receiver = NetReceiver(entry, keep)
    _feed(receiver, gz)
    net = receiver.net()
    assert (net.id == entry.id and len(net.raw) == entry.raw_size) if keep else net is None
    raw = gzip.decompress(gz)
    short = NetEntry(**{**entry.to_dict(), "raw_size": len(raw) + 1})
    receiver = NetReceiver(short, keep)
    _feed(receiver, gz)
    with pytest.raises(IntegrityError, match="raw bytes, the index says"):
        receiver.net()
    other = NetEntry(**{**entry.to_dict(), "id": "0" * 64})
    receiver = NetReceiver(other, keep)
    _feed(receiver, gz)
    with pytest.raises(IntegrityError, match="the index says 0000"):
        receiver.net()
    with pytest.raises(IntegrityError, match="larger than"):
        _feed(NetReceiver(NetEntry(**{**entry.to_dict(), "raw_size": len(raw) - 1}), keep), gz)


_FETCH_IN_A_FRESH_PROCESS = """
import sys
from lc0weights.client import TransferPolicy, fetch
result = fetch(sys.argv[1], cache_dir=sys.argv[2], policy=TransferPolicy(timeout=20, retries=2, progress=False))
print(result.route.split()[0], "numba" in sys.modules, "lc0weights.kernels" in sys.modules)
"""


def test_a_full_download_never_loads_the_codecs(repo, tmp_path):
    """numba and the compiled kernels cost a third of a second and 90 MB: a route of full
    nets does not pay them; a route with a patch does (the same probe, so it can tell)."""
    import subprocess
    import sys

    def fetch_in_a_fresh_process(cache):
        out = subprocess.run([sys.executable, "-c", _FETCH_IN_A_FRESH_PROCESS, srv.url, str(cache)],
                             capture_output=True, text=True, timeout=120, check=True)
        return out.stdout.split()
    latest = _entry(repo, 2)
    with serving(repo.root) as srv:
        assert fetch_in_a_fresh_process(tmp_path / "empty") == ["full", "False", "False"]
        held = tmp_path / "held"
        copy_into_cache(repo.root / _entry(repo, 1).path, held, _entry(repo, 1).id)
        route, numba, kernels = fetch_in_a_fresh_process(held)
    assert route != "full" and numba == "True" and kernels == "True"
    assert (held / f"{latest.id}.pb.gz").exists()
