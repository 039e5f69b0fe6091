"""The SoundFont demo dataset and the generic manifest / class-folder adapters."""

from __future__ import annotations

import csv
import hashlib
import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from eastkd.errors import EastkdError
from eastkd.pipeline.datasets.manifest import (
    load_folder,
    load_manifest,
    resolve_dataset,
)
from eastkd.pipeline.demo.data import (
    DEFAULT_FAMILIES,
    _render_clip,
    render_demo_dataset,
    scarce_manifest,
    soundfont_path,
)

SR = 16000
DEMO = {"clips_per_class": 4, "seconds": 1.0, "sample_rate": SR, "seed": 3, "progress": False}


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return render_demo_dataset(tmp_path_factory.mktemp("demo") / "d", **DEMO)


def _digests(manifest: Path) -> dict[str, str]:
    root = manifest.parent
    files = sorted(p for p in root.rglob("*.wav")) + [manifest]
    return {
        p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest() for p in files
    }


def _wav(path: Path, freq: float = 440.0, n: int = 800) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(path, 0.3 * np.sin(2 * np.pi * freq * np.arange(n) / SR), SR)
    return path


# --------------------------------------------------------------------------------- demo data


def test_demo_is_real_audio_with_stratified_splits(demo: Path) -> None:
    rows = list(csv.DictReader(demo.open()))
    assert list(rows[0]) == ["id", "path", "label", "split"]
    assert len(rows) == 4 * len(DEFAULT_FAMILIES)
    assert {r["label"] for r in rows} == set(DEFAULT_FAMILIES)
    per_class = Counter((r["label"], r["split"]) for r in rows)
    for fam in DEFAULT_FAMILIES:  # 4 clips: 2 train, 1 valid, 1 test
        assert [per_class[(fam, s)] for s in ("train", "valid", "test")] == [2, 1, 1]
    for r in rows:
        assert r["path"] == f"audio/{r['label']}/{r['id']}.wav"
        path = demo.parent / r["path"]
        info = sf.info(path)
        assert (info.samplerate, info.frames, info.channels, info.subtype) == (SR, SR, 1, "PCM_16")
        pcm = sf.read(path, dtype="int16")[0].astype(np.int64)
        peak = np.abs(pcm).max()
        assert 0.2 * 32767 < peak < 32767, r["id"]  # normalised between -12 and -1 dBFS
        x = pcm / 32768.0
        assert np.sqrt(np.mean(x**2)) > 1e-3, r["id"]
        spec = np.abs(np.fft.rfft(x))
        centroid = (spec * np.fft.rfftfreq(len(x), 1 / SR)).sum() / spec.sum()
        assert 100 < centroid < 5000, (r["id"], centroid)
        assert abs(x.mean()) < 0.01, r["id"]  # no DC offset
    readme = (demo.parent / "README.txt").read_text()
    assert "TimGM6mb.sf2" in readme and "pretty_midi" in readme
    assert json.loads((demo.parent / "demo.json").read_text())["params"]["seed"] == 3


def test_demo_clips_all_differ(demo: Path) -> None:
    digests = [hashlib.sha256(p.read_bytes()).digest() for p in demo.parent.rglob("*.wav")]
    assert len(set(digests)) == len(digests) == 20


def test_demo_is_deterministic_skips_and_rerenders(demo: Path, tmp_path: Path) -> None:
    again = render_demo_dataset(tmp_path / "again", **DEMO)
    assert _digests(again) == _digests(demo)

    stamp = (again.stat().st_mtime_ns, (tmp_path / "again" / "demo.json").read_text())
    assert render_demo_dataset(tmp_path / "again", **DEMO) == again
    assert (again.stat().st_mtime_ns, (tmp_path / "again" / "demo.json").read_text()) == stamp

    other = render_demo_dataset(tmp_path / "again", **{**DEMO, "seed": 4, "clips_per_class": 3})
    rows = list(csv.DictReader(other.open()))
    assert len(rows) == 15 and len(list((tmp_path / "again").rglob("*.wav"))) == 15
    assert (
        _digests(other)["audio/piano/piano_0000.wav"]
        != _digests(demo)["audio/piano/piano_0000.wav"]
    )


