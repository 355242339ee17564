"""Which patches a new net gets: the candidates to encode, and which of them to keep.

The publisher encodes a candidate patch into net *k* from each of the
distances :func:`patch_distances` names, then keeps only those some client
would take (:func:`keep_on_routes`). ``tools/simulate_publishing.py`` runs
these same two functions over a simulated run and client population; its
report (docs/BENCHMARKS.md, "Publishing at steady state") is what the
distances were chosen by.

Nets of at least :data:`FAST_TIER_MIN_WEIGHTS` codable weights (lc0's big
nets, where a context-mixing rebuild takes longer than downloading the net
on a fast link) get candidates in two coding tiers (:func:`candidate_tiers`):
every lossless distance in the "fast" tier, and the link from *k−1* in the
"cm" tier too (its history version when there is one), for clients on slow links; the lossy chain in the fast tier
alone, with one history gap (:func:`lossy_history_gaps`). Smaller nets keep
one tier, "cm", and every history gap.
"""
from __future__ import annotations

from lc0weights.client.route import cheapest_route
from lc0weights.repository.errors import NoRouteError
from lc0weights.repository.index import PatchEntry, Catalogue
from lc0weights.repository.metadata import link_distances

# Chosen with tools/simulate_publishing.py on maia-swa-sized steps (docs/BENCHMARKS.md, "Publishing at
# steady state"): clients taking every net, every 4th or every 16th net take the patches from 1, 4
# and 16 nets back (and the history patch); patches from 2 and 8 back were on almost no route, and
# the skip list's powers of two (32 to 1024) on none: that far back a full net costs less.
SKIPS = (1, 4, 16)
MAX_POWER_SKIP = 0         # farthest power-of-two patch (the skip list's 32, 64, ...); 0: none
HISTORY_GAPS = (1, 2, 4)   # lossy links back whose base a lossy link's history may be
# Codable weights from which a net gets fast-tier patches: lc0's BT4 nets (187.6M weights) decode
# at ~7M weights per CPU second in the cm tier; maia nets (1.2 MB) stay far below and keep one tier.
FAST_TIER_MIN_WEIGHTS = 16_000_000


def uses_fast_tier(codable_weights: int, min_weights: int = FAST_TIER_MIN_WEIGHTS) -> bool:
    """Whether a net of ``codable_weights`` gets fast-tier candidates."""
    return codable_weights >= min_weights


def candidate_tiers(back: int, fast: bool, beside_history: bool = False) -> tuple[str, ...]:
    """The tiers the lossless candidate from ``back`` nets back is coded in: all "cm" below the
    threshold; above it, "fast" for every distance and "cm" too for the link from k−1, once:
    with the history (the smaller patch on averaged runs, and no larger on others) when that
    version is coded too (``beside_history`` for the plain one), else plain. A client holding
    k−1 without k−2 takes the plain fast patch: a cm encode of a big net costs about three
    fast ones, and the publisher has two minutes for the whole set."""
    if not fast:
        return ("cm",)
    return ("cm", "fast") if back == 1 and not beside_history else ("fast",)


def lossy_history_gaps(fast: bool, last_gap: int | None) -> tuple[int, ...]:
    """The history gaps a lossy link's history versions are tried with: every one of
    :data:`HISTORY_GAPS` below the threshold; above it only the gap whose version was published
    on the previous link (``last_gap``; 1 when there was none): each try costs a big net's encode."""
    if not fast:
        return HISTORY_GAPS
    return (last_gap if last_gap in HISTORY_GAPS else 1,)


def patch_distances(seq: int, skips=SKIPS, max_power: int = MAX_POWER_SKIP) -> list[int]:
    """How far back net ``seq`` gets candidate patches from: the skips, and the skip list's
    powers of two up to ``max_power`` (every 2^j dividing ``seq``, one extra patch per 16 nets
    on average, giving a client far behind a route along the links it reads metadata by)."""
    return [d for d in link_distances(seq, skips) if d in skips or d <= max_power]


def keep_on_routes(seq: int, candidates: list[PatchEntry], earlier: list[PatchEntry]) -> list[PatchEntry]:
    """The lossless ``candidates`` into net ``seq`` that some client would take.

    A patch from net *k−d* is dropped when the patches already published
    (``earlier``: every lossless patch between nets *k−d* and *k*) together
    with the candidates kept from nearer nets rebuild net *k* from *k−d* for
    fewer bytes: every route through the dropped patch then has a cheaper
    one, whatever else the client holds. Candidates are decided nearest
    first, so a decision only ever rests on patches that are kept. The patch
    from *k−1* (plain and history versions, in each tier) is always kept: the
    history patch that follows it needs a route that arrives from *k−1*.
    Tiers are compared like with like: a candidate is weighed against the
    patches of its own tier only (a fast patch is worth its bytes to a
    client routing by time even where cm patches cost fewer). Returns the
    kept candidates in their given order.
    """
    kept: list[PatchEntry] = []
    for entry in sorted(candidates, key=lambda p: (seq - p.base_seq, p.history is not None)):
        back = seq - entry.base_seq
        if back <= 1 or entry.lossy:
            kept.append(entry)
            continue
        nearby = [p for p in earlier + kept
                  if p.base_seq >= entry.base_seq and not p.lossy and p.tier == entry.tier]
        index = Catalogue(patches=nearby)
        try:
            alternative = cheapest_route(index, {entry.result}, {entry.base}).cost
        except NoRouteError:
            alternative = None
        if alternative is None or alternative >= entry.size:
            kept.append(entry)
    order = {id(p): i for i, p in enumerate(candidates)}
    return sorted(kept, key=lambda p: order[id(p)])
