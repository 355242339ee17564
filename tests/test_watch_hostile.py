"""watch and sweep against hostile incoming files and crashed writers: a raw .pb cut between
fields, gzip files with bad or missing trailers, a large backlog, and temp files left by a
publish killed with SIGKILL mid-write. Every hostile file is built here from the real nets."""
from __future__ import annotations

import gzip
import contextlib
import fcntl
import os
import shutil
import subprocess
import sys
import time
import tracemalloc
from pathlib import Path

import pytest

from lc0weights import Net
from lc0weights.wire import iter_fields
from service import watch
from service.publish import Published
from service.repository import Repository
from service.sweep import sweep_temp_files
from service.watch import Watcher, check_gzip_complete, read_training_steps

from conftest import run_paths
from repo_fixtures import FAST_CODEC, assert_consistent, leftovers

ROOT = Path(__file__).resolve().parents[1]


def two_polls(watcher: Watcher) -> list[Published]:
    return watcher.poll() + watcher.poll()


def weights_offset(raw) -> int:
    """Where the top-level weights field starts: a cut there leaves a parseable net without weights."""
    end_of_previous = 0
    for number, _wire, _start, end, _ in iter_fields(raw, 0, len(raw)):
        if number == 10:
            return end_of_previous
        end_of_previous = end
    raise AssertionError("no weights field")


@pytest.fixture
def setup(tmp_path):
    incoming = tmp_path / "incoming"
    incoming.mkdir()
    repo = Repository.create(tmp_path / "repo")
    return incoming, repo, Watcher(incoming, repo, interval=0, codec=FAST_CODEC, skips=(1,))


# -- only whole nets --------------------------------------------------------------------------
def test_a_raw_pb_cut_between_fields_is_not_published_until_complete(setup):
    incoming, repo, watcher = setup
    raw = bytes(Net.load(run_paths()[0]).raw)
    cut = weights_offset(raw)
    assert Net(raw[:cut]).layers == []                  # it parses: only the missing weights tell
    growing = incoming / "step-000000.pb"
    growing.write_bytes(raw[:cut])
    assert two_polls(watcher) == [] and two_polls(watcher) == []
    assert repo.read_index().nets == []
    growing.write_bytes(raw)                            # the trainer finishes writing
    published = two_polls(watcher)
    assert [p.new for p in published] == [True]
    assert repo.read_index().nets[0].id == Net(raw).id


def gzip_variants(gz: bytes, raw: bytes) -> dict[str, bytes]:
    crc_flipped = bytearray(gz)
    crc_flipped[-8] ^= 0x01
    size_flipped = bytearray(gz)
    size_flipped[-1] ^= 0x01
    return {
        "no-trailer": gz[:-8],
        "half-trailer": gz[:-3],
        "crc": bytes(crc_flipped),
        "isize": bytes(size_flipped),
        "garbage-after": gz + b"not a gzip member",
        "no-weights": gzip.compress(raw[:weights_offset(raw)]),
    }


@pytest.mark.parametrize("variant", ["no-trailer", "half-trailer", "crc", "isize", "garbage-after",
                                     "no-weights"])
def test_a_gzip_file_needs_valid_trailers_and_weights(setup, variant, caplog):
    incoming, repo, watcher = setup
    path = run_paths()[0]
    bad = gzip_variants(path.read_bytes(), bytes(Net.load(path).raw))[variant]
    (incoming / "step-000000.pb.gz").write_bytes(bad)
    assert two_polls(watcher) == []
    assert repo.read_index().nets == []
    assert "skipping step-000000.pb.gz" in caplog.text
    with open(incoming / "step-000000.pb.gz", "rb") as f:
        with pytest.raises(ValueError):
            check_gzip_complete(f, "x") if variant != "no-weights" else watch.load_complete_net(
                incoming / "step-000000.pb.gz")


def test_check_gzip_accepts_whole_streams_and_refuses_bombs(tmp_path):
    raw = bytes(Net.load(run_paths()[0]).raw)
    two_members = tmp_path / "two.gz"
    two_members.write_bytes(gzip.compress(raw[:1000]) + gzip.compress(raw[1000:]) + b"\0" * 100)
    with open(two_members, "rb") as f:
        assert check_gzip_complete(f, "two") == len(raw)
    bomb = tmp_path / "bomb.gz"
    bomb.write_bytes(gzip.compress(bytes(8 << 20)))
    with open(bomb, "rb") as f, pytest.raises(ValueError, match="inflates past"):
        check_gzip_complete(f, "bomb", max_raw_size=4 << 20)


def test_training_steps_are_read_from_the_first_kilobytes(tmp_path):
    for path in run_paths()[:3]:
        steps = read_training_steps(path)
        raw = Net.load(path).raw
        (tmp_path / "raw.pb").write_bytes(raw)
        assert steps is not None and read_training_steps(tmp_path / "raw.pb") == steps
    (tmp_path / "junk.pb").write_bytes(b"\xff" * 100)
    assert read_training_steps(tmp_path / "junk.pb") is None