def test_demo_interrupted_render_is_cleaned(tmp_path: Path) -> None:
    manifest = render_demo_dataset(tmp_path / "d", **{**DEMO, "families": ["organ"]})
    record = tmp_path / "d" / "demo.json"
    state = json.loads(record.read_text())
    assert state["complete"] is True
    record.write_text(json.dumps({**state, "complete": False}))  # as if killed mid-render
    (tmp_path / "d" / "audio" / "organ" / "stale.wav").write_bytes(b"junk")
    assert render_demo_dataset(tmp_path / "d", **{**DEMO, "families": ["organ"]}) == manifest
    assert sorted(p.name for p in (tmp_path / "d" / "audio" / "organ").iterdir()) == [
        f"organ_{i:04d}.wav" for i in range(4)
    ]
    assert json.loads(record.read_text())["complete"] is True


def test_demo_family_clips_do_not_depend_on_other_families(demo: Path, tmp_path: Path) -> None:
    brass = render_demo_dataset(tmp_path / "brass", **{**DEMO, "families": ["brass"]})
    full = _digests(demo)
    for rel, digest in _digests(brass).items():
        if rel.endswith(".wav"):
            assert full[rel] == digest, rel
    assert {r["label"] for r in csv.DictReader(brass.open())} == {"brass"}


def test_demo_argument_and_folder_errors(tmp_path: Path) -> None:
    with pytest.raises(EastkdError, match="must be distinct names from: piano"):
        render_demo_dataset(tmp_path / "x", families=["kazoo"], progress=False)
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "notes.txt").write_text("mine")
    with pytest.raises(EastkdError, match="not empty and holds no demo.json"):
        render_demo_dataset(tmp_path / "busy", **DEMO)
    assert (tmp_path / "busy" / "notes.txt").read_text() == "mine"


def test_scarce_manifest_keeps_k_labels_per_class(demo: Path) -> None:
    rows = list(csv.DictReader(demo.open()))
    path = scarce_manifest(demo, labels_per_class=1, seed=0)
    assert path == demo.parent / "manifest-k1-s0.csv"
    scarce = list(csv.DictReader(path.open()))
    assert [(r["id"], r["path"], r["split"]) for r in scarce] == [
        (r["id"], r["path"], r["split"]) for r in rows]
    for r, s in zip(rows, scarce):
        if r["split"] != "train":
            assert s["label"] == r["label"]
        else:
            assert s["label"] in ("", r["label"])
    kept = Counter(s["label"] for s in scarce if s["split"] == "train" and s["label"])
    assert kept == {fam: 1 for fam in DEFAULT_FAMILIES}
    assert sum(1 for s in scarce if s["split"] == "train" and not s["label"]) == len(kept)
    stamp = path.stat().st_mtime_ns
    assert scarce_manifest(demo, labels_per_class=1, seed=0) == path  # same bytes: not rewritten
    assert path.stat().st_mtime_ns == stamp
    draws = {tuple(r["label"] for r in csv.DictReader(
        scarce_manifest(demo, labels_per_class=1, seed=s).open())) for s in range(6)}
    assert len(draws) > 1  # the seed picks the labelled rows

    spec = load_manifest(str(path))  # the empty labels are unlabelled train items
    assert sum(not i.labelled for i in spec.items) == 5
    assert all(i.split == "train" for i in spec.items if not i.labelled)

    labelled_only = scarce_manifest(demo, labels_per_class=1, seed=0, unlabelled=False)
    spec = load_manifest(str(labelled_only))
    assert Counter(i.split for i in spec.items) == {"train": 5, "valid": 5, "test": 5}
    with pytest.raises(EastkdError, match="class 'brass' has 2 train clips, fewer than 3"):
        scarce_manifest(demo, labels_per_class=3)


def test_soundfont_renders_pitch_and_distinct_timbres() -> None:
    """A4 sounds at 440 Hz on piano, violin and flute, and the three spectra differ."""
    sf2 = soundfont_path().read_bytes()
    spectra = []
    for program in (0, 40, 73):
        audio = _render_clip(sf2, program, [(0.0, 0.8, 69, 100)], 1.0, SR)
        spec = np.abs(np.fft.rfft(audio * np.hanning(len(audio))))
        freqs = np.fft.rfftfreq(len(audio), 1 / SR)
        assert abs(freqs[spec.argmax()] - 440.0) < 5.0, program
        spectra.append(spec / np.linalg.norm(spec))
    for i in range(3):
        for j in range(i + 1, 3):
            assert float(spectra[i] @ spectra[j]) < 0.9, (i, j)


