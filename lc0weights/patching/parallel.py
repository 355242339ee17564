"""Work items (layer chunks) in worker threads, in order, with bounded work in flight."""
from __future__ import annotations

import os
from collections import deque
from concurrent.futures import ThreadPoolExecutor




def bounded_map(fn, items, workers: int, cost=None):
    """Like map, in order, in ``workers`` threads, with bounded results in flight.

    ``cost(item)`` (default 1) is what an item holds in memory (its element
    count); work is submitted while what is in flight costs at most two of the
    largest items per worker, so small items never stall the big ones and
    memory stays a few items' worth (chunks: a few million values per worker)
    whatever the net's size. Nor more than a
    quarter of all items (or the largest one): on a machine with many cores the
    working arrays stay a small multiple of the net, not of the core count.
    """
    items = list(items)
    if workers <= 1:
        yield from map(fn, items)
        return
    costs = [max(1, cost(item)) if cost else 1 for item in items]
    largest = max(costs, default=1)
    budget = min(2 * workers * largest, max(largest, sum(costs) // 4))
    with ThreadPoolExecutor(workers) as pool:
        pending, in_flight = deque(), 0
        for item, c in zip(items, costs):
            while pending and in_flight + c > budget:
                done, dc = pending.popleft()
                in_flight -= dc
                yield done.result()
            pending.append((pool.submit(fn, item), c))
            in_flight += c
        for done, _ in pending:
            yield done.result()


def worker_count(workers: int | None) -> int:
    return max(1, workers if workers else (os.cpu_count() or 1))
