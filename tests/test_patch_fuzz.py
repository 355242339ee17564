"""Structure-aware fuzzing of real patches: success or an Lc0WeightsError, in bounded memory.

Each case mutates one thing a writer controls (a size, count, codec id or
configuration, shift, escape count, quantisation width, id, a section, the
skeleton stream or the layer list) of a real patch and reseals it, so the
checksum passes and the parser sees it. Every case must end in a rebuilt net
or a library error raised by a known check (not the backstop that catches
anything else). The loop runs in a forked child whose peak memory growth is
bounded. ``tools/bench_hostile.py --fuzz N`` reports time and memory per case.
"""
import numpy as np
import pytest

from lc0weights import Lc0WeightsError, Net, apply_patch, make_patch, read_patch_info
from lc0weights.patch import UNDECODABLE

import hostile
from conftest import NETS

MiB = 1 << 20


@pytest.fixture(scope="module")
def real_patches(run_nets, first_step_patch):
    """(base, patch) pairs of the shapes a repository holds: lossless, lossy, intra."""
    base, target = run_nets[0], run_nets[1]
    small = Net.load(NETS / "meangirl-8.pb.gz")
    pairs = [(base, first_step_patch),
             (base, make_patch(base, target, 2 ** -10, verify=False)),
             (None, make_patch(None, small, 2 ** -8, verify=False))]
    for b, p in pairs:
        apply_patch(b, p)                                 # kernels compiled before forking
    return pairs


def fuzz(pairs, seed: int, cases: int) -> dict:
    """Mutate and decode ``cases`` patches; what ended how, and every escape from the checks."""
    rng = np.random.default_rng(seed)
    outcomes, escaped = {}, []
    for i in range(cases):
        base, patch = pairs[i % len(pairs)]
        mutated, what = hostile.mutate(patch, rng)
        for name, run in (("apply", lambda: apply_patch(base, mutated, workers=1)),
                          ("inspect", lambda: read_patch_info(mutated, base))):
            try:
                run()
                kind = "ok"
            except Lc0WeightsError as e:
                kind = type(e).__name__
                if UNDECODABLE in str(e):
                    escaped.append((i, what, name, str(e)[:300]))
            except Exception as e:                        # noqa: BLE001  (reported, not hidden)
                kind = type(e).__name__
                escaped.append((i, what, name, f"{kind}: {str(e)[:300]}"))
            outcomes[kind] = outcomes.get(kind, 0) + 1
    return {"outcomes": outcomes, "escaped": escaped}


def test_fuzz_real_patches_briefly(real_patches):
    """The default run's sample of the next test: its first 300 cases, held to the same shares."""
    result = hostile.run_measured(fuzz, real_patches, 2024, 300)
    kind, report, _ = result["outcome"]
    assert kind == "ok" and report["escaped"] == [], result
    assert report["outcomes"]["PatchFormatError"] > 200 and report["outcomes"]["ok"] > 25, report
    assert result["peak_growth"] < 64 * MiB + 16 * len(real_patches[0][0].raw), result


@pytest.mark.slow      # the default run fuzzes briefly (above)
def test_fuzz_real_patches(real_patches):
    limit = 64 * MiB + 16 * max(len(b.raw) for b, _ in real_patches if b is not None)
    result = hostile.run_measured(fuzz, real_patches, 2024, 1200)
    kind, report, _ = result["outcome"]
    assert kind == "ok", result
    assert report["escaped"] == []
    assert report["outcomes"]["PatchFormatError"] > 800 and report["outcomes"]["ok"] > 100, report
    assert result["peak_growth"] < limit, result


@pytest.mark.slow
@pytest.mark.parametrize("seed", range(4))
def test_fuzz_real_patches_at_length(real_patches, seed):
    limit = 64 * MiB + 16 * max(len(b.raw) for b, _ in real_patches if b is not None)
    result = hostile.run_measured(fuzz, real_patches, 1000 + seed, 5000)
    kind, report, _ = result["outcome"]
    assert kind == "ok" and report["escaped"] == [], result
    assert result["peak_growth"] < limit, result
