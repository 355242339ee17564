"""A patch file read by several decoding threads at once: every apply succeeds.

Sections of a patch file were once read with seek + read on one shared handle,
so two worker threads could interleave and hand a decoder another section's
bytes ("cm1 section has 2 bytes left after its last value", a few runs in ten).
"""
import hashlib
import random
from concurrent.futures import ThreadPoolExecutor

import pytest

from lc0weights import apply_patch, container
from lc0weights.patch import apply_patch_to_file



@pytest.fixture(scope="module")
def patch_file(tmp_path_factory, run_nets, first_step_patch):
    base, target, patch = run_nets[0], run_nets[1], first_step_patch
    path = tmp_path_factory.mktemp("threads") / "step.lc0p"
    path.write_bytes(patch)
    return base, target, patch, path


def test_sections_read_from_many_threads_are_the_sections(patch_file):
    _, _, patch, path = patch_file
    expected = [bytes(s) for s in container.unpack(patch)[1]]
    with container.open_patch(path) as source:
        def read_many(seed):
            rng = random.Random(seed)
            for _ in range(3000):
                i = rng.randrange(len(expected))
                if bytes(source.section(i)) != expected[i]:
                    return i
            return None
        with ThreadPoolExecutor(8) as pool:
            assert list(pool.map(read_many, range(8))) == [None] * 8


def test_parallel_applies_of_a_patch_file_with_several_workers(patch_file, tmp_path):
    base, target, _, path = patch_file
    apply_patch(base, path)                               # kernels compiled before the load

    def one(i):
        if i % 4 == 0:                                    # through a file too, as the command does
            return apply_patch_to_file(base, path, tmp_path / f"out{i}.pb", workers=4)
        return hashlib.sha256(apply_patch(base, path, workers=4)).hexdigest()
    with ThreadPoolExecutor(4) as pool:                   # four applies at once on a loaded machine
        ids = list(pool.map(one, range(32)))
    assert ids == [target.id] * 32
