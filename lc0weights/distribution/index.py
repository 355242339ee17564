"""The repository index: the one mutable file of a published repository.

It lists every net (as a full ``.pb.gz`` object) and every patch between nets,
with sizes and hashes, and names the latest net. ``docs/REPOSITORY.md`` is the
exact specification. Reading is strict on purpose: an index comes from the
network, so anything unexpected (ids that are not 64 hex digits, paths that
climb out of the repository, absurd sizes, wrong types) refuses the whole
index with one :class:`RepositoryIndexError` before any of it is used.
"""
from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field

from .errors import RepositoryIndexError

SCHEMA = 1
FORMAT = "lc0weights-repository"
INDEX_NAME = "index.json"
MAX_INDEX_BYTES = 64 << 20          # a generous bound; real indexes are kilobytes
MAX_OBJECT_BYTES = 16 << 30         # no lc0 net comes near 16 GiB
MAX_ENTRIES = 1_000_000
MODES = ("lossless", "tolerance")

_HEX64 = re.compile(r"[0-9a-f]{64}\Z")
_SEGMENT = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._-]*\Z")


def net_object_path(net_id: str) -> str:
    return f"nets/{net_id}.pb.gz"


def patch_object_path(sha256: str) -> str:
    return f"patches/{sha256}.lc0patch"


@dataclass(frozen=True)
class NetEntry:
    """A published net, stored whole as a deterministic gzip object."""

    id: str                     # sha256 of the raw protobuf (the network id)
    path: str                   # object path relative to the repository root
    size: int                   # bytes of the .pb.gz object
    sha256: str                 # sha256 of the .pb.gz object
    raw_size: int               # bytes of the raw protobuf
    training_steps: int | None
    published: str              # UTC time, ISO 8601
    predecessor: str | None     # id of the net published before it
    source: str = ""            # file name the net was published from

    def to_dict(self) -> dict:
        return dict(self.__dict__)


@dataclass(frozen=True)
class PatchEntry:
    """A patch object: applied to net ``base`` it rebuilds net ``result``.

    For a lossless patch ``result == target``. For a tolerance patch ``result``
    is the id of the lossy net clients rebuild, within ``tolerance`` of every
    decoded weight of ``target``.
    """

    base: str
    target: str
    result: str
    path: str
    size: int
    sha256: str
    mode: str = "lossless"
    tolerance: float | None = None

    @property
    def lossy(self) -> bool:
        return self.mode == "tolerance"

    def to_dict(self) -> dict:
        return dict(self.__dict__)


@dataclass
class RepositoryIndex:
    nets: list[NetEntry] = field(default_factory=list)
    patches: list[PatchEntry] = field(default_factory=list)
    latest: str | None = None
    retired: list[str] = field(default_factory=list)   # ids once published, since pruned
    updated: str = ""

    # -- queries ------------------------------------------------------------
    def net(self, net_id: str) -> NetEntry | None:
        for entry in self.nets:
            if entry.id == net_id:
                return entry
        return None

    def has_net(self, net_id: str) -> bool:
        return self.net(net_id) is not None

    def known(self, net_id: str) -> bool:
        """Published now or in the past (the watcher must not publish it again)."""
        return self.has_net(net_id) or net_id in self.retired

    def patch(self, base: str, result: str) -> PatchEntry | None:
        for p in self.patches:
            if p.base == base and p.result == result:
                return p
        return None

    def lossy_results(self, target: str, tolerance: float | None = None) -> list[str]:
        """Ids of the lossy nets published as approximations of ``target``."""
        return [p.result for p in self.patches
                if p.lossy and p.target == target and (tolerance is None or p.tolerance == tolerance)]

    def resolve(self, wanted: str) -> str:
        """A net id from ``latest``, a full id, or a unique id prefix (8+ digits)."""
        if wanted == "latest":
            if self.latest is None:
                raise RepositoryIndexError("the repository has no nets yet")
            return self.latest
        wanted = wanted.lower()
        matches = [n.id for n in self.nets if n.id.startswith(wanted)]
        if len(wanted) < 8 or len(matches) != 1:
            kind = "ambiguous" if len(matches) > 1 else "not in the repository index"
            raise RepositoryIndexError(f"net {wanted!r} is {kind} (give 'latest' or a full id)")
        return matches[0]

    # -- serialisation --------------------------------------------------------
    def to_json(self) -> bytes:
        doc = {
            "schema": SCHEMA,
            "format": FORMAT,
            "updated": self.updated,
            "latest": self.latest,
            "nets": [n.to_dict() for n in self.nets],
            "patches": [p.to_dict() for p in self.patches],
            "retired": list(self.retired),
        }
        return (json.dumps(doc, indent=1, sort_keys=False) + "\n").encode()

    @classmethod
    def from_json(cls, data: bytes) -> "RepositoryIndex":
        return parse_index(data)


# -- strict reading -----------------------------------------------------------
def _fail(where: str, what: str):
    raise RepositoryIndexError(f"refusing repository index: {where}: {what}")


def _hex(value, where: str) -> str:
    if not isinstance(value, str) or not _HEX64.match(value):
        _fail(where, f"expected 64 lowercase hex digits, found {_show(value)}")
    return value


def _opt_hex(value, where: str) -> str | None:
    return None if value is None else _hex(value, where)


def _size(value, where: str, limit: int = MAX_OBJECT_BYTES) -> int:
    if type(value) is not int or value < 0:
        _fail(where, f"expected a non-negative integer, found {_show(value)}")
    if value > limit:
        _fail(where, f"declared size {value} exceeds the limit of {limit} bytes")
    return value


