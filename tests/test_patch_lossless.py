"""Lossless patches rebuild the target byte for byte (sha256 equal) on the shared nets."""
import hashlib

import pytest

from lc0weights import Net, apply_patch, make_patch, read_patch_info

from conftest import NETS, load, run_paths, shared_net_paths


def roundtrip(base, target, **kw):
    patch = make_patch(base, target, verify=False, **kw)
    rebuilt = apply_patch(base, patch)
    assert hashlib.sha256(rebuilt).hexdigest() == target.id
    assert bytes(rebuilt) == target.raw
    return patch


def pairs(step):
    paths = run_paths()
    return [(paths[i], paths[i + step]) for i in range(len(paths) - step)]


@pytest.mark.parametrize("base_path,target_path", pairs(1) + pairs(3),
                         ids=lambda p: p.name.split(".")[0])
def test_run_pairs_rebuild_exactly(base_path, target_path):
    base, target = load(base_path), load(target_path)
    patch = roundtrip(base, target)
    gz_size = target_path.stat().st_size
    assert len(patch) < 0.75 * gz_size, "a patch between checkpoints should be far below the .pb.gz"
    info = read_patch_info(patch)
    assert info.base_id == base.id and info.target_id == info.result_id == target.id


def test_independently_trained_nets():
    roundtrip(load(NETS / "maia-1100.pb.gz"), load(NETS / "maia-1900.pb.gz"))


@pytest.mark.parametrize("forward", [True, False], ids=["maia-to-meangirl", "meangirl-to-maia"])
def test_different_architecture(forward):
    a, b = load(NETS / "maia-1500.pb.gz"), load(NETS / "meangirl-8.pb.gz")
    base, target = (a, b) if forward else (b, a)
    patch = roundtrip(base, target)
    info = read_patch_info(patch)
    assert any(layer["intra"] for layer in info.layers), "unmatched layers are coded intra"


@pytest.mark.parametrize("path", shared_net_paths(), ids=lambda p: p.name.split(".")[0])
def test_intra_patch_of_every_shared_net(path):
    net = load(path)
    patch = make_patch(None, net, verify=False)
    rebuilt = apply_patch(None, patch)
    assert hashlib.sha256(rebuilt).hexdigest() == net.id
    assert read_patch_info(patch).base_id is None
    assert len(patch) < 0.95 * path.stat().st_size, "a patch against no base beats the .pb.gz"


def test_apply_ignores_a_base_for_an_intra_patch(run_nets):
    patch = make_patch(None, run_nets[1], verify=False)
    assert Net(apply_patch(run_nets[0], patch)).id == run_nets[1].id


def test_history_context_round_trips_and_is_required(run_nets):
    history, base, target = run_nets[0], run_nets[1], run_nets[2]
    patch = make_patch(base, target, history=history, verify=False)
    assert read_patch_info(patch).history_id == history.id
    assert Net(apply_patch(base, patch, history=history)).id == target.id
    from lc0weights import MissingHistoryError
    with pytest.raises(MissingHistoryError):
        apply_patch(base, patch)


def test_progress_hook_sees_every_rebuilt_byte(run_nets, tmp_path):
    base, target = run_nets[3], run_nets[4]
    patch = make_patch(base, target, verify=False)
    seen = []

    def progress(chunks, total):
        seen.append(total)
        for chunk in chunks:
            seen.append(len(chunk))
            yield chunk
    rebuilt = apply_patch(base, patch, progress=progress)
    assert seen[0] == len(target.raw) == sum(seen[1:]) == len(rebuilt)
    from lc0weights.patch import apply_patch_to_file
    out = tmp_path / "net.pb.gz"
    assert apply_patch_to_file(base, patch, out) == target.id
    assert Net.load(out).id == target.id


def test_apply_refuses_a_net_larger_than_expected(run_nets):
    from lc0weights import PatchFormatError
    base, target = run_nets[0], run_nets[1]
    patch = make_patch(base, target, codec="varint-brotli", verify=False)
    assert Net(apply_patch(base, patch, max_size=len(target.raw))).id == target.id
    with pytest.raises(PatchFormatError, match="more than"):
        apply_patch(base, patch, max_size=len(target.raw) - 1)
