"""Encoding a new net's candidate patches side by side, in worker processes.

Every net a candidate needs is decompressed once into a raw file in a
scratch folder of ``.state``; workers map those files read-only, so the
target and the bases are in memory once (page cache, shared by every
worker) however many workers read them. A worker holds privately only its
patch and a few layers of work: it writes the patch to the scratch folder,
checks it by rebuilding the net into a file (hashed on the way, never held
whole), and hands back the patch's size and hash. The patch bytes do not
depend on the worker count or on threads (the coder is deterministic), so a
parallel publish writes exactly what a sequential one does.

With ``workers=1`` the jobs run in this process, one after another.
"""
from __future__ import annotations

import hashlib
import mmap
import multiprocessing
import os
import shutil
import time
from concurrent.futures import Future, ProcessPoolExecutor, as_completed
from dataclasses import dataclass, replace
from pathlib import Path

from lc0weights import encodings as enc
from lc0weights import gzipio
from lc0weights.console import counting_bar
from lc0weights.errors import NetFormatError, VerificationError
from lc0weights.net import GZIP_MAGIC, MAGIC, Layer, Net
from lc0weights.patching.decode import apply_patch_to_file
from lc0weights.patching.limits import MAX_RESULT_SIZE
from lc0weights.patching.encode import PatchTooLarge, make_patch
from lc0weights.patching.measure import max_error
from lc0weights.wire import find_layers, read_magic

SCRATCH = "publishing"


class MappedNet(Net):
    """A net whose raw bytes are a read-only map of a raw file (shared, never copied)."""

    def __init__(self, path):
        with open(path, "rb") as f:
            self.raw = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
        self.source = str(path)
        if read_magic(self.raw) != MAGIC:
            raise NetFormatError(f"{path}: not an lc0 net (no 0x1c0 magic at the start)")
        self.layers = [Layer(i, s.path, s, enc.effective(s.encoding)) for i, s in enumerate(find_layers(self.raw))]
        self._id = None
        self._paths = None


@dataclass(frozen=True)
class Job:
    """One candidate patch: files are raw nets in the scratch folder."""
    key: str                      # unique within a publish; names the scratch files
    target: str
    base: str | None
    history: str | None = None
    tolerance: float | None = None
    codec: str | None = None
    tier: str = "cm"              # the coding tier (lc0weights.patching.encode.TIERS)
    max_bytes: int | None = None  # abandon the patch once it passes this many bytes
    threads: int = 1              # layer threads inside this one patch
    weight: int = 1               # relative cost, to start the dearest jobs first
    # Measure the lossy rebuild against the tolerance. A job may skip it only when its patch is
    # kept just if it rebuilds the very net (same id) another, checked, job rebuilds.
    check_error: bool = True


@dataclass(frozen=True)
class Encoded:
    key: str
    patch: str | None             # scratch file of the patch; None when it passed max_bytes
    size: int = 0
    sha256: str = ""
    result: str = ""              # id of the net the patch rebuilds
    rebuilt: str | None = None    # scratch raw file of that net (lossy patches only)
    cpu_seconds: float = 0.0      # the job's CPU, encode and check (its process runs one job at a time)


class Scratch:
    """The publish's scratch folder: raw nets by id, patches and rebuilt nets by job key."""

    def __init__(self, state_dir: Path):
        self.root = Path(state_dir) / SCRATCH
        shutil.rmtree(self.root, ignore_errors=True)      # what a killed publish left
        self.root.mkdir(parents=True)

    def raw_net(self, net_id: str, source: Path) -> str:
        """The raw file of net ``net_id``, decompressed from ``source`` (a .pb.gz or raw file) once."""
        path = self.root / f"{net_id}.raw"
        if not path.exists():
            with open(source, "rb") as f:
                gzipped = f.read(2) == GZIP_MAGIC
                f.seek(0)
                # ISA-L when installed (gzipio): this is the publisher's serial part, once per base.
                inflater = gzipio.Inflater(MAX_RESULT_SIZE, hash_raw=False) if gzipped else None
                digest = hashlib.sha256()
                try:
                    with open(path, "wb") as out:       # scratch: wiped at every publish, never fsynced
                        for block in iter(lambda: f.read(1 << 20), b""):
                            for piece in (inflater.feed(block) if inflater else (block,)):
                                digest.update(piece)
                                out.write(piece)
                    if inflater is not None:
                        inflater.finish()
                except (ValueError, gzipio.TooLarge, *gzipio.GzipError) as e:
                    os.unlink(path)
                    raise VerificationError(f"{source}: {e}; the repository is damaged") from None
                if digest.hexdigest() != net_id:
                    os.unlink(path)
                    raise VerificationError(f"{source}: holds net {digest.hexdigest()[:16]}..., "
                                            f"not {net_id[:16]}...; the repository is damaged")
        return str(path)

    def put_raw_net(self, net_id: str, raw) -> str:
        """The raw file of net ``net_id`` written from ``raw``, bytes already checked to be
        that net (the net being published): not read back from its gzip again."""
        path = self.root / f"{net_id}.raw"
        if not path.exists():
            with open(path, "wb") as out:
                out.write(raw)
        return str(path)

    def close(self) -> None:
        shutil.rmtree(self.root, ignore_errors=True)


