"""Errors of the distribution layer, named by what the caller should do next."""
from ..errors import Lc0WeightsError


class RepositoryIndexError(Lc0WeightsError):
    """The repository index is malformed or hostile: refuse it, do not use any of it."""


class DownloadError(Lc0WeightsError):
    """A transfer failed after its retries (network, server error, wrong reply)."""


class NotFoundError(DownloadError):
    """The source has no such file (HTTP 404, or no file in a repository folder)."""


class IntegrityError(Lc0WeightsError):
    """Downloaded bytes do not have the size or sha256 the index promised."""


class NoRouteError(Lc0WeightsError):
    """The wanted net cannot be reached: not in the index, or every route failed."""


class RepositoryError(Lc0WeightsError):
    """A publishing repository cannot be used (busy, unwritable, inconsistent)."""


class KeyFileError(Lc0WeightsError):
    """A key string or key file cannot be used: fix the argument or the file."""


class UntrustedError(Lc0WeightsError):
    """Repository metadata failed a trust check (signature, version, expiry, hash): refuse it."""
