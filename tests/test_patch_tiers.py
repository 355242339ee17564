"""Patch tiers: the record field, lookups by pair, routes by bytes and by time, the publisher's candidates.

Publishing tests lower the publisher's threshold so maia nets get both tiers.
"""
from __future__ import annotations

import hashlib
import json
import shutil

import pytest

from lc0weights import Net
from lc0weights.cli import main as lc0weights_main
from lc0weights.client import TransferPolicy, check_repository, fetch
from lc0weights.client.link_rate import (DEFAULT_REBUILD, DEFAULT_REBUILD_FAST, RATES_NAME, RateBook, Rates,
                                         rebuild_rate_name)
from lc0weights.client.route import TimeCosts, cheapest_route
from lc0weights.patching.decode import read_patch_info
from lc0weights.patching.encode import FAST_CODECS, TIERS, make_patch
from lc0weights.repository.errors import UntrustedError
from lc0weights.repository.index import (Catalogue, NetEntry, PatchEntry, net_object_path, parse_patch_entry,
                                         patch_object_path)
from lc0weights.repository.metadata import Link, Record, parse_record, record_path
from lc0weights.repository.strict import Strict
from service.patch_policy import (FAST_TIER_MIN_WEIGHTS, HISTORY_GAPS, candidate_tiers, keep_on_routes,
                                  lossy_history_gaps, uses_fast_tier)
from service.prune import prune
from service.publish import publish
from service.repository import Repository

from conftest import SHARED

SWA = sorted((SHARED / "data" / "runs" / "maia-swa").glob("step-*.pb.gz"))
POLICY = TransferPolicy(timeout=5.0, retries=1, backoff=0.01, progress=False)
MB = 1_000_000
A, B, C, D = ("a" * 64, "b" * 64, "c" * 64, "d" * 64)


def entry(base, result, size, tier="cm", base_seq=0, history=None, n=0) -> PatchEntry:
    sha = f"{n:02x}{size:010x}{tier[0]}".ljust(64, "0")
    return PatchEntry(base, result, result, patch_object_path(sha), size, sha, base_seq=base_seq,
                      history=history, tier=tier)


# -- the record field ------------------------------------------------------------------------------

def parse(doc):
    return parse_patch_entry(Strict("record", UntrustedError), doc, "patches[0]", target=B)


def test_the_tier_field_is_fast_or_absent():
    doc = {"base": A, "size": 10, "sha256": C, "base_seq": 0}
    assert parse(doc).tier == "cm"
    assert parse({**doc, "tier": "fast"}).tier == "fast"
    for bad in ("cm", "slow", "FAST", 1, None, ["fast"]):
        with pytest.raises(UntrustedError, match=r"patches\[0\]\.tier"):
            parse({**doc, "tier": bad})


def test_a_record_writes_the_tier_only_when_fast():
    net = NetEntry(B, net_object_path(B), 100, D, 200, None, "", None)
    cm, fast = entry(A, B, 10, "cm"), entry(A, B, 12, "fast")
    record = Record(repository="e" * 32, seq=1, net=net, patches=[cm, fast])
    data = record.to_bytes()
    docs = json.loads(data)["patches"]
    assert "tier" not in docs[0] and docs[1]["tier"] == "fast"
    # A record with cm patches only reads and writes exactly as before tiers.
    assert b"tier" not in Record(repository="e" * 32, seq=1, net=net, patches=[cm]).to_bytes()
    link = Link(1, B, len(data), hashlib.sha256(data).hexdigest())
    again = parse_record(data, link, "e" * 32)
    assert [(p.tier, p.size) for p in again.patches] == [("cm", 10), ("fast", 12)]
    assert "tier" not in cm.to_dict() and fast.to_dict()["tier"] == "fast"


