"""Hostile patches: every declared size is checked before memory is committed.

Each case builds its patch here (resealed, so the checksum passes), runs it in a
forked child and asserts a clean Lc0WeightsError and a bounded peak memory
growth (generous limits; times are reported by tools/bench_hostile.py, never
asserted).
"""
import gzip
import io
import json
import struct
import subprocess
import sys

import brotli

import numpy as np
import pytest

from lc0weights import Net, apply_patch, make_patch, read_patch_info
from lc0weights.cli import main
from lc0weights.errors import NetFormatError, PatchFormatError, VerificationError
from lc0weights.patch import UNDECODABLE, apply_patch_to_file

import hostile
import netfactory as nf
from conftest import run_paths
from lc0weights import container
from lc0weights.proto import lc0net_pb2, patch_pb2

MiB = 1 << 20


@pytest.fixture(scope="module")
def real(run_nets, first_step_patch):
    """A real base, target and cm1 patch; applied once so the kernels are compiled before forking."""
    base, target, patch = run_nets[0], run_nets[1], first_step_patch
    assert bytes(apply_patch(base, patch)) == bytes(target.raw)
    return base, target, patch


def memory_limit(*nets) -> int:
    """What a case may add to the process: 32 MiB and 16 times the largest net involved."""
    return 32 * MiB + 16 * max([len(n.raw) for n in nets] + [0])


def assert_refused(result, limit, error=PatchFormatError, match=""):
    kind, message, is_library_error = result["outcome"]
    assert is_library_error and kind == error.__name__, result
    assert match in message and UNDECODABLE not in message, result
    assert 0 <= result["peak_growth"] < limit, result


def refuse_everywhere(base, patch, limit, tmp_path, match="", error=PatchFormatError, inspect=True):
    """apply, apply to a file and inspect (given the base, as apply is) all refuse it."""
    out = tmp_path / "out.pb.gz"
    assert_refused(hostile.run_measured(apply_patch, base, patch), limit, error, match)
    assert_refused(hostile.run_measured(apply_patch_to_file, base, patch, out), limit, error, match)
    if inspect:
        assert_refused(hostile.run_measured(read_patch_info, patch, base), limit, error, match)
    assert not list(tmp_path.iterdir()), "no output or temp file left"


@pytest.mark.parametrize("declared", [2 << 30, 16 << 30, 1 << 63])
def test_declared_net_size_is_checked_before_the_output_is_allocated(real, tmp_path, declared):
    base, target, patch = real
    bad = hostile.with_header(patch, lambda h: setattr(h, "result_size", declared))
    refuse_everywhere(base, bad, memory_limit(base, target), tmp_path)
    if declared > 2 << 30:                                 # past the default limit: no base needed
        assert_refused(hostile.run_measured(read_patch_info, bad), memory_limit(base, target))


def test_max_size_refuses_a_larger_net_and_passes_the_real_one(real, tmp_path, capsys):
    base, target, patch = real
    size = len(target.raw)
    with pytest.raises(PatchFormatError, match="more than the"):
        apply_patch(base, patch, max_size=size - 1)
    with pytest.raises(PatchFormatError, match="more than the"):
        read_patch_info(patch, max_size=size - 1)
    assert len(apply_patch(base, patch, max_size=size)) == size
    (tmp_path / "p").write_bytes(patch)
    out = tmp_path / "o.pb"
    for command in (["apply", run_paths()[0], tmp_path / "p", "-o", out],
                    ["verify", run_paths()[0], tmp_path / "p", run_paths()[1]],
                    ["inspect", tmp_path / "p"]):
        code = main([str(a) for a in command] + ["--max-size", "1M"])
        err = capsys.readouterr().err.strip().splitlines()
        assert code == 1 and len(err) == 1 and "than the 1,048,576" in err[0], err
    assert not out.exists()


