"""Remove the temp files a killed repository writer left behind.

Every repository file is written as ``.<name>.<random>.tmp`` in its own
folder and renamed into place (docs/REPOSITORY.md), and writers (publish,
watch, prune) write only while holding the exclusive writer lock
``.state/lock``. A temp file is therefore an orphan when

- the sweep holds the writer lock (taken here without waiting, or held by
  the caller: ``lock_held=True``), since no writer can be mid-write; or
- it has not been modified for ``min_age_seconds``, which is how a sweep
  that finds a writer at work tells that writer's live files (being written,
  so recently modified) from what an earlier crash left.

Only regular files with a temp name directly in the repository root, its
``records``, ``nets``, ``patches`` and ``.state`` folders, and the folders
directly inside ``.state`` are considered; symlinks are never followed nor
removed, and nothing else is touched.
"""
from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import re
import stat
import time
from pathlib import Path

log = logging.getLogger(__name__)
DEFAULT_MIN_AGE = 600.0
REPOSITORY_FOLDERS = ("records", "nets", "patches", ".state")
LOCK_NAME = ".state/lock"
TEMP_NAME = re.compile(r"\..+\.[A-Za-z0-9_]{6,32}\.tmp\Z")


def sweep_temp_files(repo_root: Path, min_age_seconds: float = DEFAULT_MIN_AGE, *,
                     lock_held: bool = False) -> int:
    """Remove orphaned temp files under ``repo_root``; the number removed.

    ``lock_held``: the caller holds the repository writer lock (and has not
    started writing), so every temp file is an orphan whatever its age.
    """
    repo_root = Path(repo_root)
    with _writer_lock(repo_root, lock_held) as no_writer:
        cutoff = None if no_writer else time.time() - min_age_seconds
        removed = 0
        for folder in _folders(repo_root):
            removed += _sweep_folder(folder, cutoff)
    if removed:
        log.info("removed %d temp files left by an interrupted writer", removed)
    return removed


@contextlib.contextmanager
def _writer_lock(repo_root: Path, lock_held: bool):
    """Yield True while no writer can be at work: the lock is ours (or the caller's)."""
    if lock_held:
        yield True
        return
    try:
        fd = os.open(repo_root / LOCK_NAME, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
    except OSError:
        yield False                     # no lock to take: rely on age alone
        return
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            locked = True
        except BlockingIOError:
            locked = False              # a writer is at work
        try:
            yield locked
        finally:
            if locked:
                fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


def _folders(repo_root: Path) -> list[Path]:
    """The repository's own folders, real directories only (a symlinked one is skipped)."""
    found = [repo_root]
    for name in REPOSITORY_FOLDERS:
        if _is_real_dir(repo_root / name):
            found.append(repo_root / name)
    state = repo_root / ".state"
    if _is_real_dir(state):
        with contextlib.suppress(OSError), os.scandir(state) as entries:
            found += [Path(e.path) for e in entries if e.is_dir(follow_symlinks=False)]
    return found


def _is_real_dir(path: Path) -> bool:
    try:
        return stat.S_ISDIR(os.lstat(path).st_mode)
    except OSError:
        return False


def _sweep_folder(folder: Path, cutoff: float | None) -> int:
    removed = 0
    try:
        with os.scandir(folder) as entries:
            candidates = [e for e in entries if TEMP_NAME.match(e.name)]
    except OSError:
        return 0
    for entry in candidates:
        try:
            st = entry.stat(follow_symlinks=False)
            if not stat.S_ISREG(st.st_mode) or (cutoff is not None and st.st_mtime > cutoff):
                continue
            os.unlink(entry.path)
            removed += 1
        except FileNotFoundError:
            continue                    # renamed into place or removed meanwhile
        except OSError as e:
            log.warning("cannot remove %s: %s", entry.path, e.strerror)
    return removed