def test_a_lookup_by_pair_takes_the_fewest_bytes_and_can_ask_for_a_tier():
    index = Catalogue(patches=[entry(A, B, 12, "fast"), entry(A, B, 10, "cm"), entry(B, C, 5, "fast")])
    assert index.patch(A, B).tier == "cm" and index.patch(A, B).size == 10
    assert index.patch(A, B, tier="fast").size == 12
    assert index.patch(B, C, tier="cm") is None and index.patch(B, C).size == 5
    assert [p.tier for p in index.patches_between(A, B)] == ["fast", "cm"]


# -- making a patch in a tier ------------------------------------------------------------------------

def test_a_fast_patch_uses_only_the_fast_codecs(tmp_path):
    base, target = Net.load(SWA[0]), Net.load(SWA[1])
    fast = make_patch(base, target, tier="fast")
    cm = make_patch(base, target)
    codecs = {c for lp in read_patch_info(fast).layers for c in lp["codec"].split("+")}
    assert codecs <= set(FAST_CODECS) and "rans1" in codecs
    assert "cm1" in {lp["codec"] for lp in read_patch_info(cm).layers}
    assert len(cm) < len(fast)
    with pytest.raises(ValueError, match="tier"):
        make_patch(base, target, tier="quick")
    out = tmp_path / "fast.lc0patch"
    assert lc0weights_main(["diff", str(SWA[0]), str(SWA[1]), "-o", str(out), "--tier", "fast"]) == 0
    assert out.read_bytes() == fast


# -- rates and routes ----------------------------------------------------------------------------------

def test_the_rebuild_fast_rate_is_recorded_kept_and_defaulted(tmp_path):
    assert [rebuild_rate_name(t) for t in TIERS] == ["rebuild", "rebuild-fast"]
    assert DEFAULT_REBUILD_FAST == 4 * DEFAULT_REBUILD
    assert RateBook.load(tmp_path).rates("link local").rebuild_fast.bytes_per_s == DEFAULT_REBUILD_FAST
    # An old rates file (no rebuild-fast) stays valid.
    (tmp_path / RATES_NAME).write_text(json.dumps({"format": 1, "rates": {"rebuild": [3e7, 1.0, 2, 5]}}))
    old = RateBook.load(tmp_path).rates("link local")
    assert old.rebuild.bytes_per_s == 3e7 and not old.rebuild_fast.measured
    book = RateBook.load(tmp_path)
    book.record("rebuild-fast", 9e7, 1.0)
    book.save()
    saved = RateBook.load(tmp_path).rates("link local")
    assert saved.rebuild_fast.bytes_per_s == 9e7 and saved.rebuild.bytes_per_s == 3e7


GZ, RAW = 334 * MB, 375 * MB            # a BT4 net


def two_tier_index() -> Catalogue:
    nets = [NetEntry(n, net_object_path(n), GZ, "0" * 64, RAW, None, "", None) for n in (A, B)]
    return Catalogue(nets=nets, patches=[entry(A, B, 30 * MB, "cm", n=1), entry(A, B, 32 * MB, "fast", n=2)],
                     latest=B)


def test_by_bytes_a_route_takes_the_cm_patch():
    route = cheapest_route(two_tier_index(), {B}, {A})
    assert route.steps[0].tier == "cm" and route.cost == 30 * MB


@pytest.mark.parametrize("link, tier", [(12.5 * MB, "fast"), (0.5 * MB, "cm")])
def test_by_time_a_fast_link_takes_the_fast_patch_and_a_slow_one_the_cm_patch(link, tier):
    # cm rebuilds 375 MB at 10 MB/s (37.5 s), fast at 100 MB/s (3.75 s). At 100 Mbit/s the fast
    # patch arrives in 2.6 s, the cm one in 2.4 s: the fast one is done first. At 4 Mbit/s the
    # download dominates and the 2 MB fewer of the cm patch win.
    index = two_tier_index()
    rates = Rates.fixed(link=link, rebuild=10 * MB, rebuild_fast=100 * MB)
    route = cheapest_route(index, {B}, {A}, costs=TimeCosts(index, rates))
    assert route.patch_count == 1 and route.steps[0].tier == tier


