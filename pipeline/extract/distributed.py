"""Extract on a ``dask.distributed`` cluster: one task per unit (whole chunks), written by the
worker straight into the store.

The client resolves the dataset and creates the store with its items table (once), then asks
one worker to create the sections (that needs the teacher's shapes) and list the pending
units. Every pending unit becomes a task that decodes its clips, runs the teacher (on the
worker's GPU when it has one: the workers on a machine with several GPUs take one each, in
turn; a loaded teacher is kept per worker process) and writes its own
chunks: data first, status last, exactly as an in-process run does, so the result is
bit-identical to it and a killed worker loses nothing finished. A task whose worker dies is run
again by dask on another worker (``distributed.scheduler.allowed-failures``); a task that fails
with an exception is retried ``retries`` times. The client only schedules and reports progress.

``--dask local:N`` starts a :class:`~distributed.LocalCluster` of N single-threaded worker
processes on this machine, started with ``spawn`` (forking after torch has started thread pools
can deadlock); any other value is the address of a running scheduler, whose workers must reach
the dataset's audio and the store (a shared folder, or an object-store URL).
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
from dataclasses import dataclass, replace
from typing import Any, Iterator

from eastkd.pipeline.datasets.base import DatasetSpec
from eastkd.pipeline.datasets.manifest import resolve_dataset
from eastkd.pipeline.extract import (
    FEATURES,
    ExtractOptions,
    ExtractSummary,
    extract_into,
    open_or_create,
)
from eastkd.progress import Progress, progress_bar
from eastkd.store import (
    PENDING,
    AccessOptions,
    EastkdError,
    access_options,
    concurrent_writers,
    configure_access,
    open_store,
    store_location,
)

RETRIES = 2
_teachers: dict[tuple[str, str, str], Any] = {}  # per worker process: loaded teachers


@dataclass(frozen=True)
class Cluster:
    """What ``--dask`` asked for: ``local:N`` (N worker processes here) or an address."""

    address: str | None
    n_workers: int = 0

    @classmethod
    def parse(cls, text: str) -> "Cluster":
        text = text.strip()
        if text.startswith("local"):
            n = text.partition(":")[2] or str(os.cpu_count() or 1)
            if not n.isdigit() or int(n) < 1:
                raise EastkdError(f"--dask {text!r}: expected local:N with N >= 1, e.g. local:4")
            return cls(None, int(n))
        if not text:
            raise EastkdError("--dask: expected local:N or a scheduler address "
                              "(tcp://host:8786)")
        return cls(text)


@contextlib.contextmanager
def dask_client(cluster: Any) -> Iterator[Any]:
    """A connected :class:`distributed.Client`, with its LocalCluster for ``local:N``
    (``cluster`` may also be a Client already connected, which is used as it is)."""
    import dask
    from distributed import Client, LocalCluster

    if isinstance(cluster, Client):
        yield cluster
        return
    spec = Cluster.parse(cluster) if isinstance(cluster, str) else cluster
    if spec.address is not None:
        try:
            client = Client(spec.address)  # waits distributed.comm.timeouts.connect
        except OSError as e:
            raise EastkdError(f"--dask {spec.address}: no scheduler answers there ({e}); "
                              "start one (`dask scheduler`) or use --dask local:N") from e
        with quiet_dask(logging.WARNING), client:
            yield client
        return
    with quiet_dask(logging.ERROR), dask.config.set(local_cluster_config(spec.n_workers)):
        with LocalCluster(n_workers=spec.n_workers, threads_per_worker=1, processes=True,
                          dashboard_address=":0") as lc, Client(lc) as client:
            yield client


@contextlib.contextmanager
def quiet_dask(level: int) -> Iterator[None]:
    """dask's own messages below ``level`` are dropped while the cluster runs: its INFO lines
    (scheduler, nanny, connections) are not the user's business, nor, for a local cluster,
    the nanny's warning when it stops a worker slow to exit (errors still show)."""
    logger = logging.getLogger("distributed")
    before = logger.level
    logger.setLevel(level)
    try:
        yield
    finally:
        logger.setLevel(before)


