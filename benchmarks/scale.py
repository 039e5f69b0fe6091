"""Benchmark scaling out: extract in-process vs on a dask LocalCluster, and reading a store from
S3 (a moto server on 127.0.0.1) vs local disk.

Renders the demo dataset (``--clips`` clips of ``--seconds`` s) into a temporary folder, then:

* extract: the same clips in-process (``workers=0``, torch's default threads, after a
  warm-up extract of 8 clips so that one-time costs of the process are not counted) and with
  ``--dask local:N`` for each N of ``--workers``. ``cluster_start_s`` is the LocalCluster's
  start (spawned worker processes), ``extract_s`` the extract call on the started cluster (the
  workers load the teacher once each), ``end_to_end_s`` their sum. ``overhead_vs_in_process``
  compares ``extract_s`` with the in-process run (target at one worker: <= 1.10);
  ``end_to_end_overhead`` includes the start, which a long extract amortises.
* read: every chunk of the store's log-mel features and clip embeddings (what distill and
  compress read), from the local folder, from S3 with no cache, and from S3 with a warm
  ``--cache-dir`` (target: warm-cache throughput >= 0.8x local disk). Per open store: the open
  (a few metadata round trips), a first pass over every chunk (with a warm cache it also
  pays one metadata round trip per section: the cache namespace), then ``PASSES`` more passes
  as streaming epochs do (``*_pass_s``, the steady state, per pass); plus one distill epoch
  (open, load, train) from each.

Prints one JSON object. Usage: ``python benchmarks/scale.py [--clips 96] [--workers 1 2]``.
"""

from __future__ import annotations

import argparse
import csv
import math
import os
import platform
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import torch
from emit import emit

from eastkd.pipeline.demo.data import render_demo_dataset
from eastkd.pipeline.extract import ExtractOptions, extract
from eastkd.pipeline.extract.distributed import dask_client, extract_distributed
from eastkd.store import configure_access, open_store


def _subset_manifest(manifest: Path, n: int, out: Path) -> Path:
    with manifest.open(newline="") as fh:
        rows = list(csv.DictReader(fh))[:n]
    for r in rows:
        r["path"] = str((manifest.parent / r["path"]).resolve())
    with out.open("w", newline="") as fh:
        w = csv.DictWriter(fh, ["id", "path", "label", "split"])
        w.writeheader()
        w.writerows(rows)
    return out


def _timed(fn: Callable[[], Any]) -> tuple[float, Any]:
    t0 = time.perf_counter()
    out = fn()
    return time.perf_counter() - t0, out


def bench_extract(manifest: Path, tmp: Path, opts: ExtractOptions, n_clips: int,
                  workers: list[int]) -> dict[str, Any]:
    warm = _subset_manifest(manifest, 8, tmp / "warmup.csv")
    extract(str(warm), str(tmp / "warmup.zarr"), opts)  # one-time costs of this process
    base_s, _ = _timed(lambda: extract(str(manifest), str(tmp / "inproc.zarr"), opts))
    out: dict[str, Any] = {"in_process": {"extract_s": round(base_s, 3),
                                          "clips_per_s": round(n_clips / base_s, 2),
                                          "torch_threads": torch.get_num_threads()}}
    for n in workers:
        t0 = time.perf_counter()
        with dask_client(f"local:{n}") as client:  # what `--dask local:N` starts
            start_s = time.perf_counter() - t0
            ext_s, summary = _timed(lambda: extract_distributed(
                str(manifest), str(tmp / f"dask{n}.zarr"), opts, client))
        assert summary.written == n_clips, summary
        out[f"local:{n}"] = {
            "cluster_start_s": round(start_s, 3),
            "extract_s": round(ext_s, 3),
            "end_to_end_s": round(start_s + ext_s, 3),
            "clips_per_s": round(n_clips / ext_s, 2),
            "overhead_vs_in_process": round(ext_s / base_s, 3),
            "end_to_end_overhead": round((start_s + ext_s) / base_s, 3),
        }
    return out


PASSES = 3


def _read_all(store_path: str) -> tuple[float, float, float, int]:
    """Open the store, then read every chunk of the features and clip embeddings ``PASSES``
    times, as epochs that stream do: (open s, first pass s, later passes s, bytes a pass)."""
    t0 = time.perf_counter()
    with open_store(store_path) as s:
        key = s.section_names("embeddings")[0]
        arrays = [s.features().array("values"), s.embeddings(key).array("clip")]
        times, total = [], 0
        for _ in range(PASSES + 1):
            times.append(time.perf_counter())
            total = sum(block.nbytes for arr in arrays for _, _, block in arr.iter_blocks())
        times.append(time.perf_counter())
        return times[0] - t0, times[1] - times[0], times[-1] - times[1], total


def _distill_epoch(store_path: str, out: Path) -> float:
    from eastkd.pipeline.distill.train import distill

    s, _ = _timed(lambda: distill(store_path, None, str(out), kd="none", width=8, epochs=1,
                                  progress=False, overwrite=True))
    return s


