"""The operator's and newcomer's trip-ups, each built as it happened in the field.

The watcher with an older net, an uncertified key and a gzip bomb; special
files and hard-linked partials; two nets in one gzip file; repositories made
only when asked; key rotation in one step; ``check`` after ``prune``.
"""
from __future__ import annotations

import gzip
import hashlib
import logging
import os
import shutil
import subprocess
import sys
import tracemalloc
from pathlib import Path

import pytest
from conftest import run_paths
from repo_fixtures import FAST_CODEC, serving

from lc0weights.client.check import check_repository
from lc0weights.client.download import TransferPolicy
from lc0weights.client.fetch import fetch
from lc0weights.client.staging import StagedFile
from lc0weights.files import NotARegularFileError, read_small_file
from lc0weights.net import Net
from lc0weights.repository.errors import DownloadError
from lc0weights.repository.keys import SigningKey
from service.prune import prune
from service.publish import publish
from service.repository import Repository
from service.watch import Watcher

ROOT = Path(__file__).resolve().parents[1]
POLICY = TransferPolicy(timeout=5.0, retries=1, backoff=0.01, progress=False)


def run(*args, module="lc0weights.cli", env=None, timeout=120):
    env = dict(os.environ, PYTHONPATH=str(ROOT), **(env or {}))
    return subprocess.run([sys.executable, "-m", module, *map(str, args)], env=env, capture_output=True,
                          text=True, timeout=timeout, stdin=subprocess.DEVNULL, check=False)


def server(*args, **kw):
    return run(*args, module="service.cli", **kw)


def one_error_line(done, *words):
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 1, done.stderr
    assert len(lines) == 1 and "Traceback" not in done.stderr, done.stderr
    assert all(w in lines[0] for w in words), lines[0]


def drop(incoming: Path, path: Path) -> Path:
    dest = incoming / path.name
    shutil.copyfile(path, dest)
    return dest


def two_polls(watcher: Watcher):
    return watcher.poll() + watcher.poll()


# -- item 9: the watcher ------------------------------------------------------------------

def test_watch_skips_an_older_net_once_and_publishes_the_rest(tmp_path, caplog):
    paths = run_paths()
    repo = Repository.create(tmp_path / "repo")
    publish(repo, paths[2:3], codec=FAST_CODEC, skips=(1,))
    incoming = tmp_path / "in"
    incoming.mkdir()
    drop(incoming, paths[1])                 # older than the latest published net
    drop(incoming, paths[3])
    watcher = Watcher(incoming, repo, interval=0, codec=FAST_CODEC, skips=(1,))
    with caplog.at_level(logging.WARNING, logger="service.watch"):
        published = two_polls(watcher) + two_polls(watcher)
    assert [p.source for p in published] == [paths[3].name]
    assert [n.id for n in repo.read_index().nets] == [Net.load(p).id for p in (paths[2], paths[3])]
    skipped = [r for r in caplog.records if paths[1].name in r.getMessage()]
    assert len(skipped) == 1 and "training step" in skipped[0].getMessage()


def test_watch_says_once_that_its_key_is_not_certified_and_publishes_after_certify(tmp_path, caplog):
    paths = run_paths()
    online, other = SigningKey.generate(), SigningKey.generate()
    repo = Repository.create(tmp_path / "repo", online)
    publish(repo, paths[:1], codec=FAST_CODEC, skips=(1,))
    # The root (the first key, which is its own root) now certifies another online key only.
    with repo.lock():
        Repository.create(repo.root).certify(online, [other.public], signer=other)
    incoming = tmp_path / "in"
    incoming.mkdir()
    drop(incoming, paths[1])
    watcher = Watcher(incoming, Repository.create(repo.root, online), interval=0, codec=FAST_CODEC, skips=(1,))
    patches_before = sorted(os.listdir(repo.root / "patches"))
    with caplog.at_level(logging.INFO, logger="service.watch"):
        for _ in range(5):
            watcher.keep_signed()
            assert watcher.poll() == []
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1 and "not an online key" in errors[0].getMessage()
    assert sorted(os.listdir(repo.root / "patches")) == patches_before     # nothing encoded, nothing stored
    with repo.lock():
        Repository.create(repo.root).certify(online, [online.public, other.public], signer=other)
    assert [p.source for p in watcher.poll()] == [paths[1].name]