# --------------------------------------------------------------------------------- manifests


def test_load_demo_manifest_and_resolve(demo: Path) -> None:
    spec = load_manifest(str(demo))
    assert spec.class_names == sorted(DEFAULT_FAMILIES)
    assert not spec.multi_label and len(spec.items) == 20
    item = next(i for i in spec.items if i.id == "reed_0001")
    assert Path(item.path).is_absolute() and Path(item.path).is_file()
    assert item.labels == [spec.class_names.index("reed")]
    assert spec.name == "d"  # a file called manifest.csv is named after its folder
    for text in (str(demo), f"manifest:{demo}"):
        again = resolve_dataset(text)
        assert [(i.id, i.path, i.split, i.labels) for i in again.items] == [
            (i.id, i.path, i.split, i.labels) for i in spec.items
        ]


def test_csv_manifest_relative_absolute_aliases_extra(tmp_path: Path) -> None:
    a = _wav(tmp_path / "clips" / "a.wav")
    b = _wav(tmp_path / "elsewhere" / "b.flac")
    _wav(tmp_path / "clips" / "c.wav")
    (tmp_path / "m.csv").write_text(
        "id,path,label,split,fold\n"
        "a,clips/a.wav,zebra,train,1\n"
        f"b,{b},ant,val,2\n"
        "c,./clips/c.wav,zebra,Validation,3\n"
    )
    spec = load_manifest(str(tmp_path / "m.csv"))
    assert spec.name == "m" and spec.class_names == ["ant", "zebra"]
    got = {i.id: (i.path, i.split, i.labels, i.extra) for i in spec.items}
    assert got["a"] == (str(a.resolve()), "train", [1], {"fold": "1"})
    assert got["b"] == (str(b), "valid", [0], {"fold": "2"})
    assert got["c"][1:3] == ("valid", [1])


def test_jsonl_multilabel_manifest(tmp_path: Path) -> None:
    for n in "abc":
        _wav(tmp_path / "audio" / f"{n}.wav")
    lines = [
        {"id": "a", "path": "audio/a.wav", "labels": "rock;guitar", "split": "train"},
        {"id": "b", "path": "audio/b.wav", "labels": ["vocal", "rock"], "split": "test"},
        {"id": "c", "path": "audio/c.wav", "labels": [], "split": "valid", "year": 1999},
    ]
    (tmp_path / "tags.jsonl").write_text("\n".join(json.dumps(x) for x in lines) + "\n\n")
    spec = resolve_dataset(str(tmp_path / "tags.jsonl"))
    assert spec.multi_label and spec.class_names == ["guitar", "rock", "vocal"]
    assert [(i.id, i.labels, i.split) for i in spec.items] == [
        ("a", [0, 1], "train"),
        ("b", [1, 2], "test"),
        ("c", [], "valid"),
    ]
    assert spec.items[2].extra == {"year": 1999}
    assert all(i.labelled for i in spec.items)  # "labels": [] is a row with no positive tag


def test_manifest_without_split_column_gets_a_stratified_split(tmp_path: Path) -> None:
    rows = ["id,path,label"]
    for k in range(40):
        _wav(tmp_path / f"{k}.wav", n=10)
        rows.append(f"clip{k},{k}.wav,{'xy'[k % 2]}")
    (tmp_path / "m.csv").write_text("\n".join(rows) + "\n")
    spec = load_manifest(str(tmp_path / "m.csv"))
    assert spec.split_info == {"method": "stratified", "ratios": [0.7, 0.15, 0.15], "seed": 0,
                               "stratified_on": "class"}
    per_class = Counter((spec.class_names[i.labels[0]], i.split) for i in spec.items)
    # 20 items per class: round(20 * 0.15) = 3 valid and 3 test each, the rest train
    assert per_class == {(c, s): n for c in "xy" for s, n in
                         (("train", 14), ("valid", 3), ("test", 3))}
    again = load_manifest(str(tmp_path / "m.csv"))
    assert [i.split for i in again.items] == [i.split for i in spec.items]
    other = load_manifest(str(tmp_path / "m.csv"), split_seed=1)
    assert [i.split for i in other.items] != [i.split for i in spec.items]
    custom = resolve_dataset(str(tmp_path / "m.csv"), split_ratios=(0.5, 0.25, 0.25))
    assert Counter(i.split for i in custom.items) == {"train": 20, "valid": 10, "test": 10}
    assert custom.split_info["ratios"] == [0.5, 0.25, 0.25]


