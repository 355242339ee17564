"""Publishing, watching and pruning a repository, including crashes part-way."""
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from lc0weights import Net, max_error
from lc0weights.client import fetch
from service.prune import prune
from service.publish import publish, training_steps
from service.repository import Repository
from service.watch import Watcher, looks_like_net

from conftest import run_paths
from repo_fixtures import FAST_CODEC, assert_consistent, copy_into_cache, leftovers

ROOT = Path(__file__).resolve().parents[1]


def ids(paths):
    return [Net.load(p).id for p in paths]


def test_publish_adds_nets_with_predecessor_and_skip_patches(tmp_path):
    repo = Repository.create(tmp_path / "repo")
    paths = run_paths()[:5]
    results = publish(repo, paths, codec=FAST_CODEC, skips=(1, 2, 4))
    index = assert_consistent(repo)
    assert [n.id for n in index.nets] == ids(paths) and index.latest == index.nets[-1].id
    # Plain patches from 1, 2 and 4 nets back (history versions of the predecessor's come beside them).
    assert [len([p for p in r.patches if p.history is None]) for r in results] == [0, 1, 2, 2, 3]
    pairs = {(p.base, p.target) for p in index.patches}
    n = [e.id for e in index.nets]
    assert {(n[3], n[4]), (n[2], n[4]), (n[0], n[4])} <= pairs
    assert index.nets[4].predecessor == n[3] and index.nets[0].predecessor is None
    assert index.nets[1].training_steps == training_steps(Net.load(paths[1]).raw) == 400100
    assert all(p.size < index.net(p.target).size for p in index.patches)
    assert leftovers(repo.root / "nets") == [] and leftovers(repo.root / "patches") == []

    again = publish(repo, paths[2:4], codec=FAST_CODEC)
    assert [r.new for r in again] == [False, False]
    assert repo.read_index() == index          # a true no-op


@pytest.mark.slow      # lossy publishing stays in the default run via test_trust_attacks and test_history_publishing
def test_lossy_chain_is_closed_loop_and_within_tolerance(tmp_path):
    repo = Repository.create(tmp_path / "repo")
    tolerance = 1 / 2048
    publish(repo, run_paths()[:4], tolerance=tolerance, codec=FAST_CODEC, skips=(1,))
    index = assert_consistent(repo)                     # check applies the chain, bounds each link
    lossy = [p for p in index.patches if p.lossy and p.history is None]     # the chain's links
    assert len(lossy) == 3 and all(p.tolerance == tolerance for p in index.patches if p.lossy)
    assert lossy[0].base == index.nets[0].id              # anchored on the exact first net
    assert [p.base for p in lossy[1:]] == [p.result for p in lossy[:-1]]   # each on the rebuilt one
    assert all(p.size < index.patch(p.base, p.target).size for p in lossy[:1])

    # A client that accepts the tolerance follows the lossy chain from the exact first net.
    cache = tmp_path / "cache"
    copy_into_cache(run_paths()[0], cache, index.nets[0].id)
    result = fetch(str(repo.root), cache_dir=cache, tolerance=tolerance)
    assert result.net_id == lossy[-1].result and result.target_id == index.latest
    assert result.patches == 3
    assert max_error(Net.load(result.path), Net.load(run_paths()[3])) <= tolerance
    exact = fetch(str(repo.root), cache_dir=tmp_path / "exact")
    assert exact.net_id == index.latest                              # exact unless asked


def test_crash_between_objects_and_timestamp_leaves_a_consistent_repository(tmp_path, monkeypatch):
    repo = Repository.create(tmp_path / "repo")
    paths = run_paths()[:3]
    publish(repo, paths[:2], codec=FAST_CODEC)
    before = (repo.root / "timestamp.json").read_bytes()

    def crash(self, latest, horizon):
        raise KeyboardInterrupt("power cut")
    monkeypatch.setattr(Repository, "commit", crash)
    with pytest.raises(KeyboardInterrupt):
        publish(repo, paths[2:], codec=FAST_CODEC)
    monkeypatch.undo()

    # Objects, the record and the sequence line may exist; the timestamp, the commit point, is untouched.
    assert (repo.root / "timestamp.json").read_bytes() == before
    assert len(repo.read_index().nets) == 2
    assert_consistent(repo)
    publish(repo, paths[2:], codec=FAST_CODEC)           # the restart publishes it once
    index = assert_consistent(repo)
    assert [n.id for n in index.nets] == ids(paths)


