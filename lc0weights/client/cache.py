"""The client's net cache: nets stored by id, in our layout or the training client's.

Our layout keeps ``<id>.pb.gz`` files; the training client's layout keeps a
gzip file named just ``<id>``. Nets are *found* by content, whatever their
name: any ``.pb.gz``, ``.pb`` or bare-id file in the folder, and any file
named with ``have``, is a candidate patch base. A file named by an id is
taken at its word for planning; any other file is hashed once and its id
remembered in a small memo (keyed by name or path, checked against the file's
device, inode, size and mtime), so neither a large cache nor a ``have`` file
is re-read on every fetch. Either way a net is verified against its id
before it is used, and the cache never reports a file it has not verified.
"""
from __future__ import annotations

import json
import logging
import os
import re
import sys
from pathlib import Path

from ..errors import Lc0WeightsError
from ..files import NotARegularFileError, read_small_file
from ..gzipio import write_gzip
from ..durable_files import atomic_file, atomic_write, place_file
from ..net import GZIP_LEVEL, Net, write_net_file
from .client_cache import client_cache_dir, gzip_net_id, net_lock

log = logging.getLogger(__name__)
_ID_NAME = re.compile(r"([0-9a-f]{64})(\.pb\.gz)?\Z")
_HEX64 = re.compile(r"[0-9a-f]{64}\Z")
MEMO_NAME = ".held-ids.json"
MEMO_VERSION = 2                   # 1 keyed entries by size and mtime only: such a memo is ignored
MEMO_MAX_ENTRIES = 256             # a real cache holds tens of nets; the most recently used are kept
MEMO_MAX_BYTES = 2 << 20           # 256 entries of the longest key allowed fit
MAX_NET_BYTES = 16 << 30           # no lc0 net comes near this; bounds a hostile gzip


def default_cache_dir() -> Path:
    """The platform's user cache folder for lc0weights (no extra dependency)."""
    if sys.platform == "win32" and os.environ.get("LOCALAPPDATA"):
        return Path(os.environ["LOCALAPPDATA"]) / "lc0weights" / "Cache"
    if sys.platform == "darwin":
        return Path.home() / "Library" / "Caches" / "lc0weights"
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "lc0weights"


def is_candidate_name(name: str) -> bool:
    """A file name that may hold a net: ``.pb.gz``, ``.pb`` or a bare id (never hidden)."""
    if name.startswith("."):
        return False
    return name.endswith((".pb.gz", ".pb")) or _HEX64.match(name) is not None


def file_net_id(path) -> str | None:
    """The id of the net a file holds (gzip or raw), computed from its content; None if unreadable."""
    path = Path(path)
    try:
        with open(path, "rb") as f:
            gz = f.read(2) == b"\x1f\x8b"
    except OSError:
        return None
    if gz:
        return gzip_net_id(path, MAX_NET_BYTES)
    from .download import sha256_file
    try:
        return sha256_file(path)
    except OSError:
        return None


class IdMemo:
    """Remembered ids of held files: ``{key: [dev, inode, size, mtime_ns, id]}`` in one small JSON file.

    ``key`` is a name in the cache folder or the absolute path of a ``have``
    file. An entry holds while the file's device, inode, size and mtime are
    unchanged; any change (a touched, rewritten or replaced file) and the file
    is hashed afresh. The memo lives in the cache folder and can be edited by
    anyone who can write there, so it is read with a size bound (a regular
    file only: never a FIFO or device) and every entry is validated; a bad
    memo is ignored, never trusted. An entry is only a hint for planning: the
    net is still verified against its id before use (:meth:`NetCache.load`),
    and a wrong one is forgotten. At most :data:`MEMO_MAX_ENTRIES` are kept,
    the most recently used.
    """

    def __init__(self, path: Path):
        self.path = path
        self.entries: dict[str, list] = {}
        self.dirty = False
        self._read()

    def _read(self) -> None:
        try:
            data = read_small_file(self.path, MEMO_MAX_BYTES, "held-ids memo")
        except FileNotFoundError:
            return
        except (OSError, NotARegularFileError) as e:
            log.warning("ignoring %s: %s", self.path, e)
            return
        try:
            doc = json.loads(data)
        except (ValueError, RecursionError):
            log.warning("ignoring %s: not JSON", self.path)
            return
        if not isinstance(doc, dict) or doc.get("version") != MEMO_VERSION or not isinstance(doc.get("ids"), dict):
            return
        for key, value in list(doc["ids"].items())[-MEMO_MAX_ENTRIES:]:
            if (isinstance(key, str) and 0 < len(key) < 4096 and isinstance(value, list) and len(value) == 5
                    and all(type(v) is int and 0 <= v < 1 << 64 for v in value[:4])
                    and isinstance(value[4], str) and _HEX64.match(value[4])):
                self.entries[key] = value

    def id_of(self, key: str, path: Path, st: os.stat_result) -> str | None:
        """The id of the net ``path`` holds: remembered if the file is unchanged, else hashed."""
        stamp = [st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns]
        entry = self.entries.get(key)
        if entry and entry[:4] == stamp:
            self._touch(key, entry)
            return entry[4]
        net_id = file_net_id(path)
        if net_id is not None:
            self._touch(key, stamp + [net_id])
        return net_id

    def _touch(self, key: str, entry: list) -> None:
        """Make ``key`` the most recently used entry; the least recently used beyond the cap go.

        Only a new or changed entry makes the memo worth writing: the order
        is saved with the next change (nothing is pushed out before one).
        """
        self.dirty = self.dirty or self.entries.get(key) != entry
        self.entries.pop(key, None)
        self.entries[key] = entry
        while len(self.entries) > MEMO_MAX_ENTRIES:
            del self.entries[next(iter(self.entries))]

    def forget(self, key: str) -> None:
        if self.entries.pop(key, None) is not None:
            self.dirty = True

    def keep_only(self, names) -> None:
        """Drop the entries of cache-folder files not in ``names`` (they are gone);
        ``have`` files, named by absolute path, stay until the cap pushes them out."""
        stale = {key for key in self.entries if not os.path.isabs(key)} - set(names)
        for key in stale:
            del self.entries[key]
        self.dirty = self.dirty or bool(stale)

    def save(self) -> None:
        if not self.dirty:
            return
        try:
            atomic_write(self.path, json.dumps({"version": MEMO_VERSION, "ids": self.entries}).encode())
            self.dirty = False
        except OSError as e:                  # a read-only cache still works, only slower
            log.debug("cannot save %s: %s", self.path, e)


