"""Long runs, outside the default test run (``scripts/test -m slow``).

A net of over 100 MB raw round-trips through patch files layer by layer, and
a real patch survives many more random corruptions than the default run tries.
"""
import hashlib

import numpy as np
import pytest

from lc0weights import Lc0WeightsError, Net, apply_patch, make_patch, max_error
from lc0weights.patch import apply_patch_to_file
from lc0weights.synthetic import generate

from conftest import run_paths

pytestmark = pytest.mark.slow


def test_large_net_round_trips_through_files(tmp_path):
    nets = [Net(raw) for _, raw in generate(count=2, blocks=20, filters=384, seed=9)]
    base, target = nets
    assert len(target.raw) > 100_000_000
    lossless = tmp_path / "lossless.lc0p"
    lossless.write_bytes(make_patch(base, target, verify=False))
    out = tmp_path / "rebuilt.pb.gz"
    assert apply_patch_to_file(base, lossless, out) == target.id
    assert Net.load(out).id == target.id
    lossy = make_patch(base, target, 2 ** -14, verify=False)
    assert max_error(Net(apply_patch(base, lossy)), target) <= 2 ** -14
    assert len(lossy) < lossless.stat().st_size


def test_twenty_thousand_corruptions_of_a_real_patch():
    paths = run_paths()
    base, target = Net.load(paths[5]), Net.load(paths[6])
    patch = make_patch(base, target, verify=False)
    rng = np.random.default_rng(77)
    for _ in range(20_000):
        data = bytearray(patch)
        if rng.random() < 0.5:
            data = data[:int(rng.integers(0, len(data)))]
        else:
            pos = int(rng.integers(0, len(data)))
            data[pos] ^= 1 << int(rng.integers(0, 8))
        with pytest.raises(Lc0WeightsError):
            apply_patch(base, bytes(data))
    assert hashlib.sha256(apply_patch(base, patch)).hexdigest() == target.id