@pytest.mark.parametrize(
    ("name", "text", "message"),
    [
        ("m.csv", "id,path,split\na,a.wav,train\n", r"lacks column\(s\) label \(or labels\)"),
        ("m.csv", "id,label,split\na,x,train\n", r"lacks column\(s\) path"),
        (
            "m.csv",
            "id,path,label,split\na,a.wav,x,dev\n",
            r"m\.csv:2: unknown split 'dev'; use one of train, valid",
        ),
        ("m.csv", "id,path,label,split\n", r"lists no items"),
        (
            "m.csv",
            "id,path,label,split\na,a.wav,x,train\na,a.wav,y,test\n",
            r"m\.csv:3: duplicate id 'a' \(first on line 2\)",
        ),
        (
            "m.csv",
            "id,path,label,split\na,a.wav,,valid\n",
            r"m\.csv:2: id 'a' has no label but is a valid row; unlabelled items are train",
        ),
        (
            "m.csv",
            "id,path,label,split,labelled\na,a.wav,,train,1\n",
            r"m\.csv:2: empty label for id 'a' marked labelled",
        ),
        (
            "m.csv",
            "id,path,label,split,labelled\na,a.wav,x,train,no\n",
            r"m\.csv:2: labelled is 'no' but the row names classes x",
        ),
        (
            "m.csv",
            "id,path,label,split\na,a.wav,x;y,train\n",
            r"names several classes; call the column 'labels'",
        ),
        ("m.csv", "id,path,label,split\n,a.wav,x,train\n", r"m\.csv:2: empty id"),
        (
            "m.jsonl",
            '{"id": "a", "path": "a.wav", "label": "x", "split": "train"}\n{oops\n',
            r"m\.jsonl:2: not valid JSON",
        ),
        ("m.jsonl", '["a", "a.wav"]\n', r"m\.jsonl:1: expected a JSON object"),
        ("m.txt", "id,path,label,split\n", r"must end in \.csv or \.jsonl"),
    ],
)
def test_manifest_errors(tmp_path: Path, name: str, text: str, message: str) -> None:
    _wav(tmp_path / "a.wav")
    (tmp_path / name).write_text(text)
    with pytest.raises(EastkdError, match=message):
        load_manifest(str(tmp_path / name))


def test_missing_manifest_file(tmp_path: Path) -> None:
    with pytest.raises(EastkdError, match=r"manifest .*nope\.csv does not exist"):
        load_manifest(str(tmp_path / "nope.csv"))


# --------------------------------------------------------------------------------- folders


def test_folder_stratified_split(tmp_path: Path) -> None:
    root = tmp_path / "sounds"
    _wav(root / "dog" / "a.wav")
    _wav(root / "dog" / "deeper" / "b.FLAC")
    _wav(root / "cat" / "c.ogg")
    (root / "cat" / "notes.txt").write_text("not audio")
    _wav(root / "cat" / ".hidden.wav")
    (root / "empty").mkdir()
    spec = load_folder(str(root))
    assert spec.name == "sounds" and spec.class_names == ["cat", "dog"]
    # classes of 1 and 2 items: 15 % of them rounds to 0, and train keeps at least one item
    assert [(i.id, i.labels, i.split) for i in spec.items] == [
        ("cat/c", [0], "train"), ("dog/a", [1], "train"), ("dog/deeper/b", [1], "train")]
    assert spec.split_info["method"] == "stratified"
    assert all(Path(i.path).is_file() for i in spec.items)
    assert [i.id for i in resolve_dataset(f"folder:{root}").items] == [i.id for i in spec.items]


