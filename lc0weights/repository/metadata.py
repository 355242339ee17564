"""The signed repository metadata: root, timestamp and per-net records.

``docs/REPOSITORY.md`` is the specification; in short:

* ``root.json``: signed by the root key a client pins. Names the repository,
  the online keys allowed to sign timestamps, a version and an expiry.
* ``timestamp.json``: signed by an online key; the only document a client
  polls. Names the root version in force, the latest net's record (seq, id,
  length, sha256) and the oldest net still served (the horizon).
* ``records/<net id>.json``: one per net, immutable, unsigned. Names the net
  object and every patch that rebuilds the net, each with length and sha256,
  and links to earlier records by length and sha256. A record is trusted
  only when reached through links from a verified timestamp.

Top documents travel in an envelope ``{"payload": base64, "signatures":
[{"key": "ed25519:...", "sig": base64}]}``; a signature covers the domain
string ``lc0weights/<type>/v1`` plus a newline plus the exact payload bytes
that are then parsed, so no re-serialisation ever stands between what was
signed and what is read.
"""
from __future__ import annotations

import base64
import binascii
import datetime as _dt
import json
from dataclasses import dataclass, field

from .errors import KeyFileError, UntrustedError
from .index import DEFAULT_TIER, NetEntry, PatchEntry, net_object_path, parse_patch_entry
from .keys import PublicKey, SigningKey
from .strict import Strict

SPEC = 1
ROOT_NAME = "root.json"
TIMESTAMP_NAME = "timestamp.json"
MAX_TOP_BYTES = 64 << 10            # a timestamp is ~0.7 KB, a root ~0.5 KB
MAX_RECORD_BYTES = 1 << 20          # a record is ~1-2 KB
MAX_KEYS = 16
MAX_LINKS = 80                      # 1..16 plus one per power of two below 2^64
MAX_PATCHES = 256
_TIME = "%Y-%m-%dT%H:%M:%SZ"


def record_path(net_id: str) -> str:
    return f"records/{net_id}.json"


def utc_text(when: _dt.datetime) -> str:
    return when.astimezone(_dt.timezone.utc).strftime(_TIME)


def utc_now() -> _dt.datetime:
    return _dt.datetime.now(_dt.timezone.utc).replace(microsecond=0)


def _compact(doc: dict) -> bytes:
    return json.dumps(doc, separators=(",", ":"), sort_keys=True).encode()


def link_distances(seq: int, skips=(1, 2, 4, 8, 16)) -> list[int]:
    """How far back record ``seq`` links: the fixed skips plus every power of two dividing it.

    The powers make a deterministic skip list: from any record, a client
    reaches any earlier one in O(log distance) links.
    """
    found = set(skips)
    step = 32
    while step <= seq:
        if seq % step == 0:
            found.add(step)
        step *= 2
    return sorted(d for d in found if d <= seq)


def link_hops(low: int, high: int) -> list[int]:
    """Fewest links from each record ``low + i`` (up to ``high``) down to record ``low``.

    Planned on the publisher's link layout, so a client knows which link to
    follow before it reads the record: always taking the longest link is
    worse (from an odd number, steps of 16 never reach the long power links).
    """
    hops = [0] * (high - low + 1)
    for i in range(1, len(hops)):
        hops[i] = 1 + min(hops[i - d] for d in link_distances(low + i) if d <= i)
    return hops


# -- envelopes ----------------------------------------------------------------------------

def _signed_message(doc_type: str, payload: bytes) -> bytes:
    return f"lc0weights/{doc_type}/v1\n".encode() + payload


def seal(doc_type: str, payload: bytes, keys) -> bytes:
    """An envelope holding ``payload`` with one signature per key (none: unsigned)."""
    message = _signed_message(doc_type, payload)
    signatures = [{"key": k.public.text, "sig": base64.b64encode(k.sign(message)).decode()} for k in keys]
    return _compact({"payload": base64.b64encode(payload).decode(), "signatures": signatures}) + b"\n"


@dataclass
class Envelope:
    doc_type: str
    payload: bytes
    signatures: list[tuple[PublicKey, bytes]]

    def signed_by(self, keys) -> PublicKey | None:
        """The first of ``keys`` with a valid signature here, or None."""
        message = _signed_message(self.doc_type, self.payload)
        wanted = set(keys)
        for key, sig in self.signatures:
            if key in wanted and key.verify(sig, message):
                return key
        return None


