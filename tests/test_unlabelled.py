"""Unlabelled items on real audio: class folders plus folders of unlabelled audio in one store,
manifests with empty labels, train-only refusals, stratified splits of the labelled items,
``info`` counts, the items table's ``labelled`` column (and stores without it), the rows
compress fits on."""

from __future__ import annotations

import csv
import json
import shutil
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from conftest import TEACHER_OPTS

from eastkd.cli.main import cli
from eastkd.errors import EastkdError
from eastkd.pipeline.core.reading import split_rows
from eastkd.pipeline.datasets.base import DatasetSpec, Item
from eastkd.pipeline.datasets.manifest import load_manifest, resolve_dataset
from eastkd.store import FORMAT_VERSION, ItemsTable, open_store

pytestmark = pytest.mark.usefixtures("one_thread")

LABELLED_PER_CLASS = 8  # of the demo's 16 clips per class; the other 8 go unlabelled


def _demo_rows(manifest: Path) -> list[dict[str, str]]:
    return list(csv.DictReader(manifest.open()))


@pytest.fixture(scope="module")
def folders(tmp_path_factory: pytest.TempPathFactory, demo_manifest: Path) -> dict[str, Path]:
    """Class folders with 8 clips per class, an unlabelled folder beside them (the other 8 per
    class) and a small one inside the dataset folder (which must not become a class)."""
    base = tmp_path_factory.mktemp("unlabelled_data")
    root, outside = base / "classes", base / "field_recordings"
    seen: Counter[str] = Counter()
    for row in _demo_rows(demo_manifest):
        src = demo_manifest.parent / row["path"]
        seen[row["label"]] += 1
        k = seen[row["label"]]
        if k <= LABELLED_PER_CLASS:
            dst = root / row["label"] / f"{row['id']}.wav"
        elif k <= 2 * LABELLED_PER_CLASS - 1:
            dst = outside / f"{row['id']}.wav"
        else:
            dst = root / "unsorted" / f"{row['id']}.wav"
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(src, dst)
    return {"root": root, "outside": outside, "inside": root / "unsorted"}


def _cli(*args: object) -> tuple[int, str]:
    res = CliRunner().invoke(cli, [str(a) for a in args])
    if res.exception is not None and not isinstance(res.exception, SystemExit):
        raise res.exception
    return res.exit_code, res.output


def _extract_args(folders: dict[str, Path], store: Path) -> list[object]:
    return ["extract", folders["root"], store, "--teacher", "crepe-tiny", "--teacher-opt",
            f"hop_ms={TEACHER_OPTS['hop_ms']}", "--workers", "0", "--no-progress",
            "--unlabelled", folders["outside"], "--unlabelled", folders["inside"]]


@pytest.fixture(scope="module")
def mixed_store(tmp_path_factory: pytest.TempPathFactory, folders: dict[str, Path]) -> Path:
    """One store built by one command from the class folders plus both unlabelled folders."""
    store = tmp_path_factory.mktemp("unlabelled_store") / "mixed.zarr"
    code, out = _cli(*_extract_args(folders, store))
    assert code == 0, out
    return store


# -- datasets ----------------------------------------------------------------------------------


def test_folder_plus_unlabelled_folders(folders: dict[str, Path]) -> None:
    plain = resolve_dataset(str(folders["root"]), unlabelled=[str(folders["inside"])])
    spec = resolve_dataset(str(folders["root"]),
                           unlabelled=[str(folders["outside"]), str(folders["inside"])])
    assert spec.class_names == sorted({p.name for p in folders["root"].iterdir()} - {"unsorted"})
    unl = [it for it in spec.items if not it.labelled]
    assert len(unl) == 5 * (LABELLED_PER_CLASS - 1) + 5
    assert all(it.split == "train" and it.labels == [] for it in unl)
    # ids: relative to the dataset folder when inside it, else to the folder's parent
    assert {it.id.split("/")[0] for it in unl} == {"field_recordings", "unsorted"}
    # the labelled items and their stratified split do not depend on the unlabelled folders
    labelled = [(it.id, it.split, it.labels) for it in spec.items if it.labelled]
    assert labelled == [(it.id, it.split, it.labels) for it in plain.items if it.labelled]
    assert Counter(s for _, s, _ in labelled) == {"train": 28, "valid": 6, "test": 6}
    assert spec.unlabelled_sources == [str(folders["outside"].resolve()),
                                       str(folders["inside"].resolve())]


