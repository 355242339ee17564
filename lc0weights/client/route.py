"""The best way to get a net: fewest bytes, or least time, over patches and full objects.

The repository is a graph whose nodes are net ids. A patch is an edge from
its base to its result; a full net object is an edge from "nothing" to that
net. Nets the client already holds are where a route may start. A shortest
path (Dijkstra) from everything held, plus "nothing", to any of the
acceptable goals is the route. Failed objects can be excluded, which is how
the client falls back after a broken patch.

Two ways to weigh it (``prefer``):

- ``bytes``: an edge weighs its object's length, a held net nothing. The
  route downloads the fewest bytes.
- ``time``: an edge weighs the seconds to download its object at the link
  rate plus the seconds to use it: gunzip and verify a full net, or rebuild
  and verify the net a patch makes (at the rate of the patch's tier: a
  "fast" patch is a few % larger than a "cm" one between the same nets but
  rebuilds several times faster). Starting from a held net costs reading
  it (gunzip), a history net off the route costs reading it too, and a route
  that ends with a patch costs gzipping the rebuilt net into the cache (a
  full download stores the published gzip as it is). Rates come from
  :mod:`.link_rate`. On a slow link the patch wins; on a fast one a full net
  can, since rebuilding a large net takes seconds of CPU.
"""
from __future__ import annotations

import heapq
from dataclasses import dataclass

from ..repository.errors import NoRouteError
from ..repository.index import Catalogue, NetEntry, PatchEntry
from .link_rate import Rates

NOTHING = ""  # the start node for full downloads
PREFER = ("time", "bytes")
_DONE = "\0done"  # a finished route waiting in the queue for its finishing cost


@dataclass(frozen=True)
class Route:
    start: str | None                          # a held net id, or None for a full download
    steps: tuple[NetEntry | PatchEntry, ...]   # a NetEntry (full object) only as first step
    cost: int                                  # bytes to download
    seconds: float | None = None               # estimated seconds, when costed by time

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
                parts.append(f"{s.base[:8]}->{s.result[:8]}{' fast' if s.tier == 'fast' else ''}")
        return ", ".join(parts)


class ByteCosts:
    """Today's weights: an object's length; a held net, finishing and history are free."""

    def start(self, net_id: str) -> int:
        return 0

    def step(self, entry, before: str | None) -> int:
        return entry.size

    def finish(self, rebuilt: bool, goal: str) -> int:
        return 0


class TimeCosts:
    """Estimated seconds of a route's parts, from the repository's sizes and the client's rates.

    Sizes of nets not in the catalogue (a held net whose record was not read)
    are taken as the largest net the catalogue lists: nets of one run are all
    the same size.
    """

    def __init__(self, catalogue: Catalogue, rates: Rates):
        self.catalogue = catalogue
        self.rates = rates
        self._typical = max((n.raw_size for n in catalogue.nets), default=0)

    def raw_size(self, net_id: str | None) -> int:
        entry = self.catalogue.net(net_id) if net_id else None
        return entry.raw_size if entry is not None else self._typical

    def _read(self, net_id: str) -> float:
        return self.raw_size(net_id) / self.rates.gunzip.bytes_per_s

    def start(self, net_id: str) -> float:
        return self._read(net_id)

    def step(self, entry, before: str | None) -> float:
        # An object is gunzipped or decoded as its bytes arrive, so a step takes
        # as long as the slower of the two, not their sum.
        transfer = entry.size / self.rates.link.bytes_per_s
        if isinstance(entry, NetEntry):
            return max(transfer, entry.raw_size / self.rates.gunzip.bytes_per_s)
        seconds = 0.0
        if entry.history is not None and entry.history != before:
            seconds += self._read(entry.history)          # held, not on the route: read from the cache
        rebuild = self.rates.rebuild_for(entry.tier)      # a fast-tier patch decodes several times faster
        return seconds + max(transfer, self.raw_size(entry.target) / rebuild.bytes_per_s)

    def finish(self, rebuilt: bool, goal: str) -> float:
        return self.raw_size(goal) / self.rates.gzip.bytes_per_s if rebuilt else 0.0

    def route_seconds(self, route: Route) -> float:
        """The estimate for any route (one taken by bytes too), the same sum the search minimises."""
        seconds = self.start(route.start) if route.start is not None else 0.0
        before = None
        node = route.start
        for step in route.steps:
            seconds += self.step(step, before)
            before, node = (node, step.result) if isinstance(step, PatchEntry) else (None, step.id)
        return seconds + self.finish(bool(route.steps) and isinstance(route.steps[-1], PatchEntry), route.goal)


