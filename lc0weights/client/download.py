"""Getting repository files: over HTTP with resume and retries, or from a local directory.

:func:`open_source` picks the source for a location: :class:`.http_source.HttpSource`
for an ``http(s)://`` URL (every transfer bounded in time, bytes and disk; see
that module), :class:`.local_source.LocalSource` for a folder. Both read top
documents and objects the same way and check every object against the size and
sha256 from the index before it is renamed into place.

The parts live in small modules and are re-exported here: the two sources in
:mod:`.http_source` and :mod:`.local_source`, what they share in
:mod:`.source_checks`, settings and budget in :mod:`.transfer_policy`, the
watchdog in :mod:`.deadline`, staged files and the sweep in :mod:`.staging`,
failure naming in :mod:`.network_failures`.
"""
from __future__ import annotations

import re
from pathlib import Path

from ..repository.errors import DownloadError
from .http_source import HttpSource
from .local_source import LocalSource
from .source_checks import DocumentReply, sha256_file
from .staging import PARTIAL_MIN_AGE, TEMP_MIN_AGE, check_free_space, sweep_stale, work_folder
from .transfer_policy import ByteBudget, PolicyError, TransferPolicy

__all__ = ["TransferPolicy", "PolicyError", "ByteBudget", "DocumentReply", "HttpSource", "LocalSource",
           "open_source", "check_free_space", "sweep_stale", "work_folder", "TEMP_MIN_AGE", "PARTIAL_MIN_AGE",
           "sha256_file"]


def open_source(location: str, policy: TransferPolicy | None = None):
    """An HTTP source for ``http(s)://`` URLs, a local source for a directory."""
    if re.match(r"https?://", location, re.I):
        return HttpSource(location, policy)
    if location.startswith("file://"):
        location = location[len("file://"):]
    if not Path(location).is_dir():
        raise DownloadError(f"{location}: neither an http(s) URL nor a repository directory")
    return LocalSource(location, policy)