def open_envelope(doc_type: str, data: bytes, name: str) -> Envelope:
    v = Strict(name, UntrustedError)
    doc = v.object(v.load_json(data, MAX_TOP_BYTES), name)
    payload_text = v.string(doc.get("payload"), "payload", MAX_TOP_BYTES)
    try:
        payload = base64.b64decode(payload_text, validate=True)
    except (binascii.Error, ValueError):
        v.fail("payload", "not base64")
    signatures = []
    for i, s in enumerate(v.list(doc.get("signatures"), "signatures", MAX_KEYS)):
        s = v.object(s, f"signatures[{i}]")
        try:
            key = PublicKey.from_text(v.string(s.get("key"), f"signatures[{i}].key", 100))
            sig = base64.b64decode(v.string(s.get("sig"), f"signatures[{i}].sig", 100), validate=True)
        except (binascii.Error, ValueError, KeyFileError) as e:
            v.fail(f"signatures[{i}]", f"malformed signature ({e})")
        signatures.append((key, sig))
    return Envelope(doc_type, payload, signatures)


def _payload(v: Strict, env: Envelope, doc_type: str) -> dict:
    doc = v.object(v.load_json(env.payload, MAX_TOP_BYTES), "payload")
    if doc.get("type") != doc_type:
        v.fail("type", f"expected {doc_type!r}, found {doc.get('type')!r}")
    if doc.get("spec") != SPEC:
        v.fail("spec", f"version {doc.get('spec')!r} is not supported by this build (it reads {SPEC})")
    return doc


def _time(v: Strict, value, where: str) -> _dt.datetime:
    text = v.string(value, where, 32)
    try:
        return _dt.datetime.strptime(text, _TIME).replace(tzinfo=_dt.timezone.utc)
    except ValueError:
        v.fail(where, f"expected a UTC time like 2026-12-01T00:00:00Z, found {text!r}")


def _keys(v: Strict, value, where: str) -> list[PublicKey]:
    keys = []
    for i, text in enumerate(v.list(value, where, MAX_KEYS)):
        try:
            keys.append(PublicKey.from_text(v.string(text, f"{where}[{i}]", 100)))
        except KeyFileError as e:
            v.fail(f"{where}[{i}]", str(e))
    if not keys:
        v.fail(where, "no keys listed")
    return keys


def _repository_id(v: Strict, value) -> str:
    text = v.string(value, "repository", 64)
    if len(text) != 32 or any(c not in "0123456789abcdef" for c in text):
        v.fail("repository", f"expected 32 hex digits, found {text!r}")
    return text


# -- root -----------------------------------------------------------------------------------

@dataclass
class Root:
    repository: str
    version: int
    expires: _dt.datetime
    root_keys: list[PublicKey]
    online_keys: list[PublicKey]

    def payload(self) -> bytes:
        return _compact({"type": "root", "spec": SPEC, "repository": self.repository,
                         "version": self.version, "expires": utc_text(self.expires),
                         "root_keys": [k.text for k in self.root_keys],
                         "online_keys": [k.text for k in self.online_keys]})

    def seal(self, root_key: SigningKey) -> bytes:
        return seal("root", self.payload(), [root_key])


def parse_root(env: Envelope) -> Root:
    v = Strict(ROOT_NAME, UntrustedError)
    doc = _payload(v, env, "root")
    return Root(repository=_repository_id(v, doc.get("repository")),
                version=v.count(doc.get("version"), "version", 1 << 62),
                expires=_time(v, doc.get("expires"), "expires"),
                root_keys=_keys(v, doc.get("root_keys"), "root_keys"),
                online_keys=_keys(v, doc.get("online_keys"), "online_keys"))


# -- timestamp and records --------------------------------------------------------------

@dataclass(frozen=True)
class Link:
    """A record named by what it must hash to: the net's publication number, id, length, sha256."""

    seq: int
    id: str
    size: int
    sha256: str

    @property
    def path(self) -> str:
        return record_path(self.id)

    def to_dict(self) -> dict:
        return {"seq": self.seq, "id": self.id, "size": self.size, "sha256": self.sha256}


def _link(v: Strict, doc, where: str) -> Link:
    doc = v.object(doc, where)
    return Link(seq=v.count(doc.get("seq"), f"{where}.seq", 1 << 62),
                id=v.hex64(doc.get("id"), f"{where}.id"),
                size=v.count(doc.get("size"), f"{where}.size", MAX_RECORD_BYTES),
                sha256=v.hex64(doc.get("sha256"), f"{where}.sha256"))


@dataclass
class Timestamp:
    repository: str
    version: int
    expires: _dt.datetime
    root_version: int
    horizon: int                    # the oldest publication number still served
    latest: Link | None

    def payload(self) -> bytes:
        return _compact({"type": "timestamp", "spec": SPEC, "repository": self.repository,
                         "version": self.version, "expires": utc_text(self.expires),
                         "root_version": self.root_version, "horizon": self.horizon,
                         "latest": None if self.latest is None else self.latest.to_dict()})

    def seal(self, keys) -> bytes:
        return seal("timestamp", self.payload(), keys)


