"""The catalogue's entries and queries, and the strict reading of a record's patch entries."""
import copy

import pytest

from lc0weights import Lc0WeightsError
from lc0weights.repository.errors import RepositoryIndexError, UntrustedError
from lc0weights.repository.index import (Catalogue, NetEntry, PatchEntry, net_object_path, parse_patch_entry,
                                           patch_object_path, resolve_prefix)
from lc0weights.repository.strict import Strict

A, B, C, P1, P2 = ("a" * 64, "b" * 64, "c" * 64, "1" * 64, "2" * 64)


def sample_catalogue() -> Catalogue:
    nets = [NetEntry(A, net_object_path(A), 100, "d" * 64, 150, 400000, "2024-01-01T00:00:00Z", None, "a.pb.gz"),
            NetEntry(B, net_object_path(B), 100, "e" * 64, 150, 400100, "2024-01-01T00:01:00Z", A, "b.pb.gz")]
    patches = [PatchEntry(A, B, B, patch_object_path(P1), 10, P1, base_seq=0),
               PatchEntry(A, B, C, patch_object_path(P2), 5, P2, "tolerance", 0.001, base_seq=0)]
    return Catalogue(nets=nets, patches=patches, latest=B)


def test_catalogue_queries():
    catalogue = sample_catalogue()
    assert catalogue.net(B).predecessor == A and catalogue.net(C) is None
    assert catalogue.patch(A, B).size == 10 and catalogue.patch(A, C).lossy and catalogue.patch(B, A) is None
    assert catalogue.lossy_results(B) == [C] and catalogue.lossy_results(B, 0.01) == []


def test_prefixes_resolve_to_one_id_of_at_least_64_bits():
    ids = [A, B]
    assert resolve_prefix(A[:16], ids) == A
    for wanted in (A[:15], "f" * 64, "a", "x" * 16):        # 60 bits, unknown, short, not hex
        with pytest.raises(RepositoryIndexError):
            resolve_prefix(wanted, ids)
    with pytest.raises(RepositoryIndexError, match="ambiguous"):
        resolve_prefix("a" * 16, [A, "a" * 63 + "f"])


def _patch_docs():
    return [p.to_dict() for p in sample_catalogue().patches]


def _read(doc):
    return parse_patch_entry(Strict("records/x.json", UntrustedError), doc, "patches[0]")


def test_patch_entries_round_trip():
    assert [_read(d) for d in _patch_docs()] == sample_catalogue().patches


HOSTILE = {
    "id too short": lambda d: d.__setitem__("base", "ab"),
    "id uppercase": lambda d: d.__setitem__("base", A.upper()),
    "absolute path": lambda d: d.__setitem__("path", "/etc/passwd"),
    "path climbs out": lambda d: d.__setitem__("path", "patches/../../secret"),
    "hidden path": lambda d: d.__setitem__("path", ".state/lock"),
    "backslash path": lambda d: d.__setitem__("path", "nets\\..\\x"),
    "negative size": lambda d: d.__setitem__("size", -1),
    "huge size": lambda d: d.__setitem__("size", 1 << 50),
    "size as string": lambda d: d.__setitem__("size", "10"),
    "size as bool": lambda d: d.__setitem__("size", True),
    "unknown mode": lambda d: d.__setitem__("mode", "magic"),
    "lossless result differs": lambda d: d.__setitem__("result", C),
    "base is the result": lambda d: d.__setitem__("base", B),
    "not an object": lambda d: d.clear() or d.__setitem__("x", []),
}


@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_hostile_patch_entry_is_refused_with_one_clear_error(case):
    doc = copy.deepcopy(_patch_docs()[0])
    HOSTILE[case](doc)
    with pytest.raises(UntrustedError) as info:
        _read(doc)
    assert isinstance(info.value, Lc0WeightsError)
    message = str(info.value)
    assert message.startswith("refusing records/x.json") and "\n" not in message


@pytest.mark.parametrize("tolerance", [-1, 0, "0.1", None])
def test_lossy_entry_needs_a_positive_tolerance(tolerance):
    doc = copy.deepcopy(_patch_docs()[1])
    doc["tolerance"] = tolerance
    with pytest.raises(UntrustedError):
        _read(doc)
