"""History patches on an SWA run: published beside the plain patch when smaller, taken only when usable."""
from __future__ import annotations

import shutil

import pytest

from lc0weights import Net
from lc0weights.client import TransferPolicy, check_repository, fetch
from service.publish import publish
from service.repository import Repository

from conftest import SHARED

SWA = sorted((SHARED / "data" / "runs" / "maia-swa").glob("step-*.pb.gz"))
POLICY = TransferPolicy(timeout=5.0, retries=1, backoff=0.01, progress=False)


@pytest.fixture(scope="module")
def swa_repo(tmp_path_factory):
    if len(SWA) < 4:
        pytest.fail("the shared maia-swa run is missing")
    repo = Repository.create(tmp_path_factory.mktemp("swa") / "repo")
    publish(repo, SWA[:4], skips=(1,))          # the default codec choice
    return repo, [Net.load(p).id for p in SWA[:4]]


def test_history_patches_are_published_when_smaller(swa_repo):
    repo, ids = swa_repo
    index = repo.read_index()
    history = [p for p in index.patches if p.history is not None]
    assert {(p.history, p.base, p.target) for p in history} == {(ids[0], ids[1], ids[2]), (ids[1], ids[2], ids[3])}
    for p in history:
        plain = [q for q in index.patches if q.base == p.base and q.target == p.target and q.history is None]
        assert plain and p.size < plain[0].size
    assert check_repository(str(repo.root), POLICY).ok


def copy_in(cache, *which):
    cache.mkdir(parents=True, exist_ok=True)
    for i in which:
        shutil.copyfile(SWA[i], cache / f"{Net.load(SWA[i]).id}.pb.gz")


def test_a_client_holding_both_nets_takes_the_history_patch(swa_repo, tmp_path):
    repo, ids = swa_repo
    copy_in(tmp_path / "both", 1, 2)
    result = fetch(str(repo.root), cache_dir=tmp_path / "both", policy=POLICY)
    assert result.net_id == ids[3] and result.patches == 1
    history = [p for p in repo.read_index().patches if p.history == ids[1] and p.target == ids[3]][0]
    assert result.bytes_downloaded == history.size + result.metadata_bytes


def test_a_client_holding_one_net_gets_the_plain_patch(swa_repo, tmp_path):
    repo, ids = swa_repo
    copy_in(tmp_path / "one", 2)
    result = fetch(str(repo.root), cache_dir=tmp_path / "one", policy=POLICY)
    plain = [p for p in repo.read_index().patches
             if p.base == ids[2] and p.target == ids[3] and p.history is None][0]
    assert result.net_id == ids[3] and result.bytes_downloaded == plain.size + result.metadata_bytes


TOLERANCE = 2.0 ** -14


@pytest.fixture(scope="module")
def swa_lossy_repo(tmp_path_factory):
    repo = Repository.create(tmp_path_factory.mktemp("swa-lossy") / "repo")
    publish(repo, SWA[:4], tolerance=TOLERANCE, skips=(1,))
    return repo, [Net.load(p).id for p in SWA[:4]]


def test_the_lossy_chain_gets_history_patches_that_rebuild_the_same_nets(swa_lossy_repo):
    repo, ids = swa_lossy_repo
    lossy = [p for p in repo.read_index().patches if p.lossy]
    chain = [p for p in lossy if p.history is None]
    assert [p.target for p in chain] == ids[1:] and chain[0].base == ids[0]
    assert [p.base for p in chain[1:]] == [p.result for p in chain[:-1]]
    with_history = [p for p in lossy if p.history is not None]
    # each later link also coded with an earlier net of the chain as history: one or two links back
    assert [(p.base, p.result) for p in with_history] == [(chain[i].base, chain[i].result) for i in (1, 2)]
    assert with_history[0].history == chain[0].base                   # the exact first net
    assert with_history[1].history in (chain[1].base, chain[0].base)
    for p, plain in zip(with_history, chain[1:]):
        assert p.size < plain.size, (p.size, plain.size)
    assert check_repository(str(repo.root), POLICY).ok      # applies each one, re-measures the tolerance


def test_a_client_following_the_lossy_chain_takes_its_history_patches(swa_lossy_repo, tmp_path):
    repo, ids = swa_lossy_repo
    copy_in(tmp_path / "lossy", 0)
    result = fetch(str(repo.root), cache_dir=tmp_path / "lossy", tolerance=TOLERANCE, policy=POLICY)
    lossy = [p for p in repo.read_index().patches if p.lossy]
    first = [p for p in lossy if p.base == ids[0]][0]
    later = [p for p in lossy if p.history is not None]
    assert result.target_id == ids[3] and result.net_id == later[-1].result and result.patches == 3
    assert result.bytes_downloaded == first.size + sum(p.size for p in later) + result.metadata_bytes


def test_after_the_learning_rate_drop_a_lossy_link_predicts_from_two_links_back(tmp_path):
    # From step 900 on the steps are small against 2^-14: two links of the chain predict better than one
    # (four links back would be the exact first net, which the chain here does not reach).
    repo = Repository.create(tmp_path / "repo")
    publish(repo, SWA[9:13], tolerance=TOLERANCE, skips=(1,))
    lossy = [p for p in repo.read_index().patches if p.lossy]
    chain = [p for p in lossy if p.history is None]
    last = [p for p in lossy if p.history is not None and p.base == chain[-1].base]
    assert len(chain) == 3 and len(last) == 1
    assert last[0].history == chain[-3].base and last[0].size < chain[-1].size
    kept = {p.name.split(".")[0] for p in (repo.state_dir / "lossy").glob("*.pb.gz")}
    assert kept == {p.result for p in chain} | {p.base for p in chain[1:]}    # all a later link may use
    assert check_repository(str(repo.root), POLICY).ok


@pytest.mark.slow      # the default run keeps the two-links-back case
def test_at_a_coarse_tolerance_a_lossy_link_predicts_from_four_links_back(tmp_path):
    # At 2^-10 a step moves a weight by about half a quantisation step: four links of the chain
    # predict better than one or two. The net four links back is lossy, kept by the publisher since.
    repo = Repository.create(tmp_path / "repo")
    publish(repo, SWA[:7], tolerance=2.0 ** -10, skips=(1,))
    lossy = [p for p in repo.read_index().patches if p.lossy]
    chain = [p for p in lossy if p.history is None]
    last = [p for p in lossy if p.history is not None and p.base == chain[-1].base]
    assert len(chain) == 6 and len(last) == 1
    assert last[0].history == chain[1].base and last[0].history != Net.load(SWA[1]).id  # lossy, not net 1
    assert check_repository(str(repo.root), POLICY).ok
    copy_in(tmp_path / "cache", 0)
    result = fetch(str(repo.root), cache_dir=tmp_path / "cache", tolerance=2.0 ** -10, policy=POLICY)
    assert result.net_id == chain[-1].result and result.history_patches >= 1
