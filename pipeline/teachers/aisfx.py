"""aiSFX (Ma & Lerch, ISMIR 2022; sound effects, 512-d) as a teacher, rebuilt in torch.

The ``aisfx`` package (MIT) computes its spectrograms with essentia and pins old numpy and
librosa, so eastkd does not import it: it re-implements the package's inference in torch and
only reads the checkpoint that ships inside the wheel (``aisfx/models/checkpoint.pth``; install
it with ``pip install --no-deps aisfx==0.1.2``, or pass ``weights=PATH``).

Front end (``aisfx.inference`` with its defaults: essentia spectrograms, the ISMIR paper's
"original" normalisation, blocks hopping by half a block, partial blocks dropped):
44.1 kHz mono -> essentia ``FrameCutter`` frames of 2048 samples every 1024 with
``startFromZero=False``: frame ``i`` covers samples ``[(i - 1) * 1024, (i + 1) * 1024)``,
zero-padded outside the clip, ``T = (S - 1) // 1024 + 2`` frames -> symmetric Hann window
(essentia ``Windowing(normalized=False)``: no rescaling; its zero-phase rotation does not change
the magnitude) -> magnitude spectrum, squared -> 96 essentia ``MelBands`` (HTK mel, 0-22050 Hz,
triangles in the mel domain ("warping"), each filter summing to 1 ("unit_sum")) ->
``log10(10000 x + 1) / 9.457798957824707`` -> blocks of 100 frames (~2.3 s) every
``block_hop`` (default 50) frames, a last partial block dropped -> the ``EmbeddingNet`` trunk of
the package's ``CrossNet`` (four double-conv blocks, 64-512 channels, mean over frequency, max
over time) -> one 512-d embedding per block. The classifier heads are not used.

Frames are the block embeddings: block ``j`` spans samples ``[(j * hop - 1) * 1024,
(j * hop + 100) * 1024)``, so ``frame_rate`` = 44100 / (1024 * hop) (0.86 Hz by default) and
``frame_offset`` = 49.5 * 1024 / 44100 s (1.149 s). The clip embedding is their mean.

Short clips: a clip under one block (``MIN_SAMPLES`` = 98 * 1024 + 1 samples, 2.276 s, gives 100
frames) is zero-padded at the end to one block (``min_seconds``). That is exactly what the
package does for clips of 51-99 frames (it zero-pads the spectrogram to one block, and zero
frames are what silence gives); it fails on clips of 50 frames or fewer (~1.14 s).

The front end runs in float32; the convolutional trunk (batch norm, ReLU, max pooling, inputs in
[0, ~1]) is float16-safe (``autocast_safe``).

The checkpoint is a pickled ``(state_dict, dataset_dict)`` whose dataset dict holds numpy
integers. It is read with ``torch.load(weights_only=True)``, allowing only numpy's scalar
reconstruction and its dtype classes: no pickled code runs.
"""

from __future__ import annotations

import importlib.util
import math
import os

import numpy as np
import torch
import torch.nn.functional as F

from eastkd.errors import EastkdError
from eastkd.pipeline.teachers.base import Teacher, TeacherOutput, file_sha256, float32_front_end

SAMPLE_RATE = 44100
EMBEDDING_DIM = 512
FRAME, HOP = 2048, 1024
N_MELS, F_MIN, F_MAX = 96, 0.0, 22050.0
LOG_MAX = 9.457798957824707  # the package's "original" min-max normalisation (min 0)
BLOCK, BLOCK_HOP = 100, 50  # spectrogram frames: ~2.3 s blocks every ~1.16 s
MIN_SAMPLES = (BLOCK - 2) * HOP + 1  # the shortest clip with BLOCK frames
MAX_BLOCKS = 64  # blocks per forward pass of the trunk (bounds memory on long clips)
CHECKPOINT = os.path.join("models", "checkpoint.pth")
INSTALL = "pip install --no-deps aisfx==0.1.2"


def _htk_mel(f: np.ndarray) -> np.ndarray:
    return 2595.0 * np.log10(1.0 + f / 700.0)


def _htk_hz(m: np.ndarray) -> np.ndarray:
    return 700.0 * (10.0 ** (m / 2595.0) - 1.0)


