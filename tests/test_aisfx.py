"""The built-in ``aisfx`` teacher: parity with the aisfx package's own inference (essentia front
end, its CrossNet) on real audio, the checkpoint read with ``weights_only``, and ``eastkd
extract --teacher aisfx`` end to end (a rerun on the finished store does not load it).

Audio: harmonic tones with decaying envelopes, noise bursts and a mix, synthesised at 44.1 kHz
and written as 16-bit WAV (what the package reads with essentia's EasyLoader).
"""

from __future__ import annotations

import csv
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from click.testing import CliRunner

from eastkd.store import EastkdError, open_store

pytestmark = [
    pytest.mark.usefixtures("one_thread"),
    pytest.mark.skipif(importlib.util.find_spec("aisfx") is None,
                       reason="aisfx not installed (pip install --no-deps aisfx==0.1.2): "
                              "the teacher's weights ship in its wheel"),
]

SR = 44100
HOP = 1024


def _tone(seconds: float, f0: float) -> np.ndarray:
    t = np.arange(int(round(seconds * SR))) / SR
    return sum(0.3 / k * np.sin(2 * np.pi * f0 * k * t) for k in range(1, 8)) * np.exp(-t)


def _clips() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    n5 = 5 * SR
    return {
        "tone3": _tone(3.0, 220.0),
        "noise5": rng.normal(0, 0.2, n5) * np.exp(-np.linspace(0, 5, n5)),
        "mix7": np.concatenate([_tone(3.3, 330.0), rng.normal(0, 0.1, int(2.1 * SR)),
                                _tone(1.6, 880.0)]),
        "exact": _tone(100 * HOP / SR, 440.0),  # S a multiple of the hop: T = 101
        "short": _tone(1.8, 110.0),  # 79 frames: under one block, zero-padded to one
    }


@pytest.fixture(scope="module")
def wavs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("aisfx_audio")
    out = {}
    for name, y in _clips().items():
        out[name] = d / f"{name}.wav"
        sf.write(out[name], (np.clip(y, -1, 1) * 32767).astype(np.int16), SR, subtype="PCM_16")
    return out


@pytest.fixture(scope="module")
def teacher():
    from eastkd.pipeline.teachers.aisfx import aisfx

    return aisfx()


def _wave(path: Path) -> torch.Tensor:
    return torch.from_numpy(sf.read(path, dtype="float32")[0])[None]


