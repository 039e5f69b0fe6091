"""eastkd probe on the real demo store (80 rendered clips, 5 families, crepe-tiny embeddings):
the probe equals scikit-learn run by hand on the same arrays and splits, label-scarce draws,
unlabelled items ignored, frame/view pooling through the reading path, and the CLI."""

from __future__ import annotations

import dataclasses
import json
import warnings
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import accuracy_score, f1_score
from sklearn.preprocessing import StandardScaler

from eastkd.cli.main import cli
from eastkd.pipeline.core.reading import read_pooled_rows
from eastkd.pipeline.probe.fit import C_GRID, MAX_ITER, draw_per_class
from eastkd.pipeline.probe.run import probe
from eastkd.store import EastkdError, open_store

TEACHER = "crepe-tiny"


def _sklearn_by_hand(store: Path) -> dict[float, dict[str, float]]:
    """Per C of the grid: valid and test accuracy (and test macro-F1) of a cold fit."""
    with open_store(str(store)) as s:
        x = s.embeddings(TEACHER).array("clip")[:].astype(np.float32)
        y, splits = s.items.label, np.asarray(s.items.splits)
    tr, va, te = (splits == k for k in ("train", "valid", "test"))
    scaler = StandardScaler().fit(x[tr])
    out = {}
    for c in C_GRID:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            m = LogisticRegression(C=c, max_iter=MAX_ITER).fit(scaler.transform(x[tr]), y[tr])
        pv, pt = m.predict(scaler.transform(x[va])), m.predict(scaler.transform(x[te]))
        out[c] = {"valid": accuracy_score(y[va], pv), "test": accuracy_score(y[te], pt),
                  "f1": f1_score(y[te], pt, labels=range(5), average="macro", zero_division=0)}
    return out


def test_probe_equals_sklearn_on_the_same_arrays_and_splits(demo_store_master: Path) -> None:
    report = probe(str(demo_store_master), embeddings=[TEACHER])
    (p,) = report.probes
    assert p["source"] == f"embeddings/{TEACHER}" and p["dim"] == 256
    assert p["rows"] == {"train": 60, "train_labelled": 60, "valid": 10, "test": 10}
    by_hand = _sklearn_by_hand(demo_store_master)
    (c,) = p["C"]
    # C is the valid-best of the grid, and at that C the scores are scikit-learn's
    assert p["valid"]["accuracy"]["mean"] == max(r["valid"] for r in by_hand.values())
    assert p["valid"]["accuracy"]["mean"] == by_hand[c]["valid"]
    assert p["test"]["accuracy"]["mean"] == by_hand[c]["test"]
    assert p["test"]["macro_f1"]["mean"] == pytest.approx(by_hand[c]["f1"])
    assert p["test"]["accuracy"]["mean"] > 0.2  # 5 classes: above chance


def test_default_probes_every_embeddings_key_and_target(demo_store: Path) -> None:
    from eastkd.pipeline.compress.run import compress

    compress(str(demo_store), TEACHER, "pca", 16, name="pca16", plot=False, progress=False)
    report = probe(str(demo_store))
    assert [p["source"] for p in report.probes] == [f"embeddings/{TEACHER}", "targets/pca16"]
    assert report.probes[1]["dim"] == 16
    with pytest.raises(EastkdError, match="no targets/nope"):
        probe(str(demo_store), targets=["nope"])


def test_labels_per_class_draws_exactly_k_per_class_seeded() -> None:
    y = np.repeat(np.arange(5), 12)[np.random.default_rng(0).permutation(60)]
    names = [f"c{i}" for i in range(5)]
    a = draw_per_class(y, 3, seed=0, multi_label=False, class_names=names)
    assert np.bincount(y[a], minlength=5).tolist() == [3] * 5
    assert np.array_equal(a, draw_per_class(y, 3, 0, False, names))
    assert not np.array_equal(a, draw_per_class(y, 3, 1, False, names))
    with pytest.raises(EastkdError, match="class 'c0' has only 12"):
        draw_per_class(y, 13, 0, False, names)
    hot = (np.random.default_rng(1).random((60, 4)) < 0.4).astype(np.uint8)
    m = draw_per_class(hot, 2, 0, True, names[:4])
    assert (hot[m].sum(axis=0) >= 2).all() and len(m) <= 8


