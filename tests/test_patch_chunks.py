"""Layers coded as independent chunks (format version 2): the same bytes whatever the
thread count, every chunk decoded on its own, and a header that lies refused."""
import numpy as np
import pytest

from lc0weights import Net, apply_patch, container, make_patch, read_patch_info
from lc0weights import encodings as enc
from lc0weights.errors import PatchFormatError
from lc0weights.patching.chunks import CHUNK_SIZE, chunk_shape, chunk_step
from lc0weights.proto import lc0net_pb2 as pb

from conftest import load, run_paths
from netfactory import fill_layer

WORKERS = (1, 2, 4)


def one_big_layer_chain(count: int, encoding=enc.LINEAR16, nets=3, seed=5) -> list[Net]:
    """``nets`` successive nets whose body is one (count/9/64, 64, 3, 3) convolution
    with a small bias, each a persistent step from the last (as a trainer moves)."""
    rng = np.random.default_rng(seed)
    out_channels = count // (64 * 9)
    w = rng.normal(0, 0.05, out_channels * 64 * 9).astype(np.float32)
    b = rng.normal(0, 0.05, out_channels).astype(np.float32)
    drift = rng.normal(0, 2e-4, len(w)).astype(np.float32)
    chain = []
    for _ in range(nets):
        net = pb.Net(magic=0x1C0)
        fill_layer(net.weights.input.weights, w, encoding)
        fill_layer(net.weights.input.biases, b, encoding)
        chain.append(Net(net.SerializeToString()))
        w = w + drift + rng.normal(0, 5e-5, len(w)).astype(np.float32)
    return chain


def patches_by_workers(base, target, **kwargs) -> dict[int, bytes]:
    return {n: make_patch(base, target, workers=n, verify=False, **kwargs) for n in WORKERS}


def assert_same_bytes_and_decodes(patches: dict[int, bytes], base, expected_id, history=None):
    first = patches[WORKERS[0]]
    assert all(p == first for p in patches.values()), "patch bytes depend on the thread count"
    for n in WORKERS:
        assert Net(apply_patch(base, first, history=history, workers=n)).id == expected_id


@pytest.fixture(scope="module")
def big_chain():
    return one_big_layer_chain(2 << 20)


def test_chunk_boundaries_follow_rows_and_not_threads():
    assert chunk_step(1000, (1000,), 0) == (1000, 1)
    assert chunk_step(1000, (1000,), 1000) == (1000, 1)
    step, pieces = chunk_step(256 * 64 * 9, (256, 64, 3, 3), 40000)
    assert step % (64 * 9) == 0 and pieces == -(-256 * 64 * 9 // step) and step <= 40000 + 64 * 9
    assert chunk_shape((256, 64, 3, 3), step, 2 * step) == (step // 576, 64, 3, 3)
    # rows longer than a chunk: plain near-equal runs of elements
    assert chunk_step(10 * 5000, (10, 5000), 4096) == (3847, 13)


def test_big_layer_chunked_patch_is_the_same_for_1_2_4_threads(big_chain):
    history, base, target = big_chain
    patches = patches_by_workers(base, target, history=history)
    patch = patches[1]
    assert patch[8:10] == (2).to_bytes(2, "little")
    info = read_patch_info(patch, base)
    chunked = [l for l in info.layers if l["chunks"] > 1]
    weights = target.layer("weights.input.weights")
    assert len(chunked) == 1 and chunked[0]["chunks"] == chunk_step(weights.count, (weights.count // 576, 64, 3, 3),
                                                                     CHUNK_SIZE)[1] > 1
    assert "cm2" in chunked[0]["codec"]
    assert_same_bytes_and_decodes(patches, base, target.id, history)


def test_big_layer_intra_patch_decodes_chunk_by_chunk(big_chain):
    target = big_chain[0]
    patches = patches_by_workers(None, target)
    assert_same_bytes_and_decodes(patches, None, target.id)


def test_lossy_float_layer_chunks_choose_one_kind_per_layer():
    base, target = one_big_layer_chain(300_000, enc.FLOAT16, nets=2)
    patches = patches_by_workers(base, target, tolerance=2.0 ** -12, chunk_size=1 << 15)
    first = patches[1]
    assert all(p == first for p in patches.values())
    info = read_patch_info(first, base)
    assert max(l["chunks"] for l in info.layers) > 4
    assert info.layers[0]["residual"] == "FLOAT_STEP"
    rebuilt = {Net(apply_patch(base, first, workers=n)).id for n in WORKERS}
    assert rebuilt == {info.result_id}


def test_real_net_pair_chunked_the_same_for_1_2_4_threads():
    history, base, target = (load(p) for p in run_paths()[:3])
    patches = patches_by_workers(base, target, history=history, chunk_size=1 << 15)
    assert patches[1][8:10] == (2).to_bytes(2, "little")
    assert_same_bytes_and_decodes(patches, base, target.id, history)
    # maia layers all fit in the default chunk: a version 1 patch, as before chunks
    whole = make_patch(base, target, history=history, workers=2, verify=False)
    assert whole[8:10] == (1).to_bytes(2, "little") and len(whole) < len(patches[1])


def _repacked(patch: bytes, change) -> bytes:
    header, sections = container.unpack(patch)
    change(header)
    return container.pack(header, [bytes(s) for s in sections])


@pytest.mark.parametrize("lie", ["drop-chunk", "resize-chunk", "version-1", "small-chunk-size",
                                 "layer-codec", "escapes"])
def test_a_header_that_misstates_chunks_is_refused(lie):
    base, target = one_big_layer_chain(100_000, nets=2)
    patch = make_patch(base, target, chunk_size=1 << 14, workers=2)

    def change(header):
        lp = max(header.layers, key=lambda lp: len(lp.chunks))
        if lie == "drop-chunk":
            lp.section.stored_size -= lp.chunks[-1].section.stored_size
            header.layers[-1].section.stored_size += lp.chunks[-1].section.stored_size
            del lp.chunks[-1]
        elif lie == "resize-chunk":
            lp.chunks[0].section.stored_size += 1
            lp.chunks[1].section.stored_size -= 1
        elif lie == "version-1":
            header.chunk_size = 0
        elif lie == "small-chunk-size":
            header.chunk_size = 100
        elif lie == "layer-codec":
            lp.section.codec = "cm1"
        elif lie == "escapes":
            lp.chunks[0].escapes = 1 << 40
    with pytest.raises(PatchFormatError):
        apply_patch(base, _repacked(patch, change))