def test_teacher_facts(teacher) -> None:
    """44.1 kHz, 512-d; a block (100 frames of 1024) every 50 frames, centred 49.5 frames in;
    block counts follow essentia's framing and the package's blocking."""
    from eastkd.pipeline.teachers.aisfx import MIN_SAMPLES

    assert (teacher.name, teacher.sample_rate, teacher.embedding_dim) == ("aisfx", SR, 512)
    assert teacher.frame_rate == pytest.approx(SR / (HOP * 50))
    assert teacher.frame_offset == pytest.approx(49.5 * HOP / SR)
    assert teacher.autocast_safe and teacher.options == {"block_hop": 50, "block": 100}
    assert teacher.min_samples == MIN_SAMPLES == 98 * HOP + 1
    assert 4.5e6 < teacher.num_parameters < 4.8e6
    assert teacher.weights_files and os.path.samefile(
        teacher.weights_files[0],
        Path(importlib.util.find_spec("aisfx").origin).parent / "models" / "checkpoint.pth")
    for s, blocks in ((1, 1), (MIN_SAMPLES - 1, 1), (MIN_SAMPLES, 1), (148 * HOP, 1),
                      (148 * HOP + 1, 2), (5 * SR, 3)):
        with torch.inference_mode():
            out = teacher(torch.zeros(1, s))
        t = max((max(s, MIN_SAMPLES) - 1) // HOP + 2, 100)
        assert out.frames.shape == (1, (t - 100) // 50 + 1, 512) and blocks == out.frames.shape[1]


def test_parity_with_the_aisfx_package(wavs: dict[str, Path], teacher) -> None:
    """The package's own inference (essentia spectrogram from the file, its normalisation,
    blocking and CrossNet.get_embedding) and eastkd's torch rebuild agree to ~1e-5."""
    pytest.importorskip("essentia", reason="essentia not installed: the package's front end "
                                           "needs it (pip install essentia)")
    from aisfx import inference
    from aisfx.preprocessing import spectrogram_normalize
    from aisfx.spectrogram.spectrogram_essentia import compute_spectrogram

    from eastkd.pipeline.teachers.aisfx import _allowed_globals

    with torch.serialization.safe_globals(_allowed_globals()):  # torch.load's default is
        weights, datasets = inference.load_weights("cpu")  # weights_only=True since 2.6
    model = inference.load_bestModel(weights, datasets, "cpu")
    worst_spec = worst_emb = 0.0
    for name, path in wavs.items():
        spec = spectrogram_normalize(compute_spectrogram(
            filename=str(path), sr=inference.SAMPLE_RATE, block_size=inference.SPEC_BLOCK_LENGTH,
            hop_size=inference.SPEC_HOP_LENGTH, n_mels=inference.MEL_BINS,
            f_min=inference.F_MIN, f_max=inference.F_MAX))
        ref = inference.model_get_embedding(spec, 0.5, True, model, "cpu").numpy()
        wave = _wave(path)
        with torch.inference_mode():
            mine_spec = teacher.model.frontend(wave)[0].numpy()
            out = teacher(wave)
        assert mine_spec.shape == spec.shape == ((wave.shape[1] - 1) // HOP + 2, 96), name
        assert out.frames[0].shape == ref.shape, name
        worst_spec = max(worst_spec, float(np.abs(mine_spec - spec).max()))
        worst_emb = max(worst_emb, float(np.abs(out.frames[0].numpy() - ref).max()))
        np.testing.assert_allclose(out.clip[0].numpy(), ref.mean(axis=0), atol=1e-4, rtol=0)
    print(f"aisfx parity: spectrogram max |diff| {worst_spec:.2e}, "
          f"embeddings max |diff| {worst_emb:.2e}")
    assert worst_spec < 2e-5 and worst_emb < 1e-4  # embeddings are O(1-10)


def test_checkpoint_loads_with_weights_only_without_importing_aisfx() -> None:
    """In a fresh interpreter: every torch.load is weights_only, and neither aisfx nor its
    front-end libraries are imported."""
    code = (
        "import sys, torch\n"
        "calls = []\n"
        "real = torch.load\n"
        "torch.load = lambda *a, **k: calls.append(k.get('weights_only')) or real(*a, **k)\n"
        "from eastkd.pipeline.teachers.loading import load_teacher\n"
        "t = load_teacher('aisfx')\n"
        "assert calls == [True], calls\n"
        "bad = [m for m in ('aisfx', 'essentia', 'librosa') if m in sys.modules]\n"
        "assert not bad, bad\n"
        "print(t.name, t.embedding_dim)\n"
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=300)
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == "aisfx 512"


def test_missing_package_and_bad_options_are_one_line_errors(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    import eastkd.pipeline.teachers.aisfx as mod

    monkeypatch.setattr(mod.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(EastkdError, match=r"^aisfx teacher: the aisfx package is not installed "
                                          r"\(pip install --no-deps aisfx==0\.1\.2\)$"):
        mod.aisfx()
    monkeypatch.undo()
    with pytest.raises(EastkdError, match="block_hop must be an integer 1-100"):
        mod.aisfx(block_hop=0)
    with pytest.raises(EastkdError, match="block_hop must be an integer 1-100, got 'x'"):
        mod.aisfx(block_hop="x")
    junk = tmp_path / "junk.pth"
    torch.save({"x": torch.zeros(1)}, junk)
    with pytest.raises(EastkdError, match="holds no embedding_net"):
        mod.aisfx(weights=str(junk))


def _manifest(wavs: dict[str, Path], path: Path, names: list[str]) -> Path:
    with path.open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["id", "path", "label", "split"])
        for i, n in enumerate(names):
            w.writerow([n, str(wavs[n]), n.rstrip("0123456789"), ("train", "valid", "test")[i % 3]])
    return path


def test_extract_cli_end_to_end_and_rerun_does_not_load(
        wavs: dict[str, Path], teacher, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``eastkd extract --teacher aisfx`` on CPU writes the package's embeddings (of each clip
    zero-padded to the 4 s segment); ``eastkd info`` shows the teacher; a rerun on the
    finished store does not load it."""
    from eastkd.cli.main import cli
    import eastkd.pipeline.extract.run as run

    names = ["tone3", "noise5", "mix7", "short"]
    manifest = _manifest(wavs, tmp_path / "m.csv", names)
    store = tmp_path / "a.zarr"
    args = ["extract", str(manifest), str(store), "--teacher", "aisfx", "--segment", "4",
            "--frames", "--dtype", "float32", "--device", "cpu", "--no-progress"]
    loads = []
    real_load = run.load_teacher
    monkeypatch.setattr(run, "load_teacher", lambda *a: loads.append(a) or real_load(*a))
    res = CliRunner().invoke(cli, args)
    assert res.exit_code == 0, res.output
    assert len(loads) == 1
    with open_store(str(store)) as s:
        emb = s.embeddings("aisfx")
        clip, frames = emb.array("clip")[:], emb.array("frames")[:]
        attrs = emb.attrs
    assert clip.shape == (4, 512) and frames.shape == (4, 2, 512)  # 4 s: 174 frames, 2 blocks
    assert attrs["frame_rate"] == pytest.approx(SR / (HOP * 50))
    assert attrs["frame_offset"] == pytest.approx(49.5 * HOP / SR)
    assert attrs["teacher"] == "aisfx" and attrs["min_seconds"] == pytest.approx(100353 / SR)
    for i, n in enumerate(names):
        wave = _wave(wavs[n])[:, :4 * SR]
        wave = torch.nn.functional.pad(wave, (0, 4 * SR - wave.shape[1]))
        with torch.inference_mode():
            want = teacher(wave)
        np.testing.assert_allclose(clip[i], want.clip[0].numpy(), atol=1e-4, rtol=0)
        np.testing.assert_allclose(frames[i], want.frames[0].numpy(), atol=1e-4, rtol=0)

    info = CliRunner().invoke(cli, ["info", str(store), "--json"])
    assert info.exit_code == 0, info.output
    shown = json.dumps(json.loads(info.output))
    assert "aisfx" in shown and '"block_hop": 50' in shown  # the options, in provenance
    text = CliRunner().invoke(cli, ["info", str(store)])
    assert text.exit_code == 0 and "aisfx" in text.output

    again = CliRunner().invoke(cli, args)
    assert again.exit_code == 0, again.output
    assert len(loads) == 1  # not loaded again
    with open_store(str(store)) as s:
        assert s.embeddings("aisfx").array("clip")[:].tobytes() == clip.tobytes()
