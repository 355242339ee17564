"""Tolerance-bounded patches: every decoded weight within T, closed loop along a chain."""
import pytest

from lc0weights import Net, apply_patch, make_patch, max_error, read_patch_info

TOLERANCES = [2 ** -17, 2 ** -14, 2 ** -10]


# The default run keeps one tolerance of each family; the others are long runs.
@pytest.mark.parametrize("tolerance", [pytest.param(TOLERANCES[0], marks=pytest.mark.slow), TOLERANCES[1],
                                       pytest.param(TOLERANCES[2], marks=pytest.mark.slow)],
                         ids=["2^-17", "2^-14", "2^-10"])
def test_every_pair_within_tolerance_and_smaller(run_nets, tolerance):
    for base, target in zip(run_nets, run_nets[1:]):
        lossy = make_patch(base, target, tolerance, verify=False)
        lossless = make_patch(base, target, verify=False)
        rebuilt = Net(apply_patch(base, lossy))
        error = max_error(rebuilt, target)
        assert error <= tolerance, f"{target.source}: error {error} over {tolerance}"
        assert len(lossy) < len(lossless)
        info = read_patch_info(lossy)
        assert info.mode == "tolerance" and info.tolerance == tolerance
        assert info.target_id == target.id and info.result_id == rebuilt.id != target.id
        assert [l.encoding for l in rebuilt.layers] == [l.encoding for l in target.layers]


@pytest.mark.parametrize("tolerance", [pytest.param(2 ** -17, marks=pytest.mark.slow), 2 ** -10],
                         ids=["2^-17", "2^-10"])
def test_chain_of_ten_lossy_patches_never_drifts(run_nets, tolerance):
    held = run_nets[0]                               # what a client holds
    for target in run_nets[1:11]:
        patch = make_patch(held, target, tolerance, codec="varint-brotli")   # against the rebuilt net
        held = Net(apply_patch(held, patch))
        assert max_error(held, target) <= tolerance
    assert len(run_nets[1:11]) == 10


def test_tolerance_patch_checks_its_result_on_apply(run_nets):
    base, target = run_nets[0], run_nets[1]
    patch = make_patch(base, target, 2 ** -14, codec="varint-brotli", verify=False)
    result = Net(apply_patch(base, patch))
    assert read_patch_info(patch).result_id == result.id
