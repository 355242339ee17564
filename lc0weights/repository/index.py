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
from dataclasses import dataclass, field

from .errors import RepositoryIndexError
from .strict import Strict, show

SCHEMA = 1
FORMAT = "lc0weights-repository"
INDEX_NAME = "index.json"
MAX_INDEX_BYTES = 64 << 20          # a generous bound; real indexes are kilobytes
MODES = ("lossless", "tolerance")


MIN_PREFIX = 16                     # 64 bits: a prefix no one can brute-force a collision for


def resolve_prefix(wanted: str, ids) -> str:
    """The one id in ``ids`` that starts with ``wanted`` (16 or more hex digits)."""
    wanted = wanted.lower()
    if not all(c in "0123456789abcdef" for c in wanted) or not MIN_PREFIX <= len(wanted) <= 64:
        raise RepositoryIndexError(f"net {wanted[:70]!r}: give 'latest', a full id or at least "
                                   f"{MIN_PREFIX} hex digits of one")
    matches = sorted({i for i in ids if i.startswith(wanted)})
    if len(matches) != 1:
        kind = "ambiguous" if matches else "not in the repository's signed metadata"
        raise RepositoryIndexError(f"net {wanted!r} is {kind} (give 'latest' or a full id)")
    return matches[0]


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
    history: str | None = None     # a second net the client must hold (the base's predecessor)
    base_seq: int | None = None    # publication number of the net the base is (or stands for)

    @property
    def lossy(self) -> bool:
        return self.mode == "tolerance"

    def to_dict(self) -> dict:
        doc = dict(self.__dict__)
        for optional in ("history", "base_seq"):
            if doc[optional] is None:
                del doc[optional]
        return doc


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
        """A net id from ``latest``, a full id, or a unique id prefix of 16+ digits."""
        if wanted == "latest":
            if self.latest is None:
                raise RepositoryIndexError("the repository has no nets yet")
            return self.latest
        return resolve_prefix(wanted, [n.id for n in self.nets])

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
_INDEX = Strict("repository index")


def _parse_net(doc, where: str) -> NetEntry:
    v = _INDEX
    doc = v.object(doc, where)
    return NetEntry(
        id=v.hex64(doc.get("id"), f"{where}.id"),
        path=v.path(doc.get("path"), f"{where}.path"),
        size=v.count(doc.get("size"), f"{where}.size"),
        sha256=v.hex64(doc.get("sha256"), f"{where}.sha256"),
        raw_size=v.count(doc.get("raw_size"), f"{where}.raw_size"),
        training_steps=v.opt_count(doc.get("training_steps"), f"{where}.training_steps", 1 << 62),
        published=v.string(doc.get("published", ""), f"{where}.published", 64),
        predecessor=v.opt_hex64(doc.get("predecessor"), f"{where}.predecessor"),
        source=v.string(doc.get("source", ""), f"{where}.source"),
    )


def parse_patch_entry(v: Strict, doc, where: str, target: str | None = None) -> PatchEntry:
    """A patch entry of the index or of a record (a record's patches all rebuild its own net)."""
    doc = v.object(doc, where)
    mode = doc.get("mode", "lossless")
    if mode not in MODES:
        v.fail(f"{where}.mode", f"expected one of {MODES}, found {show(mode)}")
    target = v.hex64(doc.get("target", target), f"{where}.target")
    result = v.hex64(doc.get("result", target), f"{where}.result")
    tolerance = doc.get("tolerance")
    if mode == "lossless":
        if tolerance is not None:
            v.fail(f"{where}.tolerance", "a lossless patch has no tolerance")
        if result != target:
            v.fail(f"{where}.result", "a lossless patch must rebuild its target exactly")
    else:
        tolerance = v.positive(tolerance, f"{where}.tolerance")
    sha256 = v.hex64(doc.get("sha256"), f"{where}.sha256")
    entry = PatchEntry(
        base=v.hex64(doc.get("base"), f"{where}.base"),
        target=target,
        result=result,
        path=v.path(doc.get("path", patch_object_path(sha256)), f"{where}.path"),
        size=v.count(doc.get("size"), f"{where}.size"),
        sha256=sha256,
        mode=mode,
        tolerance=tolerance,
        history=v.opt_hex64(doc.get("history"), f"{where}.history"),
        base_seq=v.opt_count(doc.get("base_seq"), f"{where}.base_seq", 1 << 62),
    )
    if entry.base == entry.result or entry.history in (entry.base, entry.result):
        v.fail(where, "a patch's base, history and result must be three different nets")
    return entry


def parse_index(data: bytes) -> RepositoryIndex:
    """Read and validate an index; raise :class:`RepositoryIndexError` on anything wrong."""
    v = _INDEX
    doc = v.object(v.load_json(data, MAX_INDEX_BYTES), "index.json")
    schema = doc.get("schema")
    if type(schema) is not int:
        v.fail("schema", f"expected an integer schema version, found {show(schema)}")
    if schema != SCHEMA:
        v.fail("schema", f"version {schema} is not supported by this build (it reads {SCHEMA})")
    if doc.get("format", FORMAT) != FORMAT:
        v.fail("format", f"expected {FORMAT!r}, found {show(doc.get('format'))}")
    nets = [_parse_net(n, f"nets[{i}]") for i, n in enumerate(v.list(doc.get("nets", []), "nets"))]
    patches = [parse_patch_entry(v, p, f"patches[{i}]")
               for i, p in enumerate(v.list(doc.get("patches", []), "patches"))]
    retired = [v.hex64(r, f"retired[{i}]") for i, r in enumerate(v.list(doc.get("retired", []), "retired"))]
    latest = v.opt_hex64(doc.get("latest"), "latest")

    ids = [n.id for n in nets]
    if len(set(ids)) != len(ids):
        v.fail("nets", "the same net id is listed twice")
    if latest is None and nets:
        v.fail("latest", "missing while nets are listed")
    if latest is not None and latest not in ids:
        v.fail("latest", f"{latest} is not one of the listed nets")
    id_set = set(ids)
    for i, p in enumerate(patches):
        if p.target not in id_set:
            v.fail(f"patches[{i}].target", f"{p.target} is not one of the listed nets")
    paths = [n.path for n in nets] + [p.path for p in patches]
    if len(set(paths)) != len(paths):
        v.fail("paths", "two entries share one object path")
    return RepositoryIndex(nets=nets, patches=patches, latest=latest, retired=retired,
                           updated=v.string(doc.get("updated", ""), "updated", 64))
