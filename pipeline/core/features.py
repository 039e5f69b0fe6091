"""The student's input features: log-mel spectrograms with recorded parameters.

Stored once by ``extract`` so that compress and distill need neither the raw audio nor the
teacher. Defaults follow the EAsT reference setup for 16 kHz audio (50 frames/s, 96 bands).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
import torchaudio


@dataclass(frozen=True)
class LogMelParams:
    sample_rate: int = 16000
    n_fft: int = 1024
    win_length: int = 800
    hop_length: int = 320
    n_mels: int = 96
    f_min: float = 0.0
    f_max: float = 8000.0
    pre_emphasis: float = 0.97
    log_offset: float = 1e-5

    def as_dict(self) -> dict[str, float | int]:
        return asdict(self)

    def n_frames(self, n_samples: int) -> int:
        return 1 + n_samples // self.hop_length


class LogMel(torch.nn.Module):
    """(B, S) waveform -> (B, n_mels, T) natural-log mel power spectrogram."""

    def __init__(self, params: LogMelParams = LogMelParams()) -> None:
        super().__init__()
        self.params = params
        self.mel = torchaudio.transforms.MelSpectrogram(
            sample_rate=params.sample_rate, n_fft=params.n_fft, win_length=params.win_length,
            hop_length=params.hop_length, f_min=params.f_min, f_max=params.f_max,
            n_mels=params.n_mels, power=2.0, center=True,
        )

    def forward(self, wave: torch.Tensor) -> torch.Tensor:
        if self.params.pre_emphasis:
            a = self.params.pre_emphasis
            wave = torch.cat([wave[..., :1], wave[..., 1:] - a * wave[..., :-1]], dim=-1)
        return torch.log(self.mel(wave) + self.params.log_offset)