# -- one net at a time, in training order -----------------------------------------------------
def test_backlog_is_published_one_net_at_a_time_in_training_order(setup, monkeypatch):
    incoming, repo, watcher = setup
    paths = run_paths()[:12]
    for i, path in enumerate(paths):                    # names and mtimes in reverse training order
        dest = incoming / f"net-{len(paths) - i:02d}.pb.gz"
        shutil.copyfile(path, dest)
        os.utime(dest, ns=(10**18 - i * 10**9, 10**18 - i * 10**9))
    events, alive = [], []
    real_load = watch.load_net_file

    def load(path):
        net, gz = real_load(path)
        events.append(("load", Path(path).name))
        alive.append(net)
        return net, gz

    def publish(repo_, net, gz, source, *args, **options):
        events.append(("publish", source))
        alive.remove(net)
        assert alive == []                              # nothing else loaded and waiting
        return Published(net.id, source, True)

    monkeypatch.setattr(watch, "load_net_file", load)
    monkeypatch.setattr(watch, "publish_net", publish)
    watcher.poll()
    tracemalloc.start()
    try:
        published = watcher.poll()
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    expected = [f"net-{len(paths) - i:02d}.pb.gz" for i in range(len(paths))]
    assert [p.source for p in published] == expected
    assert events == [e for name in expected for e in (("load", name), ("publish", name))]
    one_net = len(Net.load(paths[0]).raw) + paths[0].stat().st_size
    assert peak < 3 * one_net, f"peak {peak / 1e6:.1f} MB for a backlog of 12 nets of {one_net / 1e6:.1f} MB"


# -- temp files of killed writers --------------------------------------------------------------
_KILLED_PUBLISH = """
import os, signal, sys
from service.publish import publish
from service.repository import Repository
real_fsync, calls = os.fsync, [0]
def fsync(fd):
    calls[0] += 1
    if calls[0] == int(sys.argv[2]):
        os.kill(os.getpid(), signal.SIGKILL)     # mid-write: the temp file is complete but not renamed
    return real_fsync(fd)
os.fsync = fsync
publish(Repository.create(sys.argv[1]), sys.argv[3:], codec=%r, skips=(1,))
""" % FAST_CODEC


def killed_publish(root: Path, nets, at_fsync: int) -> None:
    done = subprocess.run([sys.executable, "-c", _KILLED_PUBLISH, str(root), str(at_fsync)] + [str(p) for p in nets],
                          cwd=ROOT, capture_output=True, timeout=120)
    assert done.returncode == -9, done.stderr.decode()[-2000:]


def temp_files(root: Path) -> list[str]:
    return [name for name in leftovers(root) if name.endswith(".tmp")]


def test_watch_sweeps_what_a_killed_publish_left_and_carries_on(tmp_path):
    root, incoming = tmp_path / "repo", tmp_path / "incoming"
    incoming.mkdir()
    paths = run_paths()[:3]
    killed_publish(root, paths[:1], at_fsync=1)         # while writing the first net object
    assert len(temp_files(root)) == 1
    for at in range(2, 12):                             # later: among the second net's objects
        killed_publish(root, paths[:2], at_fsync=at)    # (each publish first sweeps what the last left)
        if temp_files(root):
            break
    assert len(temp_files(root)) == 1
    for p in paths:
        shutil.copyfile(p, incoming / p.name)
    repo = Repository(root)
    watcher = Watcher(incoming, repo, interval=0, codec=FAST_CODEC, skips=(1,))
    published = two_polls(watcher)
    assert temp_files(root) == []
    assert len(published) == 3 and len(repo.read_index().nets) == 3
    assert_consistent(repo)


@contextlib.contextmanager
def another_writer(repo):
    """Hold the repository's writer lock as another publishing process would."""
    with open(repo.state_dir / "lock", "a+b") as f:
        fcntl.flock(f.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f.fileno(), fcntl.LOCK_UN)


def test_sweep_spares_a_running_writers_files(tmp_path):
    repo = Repository.create(tmp_path / "repo")
    (repo.root / ".state" / "lossy").mkdir()
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / ".x.pb.gz.abcdefgh.tmp").write_bytes(b"not ours")
    (repo.root / "elsewhere").symlink_to(outside)
    old, fresh = [], []
    for folder in ("", "nets", "patches", "records", ".state", ".state/lossy"):
        for age, bucket in ((3600, old), (0, fresh)):
            path = repo.root / folder / f".{age}-{folder.replace('/', '-')}.pb.gz.k2j_x9qz.tmp"
            path.write_bytes(b"partial")
            os.utime(path, (time.time() - age, time.time() - age))
            bucket.append(path)
    keep = [repo.root / "nets" / ".keep", repo.root / "patches" / "x.tmp", repo.root / ".state" / "lock"]
    for path in keep:
        path.write_bytes(b"")
    (repo.root / "nets" / ".link.pb.gz.abcdefgh.tmp").symlink_to(outside / ".x.pb.gz.abcdefgh.tmp")
    with another_writer(repo):                          # a writer is at work: age decides
        assert sweep_temp_files(repo.root, 600) == len(old)
    assert not any(p.exists() for p in old) and all(p.exists() for p in fresh + keep)
    assert (outside / ".x.pb.gz.abcdefgh.tmp").exists()
    assert (repo.root / "nets" / ".link.pb.gz.abcdefgh.tmp").is_symlink()
    with another_writer(repo):                          # the caller holds the lock itself
        assert sweep_temp_files(repo.root, 600, lock_held=True) == len(fresh)
    assert all(p.exists() for p in keep) and (outside / ".x.pb.gz.abcdefgh.tmp").exists()


def test_sweep_without_a_writer_removes_even_fresh_temp_files(tmp_path):
    repo = Repository.create(tmp_path / "repo")
    fresh = repo.root / "patches" / ".abc.lc0patch.q1w2e3r4.tmp"
    fresh.write_bytes(b"x")
    assert sweep_temp_files(repo.root, 600) == 1 and not fresh.exists()
    assert sweep_temp_files(tmp_path / "missing", 600) == 0
