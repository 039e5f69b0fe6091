"""The compress stage: streaming PCA against an exact in-memory PCA, the learned teacher
transformation, the targets section it writes, refusals, both backends and the CLI.

Stores are built through the store API from structured synthetic embeddings (class structure +
a decaying low-rank part + noise, float16 and offset from zero like real teacher outputs), and
one store holds real CREPE-tiny embeddings of rendered demo clips.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from sklearn.decomposition import PCA

from eastkd.cli.main import cli
from eastkd.pipeline.compress.learned import LearnedCompressor
from eastkd.pipeline.compress.options import parse_dim
from eastkd.pipeline.compress.pca import PCACompressor
from eastkd.pipeline.compress.run import (
    check_fit_rows,
    compress,
    default_plot_path,
    rows_fingerprint,
)
from eastkd.pipeline.core.registry import compressors
from eastkd.pipeline.datasets.esc50 import esc50_split_for_fold
from eastkd.store import (
    OK,
    PENDING,
    SKIPPED,
    ArraySpec,
    EastkdError,
    ItemsTable,
    StoreMismatchError,
    create_store,
    open_store,
)

KEY = "synth"
SPLIT_OF = ("train", "train", "train", "valid", "test")  # by item index modulo 5


def synthetic(n: int, d: int, n_classes: int = 4, seed: int = 0, multi_label: bool = False,
              sep: float = 1.5, label_noise: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    """float16 embeddings with class structure, a decaying low-rank part and noise."""
    rng = np.random.default_rng(seed)
    rank = min(8, d)
    basis = np.linalg.qr(rng.normal(size=(d, rank)))[0].T  # (rank, d) orthonormal rows
    z = rng.normal(size=(n, rank)) * np.linspace(3.0, 0.5, rank)
    if multi_label:
        logits = z[:, :4] @ rng.normal(size=(4, n_classes)) + rng.normal(size=(n, n_classes))
        labels = (logits > 1.0).astype(np.uint8)
        signal = labels @ rng.normal(size=(n_classes, d)) * 0.2
        labels[rng.random(labels.shape) < label_noise] ^= 1
    else:
        y = rng.integers(0, n_classes, n)
        signal = rng.normal(size=(n_classes, d))[y] * sep / np.sqrt(d) * 4
        flip = rng.random(n) < label_noise
        y = np.where(flip, rng.integers(0, n_classes, n), y)
        labels = np.eye(n_classes, dtype=np.uint8)[y]
    x = 3.0 + signal + z @ basis + 0.3 * rng.normal(size=(n, d))
    return x.astype(np.float16), labels


def make_store(path: Path, x: np.ndarray, labels: np.ndarray, multi_label: bool = False,
               status: np.ndarray | None = None, errors: list[str] | None = None,
               key: str = KEY, units_written: int | None = None,
               class_names: list[str] | None = None, splits: list[str] | None = None,
               extra: dict[str, np.ndarray] | None = None) -> str:
    """A store whose embeddings/<key> holds ``x`` (written in whole units, status last)."""
    n = len(x)
    ids = [f"clip{i:05d}" for i in range(n)]
    items = ItemsTable(
        ids=ids, paths=[f"/data/{i}.wav" for i in ids],
        sha256=[hashlib.sha256(i.encode()).hexdigest() for i in ids],
        durations=np.full(n, 1.0, np.float32),
        splits=splits or [SPLIT_OF[i % 5] for i in range(n)], labels=labels,
        extra=dict(extra or {}),
        class_names=[f"c{j}" for j in range(labels.shape[1])] if class_names is None
        else class_names,
        multi_label=multi_label,
    )
    with create_store(str(path), items, {"name": "synthetic", "source": "tests"}) as store:
        sec = store.require_section(
            "embeddings", key, {"clip": ArraySpec((x.shape[1],), x.dtype)},
            attrs={"teacher": "synthetic", "weights_sha256": "ab" * 32,
                   "embedding_dim": x.shape[1]},
            identity={"teacher": "synthetic", "weights_sha256": "ab" * 32})
        st = np.full(n, OK, np.uint8) if status is None else status
        err = errors or ["" if s == OK else "unreadable" for s in st]
        for u, start in enumerate(range(0, n, sec.unit)):
            if units_written is not None and u >= units_written:
                break
            stop = min(n, start + sec.unit)
            sec.write_block(start, {"clip": x[start:stop]}, st[start:stop], err[start:stop])
    return str(path)


def read_targets(path: str, name: str) -> tuple[np.ndarray, np.ndarray, dict, dict]:
    with open_store(path) as store:
        sec = store.targets(name)
        return sec.array("values")[:], sec.status(), sec.attrs, store.read_params(sec)


def train_rows(n: int) -> np.ndarray:
    return np.flatnonzero(np.array([SPLIT_OF[i % 5] == "train" for i in range(n)]))


def align_signs(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """``b`` with each row's sign flipped to agree with ``a``."""
    return b * np.sign(np.sum(a * b, axis=1))[:, None]


