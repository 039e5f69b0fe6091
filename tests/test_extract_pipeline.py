"""Extract's input pipeline and bookkeeping on real rendered audio: the resampler's stopband,
the device front end against whole-file resampling, cached file hashes (a resume reads no
audio), files that change or vanish after the store was made and ``--rehash``, the segment rule,
``units``, and a SIGKILL while the writer thread still holds queued batches."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from tests.test_extract import (
    PY_KEY,
    PY_TEACHER,
    _kill_when,
    _ok_rows,
    all_arrays,
    assert_bitwise_equal,
    opts,
    pick,
    run_cli,
    teacher_dir,  # noqa: F401 - fixture used by user_teacher
    user_teacher,  # noqa: F401 - fixture
    write_manifest,
)

from eastkd.pipeline.core.audio import RESAMPLERS, file_sha256, fit_segment, resample
from eastkd.pipeline.core.features import LogMelParams
from eastkd.pipeline.datasets.manifest import load_manifest
from eastkd.pipeline.extract import extract
from eastkd.pipeline.extract.inputs import CHANGED, ClipBatches, FileRef, FrontEnd, Target
from eastkd.pipeline.extract.plan import Batch, Unit
from eastkd.store import OK, PENDING, EastkdError, open_store


# ------------------------------------------------------------------------------------------
# resampling


def _chirp(sr: int, f0: float, f1: float, seconds: float = 2.0) -> torch.Tensor:
    """A linear chirp with a Hann envelope (no clicks at its ends, which would spread energy
    into every band)."""
    t = np.arange(int(sr * seconds)) / sr
    phase = 2 * np.pi * (f0 * t + (f1 - f0) / (2 * seconds) * t ** 2)
    return torch.tensor(np.sin(phase) * np.hanning(len(t)), dtype=torch.float32)


def _band_db(y: torch.Tensor, sr: int, lo: float, hi: float) -> float:
    """Power in [lo, hi) Hz relative to the whole signal's, in dB (Hann-windowed spectrum)."""
    y = y.numpy().astype(np.float64)
    spec = np.abs(np.fft.rfft(y * np.hanning(len(y)))) ** 2
    f = np.fft.rfftfreq(len(y), 1 / sr)
    return float(10 * np.log10(spec[(f >= lo) & (f < hi)].sum() / spec.sum()))


def _stopband_db(method: str) -> tuple[float, float]:
    """Attenuation (dB, positive) of (a) a chirp above the new Nyquist frequency when
    downsampling 44.1 -> 16 kHz, against a passband chirp, and (b) the images above the old
    Nyquist frequency when upsampling a passband chirp 16 -> 44.1 kHz."""
    up, down = 44100, 16000
    above = resample(_chirp(up, 8400, 21000), up, down, method)
    passband = resample(_chirp(up, 100, 7000), up, down, method)
    alias = 10 * np.log10(float(above.double().pow(2).mean() / passband.double().pow(2).mean()))
    images = _band_db(resample(_chirp(down, 100, 7000), down, up, method), up, 8400, 22050)
    return -alias, -images


def test_default_resampler_stopband_is_at_least_80_db() -> None:
    alias, images = _stopband_db("kaiser-best")
    assert alias >= 80 and images >= 80, (alias, images)
    fast_alias, _ = _stopband_db("fast")
    assert fast_alias < 80  # the old resampler leaks: the chirp tells them apart
    assert set(RESAMPLERS) == {"kaiser-best", "fast"}


