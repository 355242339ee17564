"""The client: transfers, routes, the fetch client, check, and lczero-client's cache.

``fetch(url)`` brings a cache up to the latest published net; ``check_repository``
verifies a whole published repository. The CLI adds both with ``add_commands``.
"""
from .cache import NetCache, default_cache_dir
from .check import CheckReport, check_repository
from .download import HttpSource, LocalSource, TransferPolicy, open_source
from ..repository.errors import DownloadError, IntegrityError, NoRouteError, RepositoryError, RepositoryIndexError
from .fetch import FetchResult, fetch
from ..repository.index import Catalogue, NetEntry, PatchEntry
from .route import Route, cheapest_route

__all__ = [
    "NetCache", "default_cache_dir", "CheckReport", "check_repository", "HttpSource",
    "LocalSource", "TransferPolicy", "open_source", "DownloadError", "IntegrityError",
    "NoRouteError", "RepositoryError", "RepositoryIndexError", "FetchResult", "fetch",
    "Catalogue", "NetEntry", "PatchEntry", "Route", "cheapest_route",
]
