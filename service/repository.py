"""A published repository on disk: immutable objects plus one index, written safely.

Layout (see docs/REPOSITORY.md)::

    index.json                      the only mutable file
    nets/<net id>.pb.gz             full nets, deterministic gzip
    patches/<sha256>.lc0patch       patches, named by the sha256 of their bytes
    .state/                         publisher-private (lock, rebuilt lossy nets); never served

Every file is written to a temp name in its folder, fsynced, renamed, and the
folder fsynced. A publish writes all new objects first and the index last, so
whenever a crash strikes the index only names objects that are complete; an
object written before a crash but never indexed is harmless and is simply
rewritten (same bytes, same name) by the next publish or swept by ``prune``.
"""
from __future__ import annotations

import contextlib
import datetime as _dt
import fcntl
import hashlib
import os
from pathlib import Path

from lc0weights.distribution.errors import RepositoryError
from lc0weights.distribution.index import INDEX_NAME, RepositoryIndex, parse_index
from lc0weights.net import atomic_file

OBJECT_DIRS = ("nets", "patches")
STATE_DIR = ".state"


def utc_now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def atomic_write(path: Path, data: bytes, mode: int = 0o644) -> None:
    """Temp file in the same folder, fsync, rename; readable by any web server."""
    with atomic_file(path) as f:
        os.fchmod(f.fileno(), mode)
        f.write(data)


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class Repository:
    def __init__(self, root):
        self.root = Path(root)

    @classmethod
    def create(cls, root) -> "Repository":
        """Open a repository, making its folders when they do not exist yet."""
        repo = cls(root)
        try:
            for name in OBJECT_DIRS + (STATE_DIR,):
                (repo.root / name).mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise RepositoryError(f"{repo.root}: cannot create the repository ({e.strerror})") from None
        return repo

    @property
    def index_path(self) -> Path:
        return self.root / INDEX_NAME

    @property
    def state_dir(self) -> Path:
        return self.root / STATE_DIR

    def read_index(self) -> RepositoryIndex:
        """The current index; an empty one for a repository with nothing published yet."""
        try:
            data = self.index_path.read_bytes()
        except FileNotFoundError:
            return RepositoryIndex()
        except OSError as e:
            raise RepositoryError(f"{self.index_path}: cannot read ({e.strerror})") from None
        return parse_index(data)

    def object_file(self, rel_path: str) -> Path:
        return self.root / rel_path

    def has_object(self, rel_path: str, sha256: str) -> bool:
        path = self.object_file(rel_path)
        try:
            return hashlib.sha256(path.read_bytes()).hexdigest() == sha256
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

    def commit(self, index: RepositoryIndex) -> None:
        """Replace the index atomically; call only once every object it names is written."""
        index.updated = utc_now()
        try:
            atomic_write(self.index_path, index.to_json())
            fsync_dir(self.root)
        except OSError as e:
            raise RepositoryError(f"{self.index_path}: cannot write ({e.strerror})") from None

    def remove_object(self, rel_path: str) -> None:
        try:
            self.object_file(rel_path).unlink()
        except FileNotFoundError:
            pass

    def stored_objects(self) -> list[str]:
        """Relative paths of every object file present (indexed or not)."""
        found = []
        for name in OBJECT_DIRS:
            folder = self.root / name
            if folder.is_dir():
                found += [f"{name}/{p.name}" for p in folder.iterdir()
                          if p.is_file() and not p.name.startswith(".")]
        return sorted(found)

    @contextlib.contextmanager
    def lock(self):
        """Hold the repository's writer lock (publishers and pruners take turns)."""
        self.state_dir.mkdir(parents=True, exist_ok=True)
        with open(self.state_dir / "lock", "a+b") as f:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(f.fileno(), fcntl.LOCK_UN)
