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
"""
from __future__ import annotations

import os
import re
from pathlib import Path

from .cache import NetCache, default_cache_dir
from .client_cache import net_files, place_net, remove_lock_if_free

KEEP_BASES = 2          # nets a one-shot fetch keeps in the state folder: the next patch, and a history patch


def client_state_dir() -> Path:
    """Where fetches for lczero-client keep their own state and patch bases.

    The name is historical (``fetch --follow`` used it first); one-shot
    fetches share it, and with it the trust state.
    """
    return default_cache_dir() / "follow"


def fetch_for_client(location: str, client_dir=None, state_dir=None, have=(), keep: int | None = KEEP_BASES,
                     **fetch_args):
    """``fetch`` for lczero-client's folder ``client_dir`` (default: its usual place); a FetchResult.

    The fetch runs in ``state_dir`` (default :func:`client_state_dir`), taking
    the client's nets and ``have`` as bases; the net it gets is then placed in
    the client's folder, and ``result.path`` names it there. ``keep`` nets
    stay in the state folder (the one just fetched always does); None keeps
    all. ``fetch_args`` go to :func:`.fetch.fetch` (net, out, trust, ...).
    """
    from .fetch import fetch             # fetch hands its client-layout calls here
    client = NetCache(client_dir, client_layout=True)
    state = NetCache(state_dir or client_state_dir())
    bases = list(have) + list(net_files(client.root).values())
    result = fetch(location, cache_dir=state.root, have=bases, **fetch_args)
    result.path = str(place_net(client.root, result.net_id, result.path))
    if keep is not None:
        prune(state, keep, result.net_id)
    return result


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
