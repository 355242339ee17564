"""The last patch of a route rebuilds straight into the gzip file the cache keeps, never beside its base."""
from __future__ import annotations

import shutil
import sys
from pathlib import Path

import pytest

import lc0weights.client.fetch  # noqa: F401 - the module, not the function the package exports
from lc0weights import Net, gzipio
from lc0weights.client import TransferPolicy, fetch

fetch_module = sys.modules["lc0weights.client.fetch"]
from conftest import run_paths
from repo_fixtures import FAST_CODEC, copy_into_cache

from lc0weights.client.receive import RebuiltNetFile
from lc0weights.net import GZIP_LEVEL
from lc0weights.repository.errors import IntegrityError
from service.publish import publish
from service.repository import Repository

TOLERANCE = 1 / 2048

POLICY = TransferPolicy(retries=0, progress=False)


def _hold(cache: Path, index: int, net_id: str, client_layout: bool) -> None:
    cache.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(run_paths()[index], cache / (net_id if client_layout else f"{net_id}.pb.gz"))


def _count_in_memory_rebuilds(monkeypatch) -> list:
    calls = []
    real = fetch_module.apply_while_downloading
    monkeypatch.setattr(fetch_module, "apply_while_downloading", lambda *a, **k: calls.append(1) or real(*a, **k))
    return calls


@pytest.mark.parametrize("client_layout", [False, True])
def test_a_one_patch_route_stores_the_net_it_rebuilt_into_a_file(published_two, run_nets, tmp_path, monkeypatch,
                                                                  client_layout):
    cache = tmp_path / "cache"
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "user-cache"))   # where --client-layout keeps its state
    _hold(cache, 0, run_nets[0].id, client_layout)
    in_memory = _count_in_memory_rebuilds(monkeypatch)
    raw_out, gz_out = tmp_path / "out.pb", tmp_path / "out.pb.gz"
    result = fetch(str(published_two.root), cache_dir=cache, client_layout=client_layout, policy=POLICY,
                   out=raw_out)
    assert result.patches == 1 and result.net_id == run_nets[1].id and in_memory == []
    stored = Path(result.path).read_bytes()
    # The same bytes as gzipping the rebuilt net into the cache (the file is that gzip stream).
    assert stored == gzipio.gzip_bytes(bytes(run_nets[1].raw), GZIP_LEVEL)
    assert raw_out.read_bytes() == bytes(run_nets[1].raw)          # read back from the file, checked
    Path(result.path).unlink()
    for kept in (tmp_path / "user-cache").rglob(f"{run_nets[1].id}*"):   # --client-layout's own copy
        kept.unlink()
    again = fetch(str(published_two.root), cache_dir=cache, client_layout=client_layout, policy=POLICY,
                  out=gz_out)
    assert again.patches == 1 and gz_out.read_bytes() == stored


@pytest.mark.slow      # the one-step route above is the quick case
def test_only_the_last_step_of_a_longer_route_is_rebuilt_into_a_file(tmp_path, monkeypatch):
    repo = Repository.create(tmp_path / "repo")
    publish(repo, run_paths()[:3], tolerance=TOLERANCE, codec=FAST_CODEC, skips=(1,))
    index = repo.read_index()
    chain = [p for p in index.patches if p.lossy and p.history is None]
    cache = tmp_path / "cache"
    copy_into_cache(run_paths()[0], cache, index.nets[0].id)
    in_memory = _count_in_memory_rebuilds(monkeypatch)
    result = fetch(str(repo.root), cache_dir=cache, tolerance=TOLERANCE, policy=POLICY)
    assert result.patches == 2 and result.net_id == chain[-1].result
    assert len(in_memory) == 1                                      # the first step: the next one's base
    net = Net.load(result.path)
    assert net.id == result.net_id
    assert Path(result.path).read_bytes() == gzipio.gzip_bytes(bytes(net.raw), GZIP_LEVEL)


def test_a_rebuilt_file_that_changed_is_refused_when_read_back(run_nets, tmp_path):
    path = tmp_path / "net.pb.gz"
    shutil.copyfile(run_paths()[1], path)                           # holds net 1 ...
    stand_in = RebuiltNetFile(path, run_nets[0].id, len(run_nets[0].raw))   # ... said to be net 0
    with pytest.raises(IntegrityError, match="changed since it was rebuilt"):
        _ = stand_in.raw
    assert bytes(RebuiltNetFile(path, run_nets[1].id, len(run_nets[1].raw)).raw) == bytes(run_nets[1].raw)
