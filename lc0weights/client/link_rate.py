"""How fast this client downloads and rebuilds: smoothed rates, kept in the cache folder.

Routing by time (``fetch --prefer time``) needs these rates, each measured on
real work and remembered between runs in ``.lc0weights-rates.json`` in the
cache folder:

- ``link <origin>``: object bytes per second from one repository origin
  (scheme, host and port; ``local`` for a directory), timed from request to
  verified file, retries included: what a route really waits for;
- ``rebuild``: raw net bytes per second for one patch applied and verified;
  ``rebuild-fast`` the same for patches of the fast tier (a patch's ``tier``),
  which decode several times faster than the context-mixing ("cm") ones;
- ``gzip``: raw net bytes per second to gzip a rebuilt net and write it into
  the cache (the write of a full download's published gzip is not counted
  against the full route: a small bias towards patches);
- ``gunzip``: raw net bytes per second to gunzip and verify a gzip net.

Each is a pair of decayed sums (amount, seconds): every sample first halves
the old sums, then adds its own, and the rate is their ratio. A large
transfer outweighs a small one (a 300 MB net says more about a link than a
request dominated by latency), a change of link shows within a few fetches,
and a slow sample pulls the rate down faster than a fast one pushes it up,
which errs towards patches, the cheap mistake.

Before any measurement the defaults below apply. They are deliberately on
the slow side for the link and the typical side for the machine: taking a
patch on a fast link costs seconds, a full download on a slow one costs
minutes, and the first transfer measures the link anyway (a fresh cache's
first fetch is a full download).

The file sits where anyone who can write the cache can edit it, so it is
read as hostile input: at most :data:`MAX_FILE_BYTES`, no symlink, a
regular file, strict JSON (no NaN or Infinity), every entry checked for
type and range, and a bad entry or file ignored, never trusted. It is
written by temp file and rename, so a reader never sees half of it.
"""
from __future__ import annotations

import json
import logging
import math
import os
import re
import stat
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

log = logging.getLogger(__name__)

RATES_NAME = ".lc0weights-rates.json"
FORMAT = 1
MAX_FILE_BYTES = 64 << 10           # 16 links and the machine rates take under 3 kB
MAX_LINKS = 16                      # origins remembered; the least recently measured go first
DECAY = 0.5                         # weight the past keeps at each new sample
MIN_RATE = 1e3                      # bytes/s; anything slower or faster is a broken clock or an
MAX_RATE = 1e11                     # edited file, not a measurement
MAX_AMOUNT = 1e15                   # bytes in one decayed sum (a sample is at most a net, < 16 GiB)
MIN_SECONDS = 1e-4                  # a sample timed shorter than this says nothing about a rate
MAX_NAME = 195                      # "link " and an origin of at most 190 characters

# Defaults before any measurement, in bytes per second.
DEFAULT_LINK = 2e6        # 16 Mbit/s: a slow volunteer link; see the module docstring for why slow
DEFAULT_REBUILD = 20e6    # raw bytes: ~10M weights/s, the low end of one core's decoding (11-20M)
DEFAULT_REBUILD_FAST = 4 * DEFAULT_REBUILD   # the fast tier: an estimate until measured
DEFAULT_GZIP = 40e6       # raw bytes: zlib level 1 measured 40 MB/s on net data, on a loaded 2-core machine
DEFAULT_GUNZIP = 200e6    # raw bytes: zlib inflate and sha256, measured 198 MB/s on the same machine
MACHINE_DEFAULTS = {"rebuild": DEFAULT_REBUILD, "rebuild-fast": DEFAULT_REBUILD_FAST, "gzip": DEFAULT_GZIP,
                    "gunzip": DEFAULT_GUNZIP}
_NAME = re.compile(r"(rebuild|rebuild-fast|gzip|gunzip|link [\x21-\x7e]{1,190})\Z")


def rebuild_rate_name(tier: str) -> str:
    """The rate a patch of ``tier`` ("cm" or "fast") is rebuilt at: ``rebuild`` or ``rebuild-fast``."""
    return "rebuild" if tier == "cm" else f"rebuild-{tier}"


