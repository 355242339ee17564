import copy
import json

import pytest

from lc0weights import Lc0WeightsError
from lc0weights.repository.index import (NetEntry, PatchEntry, RepositoryIndex, SCHEMA,
                                           net_object_path, parse_index, patch_object_path)
from lc0weights.repository.errors import RepositoryIndexError

A, B, C, P1, P2 = ("a" * 64, "b" * 64, "c" * 64, "1" * 64, "2" * 64)


def sample_index() -> RepositoryIndex:
    nets = [NetEntry(A, net_object_path(A), 100, "d" * 64, 150, 400000, "2024-01-01T00:00:00Z", None, "a.pb.gz"),
            NetEntry(B, net_object_path(B), 100, "e" * 64, 150, 400100, "2024-01-01T00:01:00Z", A, "b.pb.gz")]
    patches = [PatchEntry(A, B, B, patch_object_path(P1), 10, P1),
               PatchEntry(A, B, C, patch_object_path(P2), 5, P2, "tolerance", 0.001)]
    return RepositoryIndex(nets=nets, patches=patches, latest=B)


def test_index_round_trips_through_json():
    index = sample_index()
    again = parse_index(index.to_json())
    assert again.nets == index.nets and again.patches == index.patches and again.latest == B
    assert json.loads(index.to_json())["schema"] == SCHEMA


def test_resolve_latest_and_prefixes():
    index = sample_index()
    assert index.resolve("latest") == B
    assert index.resolve(A[:16]) == A
    with pytest.raises(RepositoryIndexError):
        index.resolve(A[:15])       # 60 bits: too short to resist a brute-forced collision
    with pytest.raises(RepositoryIndexError):
        index.resolve("f" * 64)
    with pytest.raises(RepositoryIndexError):
        index.resolve("a")          # too short to be meant as an id
    assert index.lossy_results(B) == [C]


def _doc():
    return json.loads(sample_index().to_json())


def _hostile(mutate):
    doc = _doc()
    mutate(doc)
    return json.dumps(doc).encode()


HOSTILE = {
    "id not hex": lambda d: d["nets"][0].__setitem__("id", "../../etc/passwd"),
    "id uppercase": lambda d: d["nets"][0].__setitem__("id", A.upper()),
    "id too short": lambda d: d["patches"][0].__setitem__("base", "ab"),
    "path climbs out": lambda d: d["nets"][0].__setitem__("path", "nets/../../secret"),
    "absolute path": lambda d: d["patches"][0].__setitem__("path", "/etc/passwd"),
    "hidden path": lambda d: d["patches"][0].__setitem__("path", ".state/lock"),
    "backslash path": lambda d: d["patches"][0].__setitem__("path", "nets\\..\\x"),
    "huge size": lambda d: d["nets"][1].__setitem__("size", 1 << 50),
    "negative size": lambda d: d["patches"][0].__setitem__("size", -1),
    "size as string": lambda d: d["patches"][0].__setitem__("size", "10"),
    "size as bool": lambda d: d["patches"][0].__setitem__("size", True),
    "size as float": lambda d: d["nets"][0].__setitem__("raw_size", 1.5),
    "nets not a list": lambda d: d.__setitem__("nets", {"a": 1}),
    "net not an object": lambda d: d["nets"].__setitem__(0, "x"),
    "schema from the future": lambda d: d.__setitem__("schema", SCHEMA + 1),
    "schema missing": lambda d: d.pop("schema"),
    "latest unknown": lambda d: d.__setitem__("latest", "f" * 64),
    "duplicate net": lambda d: d["nets"].append(copy.deepcopy(d["nets"][0])),
    "unknown mode": lambda d: d["patches"][0].__setitem__("mode", "magic"),
    "lossless result differs": lambda d: d["patches"][0].__setitem__("result", C),
    "tolerance not positive": lambda d: d["patches"][1].__setitem__("tolerance", -1),
    "tolerance not a number": lambda d: d["patches"][1].__setitem__("tolerance", "0.1"),
    "patch target unknown": lambda d: d["patches"][0].__setitem__("target", "f" * 64),
    "steps negative": lambda d: d["nets"][0].__setitem__("training_steps", -5),
}


@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_hostile_index_is_refused_with_one_clear_error(case):
    with pytest.raises(RepositoryIndexError) as info:
        parse_index(_hostile(HOSTILE[case]))
    assert isinstance(info.value, Lc0WeightsError)
    message = str(info.value)
    assert message.startswith("refusing repository index") and "\n" not in message


@pytest.mark.parametrize("data", [b"", b"not json", b"[]", b"\"x\"", b"[" * 100000, b"{\"schema\": 1.0}"])
def test_garbage_is_refused(data):
    with pytest.raises(RepositoryIndexError):
        parse_index(data)


def test_oversized_index_is_refused_before_parsing():
    with pytest.raises(RepositoryIndexError, match="limit"):
        parse_index(b" " * ((64 << 20) + 1))


def test_unknown_fields_are_ignored_for_forward_compatibility():
    doc = _doc()
    doc["mirrors"] = ["https://example.org"]
    doc["nets"][0]["comment"] = "extra"
    assert parse_index(json.dumps(doc).encode()).latest == B
