"""Shared fixtures: the real nets in ../shared/data and helpers to build synthetic ones."""
from __future__ import annotations

import functools
import os
from pathlib import Path

import pytest

from lc0weights import Net

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
