"""Teachers under float16 autocast: front ends stay float32, declared-safe models stay close to
float32 on full-scale noise and square waves, and extract uses autocast only where declared."""

from __future__ import annotations

import importlib.util
import math

import pytest
import torch

from eastkd.pipeline.core.registry import teachers
from eastkd.pipeline.teachers import mule as mule_mod

pytestmark = [
    pytest.mark.filterwarnings("ignore:.*return_complex=False is deprecated"),
    pytest.mark.filterwarnings("ignore:.*torch.cuda.amp.autocast"),
    pytest.mark.filterwarnings("ignore:Input image size"),
    pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated"),
]

CUDA = torch.device("cuda")  # a device object only: nothing runs on it
#: relative L2 error of float16 autocast against float32 (float16 eps is ~1e-3)
RTOL = 1e-2
#: PaSST, CREPE and aiSFX are declared float16-safe; MULE's export (unknown float16 behaviour)
#: is not
SAFE = {"crepe-tiny": True, "crepe": True, "passt": True, "mule": False, "aisfx": True}
NO_AISFX = pytest.mark.skipif(importlib.util.find_spec("aisfx") is None,
                              reason="aisfx not installed (pip install --no-deps aisfx==0.1.2)")


class SliceNet(torch.nn.Module):
    """Random stand-in for MULE's export: (N, 96, 300, 1) -> (N, 1728)."""

    def __init__(self) -> None:
        super().__init__()
        self.proj = torch.nn.Linear(96, 1728)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x[..., 0].mean(dim=2))


def _signals(sample_rate: int, seconds: float) -> dict[str, torch.Tensor]:
    """Full-scale uniform noise and a full-scale 440 Hz square wave, (1, S)."""
    n = int(sample_rate * seconds)
    g = torch.Generator().manual_seed(0)
    t = torch.arange(n) / sample_rate
    return {"noise": torch.rand(1, n, generator=g) * 2 - 1,
            "square": torch.sign(torch.sin(2 * math.pi * 440 * t))[None]}


def _build(name: str, tmp_path) -> object:
    torch.manual_seed(0)
    if name == "passt":
        return teachers.create("passt", random_init=True, frames=True, frame_window_s=0.25,
                               frame_hop_s=0.25)
    if name == "mule":
        path = tmp_path / "mule.pt"
        torch.jit.script(SliceNet()).save(str(path))
        return teachers.create("mule", weights=str(path))
    return teachers.create(name)


def _relative_error(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.float() - b).norm() / b.norm())


@pytest.mark.parametrize("name", ["crepe-tiny", "crepe", "passt", "mule",
                                  pytest.param("aisfx", marks=NO_AISFX)])
def test_teachers_under_float16_autocast(name, tmp_path):
    teacher = _build(name, tmp_path)
    assert teacher.autocast_safe is SAFE[name]
    seconds = {"mule": 3.2, "aisfx": 3.5}.get(name, 0.5)  # aisfx: 2 blocks
    for kind, wave in _signals(teacher.sample_rate, seconds).items():
        with torch.no_grad():
            ref = teacher(wave)
            with torch.autocast("cpu", dtype=torch.float16):
                half = teacher(wave)
        for level in ("clip", "frames"):
            a, b = getattr(half, level), getattr(ref, level)
            assert torch.isfinite(a).all(), f"{name} {kind} {level}: non-finite under float16"
            if teacher.autocast_safe:
                assert _relative_error(a, b) < RTOL, f"{name} {kind} {level}"
    # extract runs a teacher under autocast on CUDA exactly when it is declared safe
    assert teacher.autocast_on(CUDA) is teacher.autocast_safe
    assert teacher.autocast_on(torch.device("cpu")) is False


def test_mule_front_end_is_float32_under_autocast():
    """The bug of issue 12: 10000 * mel passes float16's 65504 for full-scale square waves."""
    fe = mule_mod.MuleFrontEnd()
    wave = _signals(16000, 1.0)["square"]
    ref = fe(wave)
    with torch.autocast("cpu", dtype=torch.float16):
        half = fe(wave)
        naive = torch.einsum("bft,fm->bmt", torch.stft(
            wave, 2048, 160, 400, fe.window, return_complex=True).abs().pow(2), fe.fb)
    assert naive.dtype == torch.float16 and not torch.isfinite(10000.0 * naive).all()
    assert half.dtype == torch.float32
    torch.testing.assert_close(half, ref)