def route_costs(prefer: str, catalogue: Catalogue, rates: Rates | None):
    """The weights for ``prefer`` ("time" or "bytes"); time needs ``rates``."""
    if prefer == "bytes":
        return ByteCosts()
    if prefer == "time" and rates is not None:
        return TimeCosts(catalogue, rates)
    raise ValueError(f"prefer must be one of {', '.join(PREFER)} (time needs rates), not {prefer!r}")


def cheapest_route(catalogue: Catalogue, goals, held, exclude=frozenset(), costs=None) -> Route:
    """Cheapest route to any id in ``goals`` from ``held`` ids or from nothing.

    ``costs`` weighs the route (:class:`ByteCosts`, the default, or
    :class:`TimeCosts`). ``exclude`` is a set of object paths not to use
    (they failed before). Ties prefer fewer steps, then held nets over full
    downloads. A history patch (one that also needs its base's predecessor)
    counts only when the client holds that net or the route reaches the base
    from it, so the search runs over (net, net before it on the route) pairs.
    """
    costs = costs or ByteCosts()
    goals = set(goals)
    held = set(held)
    edges: dict[str, list] = {}
    for n in catalogue.nets:
        if n.path not in exclude:
            edges.setdefault(NOTHING, []).append((n.id, n))
    for p in catalogue.patches:
        if p.path not in exclude:
            edges.setdefault(p.base, []).append((p.result, p))

    start = [((h, None), costs.start(h)) for h in held] + [((NOTHING, None), 0)]
    best: dict[tuple, tuple] = {state: (cost, 0) for state, cost in start}
    back: dict[tuple, tuple[tuple, object]] = {}
    queue = [_queued(cost, 0, state) for state, cost in start]
    heapq.heapify(queue)
    timed = isinstance(costs, TimeCosts)
    while queue:
        cost, hops, _, _, state = heapq.heappop(queue)
        if state[0] == _DONE:
            return _unwind(state[1], cost, back, timed)
        if best.get(state, (cost, hops)) < (cost, hops):
            continue
        node, before = state
        if node in goals:
            # A route that ends in a rebuild still has to store it; it finishes once that is paid.
            finishing = costs.finish(before is not None, node)
            if not finishing:
                return _unwind(state, cost, back, timed)
            heapq.heappush(queue, _queued(cost + finishing, hops, (_DONE, state)))
            continue
        for nxt, entry in edges.get(node, ()):
            history = getattr(entry, "history", None)
            if history is not None and history not in held and history != before:
                continue
            following = (nxt, None if node == NOTHING else node)
            cand = (cost + costs.step(entry, before), hops + 1)
            if following not in best or cand < best[following]:
                best[following] = cand
                back[following] = (state, entry)
                heapq.heappush(queue, _queued(cand[0], cand[1], following))
    raise NoRouteError("no route to the wanted net: no usable patch or full net in the repository")


def _queued(cost, hops, state) -> tuple:
    """A queue entry: cheapest first, then fewest steps, then by net id, then from a held net.

    "From nothing" sorts after any hex id, so on a tie a patch from a held
    net wins over a full download (and None is never compared with an id).
    A finished route is ordered as the route it finishes.
    """
    node, before = state[1] if state[0] == _DONE else state
    return cost, hops, node, "~" if before is None else before, state


def _unwind(state, cost, back, timed: bool) -> Route:
    steps = []
    while state in back:
        state, entry = back[state]
        steps.append(entry)
    steps.reverse()
    node = state[0]
    seconds = float(cost) if timed else None
    return Route(start=None if node == NOTHING else node, steps=tuple(steps),
                 cost=sum(s.size for s in steps), seconds=seconds)
