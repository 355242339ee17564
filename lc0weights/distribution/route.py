"""The cheapest way to get a net: fewest bytes over patches and full objects.

The repository is a graph whose nodes are net ids. A patch is an edge from
its base to its result, weighted by its size; a full net object is an edge
from "nothing" to that net. Nets the client already holds cost nothing. A
shortest path (Dijkstra) from everything held, plus "nothing", to any of the
acceptable goals is the route. Failed objects can be excluded, which is how
the client falls back after a broken patch.
"""
from __future__ import annotations

import heapq
from dataclasses import dataclass

from .errors import NoRouteError
from .index import NetEntry, PatchEntry, RepositoryIndex

NOTHING = ""  # the start node for full downloads


@dataclass(frozen=True)
class Route:
    start: str | None                          # a held net id, or None for a full download
    steps: tuple[NetEntry | PatchEntry, ...]   # a NetEntry (full object) only as first step
    cost: int                                  # bytes to download

    @property
    def goal(self) -> str:
        if not self.steps:
            return self.start
        last = self.steps[-1]
        return last.id if isinstance(last, NetEntry) else last.result

    @property
    def patch_count(self) -> int:
        return sum(isinstance(s, PatchEntry) for s in self.steps)

    def describe(self) -> str:
        if not self.steps:
            return "already held"
        parts = []
        for s in self.steps:
            if isinstance(s, NetEntry):
                parts.append(f"full {s.id[:8]}")
            else:
                parts.append(f"{s.base[:8]}->{s.result[:8]}")
        return ", ".join(parts)


def cheapest_route(index: RepositoryIndex, goals, held, exclude=frozenset()) -> Route:
    """Cheapest route to any id in ``goals`` from ``held`` ids or from nothing.

    ``exclude`` is a set of object paths not to use (they failed before).
    Ties prefer fewer steps, then held nets over full downloads.
    """
    goals = set(goals)
    held = set(held)
    edges: dict[str, list] = {}
    for n in index.nets:
        if n.path not in exclude:
            edges.setdefault(NOTHING, []).append((n.size, n.id, n))
    for p in index.patches:
        if p.path not in exclude:
            edges.setdefault(p.base, []).append((p.size, p.result, p))

    best: dict[str, tuple[int, int]] = {}
    back: dict[str, tuple[str, object]] = {}
    queue = []
    for h in held:
        best[h] = (0, 0)
        queue.append((0, 0, h))
    best.setdefault(NOTHING, (0, 0))
    queue.append((0, 0, NOTHING))
    heapq.heapify(queue)
    while queue:
        cost, hops, node = heapq.heappop(queue)
        if best.get(node, (cost, hops)) < (cost, hops):
            continue
        if node in goals:
            return _unwind(node, cost, back)
        for size, nxt, entry in edges.get(node, ()):
            cand = (cost + size, hops + 1)
            if nxt not in best or cand < best[nxt]:
                best[nxt] = cand
                back[nxt] = (node, entry)
                heapq.heappush(queue, (cand[0], cand[1], nxt))
    raise NoRouteError("no route to the wanted net: no usable patch or full net in the repository")


def _unwind(node: str, cost: int, back) -> Route:
    steps = []
    while node in back:
        prev, entry = back[node]
        steps.append(entry)
        node = prev
    steps.reverse()
    return Route(start=None if node == NOTHING else node, steps=tuple(steps), cost=cost)
