"""A published repository on disk: immutable objects and records, two signed top documents.

Layout (docs/REPOSITORY.md is the specification)::

    root.json                       signed by the root key: repository id, online keys
    timestamp.json                  signed by an online key: latest record, horizon
    records/<net id>.json           one per net, immutable, linked by sha256
    nets/<net id>.pb.gz             full nets
    patches/<sha256>.lc0patch       patches
    .state/                         publisher-private: lock, sequence, repository id, lossy nets

Every file is written to a temp name in its folder, fsynced, renamed, and the
folder fsynced. A publish writes the net, its patches and its record, then
the timestamp: the timestamp is the commit point, so a crash at any moment
leaves a repository whose timestamp names only complete files. The
``.state/sequence`` file maps publication numbers to net ids in fixed-width
lines, so finding net *k* is one seek however long the history.
"""
from __future__ import annotations

import contextlib
import datetime as _dt
import fcntl
import hashlib
import logging
import os
import secrets
import time
from pathlib import Path

from lc0weights.repository.errors import RepositoryError, UntrustedError
from lc0weights.repository.index import Catalogue, NetEntry
from lc0weights.repository.keys import SigningKey
from lc0weights.repository.metadata import (ROOT_NAME, TIMESTAMP_NAME, Link, Record, Root, Timestamp,
                                              open_envelope, parse_record, parse_root,
                                              parse_timestamp, record_path, utc_now, utc_text)
from lc0weights.durable_files import atomic_file

from .sweep import sweep_temp_files

log = logging.getLogger(__name__)

OBJECT_DIRS = ("nets", "patches", "records")
STATE_DIR = ".state"
DEFAULT_EXPIRES = _dt.timedelta(days=7)
ROOT_EXPIRES = _dt.timedelta(days=365)
_SEQ_LINE = 78                       # "%012d %s\n": 12 digits, a space, 64 hex digits, a newline


def utc_text_now() -> str:
    return utc_text(utc_now())


def atomic_write(path: Path, data: bytes, mode: int = 0o644) -> None:
    """Temp file in the same folder, fsync, rename; readable by any web server."""
    with atomic_file(path) as f:
        os.fchmod(f.fileno(), mode)
        f.write(data)


def is_repository(path: Path) -> bool:
    """Whether ``path`` holds a repository (its documents, or a publisher's state)."""
    return any((path / name).exists() for name in (TIMESTAMP_NAME, ROOT_NAME, STATE_DIR))


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class SigningError(RepositoryError):
    """This publisher cannot sign under the root in force (key not certified, root expired):
    retrying cannot help until the operator runs ``certify`` or changes ``--key``."""


