"""The ESC-50, MagnaTagATune and FMA-small adapters on tiny copies in the official formats."""

from __future__ import annotations

import csv
import shutil
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from fixtures_datasets import (
    ESC50_CATEGORIES,
    FMA_GENRES,
    make_esc50,
    make_fma,
    make_mtat,
)

from eastkd.errors import EastkdError
from eastkd.pipeline.core import registry
from eastkd.pipeline.datasets.esc50 import esc50_split_for_fold, load_esc50
from eastkd.pipeline.datasets.fma import load_fma_small
from eastkd.pipeline.datasets.mtat import load_mtat


@pytest.fixture(scope="module")
def esc50_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_esc50(tmp_path_factory.mktemp("esc50"), clips_per_class=2)


@pytest.fixture(scope="module")
def mtat(tmp_path_factory: pytest.TempPathFactory):
    return make_mtat(tmp_path_factory.mktemp("mtat"))


@pytest.fixture(scope="module")
def fma(tmp_path_factory: pytest.TempPathFactory):
    return make_fma(tmp_path_factory.mktemp("fma"))


def _error(fn, path) -> str:
    with pytest.raises(EastkdError) as info:
        fn(str(path))
    msg = str(info.value)
    assert "\n" not in msg
    return msg


# ---------------------------------------------------------------- ESC-50


def test_esc50_items_classes_and_default_splits(esc50_root: Path) -> None:
    spec = load_esc50(str(esc50_root))
    assert spec.class_names == ESC50_CATEGORIES and not spec.multi_label
    assert len(spec.items) == 100
    with open(esc50_root / "meta" / "esc50.csv", newline="") as f:
        rows = {Path(r["filename"]).stem: r for r in csv.DictReader(f)}
    for item in spec.items:
        row = rows[item.id]
        assert item.path == str(esc50_root / "audio" / row["filename"])
        assert item.labels == [int(row["target"])]
        assert spec.class_names[item.labels[0]] == row["category"]
        assert item.extra == {"fold": int(row["fold"])}
        assert item.split == {5: "test", 4: "valid"}.get(item.extra["fold"], "train")
    assert Counter(it.split for it in spec.items) == {"train": 60, "valid": 20, "test": 20}
    assert registry.datasets.get("esc50") is load_esc50


def test_esc50_split_for_fold_is_cyclic() -> None:
    assert [esc50_split_for_fold(f, 5) for f in range(1, 6)] == [
        "train", "train", "train", "valid", "test"]
    assert [esc50_split_for_fold(f, 1) for f in range(1, 6)] == [
        "test", "train", "train", "train", "valid"]
    assert [esc50_split_for_fold(f, 3) for f in range(1, 6)] == [
        "train", "valid", "test", "train", "train"]
    with pytest.raises(EastkdError, match="1-5"):
        esc50_split_for_fold(1, 6)


def test_esc50_wav_is_real_audio(esc50_root: Path) -> None:
    data, sr = sf.read(next((esc50_root / "audio").glob("*.wav")))
    assert sr == 44100 and data.shape == (22050,) and np.sqrt(np.mean(data**2)) > 0.01


def test_esc50_missing_metadata_and_wrong_folder(esc50_root: Path, tmp_path: Path) -> None:
    assert "does not exist" in _error(load_esc50, tmp_path / "nope")
    msg = _error(load_esc50, tmp_path)
    assert f"{tmp_path}/meta/esc50.csv not found" in msg and "ESC-50-master" in msg
    msg = _error(load_esc50, esc50_root / "audio")  # the audio folder instead of the root
    assert f"pass esc50:{esc50_root} instead" in msg


def test_esc50_missing_column(tmp_path: Path) -> None:
    root = make_esc50(tmp_path, drop_columns=("category",))
    msg = _error(load_esc50, root)
    assert "esc50.csv lacks column(s) category" in msg and "filename,fold,target" in msg


def test_esc50_missing_audio(tmp_path: Path) -> None:
    root = make_esc50(tmp_path)
    (root / "audio" / "1-100032-A-0.wav").unlink()
    (root / "audio" / "3-101986-A-2.wav").unlink()
    msg = _error(load_esc50, root)
    assert "2 of 50 audio files" in msg and "first: " in msg
    assert f"{root}/audio/1-100032-A-0.wav" in msg


# ---------------------------------------------------------------- MagnaTagATune


def _check_mtat(spec, fx) -> None:
    counts = {t: sum(t in tags for _, _, tags in fx.clips) for t in fx.tags}
    expected = sorted(fx.tags, key=lambda t: (-counts[t], fx.tags.index(t)))[:50]
    assert spec.class_names == expected
    assert spec.multi_label and len(spec.class_names) == 50
    # The rare tags (one at column 0) and the later of the tied pair are dropped.
    assert not set(fx.rare) & set(spec.class_names)
    assert spec.class_names[-1] == fx.tie_early and fx.tie_late not in spec.class_names
    assert spec.class_names[0] == "guitar" and counts["guitar"] == 16
    by_id = {it.id: it for it in spec.items}
    assert len(by_id) == len(fx.clips) == 17
    for clip_id, rel, tags in fx.clips:
        item = by_id[clip_id]
        assert {spec.class_names[k] for k in item.labels} == tags - set(fx.rare) - {fx.tie_late}
        assert item.labels == sorted(item.labels)
        assert Path(item.path).is_file() and item.path.endswith(rel)
        folder = rel[0]
        assert item.split == ("valid" if folder == "c" else "test" if folder in "def" else "train")
    assert by_id[fx.empty_clip].labels == []
    assert Counter(it.split for it in spec.items) == {"train": 12, "valid": 1, "test": 4}