def test_folder_split_puts_every_class_in_valid_and_test(tmp_path: Path) -> None:
    """The issue's case: 10 classes of 10 clips; hash splits left a class without test items."""
    root = tmp_path / "digits"
    for c in range(10):
        for k in range(10):
            _wav(root / f"d{c}" / f"{k}.wav", n=10)
    spec = resolve_dataset(str(root), split_seed=5)
    per_class = Counter((i.labels[0], i.split) for i in spec.items)
    assert all(per_class[(c, "valid")] >= 1 and per_class[(c, "test")] >= 1 for c in range(10))
    # 10 per class: 1.5 valid and 1.5 test each; every class gets 1, five classes a second,
    # so that the dataset follows 0.7/0.15/0.15 exactly
    assert Counter(i.split for i in spec.items) == {"train": 70, "valid": 15, "test": 15}
    assert sorted(per_class[(c, "test")] for c in range(10)) == [1] * 5 + [2] * 5


def test_folder_split_subfolders(tmp_path: Path) -> None:
    root = tmp_path / "by_class"
    _wav(root / "dog" / "train" / "a.wav")
    _wav(root / "dog" / "val" / "b.wav")
    _wav(root / "cat" / "test" / "c.wav")
    spec = resolve_dataset(str(root))
    assert [(i.id, i.split, i.labels) for i in spec.items] == [
        ("cat/test/c", "test", [0]),
        ("dog/train/a", "train", [1]),
        ("dog/val/b", "valid", [1]),
    ]
    root = tmp_path / "by_split"
    _wav(root / "train" / "dog" / "a.wav")
    _wav(root / "validation" / "cat" / "b.wav")
    spec = load_folder(str(root))
    assert spec.class_names == ["cat", "dog"]
    assert [(i.id, i.split, i.labels) for i in spec.items] == [
        ("train/dog/a", "train", [1]),
        ("validation/cat/b", "valid", [0]),
    ]


def test_folder_errors(tmp_path: Path) -> None:
    with pytest.raises(EastkdError, match=r"dataset folder .*missing does not exist"):
        load_folder(str(tmp_path / "missing"))
    (tmp_path / "empty" / "dog").mkdir(parents=True)
    with pytest.raises(EastkdError, match=r"holds no audio files"):
        load_folder(str(tmp_path / "empty"))
    _wav(tmp_path / "flat" / "a.wav")
    with pytest.raises(EastkdError, match=r"a\.wav lies directly in .*flat; put audio files"):
        load_folder(str(tmp_path / "flat"))
    _wav(tmp_path / "dup" / "dog" / "a.wav")
    _wav(tmp_path / "dup" / "dog" / "a.flac")
    with pytest.raises(EastkdError, match=r"give the same id 'dog/a'"):
        load_folder(str(tmp_path / "dup"))
    _wav(tmp_path / "mixed" / "dog" / "train" / "a.wav")
    _wav(tmp_path / "mixed" / "dog" / "b.wav")
    with pytest.raises(EastkdError, match=r"b\.wav lies outside the split folders of class 'dog'"):
        load_folder(str(tmp_path / "mixed"))


# --------------------------------------------------------------------------------- resolve


def test_resolve_dataset_colon_handling(tmp_path: Path) -> None:
    odd = tmp_path / "manifest:odd"  # a real folder whose name looks like NAME:PATH
    _wav(odd / "dog" / "a.wav")
    spec = resolve_dataset(str(odd))
    assert spec.class_names == ["dog"] and spec.items[0].id == "dog/a"
    with pytest.raises(
        EastkdError, match=r"'C:\\\\nowhere' does not exist; .*NAME one of: .*folder"
    ):
        resolve_dataset("C:\\nowhere")
    with pytest.raises(EastkdError, match=r"manifest .*nope\.csv does not exist"):
        resolve_dataset(f"manifest:{tmp_path / 'nope.csv'}")
    (tmp_path / "x.json").write_text("{}")
    with pytest.raises(EastkdError, match=r"x\.json is not a \.csv or \.jsonl manifest"):
        resolve_dataset(str(tmp_path / "x.json"))
    with pytest.raises(EastkdError, match="empty dataset"):
        resolve_dataset("  ")