def test_front_end_equals_whole_file_resampling_and_cropping(tmp_path: Path) -> None:
    """Workers decode only the window a segment needs (at the file's rate); the front end
    resamples that window on the device. Both crops, three file rates and lengths longer and
    shorter than the segment in one batch agree with resampling the whole file and cutting."""
    rng = np.random.default_rng(0)
    files, waves = [], []
    for j, (sr, seconds) in enumerate([(44100, 3.3), (22050, 0.7), (16000, 2.2), (44100, 1.1)]):
        w = rng.standard_normal(int(sr * seconds)).astype(np.float32) * 0.3
        path = tmp_path / f"c{j}.wav"
        sf.write(path, w, sr, subtype="FLOAT")
        files.append(FileRef(str(path), file_sha256(str(path)), -1, -1))
        waves.append((w, sr))
    lm = LogMelParams()
    targets = [Target(8000, 8000), Target(16000, 16000)]
    unit = Unit(0, 0, 4, True)
    for crop in ("start", "center"):
        batch = ClipBatches(files, [Batch(unit, 0, 4)], targets, crop, "kaiser-best")[0]
        assert batch["errors"] == [""] * 4
        assert batch["wave"].shape[1] < int(44100 * 3.3)  # only a window was decoded
        out = FrontEnd(targets, crop, "kaiser-best", lm, torch.device("cpu"))(batch, True)
        for j, (w, sr) in enumerate(waves):
            want = fit_segment(resample(w, sr, 8000), 8000, crop)
            np.testing.assert_allclose(out["teacher"][j].numpy(), want.numpy(), atol=2e-5)


# ------------------------------------------------------------------------------------------
# cached hashes, changed and vanished files, --rehash


def _copy_clips(demo_manifest: Path, folder: Path, per_class: int) -> Path:
    folder.mkdir()
    rows = pick(demo_manifest, per_class)
    for r in rows:
        dst = folder / Path(r["path"]).name
        shutil.copy(r["path"], dst)
        r["path"] = str(dst)
    return write_manifest(folder / "m.csv", rows)