def worker_setup() -> None:
    """What a task does first in a worker process: progress bars there use a thread lock, not
    tqdm's default multiprocessing lock, a semaphore that the resource tracker reports as
    "leaked" when the nanny stops the worker."""
    from tqdm import tqdm as base_tqdm  # every tqdm class finds its lock here

    base_tqdm.set_lock(threading.RLock())


def local_cluster_config(n_workers: int) -> dict[str, Any]:
    """dask settings for a LocalCluster of torch workers: spawned processes (forking after
    torch started its thread pools can deadlock), each with its share of this machine's cores
    for OpenMP/MKL (dask's default of one thread each would slow the teacher down)."""
    threads = str(max(1, (os.cpu_count() or 1) // n_workers))
    env = "distributed.nanny.pre-spawn-environ"
    return {"distributed.worker.multiprocessing-method": "spawn",
            f"{env}.OMP_NUM_THREADS": threads, f"{env}.MKL_NUM_THREADS": threads,
            f"{env}.OPENBLAS_NUM_THREADS": threads}


def extract_distributed(dataset: str | DatasetSpec, store_path: str, opts: ExtractOptions,
                        cluster: Any, retries: int = RETRIES) -> ExtractSummary:
    """:func:`eastkd.pipeline.extract.extract` with its units run as tasks on ``cluster``
    (``local:N``, a scheduler address, a :class:`Cluster` or a connected Client)."""
    if not concurrent_writers(store_path):
        raise EastkdError("--dask needs a Zarr store (HDF5 has no safe concurrent writers)")
    if opts.shard != (0, 1):
        raise EastkdError("--dask and --shard are two ways to split the work: use one")
    if isinstance(cluster, str):
        cluster = Cluster.parse(cluster)
    spec = resolve_dataset(dataset) if isinstance(dataset, str) else dataset
    t0 = time.perf_counter()
    access = access_options()
    with dask_client(cluster) as client:
        # the items table: once, here (hashing with this machine's decode workers)
        open_or_create(store_path, spec, opts.progress, opts.resolved_workers(),
                       opts.rehash, opts.allow_duplicates).close()
        where = _placements(client)
        # tasks decode in their own process (a dask worker cannot start DataLoader workers)
        # and never rehash: the client has updated the items table
        task_opts = replace(opts, progress=False, workers=0, rehash=False, units=[])
        location = store_location(store_path)  # workers may run in other folders
        prep = client.submit(_run_units, location, task_opts, access, where, pure=False,
                             retries=retries).result()
        key, todo = prep["key"], prep["units"]
        futures = [client.submit(_run_units, location, replace(task_opts, units=[u]), access,
                                 where, pure=False, retries=retries, key=f"extract-unit-{u}")
                   for u in todo]
        done = _gather(client, futures, prep["pending"], key, opts.progress)
    with open_store(store_path) as store:
        emb = store.embeddings(key)
        skipped, pending_now = emb.skipped(), int((emb.status() == PENDING).sum())
    # counted from the store: a worker killed after a unit's status was written never reports
    # it, and the unit's retry finds it done
    skipped_now = sum(d.skipped_now for d in done)
    return ExtractSummary(
        store=store_path, key=key, teacher=prep["teacher"], items=prep["items"],
        written=prep["pending"] - pending_now - skipped_now, skipped_now=skipped_now,
        already_done=prep["items"] - prep["pending"], seconds=time.perf_counter() - t0,
        audio_seconds=sum(d.audio_seconds for d in done),
        forward_seconds=sum(d.forward_seconds for d in done), skipped=skipped,
    )


def _gather(client: Any, futures: list[Any], pending: int, key: str,
            progress: Progress) -> list[ExtractSummary]:
    """Wait for every unit, with a progress bar; on the first failure cancel the rest."""
    from distributed import KilledWorker, as_completed

    done: list[ExtractSummary] = []
    bar = progress_bar(total=pending, desc=f"extract {key} (dask)", unit="clip",
                       progress=progress)
    try:
        for fut in as_completed(futures):
            try:
                summary = fut.result()  # re-raises the task's EastkdError here
            except KilledWorker as e:
                raise EastkdError(
                    f"{fut.key}: its workers died every time it ran ({e}); check the workers' "
                    "memory, then rerun the same command (finished units are kept)") from None
            done.append(summary)
            bar.update(summary.written + summary.skipped_now)
    except BaseException:
        client.cancel(futures)
        raise
    finally:
        bar.close()
    return done


@dataclass(frozen=True)
class Placement:
    """A worker's share of its machine: torch threads, and its slot among the workers on that
    machine (slot ``i`` runs on GPU ``i`` modulo the GPUs there)."""

    threads: int
    slot: int


def _placements(client: Any) -> dict[str, Placement]:
    return placements(client.scheduler_info(n_workers=-1)["workers"], client.run(os.cpu_count))


def placements(workers: dict[str, dict[str, Any]],
               cores: dict[str, int | None]) -> dict[str, Placement]:
    """Each worker's :class:`Placement` (by address), from the scheduler's worker info (their
    ``host``) and each worker's core count: a machine's cores are shared by its workers, and
    its workers are numbered in address order."""
    by_host: dict[str, list[str]] = {}
    for addr in sorted(workers):
        by_host.setdefault(workers[addr]["host"], []).append(addr)
    out = {}
    for addrs in by_host.values():
        for slot, addr in enumerate(addrs):
            out[addr] = Placement(max(1, (cores.get(addr) or 1) // len(addrs)), slot)
    return out


def worker_device(name: str, slot: int) -> str:
    """The device of the worker in ``slot``: with ``cuda`` or ``auto`` on a machine with
    several GPUs, its own one (``cuda:{slot % count}``), so that workers spread over them;
    otherwise ``name`` as given (an explicit ``cuda:K`` included)."""
    import torch

    if name in ("cuda", "auto") and torch.cuda.is_available() and torch.cuda.device_count() > 1:
        return f"cuda:{slot % torch.cuda.device_count()}"
    return name


def _run_units(store_path: str, opts: ExtractOptions, access: AccessOptions,
               where: dict[str, Placement]) -> Any:
    """A task: fill ``opts.units`` of the store (``[]``: create the sections and report the
    pending units instead)."""
    import torch
    from distributed import get_worker

    worker_setup()
    configure_access(access.storage_options, access.cache_dir)
    place = where.get(get_worker().address, Placement(1, 0))
    torch.set_num_threads(place.threads)
    teacher, device = _teacher(replace(opts, device=worker_device(opts.device, place.slot)))
    with open_store(store_path, "r+") as store:
        summary = extract_into(store, store_path, teacher, device, opts)
        if opts.units:
            return summary
        return _pending_units(store, summary, teacher.name)


def _pending_units(store: Any, summary: ExtractSummary, teacher: str) -> dict[str, Any]:
    """Units (indices of whole-chunk blocks of rows) with any item still pending."""
    feat, emb = store.features(FEATURES), store.embeddings(summary.key)
    unit = max(feat.unit, emb.unit) if summary.items else 0
    pending = (feat.status() == PENDING) | (emb.status() == PENDING)
    units = [u for u, s in enumerate(range(0, summary.items, unit or 1))
             if pending[s:s + unit].any()] if unit else []
    return {"key": summary.key, "teacher": teacher, "items": summary.items, "unit": unit,
            "units": units, "pending": int(pending.sum())}


def _teacher(opts: ExtractOptions) -> tuple[Any, Any]:
    """The loaded teacher and device of this worker process (loaded once, then reused)."""
    import json

    import torch

    from eastkd.pipeline.core.device import resolve_device
    from eastkd.pipeline.teachers.loading import load_teacher

    key = (opts.teacher, json.dumps(opts.teacher_options, sort_keys=True, default=str),
           opts.device)
    if key not in _teachers:
        teacher = load_teacher(opts.teacher, opts.teacher_options)
        device = resolve_device(opts.device)
        if device.type == "cuda" and device.index is not None:
            torch.cuda.set_device(device)  # events and pinned copies on the teacher's GPU
        teacher.to(device)
        teacher.model.eval()
        _teachers[key] = (teacher, device)
    return _teachers[key]
