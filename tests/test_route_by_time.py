"""Routes by time: which route given the rates, the rate file as hostile input, rates measured on loopback.

No timing is asserted: rates are injected, and measured ones are only checked
to exist and to have been counted.
"""
import json
import math
import os

import pytest

from lc0weights.cli import main as lc0weights_main
from lc0weights.client import TransferPolicy, fetch
from lc0weights.client.link_rate import (DEFAULT_GUNZIP, DEFAULT_GZIP, DEFAULT_LINK, DEFAULT_REBUILD,
                                         MAX_FILE_BYTES, MAX_LINKS, RATES_NAME, RateBook, Rates, link_name)
from lc0weights.client.route import ByteCosts, TimeCosts, cheapest_route
from lc0weights.repository.index import NetEntry, PatchEntry, Catalogue, net_object_path, \
    patch_object_path

from conftest import run_paths
from repo_fixtures import copy_into_cache, serving

MB = 1_000_000
N = [f"{i:x}" * 64 for i in range(1, 8)]
GZ, RAW = 334 * MB, 450 * MB            # an lc0-sized net: .pb.gz and raw protobuf
FAST = TransferPolicy(timeout=5.0, retries=2, backoff=0.01, progress=False)


def lc0_index(patch_share=0.4, skip_share=0.5, direct_share=None) -> Catalogue:
    """Seven lc0-sized nets, patches from one and two back (and optionally 2 -> 6 directly)."""
    nets = [NetEntry(n, net_object_path(n), GZ, "0" * 64, RAW, None, "", None) for n in N]
    patches = []

    def add(base, target, share):
        sha = f"{base:02x}{target:02x}".ljust(64, "0")
        patches.append(PatchEntry(N[base], N[target], N[target], patch_object_path(sha), int(GZ * share), sha))

    for i in range(1, len(N)):
        add(i - 1, i, patch_share)
        if i >= 2:
            add(i - 2, i, skip_share)
    if direct_share is not None:
        add(2, 6, direct_share)
    return Catalogue(nets=nets, patches=patches, latest=N[-1])


# -- which route, given rates ------------------------------------------------------------------

def test_slow_link_takes_the_patch():
    rates = Rates.fixed(link=2 * MB)                     # 16 Mbit/s
    route = cheapest_route(lc0_index(), {N[6]}, {N[5]}, costs=TimeCosts(lc0_index(), rates))
    assert route.start == N[5] and route.patch_count == 1 and route.cost == int(GZ * 0.4)


def test_fast_link_takes_the_full_net():
    index = lc0_index()
    rates = Rates.fixed(link=100 * MB)                   # 800 Mbit/s
    route = cheapest_route(index, {N[6]}, {N[5]}, costs=TimeCosts(index, rates))
    assert route.start is None and route.cost == GZ and isinstance(route.steps[0], NetEntry)
    # ... while by bytes the same client still takes the patch
    assert cheapest_route(index, {N[6]}, {N[5]}).patch_count == 1


def test_the_chosen_route_is_the_fastest_of_the_candidates():
    index = lc0_index()
    for link in (0.5 * MB, 5 * MB, 12 * MB, 30 * MB, 300 * MB):
        for rebuild in (5 * MB, 20 * MB, 80 * MB):
            costs = TimeCosts(index, Rates.fixed(link=link, rebuild=rebuild))
            route = cheapest_route(index, {N[6]}, {N[3]}, costs=costs)
            assert math.isclose(route.seconds, costs.route_seconds(route))
            by_bytes = cheapest_route(index, {N[6]}, {N[3]})
            full = cheapest_route(index, {N[6]}, set())
            for other in (by_bytes, full):
                assert route.seconds <= costs.route_seconds(other) + 1e-9


def test_slow_rebuilds_take_fewer_hops_even_for_more_bytes():
    index = lc0_index(patch_share=0.1, skip_share=0.15, direct_share=0.35)
    by_bytes = cheapest_route(index, {N[6]}, {N[2]})
    assert by_bytes.patch_count == 2 and by_bytes.cost == int(GZ * 0.15) * 2     # 2 -> 4 -> 6
    slow_cpu = Rates.fixed(link=5 * MB, rebuild=30 * MB)
    route = cheapest_route(index, {N[6]}, {N[2]}, costs=TimeCosts(index, slow_cpu))
    assert route.patch_count == 1 and route.steps[0].base == N[2] and route.cost == int(GZ * 0.35)