@pytest.fixture(scope="module")
def big(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, np.ndarray]:
    """17000 x 256 float16: three chunks (8192 items each) in the store."""
    x, labels = synthetic(17000, 256, seed=1)
    return make_store(tmp_path_factory.mktemp("big") / "big.zarr", x, labels), x


# ------------------------------------------------------------------------------------ PCA


def test_pca_equals_exact_in_memory_pca_over_several_chunks(big: tuple[str, np.ndarray]) -> None:
    path, x = big
    with open_store(path) as store:
        assert store.embeddings(KEY).array("clip").chunks[0] < len(x) / 2  # really streamed
    r = compress(path, KEY, "pca", 16, name="p16", plot=False, progress=False)
    assert (r.input_dim, r.output_dim, r.fit_rows, r.n_items) == (256, 16, 10200, 17000)
    values, status, attrs, params = read_targets(path, "p16")

    xt = x[train_rows(len(x))].astype(np.float64)
    mean = xt.mean(axis=0)
    _, s, vt = np.linalg.svd(xt - mean, full_matrices=False)
    ev = s**2 / (len(xt) - 1)
    np.testing.assert_allclose(params["mean"], mean, rtol=0, atol=1e-12)
    np.testing.assert_allclose(params["explained_variance"], ev[:16], rtol=1e-10)
    np.testing.assert_allclose(params["spectrum"], ev, rtol=0, atol=1e-10 * ev[0])
    np.testing.assert_allclose(params["explained_variance_ratio"], ev[:16] / ev.sum(), rtol=1e-10)
    comps = params["components"]
    np.testing.assert_allclose(comps, align_signs(comps, vt[:16]), rtol=0, atol=1e-9)
    # scikit-learn's sign convention (svd_flip on V): each component's largest loading is > 0
    assert (comps[np.arange(16), np.abs(comps).argmax(axis=1)] > 0).all()
    assert attrs["explained_variance"] == pytest.approx(ev[:16].sum() / ev.sum(), rel=1e-10)
    # every item (all splits) transformed; float32 targets of the exact projection
    assert values.dtype == np.float32 and values.shape == (17000, 16)
    assert (status == OK).all()
    exact = (x.astype(np.float64) - mean) @ comps.T
    np.testing.assert_allclose(values, exact, rtol=1e-5, atol=1e-4)
    assert attrs["fit_rows"] == 10200 and attrs["method"] == "pca" and attrs["dim"] == 16
    assert params["whiten"].tolist() == [0] and attrs["input_dim"] == 256
    assert attrs["dataset_fingerprint"] and attrs["source_weights_sha256"] == "ab" * 32


def test_streaming_block_size_does_not_change_the_fit(big: tuple[str, np.ndarray]) -> None:
    path, x = big
    rows = train_rows(len(x))
    with open_store(path) as store:
        src = store.embeddings(KEY).array("clip")
        fits = [PCACompressor(12).fit(src, rows, block_items=b) for b in (None, 1000, 17000)]
    one = PCACompressor(12).fit_array(x[rows])
    for f in fits:
        np.testing.assert_allclose(f.components_, one.components_, rtol=0, atol=1e-10)
        np.testing.assert_allclose(f.explained_variance_, one.explained_variance_, rtol=1e-11)
        np.testing.assert_allclose(f.mean_, one.mean_, rtol=0, atol=1e-12)


