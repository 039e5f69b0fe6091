"""Task metrics shared by every stage, so one number means the same thing everywhere.

Multi-label (auto-tagging, as for MagnaTagATune in the papers): macro ROC-AUC over the tags that
have both positive and negative items, and mAP = PR-AUC = scikit-learn's
``average_precision_score`` macro-averaged over the tags that have at least one positive item
(average precision is undefined without one). The learned compressor's probe (compress) and the
students (distill, evaluate) both use :func:`multilabel_scores`.
"""

from __future__ import annotations

import math

import numpy as np
from sklearn.metrics import average_precision_score, roc_auc_score


def multilabel_scores(labels: np.ndarray, scores: np.ndarray) -> dict[str, float]:
    """``{"roc_auc", "map"}`` of (N, C) 0/1 ``labels`` and (N, C) scores (any monotone scale:
    logits or probabilities); NaN where no tag qualifies."""
    y = np.asarray(labels)
    s = np.asarray(scores, dtype=np.float64)
    positives = y.sum(axis=0)
    has_pos = positives > 0
    both = has_pos & (positives < len(y))
    auc = float(roc_auc_score(y[:, both], s[:, both], average="macro")) if both.any() \
        else math.nan
    ap = float(average_precision_score(y[:, has_pos], s[:, has_pos], average="macro")) \
        if has_pos.any() else math.nan
    return {"roc_auc": auc, "map": ap}