def test_resume_of_finished_store_reads_no_audio(demo_manifest: Path, tmp_path: Path,
                                                 user_teacher: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    manifest = write_manifest(tmp_path / "m.csv", pick(demo_manifest, 2))
    store = tmp_path / "s.zarr"
    kw = dict(teacher=PY_TEACHER, teacher_options={})
    extract(str(manifest), str(store), opts(**kw))

    def no_audio(*a, **k):
        raise AssertionError("audio was read")

    import eastkd.pipeline.extract.inputs as inputs
    import eastkd.pipeline.extract.indexing as indexing

    monkeypatch.setattr(indexing, "file_sha256", no_audio)
    monkeypatch.setattr(indexing, "duration_seconds", no_audio)
    monkeypatch.setattr(inputs, "decode_window", no_audio)
    again = extract(str(manifest), str(store), opts(**kw))
    assert (again.written, again.already_done) == (0, 10)
    # another teacher on the same store re-indexes nothing either (it decodes, of course)
    monkeypatch.undo()
    monkeypatch.syspath_prepend(str(user_teacher))
    monkeypatch.setattr(indexing, "file_sha256", no_audio)
    other = extract(str(manifest), str(store), opts(**kw, key="other"))
    assert other.written == 10
    with open_store(str(store)) as s:
        sizes = s.items.extra["file_size"]
        assert sizes.tolist() == [Path(p).stat().st_size for p in s.items.paths]


def test_changed_and_vanished_files_are_skipped_then_rehash_reextracts(
        demo_manifest: Path, tmp_path: Path, user_teacher: Path) -> None:
    # listed before the files change (a manifest refuses missing files when it is read)
    manifest = load_manifest(str(_copy_clips(demo_manifest, tmp_path / "data", 2)))  # 10 clips
    store = tmp_path / "s.zarr"
    kw = dict(teacher=PY_TEACHER, teacher_options={}, chunk_items=2, batch_size=2)
    extract(manifest, str(store), opts(units=[0, 1], **kw))  # rows 0-3 done
    with open_store(str(store)) as s:
        paths, sha_before = s.items.paths, list(s.items.sha256)
        clip = s.embeddings(PY_KEY).array("clip")
        before = clip[:4]  # the rows done so far
        with pytest.raises(EastkdError, match=r"items 4-9: not computed yet"):
            clip[:]  # pending rows hold no data (not damage: nothing to repair)
    shutil.copy(paths[9], paths[0])  # a finished row's file changes
    shutil.copy(paths[9], paths[5])  # a pending row's file changes
    Path(paths[7]).unlink()  # a pending row's file vanishes

    with pytest.raises(EastkdError, match=rf"item '{Path(paths[5]).stem}.*{CHANGED[:40]}"):
        extract(manifest, str(store), opts(**kw))
    summary = extract(manifest, str(store), opts(on_error="skip", **kw))
    assert (summary.written, summary.skipped_now, summary.already_done) == (4, 2, 4)
    ids = [Path(p).stem for p in paths]
    reasons = dict(summary.skipped)
    assert reasons == {ids[5]: CHANGED, ids[7]: "file not found"}

    shutil.copy(paths[8], paths[7])  # the file comes back (with other bytes)
    summary = extract(manifest, str(store), opts(on_error="skip", rehash=True, **kw))
    with open_store(str(store)) as s:
        emb = s.embeddings(PY_KEY)
        assert emb.status().tolist() == [OK] * 10
        changed = [i for i in range(10) if s.items.sha256[i] != sha_before[i]]
        assert changed == [0, 5, 7]
        note = s.attrs["items_updates"][-1]
        assert note["changed_items"] == 3 and note["ids"] == [ids[0], ids[5], ids[7]]
        assert emb.attrs["items_rehashed"] == note
        clip = emb.array("clip")[:]
        assert s.dataset_fingerprint == s.items.fingerprint()
    np.testing.assert_array_equal(clip[[1, 2, 3]], before[[1, 2, 3]])
    np.testing.assert_array_equal(clip[0], clip[9])  # row 0 now holds clip 9's audio
    assert summary.written == 6  # units 0 (rows 0, 1), 2 (4, 5) and 3 (6, 7) again


def test_outlier_clip_is_refused_without_segment(demo_manifest: Path, tmp_path: Path,
                                                 user_teacher: Path) -> None:
    rows = pick(demo_manifest, 1)
    wav, sr = sf.read(rows[0]["path"], dtype="float32")
    long = tmp_path / "long.wav"
    sf.write(long, np.tile(wav, 40), sr)  # 40 s beside 1 s clips
    manifest = write_manifest(tmp_path / "m.csv", rows + [{**rows[0], "id": "long",
                                                           "path": str(long)}])
    kw = dict(teacher=PY_TEACHER, teacher_options={})
    with pytest.raises(EastkdError, match=r"clip lengths vary from 1\.00 s to 40\.00 s \(median "
                                          r"1\.00 s; longest: 'long'\).*--segment 1"):
        extract(str(manifest), str(tmp_path / "s.zarr"), opts(**kw))
    summary = extract(str(manifest), str(tmp_path / "s.zarr"), opts(segment=1.0, **kw))
    assert summary.written == 6
    with open_store(str(tmp_path / "s.zarr")) as s:
        clip = s.embeddings(PY_KEY).array("clip")[:]
    np.testing.assert_array_equal(clip[5], clip[0])  # the first second of the tiled clip


def test_units_option_extracts_only_those_units(demo_manifest: Path, tmp_path: Path,
                                                user_teacher: Path) -> None:
    manifest = write_manifest(tmp_path / "m.csv", pick(demo_manifest, 2))  # 10 clips
    store = tmp_path / "s.zarr"
    kw = dict(teacher=PY_TEACHER, teacher_options={}, chunk_items=4, batch_size=4)
    summary = extract(str(manifest), str(store), opts(units=[1], **kw))
    assert summary.written == 4
    with open_store(str(store)) as s:
        assert s.embeddings(PY_KEY).status().tolist() == [PENDING] * 4 + [OK] * 4 + \
            [PENDING] * 2
    with pytest.raises(EastkdError, match=r"units \[3\] out of range: this store has 3 units"):
        extract(str(manifest), str(store), opts(units=[3], **kw))
    assert extract(str(manifest), str(store), opts(**kw)).already_done == 4


# ------------------------------------------------------------------------------------------
# SIGKILL with batches queued for the writer


def test_sigkill_with_queued_batches_resumes_bit_identical(
        demo_manifest: Path, tmp_path: Path, teacher_dir: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Units of one clip and a teacher far faster than the writes (several small chunk files
    per clip): the writer's queue is full when the run is killed, so the kill lands with
    computed batches still queued and chunks of unfinished units half written."""
    manifest = write_manifest(tmp_path / "m.csv", pick(demo_manifest, 8))  # 40 clips
    store = tmp_path / "killed.zarr"
    monkeypatch.setenv("PYTHONPATH", str(teacher_dir))  # the killed CLI's
    monkeypatch.syspath_prepend(str(teacher_dir))  # the in-process reference run's
    args = ["extract", str(manifest), str(store), "-t", PY_TEACHER, "--frames",
            "--chunk-items", "1", "--batch-size", "1", "--no-progress"]
    _kill_when(args, lambda: _ok_rows(store, PY_KEY), 6)
    done = _ok_rows(store, PY_KEY)
    assert 6 <= done < 40, done
    rerun = run_cli(*args)
    assert rerun.returncode == 0, rerun.stderr
    assert f"{40 - done} written, 0 skipped now, {done} already done" in rerun.stdout
    ref = tmp_path / "ref.zarr"
    extract(str(manifest), str(ref), opts(teacher=PY_TEACHER, teacher_options={}, frames=True,
                                          chunk_items=1, batch_size=1, workers=1))
    assert_bitwise_equal(all_arrays(store), all_arrays(ref))


def test_plan_defaults() -> None:
    from eastkd.pipeline.core.audio import RESAMPLERS as names
    from eastkd.pipeline.core.audio import Segment
    from eastkd.pipeline.extract import default_workers
    from eastkd.pipeline.extract.plan import batch_size_for, default_chunk_cap

    assert default_chunk_cap(80, 16) == 16  # 5 units of a batch
    assert default_chunk_cap(80, 4) == 8  # 10 units
    assert default_chunk_cap(1_000_000, 16) >= 8192  # large data: the 4 MB target decides
    assert batch_size_for(16, None, Segment(2.0)) == 16
    assert batch_size_for(16, 60.0, Segment(2.5)) == 24  # 60 s of audio per forward
    assert batch_size_for(16, 1.0, Segment(2.5)) == 1
    import os

    assert default_workers() == max(0, min(8, len(os.sched_getaffinity(0)) - 1))
    from eastkd.cli.extract import RESAMPLER_NAMES

    assert RESAMPLER_NAMES == list(names)


def test_interrupt_says_how_much_was_kept(demo_manifest: Path, tmp_path: Path,
                                          teacher_dir: Path) -> None:
    """Ctrl-C: the units already complete (queued ones included) are written, and the one-line
    message says exactly how many clips that is; the same command then continues."""
    import os
    import re
    import signal
    import subprocess
    import sys
    import time

    manifest = write_manifest(tmp_path / "m.csv", pick(demo_manifest, 8))  # 40 clips
    store = tmp_path / "s.zarr"
    env = {**os.environ, "PYTHONPATH": str(teacher_dir)}
    args = [sys.executable, "-m", "eastkd.cli.main", "extract", str(manifest), str(store), "-t",
            PY_TEACHER, "--chunk-items", "1", "--batch-size", "1", "-j", "0", "--no-progress"]
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=env)
    deadline = time.monotonic() + 120
    while proc.poll() is None and time.monotonic() < deadline and \
            _ok_rows(store, PY_KEY) < 3:
        time.sleep(0.02)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, (out, err)  # as a shell reports Ctrl-C
    m = re.fullmatch(r"Error: interrupted: (\d+) of 40 clips of this run were written and kept "
                     r"\((\d+) units\); rerun the same command to continue\n", err)
    assert m, err
    kept = _ok_rows(store, PY_KEY)
    assert int(m[1]) == int(m[2]) == kept and 3 <= kept < 40
    again = subprocess.run(args, capture_output=True, text=True, env=env, timeout=300)
    assert again.returncode == 0, again.stderr
    assert f"{40 - kept} written, 0 skipped now, {kept} already done" in again.stdout
