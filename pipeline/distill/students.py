"""Small CNN students that learn from log-mel input and stored teacher targets.

``vgg`` and ``mobilenet`` are eastkd's small defaults; ``mobilefcn`` and ``cpresnet`` are the
EAsT paper's students (MagnaTagATune and OpenMIC). All students map a log-mel batch
(B, n_mels, T) to a :class:`StudentOutput`: the task logits, the clip-level feature vector of
the last convolutional stage (the vector the distance loss regularises, as in EAsT) and that
stage's frame-level map, so that frame-level teacher targets can be aligned in time. Inputs
are normalised inside the model (a frozen per-mel-bin mean/std set from the training data,
then a BatchNorm over mel bins), so a trained student is self-contained at inference.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from eastkd.errors import EastkdError


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


def _dw_separable(c_in: int, c_out: int, pool: tuple[int, int] | int) -> nn.Sequential:
    """Depthwise 3x3 conv-BN-ReLU, pointwise 1x1 conv-BN-ReLU, max-pool (freq, time)."""
    return nn.Sequential(
        _conv_bn_act(c_in, c_in, 3, groups=c_in),
        _conv_bn_act(c_in, c_out, 1),
        nn.MaxPool2d(pool, ceil_mode=True),
    )


class MobileFCNStudent(_Student):
    """EAsT's MagnaTagATune student (Ding & Lerch 2023, after Won et al.'s FCN): two conv
    blocks, then six depthwise-separable blocks up to 256 channels, each block followed by a
    max-pool over (frequency, time); dropout 0.5 before blocks 5 and 7 and the head.

    Pools (freq x time): 2x4, 2x3, 2x2, 3x2 (4x2 for 128 mels), 4x2, then none: 96 (or 128)
    mel bins pool to 1 and the time axis by 96 (~1.9 s per frame at 50 frames/s). Width 16 is
    the paper's size (channels 64, 128, ..., 256; ~0.31 M parameters for 50 tags); channels
    scale with ``width / 16``. Pools use ceil mode, so short or narrow inputs still fit.
    """

    time_stride = 96

    def __init__(self, n_mels: int, n_classes: int, width: int = 16, dropout: float = 0.5) -> None:
        c64, c128, c256 = (max(1, round(c * width / 16)) for c in (64, 128, 256))
        super().__init__(n_mels, n_classes, c256, dropout)
        fourth = (4, 2) if n_mels == 128 else (3, 2)
        self.body = nn.Sequential(
            _conv_bn_act(1, c64, 3), nn.MaxPool2d((2, 4), ceil_mode=True),
            _conv_bn_act(c64, c128, 3), nn.MaxPool2d((2, 3), ceil_mode=True),
            _dw_separable(c128, c128, (2, 2)),
            _dw_separable(c128, c128, fourth),
            nn.Dropout(dropout),
            _dw_separable(c128, c128, (4, 2)),
            _dw_separable(c128, c256, 1),
            nn.Dropout(dropout),
            _dw_separable(c256, c256, 1),
            _dw_separable(c256, c256, 1),
        )


class _BasicBlock(nn.Module):
    """CP-ResNet's residual block: conv(k1)-BN-ReLU, conv(k2)-BN, + shortcut, ReLU; a kernel
    of 3 is padded by 1, a kernel of 1 by 0."""

    def __init__(self, c_in: int, c_out: int, k1: int, k2: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, k1, padding=k1 // 3, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, k2, padding=k2 // 3, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.shortcut: nn.Module = nn.Identity()
        if c_in != c_out:
            self.shortcut = nn.Sequential(nn.Conv2d(c_in, c_out, 1, bias=False),
                                          nn.BatchNorm2d(c_out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.relu(self.bn1(self.conv1(x)))
        y = self.bn2(self.conv2(y))
        return torch.relu(y + self.shortcut(x))


class CPResNetStudent(_Student):
    """Receptive-field-regularised CP-ResNet (Koutini et al. 2019), EAsT's OpenMIC student.

    A 5x5 stride-2 stem, then three stages of four residual blocks (``base``, ``2 base``,
    ``4 base`` channels; 2x2 max-pools after blocks 1, 2 and 4 of the first stage). ``rho``
    bounds the receptive field: each kernel is 3x3 only where ``rho`` reaches its threshold in
    :attr:`KERNEL_RHO` (else 1x1), as in the reference implementation. Width 16 is the paper's
    size (base 128 channels, rho 7: ~5.5 M parameters for 20 classes); ``base`` scales with
    ``width / 16``. Time stride 16; the last stage (``4 base`` channels) is distilled.
    """

    time_stride = 16
    #: Smallest rho at which each block's (conv1, conv2) kernel is 3x3, per stage.
    KERNEL_RHO: tuple[tuple[tuple[float, float], ...], ...] = (
        ((-math.inf, math.inf), (1, 2), (3, 4), (5, 6)),
        ((7, math.inf), (9, 2), (11, 4), (13, 6)),
        ((15, 16), (17, 18), (19, 20), (21, 22)),
    )
    POOL_AFTER = (0, 1, 3)  # blocks of the first stage followed by a 2x2 max-pool

    def __init__(self, n_mels: int, n_classes: int, width: int = 16, rho: int = 7,
                 dropout: float = 0.0) -> None:
        base = max(1, round(128 * width / 16))
        super().__init__(n_mels, n_classes, 4 * base, dropout)
        layers: list[nn.Module] = [_conv_bn_act(1, base, 5, stride=2)]
        c_in = base
        for stage, (c_out, thresholds) in enumerate(zip((base, 2 * base, 4 * base),
                                                        self.KERNEL_RHO)):
            for b, (t1, t2) in enumerate(thresholds):
                layers.append(_BasicBlock(c_in, c_out, 3 if rho >= t1 else 1,
                                          3 if rho >= t2 else 1))
                c_in = c_out
                if stage == 0 and b in self.POOL_AFTER:
                    layers.append(nn.MaxPool2d(2, ceil_mode=True))
        self.body = nn.Sequential(*layers)
        self._init_weights()

    def _init_weights(self) -> None:
        """He init, with each residual branch's last conv zeroed (Fixup, as the reference)."""
        blocks = [m for m in self.body.modules() if isinstance(m, _BasicBlock)]
        for m in self.body.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_in", nonlinearity="relu")
        for b in blocks:
            b.conv1.weight.data.mul_(len(blocks) ** -0.5)
            nn.init.zeros_(b.conv2.weight)
