"""A complete own teacher for `eastkd extract --teacher python:my_teacher:make`.

Any torch.nn.Module works: eastkd needs a `sample_rate` attribute and a forward that maps a
(B, S) float32 waveform at that rate to (B, D) clip embeddings or (B, T, D) frame embeddings.
"""
import torch
import torchaudio


class MyTeacher(torch.nn.Module):
    sample_rate = 22050  # eastkd resamples every clip to this rate
    frame_rate = 22050 / 512  # frames per second of the (B, T, D) output
    min_seconds = 1.0  # shorter inputs are zero-padded at the end to this length

    def __init__(self, dim: int = 64) -> None:
        super().__init__()
        self.mel = torchaudio.transforms.MelSpectrogram(
            self.sample_rate, n_fft=1024, hop_length=512, n_mels=64)
        self.net = torch.nn.Sequential(
            torch.nn.Conv1d(64, 128, 3, padding=1), torch.nn.BatchNorm1d(128), torch.nn.ReLU(),
            torch.nn.Conv1d(128, dim, 3, padding=1))

    def forward(self, wave: torch.Tensor) -> torch.Tensor:
        x = torch.log(self.mel(wave) + 1e-6)  # (B, 64, T)
        return self.net(x).transpose(1, 2)  # (B, T, dim): eastkd stores frames and their mean


def make(dim: int = 64, weights: str | None = None) -> MyTeacher:
    """Called with the --teacher-opt options (e.g. --teacher-opt dim=32)."""
    torch.manual_seed(0)  # without a checkpoint: the same random weights on every run
    model = MyTeacher(dim)
    if weights:  # your trained checkpoint; eastkd fingerprints the loaded weights
        model.load_state_dict(torch.load(weights, map_location="cpu", weights_only=True))
    return model.eval()