def test_label_scarce_probe_over_seeds(demo_store_master: Path) -> None:
    r = probe(str(demo_store_master), embeddings=[TEACHER], labels_per_class=2, seeds=3)
    (p,) = r.probes
    assert p["rows"]["train"] == 10 and p["seeds"] == [0, 1, 2] and len(p["C"]) == 3
    acc = p["test"]["accuracy"]
    assert acc["n"] == 3 and 0.0 <= acc["std"] and 0.0 <= acc["mean"] <= 1.0
    again = probe(str(demo_store_master), embeddings=[TEACHER], labels_per_class=2, seeds=3)
    assert again.probes[0]["test"] == p["test"]  # seeded


def test_unlabelled_items_are_ignored(demo_store: Path) -> None:
    with open_store(str(demo_store), "r+") as s:
        items = s.items
        test_rows = items.split_indices("test")[:3]
        labels = items.labels.copy()
        labels[test_rows] = 0
        s.update_items(dataclasses.replace(items, labels=labels), "test: unlabelled items")
    (p,) = probe(str(demo_store), embeddings=[TEACHER]).probes
    assert p["rows"]["test"] == 7


def test_frames_and_views_are_averaged_per_item(demo_store_master: Path) -> None:
    with open_store(str(demo_store_master)) as s:
        frames = s.embeddings(TEACHER).array("frames")
        rows = np.array([0, 5, 17, 79])
        got = read_pooled_rows(frames, rows)
        want = frames[:][rows].astype(np.float64).mean(axis=1)
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)


def test_cli_table_json_and_one_line_errors(demo_store_master: Path) -> None:
    runner = CliRunner()
    res = runner.invoke(cli, ["probe", str(demo_store_master), "--json"])
    assert res.exit_code == 0, res.output
    out = json.loads(res.output)
    assert out["selection_metric"] == "accuracy" and out["probes"][0]["name"] == TEACHER
    res = runner.invoke(cli, ["probe", str(demo_store_master)])
    assert res.exit_code == 0 and "test accuracy" in res.output
    assert f"embeddings/{TEACHER}" in res.output
    res = runner.invoke(cli, ["probe", str(demo_store_master), "--labels-per-class", "99"])
    assert res.exit_code == 1 and res.output.count("\n") == 1 and "choose a smaller K" in res.output


def test_multi_label_probe_is_one_vs_rest_scored_by_map(tmp_path: Path) -> None:
    from sklearn.multiclass import OneVsRestClassifier
    from test_compress import KEY, make_store, synthetic

    from eastkd.pipeline.core.metrics import multilabel_scores

    x, labels = synthetic(400, 24, n_classes=6, seed=3, multi_label=True)
    labels[labels.sum(axis=1) == 0] = 0  # (rows without a tag: unlabelled, ignored)
    path = make_store(tmp_path / "ml.zarr", x, labels, multi_label=True)
    report = probe(path)
    (p,) = report.probes
    assert report.metric == "pr_auc" and set(p["test"]) == {"roc_auc", "pr_auc"}
    with open_store(path) as s:
        splits = np.asarray(s.items.splits)
    keep = labels.sum(axis=1) > 0
    tr, te = (splits == "train") & keep, (splits == "test") & keep
    assert p["rows"]["test"] == int(te.sum())
    scaler = StandardScaler().fit(x[tr].astype(np.float32))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        m = OneVsRestClassifier(LogisticRegression(C=p["C"][0], max_iter=MAX_ITER)).fit(
            scaler.transform(x[tr].astype(np.float32)), labels[tr])
    want = multilabel_scores(labels[te], m.predict_proba(
        scaler.transform(x[te].astype(np.float32))))
    assert p["test"]["pr_auc"]["mean"] == pytest.approx(want["map"], abs=1e-6)
    assert p["test"]["roc_auc"]["mean"] == pytest.approx(want["roc_auc"], abs=1e-6)
    assert p["test"]["pr_auc"]["mean"] > labels[te].mean()  # above a random ranking
