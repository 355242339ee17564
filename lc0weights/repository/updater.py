"""The client's checks, in the order docs/REPOSITORY.md gives them, before any metadata is used.

:class:`Updater` reads the timestamp (conditionally: an unchanged one costs a
304), the root when the timestamp names another version or the cached one is
stale, verifies signatures against the pinned key, refuses rollback and
expired documents, then reads only the records a route needs: the target's,
and those on the skip-list path down to each net the client holds. What it
has accepted is remembered in a :class:`TrustState` per repository and key.
"""
from __future__ import annotations

import base64
import hashlib
import json
import logging
import sys
import tempfile
import time
from pathlib import Path

from ..durable_files import atomic_write
from .errors import DownloadError, NotFoundError, RepositoryIndexError, UntrustedError
from .index import Catalogue, resolve_prefix
from .key_hint import online_key_hint
from .keys import PublicKey, read_trust
from .metadata import (MAX_RECORD_BYTES, MAX_TOP_BYTES, ROOT_NAME, TIMESTAMP_NAME, Envelope, Link, Record,
                       Root, Timestamp, link_hops, open_envelope, parse_record, parse_root,
                       parse_timestamp, record_path, utc_now)

log = logging.getLogger(__name__)
KNOWN_LIMIT = 512          # net ids whose publication number a client remembers
PREFIX_WINDOW = 64         # a short id prefix may name one of this many most recent nets
LOSSY_WINDOW = 64          # how far back a client looks for the start of a lossy chain
MAX_STARTS = 2             # held nets a route may start from: the newest two (a history patch needs both)
MAX_LOOKUPS = 8            # held nets of unknown number looked up per fetch
HINT_MAX_BYTES = 64 << 10  # an unverified record read for a hint (records are ~1-2 KB)
HINT_SECONDS = 10.0        # all hint reads for held nets of unknown number, per fetch
PLAN_LIMIT = 1 << 16      # further behind, descend by longest links without a plan (cost)
_warned = False


def pinned_key(trust) -> PublicKey | None:
    """The pinned key from a ``--trust`` value (text, ``@FILE``), a PublicKey, or None."""
    if trust is None or isinstance(trust, PublicKey):
        return trust
    return read_trust(str(trust))


def warn_unauthenticated(location) -> None:
    global _warned
    if not _warned:
        _warned = True
        print(f"warning: no --trust key given: nothing from {location} is authenticated", file=sys.stderr)


class TrustState:
    """What a client has accepted from one repository: root, newest timestamp, known net numbers.

    Two small JSON files in the client's state folder: one per location for
    conditional requests (ETag and the bytes it stands for), one per pinned
    key and repository for what must never go backwards.
    """

    def __init__(self, folder: Path, key: PublicKey | None, location: str):
        self.folder = Path(folder)
        self.key = key
        owner = key.text if key else "-"
        self._http_file = self.folder / f"http-{_short_hash(owner + ' ' + location)}.json"
        self.http = _read_json(self._http_file)
        self.repo_file: Path | None = None
        self.repo: dict = {}

    def bind(self, repository: str) -> None:
        """Open the per-repository part, now that the repository's id is known.

        A location keeps the repository it first served: one key may sign
        several repositories, and a mirror must not swap one for another.
        """
        if self.repo_file is not None and self.repo.get("repository") == repository:
            return
        first = self.http.setdefault("repository", repository)
        if self.key is not None and first != repository:
            raise UntrustedError(f"this location served repository {first} before and now serves "
                                 f"{repository}; refusing the swap (use a new --cache to start over)")
        owner = self.key.fingerprint if self.key else "unsigned"
        self.repo_file = self.folder / f"repo-{owner}-{repository}.json"
        self.repo = _read_json(self.repo_file)
        self.repo["repository"] = repository

    def cached_document(self, name: str) -> tuple[str | None, bytes | None]:
        entry = self.http.get(name)
        if not isinstance(entry, dict):
            return None, None
        try:
            return entry.get("etag"), base64.b64decode(entry.get("data", ""), validate=True)
        except ValueError:
            return None, None

    def remember_document(self, name: str, etag: str | None, data: bytes) -> None:
        self.http[name] = {"etag": etag, "data": base64.b64encode(data).decode()}

    def known(self, net_id: str) -> Link | None:
        entry = self.repo.get("known", {}).get(net_id)
        try:
            seq, size, sha = entry
            return Link(int(seq), net_id, int(size), str(sha))
        except (TypeError, ValueError):
            return None

    def learn(self, link: Link, net_id: str | None = None) -> None:
        known = self.repo.setdefault("known", {})
        known[net_id or link.id] = [link.seq, link.size, link.sha256]
        if len(known) > KNOWN_LIMIT:
            for old in sorted(known, key=lambda k: known[k][0])[:len(known) - KNOWN_LIMIT]:
                del known[old]

    def save(self) -> None:
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            atomic_write(self._http_file, json.dumps(self.http).encode())
            if self.repo_file is not None:
                atomic_write(self.repo_file, json.dumps(self.repo).encode())
        except OSError as e:
            log.warning("cannot save the trust state in %s: %s", self.folder, e.strerror)


