"""A repository in a folder on this machine: read with the same checks and byte budget as over HTTP.

Paths cannot leave the folder (symlinks included), only regular files are
read (a FIFO or device must not block or stream forever), and every object is
checked against the size and sha256 from the index before it is renamed into
place.
"""
from __future__ import annotations

import os
import stat
from pathlib import Path

from ..repository.errors import DownloadError, IntegrityError, NotFoundError
from .source_checks import CHUNK, DocumentReply, checked_path, checked_size
from .staging import StagedFile, check_free_space
from .transfer_policy import ByteBudget, TransferPolicy


class LocalSource:
    """A repository directory on this machine (no network, same checks and budget)."""

    def __init__(self, root, policy: TransferPolicy | None = None):
        self.root = Path(root).resolve()
        self.policy = policy or TransferPolicy()
        self.budget = ByteBudget(self.policy.byte_budget)

    def __str__(self):
        return str(self.root)

    @property
    def bytes_downloaded(self) -> int:
        return self.budget.spent

    def _file(self, path: str) -> Path:
        full = (self.root / checked_path(path)).resolve()
        if not full.is_relative_to(self.root):
            raise DownloadError(f"{path}: outside the repository {self.root}")
        return full

    @staticmethod
    def _open(path: Path, what: str):
        """Open a regular file for reading; a FIFO or device in a mirror must not block or stream forever."""
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
        except OSError as e:
            kind = NotFoundError if isinstance(e, FileNotFoundError) else DownloadError
            raise kind(f"{path}: cannot read {what} ({e.strerror}); "
                       "is this an lc0weights repository?") from None
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            os.close(fd)
            raise DownloadError(f"{path}: not a regular file; refused")
        return os.fdopen(fd, "rb")

    def read_document(self, name: str, max_bytes: int, etag: str | None = None,
                      seconds: float | None = None) -> DocumentReply:
        """The document's bytes (a local file is never "not modified"); ``etag`` and ``seconds`` are ignored."""
        f = self._file(name)
        what = name
        checked_size(max_bytes, what)
        with self._open(f, what) as fin:
            data = fin.read(max_bytes + 1)
        self.budget.spend(len(data), str(f))
        if len(data) > max_bytes:
            raise DownloadError(f"{f}: {what} is larger than the {max_bytes:,} bytes allowed; refused")
        return DocumentReply(data, None, False, len(data))

    def fetch_object(self, path: str, dest: Path, size: int, sha256: str, desc: str = "",
                     partial_dir=None, tap=None) -> int:
        """Copy object ``path`` to ``dest`` (atomically), checking size and sha256.

        A local copy is not worth resuming: ``partial_dir`` is accepted for the
        same interface as :meth:`HttpSource.fetch_object` and not used.
        """
        src = self._file(path)
        dest = Path(dest)
        checked_size(size, str(src))
        self.budget.declare(size)
        with self._open(src, "the object") as fin:
            actual = os.fstat(fin.fileno()).st_size
            if actual != size:
                raise IntegrityError(f"{src}: {actual} bytes, the index says {size}")
            check_free_space(dest.parent, size)
            self.budget.require(size, str(src))
            staged = StagedFile.open(dest, sha256, None, tap=tap)
            try:
                for block in iter(lambda: fin.read(CHUNK), b""):
                    if staged.size + len(block) > size:
                        raise IntegrityError(f"{src}: grew past the {size} bytes the index says")
                    staged.append(block)
                    self.budget.spend(len(block), str(src))
                if staged.size != size or staged.hexdigest() != sha256:
                    raise IntegrityError(f"{src}: sha256 does not match the index; the object is corrupt")
                staged.commit(dest)
            except BaseException:
                staged.discard()
                raise
        return size