def test_mtat_quoted_official_csv(mtat) -> None:
    assert (mtat.root / "annotations_final.csv").read_text().startswith('"clip_id"\t"duet"\t')
    spec = load_mtat(str(mtat.root))
    _check_mtat(spec, mtat)
    assert spec.items[0].path == str(mtat.root / mtat.clips[0][1])
    assert registry.datasets.get("mtat") is load_mtat


def test_mtat_unquoted_csv_and_mp3_subfolder(tmp_path: Path) -> None:
    fx = make_mtat(tmp_path, quoted=False, audio_subdir="mp3", seconds=0.5)
    assert (fx.root / "annotations_final.csv").read_text().startswith("clip_id\tduet\t")
    spec = load_mtat(str(fx.root))
    _check_mtat(spec, fx)
    assert spec.items[0].path == str(fx.root / "mp3" / fx.clips[0][1])


def test_mtat_mp3_decodes_to_expected_length(mtat) -> None:
    for _, rel, _ in mtat.clips[:3]:
        data, sr = sf.read(mtat.root / rel)
        assert sr == 16000 and data.ndim == 1
        assert abs(len(data) - 16000) < 1600  # ~1 s, give or take encoder padding
        assert np.sqrt(np.mean(data**2)) > 0.01


def test_mtat_missing_metadata_and_column(mtat, tmp_path: Path) -> None:
    msg = _error(load_mtat, tmp_path)
    assert f"{tmp_path}/annotations_final.csv not found" in msg
    assert f"pass mtat:{mtat.root} instead" in _error(load_mtat, mtat.root / "f")
    fx = make_mtat(tmp_path / "nopath", drop_columns=("mp3_path",), seconds=0.2)
    assert "lacks column 'mp3_path'" in _error(load_mtat, fx.root)


def test_mtat_missing_audio_names_both_locations(tmp_path: Path) -> None:
    fx = make_mtat(tmp_path, seconds=0.2)
    first = fx.root / fx.clips[0][1]
    first.unlink()
    msg = _error(load_mtat, fx.root)
    assert f"1 of 17 MP3 files listed in annotations_final.csv are missing under {fx.root} " in msg
    assert f"(first: {first})" in msg
    for folder in "0123456789abcdef":
        shutil.rmtree(fx.root / folder)
    msg = _error(load_mtat, fx.root)
    assert "none of the 17 MP3 files" in msg
    assert f"searched {fx.root}/<mp3_path> and {fx.root}/mp3/<mp3_path>" in msg


# ---------------------------------------------------------------- FMA-small


def test_fma_small_items_genres_and_splits(fma) -> None:
    spec = load_fma_small(str(fma.root))
    assert spec.class_names == sorted(FMA_GENRES) and not spec.multi_label
    assert [it.id for it in spec.items] == [f"{tid:06d}" for tid, _, _ in fma.small]
    assert {"000003", "001000"}.isdisjoint(it.id for it in spec.items)  # medium/large dropped
    split_map = {"training": "train", "validation": "valid", "test": "test"}
    for item, (tid, genre, split) in zip(spec.items, fma.small):
        assert spec.class_names[item.labels[0]] == genre and len(item.labels) == 1
        assert item.split == split_map[split]
    paths = {it.id: it.path for it in spec.items}
    assert paths["000002"] == str(fma.root / "fma_small" / "000" / "000002.mp3")
    assert paths["155066"] == str(fma.root / "fma_small" / "155" / "155066.mp3")
    assert Counter(it.split for it in spec.items) == {"train": 8, "valid": 4, "test": 4}
    assert registry.datasets.get("fma-small") is load_fma_small


def test_fma_mp3_decodes_to_expected_length(fma) -> None:
    info = sf.info(str(fma.root / "fma_small" / "099" / "099134.mp3"))
    assert info.samplerate == 44100 and info.channels == 2
    assert abs(info.frames - 44100) < 4410
    data, _ = sf.read(fma.root / "fma_small" / "000" / "000005.mp3")
    assert np.sqrt(np.mean(data**2)) > 0.01


def test_fma_missing_metadata_and_wrong_folder(fma, tmp_path: Path) -> None:
    msg = _error(load_fma_small, tmp_path)
    assert f"{tmp_path}/fma_metadata/tracks.csv not found" in msg
    assert "fma_metadata/ and fma_small/" in msg
    msg = _error(load_fma_small, fma.root / "fma_small")
    assert f"pass fma-small:{fma.root} instead" in msg


def test_fma_missing_column_and_flat_header(tmp_path: Path) -> None:
    fx = make_fma(tmp_path / "a", seconds=0.2, drop_columns=(("set", "subset"),))
    assert "lacks column(s) (set, subset)" in _error(load_fma_small, fx.root)
    fx = make_fma(tmp_path / "b", seconds=0.2, header_rows=1)
    msg = _error(load_fma_small, fx.root)
    assert "three official header rows" in msg and "tracks.csv" in msg


def test_fma_missing_audio(tmp_path: Path) -> None:
    fx = make_fma(tmp_path, seconds=0.2)
    (fx.root / "fma_small" / "000" / "000010.mp3").unlink()
    (fx.root / "fma_small" / "155" / "155066.mp3").unlink()
    msg = _error(load_fma_small, fx.root)
    assert f"2 of the 16 small-subset MP3 files are missing under {fx.root}/fma_small" in msg
    assert f"(first: {fx.root}/fma_small/000/000010.mp3)" in msg
    shutil.rmtree(fx.root / "fma_small")
    assert "none of the 16 small-subset MP3 files were found" in _error(load_fma_small, fx.root)