def test_storing_a_rebuilt_net_is_counted():
    """A slow gzip alone tips the balance: a full download stores the published gzip as it is."""
    index = lc0_index()
    even = Rates.fixed(link=8 * MB, gzip=1e9)
    assert cheapest_route(index, {N[6]}, {N[5]}, costs=TimeCosts(index, even)).patch_count == 1
    slow_gzip = Rates.fixed(link=8 * MB, gzip=5 * MB)
    assert cheapest_route(index, {N[6]}, {N[5]}, costs=TimeCosts(index, slow_gzip)).patch_count == 0


def test_a_held_goal_is_still_held_by_time():
    index = lc0_index()
    route = cheapest_route(index, {N[6]}, {N[6], N[5]}, costs=TimeCosts(index, Rates.fixed(link=1e9)))
    assert route.steps == () and route.start == N[6]


def test_bytes_costs_are_todays_route():
    index = lc0_index(patch_share=0.1, skip_share=0.15, direct_share=0.35)
    for held in ({N[0]}, {N[2]}, {N[4], N[1]}, set(), {N[6]}):
        today = cheapest_route(index, {N[6]}, held)
        assert cheapest_route(index, {N[6]}, held, costs=ByteCosts()) == today
        assert today.seconds is None


# -- the rate file as hostile input ------------------------------------------------------------

def _defaults(book: RateBook) -> bool:
    rates = book.rates("link local")
    return (rates.link.bytes_per_s, rates.rebuild.bytes_per_s, rates.gzip.bytes_per_s,
            rates.gunzip.bytes_per_s) == (DEFAULT_LINK, DEFAULT_REBUILD, DEFAULT_GZIP, DEFAULT_GUNZIP) \
        and not any(r.measured for r in (rates.link, rates.rebuild, rates.gzip, rates.gunzip))


def _entry(amount, seconds=1.0, samples=1, when=0):
    return json.dumps({"format": 1, "rates": {"rebuild": [amount, seconds, samples, when]}})


@pytest.mark.parametrize("content", [
    b"\x00\xff\xfe not json",
    b"[" * 5000 + b"]" * 5000,
    b" " * (MAX_FILE_BYTES + 1) + b'{"format": 1, "rates": {}}',
    b'{"format": 2, "rates": {"rebuild": [1e7, 1, 1, 0]}}',
    b'{"format": 1, "rates": []}',
    b'"rebuild"',
    _entry(-5e7).encode(),
    _entry(5e7, -1).encode(),
    _entry(5e7, 0).encode(),
    b'{"format": 1, "rates": {"rebuild": [NaN, 1, 1, 0]}}',
    b'{"format": 1, "rates": {"rebuild": [Infinity, 1, 1, 0]}}',
    b'{"format": 1, "rates": {"rebuild": [1e400, 1, 1, 0]}}',
    _entry(10 ** 400).encode(),
    _entry(1e14, 1e-3).encode(),                       # 100 TB/s: a broken clock, not a machine
    _entry(10, 1).encode(),                            # 10 bytes/s
    _entry(5e7, 1, 1.5).encode(),
    _entry(5e7, 1, True).encode(),
    _entry(5e7, 1, 0).encode(),
    _entry("5e7").encode(),
    b'{"format": 1, "rates": {"rebuild": [5e7, 1, 1]}}',
    b'{"format": 1, "rates": {"rebuild\\n": [5e7, 1, 1, 0], "link\\tx": [5e7, 1, 1, 0]}}',
], ids=lambda c: c[:40].decode("latin-1"))
def test_a_bad_rates_file_is_ignored(tmp_path, content):
    (tmp_path / RATES_NAME).write_bytes(content)
    book = RateBook.load(tmp_path)
    assert _defaults(book)


def test_good_entries_survive_beside_bad_ones(tmp_path):
    doc = {"format": 1, "rates": {"rebuild": [3e7, 1.0, 2, 5], "gzip": [-1, 1, 1, 0],
                                  "link http://a:80": [float("1e300"), 1e-9, 1, 0], "bogus": [1, 1, 1, 0]}}
    (tmp_path / RATES_NAME).write_text(json.dumps(doc))
    rates = RateBook.load(tmp_path).rates("link http://a:80")
    assert rates.rebuild.bytes_per_s == 3e7 and rates.rebuild.samples == 2
    assert not rates.gzip.measured and not rates.link.measured


def test_a_symlinked_rates_file_is_not_read_nor_written_through(tmp_path):
    elsewhere = tmp_path / "elsewhere.json"
    elsewhere.write_text(_entry(3e7))
    cache = tmp_path / "cache"
    cache.mkdir()
    (cache / RATES_NAME).symlink_to(elsewhere)
    book = RateBook.load(cache)
    assert _defaults(book)
    book.record("rebuild", 4e7, 1.0)
    book.save()
    assert elsewhere.read_text() == _entry(3e7)
    assert not (cache / RATES_NAME).is_symlink()
    assert RateBook.load(cache).rate("rebuild").bytes_per_s == 4e7


