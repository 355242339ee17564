"""Decoding a patch while it is staged: blocking reads, clean failure, checksums at the last byte."""
from __future__ import annotations

import hashlib
import threading
import time

import pytest

from lc0weights import apply_patch
from lc0weights.client.staging import StagedFile
from lc0weights.errors import PatchFormatError
from lc0weights.patching.streaming import ArrivingPatch, TransferCancelled
from lc0weights.repository.errors import DownloadError


@pytest.fixture(scope="module")
def pair(run_nets, first_step_patch):
    return run_nets[0], run_nets[1], first_step_patch


def _feeder(staged: StagedFile, arrival: ArrivingPatch, data: bytes, pause_at: int | None = None,
            header_parsed: threading.Event | None = None, then=None) -> threading.Thread:
    """Append ``data`` as a download would; at ``pause_at`` wait until the decoder parsed the header."""
    def run():
        try:
            first = data if pause_at is None else data[:pause_at]
            for start in range(0, len(first), 4096):
                staged.append(first[start:start + 4096])
            if pause_at is not None:
                assert header_parsed.wait(60), "the decoder never started"
                for start in range(pause_at, len(data), 65536):
                    staged.append(data[start:start + 65536])
            (then or arrival.complete)()
        except BaseException as e:            # noqa: BLE001 - what a download thread does
            arrival.fail(e)
    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


def _open(tmp_path, data, wait=60.0, sha=None) -> tuple[StagedFile, ArrivingPatch]:
    arrival = ArrivingPatch(len(data), "patch-under-test", wait)
    staged = StagedFile.open(tmp_path / "patch", sha or hashlib.sha256(data).hexdigest(), tap=arrival)
    return staged, arrival


def test_layers_are_rebuilt_before_the_patch_has_fully_arrived(pair, tmp_path):
    base, target, patch = pair
    staged, arrival = _open(tmp_path, patch)
    parsed = threading.Event()
    arrived_when_parsed = []

    def opener(_name):
        source = arrival.source()
        arrived_when_parsed.append(arrival._arrived)
        parsed.set()
        return source

    half = len(patch) // 2
    feeder = _feeder(staged, arrival, patch, pause_at=half, header_parsed=parsed)
    raw = apply_patch(base, "patch-under-test", open_patch=opener)
    arrival.wait_verified()
    feeder.join()
    assert hashlib.sha256(raw).hexdigest() == target.id
    assert 0 < arrived_when_parsed[0] <= half     # decoding began with at most half the patch in
    staged.discard()
    arrival.close()


def test_a_failed_transfer_stops_the_decoder_with_its_error(pair, tmp_path):
    base, _, patch = pair
    staged, arrival = _open(tmp_path, patch)
    feeder = _feeder(staged, arrival, patch[:len(patch) // 3],
                     then=lambda: arrival.fail(DownloadError("connection reset at a third")))
    started = time.monotonic()
    with pytest.raises(DownloadError, match="connection reset"):
        apply_patch(base, "patch-under-test", open_patch=lambda _: arrival.source())
    assert time.monotonic() - started < 30
    feeder.join()
    staged.discard()


def test_a_corrupt_trailing_checksum_is_caught_when_the_last_byte_arrives(pair, tmp_path):
    base, target, patch = pair
    bad = patch[:-1] + bytes([patch[-1] ^ 1])
    staged, arrival = _open(tmp_path, bad)
    _feeder(staged, arrival, bad).join()
    raw = apply_patch(base, "patch-under-test", open_patch=lambda _: arrival.source())
    assert hashlib.sha256(raw).hexdigest() == target.id     # decoding alone cannot tell
    with pytest.raises(PatchFormatError, match="checksum mismatch"):
        arrival.wait_verified()
    staged.discard()


def test_bytes_that_never_come_time_out_and_a_cancel_stops_the_transfer(pair, tmp_path):
    base, _, patch = pair
    staged, arrival = _open(tmp_path, patch, wait=0.5)
    staged.append(patch[:100])
    with pytest.raises(PatchFormatError, match="did not arrive"):
        apply_patch(base, "patch-under-test", open_patch=lambda _: arrival.source())
    arrival.cancel()
    with pytest.raises(TransferCancelled):
        staged.append(patch[100:200])
    staged.discard()


def test_a_restarted_transfer_is_read_from_the_new_bytes(pair, tmp_path):
    base, target, patch = pair
    staged, arrival = _open(tmp_path, patch)
    staged.append(b"\0" * 5000)                # what a server sent before restarting from zero
    staged.reset()
    _feeder(staged, arrival, patch).join()
    raw = apply_patch(base, "patch-under-test", open_patch=lambda _: arrival.source())
    arrival.wait_verified()
    assert hashlib.sha256(raw).hexdigest() == target.id
    staged.discard()
