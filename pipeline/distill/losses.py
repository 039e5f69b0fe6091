"""KD losses: distances between student features and stored teacher targets (EAsT's L_reg),
and response-based KD on the student's logits.

Three distance losses, all called ``loss(student_features, targets) -> scalar``:

* :class:`FitNetLoss` (``fitnet``) — MSE between a learned linear regressor of the student
  feature (student_dim -> target_dim) and the target;
* :class:`DistanceCorrelationLoss` (``dc``) — 1 - squared V-statistic distance correlation of
  the batch's student features and targets, averaged over time frames (the EAsT estimator;
  biased towards 1 in high dimensions: about 0.93-0.98 at batch 16 for independent features);
* :class:`UnbiasedDistanceCorrelationLoss` (``dc-unbiased``) — 1 - the bias-corrected distance
  correlation of U-centred distance matrices (Székely & Rizzo 2014), about 0 for independent
  features at any dimension.

Inputs are clip-level (B, C) / (B, d) or frame-level (B, T, C) / (B, T2, d). Frame-level pairs
are aligned by time with :func:`align_time`: each student frame takes the target frame whose
centre is nearest, using the loss's ``timing`` (a :class:`TimeAlignment`, set by distill from
the store's frame rates and offsets). A clip-level target against a frame-level student uses the
student's time average (and a frame-level target against a clip-level student the target's).

:class:`SoftLabelKDLoss` (``kl``) is called ``loss(student_logits, targets)``: a loss that
declares ``uses_logits = True`` is given the student's logits instead of its features, and
``normalise_targets = False`` has distill pass the targets as stored (class probabilities or
logits) rather than centred and scaled.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from eastkd.errors import EastkdError

#: Inside the square root of every pairwise distance, as in the EAsT reference implementation.
DIST_EPS = 1e-12
#: Added to the product of the distance variances before its square root (reference value).
DCOR_EPS = 1e-9


@dataclass(frozen=True)
class FrameTiming:
    """When the frames of a sequence happen: frame ``i`` is centred at ``offset + i / rate`` s."""

    rate: float
    offset: float = 0.0

    def centres(self, n: int) -> torch.Tensor:
        """Centres in seconds of the first ``n`` frames (float64)."""
        return self.offset + torch.arange(n, dtype=torch.float64) / self.rate


@dataclass(frozen=True)
class TimeAlignment:
    """Timing of both sides: the student's *input* frames (log-mel, ``n_input`` of them per
    clip) and the target frames. The student's feature map has ``T' < n_input`` frames; frame
    ``j`` is taken to cover input frames ``[j s, (j + 1) s)`` with stride ``s = n_input / T'``."""

    student_input: FrameTiming
    n_input: int
    target: FrameTiming

    def student(self, n_frames: int) -> FrameTiming:
        """Timing of a student feature map with ``n_frames`` frames."""
        stride = self.n_input / n_frames
        inp = self.student_input
        return FrameTiming(inp.rate / stride, inp.offset + 0.5 * (stride - 1) / inp.rate)


def nearest_frames(student: FrameTiming, n_student: int, target: FrameTiming,
                   n_target: int) -> torch.Tensor:
    """For each of ``n_student`` frames, the index of the target frame with the nearest centre
    (ties to the later frame), clamped to the ``n_target`` frames that exist."""
    position = (student.centres(n_student) - target.offset) * target.rate
    return torch.floor(position + 0.5).long().clamp(0, n_target - 1)