def _s3_server() -> tuple[subprocess.Popen, str]:
    """moto's S3 server in its own process on 127.0.0.1 (as a real server would be: not
    competing with the reader for this process's interpreter lock)."""
    for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        os.environ.setdefault(k, "bench")
    os.environ.setdefault("AWS_DEFAULT_REGION", "us-east-1")
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p",
                             str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return proc, f"http://127.0.0.1:{port}"
        time.sleep(0.1)
    proc.kill()
    raise RuntimeError("the moto server did not start")


def bench_read(store: Path, tmp: Path, repeats: int) -> dict[str, Any]:
    server, endpoint = _s3_server()
    try:
        import s3fs

        fs = s3fs.S3FileSystem(endpoint_url=endpoint)
        fs.mkdir("bench")
        fs.put(str(store), "bench/store.zarr", recursive=True)
        url, cache = "s3://bench/store.zarr", str(tmp / "cache")
        runs: dict[str, list[tuple[float, float, float, int]]] = {
            "local": [], "s3_no_cache": [], "s3_warm_cache": []}
        for _ in range(repeats):
            configure_access()
            runs["local"].append(_read_all(str(store)))
            configure_access({"endpoint_url": endpoint})
            runs["s3_no_cache"].append(_read_all(url))
            configure_access({"endpoint_url": endpoint}, cache_dir=cache)
            _read_all(url)  # fills the cache on the first repeat
            runs["s3_warm_cache"].append(_read_all(url))
        opens = {k: min(r[0] for r in v) for k, v in runs.items()}
        first = {k: min(r[1] for r in v) for k, v in runs.items()}
        best = {k: min(r[2] for r in v) / PASSES for k, v in runs.items()}
        nbytes = runs["local"][0][3]
        configure_access()
        _distill_epoch(str(store), tmp / "run-warmup")  # one-time costs (imports, allocator)
        epochs: dict[str, list[float]] = {"local": [], "s3": []}
        for _ in range(2):  # alternating, best of two: the training itself dominates and varies
            configure_access()
            epochs["local"].append(_distill_epoch(str(store), tmp / "run-local"))
            configure_access({"endpoint_url": endpoint}, cache_dir=cache)
            epochs["s3"].append(_distill_epoch(url, tmp / "run-s3"))
        configure_access()
        local_epoch, s3_epoch = min(epochs["local"]), min(epochs["s3"])
        return {
            "bytes_read": nbytes,
            "chunks_per_array": math.ceil(len(open_store(str(store)).items)
                                          / open_store(str(store)).features()
                                          .array("values").chunks[0]),
            **{f"{k}_open_s": round(v, 4) for k, v in opens.items()},
            **{f"{k}_first_pass_s": round(v, 4) for k, v in first.items()},
            **{f"{k}_pass_s": round(v, 4) for k, v in best.items()},
            **{f"{k}_MB_per_s": round(nbytes / v / 1e6, 1) for k, v in best.items()},
            "s3_warm_cache_vs_local": round(best["local"] / best["s3_warm_cache"], 3),
            "s3_no_cache_vs_local": round(best["local"] / best["s3_no_cache"], 3),
            "s3_warm_cache_first_pass_vs_local": round(first["local"]
                                                       / first["s3_warm_cache"], 3),
            "distill_1_epoch_local_s": round(local_epoch, 3),
            "distill_1_epoch_s3_warm_cache_s": round(s3_epoch, 3),
            "distill_s3_vs_local": round(local_epoch / s3_epoch, 3),
            "note": "distill runs are one short epoch: the S3 run also pays a fixed cost of "
                    "metadata round trips per store open (never cached), which longer runs "
                    "amortise; *_pass_s is the steady-state chunk read",
        }
    finally:
        server.terminate()
        server.wait(timeout=30)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--teacher", default="crepe-tiny", choices=["crepe", "crepe-tiny"])
    ap.add_argument("--clips", type=int, default=96)
    ap.add_argument("--seconds", type=float, default=2.0)
    ap.add_argument("--chunk-items", type=int, default=8)
    ap.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--parts", nargs="+", default=["extract", "read"],
                    choices=["extract", "read"])
    ap.add_argument("--out", default=None, help="also write the JSON here")
    args = ap.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="eastkd-scale-"))
    try:
        full = render_demo_dataset(tmp / "demo", clips_per_class=math.ceil(args.clips / 5),
                                   seconds=args.seconds, seed=0, progress=False)
        manifest = _subset_manifest(full, args.clips, tmp / "bench.csv")
        opts = ExtractOptions(teacher=args.teacher, workers=0, device="cpu", progress=False,
                              chunk_items=args.chunk_items, batch_size=args.chunk_items)
        result = {
            "machine": "2-core CPU VM shared with other jobs",
            "cpu": platform.processor() or platform.machine(),
            "cores": os.cpu_count(),
            "teacher": args.teacher, "clips": args.clips, "clip_seconds": args.seconds,
            "chunk_items": args.chunk_items,
        }
        if "extract" in args.parts:
            result["extract"] = bench_extract(manifest, tmp, opts, args.clips, args.workers)
        else:
            extract(str(manifest), str(tmp / "inproc.zarr"), opts)
        if "read" in args.parts:
            result["read"] = bench_read(tmp / "inproc.zarr", tmp, args.repeats)
        emit(result, args.out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