@dataclass(frozen=True)
class Rate:
    """One rate a route is costed with, and where it came from."""

    bytes_per_s: float
    samples: int = 0                 # 0: the default, never measured

    @property
    def measured(self) -> bool:
        return self.samples > 0

    def to_dict(self) -> dict:
        return {"bytes_per_s": round(self.bytes_per_s), "measured": self.measured, "samples": self.samples}


@dataclass(frozen=True)
class Rates:
    """The rates a time route is costed with (bytes per second each)."""

    link: Rate
    rebuild: Rate                    # patches of the "cm" tier
    gzip: Rate
    gunzip: Rate
    rebuild_fast: Rate = Rate(DEFAULT_REBUILD_FAST)      # patches of the "fast" tier

    @classmethod
    def fixed(cls, link: float, rebuild: float = DEFAULT_REBUILD, gzip: float = DEFAULT_GZIP,
              gunzip: float = DEFAULT_GUNZIP, rebuild_fast: float = DEFAULT_REBUILD_FAST) -> "Rates":
        """Given rates, as if measured once (for planning by hand and for tests)."""
        return cls(Rate(link, 1), Rate(rebuild, 1), Rate(gzip, 1), Rate(gunzip, 1), Rate(rebuild_fast, 1))

    def rebuild_for(self, tier: str) -> Rate:
        """The rate a patch of ``tier`` rebuilds at."""
        return self.rebuild_fast if tier == "fast" else self.rebuild

    def to_dict(self) -> dict:
        return {name: getattr(self, name).to_dict()
                for name in ("link", "rebuild", "rebuild_fast", "gzip", "gunzip")}


def link_name(source) -> str:
    """The estimate a source's transfers count towards: ``link <scheme://host:port>``, or ``link local``.

    ``source`` is an opened source or a repository location (URL or folder).
    """
    base = source if isinstance(source, str) else getattr(source, "base_url", None)
    if not isinstance(base, str) or not re.match(r"https?://", base, re.I):
        return "link local"
    parts = urlsplit(base)
    scheme = parts.scheme.lower()
    try:
        port = parts.port or {"http": 80, "https": 443}.get(scheme, 0)
    except ValueError:                   # a port out of range: the transfer itself will say so
        port = 0
    host = re.sub(r"[^\x21-\x7e]", "?", (parts.hostname or "").lower())     # _NAME's characters
    return f"link {scheme}://{host}:{port}"[:MAX_NAME]


class RateBook:
    """The client's measured rates: load, record samples, save.

    Safe to share between threads (the mirror runs fetches side by side);
    between processes the last one to save wins, which loses a sample at worst.
    ``path`` None keeps the book in memory only.
    """

    def __init__(self, path: Path | None = None, sums: dict | None = None):
        self.path = None if path is None else Path(path)
        self._sums: dict[str, list] = dict(sums or {})      # name -> [amount, seconds, samples, when]
        self._lock = threading.Lock()
        self.changed = False

    # -- reading and writing --------------------------------------------------------------
    @classmethod
    def load(cls, folder) -> "RateBook":
        """The book kept in ``folder``: empty (all defaults) when missing, unreadable or bad."""
        path = Path(folder) / RATES_NAME
        try:
            data = _read_bounded(path)
        except FileNotFoundError:
            return cls(path)
        except (OSError, ValueError) as e:
            log.info("%s: ignored (%s); routes use default rates until measured again", path, e)
            return cls(path)
        return cls(path, _parse(data, path))

    def save(self) -> None:
        """Write the book (temp file and rename) when it changed; a failure is only logged.

        Rates are hints: a read-only or full cache folder must not fail a fetch.
        """
        if self.path is None or not self.changed:
            return
        from ..durable_files import atomic_write
        with self._lock:
            doc = {"format": FORMAT, "rates": {name: list(v) for name, v in sorted(self._sums.items())}}
            self.changed = False
        try:
            atomic_write(self.path, json.dumps(doc, indent=0).encode())
        except OSError as e:
            log.info("%s: cannot save measured rates (%s)", self.path, e)

    # -- samples --------------------------------------------------------------------------
    def record(self, name: str, amount: float, seconds: float) -> None:
        """Count ``amount`` bytes done in ``seconds`` towards estimate ``name``.

        Samples too short to time, or outside the sane rate range, are dropped.
        """
        if not _NAME.match(name) or not (amount > 0 and seconds >= MIN_SECONDS):
            return
        if not MIN_RATE <= amount / seconds <= MAX_RATE:
            return
        with self._lock:
            old_amount, old_seconds, samples, _ = self._sums.get(name, (0.0, 0.0, 0, 0))
            self._sums[name] = [min(MAX_AMOUNT, DECAY * old_amount + amount),
                                DECAY * old_seconds + seconds, samples + 1, int(time.time())]
            links = [n for n in self._sums if n.startswith("link ")]
            for stale in sorted(links, key=lambda n: self._sums[n][3])[:max(0, len(links) - MAX_LINKS)]:
                del self._sums[stale]
            self.changed = True

    @contextmanager
    def timing(self, name: str):
        """Time a block; it sets ``.amount`` on the yielded sample. Nothing is recorded if it raises."""
        sample = _Sample()
        started = time.monotonic()
        yield sample
        self.record(name, sample.amount, time.monotonic() - started)

    # -- what routes use --------------------------------------------------------------------
    def rate(self, name: str) -> Rate:
        with self._lock:
            entry = self._sums.get(name)
        if entry is None:
            default = DEFAULT_LINK if name.startswith("link ") else MACHINE_DEFAULTS[name]
            return Rate(default)
        return Rate(entry[0] / entry[1], entry[2])

    def rates(self, link: str) -> Rates:
        """The rates for routes over ``link`` (a :func:`link_name`)."""
        return Rates(self.rate(link), self.rate("rebuild"), self.rate("gzip"), self.rate("gunzip"),
                     self.rate("rebuild-fast"))


