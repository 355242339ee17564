"""A pinned client against a mirror that forges, rolls back, freezes or pads: one test per attack.

Each attack starts from a real signed repository of the shared run, copies
it, tampers with the copy as a hostile mirror could, serves it on loopback,
and runs the real command line. The client must refuse with one line and a
non-zero exit, write nothing to ``-o`` and leave its cache (trust state
included) exactly as it was; ``check --trust`` must fail on the same copy.
"""
from __future__ import annotations

import base64
import datetime as dt
import hashlib
import json
import shutil
from pathlib import Path

import pytest

from lc0weights import Net
from lc0weights.cli import main as lc0weights_main
from lc0weights.client import TransferPolicy, check_repository, fetch
from lc0weights.repository.keys import SigningKey
from lc0weights.repository.metadata import open_envelope, seal
from lc0weights.patch import make_patch
from service.publish import publish
from service.repository import Repository

from conftest import run_paths
from repo_fixtures import FAST_CODEC, copy_into_cache, serving

POLICY = TransferPolicy(timeout=5.0, retries=1, backoff=0.01, progress=False)
TOLERANCE = 2.0 ** -10


@pytest.fixture(scope="module")
def key():
    return SigningKey.generate()


@pytest.fixture(scope="module")
def signed(tmp_path_factory, key):
    """A signed repository of four nets with a lossy chain; also the timestamp after three nets."""
    root = tmp_path_factory.mktemp("signed") / "repo"
    repo = Repository.create(root, key)
    paths = run_paths()[:4]
    publish(repo, paths[:3], tolerance=TOLERANCE, codec=FAST_CODEC, skips=(1, 2))
    older = (root / "timestamp.json").read_bytes()
    publish(repo, paths[3:], tolerance=TOLERANCE, codec=FAST_CODEC, skips=(1, 2))
    return repo, older, [Net.load(p).id for p in paths]


def mirror_copy(signed, tmp_path) -> Path:
    repo, _, _ = signed
    copy = tmp_path / "mirror"
    shutil.copytree(repo.root, copy, ignore=shutil.ignore_patterns(".state"))
    return copy


