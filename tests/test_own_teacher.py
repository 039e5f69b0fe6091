"""Users' own teachers (`python:MODULE:CALLABLE`): any module fingerprints, probes on the real
segment, pads to its minimum input, gets a usable default key; the README's example runs."""

from __future__ import annotations

import csv
import re
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from click.testing import CliRunner

from eastkd.cli.main import cli
from eastkd.pipeline.teachers.base import state_dict_sha256
from eastkd.pipeline.teachers.loading import check_key, default_key, load_teacher
from eastkd.store import EastkdError, open_store

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "docs" / "examples" / "my_teacher.py"

MODULE_SOURCE = '''
import torch

SEEN = []  # input lengths the model was run on


class Buffered(torch.nn.Module):
    """BatchNorm, GroupNorm and an LSTM, plus buffers of every awkward kind."""
    sample_rate = 8000
    frame_rate = 8000 / 400
    min_seconds = MIN_SECONDS

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.conv = torch.nn.Conv1d(1, 8, 400, stride=400)
        self.bn = torch.nn.BatchNorm1d(8)
        self.gn = torch.nn.GroupNorm(2, 8)
        self.lstm = torch.nn.LSTM(8, 6, batch_first=True)
        self.register_buffer("flag", torch.tensor(True))
        self.register_buffer("scale", torch.tensor(1.5))
        self.register_buffer("phase", torch.ones(3, dtype=torch.complex64))
        self.register_buffer("bf16", torch.ones(2, dtype=torch.bfloat16))
        self.register_buffer("count", torch.tensor(7, dtype=torch.int64))

    def forward(self, wave):
        SEEN.append(int(wave.shape[-1]))
        if wave.shape[-1] < int(MIN_SECONDS * 8000) - 1:
            raise ValueError("input shorter than the receptive field")
        x = self.gn(self.bn(self.conv(wave[:, None])))
        out, _ = self.lstm(x.transpose(1, 2))
        return out * self.scale


def make():
    return Buffered().eval()
'''


def _module_file(directory: Path, name: str, min_seconds: float) -> None:
    (directory / f"{name}.py").write_text(MODULE_SOURCE.replace("MIN_SECONDS", repr(min_seconds)))


@pytest.fixture
def clips(demo_manifest: Path, tmp_path: Path) -> Path:
    """A manifest of 6 demo clips (1 s each)."""
    with demo_manifest.open(newline="") as fh:
        rows = list(csv.DictReader(fh))[:6]
    out = tmp_path / "m.csv"
    with out.open("w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=["id", "path", "label", "split"])
        w.writeheader()
        for r in rows:
            w.writerow({"id": r["id"], "path": str((demo_manifest.parent / r["path"]).resolve()),
                        "label": r["label"], "split": r["split"]})
    return out


def _run(*args: str) -> tuple[int, str]:
    res = CliRunner().invoke(cli, list(args), catch_exceptions=False)
    return res.exit_code, res.output


def test_fingerprint_covers_every_tensor_kind() -> None:
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv1d(1, 4, 3), torch.nn.BatchNorm1d(4),
                                torch.nn.GroupNorm(2, 4), torch.nn.LSTM(4, 8))
    buffers = {"b0": torch.tensor(2.0), "b1": torch.tensor([True, False]),
               "b2": torch.ones(2, dtype=torch.complex64),
               "b3": torch.ones(3, dtype=torch.bfloat16),
               "b4": torch.tensor(3, dtype=torch.int64), "b5": torch.zeros(0)}
    for name, value in buffers.items():
        model.register_buffer(name, value)
    digest = state_dict_sha256(model)
    assert re.fullmatch(r"[0-9a-f]{64}", digest) and digest == state_dict_sha256(model)
    changes = {"b0": lambda t: t.add_(1), "b1": lambda t: t.logical_not_(),
               "b2": lambda t: t.mul_(1j), "b3": lambda t: t.add_(1),
               "b4": lambda t: t.add_(1), "1.num_batches_tracked": lambda t: t.add_(1)}
    state = dict(model.named_buffers())
    for name, change in changes.items():
        before = state[name].clone()
        change(state[name])
        assert state_dict_sha256(model) != digest, name
        state[name].copy_(before)
        assert state_dict_sha256(model) == digest, name


