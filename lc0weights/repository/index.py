"""The catalogue: the nets and patches of a repository, as its signed records list them.

A :class:`NetEntry` is a published net (a full ``.pb.gz`` object), a
:class:`PatchEntry` a patch between nets, with sizes and hashes; a
:class:`Catalogue` holds the entries a route may use. They come only from
signed metadata (``docs/REPOSITORY.md``): records are read strictly by
:mod:`.metadata`, whose patch entries :func:`parse_patch_entry` checks.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from ..tiers import TIERS
from .errors import RepositoryIndexError
from .strict import Strict, show

MODES = ("lossless", "tolerance")
DEFAULT_TIER = TIERS[0]             # "cm": a record's patch without a ``tier`` field


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
    decoded weight of ``target``. ``tier`` is how it was coded: ``"cm"`` (the
    smallest bytes, slow to decode) or ``"fast"`` (a few % more bytes, decoded
    several times faster); two patches between the same nets may differ in tier.
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
    tier: str = DEFAULT_TIER       # the coding tier (TIERS)

    @property
    def lossy(self) -> bool:
        return self.mode == "tolerance"

    def to_dict(self) -> dict:
        doc = dict(self.__dict__)
        for optional in ("history", "base_seq"):
            if doc[optional] is None:
                del doc[optional]
        if doc["tier"] == DEFAULT_TIER:
            del doc["tier"]
        return doc


@dataclass
class Catalogue:
    """The nets and patches a route may use, and the latest net: what the signed metadata lists.

    The client builds it from the records it verified (:meth:`.updater.Updater.catalog`),
    the publisher from every record it holds (``Repository.read_index``); the route
    search (:mod:`lc0weights.client.route`) reads only this.
    """

    nets: list[NetEntry] = field(default_factory=list)
    patches: list[PatchEntry] = field(default_factory=list)
    latest: str | None = None
    retired: list[str] = field(default_factory=list)   # ids pruned behind the horizon (publisher's view)

    def net(self, net_id: str) -> NetEntry | None:
        for entry in self.nets:
            if entry.id == net_id:
                return entry
        return None

    def patch(self, base: str, result: str, tier: str | None = None) -> PatchEntry | None:
        """The patch from ``base`` to ``result`` (of ``tier``, if given) with the fewest bytes;
        the first listed on a tie. Pairs may have one patch per tier (and a history version)."""
        found = self.patches_between(base, result, tier)
        return min(found, key=lambda p: p.size) if found else None

    def patches_between(self, base: str, result: str, tier: str | None = None) -> list[PatchEntry]:
        """Every patch from ``base`` to ``result`` (of ``tier``, if given), in listed order."""
        return [p for p in self.patches
                if p.base == base and p.result == result and (tier is None or p.tier == tier)]

    def lossy_results(self, target: str, tolerance: float | None = None) -> list[str]:
        """Ids of the lossy nets published as approximations of ``target``."""
        return [p.result for p in self.patches
                if p.lossy and p.target == target and (tolerance is None or p.tolerance == tolerance)]


# -- strict reading -----------------------------------------------------------
def parse_patch_entry(v: Strict, doc, where: str, target: str | None = None) -> PatchEntry:
    """A patch entry of a record: every patch a record lists rebuilds the record's own net."""
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
    # Written only when not the default: "cm" spelled out is refused, so a record has one spelling.
    tier = doc.get("tier", DEFAULT_TIER)
    if "tier" in doc and tier not in TIERS[1:]:
        v.fail(f"{where}.tier", f"expected one of {TIERS[1:]} (absent: {DEFAULT_TIER!r}), found {show(tier)}")
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
        tier=tier,
    )
    if entry.base == entry.result or entry.history in (entry.base, entry.result):
        v.fail(where, "a patch's base, history and result must be three different nets")
    return entry