def test_fit_uses_the_fit_split_only_and_targets_cover_all_splits(tmp_path: Path) -> None:
    x, labels = synthetic(500, 32, seed=2)
    other = x.copy()
    held_out = np.array([SPLIT_OF[i % 5] != "train" for i in range(500)])
    other[held_out] = np.random.default_rng(9).normal(size=(held_out.sum(), 32)) * 50
    a = make_store(tmp_path / "a.zarr", x, labels)
    b = make_store(tmp_path / "b.zarr", other.astype(np.float16), labels)
    for p in (a, b):
        compress(p, KEY, "pca", 6, name="t", plot=False, progress=False)
    va, sa, _, pa = read_targets(a, "t")
    vb, sb, _, pb = read_targets(b, "t")
    for k in pa:
        np.testing.assert_array_equal(pa[k], pb[k])
    np.testing.assert_array_equal(va[~held_out], vb[~held_out])
    assert (sa == OK).all() and (sb == OK).all()
    assert not np.allclose(va[held_out], vb[held_out])  # valid/test transformed, not copied
    fit = PCACompressor(6).fit_array(other[held_out].astype(np.float16))
    assert not np.allclose(np.abs(fit.components_), np.abs(pb["components"]), atol=1e-2)
    # fitting on another split gives another fit
    r = compress(a, KEY, "pca", 6, name="tv", fit_split="valid", plot=False, progress=False)
    assert r.fit_rows == 100 and not np.allclose(read_targets(a, "tv")[3]["mean"], pa["mean"])


def test_variance_fraction_chooses_the_smallest_sufficient_dim(tmp_path: Path) -> None:
    x, labels = synthetic(400, 40, seed=3)
    path = make_store(tmp_path / "s.zarr", x, labels)
    r = compress(path, KEY, "pca", "0.9", plot=False, progress=False)
    assert r.name == f"{KEY}-pca0.9"
    _, _, attrs, params = read_targets(path, r.name)
    cum = np.cumsum(params["spectrum"]) / params["spectrum"].sum()
    d = r.output_dim
    assert cum[d - 1] >= 0.9 > cum[d - 2] and 1 < d < 40
    assert attrs["explained_variance"] == pytest.approx(cum[d - 1])
    assert r.explained_variance == pytest.approx(cum[d - 1])
    assert attrs["identity"]["dim"] == 0.9


def test_whiten_gives_unit_variance_on_train(tmp_path: Path) -> None:
    x, labels = synthetic(500, 24, seed=4)
    path = make_store(tmp_path / "w.zarr", x, labels)
    compress(path, KEY, "pca", 10, name="w", whiten=True, plot=False, progress=False)
    values, _, attrs, _ = read_targets(path, "w")
    t = values[train_rows(500)].astype(np.float64)
    np.testing.assert_allclose(t.mean(axis=0), 0, atol=1e-5)
    np.testing.assert_allclose(np.cov(t, rowvar=False), np.eye(10), atol=1e-5)
    assert attrs["whiten"] is True


def test_real_crepe_tiny_embeddings(tmp_path: Path) -> None:
    """PCA and the learned map on real teacher embeddings of rendered instrument clips."""
    import soundfile as sf
    import torch

    from eastkd.pipeline.demo.data import render_demo_dataset
    from eastkd.pipeline.teachers.crepe import crepe_tiny

    manifest = render_demo_dataset(tmp_path / "demo", clips_per_class=3, seconds=0.5,
                                   sample_rate=16000, seed=5, progress=False)
    rows = [line.split(",") for line in manifest.read_text().splitlines()[1:]]
    classes = sorted({r[2] for r in rows})
    wave = torch.stack([torch.from_numpy(sf.read(manifest.parent / r[1], dtype="float32")[0])
                        for r in rows])
    teacher = crepe_tiny()
    with torch.inference_mode():
        emb = teacher(wave).clip.numpy().astype(np.float16)
    labels = np.eye(len(classes), dtype=np.uint8)[[classes.index(r[2]) for r in rows]]
    path = make_store(tmp_path / "crepe.h5", emb, labels, key="crepe-tiny")
    r = compress(path, None, "pca", 8, plot=False, progress=False)
    assert r.name == "crepe-tiny-pca8" and r.input_dim == 256
    _, _, _, params = read_targets(path, r.name)
    xt = emb[train_rows(len(emb))].astype(np.float64)
    sk = PCA(8, svd_solver="full").fit(xt)
    np.testing.assert_allclose(params["components"], sk.components_, atol=1e-7)
    np.testing.assert_allclose(params["explained_variance"], sk.explained_variance_, rtol=1e-8)
    r = compress(path, None, "learned", 8, epochs=5, plot=False, progress=False)
    values, status, _, _ = read_targets(path, r.name)
    assert values.shape == (len(emb), 8) and (status == OK).all() and np.isfinite(values).all()