class _Sample:
    amount = 0


@contextmanager
def timing(book: RateBook | None, name: str):
    """:meth:`RateBook.timing`, or a block timed for nobody when there is no book."""
    if book is None:
        yield _Sample()
    else:
        with book.timing(name) as sample:
            yield sample


def _read_bounded(path: Path) -> bytes:
    """At most MAX_FILE_BYTES of a regular file, never through a symlink, never blocking on a FIFO."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC | getattr(os, "O_NOFOLLOW", 0))
    with os.fdopen(fd, "rb") as f:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise ValueError("not a regular file")
        data = f.read(MAX_FILE_BYTES + 1)
    if len(data) > MAX_FILE_BYTES:
        raise ValueError(f"larger than {MAX_FILE_BYTES:,} bytes")
    return data


def _no_constant(name: str):
    raise ValueError(f"{name} is not a number here")


def _parse(data: bytes, path: Path) -> dict:
    """The valid entries of a rates file; a malformed file gives none, a bad entry is skipped."""
    try:
        doc = json.loads(data.decode("utf-8"), parse_constant=_no_constant)
    except (UnicodeDecodeError, ValueError, RecursionError) as e:
        log.info("%s: not a rates file (%s); ignored", path, str(e).splitlines()[0][:80])
        return {}
    if not isinstance(doc, dict) or doc.get("format") != FORMAT or not isinstance(doc.get("rates"), dict):
        log.info("%s: not a rates file of format %d; ignored", path, FORMAT)
        return {}
    sums = {}
    for name, entry in doc["rates"].items():
        if _valid_entry(name, entry):
            sums[name] = [float(entry[0]), float(entry[1]), entry[2], entry[3]]
        else:
            log.info("%s: entry %.40r ignored (not a sane rate)", path, name)
    links = sorted((n for n in sums if n.startswith("link ")), key=lambda n: -sums[n][3])
    for extra in links[MAX_LINKS:]:
        del sums[extra]
    return sums


def _number(x) -> bool:
    if not isinstance(x, (int, float)) or isinstance(x, bool):
        return False
    try:
        return math.isfinite(x)
    except OverflowError:                  # an int too large for a float
        return False


def _valid_entry(name, entry) -> bool:
    if not isinstance(name, str) or not _NAME.match(name):
        return False
    if not isinstance(entry, list) or len(entry) != 4 or not all(_number(x) for x in entry):
        return False
    amount, seconds, samples, when = entry
    if not (0 < amount <= MAX_AMOUNT and seconds > 0):
        return False
    if not isinstance(samples, int) or not 1 <= samples <= 1 << 40:
        return False
    if not isinstance(when, int) or when < 0:
        return False
    return MIN_RATE <= amount / seconds <= MAX_RATE