def test_watch_refuses_a_gzip_bomb_while_streaming_it(tmp_path, caplog):
    incoming = tmp_path / "in"
    incoming.mkdir()
    limit = 8 << 20
    with gzip.open(incoming / "bomb.pb.gz", "wb", compresslevel=9) as f:
        block = bytes(1 << 20)
        for _ in range(64):                  # 64 MiB of zeros, 8 times the limit
            f.write(block)
    watcher = Watcher(incoming, Repository.create(tmp_path / "repo"), interval=0, max_size=limit)
    tracemalloc.start()
    try:
        with caplog.at_level(logging.ERROR, logger="service.watch"):
            assert two_polls(watcher) == []
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < limit // 2, peak           # refused by the stream's size, never inflated to the limit
    assert any("bomb.pb.gz" in r.getMessage() and "inflates past" in r.getMessage() for r in caplog.records)


# -- item 12: two nets in one gzip file ---------------------------------------------------

def test_publish_refuses_two_gzip_members_holding_two_nets(tmp_path):
    paths = run_paths()
    both = tmp_path / "both.pb.gz"
    both.write_bytes(paths[0].read_bytes() + paths[1].read_bytes())
    repo = tmp_path / "repo"
    one_error_line(server("publish", "--init", "--repo", repo, both), "both.pb.gz", "two nets")
    assert not (repo / "timestamp.json").exists()
    # The same net split into two members is one net, and publishes.
    raw = Net.load(paths[0]).raw
    split = tmp_path / "split.pb.gz"
    split.write_bytes(gzip.compress(raw[:1000]) + gzip.compress(raw[1000:]))
    done = server("publish", "--init", "--repo", repo, split)
    assert done.returncode == 0, done.stderr


# -- item 13: special files and hard-linked partials --------------------------------------

def test_special_files_are_refused_where_a_file_is_expected(tmp_path):
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    for path in (fifo, Path("/dev/zero"), tmp_path):
        with pytest.raises(NotARegularFileError, match="not a key file"):
            read_small_file(path, 1 << 10, "key")
    big = tmp_path / "big"
    big.write_bytes(bytes(2048))
    with pytest.raises(NotARegularFileError, match="too large"):
        read_small_file(big, 1024, "key")
    one_error_line(run("fetch", tmp_path, "--trust", f"@{fifo}"), str(fifo), "FIFO")
    one_error_line(run("fetch", tmp_path, "--trust", "@/dev/zero"), "/dev/zero", "device")
    one_error_line(run("fetch", env={"LC0WEIGHTS_CONFIG": "/dev/zero"}), "/dev/zero", "config")
    one_error_line(server("resign", "--repo", tmp_path, "--key", "/dev/zero"), "/dev/zero", "key file")
    one_error_line(run("inspect", fifo), str(fifo), "FIFO")


def test_a_hard_linked_partial_is_refused_and_the_outside_file_untouched(tmp_path):
    outside = tmp_path / "precious"
    outside.write_bytes(b"keep me")
    partials = tmp_path / "cache" / ".partial"
    partials.mkdir(parents=True)
    sha = hashlib.sha256(b"the object").hexdigest()
    os.link(outside, partials / f"{sha}.part")
    with pytest.raises(DownloadError, match="hard links"):
        StagedFile.open(tmp_path / "cache" / "obj", sha, partials, limit=1 << 20)
    assert outside.read_bytes() == b"keep me"


def test_a_private_key_given_to_trust_and_a_public_key_given_to_key(tmp_path):
    key = SigningKey.generate()
    key.save(tmp_path / "private.key")
    (tmp_path / "public.pub").write_text(key.public.text + "\n")
    one_error_line(run("fetch", tmp_path, "--trust", f"@{tmp_path / 'private.key'}"),
                   "private.key", "private key", "public key")
    one_error_line(server("resign", "--repo", tmp_path, "--key", tmp_path / "public.pub"),
                   "public.pub", "public key", "private key")


# -- item 11: repositories made only when asked; rotation in one step; serving before a net --

def test_a_repository_is_made_only_with_init_or_in_an_empty_folder(tmp_path):
    net = run_paths()[0]
    typo = tmp_path / "reop"
    one_error_line(server("publish", "--repo", typo, net), str(typo), "--init")
    assert not typo.exists()
    cluttered = tmp_path / "cluttered"
    cluttered.mkdir()
    (cluttered / "notes.txt").write_text("not a repository")
    one_error_line(server("publish", "--repo", cluttered, net), "not a repository", "--init")
    assert sorted(os.listdir(cluttered)) == ["notes.txt"]
    empty = tmp_path / "empty"
    empty.mkdir()
    assert server("publish", "--repo", empty, net).returncode == 0          # made for it: taken
    assert server("publish", "--init", "--repo", typo, net).returncode == 0
    assert len(Repository(typo).read_index().nets) == 1


