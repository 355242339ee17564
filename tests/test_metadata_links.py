"""A client catching up reads O(log distance) records: the link plan against the publisher's layout."""
from __future__ import annotations

import math
from collections import deque
from types import SimpleNamespace

import pytest

from lc0weights.repository.metadata import Link, Record, link_distances, link_hops
from lc0weights.repository.updater import Updater


def bfs_hops(low: int, high: int) -> int:
    """Fewest links from ``high`` down to ``low``, by breadth-first search (independent of link_hops)."""
    seen, queue = {high: 0}, deque([high])
    while queue:
        s = queue.popleft()
        if s == low:
            return seen[s]
        for d in link_distances(s):
            if s - d >= low and s - d not in seen:
                seen[s - d] = seen[s] + 1
                queue.append(s - d)
    raise AssertionError("unreachable")


@pytest.mark.parametrize("low,high", [(8999, 9999), (9899, 9999), (9989, 9999), (0, 4097), (4001, 4097),
                                      (123, 2048), (1, 1), (5, 6)])
def test_link_hops_is_the_fewest_links(low, high):
    assert link_hops(low, high)[-1] == bfs_hops(low, high)


class RecordingUpdater(Updater):
    """An updater over records made in memory, linked as the publisher links them; counts reads."""

    def __init__(self, count: int):
        self.timestamp = SimpleNamespace(horizon=0)
        self.reads = []

    def record(self, link: Link) -> Record:
        self.reads.append(link.seq)
        return make_record(link.seq)


def make_record(seq: int) -> Record:
    links = [Link(seq - d, f"{seq - d:064x}", 1, "0" * 64) for d in link_distances(seq)]
    return Record(repository="0" * 32, seq=seq, net=SimpleNamespace(id=f"{seq:064x}"), links=links)


@pytest.mark.parametrize("behind", [1, 10, 100, 1000, 5000])
def test_descend_reads_about_log_distance_records(behind):
    top = 9999
    updater = RecordingUpdater(top + 1)
    reached = updater.descend(make_record(top), top - behind)
    assert reached.seq == top - behind
    assert len(updater.reads) == bfs_hops(top - behind, top)
    assert len(updater.reads) <= 2 * math.log2(behind) + 2