class Repository:
    def __init__(self, root, key: SigningKey | None = None, expires: _dt.timedelta = DEFAULT_EXPIRES):
        self.root = Path(root)
        self.key = key
        self.expires = expires
        self._known: set[str] | None = None
        self._swept = False

    @classmethod
    def create(cls, root, key: SigningKey | None = None, expires: _dt.timedelta = DEFAULT_EXPIRES):
        """Open a repository, making its folders when they do not exist yet."""
        repo = cls(root, key, expires)
        try:
            for name in OBJECT_DIRS + (STATE_DIR,):
                (repo.root / name).mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise RepositoryError(f"{repo.root}: cannot create the repository ({e.strerror})") from None
        return repo

    @classmethod
    def for_writing(cls, root, key: SigningKey | None = None, expires: _dt.timedelta = DEFAULT_EXPIRES,
                    init: bool = False):
        """Open a repository to publish or certify into, creating one only when asked.

        A new repository (with, once signed, a new root clients must pin) is made
        only with ``init`` or in an existing empty folder the operator made for it;
        a missing folder, or a folder holding other things, is refused, so a
        mistyped ``--repo`` never silently starts a second repository.
        """
        path = Path(root)
        if not init and not is_repository(path):
            if not path.is_dir():
                raise RepositoryError(f"{path}: no such repository folder (a typo? to start a new "
                                      "repository there, pass --init)")
            if any(path.iterdir()):
                raise RepositoryError(f"{path}: not a repository (no {TIMESTAMP_NAME} or {ROOT_NAME}) and "
                                      "not empty; check --repo, or pass --init to make a repository here")
        return cls.create(root, key, expires)

    @classmethod
    def existing(cls, root, key: SigningKey | None = None, expires: _dt.timedelta = DEFAULT_EXPIRES):
        """Open a repository that must already exist (prune, serve, resign).

        A certified repository with no net yet (root.json, maybe an empty timestamp)
        counts: it can be served, and clients are told it has no net yet.
        """
        repo = cls(root, key, expires)
        if not repo.root.is_dir():
            raise RepositoryError(f"{repo.root}: no such repository folder")
        if not any((repo.root / name).is_file() for name in (TIMESTAMP_NAME, ROOT_NAME)):
            raise RepositoryError(f"{repo.root}: not a repository (no {TIMESTAMP_NAME}); publish a net first")
        return repo

    # -- paths ---------------------------------------------------------------------------
    @property
    def state_dir(self) -> Path:
        return self.root / STATE_DIR

    def object_file(self, rel_path: str) -> Path:
        return self.root / rel_path

    # -- objects -------------------------------------------------------------------------
    def has_object(self, rel_path: str, sha256: str) -> bool:
        path = self.object_file(rel_path)
        try:
            h = hashlib.sha256()
            with open(path, "rb") as f:
                for block in iter(lambda: f.read(1 << 20), b""):
                    h.update(block)
            return h.hexdigest() == sha256
        except OSError:
            return False

    def write_object(self, rel_path: str, data: bytes) -> None:
        """Store an immutable object (skipped when the same bytes are already there)."""
        if self.has_object(rel_path, hashlib.sha256(data).hexdigest()):
            return
        path = self.object_file(rel_path)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            atomic_write(path, data)
            fsync_dir(path.parent)
        except OSError as e:
            raise RepositoryError(f"{path}: cannot write ({e.strerror})") from None

    def remove_object(self, rel_path: str) -> None:
        try:
            self.object_file(rel_path).unlink()
        except FileNotFoundError:
            pass

    def stored_objects(self) -> list[str]:
        """Relative paths of every object and record file present (referenced or not)."""
        found = []
        for name in OBJECT_DIRS:
            folder = self.root / name
            if folder.is_dir():
                found += [f"{name}/{p.name}" for p in folder.iterdir()
                          if p.is_file() and not p.name.startswith(".")]
        return sorted(found)

    # -- the writer lock -----------------------------------------------------------------
    @contextlib.contextmanager
    def lock(self):
        """Hold the repository's writer lock (publishers and pruners take turns)."""
        self.state_dir.mkdir(parents=True, exist_ok=True)
        with open(self.state_dir / "lock", "a+b") as f:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX)
            try:
                self._known = None
                if not self._swept:      # what a killed writer left under a temp name is ours now
                    sweep_temp_files(self.root, lock_held=True)
                    self._swept = True
                yield
            finally:
                self._known = None
                fcntl.flock(f.fileno(), fcntl.LOCK_UN)

    # -- publisher state -----------------------------------------------------------------
    def repository_id(self) -> str:
        """A random id made once; root, timestamp and records all carry it."""
        path = self.state_dir / "repository-id"
        try:
            text = path.read_text().strip()
            if len(text) == 32:
                return text
        except FileNotFoundError:
            pass
        text = secrets.token_hex(16)
        atomic_write(path, text.encode() + b"\n")
        return text

    def _sequence_path(self) -> Path:
        return self.state_dir / "sequence"

    def net_at(self, seq: int) -> str:
        """The id of the net published as number ``seq``."""
        with open(self._sequence_path(), "rb") as f:
            f.seek(seq * _SEQ_LINE)
            line = f.read(_SEQ_LINE)
        if len(line) != _SEQ_LINE or int(line[:12]) != seq:
            raise RepositoryError(f"{self._sequence_path()}: no entry for net {seq}; the file is damaged")
        return line[13:77].decode()

    def append_sequence(self, seq: int, net_id: str) -> None:
        path = self._sequence_path()
        with open(path, "ab") as f:
            f.truncate(seq * _SEQ_LINE)        # drop lines a crashed publish left past the commit
            f.write(b"%012d %s\n" % (seq, net_id.encode()))
            f.flush()
            os.fsync(f.fileno())

    def known(self, net_id: str) -> bool:
        """Published now or in the past (pruned nets are never published again)."""
        if self._known is None:
            count = self.count()
            known = set()
            try:
                with open(self._sequence_path(), "rb") as f:
                    for i, line in enumerate(f):
                        if i >= count:
                            break
                        known.add(line[13:77].decode())
            except FileNotFoundError:
                pass
            try:
                known |= set((self.state_dir / "retired").read_text().split())
            except FileNotFoundError:
                pass
            self._known = known
        return net_id in self._known

    # -- reading the metadata ------------------------------------------------------------
    def read_root(self) -> Root | None:
        try:
            return parse_root(open_envelope("root", (self.root / ROOT_NAME).read_bytes(), ROOT_NAME))
        except FileNotFoundError:
            return None

    def read_timestamp(self) -> Timestamp | None:
        try:
            data = (self.root / TIMESTAMP_NAME).read_bytes()
        except FileNotFoundError:
            return None
        return parse_timestamp(open_envelope("timestamp", data, TIMESTAMP_NAME))

    def count(self) -> int:
        ts = self.read_timestamp()
        return 0 if ts is None or ts.latest is None else ts.latest.seq + 1

    def link_to(self, seq: int) -> Link:
        net_id = self.net_at(seq)
        data = self.object_file(record_path(net_id)).read_bytes()
        return Link(seq, net_id, len(data), hashlib.sha256(data).hexdigest())

    def read_record(self, seq: int) -> Record:
        link = self.link_to(seq)
        return parse_record(self.object_file(link.path).read_bytes(), link, self.repository_id())

    def read_index(self) -> Catalogue:
        """Every net still served and every patch, as one view (operators, tests, ``check``)."""
        ts = self.read_timestamp()
        if ts is None:
            return Catalogue()
        index = Catalogue()
        if ts.latest is None:
            return index
        previous = None
        for seq in range(ts.horizon, ts.latest.seq + 1):
            record = self.read_record(seq)
            entry = record.net
            index.nets.append(NetEntry(**{**entry.to_dict(), "predecessor": previous}))
            index.patches += [p for p in record.patches if p.base_seq >= ts.horizon]
            previous = entry.id
        index.latest = ts.latest.id
        index.retired = [self.net_at(s) for s in range(ts.horizon)]
        return index

    # -- writing the metadata ------------------------------------------------------------
    def write_record(self, record: Record) -> Link:
        data = record.to_bytes()
        self.write_object(record_path(record.net.id), data)
        return Link(record.seq, record.net.id, len(data), hashlib.sha256(data).hexdigest())

    def add_net(self, record: Record) -> None:
        """Commit a new net: its record (objects already written), the sequence, the timestamp."""
        link = self.write_record(record)
        self.append_sequence(record.seq, record.net.id)
        ts = self.read_timestamp()
        self.commit(latest=link, horizon=ts.horizon if ts is not None else 0)
        if self._known is not None:
            self._known.add(record.net.id)

    def commit(self, latest: Link | None, horizon: int) -> Timestamp:
        """Sign and write a new timestamp naming ``latest``: the one commit point of every change."""
        root = self._root_for_signing()
        previous = self.read_timestamp()
        version = max((previous.version + 1) if previous else 1, int(time.time()))
        ts = Timestamp(repository=self.repository_id(), version=version, expires=utc_now() + self.expires,
                       root_version=root.version if root else 0, horizon=horizon, latest=latest)
        data = ts.seal([self.key] if self.key is not None else [])
        try:
            atomic_write(self.root / TIMESTAMP_NAME, data)
            fsync_dir(self.root)
        except OSError as e:
            raise RepositoryError(f"{self.root / TIMESTAMP_NAME}: cannot write ({e.strerror})") from None
        return ts

    def resign(self) -> Timestamp:
        """A new version of the same timestamp with a fresh expiry (nothing else changes)."""
        ts = self.read_timestamp()
        if ts is None:
            raise RepositoryError(f"{self.root}: nothing published yet, nothing to sign")
        return self.commit(ts.latest, ts.horizon)

    def expires_soon(self, margin: _dt.timedelta) -> bool:
        ts = self.read_timestamp()
        return ts is not None and ts.expires - utc_now() <= margin

    def _root_for_signing(self) -> Root | None:
        """The root in force, made on first use when publishing with a key and none exists."""
        root = self._root_in_force()
        if root is None and self.key is not None:
            # One key for everything: it is its own root and its own online key.
            root = Root(repository=self.repository_id(), version=1, expires=utc_now() + ROOT_EXPIRES,
                        root_keys=[self.key.public], online_keys=[self.key.public])
            atomic_write(self.root / ROOT_NAME, root.seal(self.key))
            log.info("created %s: clients pin --trust %s", ROOT_NAME, self.key.public.text)
        return root

    def _root_in_force(self) -> Root | None:
        """The current root, after checking this publisher's key may sign under it (SigningError)."""
        try:
            root = self.read_root()
        except UntrustedError as e:
            raise SigningError(f"{self.root / ROOT_NAME}: {e}") from None
        if self.key is None:
            if root is not None:
                raise SigningError(f"{self.root} is signed ({ROOT_NAME} exists): "
                                   "pass --key with its online signing key")
            return None
        if root is None:
            return None
        if root.repository != self.repository_id():
            raise SigningError(f"{self.root / ROOT_NAME} names repository {root.repository}, "
                               f"this one is {self.repository_id()}")
        if self.key.public not in root.online_keys:
            raise SigningError(f"the key {self.key.path or self.key.public.text} is not an online key of "
                               f"{ROOT_NAME}; certify it with 'lc0weights-server certify'")
        if root.expires <= utc_now():
            raise SigningError(f"{ROOT_NAME} expired on {root.expires:%Y-%m-%d}; clients refuse it: "
                               "renew it with 'lc0weights-server certify'")
        return root

    def signing_problem(self) -> str | None:
        """Why nothing this publisher signs would be accepted now, or None when it can sign.

        Cheap (reads root.json only): a watcher asks before encoding anything, so a
        key that is no longer certified is reported once instead of failing every poll.
        """
        try:
            self._root_in_force()
        except SigningError as e:
            return str(e)
        return None

    def certify(self, root_key: SigningKey, online_keys, expires: _dt.timedelta = ROOT_EXPIRES,
                signer: SigningKey | None = None) -> tuple[Root, Timestamp | None]:
        """Write a new root version, signed by ``root_key``, naming ``online_keys``; then
        re-sign the timestamp with ``signer`` (one of those keys) under the new root.

        Clients refuse a timestamp naming another root version, so a rotation is one
        step: the caller holds the lock, and nothing is written unless both documents
        can be. ``signer`` is required once a timestamp exists; in a new repository it
        writes an empty timestamp, so the repository can be served before its first net.
        """
        online_keys = list(online_keys)
        current = self.read_root()
        if current is not None and root_key.public not in current.root_keys:
            raise RepositoryError(f"{root_key.path or 'the key'} is not the root key of this repository's "
                                  f"{ROOT_NAME} (its root key is {current.root_keys[0].text})")
        if signer is not None and signer.public not in online_keys:
            raise SigningError(f"--key {signer.path or signer.public.text} is not among the --online-key "
                               "keys: the timestamp must be signed by a key the new root certifies")
        ts = self.read_timestamp()
        if ts is not None and signer is None:
            raise SigningError(f"{self.root / TIMESTAMP_NAME} exists and must be re-signed under the new root "
                               "in the same step: pass --key with the private key of an --online-key")
        root = Root(repository=self.repository_id(), version=(current.version + 1) if current else 1,
                    expires=utc_now() + expires, root_keys=[root_key.public], online_keys=online_keys)
        atomic_write(self.root / ROOT_NAME, root.seal(root_key))
        fsync_dir(self.root)
        if signer is None:
            return root, None
        self.key = signer
        return root, self.commit(ts.latest if ts else None, ts.horizon if ts else 0)