def test_unlabelled_folder_errors(folders: dict[str, Path], tmp_path: Path) -> None:
    with pytest.raises(EastkdError, match=r"--unlabelled .*nowhere: no such folder"):
        resolve_dataset(str(folders["root"]), unlabelled=[str(tmp_path / "nowhere")])
    (tmp_path / "empty").mkdir()
    with pytest.raises(EastkdError, match=r"--unlabelled .*empty: holds no audio files"):
        resolve_dataset(str(folders["root"]), unlabelled=[str(tmp_path / "empty")])
    twin = tmp_path / "x" / "field_recordings"  # same folder name: the same ids
    shutil.copytree(folders["outside"], twin)
    with pytest.raises(EastkdError, match=r"give the same id 'field_recordings/"):
        resolve_dataset(str(folders["root"]), unlabelled=[str(folders["outside"]), str(twin)])


def test_manifest_with_empty_labels(demo_manifest: Path, tmp_path: Path) -> None:
    """Rows with an empty label are unlabelled train items; without a split column the
    labelled rows get the same stratified split as a manifest without the unlabelled rows."""
    rows = _demo_rows(demo_manifest)
    base = demo_manifest.parent
    full, labelled_only = tmp_path / "full.csv", tmp_path / "labelled.csv"
    with full.open("w", newline="") as f, labelled_only.open("w", newline="") as g:
        wf, wg = csv.writer(f), csv.writer(g)
        wf.writerow(["id", "path", "label"])
        wg.writerow(["id", "path", "label"])
        for k, r in enumerate(rows):
            path = str(base / r["path"])
            if k % 3 == 0:
                wf.writerow([r["id"], path, ""])
            else:
                wf.writerow([r["id"], path, r["label"]])
                wg.writerow([r["id"], path, r["label"]])
    spec, ref = load_manifest(str(full)), load_manifest(str(labelled_only))
    unl = [it for it in spec.items if not it.labelled]
    assert len(unl) == len(rows[::3]) and all(it.split == "train" for it in unl)
    assert [(it.id, it.split, it.labels) for it in spec.items if it.labelled] == \
        [(it.id, it.split, it.labels) for it in ref.items]
    assert spec.split_info == ref.split_info


def test_multilabel_manifest_empty_labels_and_labelled_column(tmp_path: Path,
                                                             demo_manifest: Path) -> None:
    wav = demo_manifest.parent / _demo_rows(demo_manifest)[0]["path"]
    text = ("id,path,labels,split,labelled\n"
            f"a,{wav},x;y,train,\n"
            f"b,{wav},,train,\n"  # empty labels: unlabelled
            f"c,{wav},,valid,1\n"  # labelled, no positive tag
            f"d,{wav},,,\n")  # unlabelled, no split: train
    (tmp_path / "m.csv").write_text(text)
    spec = load_manifest(str(tmp_path / "m.csv"))
    assert [(i.id, i.labelled, i.split, i.labels) for i in spec.items] == [
        ("a", True, "train", [0, 1]), ("b", False, "train", []), ("c", True, "valid", []),
        ("d", False, "train", [])]
    (tmp_path / "bad.csv").write_text(text.replace(",valid,1", ",test,"))
    with pytest.raises(EastkdError, match=r"bad\.csv:4: id 'c' has no label but is a test row"):
        load_manifest(str(tmp_path / "bad.csv"))


def test_adapter_with_unlabelled_valid_item_is_refused() -> None:
    spec = DatasetSpec("x", [Item("a", "/a.wav", "train", [0]),
                             Item("b", "/b.wav", "valid", labelled=False)], ["c"])
    with pytest.raises(EastkdError, match=r"item 'b' \(/b\.wav\) has no label but is a valid"):
        spec.check_unlabelled()


