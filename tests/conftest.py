"""Shared fixtures: the real nets in ../shared/data, patches and published repositories made from
them once per session, and helpers to build synthetic ones.

Session fixtures are read-only: a test that changes a repository copies it first (``tmp_path``).
"""
from __future__ import annotations

import functools
import os
from pathlib import Path

import pytest

from lc0weights import Net

# The helper modules assert too (repo_fixtures.assert_consistent): rewrite them as pytest does tests.
pytest.register_assert_rewrite("repo_fixtures")

SHARED = Path(os.environ.get("LC0WEIGHTS_SHARED", Path(__file__).resolve().parents[2] / "shared"))
DATA = SHARED / "data"
RUN = DATA / "runs" / "maia-distill"
NETS = DATA / "nets"


def run_paths() -> list[Path]:
    return sorted(RUN.glob("step-*.pb.gz"))


def shared_net_paths() -> list[Path]:
    return sorted(NETS.glob("*.pb.gz")) + run_paths()


@functools.lru_cache(maxsize=None)
def load(path) -> Net:
    return Net.load(path)


@pytest.fixture(scope="session")
def run_nets() -> list[Net]:
    paths = run_paths()
    if not paths:
        pytest.fail(f"shared training run not found under {RUN}")
    return [load(p) for p in paths]


# -- patches between the run's first two nets (bytes: nothing can change them) ------------------

@pytest.fixture(scope="session")
def first_step_patch(run_nets) -> bytes:
    """The lossless patch from the run's net 0 to net 1, with the default codec choice."""
    from lc0weights import make_patch
    return make_patch(run_nets[0], run_nets[1], verify=False)


@pytest.fixture(scope="session")
def first_step_varint_patch(run_nets) -> bytes:
    """The same step coded with the baseline codec varint-brotli only."""
    from lc0weights import make_patch
    return make_patch(run_nets[0], run_nets[1], codec="varint-brotli", verify=False)


# -- published repositories of the run's first nets --------------------------------------------

def _published(tmp_path_factory, count: int, skips):
    from repo_fixtures import publish_run        # (repo_fixtures imports this module)
    return publish_run(tmp_path_factory.mktemp(f"published-{count}") / "repo", count=count, skips=skips)


@pytest.fixture
def held_cache(tmp_path, run_nets):
    """A client cache (``tmp_path / "cache"``) holding the run's net 1: from there the cheapest
    route to net 2, by bytes, is one patch."""
    from repo_fixtures import copy_into_cache
    cache = tmp_path / "cache"
    copy_into_cache(run_paths()[1], cache, run_nets[1].id)
    return cache


@pytest.fixture(scope="session")
def published_two(tmp_path_factory):
    """An unsigned repository of the run's first 2 nets, with the patch between them."""
    return _published(tmp_path_factory, 2, (1,))


@pytest.fixture(scope="session")
def published_three(tmp_path_factory):
    """An unsigned repository of the run's first 3 nets, with patches from 1 and 2 nets back."""
    return _published(tmp_path_factory, 3, (1, 2))


@pytest.fixture(scope="session")
def published_three_in_steps(tmp_path_factory):
    """An unsigned repository of the run's first 3 nets, with patches from the net before only."""
    return _published(tmp_path_factory, 3, (1,))
