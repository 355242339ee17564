"""Fetching for lczero-client: work in lc0weights' own folder, place only verified nets in the client's.

lczero-client, after getting a net, deletes every entry of its cache folder
older than its keep time (16 h) except the current net, whoever wrote it. So
a fetch with the client's layout (``fetch --client-layout``, once or with
``--follow``) keeps nothing of its own there: its trust state (rollback
protection), partial downloads, patch bases and measured rates live in
lc0weights' state folder (:func:`client_state_dir`), one folder for both
modes, so a one-shot fetch refuses what a follow accepted newer than. Only
the finished, verified net is copied into the client's folder, under the
net's lock (:func:`.client_cache.place_net`); the client's nets also serve as
patch bases while they are there, verified before use.
:func:`.fetch.fetch_for_client` runs such a fetch with the helpers here.
"""
from __future__ import annotations

import os
import re
from pathlib import Path

from .cache import NetCache, default_cache_dir
from .client_cache import net_files, remove_lock_if_free

KEEP_BASES = 2          # nets a one-shot fetch keeps in the state folder: the next patch, and a history patch


def client_state_dir() -> Path:
    """Where fetches for lczero-client keep their own state and patch bases.

    The name is historical (``fetch --follow`` used it first); one-shot
    fetches share it, and with it the trust state.
    """
    return default_cache_dir() / "follow"


def client_bases(client_root, have=()) -> list[Path]:
    """The files a fetch for the client may start from: ``have`` and the client's nets (claims only:
    each is verified before use)."""
    return [Path(p) for p in have] + list(net_files(client_root).values())


def prune(cache: NetCache, keep: int, current: str) -> list[str]:
    """Delete all but the newest ``keep`` nets named by id in the cache's layout; never ``current``."""
    pattern = re.compile(r"([0-9a-f]{64})\Z" if cache.client_layout else r"([0-9a-f]{64})\.pb\.gz\Z")
    nets = []
    try:
        entries = list(os.scandir(cache.root))
    except FileNotFoundError:
        return []
    for entry in entries:
        m = pattern.match(entry.name)
        if m and entry.is_file(follow_symlinks=False):
            nets.append((m.group(1) == current, entry.stat(follow_symlinks=False).st_mtime_ns,
                         m.group(1), Path(entry.path)))
    nets.sort(reverse=True)
    removed = []
    for _, _, net_id, path in nets[max(1, keep):]:
        try:
            path.unlink()
            removed.append(net_id)
        except OSError:
            continue
        if cache.client_layout:
            remove_lock_if_free(cache.root, net_id)
    return removed
