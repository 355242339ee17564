"""The client's net cache: nets stored by id, in our layout or the training client's.

Our layout keeps ``<id>.pb.gz`` files; the training client's layout keeps a
gzip file named just ``<id>``. Either way the name is the id, so what the
cache holds is known without reading anything, and each net is verified
against its name before it is used as a patch base.
"""
from __future__ import annotations

import logging
import os
import re
import sys
from pathlib import Path

from ..errors import Lc0WeightsError
from ..net import Net, write_net_file

log = logging.getLogger(__name__)
_ID = re.compile(r"([0-9a-f]{64})(\.pb\.gz)?\Z")


def default_cache_dir() -> Path:
    """The platform's user cache folder for lc0weights (no extra dependency)."""
    if sys.platform == "win32" and os.environ.get("LOCALAPPDATA"):
        return Path(os.environ["LOCALAPPDATA"]) / "lc0weights" / "Cache"
    if sys.platform == "darwin":
        return Path.home() / "Library" / "Caches" / "lc0weights"
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "lc0weights"


class NetCache:
    def __init__(self, root=None, client_layout: bool = False):
        self.root = Path(root) if root is not None else default_cache_dir()
        self.client_layout = client_layout

    def file_for(self, net_id: str) -> Path:
        return self.root / (net_id if self.client_layout else f"{net_id}.pb.gz")

    def held_ids(self) -> set[str]:
        """Ids of the nets in the cache, by file name (in this cache's layout)."""
        if not self.root.is_dir():
            return set()
        held = set()
        for entry in os.scandir(self.root):
            m = _ID.match(entry.name)
            if m and entry.is_file() and bool(m.group(2)) != self.client_layout:
                held.add(m.group(1))
        return held

    def load(self, net_id: str) -> Net | None:
        """The cached net, or None when it is missing or does not hash to its name."""
        path = self.file_for(net_id)
        try:
            net = Net.load(path)
        except Lc0WeightsError as e:
            log.warning("ignoring cached %s: %s", path, e)
            return None
        if net.id != net_id:
            log.warning("ignoring cached %s: its content has id %s", path, net.id)
            return None
        return net

    def store(self, net: Net) -> Path:
        self.root.mkdir(parents=True, exist_ok=True)
        path = self.file_for(net.id)
        if self.client_layout:
            # Always gzip, whatever the name says: that is what the client stores.
            from ..net import atomic_write, gzip_bytes
            atomic_write(path, gzip_bytes(net.raw))
        else:
            write_net_file(path, net.raw)
        return path