def align_time(student: torch.Tensor, teacher: torch.Tensor,
               timing: TimeAlignment | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Align (B, T, C) and (B, T2, d) sequences by time: each student frame is paired with the
    teacher frame whose centre is nearest; returns (B, T, C) and (B, T, d).

    Without ``timing`` both sequences are taken to span the same clip evenly (frame ``i`` of
    ``T`` centred at ``(i + 0.5) / T`` of it).
    """
    if student.dim() != 3 or teacher.dim() != 3:
        raise EastkdError(
            f"align_time: expected (batch, frames, dim) tensors, got {tuple(student.shape)} "
            f"and {tuple(teacher.shape)}"
        )
    t_s, t_t = student.shape[1], teacher.shape[1]
    if t_s == 0 or t_t == 0:
        raise EastkdError("align_time: a sequence has no frames; check the stored targets")
    if timing is None:
        s_time, t_time = FrameTiming(t_s, 0.5 / t_s), FrameTiming(t_t, 0.5 / t_t)
    else:
        s_time, t_time = timing.student(t_s), timing.target
    idx = nearest_frames(s_time, t_s, t_time, t_t).to(teacher.device)
    return student, teacher.index_select(1, idx)


def match_shapes(
    student: torch.Tensor, target: torch.Tensor, timing: TimeAlignment | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Bring student features and targets to the same level: both (B, C)/(B, d) or both
    (B, T, C)/(B, T, d) (frame-level pairs through :func:`align_time` with ``timing``)."""
    if student.dim() not in (2, 3) or target.dim() not in (2, 3):
        raise EastkdError(
            f"distance loss: expected (batch, dim) or (batch, frames, dim) inputs, got "
            f"{tuple(student.shape)} and {tuple(target.shape)}"
        )
    if student.shape[0] != target.shape[0]:
        raise EastkdError(
            f"distance loss: batch sizes differ (student {student.shape[0]}, "
            f"target {target.shape[0]}); targets must be read for the same items"
        )
    if student.dim() == 3 and target.dim() == 2:
        return student.mean(dim=1), target
    if student.dim() == 2 and target.dim() == 3:
        return student, target.mean(dim=1)
    if student.dim() == 3:
        return align_time(student, target, timing)
    return student, target


def _distances(x: torch.Tensor, eps: float) -> torch.Tensor:
    """Pairwise Euclidean distances ``sqrt(d2 + eps)`` of (..., n, p) -> (..., n, n).

    Squared distances come from Gram matrices of the batch-centred points (memory O(n^2), not
    O(n^2 p)); the diagonal is set to exactly 0 before ``sqrt(. + eps)``.
    """
    x = x - x.mean(dim=-2, keepdim=True)
    sq = (x * x).sum(dim=-1)
    d2 = sq.unsqueeze(-1) + sq.unsqueeze(-2) - 2.0 * (x @ x.transpose(-1, -2))
    return torch.sqrt(d2.clamp(min=0.0) * _off_diagonal(x) + eps)


def _off_diagonal(x: torch.Tensor) -> torch.Tensor:
    n = x.shape[-2]
    return ~torch.eye(n, dtype=torch.bool, device=x.device)


def _double_centred_distances(x: torch.Tensor, eps: float) -> torch.Tensor:
    """Double-centred pairwise Euclidean distances of (..., n, p) -> (..., n, n)."""
    d = _distances(x, eps)
    return d - d.mean(dim=-1, keepdim=True) - d.mean(dim=-2, keepdim=True) + d.mean(
        dim=(-1, -2), keepdim=True
    )


def distance_correlation(
    x: torch.Tensor, y: torch.Tensor, eps: float = DIST_EPS, dcor_eps: float = DCOR_EPS
) -> torch.Tensor:
    """Squared V-statistic distance correlation of (..., n, p) and (..., n, q) batches.

    R = mean(A*B) / sqrt(mean(A*A) * mean(B*B) + dcor_eps) with A, B the double-centred
    pairwise distance matrices; leading dimensions are batched (e.g. one R per time frame).
    It is 1 for y = a*x + b and 0 when either batch has no spread. Pass ``eps=0, dcor_eps=0``
    for the textbook value.
    """
    if x.shape[:-1] != y.shape[:-1]:
        raise EastkdError(
            f"distance_correlation: sample dimensions differ: {tuple(x.shape)} vs {tuple(y.shape)}"
        )
    a = _double_centred_distances(x, eps)
    b = _double_centred_distances(y, eps)
    dcov_xy = (a * b).mean(dim=(-1, -2))
    dvar = (a * a).mean(dim=(-1, -2)) * (b * b).mean(dim=(-1, -2))
    return dcov_xy / torch.sqrt(dvar + dcor_eps)


def _u_centred_distances(x: torch.Tensor, eps: float) -> torch.Tensor:
    """U-centred pairwise distances of (..., n, p) -> (..., n, n) (Székely & Rizzo 2014):
    ``a_ij - a_i./(n-2) - a_.j/(n-2) + a../((n-1)(n-2))`` off the diagonal, 0 on it."""
    off = _off_diagonal(x)
    d = _distances(x, eps) * off
    n = x.shape[-2]
    row = d.sum(dim=-1, keepdim=True) / (n - 2)
    col = d.sum(dim=-2, keepdim=True) / (n - 2)
    total = d.sum(dim=(-1, -2), keepdim=True) / ((n - 1) * (n - 2))
    return (d - row - col + total) * off


def unbiased_distance_correlation(
    x: torch.Tensor, y: torch.Tensor, eps: float = DIST_EPS, dcor_eps: float = DCOR_EPS
) -> torch.Tensor:
    """Bias-corrected distance correlation of (..., n, p) and (..., n, q) batches, n >= 4.

    R* = (A~ . B~) / sqrt((A~ . A~)(B~ . B~)) with A~, B~ the U-centred distance matrices and
    (A~ . B~) = sum_{i != j} A~_ij B~_ij / (n (n - 3)), the unbiased estimator of dCov^2
    (Székely & Rizzo 2014, the estimator of ``dcor.u_distance_correlation_sqr``). It is about
    0 for independent batches whatever their dimensions (it may be slightly negative) and 1 for
    y = a*x + b. Pass ``eps=0, dcor_eps=0`` for the textbook value.
    """
    if x.shape[:-1] != y.shape[:-1]:
        raise EastkdError(
            f"distance_correlation: sample dimensions differ: {tuple(x.shape)} vs {tuple(y.shape)}"
        )
    n = x.shape[-2]
    if n < 4:
        raise EastkdError(f"unbiased distance correlation needs at least 4 items per batch, got "
                          f"{n}; use a larger --batch-size")
    a = _u_centred_distances(x, eps)
    b = _u_centred_distances(y, eps)
    scale = 1.0 / (n * (n - 3))
    dcov_xy = (a * b).sum(dim=(-1, -2)) * scale
    dvar = ((a * a).sum(dim=(-1, -2)) * scale).clamp(min=0.0) * (
        (b * b).sum(dim=(-1, -2)) * scale).clamp(min=0.0)
    return dcov_xy / torch.sqrt(dvar + dcor_eps)


class _TimedLoss(nn.Module):
    """A distance loss with an optional :class:`TimeAlignment` for frame-level pairs."""

    #: Set by distill for frame-level targets; None: both sequences span the clip evenly.
    timing: TimeAlignment | None = None


class DistanceCorrelationLoss(_TimedLoss):
    """L_DC = mean over time frames of (1 - R_t), R_t the squared distance correlation of the
    batch's student features and targets at frame t (a single "frame" for clip-level inputs).

    Has no parameters; ``student_dim`` and ``target_dim`` are accepted for a uniform interface.
    """

    def __init__(self, student_dim: int | None = None, target_dim: int | None = None) -> None:
        super().__init__()
        self.student_dim = student_dim
        self.target_dim = target_dim

    def forward(self, student: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        s, t = match_shapes(student, target, self.timing)
        t = t.to(s.dtype)
        if s.dim() == 3:  # (B, T, C) -> one batch of B points per frame: (T, B, C)
            s, t = s.transpose(0, 1), t.transpose(0, 1)
        return (1.0 - self.correlation(s, t)).mean()

    @staticmethod
    def correlation(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """The estimator: EAsT's squared V-statistic distance correlation."""
        return distance_correlation(x, y)


class UnbiasedDistanceCorrelationLoss(DistanceCorrelationLoss):
    """L = mean over time frames of (1 - R*_t), R*_t the bias-corrected distance correlation
    (:func:`unbiased_distance_correlation`); batches of fewer than 4 items contribute 0."""

    def forward(self, student: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if student.shape[0] < 4:  # the estimator is undefined: no signal from this batch
            return student.sum() * 0.0
        return super().forward(student, target)

    @staticmethod
    def correlation(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """The estimator: bias-corrected (U-centred) distance correlation."""
        return unbiased_distance_correlation(x, y)


class FitNetLoss(_TimedLoss):
    """FitNet hint loss: MSE(regressor(student), target), the regressor a learned linear map
    student_dim -> target_dim applied per clip or per frame (its parameters train with the
    student and must be given to the optimiser)."""

    def __init__(self, student_dim: int, target_dim: int) -> None:
        super().__init__()
        self.student_dim = student_dim
        self.target_dim = target_dim
        self.regressor = nn.Linear(student_dim, target_dim)

    def forward(self, student: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if student.shape[-1] != self.student_dim or target.shape[-1] != self.target_dim:
            raise EastkdError(
                f"FitNetLoss built for student_dim={self.student_dim}, "
                f"target_dim={self.target_dim} got features of size {student.shape[-1]} and "
                f"targets of size {target.shape[-1]}; rebuild the loss with the right sizes"
            )
        s, t = match_shapes(student, target, self.timing)
        return F.mse_loss(self.regressor(s), t.to(s.dtype))


#: What stored class targets hold (the targets' ``kind`` attribute): ``compress --method probe``
#: writes probabilities; a teacher with its own head for the store's classes may store logits.
TARGET_KINDS = ("probabilities", "logits")
_PROB_EPS = 1e-8


class SoftLabelKDLoss(nn.Module):
    """Response-based KD (Hinton et al. 2015): the student's logits follow stored class targets.

    Single-label: ``T² · KL(q ‖ softmax(s / T))`` averaged over the batch, with ``s`` the
    student's logits and ``q`` the target distribution softened by the temperature ``T``:
    ``softmax(t / T)`` for stored logits ``t``; for stored probabilities ``p``,
    ``softmax(log p / T)`` (``p^(1/T)`` renormalised: exactly ``softmax(z / T)`` for the logits
    ``z`` the probabilities came from, so both kinds temper alike; ``T = 1`` uses ``p`` as
    stored). The ``T²`` factor keeps the gradients' size independent of ``T``.

    Multi-label: ``T² · BCE(sigmoid(s / T), q)`` averaged over items and tags, with
    ``q = sigmoid(t / T)`` for logits and ``sigmoid(logit(p) / T)`` for probabilities.

    The loss reads the student's logits (``uses_logits``) and the targets as stored (not
    centred or scaled: ``normalise_targets`` is False).
    """

    uses_logits = True
    normalise_targets = False

    def __init__(self, student_dim: int, target_dim: int, temperature: float = 1.0,
                 target_kind: str = "probabilities", multi_label: bool = False) -> None:
        super().__init__()
        if student_dim != target_dim:
            raise EastkdError(f"kl: the student has {student_dim} classes but the targets "
                              f"{target_dim} columns; use targets with one column per class")
        if not temperature > 0:
            raise EastkdError(f"--temperature {temperature}: must be positive")
        if target_kind not in TARGET_KINDS:
            raise EastkdError(f"kl: targets of kind {target_kind!r}; expected one of "
                              f"{', '.join(TARGET_KINDS)}")
        self.temperature = float(temperature)
        self.target_kind = target_kind
        self.multi_label = bool(multi_label)

    def soft_targets(self, target: torch.Tensor) -> torch.Tensor:
        """The target distribution (or per-tag probabilities) at temperature ``T``."""
        t = target if target.is_floating_point() else target.float()
        temp = self.temperature
        if self.target_kind == "logits":
            return torch.sigmoid(t / temp) if self.multi_label else F.softmax(t / temp, dim=1)
        p = t.clamp(0.0, 1.0)  # float rounding; a 0 (or 1) stays exactly that when tempered
        if temp == 1.0:
            return p if self.multi_label else p / p.sum(dim=1, keepdim=True).clamp(min=_PROB_EPS)
        if self.multi_label:
            return torch.sigmoid(torch.logit(p) / temp)
        return F.softmax(torch.log(p) / temp, dim=1)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if logits.dim() != 2 or logits.shape != target.shape:
            raise EastkdError(f"kl: expected (batch, classes) logits and targets of one shape, "
                              f"got {tuple(logits.shape)} and {tuple(target.shape)}")
        temp = self.temperature
        q = self.soft_targets(target).to(logits.dtype)
        s = logits / temp
        if self.multi_label:
            return F.binary_cross_entropy_with_logits(s, q) * temp * temp
        kl = torch.xlogy(q, q) - q * F.log_softmax(s, dim=1)
        return kl.sum(dim=1).mean() * temp * temp