# -------------------------------------------------------------------------------- learned


def test_learned_single_label_beats_chance_and_stops_early(tmp_path: Path) -> None:
    x, labels = synthetic(1000, 48, n_classes=4, seed=5, sep=0.6, label_noise=0.2)
    path = make_store(tmp_path / "l.zarr", x, labels)
    r = compress(path, KEY, "learned", 8, name="l", epochs=300, patience=5, plot=False,
                 progress=False)
    values, status, attrs, params = read_targets(path, "l")
    assert r.metric == "accuracy" and attrs["probe_metric"]["chance"] < 0.35
    assert r.metric_value > attrs["probe_metric"]["chance"] + 0.3
    curve = attrs["learning_curve"]
    assert attrs["early_stopped"] and len(curve) == attrs["epochs_run"] < 300
    best = attrs["best_epoch"]
    assert len(curve) == best + 5  # patience epochs without improvement after the best
    assert r.metric_value == curve[best - 1]["valid_accuracy"] == max(
        p["valid_accuracy"] for p in curve)
    # the stored weights are the best epoch's: the stored classifier on the stored targets
    # reproduces the reported validation accuracy
    valid = np.flatnonzero([SPLIT_OF[i % 5] == "valid" for i in range(1000)])
    logits = values[valid] @ params["classifier_weight"].T + params["classifier_bias"]
    acc = (logits.argmax(axis=1) == labels[valid].argmax(axis=1)).mean()
    assert acc == pytest.approx(r.metric_value, abs=1e-9)
    # targets = W standardised(x) + b, with the train mean/std stored
    t = x[train_rows(1000)].astype(np.float64)
    np.testing.assert_allclose(params["input_mean"], t.mean(axis=0), atol=1e-4)
    np.testing.assert_allclose(params["input_std"], t.std(axis=0), rtol=1e-4)
    std_x = (x - params["input_mean"]) / params["input_std"]
    manual = std_x @ params["weight"].T + params["bias"]
    np.testing.assert_allclose(values, manual, rtol=1e-4, atol=1e-4)
    assert params["weight"].shape == (8, 48) and params["classifier_weight"].shape == (4, 8)
    assert (status == OK).all()
    # seeded: the same settings give the same weights; another seed other weights
    compress(path, KEY, "learned", 8, name="l2", epochs=300, patience=5, plot=False,
             progress=False)
    np.testing.assert_array_equal(read_targets(path, "l2")[3]["weight"], params["weight"])
    compress(path, KEY, "learned", 8, name="l3", epochs=3, seed=1, plot=False, progress=False)
    assert not np.allclose(read_targets(path, "l3")[3]["weight"], params["weight"])


def test_learned_multi_label_beats_chance(tmp_path: Path) -> None:
    x, labels = synthetic(1000, 48, n_classes=6, seed=6, multi_label=True, label_noise=0.1)
    labels[:, 5] = 0  # a tag that never occurs: guarded in the metrics, not a crash
    path = make_store(tmp_path / "m.h5", x, labels, multi_label=True)
    r = compress(path, KEY, "learned", 6, name="m", epochs=200, patience=5, plot=False,
                 progress=False)
    _, _, attrs, params = read_targets(path, "m")
    assert r.metric == "map" and attrs["probe_metric"]["chance"] < 0.5
    assert r.metric_value > attrs["probe_metric"]["chance"] + 0.25
    assert attrs["probe_metric"]["roc_auc"] > 0.8
    assert attrs["early_stopped"] and attrs["epochs_run"] < 200
    assert params["classifier_weight"].shape == (6, 6)