# -- the publisher's candidates ----------------------------------------------------------------------------

def test_candidate_tiers_and_gaps_by_net_size():
    assert not uses_fast_tier(1_200_000) and uses_fast_tier(187_600_000)
    assert uses_fast_tier(FAST_TIER_MIN_WEIGHTS) and uses_fast_tier(10, min_weights=0)
    assert [candidate_tiers(back, False) for back in (1, 4, 16)] == [("cm",)] * 3
    assert [candidate_tiers(back, True) for back in (1, 4, 16)] == [("cm", "fast"), ("fast",), ("fast",)]
    assert [candidate_tiers(back, True, True) for back in (1, 4)] == [("fast",), ("fast",)]
    assert lossy_history_gaps(False, 2) == HISTORY_GAPS
    assert lossy_history_gaps(True, None) == (1,) and lossy_history_gaps(True, 4) == (4,)


def test_keep_on_routes_compares_tiers_like_with_like():
    # net 4 from net 0: a cm chain 0->...->4 costs 40, a fast chain 80.
    ids = [f"{i}" * 64 for i in range(5)]
    earlier = [entry(ids[i], ids[i + 1], 10, "cm", base_seq=i, n=i) for i in range(3)] + \
              [entry(ids[i], ids[i + 1], 20, "fast", base_seq=i, n=10 + i) for i in range(3)]
    k1 = [entry(ids[3], ids[4], 10, "cm", base_seq=3, n=20), entry(ids[3], ids[4], 20, "fast", base_seq=3, n=21)]
    far_fast = entry(ids[0], ids[4], 60, "fast", base_seq=0, n=22)      # beats the fast chain (80)
    kept = keep_on_routes(4, k1 + [far_fast], earlier)
    assert kept == k1 + [far_fast]               # kept though cm patches rebuild net 4 for 40
    dear_fast = entry(ids[0], ids[4], 90, "fast", base_seq=0, n=23)
    assert keep_on_routes(4, k1 + [dear_fast], earlier) == k1


# -- publishing both tiers (maia nets, the threshold lowered) --------------------------------------------------

def copy_in(cache, *which):
    cache.mkdir(parents=True, exist_ok=True)
    for i in which:
        shutil.copyfile(SWA[i], cache / f"{Net.load(SWA[i]).id}.pb.gz")


@pytest.fixture(scope="module")
def tiered_repo(tmp_path_factory):
    if len(SWA) < 5:
        pytest.fail("the shared maia-swa run is missing")
    repo = Repository.create(tmp_path_factory.mktemp("tiers") / "repo")
    publish(repo, SWA[:5], skips=(1, 4), history=False, fast_tier_min_weights=0)
    return repo, [Net.load(p).id for p in SWA[:5]]


def test_a_big_net_gets_both_tiers_from_its_predecessor_and_fast_from_further_back(tiered_repo):
    repo, ids = tiered_repo
    index = repo.read_index()
    for k in range(1, 5):
        plain = [p for p in index.patches if p.target == ids[k] and p.base == ids[k - 1] and p.history is None]
        assert sorted(p.tier for p in plain) == ["cm", "fast"]
        cm, fast = sorted(plain, key=lambda p: p.tier)
        assert cm.size < fast.size and cm.path != fast.path
    far = [p for p in index.patches if p.target == ids[4] and p.base == ids[0]]
    assert [p.tier for p in far] == ["fast"]          # 4 back: fast only (kept: it beats the fast chain)
    assert len(index.patches) == 9
    record = json.loads(repo.object_file(record_path(ids[4])).read_bytes())
    assert sorted(p.get("tier", "") for p in record["patches"]) == ["", "fast", "fast"]   # cm: no field
    assert check_repository(str(repo.root), POLICY).ok            # every patch of both tiers rebuilds its net


