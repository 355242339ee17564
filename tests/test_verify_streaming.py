"""``verify`` streams the rebuilt net and the target: same verdicts and fields as loading both whole."""
from __future__ import annotations

import json
import random

import pytest
from conftest import NETS, load, run_paths, shared_net_paths

from lc0weights import Net, apply_patch, make_patch
from lc0weights.cli import main
from lc0weights.errors import NetFormatError, VerificationError
from lc0weights.net_stream import NetStream, file_pieces
from lc0weights.patching import max_error, max_layer_error, rebuilt_pieces

TOLERANCE = 2 ** -10


@pytest.fixture(scope="module")
def files(tmp_path_factory, run_nets):
    """Net 0 of the run, a lossless and a lossy patch from it to net 1, on disk."""
    folder = tmp_path_factory.mktemp("verify")
    lossless, lossy = folder / "lossless.lc0p", folder / "lossy.lc0p"
    lossless.write_bytes(make_patch(run_nets[0], run_nets[1], verify=False))
    lossy.write_bytes(make_patch(run_nets[0], run_nets[1], TOLERANCE, verify=False))
    return {"base": run_paths()[0], "lossless": lossless, "lossy": lossy, "folder": folder}


def verify(capsys, *args, json_out=True):
    code = main(["verify", *map(str, args), *(["--json"] if json_out else [])])
    out, err = capsys.readouterr()
    return code, (json.loads(out) if json_out and out else out), err


# -- the stream walker agrees with Net -----------------------------------------------------------

def _described(pairs):
    return [(layer.path, layer.encoding, layer.count, layer.codable, layer.dims, layer.min_bits,
             layer.max_bits, bytes(memoryview(data)[layer.span.params_start:layer.span.params_end]))
            for layer, data in pairs]


def _split(raw, seed: int):
    """``raw`` in pieces of uneven sizes (1 byte to 64 KB), so fields straddle pieces."""
    rng, pos, view = random.Random(seed), 0, memoryview(raw)
    while pos < len(raw):
        step = rng.choice((1, 3, 17, 1000, 65536))
        yield view[pos:pos + step]
        pos += step


@pytest.mark.parametrize("path", shared_net_paths()[:3] + run_paths()[:1], ids=lambda p: p.name)
def test_a_streamed_net_has_the_layers_ids_and_size_of_the_loaded_one(path):
    net = load(path)
    stream = NetStream(file_pieces(path), str(path))
    assert _described(stream.layers()) == _described((layer, net.raw) for layer in net.layers)
    assert stream.id == net.id and stream.size == len(net.raw)


def test_repeated_and_duplicated_fields_are_numbered_as_net_numbers_them(run_nets):
    raw = bytes(run_nets[0].raw) + bytes(run_nets[1].raw)       # protobuf merges the two messages
    net = Net(raw)
    assert any("~1" in layer.path for layer in net.layers)
    stream = NetStream(_split(raw, 1), "merged", hash_raw=False)
    assert _described(stream.layers()) == _described((layer, net.raw) for layer in net.layers)


@pytest.mark.parametrize("cut", [5, 1000, 200_000])
def test_a_truncated_net_fails_as_net_fails(run_nets, cut):
    raw = bytes(run_nets[0].raw)[:-cut]
    with pytest.raises(NetFormatError) as whole:
        Net(raw, "t")
    with pytest.raises(NetFormatError) as streamed:
        list(NetStream(_split(raw, cut), "t").layers())
    assert str(streamed.value) == str(whole.value)


def test_max_layer_error_over_streams_is_max_error(run_nets):
    paths = run_paths()
    streamed = max_layer_error(NetStream(file_pieces(paths[0]), "a").layers(),
                               NetStream(file_pieces(paths[2]), "b").layers())
    assert streamed == max_error(run_nets[0], run_nets[2]) > 0


def test_rebuilt_pieces_are_the_applied_net_and_a_wrong_base_is_refused(files, run_nets):
    pieces = b"".join(bytes(p) for p in rebuilt_pieces(run_nets[0], files["lossy"]))
    assert pieces == bytes(apply_patch(run_nets[0], files["lossy"].read_bytes()))
    with pytest.raises(Exception, match="base net"):
        list(rebuilt_pieces(run_nets[2], files["lossy"]))


# -- verify: verdicts and fields ---------------------------------------------------------------------

