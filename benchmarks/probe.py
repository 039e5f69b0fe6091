"""Benchmark ``eastkd probe`` on a synthetic store (default 10 000 items x 2048-d embeddings).

Measures, on the same store in one run:

* ``eastkd_probe``       :func:`eastkd.pipeline.probe.run.probe` (reading included): scaler,
  logistic regression over the C grid warm-started, valid selection, valid/test scores;
* ``eastkd_probe_k5``    the same with ``labels_per_class=5, seeds=5`` (five small fits);
* ``sklearn_cold_grid``  the baseline: the same arrays read into memory, then a fresh
  ``LogisticRegression`` per C of the grid (no warm start), the usual hand-written probe.

    python benchmarks/probe.py                       # 10 000 x 2048
    python benchmarks/probe.py --n 2000 --dim 256 --out benchmarks/results/probe-small.json

Prints one JSON document (also written to ``--out``); progress goes to stderr. On a shared,
oversubscribed machine run it with ``OPENBLAS_NUM_THREADS=1``: OpenBLAS threads spinning
against other processes' make small products 50x slower (recorded as ``blas_threads``).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
import warnings

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from synthetic import KEY, make_synthetic_store  # noqa: E402


def _log(msg: str) -> None:
    print(f"[bench] {msg}", file=sys.stderr, flush=True)


def sklearn_cold_grid(store_path: str) -> dict[str, float]:
    """Read train/valid/test into memory and fit one cold LogisticRegression per C."""
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    from eastkd.pipeline.probe.fit import C_GRID, MAX_ITER
    from eastkd.store import open_store

    t0 = time.perf_counter()
    with open_store(store_path) as s:
        x = s.embeddings(KEY).array("clip")[:].astype(np.float32)
        y, splits = s.items.label, np.asarray(s.items.splits)
    tr, va, te = (splits == k for k in ("train", "valid", "test"))
    scaler = StandardScaler().fit(x[tr])
    xs = scaler.transform(x)
    best = (-1.0, None)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        for c in C_GRID:
            m = LogisticRegression(C=c, max_iter=MAX_ITER).fit(xs[tr], y[tr])
            acc = float((m.predict(xs[va]) == y[va]).mean())
            if acc > best[0]:
                best = (acc, m)
    test = float((best[1].predict(xs[te]) == y[te]).mean())
    return {"seconds": round(time.perf_counter() - t0, 3), "valid_accuracy": best[0],
            "test_accuracy": test}


def eastkd_probe(store_path: str, **kw: int) -> dict[str, float]:
    from eastkd.pipeline.probe.run import probe

    t0 = time.perf_counter()
    p = probe(store_path, **kw).probes[0]
    return {"seconds": round(time.perf_counter() - t0, 3), "C": p["C"],
            "valid_accuracy": p["valid"]["accuracy"]["mean"],
            "test_accuracy": p["test"]["accuracy"]["mean"], "rows": p["rows"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=10_000)
    ap.add_argument("--dim", type=int, default=2048)
    ap.add_argument("--classes", type=int, default=10)
    ap.add_argument("--out", default=None, help="also write the JSON here")
    a = ap.parse_args()
    import sklearn
    import torch
    from threadpoolctl import threadpool_info

    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory(prefix="eastkd-probe-bench-") as tmp:
        path = os.path.join(tmp, "synth.zarr")
        _log(f"writing {a.n} x {a.dim} store")
        make_synthetic_store(path, a.n, n_classes=a.classes, n_mels=8, n_frames=8,
                             target_dim=a.dim, chunk_items=256)
        _log("eastkd probe")
        ours = eastkd_probe(path)
        _log("eastkd probe --labels-per-class 5 --seeds 5")
        scarce = eastkd_probe(path, labels_per_class=5, seeds=5)
        _log("baseline: sklearn, cold fits")
        base = sklearn_cold_grid(path)
    result = {
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                    "numpy": np.__version__, "sklearn": sklearn.__version__,
                    "load_avg_1min": os.getloadavg()[0], "node": platform.node(),
                    "blas_threads": [i["num_threads"] for i in threadpool_info()]},
        "data": {"items": a.n, "dim": a.dim, "classes": a.classes, "store": "zarr, float16"},
        "eastkd_probe": ours, "eastkd_probe_k5": scarce, "sklearn_cold_grid": base,
        "speedup_vs_cold_grid": round(base["seconds"] / ours["seconds"], 2),
    }
    text = json.dumps(result, indent=2)
    print(text)
    if a.out:
        with open(a.out, "w", encoding="utf-8") as f:
            f.write(text + "\n")


if __name__ == "__main__":
    main()
