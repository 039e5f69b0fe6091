"""One mAP definition: the learned compressor's probe and the students' evaluation agree, and
both equal scikit-learn's average precision averaged over the tags that have positives."""

from __future__ import annotations

import math

import numpy as np
import pytest
from sklearn.metrics import average_precision_score, roc_auc_score

from eastkd.pipeline.compress import learned
from eastkd.pipeline.core.metrics import multilabel_scores
from eastkd.pipeline.distill.evaluate import compute_metrics


def _tagging(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """40 items x 6 tags: informative logits; tag 4 never occurs, tag 5 is on every item."""
    rng = np.random.default_rng(seed)
    labels = (rng.random((40, 6)) < 0.3).astype(np.uint8)
    labels[:, 4], labels[:, 5] = 0, 1
    logits = 2.0 * labels + rng.normal(size=labels.shape)
    return labels, logits


def test_one_map_for_compress_and_evaluate() -> None:
    labels, logits = _tagging()
    expected_ap = np.mean([average_precision_score(labels[:, c], logits[:, c])
                           for c in range(6) if labels[:, c].any()])  # tags 0-3 and 5
    expected_auc = np.mean([roc_auc_score(labels[:, c], logits[:, c]) for c in range(4)])
    scores = multilabel_scores(labels, logits)
    assert scores["map"] == pytest.approx(expected_ap, abs=1e-12)
    assert scores["roc_auc"] == pytest.approx(expected_auc, abs=1e-12)
    # evaluate (logits) and the learned compressor's probe (probabilities) read the same
    assert compute_metrics(logits, labels, multi_label=True) == {
        "roc_auc": scores["roc_auc"], "pr_auc": scores["map"]}
    probs = 1.0 / (1.0 + np.exp(-logits))
    assert learned.multilabel_scores is multilabel_scores
    assert multilabel_scores(labels, probs)["map"] == pytest.approx(scores["map"], abs=1e-12)


def test_undefined_metrics_are_nan() -> None:
    labels = np.zeros((5, 3), np.uint8)
    s = multilabel_scores(labels, np.random.default_rng(1).normal(size=(5, 3)))
    assert math.isnan(s["map"]) and math.isnan(s["roc_auc"])
