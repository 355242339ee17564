"""Bad input: a clear one-line error, a non-zero exit, and no output file."""
import hashlib
import subprocess
import sys

import numpy as np
import pytest

from lc0weights import Lc0WeightsError, Net, apply_patch, make_patch
from lc0weights import container
from lc0weights.cli import main

from conftest import run_paths

import netfactory as nf


@pytest.fixture(scope="module")
def real_patch(tmp_path_factory, run_nets, first_step_varint_patch):
    base, target, patch = run_nets[0], run_nets[1], first_step_varint_patch
    folder = tmp_path_factory.mktemp("patch")
    (folder / "p").write_bytes(patch)
    return base, target, patch, folder


def run_cli(argv, capsys):
    code = main([str(a) for a in argv])
    err = capsys.readouterr().err.strip().splitlines()
    return code, err


def assert_clean_failure(argv, out, capsys):
    code, err = run_cli(argv, capsys)
    assert code != 0
    assert len(err) == 1 and err[0].startswith("lc0weights: error: "), err
    assert not out.exists()
    assert not list(out.parent.glob(f".{out.name}*")), "no temp file left behind"


def test_thousand_random_corruptions_of_a_real_patch(real_patch, tmp_path, capsys):
    base_path = run_paths()[0]
    base, target, patch, _ = real_patch
    rng = np.random.default_rng(2024)
    out = tmp_path / "out.pb.gz"
    bad = tmp_path / "bad"
    for i in range(1000):
        data = bytearray(patch)
        kind = i % 3
        if kind == 0:
            data = data[:int(rng.integers(0, len(data)))]
        elif kind == 1:
            for _ in range(int(rng.integers(1, 4))):
                pos = int(rng.integers(0, len(data)))
                data[pos] ^= 1 << int(rng.integers(0, 8))
        else:
            pos = int(rng.integers(0, len(data)))
            data[pos:pos + int(rng.integers(1, 64))] = rng.integers(0, 256, 8, dtype=np.uint8).tobytes()
        if bytes(data) == patch:
            continue
        if i % 50 == 0:                    # through the command line, end to end
            bad.write_bytes(bytes(data))
            assert_clean_failure(["apply", base_path, bad, "-o", out], out, capsys)
        else:
            with pytest.raises(Lc0WeightsError):
                apply_patch(base, bytes(data))


def resealed(data: bytes) -> bytes:
    """A corrupt body with a valid checksum: reaches the parser, not just the checksum."""
    body = data[:-container.CHECKSUM_SIZE]
    return body + hashlib.sha256(body).digest()


def test_corrupt_but_resealed_patches_fail_cleanly():
    rng = np.random.default_rng(5)
    a = nf.residual_net(rng, blocks=1, filters=4)
    base = Net.from_bytes(a.SerializeToString())
    target = Net.from_bytes(nf.step(a, rng).SerializeToString())
    for tolerance in (None, 2 ** -12):
        patch = make_patch(base, target, tolerance, verify=False)
        expected = bytes(apply_patch(base, patch))
        for _ in range(300):
            data = bytearray(patch[:-container.CHECKSUM_SIZE])
            pos = int(rng.integers(0, len(data)))
            data[pos] ^= 1 << int(rng.integers(0, 8))
            try:
                rebuilt = apply_patch(base, resealed(bytes(data) + bytes(32)))
            except Lc0WeightsError:
                continue
            assert bytes(rebuilt) == expected      # a flip in an informational field only


def test_wrong_base(real_patch, tmp_path, capsys):
    out = tmp_path / "out.pb.gz"
    _, _, _, folder = real_patch
    assert_clean_failure(["apply", run_paths()[2], folder / "p", "-o", out], out, capsys)


def test_non_net_and_empty_files(real_patch, tmp_path, capsys):
    out = tmp_path / "out.pb.gz"
    _, _, _, folder = real_patch
    text = tmp_path / "notes.txt"
    text.write_text("this is not a network\n" * 10)
    empty = tmp_path / "empty.pb.gz"
    empty.write_bytes(b"")
    badgz = tmp_path / "bad.pb.gz"
    badgz.write_bytes(b"\x1f\x8b\x08\x00garbage")
    for base in (text, empty, badgz, tmp_path / "missing.pb.gz"):
        assert_clean_failure(["apply", base, folder / "p", "-o", out], out, capsys)
        assert_clean_failure(["diff", base, run_paths()[1], "-o", out], out, capsys)
    for patch in (text, empty, run_paths()[1]):
        assert_clean_failure(["apply", run_paths()[0], patch, "-o", out], out, capsys)
    code, err = run_cli(["inspect", text], capsys)
    assert code == 1 and len(err) == 1


def test_failed_apply_keeps_an_existing_output(real_patch, tmp_path, capsys):
    out = tmp_path / "existing.pb.gz"
    out.write_bytes(b"precious")
    _, _, _, folder = real_patch
    code, err = run_cli(["apply", run_paths()[3], folder / "p", "-o", out], capsys)
    assert code == 1 and out.read_bytes() == b"precious"


def test_command_line_process_exit_code(real_patch, tmp_path):
    out = tmp_path / "o.pb"
    _, _, _, folder = real_patch
    proc = subprocess.run([sys.executable, "-m", "lc0weights.cli", "apply", str(run_paths()[4]),
                           str(folder / "p"), "-o", str(out)], capture_output=True, text=True)
    assert proc.returncode == 1
    assert proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr
    assert not out.exists()
