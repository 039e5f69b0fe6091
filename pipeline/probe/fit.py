"""The linear probe, fitted in one place for ``eastkd probe`` and ``compress --method probe``.

A probe is scikit-learn's ``StandardScaler`` (train statistics) followed by a logistic
regression: multinomial (softmax, L-BFGS) for single-label data, one-vs-rest (one binary
logistic regression per tag) for multi-label data. The inverse regularisation strength ``C``
is chosen on the valid split from :data:`C_GRID` by the metric ``evaluate`` selects students
with (accuracy, or mAP = PR-AUC for multi-label; ties go to the lower valid log-loss). The grid
is walked from the strongest regularisation up, each fit warm-started from the previous
solution (same optimum, fewer L-BFGS iterations; one-vs-rest refits each tag from zero). Without valid rows the middle of the grid
(``C = 1``) is used.

Scores use the definitions of ``evaluate`` (:func:`eastkd.pipeline.distill.evaluate.
compute_metrics`): accuracy and macro-F1, or macro ROC-AUC and PR-AUC.
"""

from __future__ import annotations

import copy
import math
import warnings
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression
from sklearn.multiclass import OneVsRestClassifier
from sklearn.preprocessing import StandardScaler

from eastkd.errors import EastkdError
from eastkd.pipeline.distill.evaluate import compute_metrics, selection_metric

C_GRID = (1e-3, 1e-2, 1e-1, 1.0, 10.0)
MAX_ITER = 1000
_EPS = 1e-7


@dataclass
class Probe:
    """A fitted probe: standardisation, the chosen classifier, and how ``C`` was chosen."""

    scaler: StandardScaler
    model: Any  # LogisticRegression, or OneVsRestClassifier of them (multi-label)
    C: float
    multi_label: bool
    n_classes: int
    grid: list[dict[str, float]] = field(default_factory=list)  # per C: valid metric, loss

    def probabilities(self, x: np.ndarray) -> np.ndarray:
        """(n, C) float64 class probabilities of (n, D) features: a softmax over the classes
        (rows sum to 1; a class absent from the fit rows gets 0), or per-tag sigmoids."""
        p = self.model.predict_proba(self.scaler.transform(np.asarray(x, dtype=np.float32)))
        if self.multi_label:
            return np.asarray(p, dtype=np.float64)
        out = np.zeros((len(p), self.n_classes))
        out[:, self.model.classes_] = p
        return out

    def scores(self, x: np.ndarray, y: np.ndarray) -> dict[str, float]:
        """``evaluate``'s metrics of the probe on (x, y); empty without rows."""
        if len(y) == 0:
            return {}
        return compute_metrics(self.probabilities(x), y, self.multi_label)


def log_loss(p: np.ndarray, y: np.ndarray, multi_label: bool) -> float:
    """Mean cross-entropy of probabilities ``p`` against class indices (or multi-hot rows)."""
    p = np.clip(p, _EPS, 1 - _EPS)
    if multi_label:
        y = np.asarray(y, dtype=np.float64)
        return float(-(y * np.log(p) + (1 - y) * np.log(1 - p)).mean())
    return float(-np.log(p[np.arange(len(y)), y]).mean())


def _classifier(multi_label: bool) -> Any:
    base = LogisticRegression(max_iter=MAX_ITER, warm_start=True)
    return OneVsRestClassifier(base) if multi_label else base


def _set_c(model: Any, c: float) -> None:
    model.set_params(**({"estimator__C": c} if isinstance(model, OneVsRestClassifier)
                        else {"C": c}))


def check_labels(y: np.ndarray, multi_label: bool) -> None:
    """Refuse fit rows a classifier cannot learn from, in one line."""
    if len(y) == 0:
        raise EastkdError("the probe has no labelled train rows to fit on; label some train "
                          "items or choose another split")
    if not multi_label and len(np.unique(y)) < 2:
        raise EastkdError(f"the probe's train rows hold a single class ({int(y[0])}); it needs "
                          "at least two")


def fit_probe(x: np.ndarray, y: np.ndarray, vx: np.ndarray | None, vy: np.ndarray | None,
              multi_label: bool, n_classes: int, c_grid: tuple[float, ...] = C_GRID) -> Probe:
    """Fit a probe on (n, D) ``x`` with labels ``y`` (class indices, or (n, C) multi-hot rows),
    choosing ``C`` on (``vx``, ``vy``) when given."""
    check_labels(y, multi_label)
    if not np.isfinite(x).all():
        raise EastkdError("embeddings contain NaN/inf; re-extract them (--dtype float32)")
    scaler = StandardScaler().fit(x)
    xs = scaler.transform(x)
    has_valid = vx is not None and vy is not None and len(vy) > 0
    grid = sorted(c_grid) if has_valid else [1.0]
    metric = selection_metric(multi_label)
    model = _classifier(multi_label)
    best: tuple[tuple[float, float], float, Any] | None = None
    table: list[dict[str, float]] = []
    for c in grid:
        _set_c(model, c)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            warnings.simplefilter("ignore", UserWarning)  # OvR: a tag without positives
            model.fit(xs, y)
        if not has_valid:
            best = ((0.0, 0.0), c, copy.deepcopy(model))
            break
        probe = Probe(scaler, model, c, multi_label, n_classes)
        p = probe.probabilities(vx)
        value = compute_metrics(p, vy, multi_label).get(metric, math.nan)
        loss = log_loss(p, vy, multi_label)
        table.append({"C": c, f"valid_{metric}": value, "valid_log_loss": loss})
        key = (-math.inf if math.isnan(value) else value, -loss)
        if best is None or key > best[0]:
            best = (key, c, copy.deepcopy(model))
    assert best is not None
    return Probe(scaler, best[2], best[1], multi_label, n_classes, table)


def draw_per_class(labels: np.ndarray, k: int, seed: int, multi_label: bool,
                   class_names: list[str]) -> np.ndarray:
    """Positions (sorted) of ``k`` items per class drawn without replacement, seeded.

    ``labels`` are class indices (single-label) or (n, C) multi-hot rows; for multi-label data
    each tag in turn draws ``k`` of its positive items not drawn yet, so every tag has at least
    ``k`` positives. A class with fewer than ``k`` items left is refused.
    """
    if k < 1:
        raise EastkdError(f"--labels-per-class {k}: must be at least 1")
    rng = np.random.default_rng(seed)
    hot = np.asarray(labels).astype(bool) if multi_label else None
    taken = np.zeros(len(labels), dtype=bool)
    for c, name in enumerate(class_names):
        members = hot[:, c] if hot is not None else np.asarray(labels) == c
        free = np.flatnonzero(members & ~taken)
        if len(free) < k:
            raise EastkdError(f"--labels-per-class {k}: class {name!r} has only {len(free)} "
                              f"labelled train items{' left' if hot is not None else ''}; "
                              "choose a smaller K")
        taken[rng.choice(free, size=k, replace=False)] = True
    return np.flatnonzero(taken)