def essentia_mel_filters(n_freqs: int = FRAME // 2 + 1, n_mels: int = N_MELS,
                         sample_rate: float = SAMPLE_RATE, f_min: float = F_MIN,
                         f_max: float = F_MAX) -> torch.Tensor:
    """essentia ``MelBands(warpingFormula="htkMel", weighting="warping", normalize="unit_sum")``
    as an (n_freqs, n_mels) matrix: band edges equally spaced in HTK mel, each triangle linear
    in mel between its edges (bins at ``f_lo <= f < f_hi``), each band's weights summing to 1."""
    lo, hi = _htk_mel(np.float64(f_min)), _htk_mel(np.float64(f_max))
    edges = _htk_hz(lo + (hi - lo) / (n_mels + 1) * np.arange(n_mels + 2))
    freqs = np.arange(n_freqs) * (sample_rate / 2.0) / (n_freqs - 1)
    m, me = _htk_mel(freqs)[:, None], _htk_mel(edges)
    f0, f1, f2 = edges[None, :-2], edges[None, 1:-1], edges[None, 2:]
    up = (m - me[None, :-2]) / (me[None, 1:-1] - me[None, :-2])
    down = (me[None, 2:] - m) / (me[None, 2:] - me[None, 1:-1])
    fb = np.where((freqs[:, None] >= f0) & (freqs[:, None] < f1), up,
                  np.where((freqs[:, None] >= f1) & (freqs[:, None] < f2), down, 0.0))
    sums = fb.sum(axis=0, keepdims=True)
    fb = fb / np.where(sums == 0, 1.0, sums)
    return torch.from_numpy(fb.astype(np.float32))


class AisfxFrontEnd(torch.nn.Module):
    """Waveform (B, S) at 44.1 kHz -> aiSFX's normalised log mel frames (B, T, 96),
    ``T = (S - 1) // 1024 + 2`` (essentia's framing from sample -1024)."""

    def __init__(self) -> None:
        super().__init__()
        n = torch.arange(FRAME, dtype=torch.float64)
        window = 0.5 - 0.5 * torch.cos(2 * math.pi * n / (FRAME - 1))  # symmetric, unscaled
        self.register_buffer("window", window.float(), persistent=False)
        self.register_buffer("fb", essentia_mel_filters(), persistent=False)

    def forward(self, wave: torch.Tensor) -> torch.Tensor:
        with float32_front_end(wave.device):  # 10000 x mel passes float16's range
            s = wave.shape[-1]
            t = (s - 1) // HOP + 2
            x = F.pad(wave.float(), (HOP, t * HOP - s))  # length (t + 1) * HOP
            frames = x.unfold(-1, FRAME, HOP)  # (B, T, 2048)
            power = torch.fft.rfft(frames * self.window).abs().pow(2)
            mel = power @ self.fb
            return torch.log10(10000.0 * mel + 1.0) / LOG_MAX


class ConvBlock(torch.nn.Module):
    """Two 3x3 convolutions with batch norm and ReLU, then max pooling (aisfx ``ConvBlock``)."""

    def __init__(self, cin: int, cout: int, pool: int) -> None:
        super().__init__()
        self.conv1 = torch.nn.Conv2d(cin, cout, 3, padding=1, bias=False)
        self.conv2 = torch.nn.Conv2d(cout, cout, 3, padding=1, bias=False)
        self.bn1 = torch.nn.BatchNorm2d(cout)
        self.bn2 = torch.nn.BatchNorm2d(cout)
        self.pool = pool

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.bn1(self.conv1(x)))
        x = F.relu(self.bn2(self.conv2(x)))
        return F.max_pool2d(x, self.pool) if self.pool > 1 else x