def test_a_fifo_is_not_waited_on(tmp_path):
    os.mkfifo(tmp_path / RATES_NAME)
    assert _defaults(RateBook.load(tmp_path))


def test_absurd_samples_are_not_recorded():
    book = RateBook()
    for amount, seconds in ((5e7, float("nan")), (float("nan"), 1.0), (-5e7, 1.0), (5e7, -1.0), (5e7, 0.0),
                            (5e7, 1e-9), (1, 10.0), (float("inf"), 1.0)):
        book.record("rebuild", amount, seconds)
    book.record("no such rate", 5e7, 1.0)
    assert _defaults(book) and not book.changed


def test_slow_samples_pull_the_rate_down_faster_than_fast_ones_push_it_up(tmp_path):
    book = RateBook(tmp_path / RATES_NAME)
    book.record("link local", 10 * MB, 1.0)
    assert book.rate("link local").bytes_per_s == 10 * MB
    book.record("link local", 10 * MB, 10.0)             # the link dropped to 1 MB/s
    slower = book.rate("link local").bytes_per_s
    assert slower < math.sqrt(10 * MB * 1 * MB)           # below the geometric middle
    book.record("link local", 10 * MB, 1.0)               # and back up to 10 MB/s
    assert slower < book.rate("link local").bytes_per_s < 10 * MB
    book.save()
    again = RateBook.load(tmp_path).rate("link local")
    assert again.samples == 3 and math.isclose(again.bytes_per_s, book.rate("link local").bytes_per_s)
    assert sorted(p.name for p in tmp_path.iterdir()) == [RATES_NAME]      # temp file renamed away


def test_only_the_most_recent_links_are_kept(tmp_path):
    book = RateBook(tmp_path / RATES_NAME)
    for i in range(MAX_LINKS + 4):
        book.record(link_name(f"http://host{i}.example/repo/"), 5 * MB, 1.0)
        book._sums[link_name(f"http://host{i}.example/repo/")][3] = i      # distinct ages, oldest first
    book.save()
    kept = json.loads((tmp_path / RATES_NAME).read_text())["rates"]
    assert sorted(kept) == sorted(link_name(f"http://host{i}.example/repo/") for i in range(4, MAX_LINKS + 4))
    assert len((tmp_path / RATES_NAME).read_bytes()) < MAX_FILE_BYTES


def test_links_are_named_by_origin():
    assert link_name("http://Nets.Example.org/repo/") == link_name("http://nets.example.org:80/other/")
    assert link_name("https://nets.example.org/") == "link https://nets.example.org:443"
    assert link_name("/some/folder") == "link local"


# -- measured on a real loopback fetch ---------------------------------------------------------

@pytest.fixture(scope="module")
def repo(published_three):
    return published_three


@pytest.fixture(scope="module")
def nets(run_nets):
    return run_nets[:3]


def test_a_fetch_measures_the_link_and_the_rebuild(repo, nets, held_cache):
    with serving(repo.root) as srv:
        link = link_name(srv.url)
        result = fetch(srv.url, cache_dir=held_cache, policy=FAST)
        rates = RateBook.load(held_cache).rates(link)
        (held_cache / f"{nets[2].id}.pb.gz").unlink()
        again = fetch(srv.url, cache_dir=held_cache, policy=FAST)
    assert result.net_id == again.net_id == nets[2].id and result.patches == again.patches == 1
    assert rates.link.samples == 1 and rates.rebuild.samples == 1 and rates.gzip.samples == 1
    assert not rates.gunzip.measured                      # no full net was unpacked
    assert result.prefer == "bytes" and result.estimate["bytes"] == result.bytes_downloaded - result.metadata_bytes
    # Each reports the rates its route was chosen with: the defaults, then what the first one measured.
    assert result.estimate["rates"] == RateBook().rates(link).to_dict()
    assert again.estimate["rates"] == rates.to_dict() and again.estimate["rates"]["link"]["measured"]
    assert again.estimate["seconds"] > 0
    assert RateBook.load(held_cache).rates(link).rebuild.samples == 2


def _book(link_rate, url) -> RateBook:
    book = RateBook()
    book.record(link_name(url), link_rate, 1.0)
    return book


