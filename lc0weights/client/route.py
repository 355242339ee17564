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

from ..repository.errors import NoRouteError
from ..repository.index import NetEntry, PatchEntry, RepositoryIndex

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
    Ties prefer fewer steps, then held nets over full downloads. A history
    patch (one that also needs its base's predecessor) counts only when the
    client holds that net or the route reaches the base from it, so the
    search runs over (net, net before it on the route) pairs.
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

    start = [(h, None) for h in held] + [(NOTHING, None)]
    best: dict[tuple, tuple[int, int]] = {state: (0, 0) for state in start}
    back: dict[tuple, tuple[tuple, object]] = {}
    queue = [(0, 0, state) for state in start]
    heapq.heapify(queue)
    while queue:
        cost, hops, state = heapq.heappop(queue)
        if best.get(state, (cost, hops)) < (cost, hops):
            continue
        node, before = state
        if node in goals:
            return _unwind(state, cost, back)
        for size, nxt, entry in edges.get(node, ()):
            history = getattr(entry, "history", None)
            if history is not None and history not in held and history != before:
                continue
            following = (nxt, None if node == NOTHING else node)
            cand = (cost + size, hops + 1)
            if following not in best or cand < best[following]:
                best[following] = cand
                back[following] = (state, entry)
                heapq.heappush(queue, (cand[0], cand[1], following))
    raise NoRouteError("no route to the wanted net: no usable patch or full net in the repository")


def _unwind(state, cost: int, back) -> Route:
    steps = []
    while state in back:
        state, entry = back[state]
        steps.append(entry)
    steps.reverse()
    node = state[0]
    return Route(start=None if node == NOTHING else node, steps=tuple(steps), cost=cost)
