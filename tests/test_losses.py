"""Distance losses: distance correlation against independent numpy values, DC and FitNet
losses on clip- and frame-level inputs, time alignment, gradients."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from eastkd.pipeline.distill.losses import (
    DistanceCorrelationLoss,
    FitNetLoss,
    align_time,
    distance_correlation,
)
from eastkd.pipeline.registry import losses
from eastkd.store.errors import EastkdError


def dcor2_loops(x: np.ndarray, y: np.ndarray) -> float:
    """Squared V-statistic distance correlation with explicit loops (textbook definition)."""
    n = len(x)

    def centred(z: np.ndarray) -> list[list[float]]:
        d = [[math.sqrt(sum((z[i][k] - z[j][k]) ** 2 for k in range(len(z[i]))))
              for j in range(n)] for i in range(n)]
        row = [sum(d[i]) / n for i in range(n)]
        col = [sum(d[i][j] for i in range(n)) / n for j in range(n)]
        grand = sum(row) / n
        return [[d[i][j] - row[i] - col[j] + grand for j in range(n)] for i in range(n)]

    a, b = centred(x), centred(y)
    dcov = sum(a[i][j] * b[i][j] for i in range(n) for j in range(n)) / n**2
    vx = sum(a[i][j] ** 2 for i in range(n) for j in range(n)) / n**2
    vy = sum(b[i][j] ** 2 for i in range(n) for j in range(n)) / n**2
    return dcov / math.sqrt(vx * vy)


X5 = np.array([[0.0, 1.0], [2.0, -1.0], [3.0, 3.0], [-1.0, 0.5], [1.5, 2.0]])
Y5 = np.array([[1.0, 0.0, 2.0], [0.0, 1.0, -1.0], [4.0, 2.0, 0.0], [1.0, 1.0, 1.0],
               [-2.0, 0.0, 3.0]])


def t64(a: np.ndarray) -> torch.Tensor:
    return torch.tensor(a, dtype=torch.float64)


def test_dcor_matches_loops_on_small_matrices() -> None:
    expected = dcor2_loops(X5, Y5)
    assert 0.0 < expected < 1.0
    got = distance_correlation(t64(X5), t64(Y5), eps=0.0, dcor_eps=0.0).item()
    assert got == pytest.approx(expected, abs=1e-12)
    # With the reference epsilons the value moves only negligibly.
    assert distance_correlation(t64(X5), t64(Y5)).item() == pytest.approx(expected, abs=1e-5)


def test_dcor_random_matches_loops_float32() -> None:
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(8, 4)), rng.normal(size=(8, 6))
    y[:, 0] += 2 * x[:, 0]
    got = distance_correlation(torch.tensor(x, dtype=torch.float32),
                               torch.tensor(y, dtype=torch.float32)).item()
    assert got == pytest.approx(dcor2_loops(x, y), abs=1e-4)


def test_dcor_closed_forms() -> None:
    # Similarity transform (scale, rotation, shift): dCor = 1.
    theta = 0.7
    rot = np.array([[math.cos(theta), -math.sin(theta)], [math.sin(theta), math.cos(theta)]])
    y = -3.0 * X5 @ rot.T + np.array([5.0, -2.0])
    assert distance_correlation(t64(X5), t64(y), eps=0.0, dcor_eps=0.0).item() == (
        pytest.approx(1.0, abs=1e-12)
    )
    assert distance_correlation(t64(X5), t64(y)).item() == pytest.approx(1.0, abs=1e-6)
    # x = (-1, 0, 1), y = x^2: Pearson correlation 0, squared dCor = 1/sqrt(10) by hand.
    x = np.array([[-1.0], [0.0], [1.0]])
    got = distance_correlation(t64(x), t64(x**2), eps=0.0, dcor_eps=0.0).item()
    assert got == pytest.approx(1 / math.sqrt(10), abs=1e-12)
    assert dcor2_loops(x, x**2) == pytest.approx(1 / math.sqrt(10), abs=1e-12)


def test_dcor_batched_over_leading_dims_and_constant_batch() -> None:
    rng = np.random.default_rng(1)
    x, y = rng.normal(size=(3, 6, 2)), rng.normal(size=(3, 6, 5))
    got = distance_correlation(t64(x), t64(y), eps=0.0, dcor_eps=0.0)
    assert got.shape == (3,)
    for t in range(3):
        assert got[t].item() == pytest.approx(dcor2_loops(x[t], y[t]), abs=1e-12)
    # A batch without spread carries no information: R = 0, not NaN.
    assert distance_correlation(torch.ones(4, 3), torch.randn(4, 2)).item() == pytest.approx(0.0)


def test_align_time() -> None:
    s = torch.arange(12.0).view(1, 12, 1)
    t = torch.tensor([[[10.0], [20.0], [30.0]]])
    s2, t2 = align_time(s, t)
    assert torch.equal(s2, s)
    assert t2.flatten().tolist() == [10.0] * 4 + [20.0] * 4 + [30.0] * 4
    # 5 vs 2: teacher frames repeated 3x (6 frames), cut to 5.
    s2, t2 = align_time(torch.zeros(2, 5, 3), torch.tensor([[[1.0], [2.0]]] * 2))
    assert s2.shape == (2, 5, 3) and t2.shape == (2, 5, 1)
    assert t2[0].flatten().tolist() == [1.0, 1.0, 1.0, 2.0, 2.0]
    # Student shorter: 2 vs 7 -> student repeated 4x (8), both cut to 7.
    s2, t2 = align_time(torch.tensor([[[1.0], [2.0]]]), torch.zeros(1, 7, 4))
    assert s2.flatten().tolist() == [1.0] * 4 + [2.0] * 3 and t2.shape == (1, 7, 4)
    with pytest.raises(EastkdError):
        align_time(torch.zeros(2, 3), torch.zeros(2, 3, 1))


def test_dc_loss_frame_level_is_mean_over_frames() -> None:
    rng = np.random.default_rng(2)
    s = rng.normal(size=(6, 4, 3))  # (B, T, C)
    t = rng.normal(size=(6, 2, 5))  # (B, T2, d): aligned by repeating each frame twice
    loss = DistanceCorrelationLoss(3, 5)(t64(s), t64(t)).item()
    expected = np.mean([1 - dcor2_loops(s[:, f], t[:, f // 2]) for f in range(4)])
    assert loss == pytest.approx(expected, abs=1e-5)


def test_dc_loss_zero_for_linear_teacher_and_clip_target_uses_time_mean() -> None:
    torch.manual_seed(0)
    s = torch.randn(8, 5, 4)
    q = torch.linalg.qr(torch.randn(7, 4)).Q.T  # (4, 7), orthonormal rows: keeps distances
    dc = losses.create("dc", 4, 7)
    assert isinstance(dc, DistanceCorrelationLoss)
    assert dc(s, 2.0 * s @ q + 1.0).item() == pytest.approx(0.0, abs=1e-4)
    assert dc(s, torch.randn(8, 5, 7)).item() > 0.1
    clip_target = torch.randn(8, 7)
    assert dc(s, clip_target).item() == pytest.approx(dc(s.mean(1), clip_target).item())


def test_fitnet_identity_regressor_is_mse() -> None:
    fit = losses.create("fitnet", 6, 6)
    assert isinstance(fit, FitNetLoss)
    with torch.no_grad():
        fit.regressor.weight.copy_(torch.eye(6))
        fit.regressor.bias.zero_()
    s, t = torch.randn(4, 6), torch.randn(4, 6)
    assert fit(s, t).item() == pytest.approx(F.mse_loss(s, t).item(), rel=1e-6)
    # Frame-level student, clip-level target: the student's time mean is regressed.
    sf = torch.randn(4, 9, 6)
    assert fit(sf, t).item() == pytest.approx(F.mse_loss(sf.mean(1), t).item(), rel=1e-6)


def test_fitnet_projects_to_target_dim_per_frame() -> None:
    fit = FitNetLoss(3, 5)
    s, t = torch.randn(2, 4, 3), torch.randn(2, 2, 5)
    expected = F.mse_loss(s @ fit.regressor.weight.T + fit.regressor.bias,
                          t.repeat_interleave(2, dim=1))
    assert fit(s, t).item() == pytest.approx(expected.item(), rel=1e-6)
    with pytest.raises(EastkdError, match="student_dim=3"):
        fit(torch.randn(2, 4), torch.randn(2, 5))


@pytest.mark.parametrize("name", ["fitnet", "dc"])
@pytest.mark.parametrize("frames", [False, True])
def test_gradients_reach_student_features(name: str, frames: bool) -> None:
    torch.manual_seed(3)
    shape = (8, 6, 4) if frames else (8, 4)
    s = torch.randn(*shape, requires_grad=True)
    t = torch.randn(8, 3, 10) if frames else torch.randn(8, 10)
    loss_fn = losses.create(name, 4, 10)
    loss = loss_fn(s, t)
    assert loss.dim() == 0 and torch.isfinite(loss)
    loss.backward()
    assert s.grad is not None and torch.isfinite(s.grad).all() and s.grad.abs().sum() > 0
    for p in loss_fn.parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0
    # One gradient step on the features lowers the loss.
    with torch.no_grad():
        s2 = s - 0.05 * s.grad / s.grad.norm()
    assert loss_fn(s2, t).item() < loss.item()


def test_mismatched_batches_raise() -> None:
    with pytest.raises(EastkdError, match="batch sizes differ"):
        DistanceCorrelationLoss()(torch.randn(4, 3), torch.randn(5, 3))