def parse_timestamp(env: Envelope) -> Timestamp:
    v = Strict(TIMESTAMP_NAME, UntrustedError)
    doc = _payload(v, env, "timestamp")
    latest = doc.get("latest")
    ts = Timestamp(repository=_repository_id(v, doc.get("repository")),
                   version=v.count(doc.get("version"), "version", 1 << 62),
                   expires=_time(v, doc.get("expires"), "expires"),
                   root_version=v.count(doc.get("root_version"), "root_version", 1 << 62),
                   horizon=v.count(doc.get("horizon"), "horizon", 1 << 62),
                   latest=None if latest is None else _link(v, latest, "latest"))
    if ts.latest is not None and ts.horizon > ts.latest.seq:
        v.fail("horizon", f"{ts.horizon} is past the latest net's number {ts.latest.seq}")
    return ts


@dataclass
class Record:
    """What one published net is, and every patch that rebuilds it (or a lossy stand-in)."""

    repository: str
    seq: int
    net: NetEntry
    patches: list[PatchEntry] = field(default_factory=list)
    links: list[Link] = field(default_factory=list)

    def to_bytes(self) -> bytes:
        n = self.net
        net = {"id": n.id, "size": n.size, "sha256": n.sha256, "raw_size": n.raw_size,
               "training_steps": n.training_steps, "published": n.published, "source": n.source}
        linked = {l.seq: l.id for l in self.links}
        patches = []
        for p in self.patches:
            doc = {"base_seq": p.base_seq, "size": p.size, "sha256": p.sha256}
            if linked.get(p.base_seq) != p.base:     # a base the links already name is not repeated
                doc["base"] = p.base
            if p.lossy:
                doc.update(mode=p.mode, tolerance=p.tolerance, result=p.result)
            if p.history is not None:
                doc["history"] = p.history
            if p.tier != DEFAULT_TIER:
                doc["tier"] = p.tier
            patches.append(doc)
        return _compact({"type": "record", "spec": SPEC, "repository": self.repository, "seq": self.seq,
                         "net": net, "patches": patches, "links": [l.to_dict() for l in self.links]}) + b"\n"


def parse_record(data: bytes, expected: Link, repository: str) -> Record:
    """A record already checked against ``expected``'s length and sha256; check its content too."""
    v = Strict(expected.path, UntrustedError)
    doc = v.object(v.load_json(data, MAX_RECORD_BYTES), expected.path)
    if doc.get("type") != "record" or doc.get("spec") != SPEC:
        v.fail("type", "not a spec-1 record")
    if _repository_id(v, doc.get("repository")) != repository:
        v.fail("repository", "names another repository")
    seq = v.count(doc.get("seq"), "seq", 1 << 62)
    n = v.object(doc.get("net"), "net")
    net_id = v.hex64(n.get("id"), "net.id")
    if seq != expected.seq or net_id != expected.id:
        v.fail("seq", f"record is net {seq} {net_id[:16]}..., the link names {expected.seq} {expected.id[:16]}...")
    net = NetEntry(id=net_id, path=net_object_path(net_id), size=v.count(n.get("size"), "net.size"),
                   sha256=v.hex64(n.get("sha256"), "net.sha256"),
                   raw_size=v.count(n.get("raw_size"), "net.raw_size"),
                   training_steps=v.opt_count(n.get("training_steps"), "net.training_steps", 1 << 62),
                   published=v.string(n.get("published", ""), "net.published", 64),
                   predecessor=None, source=v.string(n.get("source", ""), "net.source"))
    links = [_link(v, l, f"links[{i}]") for i, l in enumerate(v.list(doc.get("links", []), "links", MAX_LINKS))]
    if any(l.seq >= seq for l in links):
        v.fail("links", "a link must point to an earlier net")
    linked = {l.seq: l.id for l in links}
    patches = []
    for i, p in enumerate(v.list(doc.get("patches", []), "patches", MAX_PATCHES)):
        p = v.object(p, f"patches[{i}]")
        if "base" not in p and p.get("base_seq") in linked:
            p = {**p, "base": linked[p["base_seq"]]}
        entry = parse_patch_entry(v, p, f"patches[{i}]", target=net_id)
        if entry.base_seq is None or entry.base_seq >= seq:
            v.fail(f"patches[{i}].base_seq", "must name an earlier net")
        patches.append(entry)
    return Record(repository=repository, seq=seq, net=net, patches=patches, links=links)