@pytest.mark.parametrize("workers", [1, 3])
def test_lossless_verify_says_ok_with_the_ids(files, run_nets, capsys, workers):
    code, record, _ = verify(capsys, files["base"], files["lossless"], run_paths()[1], "--workers", workers)
    assert code == 0
    assert record == {"mode": "lossless", "tolerance": None, "rebuilt_id": run_nets[1].id,
                      "target_id": run_nets[1].id, "ok": True}


def test_lossless_verify_against_another_net_says_failed(files, run_nets, capsys):
    other = files["folder"] / "other.pb"                   # a raw (not gzip) target is read too
    other.write_bytes(bytes(run_nets[2].raw))
    code, text, _ = verify(capsys, files["base"], files["lossless"], other, json_out=False)
    assert code == 1
    assert text == f"FAILED: rebuilt net {run_nets[1].id} differs from target {run_nets[2].id}\n"
    code, record, _ = verify(capsys, files["base"], files["lossless"], other)
    assert code == 1 and record["ok"] is False and record["target_id"] == run_nets[2].id


@pytest.mark.parametrize("workers", [1, 3])
def test_lossy_verify_reports_the_error_of_the_whole_nets(files, run_nets, capsys, workers):
    rebuilt = Net(apply_patch(run_nets[0], files["lossy"].read_bytes()))
    expected = max_error(rebuilt, run_nets[1])
    code, record, _ = verify(capsys, files["base"], files["lossy"], run_paths()[1], "--workers", workers)
    assert code == 0
    assert record == {"mode": "tolerance", "tolerance": TOLERANCE, "rebuilt_id": rebuilt.id,
                      "target_id": run_nets[1].id, "max_error": expected, "ok": True}
    assert 0 < expected <= TOLERANCE


def test_lossy_verify_beyond_the_tolerance_says_failed(files, run_nets, capsys):
    rebuilt = Net(apply_patch(run_nets[0], files["lossy"].read_bytes()))
    expected = max_error(rebuilt, run_nets[3])
    assert expected > TOLERANCE
    code, text, _ = verify(capsys, files["base"], files["lossy"], run_paths()[3], json_out=False)
    assert code == 1
    assert text == (f"FAILED: maximum error {expected:.6g} exceeds tolerance {TOLERANCE:g} "
                    f"(rebuilt net {rebuilt.id})\n")
    code, record, _ = verify(capsys, files["base"], files["lossy"], run_paths()[3])
    assert code == 1 and record["ok"] is False and record["max_error"] == expected


def test_lossy_verify_against_another_layout_is_an_error(files, run_nets, capsys):
    other = NETS / "meangirl-8.pb.gz"                  # 77 layers, not 105
    rebuilt = Net(apply_patch(run_nets[0], files["lossy"].read_bytes()))
    with pytest.raises(VerificationError) as whole:
        max_error(rebuilt, load(other))
    code, out, err = verify(capsys, files["base"], files["lossy"], other)
    assert code == 1 and out == ""
    assert err.strip().splitlines() == [f"lc0weights: error: {whole.value}"]


@pytest.mark.parametrize("patch", ["lossless", "lossy"])
@pytest.mark.parametrize("damage", ["truncated gzip", "not a net"])
def test_a_target_that_is_not_a_net_is_named(files, capsys, patch, damage):
    target = files["folder"] / f"bad-{damage.replace(' ', '-')}.pb.gz"
    if damage == "truncated gzip":
        target.write_bytes(run_paths()[1].read_bytes()[:300_000])
    else:
        target.write_bytes(b"\x0a\x03abc" * 100)
    with pytest.raises(NetFormatError) as whole:
        Net.load(target)
    code, out, err = verify(capsys, files["base"], files[patch], target)
    assert code == 1 and out == ""
    assert err.strip().splitlines() == [f"lc0weights: error: {whole.value}"]


def test_a_corrupt_patch_is_reported_before_a_bad_target(files, capsys):
    corrupt = files["folder"] / "corrupt.lc0p"
    data = bytearray(files["lossy"].read_bytes())
    data[len(data) // 2] ^= 0xFF
    corrupt.write_bytes(bytes(data))
    target = files["folder"] / "garbage.pb"
    target.write_bytes(b"\x0a\x03abc" * 100)
    code, out, err = verify(capsys, files["base"], corrupt, target)
    assert code == 1 and out == "" and len(err.strip().splitlines()) == 1
    assert str(target) not in err                           # the patch's failure, not the target's
