"""A large gzip base read while the net is rebuilt from it (net_arriving), and the
standalone skeleton that lets the rebuild start before the base has arrived."""
from __future__ import annotations

import gzip
import os
import time

import pytest
from conftest import run_paths

from lc0weights import Net, make_patch, read_patch_info
from lc0weights import gzipio
from lc0weights import net_arriving
from lc0weights.cli import main
from lc0weights.errors import NetFormatError, WrongBaseError
from lc0weights.net_arriving import ArrivingNet, SizeNotAsDeclared, load_arriving
from lc0weights.patch import apply_patch_to_file
from lc0weights.patching import rebuilt_pieces
from lc0weights.patching import skeleton


@pytest.fixture
def large_everywhere(monkeypatch):
    """The shared nets count as large: read while used, skeletons coded on their own."""
    monkeypatch.setattr(net_arriving, "SPILL_MIN", 0)
    monkeypatch.setattr(skeleton, "STANDALONE_SKELETON_MIN", 0)


@pytest.fixture
def slow_gunzip(monkeypatch):
    """A gunzip slow enough that the base is still arriving when the first layers are done."""
    feed = gzipio.Inflater.feed

    def slow_feed(self, data):
        time.sleep(0.02)
        return feed(self, data)
    monkeypatch.setattr(gzipio, "READ_SIZE", 1 << 14)
    monkeypatch.setattr(gzipio.Inflater, "feed", slow_feed)


def skeleton_codec(patch: bytes) -> str:
    from lc0weights import container
    with container.open_patch(patch) as source:
        return source.header.skeleton.codec


def test_a_large_base_gets_a_standalone_skeleton_and_a_small_one_the_smaller(run_nets, monkeypatch):
    base, target = run_nets[1], run_nets[2]
    small = make_patch(base, target, verify=False)
    assert skeleton_codec(small) == "brotli-xor-base"        # the smaller on the shared nets
    monkeypatch.setattr(skeleton, "STANDALONE_SKELETON_MIN", len(base.raw))
    large = make_patch(base, target, verify=False)
    assert skeleton_codec(large) == "brotli"
    assert 0 < len(large) - len(small) < 1000


def test_an_arriving_net_is_the_net(large_everywhere, tmp_path, run_nets):
    arriving = load_arriving(run_paths()[0], spill_dir=tmp_path)
    assert isinstance(arriving, ArrivingNet)
    first = arriving.layer_at(0)
    assert first == run_nets[0].layers[0]
    assert bytes(arriving.payload(first)) == bytes(run_nets[0].payload(first))
    net = arriving.complete()
    assert net.id == run_nets[0].id and bytes(net.raw) == bytes(run_nets[0].raw)
    assert net.layers == run_nets[0].layers
    assert arriving.layer_at(len(net.layers)) is None
    assert os.listdir(tmp_path) == []                 # the spill file never keeps a name


def test_small_nets_load_as_before(tmp_path, run_nets):
    assert isinstance(load_arriving(run_paths()[0], spill_dir=tmp_path), Net)


@pytest.mark.parametrize("workers", [1, 2])
def test_the_rebuild_starts_before_the_base_has_arrived(large_everywhere, slow_gunzip, tmp_path, run_nets,
                                                        workers):
    base, target = run_nets[1], run_nets[2]
    patch = make_patch(base, target, history=run_nets[0], verify=False)
    arriving = load_arriving(run_paths()[1], spill_dir=tmp_path)
    pieces = rebuilt_pieces(arriving, patch, run_nets[0], workers=workers)
    first_layer = target.layers[0]
    rebuilt = bytearray()
    while len(rebuilt) < first_layer.span.params_end:
        rebuilt += next(pieces)
    assert not arriving._done                           # layer 0 is rebuilt, the base still arriving
    for piece in pieces:
        rebuilt += piece
    assert bytes(rebuilt) == bytes(target.raw)


def test_a_patch_written_from_an_arriving_base(large_everywhere, tmp_path, run_nets):
    base, target = run_nets[1], run_nets[2]
    patch = make_patch(base, target, verify=False)
    out = tmp_path / "out.pb.gz"
    net_id = apply_patch_to_file(load_arriving(run_paths()[1], spill_dir=tmp_path), patch, out, workers=2)
    assert net_id == target.id == Net.load(out).id


def test_an_arriving_wrong_base_is_named_and_nothing_is_written(large_everywhere, tmp_path, run_nets):
    patch = make_patch(run_nets[1], run_nets[2], verify=False)
    out = tmp_path / "out.pb.gz"
    with pytest.raises(WrongBaseError):
        apply_patch_to_file(load_arriving(run_paths()[3], spill_dir=tmp_path), patch, out, workers=2)
    assert os.listdir(tmp_path) == []


def test_an_arriving_corrupt_base_fails_as_a_net_and_nothing_is_written(large_everywhere, tmp_path, run_nets):
    data = bytearray(run_paths()[1].read_bytes())
    data[len(data) // 2:len(data) // 2 + 64] = bytes(64)          # the trailer still declares a size
    bad = tmp_path / "bad.pb.gz"
    bad.write_bytes(data)
    patch = make_patch(run_nets[1], run_nets[2], verify=False)
    out = tmp_path / "out.pb.gz"
    with pytest.raises(NetFormatError, match="bad.pb.gz"):
        apply_patch_to_file(load_arriving(bad, spill_dir=tmp_path), patch, out, workers=2)
    assert sorted(os.listdir(tmp_path)) == ["bad.pb.gz"]


def test_a_base_of_two_gzip_members_is_read_whole_instead(large_everywhere, tmp_path, run_nets):
    raw = bytes(run_nets[1].raw)
    two = tmp_path / "two.pb.gz"
    two.write_bytes(gzip.compress(raw[:1000]) + gzip.compress(raw[1000:]))
    patch_path = tmp_path / "p.lc0p"
    patch_path.write_bytes(make_patch(run_nets[1], run_nets[2], verify=False))
    with pytest.raises(SizeNotAsDeclared):
        load_arriving(two, spill_dir=tmp_path).complete()
    out = tmp_path / "out.pb.gz"
    assert main(["-q", "apply", str(two), str(patch_path), "-o", str(out)]) == 0
    assert Net.load(out).id == run_nets[2].id
    assert read_patch_info(str(patch_path)).result_id == run_nets[2].id


def test_verify_reads_an_arriving_base_and_names_a_wrong_one(large_everywhere, tmp_path, run_nets, monkeypatch,
                                                              capsys):
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    monkeypatch.setattr("tempfile.tempdir", None)          # TMPDIR is read again
    patch = tmp_path / "p.lc0p"
    patch.write_bytes(make_patch(run_nets[1], run_nets[2], verify=False))
    base, wrong, target = (str(p) for p in (run_paths()[1], run_paths()[3], run_paths()[2]))
    assert main(["-q", "verify", base, str(patch), target, "--json"]) == 0
    assert '"ok": true' in capsys.readouterr().out
    assert main(["-q", "verify", wrong, str(patch), target]) != 0
    assert "not this patch's base" in capsys.readouterr().err
    assert sorted(os.listdir(tmp_path)) == ["p.lc0p"]       # no spill file left in the temp folder