def test_watcher_ignores_temp_names_and_files_still_being_written(tmp_path):
    incoming, repo = tmp_path / "incoming", Repository.create(tmp_path / "repo")
    incoming.mkdir()
    src = run_paths()[0].read_bytes()
    watcher = Watcher(incoming, repo, interval=0, codec=FAST_CODEC)
    (incoming / ".step-000000.pb.gz.tmp").write_bytes(src)
    (incoming / "step-000000.pb.gz.part").write_bytes(src)
    growing = incoming / "step-000000.pb.gz"
    with open(growing, "wb") as f:
        f.write(src[:1000])
        f.flush()
        assert watcher.poll() == []
        f.write(src[1000:50000])
        f.flush()
        assert watcher.poll() == []                     # changed since the last look
        f.write(src[50000:])
    assert watcher.poll() == []                         # first look at the finished size
    published = watcher.poll()
    assert [p.new for p in published] == [True]
    assert watcher.poll() == [] and len(repo.read_index().nets) == 1
    assert not looks_like_net("~lock.pb.gz") and looks_like_net("step-1.pb")


def test_watcher_restart_neither_republishes_nor_skips(tmp_path):
    incoming, repo = tmp_path / "incoming", Repository.create(tmp_path / "repo")
    incoming.mkdir()
    paths = run_paths()[:3]
    for p in paths[:2]:
        shutil.copyfile(p, incoming / p.name)
    first = Watcher(incoming, repo, interval=0, codec=FAST_CODEC)
    assert first.poll() == [] and len(first.poll()) == 2
    shutil.copyfile(paths[2], incoming / paths[2].name)
    restarted = Watcher(incoming, repo, interval=0, codec=FAST_CODEC)   # forgets everything in memory
    restarted.poll()
    results = restarted.poll()
    assert [r.new for r in results] == [False, False, True]
    assert [n.id for n in repo.read_index().nets] == ids(paths)


@pytest.mark.slow      # the default run keeps test_crash_between_objects_and_timestamp_leaves_a_consistent_repository
def test_watcher_killed_mid_publish_then_restarted(tmp_path):
    incoming, root = tmp_path / "incoming", tmp_path / "repo"
    incoming.mkdir()
    paths = run_paths()[:4]
    for p in paths:
        shutil.copyfile(p, incoming / p.name)
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    cmd = [sys.executable, "-m", "service.cli", "watch", "--incoming", str(incoming),
           "--init", "--repo", str(root), "--interval", "0.05", "--codec", FAST_CODEC]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:      # wait until it is busy with the second net
            if (root / "timestamp.json").exists() and len(Repository(root).read_index().nets) >= 2:
                break
            time.sleep(0.02)
        time.sleep(0.3)                          # somewhere inside the next publish
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    repo = Repository(root)
    killed_at = len(repo.read_index().nets)
    assert 2 <= killed_at < 4, "the watcher was not stopped mid-run"
    assert_consistent(repo)

    done = subprocess.run(cmd + ["--once"], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    index = assert_consistent(repo)
    assert [n.id for n in index.nets] == ids(paths)


@pytest.mark.slow      # the default run keeps test_operator_tripups' prune
def test_prune_keeps_the_newest_nets_and_never_republishes_old_ones(tmp_path):
    incoming, repo = tmp_path / "incoming", Repository.create(tmp_path / "repo")
    incoming.mkdir()
    paths = run_paths()[:5]
    publish(repo, paths, codec=FAST_CODEC, skips=(1, 2, 4))
    (repo.root / "patches" / ("f" * 64 + ".lc0patch")).write_bytes(b"orphan of a crash")
    report = prune(repo, keep=2)
    index = assert_consistent(repo)
    assert [n.id for n in index.nets] == ids(paths[3:])
    plain = [p for p in index.patches if p.history is None]     # (and its history version beside it)
    assert len(plain) == 1 and report.nets_removed == 3 and report.files_deleted >= 3
    referenced = {e.path for e in index.nets + index.patches} | {f"records/{n.id}.json" for n in index.nets}
    assert set(repo.stored_objects()) == referenced
    assert set(index.retired) == set(ids(paths[:3]))

    for p in paths:
        shutil.copyfile(p, incoming / p.name)
    watcher = Watcher(incoming, repo, interval=0, codec=FAST_CODEC)
    watcher.poll()
    assert all(not r.new for r in watcher.poll())
    assert len(repo.read_index().nets) == 2


def test_server_cli_reports_errors_on_one_line(tmp_path):
    bad = tmp_path / "bad.pb.gz"
    bad.write_bytes(b"\x1f\x8bnot really gzip")
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    done = subprocess.run([sys.executable, "-m", "service.cli", "publish", "--init", "--repo", str(tmp_path / "r"),
                           str(bad)], env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode != 0
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("lc0weights-server: error:") and "gzip" in lines[0]
    assert not (tmp_path / "r" / "timestamp.json").exists()
