"""A large base kept in an unnamed file and mapped (Net.load's spill folder) while a patch is
applied, and the decoding kernels loaded from numba's cache on a helper thread."""
from __future__ import annotations

import gzip
import mmap
import os
import subprocess
import sys
import textwrap

import pytest
from conftest import run_paths

from lc0weights import Net, make_patch
from lc0weights import net as net_module
from lc0weights.client.cache import NetCache
from lc0weights.errors import NetFormatError
from lc0weights.patch import apply_patch, apply_patch_to_file


@pytest.fixture
def spill_everything(monkeypatch):
    """Spill every gzip net (the shared nets are far below the real threshold)."""
    monkeypatch.setattr(net_module, "SPILL_MIN", 0)


def test_a_spilled_net_is_the_same_net(spill_everything, tmp_path, run_nets):
    path = run_paths()[0]
    spilled = Net.load(path, spill_dir=tmp_path)
    assert isinstance(spilled.raw, mmap.mmap)
    assert bytes(spilled.raw) == bytes(run_nets[0].raw)
    assert spilled.id == run_nets[0].id            # hashed while it was gunzipped
    assert [layer.path for layer in spilled.layers] == [layer.path for layer in run_nets[0].layers]
    assert os.listdir(tmp_path) == []              # the file never keeps a name


def test_released_bytes_read_back_the_same(spill_everything, tmp_path, run_nets):
    spilled = Net.load(run_paths()[0], spill_dir=tmp_path)
    layer = max(spilled.layers, key=lambda layer: layer.count)
    before = spilled.codes(layer).copy()
    spilled.release(layer.span.params_start, layer.span.params_end)
    assert (spilled.codes(layer) == before).all()
    run_nets[0].release(0, len(run_nets[0].raw))   # a net on the heap keeps its bytes
    assert bytes(run_nets[0].raw[:64]) == bytes(spilled.raw[:64])


def test_small_nets_and_raw_files_stay_on_the_heap(tmp_path, run_nets):
    assert isinstance(Net.load(run_paths()[0], spill_dir=tmp_path).raw, bytearray)   # below SPILL_MIN
    raw = tmp_path / "net.pb"
    raw.write_bytes(run_nets[0].raw)
    assert not isinstance(Net.load(raw, spill_dir=tmp_path).raw, mmap.mmap)


def test_a_patch_applies_from_a_spilled_base_and_history(spill_everything, tmp_path, run_nets):
    base, target = run_nets[1], run_nets[2]
    patch = make_patch(base, target, history=run_nets[0], verify=False)
    spilled_base = Net.load(run_paths()[1], spill_dir=tmp_path)
    spilled_history = Net.load(run_paths()[0], spill_dir=tmp_path)
    assert bytes(apply_patch(spilled_base, patch, spilled_history, workers=2)) == bytes(target.raw)
    out = tmp_path / "out.pb.gz"
    assert apply_patch_to_file(spilled_base, patch, out, spilled_history, workers=1) == target.id
    assert gzip.decompress(out.read_bytes()) == bytes(target.raw)
    assert bytes(spilled_base.raw) == bytes(base.raw)     # every chunk's pages let go, none changed


def test_a_corrupt_gzip_spills_nothing(spill_everything, tmp_path):
    data = bytearray(run_paths()[0].read_bytes())
    data[len(data) // 2] ^= 0xFF
    bad = tmp_path / "bad.pb.gz"
    bad.write_bytes(bytes(data))
    folder = tmp_path / "spill"
    folder.mkdir()
    with pytest.raises(NetFormatError, match="bad.pb.gz"):
        Net.load(bad, spill_dir=folder)
    assert os.listdir(folder) == []


def test_a_missing_spill_folder_says_where(spill_everything, tmp_path):
    with pytest.raises(NetFormatError, match="cannot unpack into .*nowhere"):
        Net.load(run_paths()[0], spill_dir=tmp_path / "nowhere")


def test_the_cache_spills_held_nets_into_its_folder(spill_everything, tmp_path, run_nets):
    from repo_fixtures import copy_into_cache
    cache = tmp_path / "cache"
    copy_into_cache(run_paths()[1], cache, run_nets[1].id)
    before = sorted(os.listdir(cache))
    held = NetCache(cache).load(run_nets[1].id, spill=True)
    assert isinstance(held.raw, mmap.mmap) and held.id == run_nets[1].id
    assert not isinstance(NetCache(cache).load(run_nets[1].id).raw, mmap.mmap)   # a check, not a rebuild
    assert sorted(os.listdir(cache)) == before          # the spilled copy has no name there


def test_preloaded_kernels_come_from_the_cache(tmp_path, run_nets):
    """After one decode has filled numba's cache, a fresh process preloads the decoding kernels
    without calling them: the versions a decode needs are there before its first call."""
    patch = tmp_path / "p.lc0p"
    patch.write_bytes(make_patch(run_nets[0], run_nets[1], verify=False))
    script = textwrap.dedent(f"""
        import sys
        from lc0weights import Net, kernels
        from lc0weights.patch import apply_patch, preload_decoders
        if sys.argv[1] == "fill":
            apply_patch(Net.load({str(run_paths()[0])!r}), {str(patch)!r})
        else:
            preload_decoders().join()
            assert kernels.decode_layer.signatures, "nothing preloaded"
            before = len(kernels.decode_layer.signatures)
            apply_patch(Net.load({str(run_paths()[0])!r}), {str(patch)!r})
            assert len(kernels.decode_layer.signatures) == before, "the decode needed another version"
    """)
    for step in ("fill", "check"):
        done = subprocess.run([sys.executable, "-c", script, step], capture_output=True, text=True, check=False)
        assert done.returncode == 0, done.stderr[-2000:]


def test_a_full_disk_is_a_clear_error(spill_everything, tmp_path, monkeypatch):
    import errno

    def full(fd, data):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    monkeypatch.setattr(net_module.os, "write", full)
    with pytest.raises(NetFormatError, match="cannot unpack into .*No space left"):
        Net.load(run_paths()[0], spill_dir=tmp_path)
    assert os.listdir(tmp_path) == []


def test_a_fetch_rebuilds_from_a_spilled_base(spill_everything, published_three, held_cache, run_nets,
                                              monkeypatch):
    """A client holding net 1 fetches net 2 through the patch: the held base is read into an
    unnamed file in the cache folder, and the fetched net checks out."""
    from lc0weights.client import TransferPolicy, fetch
    from repo_fixtures import cache_files, leftovers, serving
    spilled = []
    load = Net.load

    def watched(path, max_size=None, *, spill_dir=None):
        net = load(path, max_size, spill_dir=spill_dir)
        spilled.append((spill_dir, isinstance(net.raw, mmap.mmap)))
        return net
    monkeypatch.setattr(Net, "load", staticmethod(watched))
    with serving(published_three.root) as srv:
        result = fetch(srv.url, cache_dir=held_cache, policy=TransferPolicy(timeout=5.0, progress=False))
    assert result.net_id == run_nets[2].id and result.patches == 1
    assert (held_cache, True) in spilled
    assert leftovers(held_cache) == []
    assert cache_files(held_cache) == sorted(f"{n.id}.pb.gz" for n in run_nets[1:3])