def test_learned_guards(tmp_path: Path) -> None:
    x, labels = synthetic(100, 8, seed=7)
    path = make_store(tmp_path / "g.zarr", x, labels)
    with pytest.raises(EastkdError, match="--method pca only"):
        compress(path, KEY, "learned", 4, whiten=True, plot=False, progress=False)
    with pytest.raises(EastkdError, match="whole number"):
        compress(path, KEY, "learned", 0.5, plot=False, progress=False)
    unlabelled = make_store(tmp_path / "u.zarr", x, np.zeros((100, 1), np.uint8),
                            class_names=[])
    with pytest.raises(EastkdError, match="labels"):
        compress(unlabelled, KEY, "learned", 4, plot=False, progress=False)


# ------------------------------------------------------------------- section, refusals, reuse


def _embedding_digest(path: str) -> str:
    with open_store(path) as store:
        sec = store.embeddings(KEY)
        h = hashlib.sha256(sec.array("clip")[:].tobytes() + sec.status().tobytes())
        h.update(repr(sorted(sec.attrs.items())).encode())
        return h.hexdigest()


def test_refusals_name_the_problem_and_leave_embeddings_alone(tmp_path: Path) -> None:
    x, labels = synthetic(200, 16, seed=8)
    path = make_store(tmp_path / "r.zarr", x, labels)
    before = _embedding_digest(path)
    compress(path, KEY, "pca", 4, name="t", plot=False, progress=False)
    with pytest.raises(StoreMismatchError, match="differs in: dim"):
        compress(path, KEY, "pca", 5, name="t", plot=False, progress=False)
    with pytest.raises(StoreMismatchError, match="whiten"):
        compress(path, KEY, "pca", 4, name="t", whiten=True, plot=False, progress=False)
    assert read_targets(path, "t")[0].shape == (200, 4)  # the refused runs changed nothing
    compress(path, KEY, "pca", 5, name="t", overwrite=True, plot=False, progress=False)
    assert read_targets(path, "t")[0].shape == (200, 5)
    cases = [
        (dict(embeddings_key="nope"), r"no embeddings 'nope'.*have: synth"),
        (dict(dim=17), "larger than the 16-d"),
        (dict(dim=0), "positive"),
        (dict(dim="abc"), "expected a whole number"),
        (dict(dim=2.5), "whole number"),
        (dict(method="ica"), "learned, pca"),
        (dict(fit_split="dev"), r"no such split.*have: test, train, valid"),
    ]
    base = dict(store_path=path, embeddings_key=KEY, method="pca", dim=4, plot=False,
                progress=False)
    for change, message in cases:
        with pytest.raises(EastkdError, match=message):
            compress(**{**base, **change})
    few = make_store(tmp_path / "few.zarr", x[:10], labels[:10])  # 6 train rows
    with pytest.raises(EastkdError, match="at most 6 components"):
        compress(few, KEY, "pca", 8, plot=False, progress=False)
    assert _embedding_digest(path) == before


def test_incomplete_embeddings_are_refused(tmp_path: Path) -> None:
    x, labels = synthetic(40000, 8, seed=9)  # 16-byte rows: several write units
    path = make_store(tmp_path / "p.zarr", x, labels, units_written=1)
    with open_store(path) as store:
        assert (store.embeddings(KEY).status() == PENDING).any()
    with pytest.raises(EastkdError, match=r"embeddings/synth is unfinished.*eastkd extract"):
        compress(path, KEY, "pca", 4, plot=False, progress=False)
    with open_store(path) as store:
        assert not store.has_section("targets", f"{KEY}-pca4")


def test_skipped_items_are_excluded_and_stay_skipped(tmp_path: Path) -> None:
    x, labels = synthetic(300, 20, seed=10)
    status = np.full(300, OK, np.uint8)
    status[[0, 5, 6, 150, 299]] = SKIPPED
    x[status == SKIPPED] = 1000.0  # garbage that would dominate a fit that used it
    errors = ["" if s == OK else "decode failed: truncated file" for s in status]
    path = make_store(tmp_path / "k.zarr", x, labels, status=status, errors=errors)
    r = compress(path, KEY, "pca", 5, name="k", plot=False, progress=False)
    values, st, _, params = read_targets(path, "k")
    np.testing.assert_array_equal(st, status)
    assert (values[status == SKIPPED] == 0).all()
    rows = train_rows(300)
    rows = rows[status[rows] == OK]
    assert r.fit_rows == len(rows) and r.skipped == 5
    ref = PCACompressor(5).fit_array(x[rows])
    np.testing.assert_allclose(params["components"], ref.components_, atol=1e-10)
    with open_store(path) as store:
        skipped = dict(store.targets("k").skipped())
    assert skipped["clip00005"] == "skipped in embeddings/synth: decode failed: truncated file"