def test_time_takes_the_full_net_on_a_fast_link_and_bytes_does_not(repo, nets, held_cache, tmp_path):
    with serving(repo.root) as srv:
        fast = fetch(srv.url, cache_dir=held_cache, policy=FAST, prefer="time", rates=_book(1e9, srv.url))
        other = tmp_path / "other"
        copy_into_cache(run_paths()[1], other, nets[1].id)
        by_bytes = fetch(srv.url, cache_dir=other, policy=FAST, prefer="bytes", rates=_book(1e9, srv.url))
    assert fast.net_id == nets[2].id and fast.patches == 0 and fast.route.startswith("full")
    assert by_bytes.net_id == nets[2].id and by_bytes.patches == 1
    assert fast.estimate["bytes"] == fast.full_size and by_bytes.estimate["bytes"] < by_bytes.full_size


def test_time_takes_the_patch_on_a_slow_link(repo, nets, held_cache):
    with serving(repo.root) as srv:
        slow = fetch(srv.url, cache_dir=held_cache, policy=FAST, prefer="time", rates=_book(1e5, srv.url))
    assert slow.net_id == nets[2].id and slow.patches == 1 and slow.prefer == "time"


def test_the_command_line_routes_by_the_rates_file(repo, nets, held_cache, capsys, monkeypatch):
    monkeypatch.delenv("LC0WEIGHTS_PREFER", raising=False)
    monkeypatch.setenv("LC0WEIGHTS_CONFIG", str(held_cache.parent / "no-config"))
    with serving(repo.root) as srv:
        book = RateBook(held_cache / RATES_NAME)
        book.record(link_name(srv.url), 1e9, 1.0)
        book.save()
        assert lc0weights_main(["fetch", srv.url, "--cache", str(held_cache), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["prefer"] == "time" and report["route"].startswith("full") and report["patches"] == 0
    assert report["estimate"]["bytes"] == report["full_size"]
    assert report["estimate"]["rates"]["link"]["measured"]


def test_prefer_from_the_environment_and_a_bad_value(repo, nets, held_cache, capsys, monkeypatch):
    monkeypatch.setenv("LC0WEIGHTS_CONFIG", str(held_cache.parent / "no-config"))
    with serving(repo.root) as srv:
        book = RateBook(held_cache / RATES_NAME)
        book.record(link_name(srv.url), 1e9, 1.0)
        book.save()
        monkeypatch.setenv("LC0WEIGHTS_PREFER", "fastest")
        assert lc0weights_main(["fetch", srv.url, "--cache", str(held_cache)]) != 0
        assert "LC0WEIGHTS_PREFER: prefer must be time or bytes, not 'fastest'" in capsys.readouterr().err
        monkeypatch.setenv("LC0WEIGHTS_PREFER", "bytes")
        assert lc0weights_main(["fetch", srv.url, "--cache", str(held_cache), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["prefer"] == "bytes" and report["patches"] == 1


def test_prefer_from_the_config_file_and_a_bad_value_there(repo, nets, held_cache, capsys, monkeypatch):
    monkeypatch.delenv("LC0WEIGHTS_PREFER", raising=False)
    config = held_cache.parent / "config"
    monkeypatch.setenv("LC0WEIGHTS_CONFIG", str(config))
    with serving(repo.root) as srv:
        book = RateBook(held_cache / RATES_NAME)
        book.record(link_name(srv.url), 1e9, 1.0)
        book.save()
        config.write_text("[lc0weights]\nprefer = quickest\n")
        assert lc0weights_main(["fetch", srv.url, "--cache", str(held_cache)]) != 0
        assert f"'prefer' in {config}: prefer must be time or bytes" in capsys.readouterr().err
        config.write_text("[lc0weights]\nprefer = bytes\n")
        assert lc0weights_main(["fetch", srv.url, "--cache", str(held_cache), "--json"]) == 0
        assert json.loads(capsys.readouterr().out)["patches"] == 1


def test_the_mirror_prefers_bytes_upstream_unless_told(repo, nets, tmp_path):
    from lc0weights.serving.mirror import Mirror
    routes = {}
    for prefer in (None, "time"):
        own = tmp_path / f"mirror-{prefer}"
        copy_into_cache(run_paths()[1], own, nets[1].id)
        book = RateBook(own / RATES_NAME)
        book.record(link_name(str(repo.root)), 1e9, 1.0)          # a very fast upstream link
        book.save()
        mirror = Mirror(str(repo.root), cache_dir=own, policy=FAST, **({"prefer": prefer} if prefer else {}))
        served = mirror.serve(nets[2].id)
        served.file.close()
        routes[prefer] = served.route
    assert routes[None] == f"{nets[1].id[:8]}->{nets[2].id[:8]}"
    assert routes["time"] == f"full {nets[2].id[:8]}"
