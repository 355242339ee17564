"""Publishing with worker processes, the byte cap on candidates, and the prune rule."""
import hashlib

import pytest

from lc0weights import Net
from lc0weights.client.route import cheapest_route
from lc0weights.patching.encode import PatchTooLarge, make_patch
from lc0weights.repository.index import PatchEntry, Catalogue
from service.encode_pool import Job, Scratch, encode_job
from service.patch_policy import keep_on_routes
from service.publish import publish
from service.repository import Repository

from conftest import SHARED

SWA = sorted((SHARED / "data" / "runs" / "maia-swa").glob("step-*.pb.gz"))


def contents(repo: Repository) -> tuple[dict, dict]:
    """Every object's bytes (records aside: they carry publication times), and the index
    without the times."""
    objects = {rel: repo.object_file(rel).read_bytes() for rel in repo.stored_objects()
               if not rel.startswith("records/")}
    catalogue = repo.read_index()
    nets = [net.to_dict() for net in catalogue.nets]
    for net in nets:
        net.pop("published", None)
    index = {"nets": nets, "patches": [p.to_dict() for p in catalogue.patches], "latest": catalogue.latest}
    return objects, index


@pytest.mark.slow      # the patches' own thread-count determinism is tests/test_patch_chunks.py's
def test_parallel_publish_writes_what_a_sequential_one_does(tmp_path):
    paths = SWA[:4]
    repos = {}
    for workers in (1, 2):
        repos[workers] = Repository.create(tmp_path / f"repo{workers}")
        publish(repos[workers], paths, tolerance=2.0 ** -10, skips=(1, 2), workers=workers)
    sequential, parallel = contents(repos[1]), contents(repos[2])
    assert sequential[1] == parallel[1]                   # same nets, patches, sizes, hashes, order
    assert sequential[0].keys() == parallel[0].keys() and sequential[0] == parallel[0]
    kinds = {(p["mode"], p.get("history") is not None) for p in sequential[1]["patches"]}
    assert {("lossless", False), ("lossless", True), ("tolerance", False)} <= kinds
    assert not (repos[2].state_dir / "publishing").exists()      # the scratch folder is gone
    # Every lossless patch kept is the cheapest way to its net for a client holding what it needs.
    index = repos[2].read_index()
    lossless = Catalogue(patches=[p for p in index.patches if not p.lossy])
    for p in lossless.patches:
        held = {p.base} | ({p.history} if p.history else set())
        assert cheapest_route(lossless, {p.result}, held).cost == p.size, p


def test_a_candidate_over_the_cap_is_abandoned_and_not_published(tmp_path):
    base, target = Net.load(SWA[0]), Net.load(SWA[1])
    whole = make_patch(base, target, codec="stored", verify=False)
    with pytest.raises(PatchTooLarge):
        make_patch(base, target, codec="stored", verify=False, max_bytes=len(whole) // 2)
    scratch = Scratch(tmp_path / "state")
    job = Job("d1", scratch.raw_net(target.id, SWA[1]), scratch.raw_net(base.id, SWA[0]), codec="stored",
              max_bytes=len(whole) // 2)
    assert encode_job(job).patch is None
    assert not (scratch.root / "d1.lc0patch").exists()
    done = encode_job(Job("d1", job.target, job.base, codec="stored"))
    assert done.size == len(whole) and done.sha256 == hashlib.sha256(whole).hexdigest()
    scratch.close()

    # The stored codec makes every patch larger than the gzip'd net: none is published.
    repo = Repository.create(tmp_path / "repo")
    results = publish(repo, SWA[:3], codec="stored", skips=(1, 2), workers=1)
    assert [len(r.patches) for r in results] == [0, 0, 0]
    assert [rel for rel in repo.stored_objects() if rel.startswith("patches/")] == []


def _patch(k: int, back: int, size: int, history: int | None = None) -> PatchEntry:
    return PatchEntry(base=f"n{k - back}", target=f"n{k}", result=f"n{k}", path=f"patches/{k}-{back}-{history}",
                      size=size, sha256="", base_seq=k - back,
                      history=None if history is None else f"n{history}")


def test_the_prune_rule_drops_only_patches_no_client_takes():
    earlier = [_patch(9, 1, 40), _patch(8, 1, 40)]
    d1, d2, d3 = _patch(10, 1, 30), _patch(10, 2, 100), _patch(10, 3, 75)
    kept = keep_on_routes(10, [d1, d2, d3], earlier)
    assert kept == [d1, d3]          # 8 -> 9 -> 10 costs 70 < 100; 7 -> 10 has no other way
    cheap = _patch(10, 2, 69)
    assert keep_on_routes(10, [d1, cheap], earlier) == [d1, cheap]
    # Each patch kept is on the cheapest route of a client holding its base.
    index = Catalogue(patches=earlier + kept)
    for p in kept:
        assert cheap not in kept and cheapest_route(index, {p.result}, {p.base}).steps == (p,)
    # A history patch makes the route through the predecessor cheaper: the far patch goes.
    h1 = _patch(10, 1, 20, history=8)
    assert keep_on_routes(10, [d1, h1, _patch(10, 2, 65)], earlier) == [d1, h1]
    # The patch from the predecessor is always kept, whatever it costs.
    assert keep_on_routes(10, [_patch(10, 1, 500)], earlier) == [_patch(10, 1, 500)]