# -- the store ---------------------------------------------------------------------------------


def test_store_records_unlabelled_items(mixed_store: Path, folders: dict[str, Path]) -> None:
    with open_store(str(mixed_store)) as s:
        items = s.items
        assert s.attrs["format_version"] == FORMAT_VERSION == 3
        assert s.attrs["dataset"]["unlabelled"] == [str(folders["outside"].resolve()),
                                                    str(folders["inside"].resolve())]
        mask = items.labelled_mask
        assert int((~mask).sum()) == 40 and not items.labels[~mask].any()
        assert set(np.asarray(items.splits)[~mask]) == {"train"}
        assert (items.label[~mask] == -1).all()
        assert np.array_equal(s.backend.read("items/labelled"), mask.astype(np.uint8))
        train = split_rows(s, "train")
        unl = split_rows(s, "train", labelled=False)
        both = split_rows(s, "train", labelled=None)
        assert mask[train].all() and not mask[unl].any() and len(train) == 28
        assert np.array_equal(np.sort(np.concatenate([train, unl])), both)
        assert mask[split_rows(s, "valid")].all()
        assert split_rows(s, "valid", labelled=False).size == 0


def test_info_counts_labelled_and_unlabelled(mixed_store: Path) -> None:
    code, out = _cli("info", mixed_store, "--json")
    d = json.loads(out)
    assert code == 0
    assert d["labelled"] == {"test": 6, "train": 28, "valid": 6}
    assert d["unlabelled"] == {"test": 0, "train": 40, "valid": 0}
    code, out = _cli("info", mixed_store)
    assert ("labels   train 28 labelled + 40 unlabelled, valid 6 labelled + 0 unlabelled, "
            "test 6 labelled + 0 unlabelled") in out


def test_rerun_continues_and_needs_the_same_folders(mixed_store: Path,
                                                    folders: dict[str, Path]) -> None:
    code, out = _cli(*_extract_args(folders, mixed_store))
    assert code == 0 and "0 written, 0 skipped now, 80 already done, of 80 items" in out, out
    code, out = _cli(*_extract_args(folders, mixed_store)[:-2])  # without the inside folder
    errors = [line for line in out.splitlines() if line.startswith("Error:")]
    assert code != 0 and len(errors) == 1 and "Traceback" not in out
    assert f"was written with --unlabelled {folders['outside'].resolve()} --unlabelled" in \
        errors[0]


def test_fully_labelled_tables_keep_their_identity() -> None:
    """No unlabelled item: checksum and fingerprint are those of a table without the column
    (existing stores stay valid); one unlabelled item changes both."""
    n = 4
    base = dict(ids=list("abcd"), paths=list("abcd"), sha256=["0" * 64] * n,
                durations=np.ones(n, np.float32), splits=["train"] * 3 + ["valid"],
                labels=np.eye(n, 2, dtype=np.uint8), class_names=["p", "q"])
    old = ItemsTable(**base)
    full = ItemsTable(**base, labelled=np.ones(n, bool))
    assert (old.fingerprint(), old.content_sha256()) == (full.fingerprint(), full.content_sha256())
    labels = base["labels"].copy()
    labels[2] = 0
    one = ItemsTable(**{**base, "labels": labels}, labelled=np.array([1, 1, 0, 1], bool))
    same_rows = ItemsTable(**{**base, "labels": labels})  # item 2 labelled with no class
    assert one.fingerprint() != same_rows.fingerprint()
    assert one.content_sha256() != same_rows.content_sha256()


def test_store_without_the_column_reads_as_all_labelled(demo_store: Path) -> None:
    """A format-2 store has no items/labelled: every item is labelled and the recorded
    checksum and fingerprint still hold."""
    with open_store(str(demo_store), "r+") as s:
        assert s.backend.exists("items/labelled")
        s.backend.delete("items/labelled")
        s.backend.update_attrs("", {"format_version": 2})
    with open_store(str(demo_store)) as s:
        assert s.items.labelled_mask.all() and not s.items.has_unlabelled
        assert "labelled" not in s.items.extra
    code, out = _cli("verify", demo_store, "--no-progress")
    assert code == 0, out