def encode_job(job: Job) -> Encoded:
    """Make one candidate patch into the scratch folder, and check that it rebuilds its net."""
    started = time.process_time()
    done = _encode_job(job)
    return replace(done, cpu_seconds=time.process_time() - started)


def _encode_job(job: Job) -> Encoded:
    scratch = Path(job.target).parent
    target = MappedNet(job.target)
    base = MappedNet(job.base) if job.base else None
    history = MappedNet(job.history) if job.history else None
    try:
        data = make_patch(base, target, job.tolerance, codec=job.codec, history=history,
                          workers=job.threads, verify=False, max_bytes=job.max_bytes, tier=job.tier)
    except PatchTooLarge:
        return Encoded(job.key, None)
    patch_file = scratch / f"{job.key}.lc0patch"
    patch_file.write_bytes(data)
    size, sha = len(data), hashlib.sha256(data).hexdigest()
    del data
    rebuilt_file = scratch / f"{job.key}.rebuilt"
    result = apply_patch_to_file(base, patch_file, rebuilt_file, history=history, workers=job.threads)
    if job.tolerance is None:
        os.unlink(rebuilt_file)
        if result != target.id:
            raise VerificationError(f"internal error: the patch {job.key} rebuilds {result[:16]}..., "
                                    f"not the target {target.id[:16]}...")
        return Encoded(job.key, str(patch_file), size, sha, result)
    error = max_error(MappedNet(rebuilt_file), target) if job.check_error else 0.0
    if not error <= job.tolerance:
        raise VerificationError(f"internal error: the patch {job.key} rebuilds weights {error} from the "
                                f"target, over the tolerance {job.tolerance}")
    if not job.check_error:
        os.unlink(rebuilt_file)
    return Encoded(job.key, str(patch_file), size, sha, result, str(rebuilt_file) if job.check_error else None)


def default_workers() -> int:
    return max(1, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1)


def run_jobs(jobs: list[Job], workers: int | None = None) -> list[Encoded]:
    """Every job's result, in the jobs' order; ``workers`` processes (default: every core).

    Each job's layer threads are set here to the cores over the processes
    (``threads`` in the jobs given is ignored), so processes times threads
    stays about the core count.
    """
    cores = default_workers()
    processes = max(1, min(workers or cores, len(jobs)))
    threads = max(1, cores // processes)
    jobs = [_with_threads(job, threads) for job in jobs]
    if processes == 1:
        return list(counting_bar(map(encode_job, map(_ready, jobs)), len(jobs), "encoding", unit="patch"))
    dearest_first = sorted(range(len(jobs)), key=lambda i: -jobs[i].weight)
    pool = _pool(processes)
    try:
        # Each job goes as soon as the files it names are read: the first ones run while the
        # publisher still reads the others.
        futures = {i: pool.submit(encode_job, _ready(jobs[i])) for i in dearest_first}
        # The bar counts patches as they finish; results still come back in the jobs' order.
        for _ in counting_bar(as_completed(futures.values()), len(jobs), "encoding", unit="patch"):
            pass
        return [futures[i].result() for i in range(len(jobs))]
    except BaseException:
        _close_pool()                 # a failed or interrupted publish leaves no worker running
        raise


_POOL: dict = {}


def _pool(processes: int) -> ProcessPoolExecutor:
    """Worker processes kept from one net to the next (starting one costs seconds: imports, kernels)."""
    if _POOL.get("processes") != processes:
        _close_pool()
        context = multiprocessing.get_context("forkserver")
        context.set_forkserver_preload([__name__])
        _POOL.update(processes=processes, pool=ProcessPoolExecutor(processes, mp_context=context))
    return _POOL["pool"]


def _close_pool() -> None:
    pool = _POOL.pop("pool", None)
    _POOL.pop("processes", None)
    if pool is not None:
        pool.shutdown(wait=True, cancel_futures=True)


def _with_threads(job: Job, threads: int) -> Job:
    return Job(**{**job.__dict__, "threads": threads})


def _ready(job: Job) -> Job:
    """``job`` with each of its files that is still being read (a Future of its path) read."""
    read = {name: getattr(job, name).result() for name in ("target", "base", "history")
            if isinstance(getattr(job, name), Future)}
    return replace(job, **read) if read else job


def start_workers(workers: int | None, jobs: int) -> None:
    """Start the worker processes :func:`run_jobs` will use for ``jobs`` jobs, without waiting:
    their start-up (imports, compiled kernels) then overlaps the publisher's reading."""
    processes = max(1, min(workers or default_workers(), jobs))
    if processes > 1:
        pool = _pool(processes)
        for _ in range(processes):
            pool.submit(os.getpid)
