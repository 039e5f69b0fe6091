"""Students: output shapes, sizes, registry names, input normalisation, a tiny overfit run,
and the complexity measures."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from eastkd.errors import EastkdError
from eastkd.pipeline.core.registry import students
from eastkd.pipeline.distill.complexity import count_macs, count_parameters, cpu_ms_per_clip
from eastkd.pipeline.distill.students import (
    CPResNetStudent,
    MobileFCNStudent,
    MobileNetStudent,
    StudentOutput,
    VGGStudent,
)

NAMES = {"vgg": VGGStudent, "mobilenet": MobileNetStudent, "mobilefcn": MobileFCNStudent,
         "cpresnet": CPResNetStudent}
# Parameter ranges at the default width for 96 mels and 50 classes.
PARAMS = {"vgg": (150_000, 1_000_000), "mobilenet": (200_000, 450_000),
          "mobilefcn": (300_000, 330_000), "cpresnet": (5_000_000, 6_000_000)}
# Multiply-accumulates per 2 s clip (96 mels x 100 frames) at the default width.
MACS = {"vgg": (1e6, 1e9), "mobilenet": (1e6, 1e9), "mobilefcn": (1e6, 1e9),
        "cpresnet": (1e8, 1e10)}


@pytest.mark.parametrize("name", NAMES)
def test_registry_and_output_shapes(name: str) -> None:
    torch.manual_seed(0)
    model = students.create(name, n_mels=96, n_classes=5)
    assert isinstance(model, NAMES[name])
    for frames in (32, 101, 250):
        out = model(torch.randn(3, 96, frames))
        assert isinstance(out, StudentOutput)
        c = model.feature_dim
        assert out.logits.shape == (3, 5)
        assert out.features.shape == (3, c)
        assert out.feature_map.shape == (3, math.ceil(frames / model.time_stride), c)
        torch.testing.assert_close(out.features, out.feature_map.mean(dim=1))


@pytest.mark.parametrize("name", NAMES)
def test_parameter_counts(name: str) -> None:
    model = students.create(name, n_mels=96, n_classes=50)
    n = count_parameters(model)
    lo, hi = PARAMS[name]
    assert lo < n < hi
    assert n == sum(p.numel() for p in model.parameters())
    wider = students.create(name, n_mels=96, n_classes=50, width=32)
    assert count_parameters(wider) > 2 * n and wider.feature_dim == 2 * model.feature_dim


def _paper_count(model: nn.Module) -> int:
    """Parameters without eastkd's input normalisation (a BatchNorm over mel bins)."""
    return sum(p.numel() for n, p in model.named_parameters() if not n.startswith("input_norm"))


def test_papers_students_have_the_papers_sizes() -> None:
    """EAsT's students at the papers' inputs: the MTAT mobile FCN (96 mels at 16 kHz, 29.1 s =
    1457 frames, 50 tags) has ~0.31 M parameters, the OpenMIC CP-ResNet (128 mels at 32 kHz,
    10 s = 1001 frames, 20 instruments) ~5.5 M."""
    fcn = students.create("mobilefcn", n_mels=96, n_classes=50)
    assert _paper_count(fcn) == 314_098  # the reference MobileFCN's own count
    assert fcn.feature_dim == 256
    out = fcn.eval()(torch.randn(2, 96, 1457))
    assert out.feature_map.shape == (2, 16, 256)  # time pooled by 4*3*2*2*2 = 96
    cp = students.create("cpresnet", n_mels=128, n_classes=20)
    assert 5_400_000 < _paper_count(cp) < 5_600_000 and cp.feature_dim == 512
    with torch.no_grad():
        out = cp.eval()(torch.randn(1, 128, 1001))
    assert out.feature_map.shape == (1, 63, 512)
    # rho bounds the receptive field: smaller rho, more 1x1 kernels, fewer parameters
    assert count_parameters(CPResNetStudent(128, 20, rho=3)) < count_parameters(cp)


def test_unknown_student_and_bad_input_raise() -> None:
    with pytest.raises(EastkdError, match="mobilenet"):
        students.create("resnet", n_mels=96, n_classes=5)
    with pytest.raises(EastkdError, match="96"):
        VGGStudent(96, 5)(torch.randn(2, 64, 50))


@pytest.mark.parametrize("name", NAMES)
def test_set_input_stats_normalises_inside_the_model(name: str) -> None:
    torch.manual_seed(1)
    model = students.create(name, n_mels=32, n_classes=4)
    x = torch.randn(4, 32, 40)
    with torch.no_grad():  # give the BatchNorm layers running statistics of normalised input
        for _ in range(20):
            model(x)
    model.eval()
    reference = model(x).features  # the distilled vector (the logits are a linear map of it)
    assert reference.std(dim=0).max() > 1e-3  # the features depend on the input
    mean = torch.linspace(-60.0, -20.0, 32)
    std = torch.linspace(5.0, 15.0, 32)
    raw = x * std[:, None] + mean[:, None]
    assert not torch.allclose(model(raw).features, reference, atol=1e-3)
    model.set_input_stats(mean, std)
    torch.testing.assert_close(model(raw).features, reference, atol=1e-5, rtol=1e-4)
    assert torch.equal(model.state_dict()["input_mean"], mean)
    with pytest.raises(EastkdError):
        model.set_input_stats(0.0, 0.0)


@pytest.mark.parametrize("name", NAMES)
def test_tiny_overfit(name: str) -> None:
    torch.manual_seed(2)
    model = students.create(name, n_mels=32, n_classes=8, dropout=0.0)
    x = torch.randn(8, 32, 48) * 10.0 - 40.0
    y = torch.arange(8)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(20):
        loss = F.cross_entropy(model(x).logits, y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[0] > 1.5  # about ln(8) at the start
    assert losses[-1] < 0.3 * losses[0]


def test_count_macs_exact_for_linear_and_restores_mode() -> None:
    lin = nn.Linear(10, 20)
    assert count_macs(lin, torch.randn(3, 10)) == 3 * 10 * 20
    model = VGGStudent(32, 4)
    model.train()
    count_macs(model, torch.randn(1, 32, 40))
    assert model.training


@pytest.mark.parametrize("name", NAMES)
def test_complexity_of_students(name: str) -> None:
    model = students.create(name, n_mels=96, n_classes=10)
    macs_short = count_macs(model, torch.randn(1, 96, 100))
    macs_long = count_macs(model, torch.randn(1, 96, 200))
    lo, hi = MACS[name]
    assert lo < macs_short < hi
    assert 1.7 < macs_long / macs_short < 2.2
    assert count_macs(model, torch.randn(2, 96, 100)) == 2 * macs_short
    ms = cpu_ms_per_clip(model, torch.randn(2, 96, 100), repeats=3, warmup=1)
    # a sanity bound (the shared CPU may be busy): CP-ResNet is ~20x the MACs of the others
    assert math.isfinite(ms) and 0.0 < ms < (20_000.0 if name == "cpresnet" else 1000.0)