def snapshot(folder: Path) -> dict:
    if not folder.exists():
        return {}
    return {str(p.relative_to(folder)): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


def run_fetch(url, cache: Path, out: Path, key, *extra, capsys):
    code = lc0weights_main(["fetch", url, "--cache", str(cache), "-o", str(out),
                            "--trust", key.public.text, "--retries", "1", "--timeout", "5", *extra])
    captured = capsys.readouterr()
    return code, captured.err.strip().splitlines()


def assert_refused(url, tmp_path, key, capsys, expect: str, *extra, cache=None):
    """The command fails with one line naming ``expect``; -o and the cache are untouched."""
    cache = cache or tmp_path / "cache"
    before = snapshot(cache)
    out = tmp_path / "out.pb.gz"
    code, err = run_fetch(url, cache, out, key, *extra, capsys=capsys)
    assert code == 1, err
    assert len(err) == 1 and err[0].startswith("lc0weights: error:"), err
    assert expect in err[0], err[0]
    assert not out.exists()
    assert snapshot(cache) == before


def assert_check_fails(url, key, kind="metadata"):
    report = check_repository(url, POLICY, trust=key.public)
    assert not report.ok and kind in report.kinds, report.failures


def reseal(path: Path, doc_type: str, keys, edit=None):
    """Re-sign a top document with ``keys`` after ``edit`` changes its payload dict."""
    envelope = open_envelope(doc_type, path.read_bytes(), path.name)
    payload = json.loads(envelope.payload)
    if edit:
        edit(payload)
    path.write_bytes(seal(doc_type, json.dumps(payload, separators=(",", ":"), sort_keys=True).encode(), keys))


def test_a_signed_repository_is_fetched_and_checked(signed, key, tmp_path):
    repo, _, ids = signed
    with serving(repo.root) as srv:
        result = fetch(srv.url, cache_dir=tmp_path / "cache", trust=key.public.text, policy=POLICY)
        assert result.net_id == ids[-1]
        report = check_repository(srv.url, POLICY, trust=key.public)
    assert report.ok and report.nets == 4, report.failures
    assert report.patches >= 3 + 3          # exact patches, plus the lossy chain, all verified


def test_pin_from_a_file_and_from_the_environment(signed, key, tmp_path, capsys, monkeypatch):
    repo, _, ids = signed
    pin = tmp_path / "repo.pub"
    pin.write_text(f"# the nets repository\n{key.public.text}\n")
    with serving(repo.root) as srv:
        code = lc0weights_main(["fetch", srv.url, "--cache", str(tmp_path / "a"), "--trust", f"@{pin}"])
        assert code == 0
        monkeypatch.setenv("LC0WEIGHTS_TRUST", key.public.text)
        code = lc0weights_main(["fetch", srv.url, "--cache", str(tmp_path / "b")])
        assert code == 0
        err = capsys.readouterr().err
        assert "not authenticated" not in err
        other = SigningKey.generate()
        monkeypatch.setenv("LC0WEIGHTS_TRUST", other.public.text)
        assert lc0weights_main(["fetch", srv.url, "--cache", str(tmp_path / "c")]) == 1


def test_a_net_nobody_published_signed_by_another_key_is_refused(signed, key, tmp_path, capsys):
    copy = mirror_copy(signed, tmp_path)
    mirror_key = SigningKey.generate()
    # The mirror publishes a net of its own as latest, with metadata signed by its own key.
    forged = Repository.create(copy, mirror_key)
    (copy / "root.json").unlink()
    (copy / ".state").mkdir(exist_ok=True)
    shutil.copy(signed[0].state_dir / "repository-id", copy / ".state" / "repository-id")
    shutil.copy(signed[0].state_dir / "sequence", copy / ".state" / "sequence")
    publish(forged, [run_paths()[7]], codec=FAST_CODEC, skips=(1,))
    with serving(copy) as srv:
        assert_refused(srv.url, tmp_path, key, capsys, "not signed by the pinned key")
        assert_check_fails(srv.url, key)


def test_a_timestamp_signed_by_another_key_is_refused(signed, key, tmp_path, capsys):
    copy = mirror_copy(signed, tmp_path)
    reseal(copy / "timestamp.json", "timestamp", [SigningKey.generate()])
    with serving(copy) as srv:
        assert_refused(srv.url, tmp_path, key, capsys, "not signed by an online key")
        assert_check_fails(srv.url, key)


@pytest.mark.parametrize("document", ["timestamp.json", "root.json", "record"])
def test_an_edited_metadata_byte_is_refused(signed, key, tmp_path, capsys, document):
    copy = mirror_copy(signed, tmp_path)
    latest = signed[2][-1]
    target = copy / (f"records/{latest}.json" if document == "record" else document)
    data = bytearray(target.read_bytes())
    if document == "record":
        data[data.index(b'"size":') + 7] ^= 0x01           # one digit of a declared size
        expect = "sha256"
    else:
        envelope = json.loads(data)
        payload = bytearray(base64.b64decode(envelope["payload"]))
        payload[payload.index(b'"version":') + 10] ^= 0x01
        envelope["payload"] = base64.b64encode(bytes(payload)).decode()
        data = bytearray(json.dumps(envelope).encode())
        expect = "not signed"
    target.write_bytes(bytes(data))
    with serving(copy) as srv:
        assert_refused(srv.url, tmp_path, key, capsys, expect)
        assert_check_fails(srv.url, key)


def test_rollback_to_an_older_genuine_timestamp_is_refused(signed, key, tmp_path, capsys):
    repo, older, ids = signed
    cache = tmp_path / "cache"
    with serving(repo.root) as srv:                     # the client has seen the newest state
        assert fetch(srv.url, cache_dir=cache, trust=key.public, policy=POLICY).net_id == ids[3]
    copy = mirror_copy(signed, tmp_path)
    (copy / "timestamp.json").write_bytes(older)       # genuinely signed, one net older
    with serving(copy) as srv:
        assert_refused(srv.url, tmp_path, key, capsys, "rollback", cache=cache)
        # A client that never saw the newer state cannot tell: it gets the older, genuine net.
        fresh = fetch(srv.url, cache_dir=tmp_path / "fresh", trust=key.public, policy=POLICY)
        assert fresh.net_id == ids[2]


def test_expired_metadata_is_refused(signed, key, tmp_path, capsys):
    copy = mirror_copy(signed, tmp_path)
    shutil.copytree(signed[0].state_dir, copy / ".state")
    stale = Repository(copy, key, expires=dt.timedelta(seconds=-60))    # genuinely signed, expired
    with stale.lock():
        stale.resign()
    with serving(copy) as srv:
        assert_refused(srv.url, tmp_path, key, capsys, "expired")
        assert_check_fails(srv.url, key)


def test_a_forged_tolerance_entry_is_refused(signed, key, tmp_path, capsys):
    """A mirror lists a 'lossy' net of its own for the latest net: 0.12 away from it."""
    repo, _, ids = signed
    copy = mirror_copy(signed, tmp_path)
    target = Net.load(run_paths()[3])
    fake = Net.load(run_paths()[9])
    data = make_patch(Net.load(run_paths()[2]), fake, codec=FAST_CODEC)
    sha = hashlib.sha256(data).hexdigest()
    (copy / "patches" / f"{sha}.lc0patch").write_bytes(data)
    record_file = copy / "records" / f"{target.id}.json"
    doc = json.loads(record_file.read_bytes())
    doc["patches"].append({"base": ids[2], "base_seq": 2, "size": len(data), "sha256": sha,
                           "mode": "tolerance", "tolerance": 1.0, "result": fake.id})
    record_file.write_bytes(json.dumps(doc, separators=(",", ":"), sort_keys=True).encode() + b"\n")
    cache = tmp_path / "cache"
    copy_into_cache(run_paths()[2], cache, ids[2])
    with serving(copy) as srv:
        assert_refused(srv.url, tmp_path, key, capsys, f"records/{target.id}.json", "--tolerance", "1",
                       cache=cache)
        assert_check_fails(srv.url, key)


def test_an_object_longer_than_its_signed_length_is_cut_and_refused(signed, key, tmp_path, capsys):
    repo, _, ids = signed
    copy = mirror_copy(signed, tmp_path)
    net_file = copy / "nets" / f"{ids[3]}.pb.gz"
    signed_size = net_file.stat().st_size
    with open(net_file, "ab") as f:                     # endless data: 64 MB more than signed
        f.truncate(signed_size + (64 << 20))
    with serving(copy) as srv:
        cache = tmp_path / "cache"
        before = snapshot(cache)
        with pytest.raises(Exception) as info:
            fetch(srv.url, cache_dir=cache, out=tmp_path / "out.pb.gz", trust=key.public, policy=POLICY)
        assert "more bytes than" in str(info.value) or "sends" in str(info.value)
        assert snapshot(cache) == before and not (tmp_path / "out.pb.gz").exists()
        assert_refused(srv.url, tmp_path, key, capsys, "every route failed")
        assert_check_fails(srv.url, key, kind="net")


def test_reads_stop_at_the_signed_length(signed, key, tmp_path):
    from lc0weights.client import HttpSource
    repo, _, ids = signed
    copy = mirror_copy(signed, tmp_path)
    net_file = copy / "nets" / f"{ids[3]}.pb.gz"
    size = net_file.stat().st_size
    sha = hashlib.sha256(net_file.read_bytes()).hexdigest()
    with open(net_file, "ab") as f:
        f.truncate(size + (64 << 20))
    with serving(copy) as srv:
        source = HttpSource(srv.url, POLICY)
        with pytest.raises(Exception):
            source.fetch_object(f"nets/{ids[3]}.pb.gz", tmp_path / "net", size, sha)
    assert source.bytes_downloaded <= size + (1 << 17)     # not the 64 MB the server offered
    assert not (tmp_path / "net").exists()


@pytest.mark.parametrize("prefix", [8, 15])
def test_a_short_id_prefix_is_refused(signed, key, tmp_path, capsys, prefix):
    repo, _, ids = signed
    with serving(repo.root) as srv:
        assert_refused(srv.url, tmp_path, key, capsys, "at least 16 hex digits", "--net", ids[1][:prefix])


def test_a_16_digit_prefix_of_a_signed_net_is_accepted(signed, key, tmp_path):
    repo, _, ids = signed
    with serving(repo.root) as srv:
        result = fetch(srv.url, net=ids[1][:16], cache_dir=tmp_path, trust=key.public, policy=POLICY)
    assert result.net_id == ids[1]


def test_an_unsigned_repository_is_refused_when_a_key_is_pinned(tmp_path, key, capsys):
    repo = Repository.create(tmp_path / "unsigned")
    publish(repo, run_paths()[:2], codec=FAST_CODEC, skips=(1,))
    with serving(repo.root) as srv:
        assert_refused(srv.url, tmp_path, key, capsys, "not signed")
        # Without a pin it still works, and says once that nothing is authenticated.
        code = lc0weights_main(["fetch", srv.url, "--cache", str(tmp_path / "plain")])
    assert code == 0


def test_online_key_rotation_with_an_offline_root(tmp_path, capsys):
    """The root key certifies online keys; rotating the online key never changes the client's pin."""
    root_key, online_1, online_2 = SigningKey.generate(), SigningKey.generate(), SigningKey.generate()
    root = tmp_path / "repo"
    Repository.create(root).certify(root_key, [online_1.public])
    publish(Repository.create(root, online_1), run_paths()[:2], codec=FAST_CODEC, skips=(1,))
    cache = tmp_path / "cache"
    with serving(root) as srv:
        assert fetch(srv.url, cache_dir=cache, trust=root_key.public, policy=POLICY).patches == 0
        compromised_timestamp = (root / "timestamp.json").read_bytes()
        # Rotation: certify the new online key and re-sign with it in one step, carry on publishing.
        Repository.create(root).certify(root_key, [online_2.public], signer=online_2)
        publish(Repository.create(root, online_2), run_paths()[2:3], codec=FAST_CODEC, skips=(1,))
        with pytest.raises(Exception, match="not an online key"):
            publish(Repository.create(root, online_1), run_paths()[3:4], codec=FAST_CODEC)
        result = fetch(srv.url, cache_dir=cache, trust=root_key.public, policy=POLICY)
        assert result.net_id == Net.load(run_paths()[2]).id and result.patches == 1
    # A timestamp the old online key signed is refused by a client that has seen the new root.
    copy = tmp_path / "old"
    shutil.copytree(root, copy, ignore=shutil.ignore_patterns(".state"))
    (copy / "timestamp.json").write_bytes(compromised_timestamp)
    with serving(copy) as srv:
        assert_refused(srv.url, tmp_path, root_key, capsys, "", cache=cache)
