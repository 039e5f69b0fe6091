"""Distance losses: distance correlation against independent numpy values, DC and FitNet
losses on clip- and frame-level inputs, time alignment, gradients."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from eastkd.errors import EastkdError
from eastkd.pipeline.core.registry import losses
from eastkd.pipeline.distill.losses import (
    DistanceCorrelationLoss,
    FitNetLoss,
    FrameTiming,
    TimeAlignment,
    UnbiasedDistanceCorrelationLoss,
    align_time,
    distance_correlation,
    unbiased_distance_correlation,
)


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


def test_align_time_without_timing_spans_the_clip_evenly() -> None:
    s = torch.arange(12.0).view(1, 12, 1)
    t = torch.tensor([[[10.0], [20.0], [30.0]]])
    s2, t2 = align_time(s, t)
    assert torch.equal(s2, s)
    assert t2.flatten().tolist() == [10.0] * 4 + [20.0] * 4 + [30.0] * 4
    # 5 vs 2: student centres 0.1 .. 0.9 of the clip, teacher centres 0.25 and 0.75.
    s2, t2 = align_time(torch.zeros(2, 5, 3), torch.tensor([[[1.0], [2.0]]] * 2))
    assert s2.shape == (2, 5, 3) and t2.shape == (2, 5, 1)
    assert t2[0].flatten().tolist() == [1.0, 1.0, 2.0, 2.0, 2.0]  # 0.5 ties to the later
    # Student shorter: 2 vs 7 -> each student frame takes the teacher frame at its centre.
    s2, t2 = align_time(torch.tensor([[[1.0], [2.0]]]), torch.arange(7.0).view(1, 7, 1))
    assert s2.flatten().tolist() == [1.0, 2.0] and t2.flatten().tolist() == [1.0, 5.0]
    with pytest.raises(EastkdError):
        align_time(torch.zeros(2, 3), torch.zeros(2, 3, 1))


def _nearest_by_search(student_centres: list[float], teacher_centres: list[float]) -> list[int]:
    """Index of the nearest teacher centre per student centre, by exhaustive search."""
    return [min(range(len(teacher_centres)), key=lambda k: (abs(c - teacher_centres[k]), -k))
            for c in student_centres]


def test_align_time_pairs_a_2hz_teacher_with_a_50hz_student_by_time() -> None:
    # 10 s clip: 501 log-mel frames at 50 /s (centre of frame j: j * 0.02 s);
    # teacher frames at 2 Hz centred at 0, 0.5, ..., 10 s (PaSST's timestamp embeddings).
    n_in, n_t = 501, 21
    timing = TimeAlignment(FrameTiming(50.0), n_in, FrameTiming(2.0))
    teacher = torch.arange(float(n_t)).view(1, n_t, 1).expand(3, n_t, 1)
    s, t = align_time(torch.zeros(3, n_in, 4), teacher, timing)  # a stride-1 student
    paired = t[0, :, 0].long().tolist()
    assert paired == _nearest_by_search([j * 0.02 for j in range(n_in)],
                                        [k * 0.5 for k in range(n_t)])
    assert paired[12] == 0 and paired[13] == 1  # 0.24 s -> 0 s; 0.26 s -> 0.5 s
    assert paired[-1] == 20 and s.shape == (3, n_in, 4) and t.shape == (3, n_in, 1)
    # A stride-8 student (VGG): its frame j covers input frames 8j..8j+7, centre (8j + 3.5) / 50.
    n_s = math.ceil(n_in / 8)
    _, t = align_time(torch.zeros(1, n_s, 4), teacher[:1], timing)
    stride = n_in / n_s
    centres = [(stride * j + 0.5 * (stride - 1)) / 50 for j in range(n_s)]
    assert t[0, :, 0].long().tolist() == _nearest_by_search(centres, [k * 0.5 for k in range(n_t)])


def test_align_time_uses_the_teacher_offset() -> None:
    # MULE: 0.5 Hz frames centred from 2 s on; 29 s at 50 /s. Student time 0-3 s takes frame 0.
    n_in = 1451
    timing = TimeAlignment(FrameTiming(50.0), n_in, FrameTiming(0.5, 2.0))
    teacher = torch.arange(14.0).view(1, 14, 1)
    _, t = align_time(torch.zeros(1, n_in, 2), teacher, timing)
    paired = t[0, :, 0].long().tolist()
    assert set(paired[:150]) == {0}  # 0 .. 2.98 s: nearest centre is 2 s
    assert paired[151] == 1  # 3.02 s: nearer 4 s than 2 s
    assert paired == _nearest_by_search([j / 50 for j in range(n_in)],
                                        [2.0 + 2.0 * k for k in range(14)])
    # count-based repetition (the EAsT reference) would pair 0-2 s with frame 0 as well, but
    # student time 26-29 s with frame 13 at 28 s only by accident of the counts; by time the
    # last student frame (29 s) takes frame 13 (28 s): the nearest, never one past the end.
    assert paired[-1] == 13


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


@pytest.mark.parametrize("name", ["fitnet", "dc", "dc-unbiased"])
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


# ------------------------------------------------- bias-corrected distance correlation


def dcor_u_numpy(x: np.ndarray, y: np.ndarray) -> float:
    """R*(x, y) of Székely & Rizzo (2014) straight from the paper's formulas, O(n^2) numpy."""
    n = len(x)

    def u_centred(z: np.ndarray) -> np.ndarray:
        a = np.sqrt(((z[:, None, :] - z[None, :, :]) ** 2).sum(-1))
        u = (a - a.sum(1, keepdims=True) / (n - 2) - a.sum(0, keepdims=True) / (n - 2)
             + a.sum() / ((n - 1) * (n - 2)))
        np.fill_diagonal(u, 0.0)
        return u

    a, b = u_centred(x), u_centred(y)

    def dot(u: np.ndarray, v: np.ndarray) -> float:
        return float((u * v).sum() / (n * (n - 3)))

    return dot(a, b) / math.sqrt(dot(a, a) * dot(b, b))