def test_a_tiny_patch_declaring_a_huge_layer_of_zero_residuals(tmp_path):
    bad = hostile.zero_layer_patch(64 << 20)               # 128 MB of float16 from 5 bytes of cm1
    assert len(bad) < 300
    refuse_everywhere(None, bad, memory_limit(), tmp_path, "values in 5 bytes")


def test_a_delta_layer_must_match_its_base_layer(real, tmp_path):
    base, target, patch = real

    def pair_with_another_size(header):
        header.layers[0].base_shift += 1                   # input weights paired with their biases
    bad = hostile.with_header(patch, pair_with_another_size)
    refuse_everywhere(base, bad, memory_limit(base, target), tmp_path, "does not match")


def test_a_skeleton_bomb_is_refused_before_it_is_expanded(tmp_path):
    bad = hostile.skeleton_bomb_patch(1 << 30)             # 1 GiB of tiny fields
    assert len(bad) < 4096
    refuse_everywhere(None, bad, memory_limit(), tmp_path, "skeleton of 1,073")


def test_the_largest_skeleton_allowed_is_walked_in_bounded_memory(tmp_path):
    from lc0weights.patch import SKELETON_CAP
    bad = hostile.skeleton_bomb_patch(SKELETON_CAP)        # half a million fields
    refuse_everywhere(None, bad, memory_limit() + 4 * SKELETON_CAP, tmp_path,
                      "does not match the id", error=VerificationError, inspect=False)
    info = hostile.run_measured(read_patch_info, bad)
    assert info["outcome"][0] == "ok" and info["peak_growth"] < memory_limit() + 4 * SKELETON_CAP


def test_packed_dims_running_past_the_skeleton(tmp_path):
    """Found by the fuzzer: a packed field read past the end of the skeleton buffer."""
    number = lc0net_pb2.Weights.DESCRIPTOR.fields_by_name["ip2_val_b"].number
    layer = hostile.tag(5, 2) + hostile.varint(100) + b"\x01\x02"
    body = hostile.tag(1, 5) + struct.pack("<I", 0x1C0) + \
        hostile.length_field(10, hostile.length_field(number, layer))
    stream = hostile.varint(0) + body
    skeleton = brotli.compress(stream)
    header = patch_pb2.PatchHeader(target_id=bytes(32), result_size=len(body), skeleton_size=len(stream),
                                   skeleton=patch_pb2.Section(codec="brotli", stored_size=len(skeleton)))
    refuse_everywhere(None, container.pack(header, [skeleton]), memory_limit(), tmp_path, "corrupt skeleton")


def test_a_header_listing_a_million_empty_layers(real, tmp_path):
    base, target, patch = real
    header, sections = hostile.split(patch)
    for _ in range(1 << 20):
        header.layers.add()
    bad = hostile.reseal(header, sections + [b""] * (1 << 20))
    refuse_everywhere(base, bad, memory_limit(base, target) + 64 * MiB, tmp_path)


