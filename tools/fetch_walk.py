"""Which modules a fetch walks through, in order: the trace behind docs/ARCHITECTURE.md's walk.

Publishes a small synthetic run, then traces three fetches (a patch route from a
held net, a poll with nothing new, a full download) and prints, for each, the
modules ``lc0weights.client.fetch`` calls into. A *stay* is a run of calls into
one module; a *return* is a stay in a module the walk had already left. Reading
a field of a value in hand (``Catalogue.net``, ``Route.describe``, ``Net.id``,
a source's byte count, ``Rates.to_dict``) is not counted as a call.

    python tools/fetch_walk.py
"""
from __future__ import annotations

import logging
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from lc0weights import Net  # noqa: E402
from lc0weights.client import TransferPolicy, fetch  # noqa: E402
from lc0weights.synthetic import write_run  # noqa: E402
from service.publish import publish  # noqa: E402
from service.repository import Repository  # noqa: E402

LOOKUPS = {"net", "describe", "patch_count", "goal", "id", "raw", "bytes_downloaded", "to_dict"}
FETCH_MODULE = "lc0weights.client.fetch"


def traced_fetch(*args, **kwargs):
    """Run ``fetch`` and return (its result, the modules it called into, consecutive ones merged)."""
    walk: list[str] = []

    def profile(frame, event, _arg):
        caller = frame.f_back
        if event != "call" or caller is None or caller.f_globals.get("__name__") != FETCH_MODULE:
            return
        module = frame.f_globals.get("__name__", "")
        if frame.f_code.co_name in LOOKUPS or module == FETCH_MODULE:
            return
        if module.startswith(("lc0weights", "service")):
            name = module.split(".")[-1]
            if not walk or walk[-1] != name:
                walk.append(name)

    sys.setprofile(profile)
    try:
        return fetch(*args, **kwargs), walk
    finally:
        sys.setprofile(None)


def main() -> int:
    logging.basicConfig(level=logging.ERROR)
    policy = TransferPolicy(progress=False)
    with tempfile.TemporaryDirectory(prefix="fetch-walk-") as tmp:
        tmp = Path(tmp)
        paths = write_run(tmp / "run", count=3, seed=7)
        repo = Repository.create(tmp / "repo")
        publish(repo, paths, codec="varint-brotli", skips=(1, 2))
        cache = tmp / "cache"
        cache.mkdir()
        held = Net.load(paths[1])
        held.save(cache / f"{held.id}.pb.gz")
        for what, folder in (("patch route from a held net", cache), ("poll with nothing new", cache),
                             ("full download", tmp / "fresh")):
            result, walk = traced_fetch(str(repo.root), cache_dir=folder, policy=policy)
            returns = [m for i, m in enumerate(walk) if m in walk[:i]]
            print(f"{what} ({result.route}): {len(walk)} stays in {len(set(walk))} modules, "
                  f"{len(returns)} returns ({', '.join(sorted(set(returns))) or 'none'})")
            print("    " + " -> ".join(walk))
    return 0


if __name__ == "__main__":
    sys.exit(main())