def test_unbiased_dcor_matches_reference_implementations() -> None:
    import dcor

    rng = np.random.default_rng(4)
    for p, q in ((3, 5), (128, 256)):
        x, y = rng.normal(size=(16, p)), rng.normal(size=(16, q))
        y[:, 0] += 3 * x[:, 0]
        expected = dcor_u_numpy(x, y)
        assert expected == pytest.approx(dcor.u_distance_correlation_sqr(x, y), abs=1e-10)
        got = unbiased_distance_correlation(t64(x), t64(y), eps=0.0, dcor_eps=0.0).item()
        assert got == pytest.approx(expected, abs=1e-10)
        # the reference epsilons move it only negligibly
        assert unbiased_distance_correlation(t64(x), t64(y)).item() == pytest.approx(
            expected, abs=1e-5)


def test_unbiased_dcor_is_near_0_for_independent_and_1_for_linear_features() -> None:
    rng = np.random.default_rng(5)
    unbiased, biased = [], []
    for _ in range(50):  # batch 16, 128-d student against 256-d independent targets
        x, y = t64(rng.normal(size=(16, 128))), t64(rng.normal(size=(16, 256)))
        unbiased.append(unbiased_distance_correlation(x, y).item())
        biased.append(distance_correlation(x, y).item())
    assert abs(np.mean(unbiased)) < 0.05 and max(abs(v) for v in unbiased) < 0.5
    assert np.mean(biased) > 0.95  # the EAsT estimator reads "almost 1" for unrelated batches
    x = rng.normal(size=(16, 128))
    q = np.linalg.qr(rng.normal(size=(256, 128)))[0]  # (256, 128) orthonormal columns
    y = -2.0 * x @ q.T + 1.0  # a similarity map into 256-d
    assert unbiased_distance_correlation(t64(x), t64(y)).item() == pytest.approx(1.0, abs=1e-6)
    loss = losses.create("dc-unbiased", 128, 256)
    assert isinstance(loss, UnbiasedDistanceCorrelationLoss)
    assert loss(t64(x), t64(y)).item() == pytest.approx(0.0, abs=1e-6)
    assert loss(t64(x), t64(rng.normal(size=(16, 256)))).item() > 0.5