def _short_hash(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _read_json(path: Path) -> dict:
    try:
        if path.stat().st_size > 4 << 20:
            return {}
        doc = json.loads(path.read_bytes())
        return doc if isinstance(doc, dict) else {}
    except (OSError, ValueError, RecursionError):
        return {}


class Updater:
    """One client's view of one repository, built from verified documents only."""

    def __init__(self, source, trust=None, state_dir=None):
        self.source = source
        self.key = pinned_key(trust)
        self.state = TrustState(Path(state_dir) if state_dir else Path(tempfile.gettempdir()),
                                self.key, str(source))
        self.timestamp: Timestamp | None = None
        self.root: Root | None = None
        self._records: dict[int, Record] = {}
        self.links: dict[int, Link] = {}          # the verified link each record was read by
        self._hints: dict[str, bytes] = {}
        self._hint_deadline: float | None = None  # when the held nets' hint reads must stop
        self._work = None
        self.metadata_bytes = 0                   # read from the source for metadata, over all steps

    # -- steps 1-5: the top documents -------------------------------------------------------
    def refresh(self) -> Timestamp:
        """The verified timestamp; a source without one is refused (it is no repository of ours)."""
        data = self._top_document(TIMESTAMP_NAME)
        if data is None:
            if self.key is not None:
                raise UntrustedError(f"{self.source} has no signed metadata ({TIMESTAMP_NAME}); "
                                     "refusing it because a --trust key is pinned")
            raise RepositoryIndexError(f"{self.source} has no signed metadata ({TIMESTAMP_NAME}): not a "
                                       "repository, or one written before signing; its publisher must run "
                                       "a current `lc0weights-server publish` (or `resign`)")
        envelope = open_envelope("timestamp", data, TIMESTAMP_NAME)
        now = utc_now()
        if self.key is None:
            warn_unauthenticated(self.source)
            ts = parse_timestamp(envelope)
            self.state.bind(ts.repository)
        else:
            # No byte of the payload is interpreted before its signature is verified.
            root, fresh = self._cached_root(), False
            if root is None or root.expires <= now or envelope.signed_by(root.online_keys) is None:
                root, fresh = self._fetch_root(envelope), True
            if envelope.signed_by(root.online_keys) is None:
                raise UntrustedError(f"{TIMESTAMP_NAME} is not signed by an online key that "
                                     f"{ROOT_NAME} (version {root.version}) certifies")
            ts = parse_timestamp(envelope)
            if ts.root_version != root.version and not fresh:
                root = self._fetch_root(envelope)
            if ts.root_version != root.version:
                raise UntrustedError(f"{TIMESTAMP_NAME} names root version {ts.root_version}, the root in "
                                     f"force is version {root.version}: the publisher must re-sign")
            if root.repository != ts.repository:
                raise UntrustedError(f"{TIMESTAMP_NAME} names repository {ts.repository}, "
                                     f"{ROOT_NAME} names {root.repository}")
            self.state.bind(ts.repository)
            self.root = root
        if ts.expires <= now:
            raise UntrustedError(f"{TIMESTAMP_NAME} expired on {ts.expires:%Y-%m-%d %H:%M} UTC: the "
                                 "repository or a mirror serves stale metadata; refusing it")
        if self.key is not None:
            seen = self.state.repo.get("timestamp_version", 0)
            if ts.version < seen:
                raise UntrustedError(f"{TIMESTAMP_NAME} version {ts.version} is older than version {seen} "
                                     "already accepted from this repository: refusing a rollback")
            digest = hashlib.sha256(envelope.payload).hexdigest()
            if ts.version == seen and self.state.repo.get("timestamp_sha256") not in (None, digest):
                raise UntrustedError(f"{TIMESTAMP_NAME}: two different documents carry version {ts.version}")
            self.state.repo.update(timestamp_version=ts.version, timestamp_sha256=digest)
        self.timestamp = ts
        return ts

    def counted(self, read, *args, **kwargs):
        """Call a source method, adding what it downloaded to :attr:`metadata_bytes`."""
        before = self.source.bytes_downloaded
        try:
            return read(*args, **kwargs)
        finally:
            self.metadata_bytes += self.source.bytes_downloaded - before

    def _read_document(self, name: str, max_bytes: int, etag: str | None = None, **limit):
        """A document's reply, or None when the source has no such file (``limit``: seconds=...)."""
        try:
            return self.counted(self.source.read_document, name, max_bytes, etag, **limit)
        except NotFoundError:
            return None

    def _top_document(self, name: str) -> bytes | None:
        etag, cached = self.state.cached_document(name)
        reply = self._read_document(name, MAX_TOP_BYTES, etag if cached is not None else None)
        if reply is None:
            return None
        if reply.not_modified:
            return cached
        self.state.remember_document(name, reply.etag, reply.data)
        return reply.data

    def _cached_root(self) -> Root | None:
        text = self.state.http.get("trusted_root")
        if not isinstance(text, str):
            return None
        try:
            envelope = open_envelope("root", base64.b64decode(text), ROOT_NAME)
            if envelope.signed_by([self.key]) is None:
                return None
            return parse_root(envelope)
        except (ValueError, UntrustedError):
            return None

    def _fetch_root(self, timestamp: Envelope | None = None) -> Root:
        """The root, verified against the pinned key; ``timestamp`` (unverified) only words a refusal."""
        data = self._top_document(ROOT_NAME)
        if data is None:
            raise UntrustedError(f"{self.source} has no {ROOT_NAME}: it is not signed")
        envelope = open_envelope("root", data, ROOT_NAME)
        if envelope.signed_by([self.key]) is None:
            raise UntrustedError(f"{ROOT_NAME} is not signed by the pinned key {self.key.text}"
                                 + online_key_hint(self.key, envelope, timestamp))
        root = parse_root(envelope)
        if self.key not in root.root_keys:
            raise UntrustedError(f"{ROOT_NAME} does not list the pinned key among its root keys"
                                 + online_key_hint(self.key, envelope, timestamp))
        self.state.bind(root.repository)
        known = self.state.repo.get("root_version", 0)
        if root.version < known:
            raise UntrustedError(f"{ROOT_NAME} version {root.version} is older than version {known} "
                                 "already accepted: refusing a rollback")
        if root.expires <= utc_now():
            raise UntrustedError(f"{ROOT_NAME} expired on {root.expires:%Y-%m-%d}: the publisher must renew it")
        self.state.repo["root_version"] = root.version
        self.state.http["trusted_root"] = base64.b64encode(data).decode()
        return root

    # -- step 6: records ------------------------------------------------------------------------
    def record(self, link: Link) -> Record:
        """The record ``link`` names, checked against its length and sha256, then its content."""
        if link.seq in self._records:
            return self._records[link.seq]
        data = self._hints.get(link.sha256)
        if data is None or len(data) != link.size:
            data = self._read_object(link.path, link.size, link.sha256)
        record = parse_record(data, link, self.timestamp.repository)
        self._records[link.seq] = record
        self.links[link.seq] = link
        self.state.learn(link)
        return record

    def _read_object(self, path: str, size: int, sha256: str) -> bytes:
        if self._work is None:
            self._work = tempfile.TemporaryDirectory(prefix="lc0weights-meta-")
        dest = Path(self._work.name) / "record"
        self.counted(self.source.fetch_object, path, dest, size, sha256, desc="metadata")
        data = dest.read_bytes()
        dest.unlink()
        return data

    def _hinted_seq(self, net_id: str, held: bool = False) -> int | None:
        """Where a net sits, from memory or from its record read unverified (checked later).

        Such a read is at most HINT_MAX_BYTES; for ``held`` nets (candidate
        bases, a few per fetch) all reads together get HINT_SECONDS, so a
        server trickling the records of nets it does not have cannot stall
        the fetch: past the budget, held nets are simply not routed from.
        """
        known = self.state.known(net_id)
        if known is not None:
            return known.seq
        limit = {}
        if held:
            now = time.monotonic()
            if self._hint_deadline is None:
                self._hint_deadline = now + HINT_SECONDS
            if now >= self._hint_deadline:
                log.info("no hint for held net %s...: the %g s for hints are spent", net_id[:16], HINT_SECONDS)
                return None
            limit = {"seconds": self._hint_deadline - now}
        try:
            reply = self._read_document(record_path(net_id), min(HINT_MAX_BYTES, MAX_RECORD_BYTES), **limit)
        except DownloadError as e:           # only a hint: a route without it still works
            log.info("no hint for held net %s...: %s", net_id[:16], e)
            return None
        if reply is None or reply.data is None:
            return None
        try:
            seq = json.loads(reply.data).get("seq")
        except (ValueError, RecursionError, AttributeError):
            return None
        if type(seq) is not int or seq < 0:
            return None
        self._hints[hashlib.sha256(reply.data).hexdigest()] = reply.data
        return seq

    def descend(self, record: Record, seq: int) -> Record | None:
        """Follow links from ``record`` down to the record numbered ``seq``, fewest records first."""
        horizon = self.timestamp.horizon
        plan = link_hops(seq, record.seq) if record.seq - seq <= PLAN_LIMIT else None
        while record.seq > seq:
            steps = [l for l in record.links if seq <= l.seq < record.seq and l.seq >= horizon]
            if not steps:
                return None
            record = self.record(min(steps, key=lambda l: (plan[l.seq - seq] if plan else 0, l.seq)))
        return record

    def reach(self, record: Record, seq: int) -> Link | None:
        """The verified link to record ``seq``: its id, length and sha256, without reading it.

        A held net needs no record of its own: the patches from it sit in the
        records after it, and the link already proves which net it is.
        """
        horizon = self.timestamp.horizon
        plan = link_hops(seq, record.seq) if record.seq - seq <= PLAN_LIMIT else None
        while record.seq > seq:
            for link in record.links:
                if link.seq == seq:
                    return link
            steps = [l for l in record.links if seq < l.seq < record.seq and l.seq >= horizon]
            if not steps:
                return None
            record = self.record(min(steps, key=lambda l: (plan[l.seq - seq] if plan else 0, l.seq)))
        return None

    # -- what the route search needs ------------------------------------------------------------
    def catalog(self, wanted: str, held, tolerance: float | None = None) -> tuple[Catalogue, str]:
        """The nets and patches a route to ``wanted`` can use, and the wanted net's id."""
        ts = self.timestamp
        if ts.latest is None:
            raise RepositoryIndexError("the repository has no nets yet")
        if wanted in ("latest", ts.latest.id) and ts.latest.id in set(held):
            # A poll with nothing new: no record is needed.
            return Catalogue(latest=ts.latest.id), ts.latest.id
        top = self.record(ts.latest)
        target = top if wanted == "latest" else self._find(top, wanted)
        lossy_targets = {p.result for p in target.patches if p.lossy}
        for net_id, seq in self._starts(set(held) - {target.net.id} - lossy_targets, target.seq):
            if tolerance is not None:
                self._walk_back(target, max(seq, target.seq - LOSSY_WINDOW))
            else:
                reached = self.reach(target, seq)
                if reached is None or reached.id != net_id:
                    log.info("held net %s... is not net %d of this repository", net_id[:16], seq)
                else:
                    self.state.learn(reached)
        if tolerance is not None:
            self._walk_back(target, max(ts.horizon, target.seq - 1))
        for record in self._records.values():
            for p in record.patches:
                if p.lossy:
                    self.state.learn(Link(record.seq, record.net.id, 0, "0" * 64), p.result)
        return self._catalogue(), target.net.id

    def _starts(self, held, below: int) -> list[tuple[str, int]]:
        """The held nets worth routing from: the few newest before ``below``.

        A client keeping many nets pays metadata only for those that can give
        a cheap route: nets it knows the number of first, then a few looked up.
        """
        found, looked_up = [], 0
        for net_id in sorted(held, key=lambda i: self.state.known(i) is None):
            if self.state.known(net_id) is None:
                if looked_up >= MAX_LOOKUPS:
                    continue
                looked_up += 1
            seq = self._hinted_seq(net_id, held=True)
            if seq is not None and self.timestamp.horizon <= seq < below:
                found.append((net_id, seq))
        return sorted(found, key=lambda start: -start[1])[:MAX_STARTS]

    def _find(self, top: Record, wanted: str) -> Record:
        """The record of a full id, or of a 16+ digit prefix of a recent or already known net."""
        wanted = wanted.lower()
        if len(wanted) < 64:
            resolve_prefix(wanted, [wanted])          # refuses a short or non-hex prefix up front
            ids = {top.net.id} | set(self.state.repo.get("known", {}))
            record = top
            for _ in range(PREFIX_WINDOW):
                if any(i.startswith(wanted) for i in ids) or record is None:
                    break
                record = self.descend(record, record.seq - 1) if record.seq > self.timestamp.horizon else None
                if record is not None:
                    ids.add(record.net.id)
            wanted = resolve_prefix(wanted, ids)
        seq = self._hinted_seq(wanted)
        found = self.descend(top, seq) if seq is not None and seq >= self.timestamp.horizon else None
        if found is None or found.net.id != wanted:
            raise RepositoryIndexError(f"net {wanted[:16]}... is not in the repository's signed metadata "
                                       "(or no longer served)")
        return found

    def read_all(self) -> Catalogue:
        """Every record from the latest down to the horizon, one link at a time (for ``check``)."""
        ts = self.timestamp
        if ts.latest is not None:
            self._walk_back(self.record(ts.latest), ts.horizon)
        return self._catalogue()

    def _walk_back(self, record: Record, seq: int) -> None:
        while record.seq > seq:
            record = self.descend(record, record.seq - 1)
            if record is None:
                return

    def _catalogue(self) -> Catalogue:
        horizon = self.timestamp.horizon
        records = sorted(self._records.values(), key=lambda r: r.seq)
        return Catalogue(nets=[r.net for r in records],
                               patches=[p for r in records for p in r.patches if p.base_seq >= horizon],
                               latest=None if self.timestamp.latest is None else self.timestamp.latest.id)

    def records(self) -> list[Record]:
        return sorted(self._records.values(), key=lambda r: r.seq)

    def save(self) -> None:
        """Remember what was accepted (call once it has been used successfully)."""
        self.state.save()

    def close(self) -> None:
        if self._work is not None:
            self._work.cleanup()
            self._work = None