def test_certify_rotates_the_online_key_in_one_step(tmp_path):
    paths = run_paths()
    root_key, online_1, online_2 = SigningKey.generate(), SigningKey.generate(), SigningKey.generate()
    for name, key in (("root", root_key), ("one", online_1), ("two", online_2)):
        key.save(tmp_path / f"{name}.key")
    repo = tmp_path / "repo"
    done = server("certify", "--init", "--repo", repo, "--root-key", tmp_path / "root.key",
                  "--online-key", online_1.public.text, "--key", tmp_path / "one.key")
    assert done.returncode == 0, done.stderr
    # Certified, no net yet: served, and clients are told so.
    with serving(repo) as srv, pytest.raises(Exception, match="no nets yet"):
        fetch(srv.url, cache_dir=tmp_path / "early", trust=root_key.public, policy=POLICY)
    assert server("publish", "--repo", repo, "--key", tmp_path / "one.key", "--codec", FAST_CODEC,
                  *paths[:2]).returncode == 0
    before = (repo / "root.json").read_bytes()
    certify = ("certify", "--repo", repo, "--root-key", tmp_path / "root.key", "--online-key", online_2.public.text)
    one_error_line(server(*certify), "timestamp.json", "--key")
    one_error_line(server(*certify, "--key", tmp_path / "one.key"), "not among the --online-key")
    assert (repo / "root.json").read_bytes() == before                    # refused: nothing written
    done = server(*certify, "--key", tmp_path / "two.key")
    assert done.returncode == 0 and "re-signed" in done.stdout, done.stderr
    with serving(repo) as srv:               # a client with an empty cache, right after certify
        result = fetch(srv.url, cache_dir=tmp_path / "fresh", trust=root_key.public, policy=POLICY)
    assert result.net_id == Net.load(paths[1]).id
    done = server("serve", "--repo", tmp_path / "nosuch")
    one_error_line(done, "no such repository folder")


# -- item 10: check after a routine prune --------------------------------------------------

def test_check_after_prune_skips_what_only_pruned_nets_rebuild(tmp_path):
    key = SigningKey.generate()
    repo = Repository.create(tmp_path / "repo", key)
    # Three nets are enough: keeping the last two, net 2's history patch (history: net 0) and its lossy
    # link (base: the lossy net 1, which only net 0 rebuilds) are rebuilt by pruned nets only.
    publish(repo, run_paths()[:3], tolerance=2.0 ** -10, codec=FAST_CODEC, skips=(1,))
    patches = repo.read_index().patches
    assert any(p.history for p in patches) and any(p.lossy for p in patches)
    prune(repo, keep=2)
    report = check_repository(str(repo.root), POLICY, trust=key.public)
    assert report.ok, report.failures
    assert report.skipped > 0 and report.patches > 0


# -- item 17: one line naming the file and the likely mistake -----------------------------

@pytest.fixture(scope="module")
def patches(tmp_path_factory):
    from lc0weights import make_patch
    folder = tmp_path_factory.mktemp("patches")
    nets = [Net.load(p) for p in run_paths()[:3]]
    (folder / "plain.patch").write_bytes(make_patch(nets[0], nets[1], codec=FAST_CODEC))
    (folder / "history.patch").write_bytes(make_patch(nets[1], nets[2], codec=FAST_CODEC, history=nets[0]))
    return folder


def test_messages_name_the_file_and_the_likely_mistake(patches, tmp_path):
    p = run_paths()
    plain, history = patches / "plain.patch", patches / "history.patch"
    out = tmp_path / "out.pb.gz"
    one_error_line(run("apply", p[0], p[1], "-o", out), p[1].name, "is a net, not a patch")
    one_error_line(run("verify", p[0], p[1], plain), p[1].name, "swap PATCH and TARGET")
    empty = tmp_path / "empty.patch"
    empty.write_bytes(b"")
    one_error_line(run("apply", p[0], empty, "-o", out), "empty.patch", "empty file")
    one_error_line(run("apply", p[0], "/dev/null", "-o", out), "/dev/null", "device")
    one_error_line(run("apply", p[1], history, "--history", p[3], "-o", out),
                   p[3].name, "not the history", "predecessor")
    one_error_line(run("apply", p[3], plain, "-o", out), p[3].name, "not this patch's base")
    one_error_line(run("inspect", plain, "--base", p[3]), p[3].name, "not this patch's base")
    assert not out.exists()
    cache = tmp_path / "a-file"
    cache.write_text("")
    one_error_line(run("fetch", tmp_path, "--cache", cache), "a-file", "--cache takes a folder")