def test_default_key_and_key_check() -> None:
    assert default_key("python:my_pkg.models:make_teacher") == "make_teacher"
    assert default_key("crepe-tiny") == "crepe-tiny"
    for bad in ("a/b", "python:x:y", "", ".hidden", "a b"):
        with pytest.raises(EastkdError, match="--key"):
            check_key(bad)


def test_own_teacher_with_batchnorm_extracts_probes_and_pads(
        clips: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _module_file(tmp_path, "own_teacher_a", min_seconds=1.5)
    monkeypatch.syspath_prepend(str(tmp_path))
    store = tmp_path / "s.zarr"
    code, out = _run("extract", str(clips), str(store), "--teacher", "python:own_teacher_a:make",
                     "--segment", "0.5", "--frames", "--dtype", "float32", "--workers", "0",
                     "--no-progress")
    assert code == 0, out
    mod = sys.modules["own_teacher_a"]
    # the probe and every batch ran at the real segment padded to the teacher's minimum
    assert set(mod.SEEN) == {12000}
    reference = mod.make()
    with open_store(str(store)) as s:
        assert s.section_names("embeddings") == ["make"]  # default key: the callable's name
        emb = s.embeddings("make")
        a = emb.attrs
        assert a["weights_sha256"] == state_dict_sha256(reference)
        assert a["embedding_dim"] == 6 and a["n_frames"] == 30 and a["min_seconds"] == 1.5
        frames = emb.array("frames")[:]
        paths = list(s.items.paths)
    # what the model itself gives on the first 0.5 s of each clip, zero-padded to 1.5 s
    from eastkd.pipeline.core.audio import resample
    waves = []
    for p in paths:
        x, sr = sf.read(p, dtype="float32")
        x = torch.from_numpy(x if x.ndim == 1 else x.mean(axis=1))
        waves.append(torch.nn.functional.pad(resample(x, sr, 8000)[:4000], (0, 8000)))
    with torch.inference_mode():
        want = reference(torch.stack(waves)).numpy()
    np.testing.assert_allclose(frames, want, rtol=1e-3, atol=1e-3)


def test_own_teacher_failing_on_the_probe_is_one_line(
        clips: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _module_file(tmp_path, "own_teacher_b", min_seconds=0.0)
    (tmp_path / "own_teacher_b.py").write_text(
        (tmp_path / "own_teacher_b.py").read_text().replace("int(0.0 * 8000) - 1", "6000"))
    monkeypatch.syspath_prepend(str(tmp_path))
    res = CliRunner().invoke(cli, ["extract", str(clips), str(tmp_path / "s.zarr"), "--teacher",
                                   "python:own_teacher_b:make", "--segment", "0.5",
                                   "--workers", "0", "--no-progress"], catch_exceptions=False)
    assert res.exit_code == 1 and "Traceback" not in res.output
    line = res.stderr.strip()  # stdout holds the split report, printed before the teacher loads
    assert "\n" not in line and line.startswith("Error:"), res.output
    assert "0.5 s probe" in line and "min_seconds" in line, res.output
    code, out = _run("extract", str(clips), str(tmp_path / "t.zarr"), "--teacher",
                     "python:own_teacher_b:make", "--key", "a/b", "--no-progress")
    assert code == 1 and "--key" in out and "Traceback" not in out


def test_readme_example_is_the_file_and_runs(clips: Path, tmp_path: Path,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    readme = (ROOT / "README.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", readme, re.S)
    assert EXAMPLE.read_text() in blocks, "README's own-teacher example differs from the file"
    shutil.copy(EXAMPLE, tmp_path / "my_teacher.py")
    monkeypatch.syspath_prepend(str(tmp_path))
    store = tmp_path / "own.zarr"
    code, out = _run("extract", str(clips), str(store), "--teacher", "python:my_teacher:make",
                     "--teacher-opt", "dim=32", "--frames", "--workers", "0", "--no-progress")
    assert code == 0, out
    teacher = load_teacher("python:my_teacher:make", {"dim": 32})
    with open_store(str(store)) as s:
        a = s.embeddings("make").attrs
        assert a["teacher"] == "python:my_teacher:make" and a["sample_rate"] == 22050
        assert a["embedding_dim"] == 32 and a["weights_sha256"] == teacher.weights_sha256
        assert a["identity"]["teacher_options"] == {"dim": 32}
        assert a["frame_rate"] == pytest.approx(22050 / 512)
