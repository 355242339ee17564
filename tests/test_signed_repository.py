"""Keys, signing on the publisher's side, re-signing before expiry, and schema-1 repositories."""
from __future__ import annotations

import datetime as dt
import json
import os
import shutil
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

from lc0weights import Net
from lc0weights.client import TransferPolicy, check_repository, fetch
from lc0weights.repository.errors import UntrustedError
from lc0weights.repository.keys import PublicKey, SigningKey, read_trust
from service.publish import publish
from lc0weights.repository.metadata import link_distances
from service.repository import Repository
from service.watch import Watcher

from conftest import run_paths
from repo_fixtures import FAST_CODEC, legacy_index

ROOT = Path(__file__).resolve().parents[1]
POLICY = TransferPolicy(timeout=5.0, retries=1, backoff=0.01, progress=False)


def server_cli(*args):
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    return subprocess.run([sys.executable, "-m", "service.cli", *args], env=env,
                          capture_output=True, text=True, timeout=120)


def test_keygen_writes_a_private_file_and_prints_the_pin(tmp_path):
    keyfile = tmp_path / "online.key"
    done = server_cli("keygen", str(keyfile))
    assert done.returncode == 0, done.stderr
    printed = done.stdout.strip()
    assert printed.startswith("ed25519:") and "\n" not in printed
    assert stat.S_IMODE(keyfile.stat().st_mode) == 0o600
    assert SigningKey.load(keyfile).public == PublicKey.from_text(printed)
    before = keyfile.read_bytes()
    again = server_cli("keygen", str(keyfile))
    assert again.returncode == 1 and "refusing to overwrite" in again.stderr
    assert len(again.stderr.strip().splitlines()) == 1 and keyfile.read_bytes() == before


@pytest.mark.parametrize("text", ["ed25519:AAAA", "rsa:abc", "ed25519:" + "!" * 44, ""])
def test_a_malformed_pin_is_one_clear_error(text):
    with pytest.raises(Exception) as info:
        read_trust(text)
    assert "key" in str(info.value)


def test_publish_with_a_key_signs_and_refuses_a_key_the_root_does_not_certify(tmp_path):
    key = SigningKey.generate()
    repo = Repository.create(tmp_path / "repo", key)
    publish(repo, run_paths()[:2], codec=FAST_CODEC, skips=(1,))
    assert repo.read_root().online_keys == [key.public]
    with pytest.raises(Exception, match="not an online key"):
        publish(Repository.create(tmp_path / "repo", SigningKey.generate()), run_paths()[2:3], codec=FAST_CODEC)
    with pytest.raises(Exception, match="is signed"):
        publish(Repository.create(tmp_path / "repo"), run_paths()[2:3], codec=FAST_CODEC)
    assert len(repo.read_index().nets) == 2                    # neither attempt changed anything


def test_watch_re_signs_before_expiry_with_no_new_net(tmp_path):
    key = SigningKey.generate()
    repo = Repository.create(tmp_path / "repo", key, expires=dt.timedelta(seconds=4))
    publish(repo, run_paths()[:1], codec=FAST_CODEC)
    first = repo.read_timestamp()
    incoming = tmp_path / "incoming"
    incoming.mkdir()
    watcher = Watcher(incoming, repo, interval=0, codec=FAST_CODEC)
    watcher.keep_signed()
    assert repo.read_timestamp().version == first.version       # plenty of validity left
    time.sleep(2.2)
    watcher.keep_signed()
    renewed = repo.read_timestamp()
    assert renewed.version > first.version and renewed.expires > first.expires
    assert renewed.latest == first.latest


def test_links_form_a_skip_list():
    assert link_distances(0) == []
    assert link_distances(3) == [1, 2]
    assert link_distances(64) == [1, 2, 4, 8, 16, 32, 64]
    assert link_distances(96) == [1, 2, 4, 8, 16, 32]


def test_far_behind_reads_a_logarithmic_number_of_records(tmp_path):
    """Records read to catch up grow with log(distance): count them on a long chain of tiny nets."""
    import numpy as np
    from lc0weights.net import gzip_bytes
    from netfactory import residual_net, step
    from service.publish import publish_net
    rng = np.random.default_rng(5)
    message = residual_net(rng, blocks=1, filters=4)
    repo = Repository.create(tmp_path / "repo")
    nets = []
    for i in range(40):
        message = step(message, rng)
        message.training_params.training_steps = 1000 + i
        nets.append(Net(message.SerializeToString()))
        publish_net(repo, nets[-1], gzip_bytes(nets[-1].raw), f"net-{i}", codec=FAST_CODEC, skips=(1,))
    cache = tmp_path / "cache"
    cache.mkdir()
    nets[2].save(cache / f"{nets[2].id}.pb.gz")
    result = fetch(str(repo.root), cache_dir=cache, policy=POLICY)
    assert result.net_id == nets[-1].id
    records = [p for p in (repo.root / "records").iterdir()]
    record_size = max(p.stat().st_size for p in records)
    # 37 nets behind: about 2 log2(37) records on the way, not 37 of them.
    assert result.metadata_bytes < 14 * record_size, (result.metadata_bytes, record_size)


def test_schema_1_repositories_are_read_unsigned_and_migrated_by_the_next_publish(tmp_path):
    signed = Repository.create(tmp_path / "new")
    publish(signed, run_paths()[:3], codec=FAST_CODEC, skips=(1, 2))
    legacy = tmp_path / "legacy"
    (legacy / "nets").mkdir(parents=True)
    shutil.copytree(signed.root / "nets", legacy / "nets", dirs_exist_ok=True)
    shutil.copytree(signed.root / "patches", legacy / "patches")
    doc = legacy_index(signed)
    (legacy / "index.json").write_text(json.dumps(doc))
    ids = [Net.load(p).id for p in run_paths()[:4]]

    result = fetch(str(legacy), cache_dir=tmp_path / "a", policy=POLICY)
    assert result.net_id == ids[2]
    with pytest.raises(UntrustedError, match="no signed metadata"):
        fetch(str(legacy), cache_dir=tmp_path / "b", policy=POLICY, trust=SigningKey.generate().public)

    key = SigningKey.generate()
    publish(Repository.create(legacy, key), run_paths()[3:4], codec=FAST_CODEC, skips=(1, 2))
    assert not (legacy / "index.json").exists()
    migrated = Repository(legacy).read_index()
    assert [n.id for n in migrated.nets] == ids
    assert {(p["base"], p["target"]) for p in doc["patches"]} <= {(p.base, p.target) for p in migrated.patches}
    report = check_repository(str(legacy), POLICY, trust=key.public)
    assert report.ok, report.failures
