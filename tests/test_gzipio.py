"""gzipio: standard single-member output, the same bytes however the input is split, bounded reads."""
from __future__ import annotations

import gzip
import io
import subprocess
import sys
import zlib
from pathlib import Path

import pytest
from conftest import run_paths

from lc0weights import gzipio
from lc0weights.errors import NetFormatError
from lc0weights.net import Net, gzip_bytes, write_net_file
from lc0weights.net_unpack import gunzip_limited

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def raw() -> bytes:
    # Two real nets back to back: a few MB, more than several compressor blocks.
    return b"".join(bytes(Net.load(p).raw) for p in run_paths()[:2])


def _written(raw: bytes, piece: int) -> bytes:
    out = io.BytesIO()
    with gzipio.GzipWriter(out) as z:
        for start in range(0, len(raw), piece):
            z.write(raw[start:start + piece])
    return out.getvalue()


def test_output_is_one_standard_member_whatever_the_write_sizes(raw):
    whole = _written(raw, len(raw))
    assert _written(raw, 8191) == whole == _written(raw, gzipio.BLOCK + 1)
    assert gzip.decompress(whole) == raw
    d = zlib.decompressobj(16 + zlib.MAX_WBITS)      # zlib (lc0's gzread) reads one member to its end
    assert d.decompress(whole) == raw and d.eof and d.unused_data == b""
    assert whole[:2] == gzipio.MAGIC and whole[4:8] == bytes(4)      # no mtime
    assert not whole[3] & 0x08                                       # no file name


def test_saved_nets_are_deterministic_and_load_back(raw, tmp_path):
    net = Net.load(run_paths()[0])
    write_net_file(tmp_path / "a.pb.gz", net.raw)
    write_net_file(tmp_path / "b.pb.gz", net.raw)
    assert (tmp_path / "a.pb.gz").read_bytes() == (tmp_path / "b.pb.gz").read_bytes()
    assert Net.load(tmp_path / "a.pb.gz").id == net.id
    assert gzip_bytes(net.raw) == gzip_bytes(bytes(net.raw))


def test_stdlib_fallback_writes_readable_deterministic_gzip(raw, tmp_path):
    """Without isal the module falls back to zlib: same interface, standard output."""
    sample = tmp_path / "raw"
    sample.write_bytes(raw[:3_000_000])
    # The module alone (it imports nothing of the package), to keep the child fast.
    code = ("import sys, importlib.util; sys.modules['isal'] = None\n"
            "spec = importlib.util.spec_from_file_location('gzipio', sys.argv[3])\n"
            "gzipio = importlib.util.module_from_spec(spec); spec.loader.exec_module(gzipio)\n"
            "raw = open(sys.argv[1], 'rb').read()\n"
            "assert gzipio.BACKEND == 'zlib'\n"
            "a, b = gzipio.gzip_bytes(raw), gzipio.gzip_bytes(raw[:5] + raw[5:])\n"
            "assert a == b\n"
            "inf = gzipio.Inflater(len(raw), multi_member=False)\n"
            "assert b''.join(inf.feed(a)) == raw; inf.finish()\n"
            "open(sys.argv[2], 'wb').write(a)\n")
    subprocess.run([sys.executable, "-c", code, str(sample), str(tmp_path / "out.gz"),
                    str(ROOT / "lc0weights" / "gzipio.py")], check=True)
    assert gzip.decompress((tmp_path / "out.gz").read_bytes()) == raw[:3_000_000]


def _inflate(data: bytes, limit: int, multi: bool) -> bytes:
    inf = gzipio.Inflater(limit, multi_member=multi)
    out = b"".join(b"".join(inf.feed(data[s:s + 65536])) for s in range(0, len(data), 65536))
    inf.finish()
    assert inf.hexdigest() == __import__("hashlib").sha256(out).hexdigest()
    return out


def test_inflater_bounds_output_and_polices_what_follows(raw):
    gz = gzip_bytes(raw)
    assert _inflate(gz + bytes(1000), len(raw), multi=False) == raw       # zero padding is fine
    assert _inflate(gz + gz, 2 * len(raw), multi=True) == raw + raw
    with pytest.raises(ValueError, match="after the gzip stream"):
        _inflate(gz + gz, 2 * len(raw), multi=False)
    with pytest.raises(gzipio.TooLarge):
        _inflate(gz, len(raw) - 1, multi=True)
    with pytest.raises(ValueError, match="truncated"):
        _inflate(gz[:-4], len(raw), multi=True)
    flipped = bytearray(gz)
    flipped[-8] ^= 1                                                       # the CRC32
    with pytest.raises(gzipio.GzipError):
        _inflate(bytes(flipped), len(raw), multi=True)


def test_gunzip_limited_stops_a_bomb_at_the_limit():
    bomb = gzip.compress(bytes(16 << 20), 9)
    with pytest.raises(NetFormatError, match="larger than"):
        gunzip_limited(bomb, 1 << 20, "bomb")
    assert gunzip_limited(bomb, 16 << 20, "bomb") == bytes(16 << 20)