# -- compress ----------------------------------------------------------------------------------


def test_compress_pca_fits_all_train_rows_learned_the_labelled(mixed_store: Path,
                                                               tmp_path: Path) -> None:
    store = tmp_path / "m.zarr"
    shutil.copytree(mixed_store, store)
    code, out = _cli("compress", store, "--method", "pca", "--dim", "8", "--name", "p",
                     "--no-progress")
    assert code == 0, out
    code, out = _cli("compress", store, "--method", "learned", "--dim", "8", "--name", "l",
                     "--epochs", "3", "--no-progress")
    assert code == 0, out
    with open_store(str(store)) as s:
        assert s.targets("p").attrs["fit_rows"] == 68  # 28 labelled + 40 unlabelled
        assert s.targets("l").attrs["fit_rows"] == 28  # labelled only


# -- distill's two streams ---------------------------------------------------------------------


def _splits(store: Path, **feed: object) -> tuple:  # noqa: ANN401
    from eastkd.pipeline.core.reading import load_split, resolve_targets

    s = open_store(str(store))
    spec = resolve_targets(s, "crepe-tiny")
    lab = load_split(s, "train", spec, **feed)
    unl = load_split(s, "train", spec, labelled=False, **feed)
    return s, lab, unl


@pytest.mark.parametrize("feed", [{}, {"memory_limit": 0, "workers": 0}],
                         ids=["resident", "streamed"])
def test_steps_draw_both_streams_and_only_labelled_rows_reach_the_task(mixed_store: Path,
                                                                       feed: dict) -> None:
    import torch

    from eastkd.pipeline.distill.streams import steps_per_epoch, training_steps

    s, lab, unl = _splits(mixed_store, **feed)
    try:
        mask = s.items.labelled_mask
        assert len(lab) == 28 and len(unl) == 40
        steps = list(training_steps(lab, unl, 8, 16, torch.Generator().manual_seed(0)))
        # one pass over the KD pool: 40 unlabelled rows in batches of 16 -> 3 steps; the
        # labelled stream (28 rows: 4 batches of 8) would need 4, so it is the longer one here
        assert len(steps) == steps_per_epoch(28, 40, 8, 16) == 4
        seen_unl = np.concatenate([st.unlabelled.rows for st in steps])
        seen_lab = np.concatenate([st.labelled.rows for st in steps])
        for st in steps:  # the task loss sees st.labelled only: labelled rows, real labels
            assert mask[st.labelled.rows].all() and (st.labelled.y >= 0).all()
            assert not mask[st.unlabelled.rows].any() and st.unlabelled.t is not None
        assert np.array_equal(np.sort(seen_lab), lab.rows)  # each labelled row once
        assert set(seen_unl) == set(unl.rows)  # every unlabelled row, the stream cycling
        assert len(seen_unl) == 16 + 16 + 8 + 16  # a pass (the last batch partial), then more
        # label-scarce: 4 unlabelled per labelled row -> the labelled batches cycle
        steps = list(training_steps(lab, unl, 8, 32, torch.Generator().manual_seed(0)))
        assert len(steps) == 4 and all(len(st.unlabelled.rows) >= 1 for st in steps)
        steps = list(training_steps(lab, unl, 4, 4, torch.Generator().manual_seed(0)))
        assert len(steps) == 10  # 40 / 4 unlabelled; 28 labelled rows drawn 40 times
        assert set(np.concatenate([st.labelled.rows for st in steps])) == set(lab.rows)
    finally:
        lab.close()
        unl.close()
        s.close()


