"""``eastkd probe``: how well a linear probe on each stored teacher representation does the task.

For every embeddings key and every target in a store (or those named), the rows of each split
are chosen exactly as compress chooses them (:func:`eastkd.pipeline.compress.run.fit_rows`:
the split under ``--fold`` through ``item_splits``, as distill derives it, rows the section
holds), unlabelled items dropped, and read through the one reading path
(:func:`~eastkd.pipeline.core.reading.read_pooled_rows`: frame-level arrays and views averaged
per item; an embeddings section's ``clip`` array is already the mean of its frames).
A probe (:mod:`eastkd.pipeline.probe.fit`) is fitted on the train rows, ``C`` chosen on valid,
and scored on valid and test with ``evaluate``'s metrics.

``labels_per_class`` K fits on K labelled train items per class, drawn per seed
(:func:`~eastkd.pipeline.probe.fit.draw_per_class`); metrics are the mean and sample standard
deviation over ``seeds`` draws. With every train label the probe is deterministic: one fit.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from eastkd.errors import EastkdError
from eastkd.pipeline.compress.run import fit_rows
from eastkd.pipeline.core.reading import (
    TargetsSpec,
    labelled_mask,
    read_pooled_rows,
    store_array,
)
from eastkd.pipeline.distill.evaluate import selection_metric
from eastkd.pipeline.probe.fit import C_GRID, draw_per_class, fit_probe
from eastkd.store import Store, open_store

SPLITS = ("train", "valid", "test")


@dataclass
class ProbeReport:
    """Every probe of one ``eastkd probe`` call (``probes``: one dict per source)."""

    store: str
    fold: int | None
    labels_per_class: int | None
    seeds: list[int]
    multi_label: bool
    metric: str
    probes: list[dict[str, Any]] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {"store": self.store, "fold": self.fold, "labels_per_class": self.labels_per_class,
                "seeds": self.seeds, "multi_label": self.multi_label,
                "selection_metric": self.metric, "probes": self.probes}


def _spec(store: Store, kind: str, name: str) -> TargetsSpec:
    """The probed array of ``kind/name``: embeddings' ``clip``, targets' ``values``."""
    if not store.has_section(kind, name):
        have = ", ".join(store.section_names(kind)) or "none"
        flag = "--embeddings" if kind == "embeddings" else "--targets"
        raise EastkdError(f"{store.path}: no {kind}/{name} (have: {have}); choose another "
                          f"{flag}")
    sec = store.section(kind, name)
    array = "clip" if kind == "embeddings" else "values"
    shape = sec.array(array).shape
    return TargetsSpec(name=name, section=sec.path, array=array, dim=int(shape[-1]),
                       frame_level=False, attrs=sec.attrs)


def probe_specs(store: Store, embeddings: list[str] | None,
                targets: list[str] | None) -> list[TargetsSpec]:
    """The sections to probe: those named, else every embeddings key and every target."""
    if not embeddings and not targets:
        embeddings = store.section_names("embeddings")
        targets = store.section_names("targets")
        if not embeddings and not targets:
            raise EastkdError(f"{store.path}: holds no embeddings or targets; run "
                              "`eastkd extract` first")
    return ([_spec(store, "embeddings", k) for k in embeddings or []]
            + [_spec(store, "targets", n) for n in targets or []])


def _labels(store: Store, rows: np.ndarray) -> np.ndarray:
    items = store.items
    return (items.labels[rows].astype(np.uint8) if items.multi_label
            else items.label[rows].astype(np.int64))


def _split_data(store: Store, spec: TargetsSpec,
                fold: int | None) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """(features, labels) of each split's labelled rows, read in one pass over the chunks."""
    kind, name = spec.section.split("/", 1)
    hint = ("finish `eastkd compress` first" if kind == "targets"
            else "finish `eastkd extract` first (it continues where it stopped)")
    status = store.section(kind, name).require_complete(hint)
    keep = labelled_mask(store.items)
    rows = {s: r[keep[r]] for s in SPLITS for r in [fit_rows(store, status, s, fold)]}
    every = np.unique(np.concatenate(list(rows.values())))
    x = read_pooled_rows(store_array(store, spec.path), every)
    return {s: (x[np.searchsorted(every, r)], _labels(store, r)) for s, r in rows.items()}


