"""One-shot ``fetch --client-layout`` beside lczero-client, and the hint for a pinned online key.

lczero-client deletes every entry of its cache folder older than its keep
time but the current net, whoever wrote it (the stand-in does so with a keep
time of 0). A one-shot fetch must therefore leave only nets there, and keep
its trust state where that clean-up cannot reach it. A client that pinned a
repository's online signing key instead of its root key is told so by
``fetch`` and ``fetch --follow`` as by ``check``.
"""
from __future__ import annotations

import datetime as dt
import logging
import os
import shutil
import threading
import time

import pytest

from lc0weights import Net
from lc0weights.cli import main as lc0weights_main
from lc0weights.client import TransferPolicy, check_repository
from lc0weights.client.follow import follow
from lc0weights.repository.keys import SigningKey
from lc0weights.repository.metadata import Root, utc_now
from service.publish import publish
from service.repository import Repository

from conftest import run_paths
from lczero_client_standin import StandInClient
from repo_fixtures import FAST_CODEC, leftovers

HINT = "--trust takes its root key"


@pytest.fixture(scope="module")
def ids():
    return [Net.load(p).id for p in run_paths()[:2]]


@pytest.fixture
def state(tmp_path, monkeypatch):
    """lc0weights' own state folder for the client, under a private user cache."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    return tmp_path / "xdg" / "lc0weights" / "follow"


def fetch_cli(repo, client, key, capsys) -> tuple[int, list[str]]:
    code = lc0weights_main(["-q", "fetch", str(repo), "--client-layout", "--cache", str(client),
                            "--trust", key.public.text, "--retries", "0"])
    return code, capsys.readouterr().err.strip().splitlines()


def test_a_one_shot_fetch_leaves_only_nets_in_the_client_folder(tmp_path, ids, state, capsys):
    key = SigningKey.generate()
    repo = Repository.create(tmp_path / "repo", key)
    publish(repo, run_paths()[:1], codec=FAST_CODEC, skips=(1,))
    client = tmp_path / "client-cache"
    assert fetch_cli(repo.root, client, key, capsys)[0] == 0
    assert os.listdir(client) == [ids[0]]                 # named as lczero-client names it
    assert StandInClient.check(client / ids[0], ids[0])
    publish(repo, run_paths()[1:2], codec=FAST_CODEC, skips=(1,))
    code, err = fetch_cli(repo.root, client, key, capsys)
    assert code == 0, err
    assert sorted(os.listdir(client)) == sorted(ids)      # nothing else: no trust state, partial, rates
    assert StandInClient.check(client / ids[1], ids[1])
    # Everything of lc0weights' own is in its state folder, which follow uses too.
    assert (state / ".lc0weights-trust").is_dir() and (state / ".lc0weights-rates.json").is_file()
    assert sorted(p.name for p in state.glob("*.pb.gz")) == sorted(f"{i}.pb.gz" for i in ids)
    assert leftovers(state) == [] and leftovers(client) == []


def test_the_trust_state_survives_the_clients_clean_up(tmp_path, ids, state, capsys):
    key = SigningKey.generate()
    repo = Repository.create(tmp_path / "repo", key)
    publish(repo, run_paths()[:1], codec=FAST_CODEC, skips=(1,))
    older = (repo.root / "timestamp.json").read_bytes()
    publish(repo, run_paths()[1:2], codec=FAST_CODEC, skips=(1,))
    client = tmp_path / "client-cache"
    assert fetch_cli(repo.root, client, key, capsys)[0] == 0
    stand_in = StandInClient(client, "http://127.0.0.1:9/", retries=1, keep_seconds=0)   # 16 h gone by
    (client / "litter").write_bytes(b"x")                   # proof the clean-up ran
    assert stand_in.get_network(ids[1]) == client / ids[1] and stand_in.downloads == []
    assert os.listdir(client) == [ids[1]]
    # A mirror serving the older, genuinely signed timestamp: a rollback, refused.
    mirror = tmp_path / "mirror"
    shutil.copytree(repo.root, mirror, ignore=shutil.ignore_patterns(".state"))
    (mirror / "timestamp.json").write_bytes(older)
    code, err = fetch_cli(mirror, client, key, capsys)
    assert code == 1 and len(err) == 1 and "rollback" in err[0], err
    assert os.listdir(client) == [ids[1]]
    # A client that never saw the newer state cannot tell: the check above came from the kept state.
    shutil.rmtree(state)
    assert fetch_cli(mirror, client, key, capsys)[0] == 0


@pytest.fixture(scope="module")
def offline_root(tmp_path_factory):
    """A repository whose root key only certifies the online key that signs its timestamp."""
    root_key, online = SigningKey.generate(), SigningKey.generate()
    root = tmp_path_factory.mktemp("offline-root") / "repo"
    Repository.create(root).certify(root_key, [online.public])
    publish(Repository.create(root, online), run_paths()[:1], codec=FAST_CODEC, skips=(1,))
    return root, root_key, online


def test_fetch_pinned_to_the_online_key_says_the_root_key_is_needed(offline_root, tmp_path, capsys):
    root, root_key, online = offline_root
    code = lc0weights_main(["fetch", str(root), "--cache", str(tmp_path / "cache"), "--trust",
                            online.public.text, "--retries", "0"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 1 and len(err) == 1 and err[0].startswith("lc0weights: error:"), err
    assert HINT in err[0] and root_key.public.text in err[0], err[0]
    # Pinned right, the same repository fetches.
    code = lc0weights_main(["fetch", str(root), "--cache", str(tmp_path / "cache"), "--trust",
                            root_key.public.text, "--retries", "0"])
    assert code == 0, capsys.readouterr().err


def test_follow_pinned_to_the_online_key_logs_the_same_hint(offline_root, tmp_path, caplog):
    root, root_key, online = offline_root
    caplog.set_level(logging.INFO, logger="lc0weights.client.follow")
    stop = threading.Event()
    thread = threading.Thread(target=follow, args=(str(root), stop), kwargs=dict(
        cache_dir=tmp_path / "client-cache", client_layout=True, state_dir=tmp_path / "state",
        interval=0.1, trust=online.public, policy=TransferPolicy(retries=0, progress=False)))
    thread.start()
    try:
        deadline = time.monotonic() + 20
        while not any("cannot follow" in r.getMessage() for r in caplog.records):
            assert time.monotonic() < deadline, "follow never reported the failure"
            time.sleep(0.02)
    finally:
        stop.set()
        thread.join(10)
    message = next(r.getMessage() for r in caplog.records if "cannot follow" in r.getMessage())
    assert HINT in message and root_key.public.text in message, message
    assert not (tmp_path / "client-cache").exists() or os.listdir(tmp_path / "client-cache") == []


def test_a_forged_root_cannot_make_the_hint_name_another_key(offline_root, tmp_path, capsys):
    """A mirror's root.json listing the (correctly) pinned root key as an online key, under a root
    key of its own: the pinned key never signs a timestamp, so no hint suggests the forger's key."""
    root, root_key, online = offline_root
    forger = SigningKey.generate()
    copy = tmp_path / "mirror"
    shutil.copytree(root, copy, ignore=shutil.ignore_patterns(".state"))
    forged = Root(repository=Repository.create(root).repository_id(), version=2,
                  expires=utc_now() + dt.timedelta(days=30), root_keys=[forger.public],
                  online_keys=[root_key.public, online.public])
    (copy / "root.json").write_bytes(forged.seal(forger))
    code = lc0weights_main(["fetch", str(copy), "--cache", str(tmp_path / "cache"), "--trust",
                            root_key.public.text, "--retries", "0"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 1 and len(err) == 1 and "not signed by the pinned key" in err[0], err
    assert HINT not in err[0] and forger.public.text not in err[0], err[0]
    report = check_repository(str(copy), TransferPolicy(retries=0, progress=False), trust=root_key.public)
    assert not report.ok and HINT not in report.failures[0], report.failures
    assert forger.public.text not in report.failures[0], report.failures
