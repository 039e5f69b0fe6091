"""``compress --method probe``: the teacher's linear probe as soft labels for response-based KD.

The probe of ``eastkd probe`` (:func:`eastkd.pipeline.probe.fit.fit_probe`: standardised
embeddings, logistic regression, ``C`` chosen on the valid rows) is fitted on the labelled fit
rows, and its class probabilities are written for *every* row, unlabelled ones included: one
column per class of the store (``class_names`` in the targets' attributes), rows summing to 1
(single-label: a softmax) or one sigmoid per tag (multi-label); ``kind: "probabilities"`` marks
them for ``distill --kd kl``. Frame-level or per-view embeddings are averaged per item for the
fit; :meth:`ProbeCompressor.transform` maps any ``(..., D)`` array to ``(..., C)``.

Its valid and test scores (``evaluate``'s metrics) are recorded as ``probe_scores``: the
reference line beside the students distilled from these targets (``eastkd runs``).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from eastkd.pipeline.core.reading import labelled_mask, read_pooled_rows
from eastkd.pipeline.probe.fit import C_GRID, MAX_ITER, Probe, fit_probe
from eastkd.store import EastkdError, ItemsTable, StoreArray


def _labels(items: ItemsTable, rows: np.ndarray) -> np.ndarray:
    return (items.labels[rows].astype(np.uint8) if items.multi_label
            else items.label[rows].astype(np.int64))


class ProbeCompressor:
    """Class probabilities of a linear probe on the embeddings (``out_dim`` = classes)."""

    method = "probe"
    uses_valid_rows = True  # C is chosen on the valid rows: compress records which
    dim_from_classes = True  # --dim does not apply: one column per class

    def __init__(self, dim: int | float | None = None, whiten: bool = False,
                 **_unused: Any) -> None:
        if whiten:
            raise EastkdError("--whiten applies to --method pca only; drop it for probe")
        self.probe_: Probe | None = None
        self.class_names: list[str] = []
        self.n_rows = 0

    # fitted on each item's mean over its views (as `eastkd probe`), applied to every view
    pools_views = True

    def identity(self) -> dict[str, Any]:
        return {"c_grid": list(C_GRID), "max_iter": MAX_ITER}

    @property
    def out_dim(self) -> int:
        return len(self.class_names)

    def _read(self, source: StoreArray, rows: np.ndarray,
              items: ItemsTable) -> tuple[np.ndarray, np.ndarray]:
        rows = np.asarray(rows, dtype=np.int64)
        rows = rows[labelled_mask(items)[rows]]
        return read_pooled_rows(source, rows), _labels(items, rows)

    def fit(self, source: StoreArray, rows: np.ndarray, items: ItemsTable | None = None,
            valid_rows: np.ndarray | None = None, progress: bool = False) -> "ProbeCompressor":
        """Fit on the labelled ``rows`` (unlabelled ones ignored); ``C`` chosen on the
        labelled ``valid_rows``."""
        if items is None or len(items.class_names) < (1 if items.multi_label else 2):
            raise EastkdError("--method probe needs class labels (at least 2 classes); this "
                              "dataset has none: use --method pca")
        x, y = self._read(source, rows, items)
        vx, vy = (self._read(source, valid_rows, items) if valid_rows is not None
                  else (None, None))
        self.class_names = list(items.class_names)
        self.probe_ = fit_probe(x, y, vx, vy, items.multi_label, len(self.class_names))
        self.n_rows = len(y)
        return self

    def held_out_scores(self, source: StoreArray, splits: dict[str, np.ndarray],
                        items: ItemsTable) -> dict[str, Any]:
        """``{"probe_scores": {split: metrics}}`` on the labelled rows of each split (the
        probe never fits on them; these are the reference scores)."""
        assert self.probe_ is not None
        out = {}
        for split, rows in splits.items():
            x, y = self._read(source, rows, items)
            out[split] = {**self.probe_.scores(x, y), "rows": len(y)}
        return {"probe_scores": out}

    def transform(self, x: np.ndarray) -> np.ndarray:
        """(k, ..., D) embeddings -> (k, ..., C) float32 class probabilities."""
        if self.probe_ is None:
            raise RuntimeError("fit first")
        x = np.asarray(x)
        p = self.probe_.probabilities(x.reshape(-1, x.shape[-1]))
        return p.reshape(x.shape[:-1] + (p.shape[-1],)).astype(np.float32)

    def params(self) -> dict[str, np.ndarray]:
        """Standardisation and the classifier's weights on standardised inputs."""
        if self.probe_ is None:
            raise RuntimeError("fit first")
        weight, bias = self.probe_.weights()
        scaler = self.probe_.scaler
        classes = (np.arange(self.out_dim) if self.probe_.multi_label
                   else self.probe_.model.classes_)
        return {"input_mean": scaler.mean_.astype(np.float32),
                "input_std": scaler.scale_.astype(np.float32), "weight": weight, "bias": bias,
                "classes": np.asarray(classes, dtype=np.int64)}

    def summary(self) -> dict[str, Any]:
        assert self.probe_ is not None
        p = self.probe_
        metric = "pr_auc" if p.multi_label else "accuracy"
        chosen = next((g for g in p.grid if g["C"] == p.C), {})
        return {
            "kind": "probabilities",
            "class_names": self.class_names,
            "multi_label": p.multi_label,
            "probe_metric": {"name": metric, "split": "valid",
                             "value": chosen.get(f"valid_{metric}"), "C": p.C},
            "probe_grid": p.grid,
            "fit_rows": self.n_rows,
        }

    @staticmethod
    def plot(fig: Any, attrs: dict[str, Any], params: dict[str, np.ndarray]) -> None:
        """The valid metric and log-loss over the C grid, the chosen C marked."""
        grid = attrs.get("probe_grid") or []
        metric = (attrs.get("probe_metric") or {}).get("name", "accuracy")
        ax = fig.add_subplot(1, 1, 1)
        cs = [g["C"] for g in grid]
        ax.plot(cs, [g.get(f"valid_{metric}") for g in grid], "o-", color="C2",
                label=f"valid {metric}")
        ax2 = ax.twinx()
        ax2.plot(cs, [g["valid_log_loss"] for g in grid], "s--", color="C1",
                 label="valid log-loss")
        chosen = (attrs.get("probe_metric") or {}).get("C")
        if chosen is not None:
            ax.axvline(chosen, color="C3", ls="--", lw=1, label=f"chosen C = {chosen:g}")
        ax.set_xscale("log")
        ax.set_xlabel("C (inverse L2 strength)")
        ax.set_ylabel(f"valid {metric}")
        ax2.set_ylabel("valid log-loss")
        ax.grid(True, alpha=0.3)
        lines = ax.get_legend_handles_labels()
        lines2 = ax2.get_legend_handles_labels()
        ax.legend(lines[0] + lines2[0], lines[1] + lines2[1], loc="best")
        ax.set_title(f"linear probe on {attrs['source']} ({attrs['fit_rows']} labelled "
                     f"{attrs['fit_split']} rows, {attrs['dim']} classes)")