class EmbeddingNet(torch.nn.Module):
    """aisfx's ``EmbeddingNet('max', 3, 1, 64)``: blocks (N, 100, 96) -> (N, 512)."""

    def __init__(self, width: int = 64) -> None:
        super().__init__()
        self.conv_block1 = ConvBlock(1, width, 2)
        self.conv_block2 = ConvBlock(width, width * 2, 2)
        self.conv_block3 = ConvBlock(width * 2, width * 4, 2)
        self.conv_block4 = ConvBlock(width * 4, width * 8, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.unsqueeze(1)  # (N, 1, time, freq)
        for block in (self.conv_block1, self.conv_block2, self.conv_block3, self.conv_block4):
            x = block(x)
        return x.mean(dim=3).amax(dim=2)


def aisfx_blocks(spec: torch.Tensor, hop: int = BLOCK_HOP) -> torch.Tensor:
    """(B, T, 96) -> (B, n, 100, 96) blocks as ``aisfx.preprocessing.blocking`` cuts them with
    ``drop_partial_block=True``: ``n = (T - 100) // hop + 1``; shorter inputs are zero-padded to
    one block first (the package pads with zeros too)."""
    if spec.shape[1] < BLOCK:
        spec = F.pad(spec, (0, 0, 0, BLOCK - spec.shape[1]))
    return spec.unfold(1, BLOCK, hop).transpose(2, 3)


def _allowed_globals() -> list:
    """What the checkpoint's pickle may build besides tensors and dicts: the numpy integers of
    its dataset dict (numpy's scalar reconstruction and its dtype classes). Nothing callable
    beyond numpy's own constructors."""
    try:
        from numpy._core.multiarray import scalar  # numpy >= 2
    except ImportError:  # pragma: no cover - numpy 1.x
        from numpy.core.multiarray import scalar
    dtypes = {type(np.dtype(c)) for c in "?bhilqBHILQefd"}
    return [(scalar, "numpy.core.multiarray.scalar"), np.dtype, *sorted(dtypes, key=str)]


def load_checkpoint(path: str) -> dict[str, torch.Tensor]:
    """The ``EmbeddingNet`` weights of an aisfx checkpoint, loaded with ``weights_only=True``."""
    try:
        with torch.serialization.safe_globals(_allowed_globals()):
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - any unreadable file gets one line
        raise EastkdError(f"aisfx checkpoint {path} could not be read with weights_only=True "
                          f"({type(err).__name__}: {str(err).splitlines()[0]})") from err
    state = obj[0] if isinstance(obj, (tuple, list)) else obj
    prefix = "embedding_net."
    trunk = {k[len(prefix):]: v for k, v in getattr(state, "items", lambda: [])()
             if k.startswith(prefix)}
    if not trunk:
        raise EastkdError(f"aisfx checkpoint {path} holds no embedding_net.* weights")
    return trunk


def default_checkpoint() -> str:
    """The checkpoint inside the installed ``aisfx`` package, found without importing it (its
    ``__init__`` imports librosa and tqdm)."""
    spec = importlib.util.find_spec("aisfx")
    if spec is None or not spec.submodule_search_locations:
        raise EastkdError(f"aisfx teacher: the aisfx package is not installed ({INSTALL})")
    path = os.path.join(list(spec.submodule_search_locations)[0], CHECKPOINT)
    if not os.path.isfile(path):
        raise EastkdError(f"aisfx teacher: {path} not found; reinstall aisfx ({INSTALL})")
    return path


class AisfxEmbedder(torch.nn.Module):
    """Waveform (B, S) at 44.1 kHz -> aiSFX block embeddings (B, n, 512) and their mean."""

    def __init__(self, state: dict[str, torch.Tensor], hop: int = BLOCK_HOP) -> None:
        super().__init__()
        self.frontend = AisfxFrontEnd()
        self.net = EmbeddingNet()
        self.net.load_state_dict(state)
        self.hop = hop
        self.requires_grad_(False)
        self.eval()

    def train(self, mode: bool = True) -> "AisfxEmbedder":
        """A teacher stays in eval mode (batch norm uses its running statistics)."""
        return super().train(False)

    def forward(self, wave: torch.Tensor) -> TeacherOutput:
        if wave.shape[-1] < MIN_SAMPLES:
            wave = F.pad(wave, (0, MIN_SAMPLES - wave.shape[-1]))
        blocks = aisfx_blocks(self.frontend(wave), self.hop)  # (B, n, 100, 96)
        b, n = blocks.shape[:2]
        flat = blocks.reshape(b * n, BLOCK, N_MELS)
        emb = torch.cat([self.net(c) for c in flat.split(MAX_BLOCKS)]).float()
        frames = emb.reshape(b, n, EMBEDDING_DIM)
        return TeacherOutput(clip=frames.mean(dim=1), frames=frames)


def aisfx(weights: str | None = None, block_hop: int = BLOCK_HOP) -> Teacher:
    """aiSFX (Ma & Lerch 2022; 4.7 M parameters, 512-d, 44.1 kHz), weights from the installed
    ``aisfx`` wheel (or ``weights``). ``block_hop``: spectrogram frames between 100-frame
    blocks (the package's ``emb_hop_size`` 0.5 is 50)."""
    try:
        hop = int(block_hop)
        ok = 1 <= hop <= BLOCK and hop == float(block_hop)
    except (TypeError, ValueError):
        ok = False
    if not ok:
        raise EastkdError(f"aisfx option block_hop must be an integer 1-{BLOCK}, got {block_hop!r}")
    path = os.fspath(weights) if weights is not None else default_checkpoint()
    if not os.path.isfile(path):
        raise EastkdError(f"aisfx checkpoint {path} not found")
    model = AisfxEmbedder(load_checkpoint(path), hop)
    return Teacher(
        name="aisfx",
        model=model,
        sample_rate=SAMPLE_RATE,
        embedding_dim=EMBEDDING_DIM,
        weights_sha256=file_sha256(path),
        weights_files=(path,),
        frame_rate=SAMPLE_RATE / (HOP * hop),
        frame_offset=(BLOCK - 1) / 2 * HOP / SAMPLE_RATE,
        autocast_safe=True,
        pooling="mean over blocks",
        options={"block_hop": hop, "block": BLOCK},
        min_seconds=MIN_SAMPLES / SAMPLE_RATE,
    )
