"""How far a transfer may go: the settings of every download, and the byte budget of one fetch.

A transfer may take ``allowance + size / min_rate`` seconds in all (retries and
pauses included) besides ``timeout`` for connecting and for any one read; one
fetch may read ``byte_budget`` bytes over every retry, route and document.
Settings out of range are a :class:`PolicyError`, a ``ValueError`` that the
command line prints as one line.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

from ..errors import Lc0WeightsError
from ..repository.errors import DownloadError

MiB = 1 << 20
_LONGEST_WAIT = 7 * 24 * 3600.0      # beyond this a setting is a typo (and overflows socket timeouts)


class TransferStopped(Exception):
    """The policy's stop event was set: a transfer ends at its next chunk (not a failure to retry)."""


class PolicyError(Lc0WeightsError):
    """A transfer setting is out of range (a ValueError: bad input from the user)."""


@dataclass
class TransferPolicy:
    timeout: float = 30.0        # seconds to connect, and the longest wait for any one read
    retries: int = 4             # attempts after the first one
    backoff: float = 0.5         # first pause between attempts, doubled each time
    max_backoff: float = 8.0
    progress: bool = True        # show a bar when stderr is a terminal
    min_rate: float = 16 * 1024  # bytes/s a transfer must average, or it is cut at its deadline
    allowance: float = 30.0      # seconds every transfer gets on top of size / min_rate
    byte_budget: int | None = None  # bytes one fetch may read; None: 3 x the largest object + 64 MiB
    stop: object = field(default=None, compare=False, repr=False)  # a threading.Event: end transfers now

    def __post_init__(self):
        _check_seconds("timeout", self.timeout, positive=True)
        _check_seconds("backoff", self.backoff)
        _check_seconds("max_backoff", self.max_backoff)
        _check_seconds("allowance", self.allowance)
        if not _is_int(self.retries) or not 0 <= self.retries <= 100:
            raise PolicyError(f"retries must be a whole number from 0 to 100, not {self.retries!r}")
        if not _is_number(self.min_rate) or self.min_rate <= 0:
            raise PolicyError(f"min_rate must be a positive number of bytes per second, not {self.min_rate!r}")
        if self.byte_budget is not None and (not _is_int(self.byte_budget) or self.byte_budget <= 0):
            raise PolicyError(f"byte_budget must be a positive number of bytes, not {self.byte_budget!r}")

    def deadline_for(self, size: int) -> float:
        """Seconds a transfer of ``size`` bytes may take in all, retries included."""
        return self.allowance + size / self.min_rate


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value) -> bool:
    return (_is_int(value) or isinstance(value, float)) and math.isfinite(value)


def _check_seconds(name: str, value, positive: bool = False) -> None:
    if not (_is_number(value) and (value > 0 if positive else value >= 0) and value <= _LONGEST_WAIT):
        least = "more than 0" if positive else "0 or more"
        raise PolicyError(f"{name} must be a number of seconds, {least} and at most {_LONGEST_WAIT:.0f}, "
                          f"not {value!r}")


class ByteBudget:
    """Bytes one source may read during one fetch, over every retry, route and document.

    Without an explicit limit it is three times the largest object declared so
    far (by :meth:`declare` or by any object requested) plus 64 MiB for the
    documents, so a fetch can retry and fall back but never read without end.
    """

    SLACK = 64 * MiB

    def __init__(self, limit: int | None = None):
        self.explicit = limit
        self.largest = 0
        self.spent = 0

    @property
    def limit(self) -> int:
        return self.explicit if self.explicit is not None else 3 * self.largest + self.SLACK

    def declare(self, size: int) -> None:
        """Make room for an object of ``size`` bytes (call it with the largest object of the index)."""
        self.largest = max(self.largest, size)

    def cover(self, total: int) -> None:
        """Make room for reading ``total`` bytes of objects once each, with one retry of each
        (``check`` reads a whole repository); an explicit limit stays as given."""
        if self.explicit is None:
            self.explicit = 2 * total + self.SLACK

    def require(self, size: int, what: str) -> None:
        """Refuse before starting when ``size`` more bytes would not fit."""
        if self.spent + size > self.limit:
            raise DownloadError(f"{what}: {size:,} more bytes would exceed this fetch's byte budget "
                                f"({self.spent:,} of {self.limit:,} bytes already read)")

    def spend(self, size: int, what: str) -> None:
        self.spent += size
        if self.spent > self.limit:
            raise DownloadError(f"{what}: this fetch read {self.spent:,} bytes, over its byte budget of "
                                f"{self.limit:,}; the server sends more than it should")