def test_rerun_reuses_finished_targets_until_embeddings_change(tmp_path: Path) -> None:
    x, labels = synthetic(200, 16, seed=11)
    path = make_store(tmp_path / "u.zarr", x, labels)
    first = compress(path, KEY, "pca", 4, name="t", plot=False, progress=False)
    created = read_targets(path, "t")[2]["created"]
    again = compress(path, KEY, "pca", 4, name="t", plot=False, progress=False)
    assert not first.reused and again.reused
    assert read_targets(path, "t")[2]["created"] == created
    assert again.explained_variance == first.explained_variance
    with open_store(path, "r+") as store:  # an item becomes skipped after a re-extract
        store.embeddings(KEY).write_block(0, {}, np.array([SKIPPED], np.uint8), ["gone"])
    third = compress(path, KEY, "pca", 4, name="t", plot=False, progress=False)
    assert not third.reused and third.skipped == 1


@pytest.mark.parametrize("method", ["pca", "learned"])
def test_zarr_and_hdf5_give_equal_targets(tmp_path: Path, method: str) -> None:
    x, labels = synthetic(600, 32, seed=12)
    out = []
    for ext in ("zarr", "h5"):
        path = make_store(tmp_path / f"s.{ext}", x, labels)
        compress(path, KEY, method, 6, name="t", epochs=20, plot=False, progress=False)
        out.append(read_targets(path, "t"))
    (va, sa, aa, pa), (vb, sb, ab, pb) = out
    np.testing.assert_array_equal(va, vb)
    np.testing.assert_array_equal(sa, sb)
    assert sorted(pa) == sorted(pb)
    for k in pa:
        np.testing.assert_array_equal(pa[k], pb[k])
    assert aa["identity"] == ab["identity"]


# ------------------------------------------------------------------------------------ folds


def _fold_store(path: Path, test_fold: int | None = None) -> tuple[str, np.ndarray]:
    """ESC-50-like: 500 items in folds 1-5 (``i % 5 + 1``), stored split = fold 5 test, fold 4
    valid; with ``test_fold`` the stored split is that fold's and the fold column is dropped."""
    x, labels = synthetic(500, 24, n_classes=4, seed=21, sep=0.6)
    folds = np.arange(500) % 5 + 1
    split_fold = test_fold or 5
    splits = [esc50_split_for_fold(int(f), split_fold) for f in folds]
    extra = {} if test_fold else {"fold": folds}
    return make_store(path, x, labels, splits=splits, extra=extra), folds


def test_compress_fold_fits_on_the_folds_distill_trains_on(tmp_path: Path) -> None:
    path, folds = _fold_store(tmp_path / "f.zarr")
    r = compress(path, KEY, "learned", 4, name="l-f3", fold=3, epochs=30, plot=False,
                 progress=False)
    _, _, attrs, params = read_targets(path, "l-f3")
    train = np.flatnonzero(np.isin(folds, [1, 4, 5]))  # fold 3 test, fold 2 valid
    assert r.fold == 3 and r.fit_rows == attrs["fit_rows"] == len(train) == 300
    assert attrs["fold"] == 3 and attrs["fit_split"] == "train"
    with open_store(path) as store:
        assert attrs["fit_rows_sha256"] == rows_fingerprint(store, train)
        assert attrs["valid_rows_sha256"] == rows_fingerprint(store, np.flatnonzero(folds == 2))
    # the same fit as on a store whose stored split is fold 3's
    same = _fold_store(tmp_path / "s.zarr", test_fold=3)[0]
    compress(same, KEY, "learned", 4, name="l", epochs=30, plot=False, progress=False)
    ref = read_targets(same, "l")[3]
    for k in ("weight", "bias", "input_mean", "input_std"):
        np.testing.assert_array_equal(params[k], ref[k])
    # PCA early-stops on nothing: it records no valid rows
    compress(path, KEY, "pca", 4, name="p-f3", fold=3, plot=False, progress=False)
    assert read_targets(path, "p-f3")[2]["valid_rows_sha256"] is None
    with pytest.raises(EastkdError, match="needs an items column 'fold'"):
        compress(same, KEY, "pca", 4, name="p", fold=3, plot=False, progress=False)