def _str(value, where: str, limit: int = 256) -> str:
    if not isinstance(value, str) or len(value) > limit:
        _fail(where, f"expected a string of at most {limit} characters, found {_show(value)}")
    return value


def _path(value, where: str) -> str:
    """A relative object path that cannot leave the repository."""
    _str(value, where, 512)
    segments = value.split("/")
    if value.startswith("/") or "\\" in value or not all(_SEGMENT.match(s) for s in segments):
        _fail(where, f"unsafe object path {_show(value)} (must be relative, no '..', no hidden parts)")
    return value


def _show(value) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _object(value, where: str) -> dict:
    if not isinstance(value, dict):
        _fail(where, f"expected an object, found {type(value).__name__}")
    return value


def _list(value, where: str) -> list:
    if not isinstance(value, list):
        _fail(where, f"expected a list, found {type(value).__name__}")
    if len(value) > MAX_ENTRIES:
        _fail(where, f"{len(value)} entries, more than the limit of {MAX_ENTRIES}")
    return value


def _parse_net(doc, where: str) -> NetEntry:
    doc = _object(doc, where)
    steps = doc.get("training_steps")
    if steps is not None and (type(steps) is not int or steps < 0):
        _fail(f"{where}.training_steps", f"expected a non-negative integer or null, found {_show(steps)}")
    return NetEntry(
        id=_hex(doc.get("id"), f"{where}.id"),
        path=_path(doc.get("path"), f"{where}.path"),
        size=_size(doc.get("size"), f"{where}.size"),
        sha256=_hex(doc.get("sha256"), f"{where}.sha256"),
        raw_size=_size(doc.get("raw_size"), f"{where}.raw_size"),
        training_steps=steps,
        published=_str(doc.get("published", ""), f"{where}.published", 64),
        predecessor=_opt_hex(doc.get("predecessor"), f"{where}.predecessor"),
        source=_str(doc.get("source", ""), f"{where}.source"),
    )


def _parse_patch(doc, where: str) -> PatchEntry:
    doc = _object(doc, where)
    mode = doc.get("mode", "lossless")
    if mode not in MODES:
        _fail(f"{where}.mode", f"expected one of {MODES}, found {_show(mode)}")
    target = _hex(doc.get("target"), f"{where}.target")
    result = _hex(doc.get("result", target), f"{where}.result")
    tolerance = doc.get("tolerance")
    if mode == "lossless":
        if tolerance is not None:
            _fail(f"{where}.tolerance", "a lossless patch has no tolerance")
        if result != target:
            _fail(f"{where}.result", "a lossless patch must rebuild its target exactly")
    elif (type(tolerance) not in (int, float) or not math.isfinite(tolerance) or tolerance <= 0):
        _fail(f"{where}.tolerance", f"expected a positive number, found {_show(tolerance)}")
    return PatchEntry(
        base=_hex(doc.get("base"), f"{where}.base"),
        target=target,
        result=result,
        path=_path(doc.get("path"), f"{where}.path"),
        size=_size(doc.get("size"), f"{where}.size"),
        sha256=_hex(doc.get("sha256"), f"{where}.sha256"),
        mode=mode,
        tolerance=None if tolerance is None else float(tolerance),
    )


def parse_index(data: bytes) -> RepositoryIndex:
    """Read and validate an index; raise :class:`RepositoryIndexError` on anything wrong."""
    if len(data) > MAX_INDEX_BYTES:
        _fail("index.json", f"{len(data)} bytes, more than the limit of {MAX_INDEX_BYTES}")
    try:
        doc = json.loads(data)
    except (ValueError, RecursionError) as e:
        _fail("index.json", f"not valid JSON ({e})")
    doc = _object(doc, "index.json")
    schema = doc.get("schema")
    if type(schema) is not int:
        _fail("schema", f"expected an integer schema version, found {_show(schema)}")
    if schema != SCHEMA:
        _fail("schema", f"version {schema} is not supported by this build (it reads {SCHEMA})")
    if doc.get("format", FORMAT) != FORMAT:
        _fail("format", f"expected {FORMAT!r}, found {_show(doc.get('format'))}")
    nets = [_parse_net(n, f"nets[{i}]") for i, n in enumerate(_list(doc.get("nets", []), "nets"))]
    patches = [_parse_patch(p, f"patches[{i}]")
               for i, p in enumerate(_list(doc.get("patches", []), "patches"))]
    retired = [_hex(r, f"retired[{i}]") for i, r in enumerate(_list(doc.get("retired", []), "retired"))]
    latest = _opt_hex(doc.get("latest"), "latest")

    ids = [n.id for n in nets]
    if len(set(ids)) != len(ids):
        _fail("nets", "the same net id is listed twice")
    if latest is None and nets:
        _fail("latest", "missing while nets are listed")
    if latest is not None and latest not in ids:
        _fail("latest", f"{latest} is not one of the listed nets")
    id_set = set(ids)
    for i, p in enumerate(patches):
        if p.target not in id_set:
            _fail(f"patches[{i}].target", f"{p.target} is not one of the listed nets")
        if p.base == p.result:
            _fail(f"patches[{i}]", "base and result are the same net")
    paths = [n.path for n in nets] + [p.path for p in patches]
    if len(set(paths)) != len(paths):
        _fail("paths", "two entries share one object path")
    return RepositoryIndex(nets=nets, patches=patches, latest=latest, retired=retired,
                           updated=_str(doc.get("updated", ""), "updated", 64))
