"""Benchmark eastkd's streaming PCA against scikit-learn on the same stored embeddings.

Compares fit time (reading from the store included) and peak memory of

* ``eastkd``        PCACompressor: one pass over the store's chunks, float64 scatter matrix, eigh;
* ``sklearn_ipca``  IncrementalPCA.partial_fit over the same chunks (batch_size = chunk);
* ``sklearn_pca``   PCA (svd_solver="auto") on the whole array read into memory;
* ``sklearn_pca_full`` PCA (svd_solver="full"): the exact reference for the subspace angle;

each fitted in its own subprocess, so that peak RSS (``ru_maxrss``) is that method's alone. It
also reports the largest principal angle between eastkd's subspace and each scikit-learn one,
the speed-ups, and eastkd's peak memory at N and N/4 (flat in N: O(D^2 + one chunk)).

Data: (a) an existing store (``--store PATH --key KEY``, fitted on its train split), and
(b) a synthetic N x D float16 array (``--n``, default 200000 x 2048) with a decaying spectrum,
written chunk by chunk through the store API into a temporary .zarr.

    python benchmarks/compress.py --n 50000
    python benchmarks/compress.py --store demo.zarr --key crepe-tiny --no-synthetic

Prints one JSON document on stdout (progress goes to stderr).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from typing import Any

import numpy as np

METHODS = ("eastkd", "sklearn_ipca", "sklearn_pca", "sklearn_pca_full")


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _log(msg: str) -> None:
    print(f"[bench] {msg}", file=sys.stderr, flush=True)


# ------------------------------------------------------------------------------ child side


def _fit_rows(store: Any, key: str, split: str | None, limit: int | None) -> np.ndarray:
    from eastkd.store import OK

    status = store.embeddings(key).status()
    rows = np.arange(len(status)) if split is None else store.items.split_indices(split)
    rows = rows[status[rows] == OK]
    return rows[rows < limit] if limit else rows


def run_child(a: argparse.Namespace) -> None:
    """Fit one method and print {seconds, peak memory, ...}; save components to ``a.out``."""
    from eastkd.store import open_store

    store = open_store(a.store)
    rows = _fit_rows(store, a.key, a.split, a.limit)
    src = store.embeddings(a.key).array("clip")
    if a.method == "eastkd":
        from eastkd.pipeline.compress.pca import PCACompressor
    elif a.method == "sklearn_ipca":
        from sklearn.decomposition import IncrementalPCA
    else:
        from sklearn.decomposition import PCA
    rss0 = _rss_bytes()
    t0 = time.perf_counter()
    extra: dict[str, Any] = {}
    if a.method == "eastkd":
        fit = PCACompressor(a.dim).fit(src, rows)
        comps, ev = fit.components_, fit.explained_variance_
    elif a.method == "sklearn_ipca":
        chunk = src.chunks[0]
        ipca = IncrementalPCA(a.dim, batch_size=chunk)
        windows = []
        for start in range(0, src.shape[0], chunk):
            sel = rows[(rows >= start) & (rows < start + chunk)]
            if sel.size:
                windows.append(sel)
        if len(windows) > 1 and windows[-1].size < a.dim:  # partial_fit needs >= dim rows
            windows[-2:] = [np.concatenate(windows[-2:])]
        for sel in windows:
            lo, hi = int(sel[0]), int(sel[-1]) + 1
            ipca.partial_fit(src[lo:hi][sel - lo])
        comps, ev = ipca.components_, ipca.explained_variance_
    else:
        x = src.read_rows(rows)
        solver = "full" if a.method == "sklearn_pca_full" else "auto"
        pca = PCA(a.dim, svd_solver=solver).fit(x)
        comps, ev = pca.components_, pca.explained_variance_
        extra["solver"] = pca._fit_svd_solver
    seconds = time.perf_counter() - t0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    np.save(a.out, np.asarray(comps, dtype=np.float64))
    print(json.dumps({
        "method": a.method, "rows": int(rows.size), "dim": a.dim, "seconds": round(seconds, 3),
        "peak_rss_mb": round(peak / 2**20, 1),
        "fit_peak_mb": round(max(0, peak - rss0) / 2**20, 1),
        "explained_variance_top3": [float(v) for v in ev[:3]], **extra,
    }))


# ----------------------------------------------------------------------------- parent side


def _spawn(store: str, key: str, method: str, dim: int, split: str | None, out: str,
           limit: int | None = None) -> dict[str, Any]:
    cmd = [sys.executable, os.path.abspath(__file__), "--child", method, "--store", store,
           "--key", key, "--dim", str(dim), "--out", out]
    if split:
        cmd += ["--split", split]
    if limit:
        cmd += ["--limit", str(limit)]
    _log(f"{method} on {os.path.basename(store)}" + (f" (first {limit} rows)" if limit else ""))
    res = subprocess.run(cmd, capture_output=True, text=True)
    if res.returncode != 0:
        raise SystemExit(f"{method} failed:\n{res.stderr[-3000:]}")
    r = json.loads(res.stdout.strip().splitlines()[-1])
    _log(f"  {r['seconds']:.2f} s, fit peak {r['fit_peak_mb']} MB")
    return r


def compare(store: str, key: str, dim: int, split: str | None, methods: tuple[str, ...],
            tmp: str, flat_check: bool) -> dict[str, Any]:
    """All methods on one store, their subspace angles to eastkd and the speed-ups."""
    from scipy.linalg import subspace_angles

    fits, comps = {}, {}
    for m in methods:
        out = os.path.join(tmp, f"{m}.npy")
        fits[m] = _spawn(store, key, m, dim, split, out)
        comps[m] = np.load(out)
    result: dict[str, Any] = {"store": store, "key": key, "dim": dim,
                              "rows": fits[methods[0]]["rows"], "fits": fits}
    if "eastkd" in comps:
        base = comps["eastkd"]
        result["max_principal_angle_deg"] = {
            m: float(np.degrees(subspace_angles(base.T, c.T).max()))
            for m, c in comps.items() if m != "eastkd"}
        result["speedup"] = {f"vs_{m}": round(fits[m]["seconds"] / fits["eastkd"]["seconds"], 2)
                             for m in fits if m != "eastkd"}
        result["memory_ratio"] = {
            f"{m}_over_eastkd": round(fits[m]["fit_peak_mb"] / max(fits["eastkd"]["fit_peak_mb"],
                                                                    1.0), 2)
            for m in fits if m != "eastkd"}
        if flat_check:
            n = fits["eastkd"]["rows"]
            quarter = _spawn(store, key, "eastkd", dim, split,
                             os.path.join(tmp, "quarter.npy"), limit=n // 4)
            result["memory_flat_in_n"] = {
                "n": n, "fit_peak_mb_at_n": fits["eastkd"]["fit_peak_mb"],
                "n_quarter": quarter["rows"], "fit_peak_mb_at_n_quarter": quarter["fit_peak_mb"],
                "seconds_at_n_quarter": quarter["seconds"]}
    return result


def write_synthetic(path: str, n: int, d: int, seed: int = 0) -> dict[str, Any]:
    """N x D float16 embeddings (rank-256 decaying spectrum + noise), written unit by unit."""
    from eastkd.store import OK, ArraySpec, ItemsTable, create_store

    t0 = time.perf_counter()
    ids = [f"s{i:07d}" for i in range(n)]
    items = ItemsTable(ids=ids, paths=ids, sha256=["0" * 64] * n,
                       durations=np.ones(n, np.float32), splits=["train"] * n,
                       labels=np.zeros((n, 1), np.uint8), class_names=[])
    rng = np.random.default_rng(seed)
    r = min(256, d)
    basis = np.linalg.qr(rng.standard_normal((d, r)))[0].T.astype(np.float32)
    scales = (4.0 * np.exp(-np.arange(r) / 40.0)).astype(np.float32)
    offset = rng.standard_normal(d).astype(np.float32)
    with create_store(path, items, {"name": "synthetic", "source": "benchmarks/compress.py"}) as st:
        sec = st.require_section("embeddings", "synthetic", {"clip": ArraySpec((d,), "float16")},
                                 attrs={"teacher": "synthetic"}, identity={"teacher": "synthetic",
                                                                           "seed": seed})
        unit = sec.unit
        for start in range(0, n, unit):
            k = min(n, start + unit) - start
            g = np.random.default_rng([seed, start])
            x = (g.standard_normal((k, r), dtype=np.float32) * scales) @ basis
            x += 0.05 * g.standard_normal((k, d), dtype=np.float32) + offset
            sec.write_block(start, {"clip": x.astype(np.float16)}, np.full(k, OK, np.uint8))
        chunk = sec.array("clip").chunks[0]
        nbytes = st.nbytes_stored()
    return {"n": n, "d": d, "dtype": "float16", "chunk_items": int(chunk),
            "write_seconds": round(time.perf_counter() - t0, 2),
            "store_mb": round(nbytes / 2**20, 1)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--n", type=int, default=200000, help="synthetic items")
    p.add_argument("--d", type=int, default=2048, help="synthetic embedding size")
    p.add_argument("--dim", type=int, default=128, help="components to fit")
    p.add_argument("--store", help="an existing store to benchmark as well (train split)")
    p.add_argument("--key", help="its embeddings key (default: the only one)")
    p.add_argument("--no-synthetic", action="store_true", help="skip the synthetic array")
    p.add_argument("--methods", default=",".join(METHODS), help="comma-separated subset")
    p.add_argument("--tmp", default=None, help="where to write the synthetic store")
    # internal: one fit in a subprocess
    p.add_argument("--child", choices=METHODS, dest="method", help=argparse.SUPPRESS)
    p.add_argument("--out", help=argparse.SUPPRESS)
    p.add_argument("--split", default=None, help=argparse.SUPPRESS)
    p.add_argument("--limit", type=int, default=None, help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.method:
        run_child(a)
        return

    import scipy
    import sklearn

    methods = tuple(m for m in a.methods.split(",") if m)
    report: dict[str, Any] = {
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                    "numpy": np.__version__, "sklearn": sklearn.__version__,
                    "scipy": scipy.__version__, "load_avg_1min": os.getloadavg()[0]},
    }
    t_all = time.perf_counter()
    with tempfile.TemporaryDirectory(dir=a.tmp) as tmp:
        if a.store:
            from eastkd.store import open_store

            with open_store(a.store) as st:
                keys = st.section_names("embeddings")
                key = a.key or (keys[0] if len(keys) == 1 else None)
                if key is None:
                    raise SystemExit(f"{a.store}: several embeddings ({keys}); pass --key")
                d = st.embeddings(key).array("clip").shape[1]
                n_train = _fit_rows(st, key, "train", None).size
            dim = max(1, min(a.dim, d, n_train // 2))
            report["store"] = compare(a.store, key, dim, "train", methods, tmp, False)
        if not a.no_synthetic:
            path = os.path.join(tmp, "synthetic.zarr")
            _log(f"writing {a.n} x {a.d} float16 to {path}")
            report["synthetic"] = {"data": write_synthetic(path, a.n, a.d)}
            report["synthetic"].update(compare(path, "synthetic", a.dim, None, methods, tmp,
                                               True))
    report["total_seconds"] = round(time.perf_counter() - t_all, 1)
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