def test_inspect_command_with_the_base_runs_the_checks_of_apply(real, tmp_path, capsys):
    base, target, patch = real
    path = tmp_path / "bad.lc0p"
    path.write_bytes(hostile.with_header(patch, lambda h: setattr(h, "result_size", 2 << 30)))
    assert main(["inspect", str(path)]) == 0            # the sizes need the base to add up
    capsys.readouterr()
    assert main(["inspect", str(path), "--base", str(run_paths()[0])]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "do not add up" in err[0], err


def test_inspect_command_on_an_absurd_skeleton_size_is_one_line(real, tmp_path):
    _, _, patch = real
    bad = tmp_path / "bad.lc0p"
    bad.write_bytes(hostile.with_header(patch, lambda h: setattr(h, "skeleton_size", 1 << 63)))
    proc = subprocess.run([sys.executable, "-m", "lc0weights.cli", "inspect", str(bad)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert proc.stderr.count("\n") == 1 and proc.stderr.startswith("lc0weights: error: "), proc.stderr


def gzip_bomb(raw_size: int) -> bytes:
    buffer = io.BytesIO()
    z = gzip.GzipFile(fileobj=buffer, mode="wb", mtime=0)
    block = bytes(MiB)
    for _ in range(raw_size // MiB):
        z.write(block)
    z.close()
    return buffer.getvalue()


def test_a_gzip_bomb_is_decompressed_only_up_to_the_limit(tmp_path, capsys, first_step_patch):
    bomb = gzip_bomb(256 * MiB)                            # 256 MiB of zeros in about 250 KB
    assert len(bomb) < MiB
    limit = 16 * MiB
    result = hostile.run_measured(Net.from_bytes, bomb, "bomb", limit)
    assert_refused(result, 32 * MiB + 4 * limit, NetFormatError, "larger than the 16,777,216")
    path = tmp_path / "bomb.pb.gz"
    path.write_bytes(bomb)
    assert_refused(hostile.run_measured(Net.load, path, limit), 32 * MiB + 4 * limit, NetFormatError,
                   "larger than")
    out, patch = tmp_path / "out.pb", tmp_path / "step.lc0patch"
    patch.write_bytes(first_step_patch)                  # a real patch: the bomb is the base
    code = main(["apply", str(path), str(patch), "-o", str(out), "--max-size", "16M"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 1 and len(err) == 1 and "larger than" in err[0] and not out.exists()


# -- codec configuration ---------------------------------------------------------------------

def with_config(patch, config: bytes, layer=0, codec=None):
    def change(header):
        section = header.layers[layer].section
        section.codec_config = config
        if codec:
            section.codec = codec
    return hostile.with_header(patch, change)


@pytest.fixture(scope="module")
def varint_patch(first_step_varint_patch):
    return first_step_varint_patch


@pytest.mark.parametrize("config, match", [
    (b'{"quality": 9, "window": 22}', "no parameter 'window'"),      # a parameter of a later writer
    (b'{"quality": {"nested": 1}}', "not a plain value"),
    (b"[" * 100_000 + b"]" * 100_000, "codec configuration of"),
    (b"[" * 2000 + b"]" * 2000, "unreadable codec configuration"),  # deep, within the size bound
    (b'"just a string"', "unreadable codec configuration"),
    (b"\xff\xfe", "unreadable codec configuration"),
])
def test_a_bad_codec_configuration_is_a_patch_format_error(real, varint_patch, tmp_path, config, match):
    base, target, _ = real
    patch = varint_patch
    refuse_everywhere(base, with_config(patch, config), memory_limit(base, target), tmp_path, match)


@pytest.mark.parametrize("codec", ["cm1", "stored"])
def test_codecs_without_parameters_refuse_any(real, tmp_path, codec):
    base, target, patch = real
    bad = with_config(patch, json.dumps({"order": 2}).encode(), codec=codec)
    refuse_everywhere(base, bad, memory_limit(base, target), tmp_path, "no parameter 'order'")


def test_a_bad_codec_configuration_through_the_command_line(real, tmp_path):
    base, target, patch = real
    path = tmp_path / "bad.lc0p"
    path.write_bytes(with_config(patch, b'{"level": 3}'))
    out = tmp_path / "out.pb.gz"
    proc = subprocess.run([sys.executable, "-m", "lc0weights.cli", "apply", str(run_paths()[0]),
                           str(path), "-o", str(out)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr and proc.stderr.count("\n") == 1
    assert "no parameter 'level'" in proc.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.lc0p"]


def test_writer_keeps_dense_intra_layers_readable():
    """A large all-zero intra layer is written in a codec readers accept (stored, here)."""
    net = lc0net_pb2.Net(magic=0x1C0)
    nf.fill_layer(net.weights.ip1_val_w, np.zeros(1 << 20, np.float32), encoding=2)
    target = Net.from_bytes(net.SerializeToString())
    patch = make_patch(None, target)                     # verified: the reader's bounds hold
    codecs = [l["codec"] for l in read_patch_info(patch).layers]
    assert codecs == ["stored"], codecs
    assert bytes(apply_patch(None, patch)) == bytes(target.raw)
