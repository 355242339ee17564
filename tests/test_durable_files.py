"""Files written whole or not at all, synced to disk behind their writer."""
from __future__ import annotations

import errno
import os
import threading

import pytest

from lc0weights import durable_files
from lc0weights.durable_files import WriteBehind, atomic_file


def leftovers(folder):
    return sorted(p.name for p in folder.iterdir() if p.name.endswith(".tmp"))


def test_large_file_is_synced_behind_the_writer(tmp_path, monkeypatch):
    synced = []
    real = os.fdatasync

    def fdatasync(fd):
        synced.append((threading.current_thread().name, os.fstat(fd).st_size))
        real(fd)
    monkeypatch.setattr(durable_files.os, "fdatasync", fdatasync)
    piece = bytes(range(256)) * 1024
    with atomic_file(tmp_path / "net.pb") as f:
        f.write_behind.every = 1 << 20
        for _ in range(40):
            f.write(piece)
            f.write_behind.wait()       # one hand-over per MiB, so each is seen
    assert (tmp_path / "net.pb").read_bytes() == piece * 40
    assert len(synced) >= 9
    assert {name for name, _ in synced} == {"write-behind"}
    # each hand-over syncs what the writer had flushed so far, not less
    assert all(size >= (n + 1) << 20 for n, (_, size) in enumerate(synced))
    assert leftovers(tmp_path) == []


def test_a_write_error_behind_the_writer_fails_the_file(tmp_path, monkeypatch):
    target = tmp_path / "net.pb"
    target.write_bytes(b"the old net")

    def failing(fd):
        raise OSError(errno.EIO, "Input/output error")
    monkeypatch.setattr(durable_files.os, "fdatasync", failing)
    with pytest.raises(OSError) as caught:
        with atomic_file(target) as f:
            f.write_behind.every = 1 << 16
            f.write(b"x" * (1 << 17))
            f.write(b"y" * 10)
    assert caught.value.errno == errno.EIO
    assert target.read_bytes() == b"the old net"
    assert leftovers(tmp_path) == []


def test_an_error_in_the_block_waits_for_the_helper_and_leaves_nothing(tmp_path, monkeypatch):
    started, release = threading.Event(), threading.Event()
    finished = []

    def slow(fd):
        started.set()
        release.wait(5)
        os.fstat(fd)                    # the descriptor is still ours: not closed under the helper
        finished.append(fd)
    monkeypatch.setattr(durable_files.os, "fdatasync", slow)
    threading.Timer(0.2, release.set).start()
    with pytest.raises(RuntimeError):
        with atomic_file(tmp_path / "net.pb") as f:
            f.write_behind.every = 1 << 16
            f.write(b"x" * (1 << 17))
            assert started.wait(5)
            raise RuntimeError("the rebuild failed")
    assert finished, "the file was closed before its helper finished"
    assert not (tmp_path / "net.pb").exists()
    assert leftovers(tmp_path) == []


def test_write_behind_on_a_plain_file(tmp_path):
    with open(tmp_path / "f", "wb") as f:
        behind = WriteBehind(f, every=10)
        for _ in range(5):
            f.write(b"0123456789ab")
            behind.wrote(12)
        behind.finish()
    assert (tmp_path / "f").read_bytes() == b"0123456789ab" * 5
