"""Small CNN students that learn from log-mel input and stored teacher targets.

Both students map a log-mel batch (B, n_mels, T) to a :class:`StudentOutput`: the task logits,
the clip-level feature vector of the last convolutional stage (the vector the distance loss
regularises, as in EAsT) and that stage's frame-level map, so that frame-level teacher targets
can be aligned in time. Inputs are normalised inside the model (a frozen per-mel-bin mean/std
set from the training data, then a BatchNorm over mel bins), so a trained student is
self-contained at inference.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from eastkd.store.errors import EastkdError


@dataclass
class StudentOutput:
    """What a student returns.

    ``logits`` (B, n_classes); ``features`` (B, C): the last conv stage averaged over time and
    frequency; ``feature_map`` (B, T', C): the same stage averaged over frequency only.
    """

    logits: torch.Tensor
    features: torch.Tensor
    feature_map: torch.Tensor


class _Student(nn.Module):
    """Shared input normalisation, pooling and head; subclasses build ``self.body``."""

    #: Total downsampling of the time axis by ``body`` (frames of input per frame of feature_map).
    time_stride: int = 1

    def __init__(self, n_mels: int, n_classes: int, feature_dim: int, dropout: float) -> None:
        super().__init__()
        if n_mels < 1 or n_classes < 1:
            raise EastkdError(
                f"{type(self).__name__}: n_mels and n_classes must be positive "
                f"(got n_mels={n_mels}, n_classes={n_classes})"
            )
        self.n_mels = n_mels
        self.n_classes = n_classes
        self.feature_dim = feature_dim
        # Frozen dataset statistics (identity until set_input_stats is called); saved in state_dict.
        self.register_buffer("input_mean", torch.zeros(n_mels))
        self.register_buffer("input_std", torch.ones(n_mels))
        self.input_norm = nn.BatchNorm1d(n_mels)
        self.body: nn.Module = nn.Identity()
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(feature_dim, n_classes)

    def set_input_stats(self, mean: torch.Tensor | float, std: torch.Tensor | float) -> None:
        """Freeze per-mel-bin input statistics (scalars or (n_mels,) tensors) into the model."""
        mean_t = torch.as_tensor(mean, dtype=torch.float32).expand(self.n_mels).clone()
        std_t = torch.as_tensor(std, dtype=torch.float32).expand(self.n_mels).clone()
        if not torch.isfinite(mean_t).all() or not (std_t > 0).all():
            raise EastkdError(
                f"{type(self).__name__}.set_input_stats: mean must be finite and std positive; "
                "recompute the statistics from the training features"
            )
        self.input_mean.copy_(mean_t.to(self.input_mean.device))
        self.input_std.copy_(std_t.to(self.input_std.device))

    def forward(self, x: torch.Tensor) -> StudentOutput:
        if x.dim() != 3 or x.shape[1] != self.n_mels:
            raise EastkdError(
                f"{type(self).__name__}: expected log-mel input (batch, {self.n_mels}, frames), "
                f"got shape {tuple(x.shape)}; check the store's feature settings (n_mels)"
            )
        x = (x - self.input_mean[:, None]) / self.input_std[:, None]
        x = self.input_norm(x).unsqueeze(1)  # (B, 1, F, T)
        h = self.body(x)  # (B, C, F', T')
        feature_map = h.mean(dim=2).transpose(1, 2)  # (B, T', C)
        features = feature_map.mean(dim=1)  # (B, C)
        logits = self.head(self.dropout(features))
        return StudentOutput(logits=logits, features=features, feature_map=feature_map)


def _conv_bn_act(
    c_in: int,
    c_out: int,
    kernel: int = 3,
    stride: int = 1,
    groups: int = 1,
    act: type[nn.Module] | None = nn.ReLU,
) -> nn.Sequential:
    layers: list[nn.Module] = [
        nn.Conv2d(c_in, c_out, kernel, stride, kernel // 2, groups=groups, bias=False),
        nn.BatchNorm2d(c_out),
    ]
    if act is not None:
        layers.append(act(inplace=True))
    return nn.Sequential(*layers)


class VGGStudent(_Student):
    """VGG-style CNN: 4 blocks of (conv3x3-BN-ReLU) x 2, 2x2 max-pool after the first three.

    Channels are ``width * (1, 2, 4, 8)``; the last block's output (``8 * width`` channels) is
    the distilled feature. With width 16: ~0.29 M parameters, time stride 8.
    """

    time_stride = 8

    def __init__(self, n_mels: int, n_classes: int, width: int = 16, dropout: float = 0.2) -> None:
        channels = [width, 2 * width, 4 * width, 8 * width]
        super().__init__(n_mels, n_classes, channels[-1], dropout)
        blocks: list[nn.Module] = []
        c_in = 1
        for i, c in enumerate(channels):
            blocks += [_conv_bn_act(c_in, c), _conv_bn_act(c, c)]
            if i < len(channels) - 1:
                blocks.append(nn.MaxPool2d(2, ceil_mode=True))
            c_in = c
        self.body = nn.Sequential(*blocks)


class InvertedResidual(nn.Module):
    """MobileNetV2 block: 1x1 expand, 3x3 depthwise (stride s), linear 1x1 project (+ skip)."""

    def __init__(self, c_in: int, c_out: int, stride: int, expand: int) -> None:
        super().__init__()
        hidden = c_in * expand
        layers: list[nn.Module] = []
        if expand != 1:
            layers.append(_conv_bn_act(c_in, hidden, 1, act=nn.ReLU6))
        layers += [
            _conv_bn_act(hidden, hidden, 3, stride, groups=hidden, act=nn.ReLU6),
            _conv_bn_act(hidden, c_out, 1, act=None),
        ]
        self.block = nn.Sequential(*layers)
        self.residual = stride == 1 and c_in == c_out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.block(x)
        return x + y if self.residual else y


class MobileNetStudent(_Student):
    """MobileNetV2-style FCN like the EAsT "mobile FCN" (two plain conv blocks, then inverted
    residual depthwise-separable blocks, a 1x1 conv to ``16 * width`` channels, global mean).

    With width 16: ~0.3 M parameters, 256-d features, time stride 16.
    """

    time_stride = 16

    #: (expansion, channels as a multiple of width, repeats, stride of the first repeat)
    STAGES: tuple[tuple[int, float, int, int], ...] = (
        (4, 2, 2, 2),
        (4, 3, 2, 2),
        (4, 4, 3, 2),
        (4, 6, 2, 1),
    )

    def __init__(self, n_mels: int, n_classes: int, width: int = 16, dropout: float = 0.2) -> None:
        super().__init__(n_mels, n_classes, 16 * width, dropout)
        layers: list[nn.Module] = [
            _conv_bn_act(1, width, 3, stride=2, act=nn.ReLU6),
            _conv_bn_act(width, width, 3, act=nn.ReLU6),
        ]
        c_in = width
        for expand, mult, repeats, stride in self.STAGES:
            c_out = int(round(mult * width))
            for r in range(repeats):
                layers.append(InvertedResidual(c_in, c_out, stride if r == 0 else 1, expand))
                c_in = c_out
        layers.append(_conv_bn_act(c_in, self.feature_dim, 1, act=nn.ReLU6))
        self.body = nn.Sequential(*layers)
