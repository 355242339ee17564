"""Errors of the distribution layer, named by what the caller should do next."""
from ..errors import Lc0WeightsError


class RepositoryIndexError(Lc0WeightsError):
    """The repository index is malformed or hostile: refuse it, do not use any of it."""


class DownloadError(Lc0WeightsError):
    """A transfer failed after its retries (network, server error, wrong reply)."""


class IntegrityError(Lc0WeightsError):
    """Downloaded bytes do not have the size or sha256 the index promised."""


class NoRouteError(Lc0WeightsError):
    """The wanted net cannot be reached: not in the index, or every route failed."""


class RepositoryError(Lc0WeightsError):
    """A publishing repository cannot be used (busy, unwritable, inconsistent)."""