def test_with_history_the_cm_tier_codes_only_the_history_version_of_the_predecessors_link(tmp_path):
    repo = Repository.create(tmp_path / "repo")
    publish(repo, SWA[:4], skips=(1,), fast_tier_min_weights=0)
    ids = [Net.load(p).id for p in SWA[:4]]
    index = repo.read_index()
    into_last = [p for p in index.patches if p.target == ids[3] and p.base == ids[2]]
    assert sorted(p.tier for p in into_last if p.history is None) == ["fast"]
    assert "cm" in {p.tier for p in into_last if p.history == ids[1]}
    assert check_repository(str(repo.root), POLICY).ok


def test_a_client_takes_cm_by_bytes_and_by_time_the_tier_its_rates_favour(tiered_repo, tmp_path):
    repo, ids = tiered_repo
    index = repo.read_index()
    copy_in(tmp_path / "bytes", 3)
    by_bytes = fetch(str(repo.root), cache_dir=tmp_path / "bytes", policy=POLICY, prefer="bytes")
    cm = index.patch(ids[3], ids[4], tier="cm")
    assert by_bytes.net_id == ids[4] and by_bytes.bytes_downloaded == cm.size + by_bytes.metadata_bytes
    # By time, a cm rebuild at 100 kB/s: on a 5 MB/s link the fast patch (the full net would take
    # longer to arrive), on a 10 kB/s link the cm patch (its fewer bytes outweigh its rebuild).
    for link, tier in ((5e6, "fast"), (1e4, "cm")):
        cache = tmp_path / f"time-{tier}"
        copy_in(cache, 3)
        book = RateBook(None)
        for name, rate in (("link local", link), ("rebuild", 1e5), ("rebuild-fast", 1e9)):
            book.record(name, rate, 1.0)
        by_time = fetch(str(repo.root), cache_dir=cache, policy=POLICY, prefer="time", rates=book)
        taken = index.patch(ids[3], ids[4], tier=tier)
        assert by_time.net_id == ids[4] and by_time.bytes_downloaded == taken.size + by_time.metadata_bytes
        assert Net.load(next(cache.glob(f"{ids[4]}*"))).id == ids[4]        # verified and cached


def test_prune_keeps_both_tiers_between_kept_nets_and_drops_the_rest(tiered_repo, tmp_path):
    repo, ids = tiered_repo
    copy = Repository.existing(shutil.copytree(repo.root, tmp_path / "repo"))
    report = prune(copy, keep=3)                      # nets 2, 3, 4 stay
    index = copy.read_index()
    assert report.nets_removed == 2 and report.patches_removed == 3     # 0->1 in both tiers, 0->4 fast
    assert sorted((p.base_seq, p.tier) for p in index.patches) == [(2, "cm"), (2, "fast"), (3, "cm"), (3, "fast")]
    stored = set(copy.stored_objects())
    assert {p.path for p in index.patches} <= stored
    assert not any(p.path in stored for p in repo.read_index().patches if p.base_seq < 2)
    assert check_repository(str(copy.root), POLICY).ok


@pytest.mark.slow      # lossy_history_gaps is tested quickly above; this publishes a lossy chain
def test_the_fast_tier_lossy_chain_tries_one_history_gap(tmp_path):
    # The codec is forced to cm2 in both tiers: what is tested is which gaps are tried. On these nets the cm tier's last link
    # predicts best from two links back (test_history_publishing); the fast tier tries only the
    # gap the link before it published, 1, so its last link's history is one link back.
    repo = Repository.create(tmp_path / "repo")
    publish(repo, SWA[9:13], tolerance=2.0 ** -14, skips=(1,), codec="cm2", fast_tier_min_weights=0)
    lossy = [p for p in repo.read_index().patches if p.lossy]
    assert {p.tier for p in lossy} == {"fast"}
    chain = [p for p in lossy if p.history is None]
    with_history = [p for p in lossy if p.history is not None]
    assert len(chain) == 3 and [p.base for p in with_history] == [p.base for p in chain[1:]]
    assert [p.history for p in with_history] == [chain[0].base, chain[1].base]      # gap 1 each time
    assert check_repository(str(repo.root), POLICY).ok