def test_without_an_unlabelled_stream_the_batches_are_unchanged(mixed_store: Path) -> None:
    """Ratio 0 (or no unlabelled rows): the same batches and generator state as before."""
    import torch

    from eastkd.pipeline.distill.streams import training_steps

    s, lab, unl = _splits(mixed_store, memory_limit=0, workers=0)
    try:
        g1, g2 = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
        ours = [st.labelled.rows for st in training_steps(lab, unl, 8, 0, g1)]
        before = [b.rows for b in lab.batches(8, g2, drop_last_below=2)]
        assert len(ours) == len(before) and all(np.array_equal(a, b)
                                                for a, b in zip(ours, before))
        assert torch.equal(g1.get_state(), g2.get_state())
    finally:
        lab.close()
        unl.close()
        s.close()


def test_spec_augment_masks_within_its_limits_and_repeats_by_seed() -> None:
    import torch

    from eastkd.pipeline.distill.augment import SpecAugment

    aug = SpecAugment()
    x = torch.randn(64, 96, 50)
    fill = torch.full((96,), 7.0)
    y = aug(x, fill, torch.Generator().manual_seed(1))
    again = aug(x, fill, torch.Generator().manual_seed(1))
    assert torch.equal(y, again) and not torch.equal(y, aug(x, fill, torch.Generator()
                                                            .manual_seed(2)))
    masked = y == 7.0
    assert masked.any() and torch.equal(y[~masked], x[~masked])
    rows = masked.all(dim=2)  # whole mel bins masked: at most 2 bands of <= 8 bins
    cols = masked.all(dim=1)  # whole frames: at most 2 spans of <= 5 frames
    assert int(rows.sum(dim=1).max()) <= 16 and int(cols.sum(dim=1).max()) <= 10
    assert rows.any() and cols.any()
    assert not SpecAugment(0, 8, 0, 0.1).mask(4, 96, 50, torch.Generator()).any()
    with pytest.raises(EastkdError, match="must be >= 0"):
        SpecAugment(time_fraction=1.5)


# -- distill -----------------------------------------------------------------------------------

FAST = dict(width=8, epochs=3, batch_size=8, progress=False, seed=2, patience=0)


def _strip(history: list[dict]) -> list[dict]:
    return [{k: v for k, v in r.items() if k != "seconds"} for r in history]


@pytest.fixture(scope="module")
def labelled_only_store(tmp_path_factory: pytest.TempPathFactory, folders: dict[str, Path],
                        mixed_store: Path) -> Path:
    """The mixed store's labelled items alone, in the same order with the same splits."""
    from eastkd.pipeline.extract import ExtractOptions, extract

    spec = resolve_dataset(str(folders["root"]), unlabelled=[str(folders["inside"])])
    spec.items = [it for it in spec.items if it.labelled]
    spec.unlabelled_sources = []
    store = tmp_path_factory.mktemp("labelled_only") / "l.zarr"
    extract(spec, str(store), ExtractOptions(teacher="crepe-tiny",
                                             teacher_options=dict(TEACHER_OPTS),
                                             progress=False, workers=0))
    return store


def test_distill_draws_unlabelled_rows_for_the_kd_loss(mixed_store: Path, tmp_path: Path) -> None:
    from eastkd.pipeline.distill.train import distill

    lines: list[str] = []
    r = distill(str(mixed_store), "crepe-tiny", str(tmp_path / "run"), kd="fitnet",
                log=lines.append, **FAST)
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    assert r.n_items["train"] == 28 and r.n_items["unlabelled"] == 40
    # default ratio 1: 8 unlabelled rows per step; 40 / 8 = 5 steps > 4 labelled batches
    assert config["unlabelled"]["batch"] == 8 and config["unlabelled"]["steps_per_epoch"] == 5
    assert config["options"]["unlabelled_ratio"] is None
    assert any("unlabelled rows 40 for the KD loss only" in line for line in lines)
    header = (tmp_path / "run" / "history.csv").read_text().splitlines()[0].split(",")
    assert {"train_task", "train_kd"} <= set(header)
    for rec in r.history:
        assert np.isfinite(rec["train_task"]) and np.isfinite(rec["train_kd"])
    # an explicit ratio changes the steps, and the result
    r2 = distill(str(mixed_store), "crepe-tiny", str(tmp_path / "r2"), kd="fitnet",
                 unlabelled_ratio=0.5, **FAST)
    config = json.loads((tmp_path / "r2" / "config.json").read_text())
    assert config["unlabelled"]["batch"] == 4 and config["unlabelled"]["steps_per_epoch"] == 10
    assert _strip(r2.history) != _strip(r.history)