def test_targets_that_saw_a_runs_valid_or_test_items_are_refused(tmp_path: Path) -> None:
    path, _ = _fold_store(tmp_path / "f.zarr")
    compress(path, KEY, "learned", 4, name="stored", epochs=5, plot=False, progress=False)
    compress(path, KEY, "learned", 4, name="f3", fold=3, epochs=5, plot=False, progress=False)
    compress(path, KEY, "pca", 4, name="pca-f3", fold=3, plot=False, progress=False)
    with open_store(path) as store:
        def check(name: str, fold: int | None) -> None:
            sec = store.targets(name)
            check_fit_rows(store, sec.path, sec.attrs, fold)

        check("stored", None)  # stored split = fold 5's: fine for fold 5
        check("stored", 5)
        check("f3", 3)
        check("pca-f3", 3)
        # the README recipe: targets fitted on the stored split used for folds 1-4
        for fold in (1, 2, 3):
            with pytest.raises(EastkdError, match=rf"fitted on 100 items that are test items "
                                                  rf"of this run \(compress fold None, "
                                                  rf"distill fold {fold}\)"):
                check("stored", fold)
        with pytest.raises(EastkdError, match="fitted on 100 items that are valid items"):
            check("stored", 4)  # fold 3 (fitted on) is fold 4's valid fold
        with pytest.raises(EastkdError, match="valid items .*compress --fold 2"):
            check("f3", 2)  # fold 3's fit rows (folds 1, 4, 5) hold fold 2's valid fold 1
        # PCA of fold 3 against fold 4: its fit rows (folds 1, 4, 5) hold fold 4's test items
        with pytest.raises(EastkdError, match="fitted on 100 items that are test items"):
            check("pca-f3", 4)
        # raw embeddings carry no fit: nothing to check
        check_fit_rows(store, f"embeddings/{KEY}", store.embeddings(KEY).attrs, 2)
    # the learned targets of fold 5 early-stop on fold 4: refused for a run testing on fold 4
    compress(path, KEY, "learned", 4, name="f5", fold=5, epochs=5, plot=False, progress=False)
    compress(path, KEY, "learned", 4, name="f4v", fold=4, fit_split="valid", epochs=5,
             plot=False, progress=False)
    with open_store(path) as store:
        sec = store.targets("f4v")  # fitted on fold 3 = fold 4's valid items
        with pytest.raises(EastkdError, match="fitted on 100 items that are valid items"):
            check_fit_rows(store, sec.path, sec.attrs, 4)


def test_probe_targets_are_probabilities_for_every_row_with_class_names(tmp_path: Path) -> None:
    from eastkd.pipeline.probe.run import probe

    x, labels = synthetic(300, 24, n_classes=4, seed=5, sep=0.8)
    labels[::7] = 0  # unlabelled items: ignored by the fit, still given probabilities
    path = make_store(tmp_path / "p.zarr", x, labels, class_names=["a", "b", "c", "d"])
    r = compress(path, KEY, "probe", "128", plot=False, progress=False)
    values, status, attrs, params = read_targets(path, f"{KEY}-probe")
    assert r.name == f"{KEY}-probe" and r.output_dim == 4 and values.shape == (300, 4)
    assert (status == OK).all()
    np.testing.assert_allclose(values.sum(axis=1), 1.0, atol=1e-5)
    assert (values >= 0).all()
    assert attrs["kind"] == "probabilities" and attrs["class_names"] == ["a", "b", "c", "d"]
    train = train_rows(300)
    assert attrs["fit_rows"] == int((labels[train].sum(axis=1) == 1).sum())  # labelled only
    # the same fit as `eastkd probe`: its scores are the probe command's
    (ref,) = probe(path, embeddings=[KEY]).probes
    assert attrs["probe_metric"]["C"] == ref["C"][0]
    for split in ("valid", "test"):
        assert attrs["probe_scores"][split]["accuracy"] == ref[split]["accuracy"]["mean"]
        assert attrs["probe_scores"][split]["rows"] == ref["rows"][split]
    # the stored parameters reproduce the probabilities: softmax(standardised x . W + b)
    z = (x.astype(np.float32) - params["input_mean"]) / params["input_std"]
    logits = z @ params["weight"].T + params["bias"]
    soft = np.exp(logits - logits.max(axis=1, keepdims=True))
    np.testing.assert_allclose(soft / soft.sum(axis=1, keepdims=True), values, atol=1e-4)
    assert attrs["probe_scores"]["test"]["accuracy"] > 0.5  # 4 classes: chance 0.25