class NetCache:
    def __init__(self, root=None, client_layout: bool = False, have=()):
        if root is None:
            root = client_cache_dir() if client_layout else default_cache_dir()
        self.root = Path(root)
        self.client_layout = client_layout
        self.have = [Path(p) for p in have]
        self._where: dict[str, list[tuple[Path, str | None]]] = {}
        self._pending_memo: IdMemo | None = None

    def file_for(self, net_id: str) -> Path:
        return self.root / (net_id if self.client_layout else f"{net_id}.pb.gz")

    # -- what the cache holds -------------------------------------------------------
    def held_ids(self) -> set[str]:
        """Ids of the nets the cache (and ``have``) may hold: names first, else content."""
        self._where = {}
        memo = IdMemo(self.root / MEMO_NAME)
        used_keys = []
        for path, key in self._candidates():
            m = _ID_NAME.match(path.name)
            if m:
                self._where.setdefault(m.group(1), []).append((path, None))
                continue
            try:
                st = path.stat()
            except OSError:
                continue
            net_id = memo.id_of(key, path, st)
            used_keys.append(key)
            if net_id is not None:
                self._where.setdefault(net_id, []).append((path, key))
        memo.keep_only(used_keys)
        if self.root.is_dir():
            memo.save()
        else:
            self._pending_memo = memo        # saved once the folder exists (store creates it)
        return set(self._where)

    def _candidates(self):
        """(path, memo key) of each file that may hold a net; symlinks in the cache are skipped."""
        if self.root.is_dir():
            for entry in sorted(os.scandir(self.root), key=lambda e: e.name):
                if is_candidate_name(entry.name) and entry.is_file(follow_symlinks=False):
                    yield Path(entry.path), entry.name
        for path in self.have:
            yield path, str(path.resolve())

    def load(self, net_id: str, spill: bool = False) -> Net | None:
        """The held net, verified against its id; None when no file holding it checks out.

        ``spill``: a large net is kept in an unnamed file in the cache folder and mapped
        (see ``Net.load``), for a net a patch is about to be rebuilt from."""
        places = self._where.get(net_id) or [(self.file_for(net_id), None)]
        for path, key in places:
            if key is None and path.parent == self.root and path.is_symlink():
                log.warning("ignoring cached %s: a symlink", path)
                continue
            try:
                net = Net.load(path, spill_dir=self.root if spill and self.root.is_dir() else None)
            except Lc0WeightsError as e:
                log.warning("ignoring cached %s: %s", path, e)
                self._forget(key)
                continue
            if net.id == net_id:
                return net
            log.warning("ignoring cached %s: its content has id %s", path, net.id)
            self._forget(key)
        return None

    def _forget(self, key: str | None) -> None:
        """Drop a memo entry that turned out wrong, so the file is hashed afresh next time."""
        if key is None or not self.root.is_dir():
            return
        memo = IdMemo(self.root / MEMO_NAME)
        memo.forget(key)
        memo.save()

    # -- writing ----------------------------------------------------------------------
    def store(self, net: Net, gz: bytes | Path | None = None) -> Path:
        """Put ``net`` in the cache under its id and return the path.

        An existing file under that name is kept only when it verifies; anything
        else there (a truncated file, another net, a symlink) is replaced by
        rename, which replaces a symlink itself rather than writing through it.
        ``gz``, when given, is the published gzip of the net and is stored as is:
        its bytes, or a verified complete file on the cache's disk, which is
        renamed into place (no copy; the caller removes it if it is still there).
        """
        self.root.mkdir(parents=True, exist_ok=True)
        if self._pending_memo is not None:
            self._pending_memo.save()
            self._pending_memo = None
        path = self.file_for(net.id)
        if self.client_layout:
            with net_lock(self.root, net.id):
                self._store_at(path, net, gz)
        else:
            self._store_at(path, net, gz)
        return path

    def _store_at(self, path: Path, net: Net, gz: bytes | Path | None) -> None:
        if not path.is_symlink() and path.is_file() and gzip_net_id(path, MAX_NET_BYTES) == net.id:
            return
        if isinstance(gz, Path):
            place_file(gz, path)
        elif gz is not None:
            atomic_write(path, gz)
        elif path.name.endswith(".gz"):
            write_net_file(path, net.raw)
        else:
            # The training client's layout: always gzip, whatever the name says.
            with atomic_file(path) as f:
                write_gzip(f, net.raw, GZIP_LEVEL)