def _mean_std(runs: list[dict[str, float]]) -> dict[str, dict[str, float]]:
    out: dict[str, dict[str, float]] = {}
    for k in dict.fromkeys(k for r in runs for k in r):
        vals = [r[k] for r in runs if k in r]
        out[k] = {"mean": statistics.fmean(vals),
                  "std": statistics.stdev(vals) if len(vals) > 1 else 0.0, "n": len(vals)}
    return out


def probe_section(store: Store, spec: TargetsSpec, fold: int | None,
                  labels_per_class: int | None, seeds: list[int],
                  c_grid: tuple[float, ...] = C_GRID) -> dict[str, Any]:
    """One source's probe: valid and test metrics (mean ± std over seeds), rows, chosen C."""
    t0 = time.perf_counter()
    items = store.items
    data = _split_data(store, spec, fold)
    (x, y), (vx, vy), (tx, ty) = (data[s] for s in SPLITS)
    runs: dict[str, list[dict[str, float]]] = {"valid": [], "test": []}
    chosen: list[float] = []
    n_fit = len(y)
    for seed in seeds if labels_per_class else seeds[:1]:
        pick = (draw_per_class(y, labels_per_class, seed, items.multi_label,
                               list(items.class_names))
                if labels_per_class else slice(None))
        probe = fit_probe(x[pick], y[pick], vx, vy, items.multi_label, len(items.class_names),
                          c_grid)
        n_fit = len(y[pick])
        chosen.append(probe.C)
        runs["valid"].append(probe.scores(vx, vy))
        runs["test"].append(probe.scores(tx, ty))
    return {
        "source": spec.section, "name": spec.name, "dim": spec.dim,
        "rows": {"train": n_fit, "train_labelled": len(y), "valid": len(vy), "test": len(ty)},
        "C": chosen, "seeds": seeds if labels_per_class else seeds[:1],
        "valid": _mean_std(runs["valid"]), "test": _mean_std(runs["test"]),
        "seconds": round(time.perf_counter() - t0, 3),
    }


def probe(store_path: str, embeddings: list[str] | None = None,
          targets: list[str] | None = None, labels_per_class: int | None = None,
          seeds: int = 1, fold: int | None = None,
          c_grid: tuple[float, ...] = C_GRID) -> ProbeReport:
    """Probe every embeddings key and target of the store (or those named); see the module."""
    if seeds < 1:
        raise EastkdError(f"--seeds {seeds}: must be at least 1")
    with open_store(store_path, "r") as store:
        multi = bool(store.items.multi_label)
        report = ProbeReport(store_path, fold, labels_per_class, list(range(seeds)), multi,
                             selection_metric(multi))
        for spec in probe_specs(store, embeddings, targets):
            report.probes.append(probe_section(store, spec, fold, labels_per_class,
                                               report.seeds, c_grid))
    return report


def _cell(stat: dict[str, float] | None) -> str:
    if not stat:
        return "-"
    return (f"{stat['mean']:.3f} ± {stat['std']:.3f}" if stat["n"] > 1
            else f"{stat['mean']:.3f}")


def render_text(report: ProbeReport) -> str:
    """An aligned table: one line per probed section, valid and test metrics (mean ± std)."""
    metrics = (["accuracy", "macro_f1"] if not report.multi_label else ["pr_auc", "roc_auc"])
    cols = ["probed", "dim", "train rows", "C"] + [f"valid {m}" for m in metrics[:1]] \
        + [f"test {m}" for m in metrics]
    cells = [cols]
    for p in report.probes:
        c = sorted(set(p["C"]))
        cells.append([p["source"], str(p["dim"]), str(p["rows"]["train"]),
                      "/".join(f"{v:g}" for v in c), _cell(p["valid"].get(metrics[0]))]
                     + [_cell(p["test"].get(m)) for m in metrics])
    widths = [max(len(r[i]) for r in cells) for i in range(len(cols))]
    lines = ["  ".join(v.ljust(w) for v, w in zip(r, widths)).rstrip() for r in cells]
    scarce = (f"{report.labels_per_class} labels per class, mean ± std over "
              f"{len(report.seeds)} seeds" if report.labels_per_class else "every train label")
    head = (f"linear probe of {report.store}"
            + (f" (fold {report.fold})" if report.fold is not None else "")
            + f": {scarce}; C chosen on valid by {report.metric}")
    return head + "\n" + "\n".join(lines)