def test_probe_targets_of_another_fold_are_refused(tmp_path: Path) -> None:
    path, folds = _fold_store(tmp_path / "f.zarr")
    compress(path, KEY, "probe", "1", name="probe-f3", fold=3, plot=False, progress=False)
    _, _, attrs, _ = read_targets(path, "probe-f3")
    with open_store(path) as store:
        assert attrs["valid_rows_sha256"] == rows_fingerprint(store, np.flatnonzero(folds == 2))
        sec = store.targets("probe-f3")
        check_fit_rows(store, sec.path, sec.attrs, 3)
        with pytest.raises(EastkdError, match="fitted on 100 items that are test items"):
            check_fit_rows(store, sec.path, sec.attrs, 4)
        with pytest.raises(EastkdError, match="fitted on 100 items that are valid items .*"
                                              r"\(compress fold 3, distill fold 2\)"):
            check_fit_rows(store, sec.path, sec.attrs, 2)


def test_registry_and_parse_dim() -> None:
    assert compressors.get("pca") is PCACompressor
    assert compressors.get("learned") is LearnedCompressor
    assert parse_dim("64") == 64 and parse_dim("64.0") == 64 and parse_dim("0.95") == 0.95
    assert default_plot_path("/a/b/demo.zarr/", "x") == "/a/b/demo.zarr.x.png"


# ------------------------------------------------------------------------------------- CLI


def test_cli_prints_a_table_writes_a_png_and_fails_in_one_line(tmp_path: Path) -> None:
    x, labels = synthetic(300, 24, seed=13)
    path = make_store(tmp_path / "c.zarr", x, labels)
    runner = CliRunner()
    res = runner.invoke(cli, ["compress", path, "--dim", "0.8", "--no-progress"])
    assert res.exit_code == 0, res.output
    assert "24 -> " in res.output and "explained variance" in res.output
    assert "180 (train)" in res.output
    png = default_plot_path(path, f"{KEY}-pca0.8")
    assert f"plot        {png}" in res.output
    assert Path(png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and os.path.getsize(png) > 5000
    assert Path(png).parent == Path(path).parent  # beside the store, not inside it

    plot = tmp_path / "figs" / "curve.png"
    res = runner.invoke(cli, ["compress", path, "--embeddings", KEY, "--method", "learned",
                              "--dim", "4", "--epochs", "8", "--plot", str(plot),
                              "--no-progress"])
    assert res.exit_code == 0, res.output
    assert "valid accuracy" in res.output and plot.stat().st_size > 5000

    res = runner.invoke(cli, ["compress", path, "--dim", "25", "--no-progress"])
    assert res.exit_code == 1
    lines = res.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: ") and "at most 24" in lines[0]
    assert "Traceback" not in res.output

    res = runner.invoke(cli, ["compress", "--help"])
    text = " ".join(res.output.split())
    assert res.exit_code == 0 and "[default: <key>-<method><dim>; probe: <key>-probe]" in text
    assert "--kd kl" in text  # --method probe's soft labels
    assert "two-stage, offline" in text and "--teacher-linear" in text and "--fold" in text

    res = runner.invoke(cli, ["compress", path, "--dim", "4", "--fold", "2", "--no-progress"])
    assert res.exit_code == 1 and "needs an items column 'fold'" in res.output