def test_unbiased_dcor_needs_four_items() -> None:
    with pytest.raises(EastkdError, match="at least 4 items"):
        unbiased_distance_correlation(torch.randn(3, 2), torch.randn(3, 2))
    s = torch.randn(3, 4, requires_grad=True)  # a short last batch: no signal, no error
    assert UnbiasedDistanceCorrelationLoss()(s, torch.randn(3, 5)).item() == 0.0


# ------------------------------------------------------------------- response-based KD (kl)


def _kl_by_hand(logits: np.ndarray, q: np.ndarray, temp: float) -> float:
    """T² · mean over items of sum_c q_c log(q_c / softmax(s/T)_c), with explicit loops."""
    total = 0.0
    for s_row, q_row in zip(logits, q):
        z = [math.exp(v / temp) for v in s_row]
        p = [v / sum(z) for v in z]
        total += sum(qc * math.log(qc / pc) for qc, pc in zip(q_row, p) if qc > 0)
    return temp * temp * total / len(logits)


def _softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


@pytest.mark.parametrize("temp", [1.0, 2.5])
def test_kl_equals_a_hand_computation(temp: float) -> None:
    from eastkd.pipeline.distill.losses import SoftLabelKDLoss

    rng = np.random.default_rng(0)
    s = rng.normal(size=(6, 4)) * 2
    t = rng.normal(size=(6, 4)) * 3  # a teacher's logits
    p = _softmax(t)
    p[0] = [1.0, 0.0, 0.0, 0.0]  # a one-hot row: 0 log 0 = 0
    st = torch.tensor(s, dtype=torch.float64)
    by_logits = SoftLabelKDLoss(4, 4, temp, "logits")(st, torch.tensor(t))
    assert float(by_logits) == pytest.approx(_kl_by_hand(s, _softmax(t / temp), temp), rel=1e-9)
    # probabilities are tempered as p^(1/T) renormalised, i.e. as their logits would be
    got = SoftLabelKDLoss(4, 4, temp, "probabilities")(st, torch.tensor(p))
    q = p ** (1 / temp) if temp != 1.0 else p
    q = q / q.sum(axis=1, keepdims=True)
    assert float(got) == pytest.approx(_kl_by_hand(s, q, temp), rel=1e-6)
    # the student equal to the teacher: zero
    same = SoftLabelKDLoss(4, 4, temp, "logits")(torch.tensor(t), torch.tensor(t))
    assert float(same) == pytest.approx(0.0, abs=1e-12)


def test_kl_multi_label_is_bce_against_the_target_probabilities() -> None:
    from eastkd.pipeline.distill.losses import SoftLabelKDLoss

    rng = np.random.default_rng(1)
    s, p = rng.normal(size=(5, 3)), rng.uniform(0.05, 0.95, size=(5, 3))
    for temp in (1.0, 2.0):
        q = 1 / (1 + np.exp(-np.log(p / (1 - p)) / temp))
        sig = 1 / (1 + np.exp(-s / temp))
        want = -(q * np.log(sig) + (1 - q) * np.log(1 - sig)).mean() * temp * temp
        got = SoftLabelKDLoss(3, 3, temp, "probabilities", multi_label=True)(
            torch.tensor(s), torch.tensor(p))
        assert float(got) == pytest.approx(want, rel=1e-6)


def test_kl_is_registered_and_refuses_bad_shapes() -> None:
    from eastkd.pipeline.distill.losses import SoftLabelKDLoss
    from eastkd.pipeline.distill.options import kd_methods

    assert losses.get("kl") is SoftLabelKDLoss and "kl" in kd_methods()
    assert SoftLabelKDLoss.uses_logits and not SoftLabelKDLoss.normalise_targets
    with pytest.raises(EastkdError, match="5 classes but the targets 4"):
        SoftLabelKDLoss(5, 4)
    with pytest.raises(EastkdError, match="temperature"):
        SoftLabelKDLoss(4, 4, temperature=0.0)
