"""Distance losses between student features and stored teacher targets (EAsT's L_reg).

Two losses, both called ``loss(student_features, targets) -> scalar``:

* :class:`FitNetLoss` — MSE between a learned linear regressor of the student feature
  (student_dim -> target_dim) and the target;
* :class:`DistanceCorrelationLoss` — 1 - squared distance correlation between the batch's
  student features and targets, averaged over time frames; no regressor, any sizes.

Inputs are clip-level (B, C) / (B, d) or frame-level (B, T, C) / (B, T2, d). Frame-level pairs
are aligned with :func:`align_time`; a clip-level target against a frame-level student uses the
student's time average (and a frame-level target against a clip-level student the target's).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from eastkd.store.errors import EastkdError

#: Inside the square root of every pairwise distance, as in the EAsT reference implementation.
DIST_EPS = 1e-12
#: Added to the product of the distance variances before its square root (reference value).
DCOR_EPS = 1e-9


def align_time(student: torch.Tensor, teacher: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Align (B, T, C) and (B, T2, d) sequences on time, as the EAsT reference does.

    The shorter sequence has each frame repeated ``ceil(longer / shorter)`` times (the longer
    one once); both are then cut to the shorter of the two new lengths.
    """
    if student.dim() != 3 or teacher.dim() != 3:
        raise EastkdError(
            f"align_time: expected (batch, frames, dim) tensors, got {tuple(student.shape)} "
            f"and {tuple(teacher.shape)}"
        )
    t_s, t_t = student.shape[1], teacher.shape[1]
    if t_s == 0 or t_t == 0:
        raise EastkdError("align_time: a sequence has no frames; check the stored targets")
    if t_s < t_t:
        student = student.repeat_interleave(-(-t_t // t_s), dim=1)
    elif t_t < t_s:
        teacher = teacher.repeat_interleave(-(-t_s // t_t), dim=1)
    n = min(student.shape[1], teacher.shape[1])
    return student[:, :n], teacher[:, :n]


def match_shapes(
    student: torch.Tensor, target: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Bring student features and targets to the same level: both (B, C)/(B, d) or both
    (B, T, C)/(B, T, d) (frame-level pairs through :func:`align_time`)."""
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
        return align_time(student, target)
    return student, target


def _double_centred_distances(x: torch.Tensor, eps: float) -> torch.Tensor:
    """Double-centred pairwise Euclidean distances of (..., n, p) -> (..., n, n).

    Squared distances come from Gram matrices of the batch-centred points (memory O(n^2), not
    O(n^2 p)); the diagonal is set to exactly 0 before ``sqrt(. + eps)``.
    """
    x = x - x.mean(dim=-2, keepdim=True)
    sq = (x * x).sum(dim=-1)
    d2 = sq.unsqueeze(-1) + sq.unsqueeze(-2) - 2.0 * (x @ x.transpose(-1, -2))
    n = x.shape[-2]
    off_diag = ~torch.eye(n, dtype=torch.bool, device=x.device)
    d = torch.sqrt(d2.clamp(min=0.0) * off_diag + eps)
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


class DistanceCorrelationLoss(nn.Module):
    """L_DC = mean over time frames of (1 - R_t), R_t the squared distance correlation of the
    batch's student features and targets at frame t (a single "frame" for clip-level inputs).

    Has no parameters; ``student_dim`` and ``target_dim`` are accepted for a uniform interface.
    """

    def __init__(self, student_dim: int | None = None, target_dim: int | None = None) -> None:
        super().__init__()
        self.student_dim = student_dim
        self.target_dim = target_dim

    def forward(self, student: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        s, t = match_shapes(student, target)
        t = t.to(s.dtype)
        if s.dim() == 3:  # (B, T, C) -> one batch of B points per frame: (T, B, C)
            s, t = s.transpose(0, 1), t.transpose(0, 1)
        return (1.0 - distance_correlation(s, t)).mean()


class FitNetLoss(nn.Module):
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
        s, t = match_shapes(student, target)
        return F.mse_loss(self.regressor(s), t.to(s.dtype))