def test_address_in_use_names_the_address(tmp_path):
    import socket
    repo = tmp_path / "repo"
    assert server("publish", "--init", "--repo", repo, run_paths()[0]).returncode == 0
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        one_error_line(server("serve", "--repo", repo, "--port", port), f"127.0.0.1:{port}", "in use")


def test_check_pinned_to_an_online_key_says_the_root_key_is_needed(tmp_path):
    root_key, online = SigningKey.generate(), SigningKey.generate()
    repo = Repository.create(tmp_path / "repo")
    with repo.lock():
        repo.certify(root_key, [online.public], signer=online)
    report = check_repository(str(repo.root), POLICY, trust=online.public)
    assert not report.ok and "--trust takes its root key" in report.failures[0]
    assert root_key.public.text in report.failures[0]


# -- item 18: one convention for output, signals and options ------------------------------

def test_publish_prints_only_its_results_and_labels_history_patches(tmp_path):
    done = server("publish", "--init", "--repo", tmp_path / "repo", "--codec", FAST_CODEC, "--tolerance", "2^-10",
                  *run_paths()[:3])      # net 2's lossless and lossy links both get history versions
    assert done.returncode == 0 and done.stderr == "", done.stderr
    lines = [line for line in done.stdout.splitlines() if " history" in line]
    assert lines, done.stdout                # lossy links coded with history say so
    last = lines[-1]
    assert "; " in last, last                # 12,345; 6,789 history
    assert ", " not in last.split("(", 1)[1], last


def test_fetch_refuses_follow_options_without_follow(tmp_path):
    one_error_line(run("fetch", tmp_path, "--keep", "3"), "--keep", "--follow")
    one_error_line(run("fetch", tmp_path, "--interval", "5"), "--interval", "--follow")


@pytest.mark.parametrize("command", ["watch", "serve"])
def test_sigterm_stops_watch_and_serve_saying_so_with_exit_0(tmp_path, command):
    import signal
    import time
    repo, incoming = tmp_path / "repo", tmp_path / "in"
    incoming.mkdir()
    assert server("publish", "--init", "--repo", repo, run_paths()[0]).returncode == 0
    args = (["watch", "--repo", repo, "--incoming", incoming, "--interval", "0.1"] if command == "watch"
            else ["serve", "--repo", repo, "--port", "0"])
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    proc = subprocess.Popen([sys.executable, "-m", "service.cli", *map(str, args)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 60
        started = "watching" if command == "watch" else "serving"
        line = ""
        while started not in line and time.monotonic() < deadline:
            line = proc.stderr.readline()
        assert started in line
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=30)
    finally:
        proc.kill()
    assert proc.returncode == 0, err
    assert err.strip().endswith(f"lc0weights-server {command}: stopped"), err


def test_quiet_keeps_the_warning_that_nothing_is_authenticated(tmp_path):
    publish(Repository.create(tmp_path / "repo"), run_paths()[:1], codec=FAST_CODEC)
    done = run("-q", "fetch", tmp_path / "repo", "--cache", tmp_path / "cache")
    assert done.returncode == 0, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "no --trust key given" in lines[0], done.stderr


# -- item 16: which tolerances keep the engine's play -------------------------------------

@pytest.mark.parametrize("command", [("lc0weights.cli", "diff"), ("service.cli", "publish"),
                                     ("service.cli", "watch")])
def test_tolerance_help_says_which_tolerances_keep_the_engines_play(command):
    module, sub = command
    done = run(sub, "--help", module=module, env={"COLUMNS": "400"})
    assert done.returncode == 0
    text = " ".join(done.stdout.split())
    assert "2^-14 and finer keep the engine's play" in text, text
    assert "2^-10" in text and "0.16-0.30" in text and "2.2-5.7" in text


def test_check_shows_one_bar_for_the_whole_repository(tmp_path):
    import re

    from test_cli_usability import on_terminal
    publish(Repository.create(tmp_path / "repo"), run_paths()[:3], codec=FAST_CODEC, skips=(1, 2))
    code, shown = on_terminal("check", tmp_path / "repo")
    assert code == 0, shown
    assert re.search(r"checking:\s+\d+%\|", shown), shown
    assert not re.search(r"decoding:\s+\d+%\|", shown), shown          # no bar per patch