@pytest.mark.parametrize("kw", [{"kd": "fitnet", "unlabelled_ratio": 0.0},
                                {"kd": "none", "unlabelled_ratio": 2.0}],
                         ids=["ratio-0", "kd-none"])
def test_unused_unlabelled_rows_train_exactly_as_a_store_without_them(
        mixed_store: Path, labelled_only_store: Path, tmp_path: Path, kw: dict) -> None:
    from eastkd.pipeline.distill.train import distill

    targets = "crepe-tiny" if kw["kd"] != "none" else None
    a = distill(str(mixed_store), targets, str(tmp_path / "a"), **kw, **FAST)
    b = distill(str(labelled_only_store), targets, str(tmp_path / "b"), **kw, **FAST)
    assert "unlabelled" not in a.n_items
    assert _strip(a.history) == _strip(b.history) and a.test_metrics == b.test_metrics


def test_augmentation_is_recorded_and_resumes_bit_identically(mixed_store: Path,
                                                              tmp_path: Path) -> None:
    from eastkd.errors import StoreMismatchError
    from eastkd.pipeline.distill.train import distill

    kw = dict(kd="dc", spec_augment=True, mixup=0.4, memory_limit=0, workers=0,
              **{**FAST, "epochs": 3})
    a = distill(str(mixed_store), "crepe-tiny", str(tmp_path / "a"), **kw)
    config = json.loads((tmp_path / "a" / "config.json").read_text())
    assert config["options"]["spec_augment"] == {"freq_masks": 2, "freq_width": 8,
                                                 "time_masks": 2, "time_fraction": 0.1}
    assert config["options"]["mixup"] == 0.4
    plain = distill(str(mixed_store), "crepe-tiny", str(tmp_path / "p"),
                    **{**kw, "spec_augment": False})
    assert _strip(plain.history) != _strip(a.history)

    def stop_after_1(rec: dict) -> None:
        if rec["epoch"] == 1:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        distill(str(mixed_store), "crepe-tiny", str(tmp_path / "b"), callback=stop_after_1, **kw)
    with pytest.raises(StoreMismatchError, match="differs in: spec_augment"):
        distill(str(mixed_store), "crepe-tiny", str(tmp_path / "b"), resume=True,
                **{**kw, "spec_augment": False})
    b = distill(str(mixed_store), "crepe-tiny", str(tmp_path / "b"), resume=True, **kw)
    assert b.resumed_from == 1
    assert _strip(b.history) == _strip(a.history) and b.test_metrics == a.test_metrics


def test_mixup_pairs_labels_with_labels_and_mixes_targets_alike() -> None:
    import torch

    from eastkd.pipeline.distill.augment import Mixup

    mix = Mixup(0.4).draw(5, 12, torch.Generator().manual_seed(0))
    assert sorted(mix.partner[:5].tolist()) == list(range(5))  # labelled with labelled
    assert sorted(mix.partner[5:].tolist()) == list(range(5, 12))  # unlabelled with unlabelled
    assert 0.0 < mix.weight < 1.0
    x, t = torch.randn(12, 3), torch.randn(12, 4)
    m, j = mix.weight, mix.partner
    assert torch.allclose(mix.apply(x)[2], m * x[2] + (1 - m) * x[j[2]])
    assert torch.allclose(mix.apply(t)[7], m * t[7] + (1 - m) * t[j[7]])
    y = torch.tensor([0, 1, 2, 0, 1])
    logits = torch.randn(5, 3)
    ce = torch.nn.functional.cross_entropy
    assert torch.allclose(mix.loss(ce, logits, y),
                          m * ce(logits, y) + (1 - m) * ce(logits, y[j[:5]]))
    again = Mixup(0.4).draw(5, 12, torch.Generator().manual_seed(0))
    assert again.weight == mix.weight and torch.equal(again.partner, mix.partner)


