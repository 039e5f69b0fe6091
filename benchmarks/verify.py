"""Benchmark ``eastkd verify`` against the disk's sequential read speed, in the same run.

Builds a synthetic store through the store API shaped like a CREPE store of 2 s clips (log-mel
features N x 96 x 201 and clip embeddings N x 2048, float16, values like real ones so that they
compress like real ones), then measures

* ``raw_read``  reading every file of the store sequentially, 8 MB at a time (what ``cat`` does):
                the disk's sequential read speed for exactly these bytes;
* ``verify``    ``eastkd.store.verify.verify()`` on the same store (the default ``verify``:
                every chunk read and checksummed on its raw bytes, the statuses decoded);
* ``verify_content``  ``verify --deep``: every data chunk also decoded and hashed against
                the content digest recorded when it was written (no target: decoding and
                sha256 cost CPU; reported for what it costs);

each with the store's pages dropped from the page cache first (``posix_fadvise(DONTNEED)`` after
``sync``; "cold-ish": the VM's host may still cache). Both are reported as bytes on disk per
second; the target is verify >= 80 % of raw_read. Runs alternate; the median of the per-pair
ratios is reported (the machine is shared, single runs are noisy).

    python benchmarks/verify.py [--items 5000] [--backend zarr|hdf5] [--repeat 3]

Prints one JSON document on stdout (progress goes to stderr).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from typing import Any

import numpy as np

from eastkd.store import OK, ArraySpec, ItemsTable, create_store
from eastkd.store.verify import verify

FRAMES = 201  # 2 s at hop 160, 16 kHz
DIM = 2048  # CREPE (full)


def _items(n: int) -> ItemsTable:
    return ItemsTable(
        ids=[f"clip-{i:07d}" for i in range(n)], paths=[f"/data/{i}.wav" for i in range(n)],
        sha256=["%064x" % i for i in range(n)], durations=np.full(n, 2.0, np.float32),
        splits=[("train", "valid", "test")[i % 3] for i in range(n)],
        labels=np.eye(5, dtype=np.uint8)[np.arange(n) % 5], class_names=list("abcde"))


def build(path: str, n: int, seed: int = 0) -> None:
    """A store with features and embeddings written block by block, interleaved as extract
    writes them."""
    rng = np.random.default_rng(seed)
    store = create_store(path, _items(n), {"name": "synthetic"})
    feat = store.require_section("features", "logmel",
                                 {"values": ArraySpec((96, FRAMES), "float16")}, {}, {"x": 1})
    emb = store.require_section("embeddings", "t", {"clip": ArraySpec((DIM,), "float16")},
                                {}, {"x": 1})
    # blocks of whole chunks of every array, in the order extract's writer writes them
    step = max(feat.unit, emb.unit)
    for start in range(0, n, step):
        for lo in range(start, min(n, start + step), feat.unit):
            k = min(feat.unit, n - lo)
            # log-mel like values: smooth in time, a few dB of noise
            base = rng.normal(-4, 2, (k, 96, 1)).astype(np.float32)
            mel = (base + rng.normal(0, 0.5, (k, 96, FRAMES))).astype(np.float16)
            feat.write_block(lo, {"values": mel}, np.full(k, OK, np.uint8))
        for lo in range(start, min(n, start + step), emb.unit):
            k = min(emb.unit, n - lo)
            emb.write_block(lo, {"clip": rng.normal(0, 1, (k, DIM)).astype(np.float16)},
                            np.full(k, OK, np.uint8))
    store.close()


def _files(path: str) -> list[str]:
    if os.path.isfile(path):
        return [path]
    return sorted(os.path.join(r, f) for r, _, fs in os.walk(path) for f in fs)


def drop_cache(path: str) -> None:
    os.sync()
    for f in _files(path):
        fd = os.open(f, os.O_RDONLY)
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def raw_read(path: str) -> tuple[float, int]:
    """Seconds to read every byte of the store's files sequentially, and the byte count."""
    t0 = time.perf_counter()
    total = 0
    for f in _files(path):
        with open(f, "rb", buffering=0) as fh:
            while chunk := fh.read(8 << 20):
                total += len(chunk)
    return time.perf_counter() - t0, total


def timed_verify(path: str, deep: bool = False) -> tuple[float, dict[str, Any]]:
    t0 = time.perf_counter()
    report = verify(path, progress=False, deep=deep)
    seconds = time.perf_counter() - t0
    assert not report.damaged, report.findings
    return seconds, {"chunks": report.chunks, "arrays": report.arrays,
                     "bytes_decoded": report.bytes_decoded}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--items", type=int, default=5000)
    ap.add_argument("--backend", choices=["zarr", "hdf5"], default="zarr")
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--dir", default=None, help="where to build the store [default: a temp dir]")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        path = os.path.join(tmp, "bench." + ("zarr" if args.backend == "zarr" else "h5"))
        t0 = time.perf_counter()
        build(path, args.items)
        print(f"built {path} in {time.perf_counter() - t0:.1f} s", file=sys.stderr)
        raw_s, verify_s, content_s, info = [], [], [], {}
        for r in range(args.repeat):
            drop_cache(path)
            s, nbytes = raw_read(path)
            raw_s.append(s)
            drop_cache(path)
            v, info = timed_verify(path)
            verify_s.append(v)
            drop_cache(path)
            content_s.append(timed_verify(path, deep=True)[0])
            print(f"run {r}: raw {nbytes / s / 1e6:.0f} MB/s, verify "
                  f"{nbytes / v / 1e6:.0f} MB/s, verify --deep (content digests) "
                  f"{nbytes / content_s[-1] / 1e6:.0f} MB/s", file=sys.stderr)
        raw, ver = statistics.median(raw_s), statistics.median(verify_s)
        ratios = [r / v for r, v in zip(raw_s, verify_s)]
        result = {
            "benchmark": "verify",
            "machine": f"{os.cpu_count()}-core CPU VM (no other jobs running)",
            "platform": platform.platform(),
            "backend": args.backend,
            "items": args.items,
            "bytes_on_disk": nbytes,
            "files": len(_files(path)),
            **info,
            "raw_read_seconds": [round(x, 3) for x in raw_s],
            "verify_seconds": [round(x, 3) for x in verify_s],
            "raw_read_MB_per_s": round(nbytes / raw / 1e6, 1),
            "verify_MB_per_s": round(nbytes / ver / 1e6, 1),
            "verify_vs_raw_read_per_run": [round(x, 3) for x in ratios],
            "verify_vs_raw_read": round(statistics.median(ratios), 3),
            "target": ">= 0.80 (verify: checksums on raw bytes)",
            "verify_content_seconds": [round(x, 3) for x in content_s],
            "verify_content_MB_per_s": round(nbytes / statistics.median(content_s) / 1e6, 1),
            "verify_content_vs_raw_read": round(statistics.median(
                [r / c for r, c in zip(raw_s, content_s)]), 3),
        }
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
