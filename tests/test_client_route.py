import pytest

from lc0weights.repository.errors import NoRouteError
from lc0weights.repository.index import (NetEntry, PatchEntry, Catalogue, net_object_path,
                                           patch_object_path)
from lc0weights.client.route import cheapest_route

N = [f"{i:x}" * 64 for i in range(1, 8)]   # seven net ids
FULL = 1000


def chain_index(patch_size=300, skip_size=400) -> Catalogue:
    """Seven nets; patches from each predecessor and from two back."""
    nets = [NetEntry(n, net_object_path(n), FULL, "0" * 64, 1500, None, "", None) for n in N]
    patches = []
    for i in range(1, len(N)):
        for back, size in ((1, patch_size), (2, skip_size)):
            if i - back >= 0:
                sha = f"{i:02x}{back:02x}".ljust(64, "0")
                patches.append(PatchEntry(N[i - back], N[i], N[i], patch_object_path(sha), size, sha))
    return Catalogue(nets=nets, patches=patches, latest=N[-1])


def test_empty_cache_downloads_the_full_net():
    route = cheapest_route(chain_index(), {N[6]}, set())
    assert route.start is None and route.cost == FULL and len(route.steps) == 1


def test_recent_net_takes_one_patch():
    route = cheapest_route(chain_index(), {N[6]}, {N[5]})
    assert route.start == N[5] and route.cost == 300 and route.patch_count == 1


def test_skip_patches_beat_many_small_hops():
    route = cheapest_route(chain_index(patch_size=300, skip_size=350), {N[6]}, {N[2]})
    assert route.cost == 700 and route.patch_count == 2        # 2 -> 4 -> 6


def test_far_behind_falls_back_to_full_when_cheaper():
    route = cheapest_route(chain_index(), {N[6]}, {N[0]})
    assert route.start is None and route.cost == FULL


def test_the_best_of_several_held_nets_is_used():
    route = cheapest_route(chain_index(), {N[6]}, {N[0], N[4], N[1]})
    assert route.start == N[4] and route.cost == 400


def test_already_held_costs_nothing():
    route = cheapest_route(chain_index(), {N[6]}, {N[6], N[1]})
    assert route.steps == () and route.cost == 0 and route.goal == N[6]


def test_excluded_objects_are_routed_around():
    index = chain_index()
    first = cheapest_route(index, {N[6]}, {N[5]})
    second = cheapest_route(index, {N[6]}, {N[5]}, exclude={first.steps[0].path})
    assert second.cost > first.cost
    assert first.steps[0].path not in [s.path for s in second.steps]


def test_no_route_when_everything_is_excluded():
    index = chain_index()
    every = {n.path for n in index.nets} | {p.path for p in index.patches}
    with pytest.raises(NoRouteError):
        cheapest_route(index, {N[6]}, {N[5]}, exclude=every)


def test_lossy_goal_follows_the_lossy_chain():
    index = chain_index()
    lossy = "f" * 64
    index.patches.append(PatchEntry(N[5], N[6], lossy, patch_object_path("e" * 64), 50, "e" * 64,
                                    "tolerance", 0.01))
    assert cheapest_route(index, {N[6], lossy}, {N[5]}).goal == lossy
    assert cheapest_route(index, {N[6]}, {N[5]}).goal == N[6]     # lossy only when accepted


def with_history_patch(size=50) -> Catalogue:
    """The chain plus a small history patch N5 -> N6 that also needs N4."""
    index = chain_index()
    sha = "ab".ljust(64, "0")
    index.patches.append(PatchEntry(N[5], N[6], N[6], patch_object_path(sha), size, sha, history=N[4]))
    return index


def test_a_history_patch_counts_only_when_its_second_net_is_held():
    index = with_history_patch()
    assert cheapest_route(index, {N[6]}, {N[5]}).cost == 300            # N4 not held: plain patch
    both = cheapest_route(index, {N[6]}, {N[5], N[4]})
    assert both.cost == 50 and both.steps[0].history == N[4]


def test_a_history_patch_counts_when_the_route_passes_its_second_net():
    route = cheapest_route(with_history_patch(), {N[6]}, {N[4]})
    assert [s.size for s in route.steps] == [300, 50]                    # N4 -> N5, then N5 -> N6 with N4
    assert route.steps[1].history == route.steps[0].base
    # From N3: through N4 (300 + 300 + 50) beats the skip to N5 (400), which would leave N4 unheld
    # and force the plain patch (400 + 300).
    route = cheapest_route(with_history_patch(), {N[6]}, {N[3]})
    assert [s.size for s in route.steps] == [300, 300, 50] and route.steps[2].history == route.steps[1].base
    # Make the way through N4 dear: N5 is reached by the skip, and the history patch is not usable.
    index = with_history_patch()
    index.patches = [p for p in index.patches if not (p.base == N[3] and p.target == N[4])]
    route = cheapest_route(index, {N[6]}, {N[3]})
    assert [s.size for s in route.steps] == [400, 300] and route.steps[1].history is None