def test_cli_distill_with_unlabelled_rows_and_augmentation(mixed_store: Path,
                                                           tmp_path: Path) -> None:
    run = tmp_path / "run"
    code, out = _cli("distill", mixed_store, "--targets", "crepe-tiny", "--out", run,
                     "--unlabelled-ratio", "2", "--spec-augment", "--mixup", "0.2",
                     "--epochs", "1", "--width", "8", "--batch-size", "8", "--no-progress")
    assert code == 0, out
    assert "unlabelled rows 40 for the KD loss only" in out and "16 unlabelled rows" in out
    assert "spec-augment: 2 freq masks" in out and "mixup Beta(0.2, 0.2)" in out
    config = json.loads((run / "config.json").read_text())
    assert config["options"]["unlabelled_ratio"] == 2.0 and config["unlabelled"]["batch"] == 16
    code, out = _cli("distill", mixed_store, "--targets", "crepe-tiny", "--out", tmp_path / "x",
                     "--unlabelled-ratio", "-1")
    assert code == 2 and "Error: Invalid value for '--unlabelled-ratio'" in out


@pytest.mark.parametrize("name", ["t.zarr", "t.h5"])
def test_items_table_round_trip_with_unlabelled_items(tmp_path: Path, name: str) -> None:
    """Both backends store and check the column; an edit of it is caught as damage."""
    from eastkd.errors import StoreDamageError
    from eastkd.store import create_store

    n = 6
    labels = np.zeros((n, 2), np.uint8)
    labels[[0, 2], 0] = labels[[1, 3], 1] = 1
    items = ItemsTable(ids=[f"i{k}" for k in range(n)], paths=["/x.wav"] * n,
                       sha256=["0" * 64] * n, durations=np.ones(n, np.float32),
                       splits=["train", "train", "valid", "test", "train", "valid"],
                       labels=labels, class_names=["a", "b"],
                       labelled=np.array([1, 1, 1, 1, 0, 0], bool))
    create_store(str(tmp_path / name), items, {"name": "t"}).close()
    with open_store(str(tmp_path / name), "r+") as s:
        got = s.items
        assert got.labelled_mask.tolist() == [True] * 4 + [False] * 2
        assert got.fingerprint() == items.fingerprint() == s.dataset_fingerprint
        assert got.labelled_counts()["train"] == {"labelled": 2, "unlabelled": 1}
    # made through the API without the dataset checks: verify names the valid unlabelled item
    code, out = _cli("verify", tmp_path / name, "--no-progress")
    assert code == 1 and "items/labelled: 1 unlabelled items outside train or with labels " \
        "(first: i5)" in out, out
    with open_store(str(tmp_path / name), "r+") as s:
        s.backend.write("items/labelled", slice(4, 5), np.ones(1, np.uint8))
    with open_store(str(tmp_path / name)) as s, pytest.raises(StoreDamageError,
                                                              match="checksum mismatch"):
        s.items  # noqa: B018


def test_verify_rerun_hint_names_the_unlabelled_folders(mixed_store: Path, tmp_path: Path,
                                                        folders: dict[str, Path]) -> None:
    store = tmp_path / "m.zarr"
    shutil.copytree(mixed_store, store)
    chunk = next(p for p in (store / "embeddings" / "crepe-tiny" / "clip").rglob("*")
                 if p.is_file() and p.name != "zarr.json")
    chunk.unlink()
    code, out = _cli("verify", store, "--repair", "--no-progress")
    assert code == 1, out
    assert (f"--unlabelled {folders['outside'].resolve()} --unlabelled "
            f"{folders['inside'].resolve()}") in out, out
    # the printed command continues the store
    code, out = _cli(*_extract_args(folders, store))
    assert code == 0 and "already done" in out, out
    assert _cli("verify", store, "--no-progress")[0] == 0
