"""The linear probe, fitted in one place for ``eastkd probe`` and ``compress --method probe``.

A probe is scikit-learn's ``StandardScaler`` (train statistics) followed by a logistic
regression: multinomial (softmax, L-BFGS) for single-label data, one-vs-rest (one binary
logistic regression per tag) for multi-label data. The inverse regularisation strength ``C``
is chosen on the valid split from :data:`C_GRID` by the metric ``evaluate`` selects students
with (accuracy, or mAP = PR-AUC for multi-label; ties go to the lower valid log-loss). The grid
is walked from the strongest regularisation up, each fit warm-started from the previous
solution (same optimum, fewer L-BFGS iterations; one-vs-rest refits each tag from zero).
With fewer fit rows than dimensions (a few labels per class) the classifier is fitted in the
span of the standardised fit rows (:func:`row_space`): the same model, in seconds. Without
valid rows the middle of the grid (``C = 1``) is used.

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
    """A fitted probe: standardisation, an optional row-space basis, the chosen classifier, and
    how ``C`` was chosen (``grid``: valid metric and log-loss per C)."""

    scaler: StandardScaler
    basis: np.ndarray | None  # (D, r) orthonormal basis of the standardised fit rows, or None
    model: Any  # LogisticRegression, or OneVsRestClassifier of them (multi-label)
    C: float
    multi_label: bool
    n_classes: int
    grid: list[dict[str, float]] = field(default_factory=list)

    def features(self, x: np.ndarray) -> np.ndarray:
        """What the classifier sees: standardised features, in the row-space basis if any."""
        z = self.scaler.transform(np.asarray(x, dtype=np.float32))
        return z if self.basis is None else z @ self.basis

    def probabilities(self, x: np.ndarray) -> np.ndarray:
        """(n, C) float64 class probabilities of (n, D) features: a softmax over the classes
        (rows sum to 1; a class absent from the fit rows gets 0), or per-tag sigmoids."""
        return self.probabilities_of(self.features(x))

    def probabilities_of(self, z: np.ndarray) -> np.ndarray:
        """:meth:`probabilities` of inputs already passed through :meth:`features`."""
        p = self.model.predict_proba(z)
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

    def weights(self) -> tuple[np.ndarray, np.ndarray]:
        """(k, D) weights on standardised inputs and (k,) biases: the softmax's classes
        (``model.classes_``; k = 1 for two classes: the second class's logit) or one row per tag
        (a tag constant in the fit rows: zero weights, NaN bias)."""
        fitted = self.model.estimators_ if self.multi_label else [self.model]
        d = len(self.scaler.mean_)
        rows, biases = [], []
        for est in fitted:
            coef = getattr(est, "coef_", None)
            if coef is None:
                rows.append(np.zeros((1, d)))
                biases.append(np.array([np.nan]))
                continue
            rows.append(coef @ self.basis.T if self.basis is not None else coef)
            biases.append(est.intercept_)
        return (np.vstack(rows).astype(np.float32),
                np.concatenate(biases).astype(np.float32))


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


def row_space(xs: np.ndarray) -> np.ndarray | None:
    """An orthonormal (D, n) basis of the rows of ``xs`` when there are fewer rows than
    dimensions, else None. An L2-penalised linear model's weights lie in that span (the penalty
    only grows off it), so fitting in it gives the same model, much faster for few labels."""
    if xs.shape[0] >= xs.shape[1]:
        return None
    return np.linalg.qr(xs.T)[0].astype(np.float32)  # reduced QR: (D, n) orthonormal


def fit_probe(x: np.ndarray, y: np.ndarray, vx: np.ndarray | None, vy: np.ndarray | None,
              multi_label: bool, n_classes: int, c_grid: tuple[float, ...] = C_GRID) -> Probe:
    """Fit a probe on (n, D) ``x`` with labels ``y`` (class indices, or (n, C) multi-hot rows),
    choosing ``C`` on (``vx``, ``vy``) when given."""
    check_labels(y, multi_label)
    if not np.isfinite(x).all():
        raise EastkdError("embeddings contain NaN/inf; re-extract them (--dtype float32)")
    scaler = StandardScaler().fit(x)
    probe = Probe(scaler, None, _classifier(multi_label), math.nan, multi_label, n_classes)
    probe.basis = row_space(scaler.transform(x))
    xs = probe.features(x)
    has_valid = vx is not None and vy is not None and len(vy) > 0
    vz = probe.features(vx) if has_valid else None
    metric = selection_metric(multi_label)
    best: tuple[tuple[float, float], float, Any] | None = None
    for c in sorted(c_grid) if has_valid else [1.0]:
        _set_c(probe.model, c)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            warnings.simplefilter("ignore", UserWarning)  # OvR: a tag without positives
            probe.model.fit(xs, y)
        key = (0.0, 0.0)
        if has_valid:
            p = probe.probabilities_of(vz)
            value = compute_metrics(p, vy, multi_label).get(metric, math.nan)
            loss = log_loss(p, vy, multi_label)
            probe.grid.append({"C": c, f"valid_{metric}": value, "valid_log_loss": loss})
            key = (-math.inf if math.isnan(value) else value, -loss)
        if best is None or key > best[0]:
            best = (key, c, copy.deepcopy(probe.model))
    assert best is not None
    probe.C, probe.model = best[1], best[2]
    return probe


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
