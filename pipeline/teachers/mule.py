"""MULE (McCallum et al. 2022, SF-NFNet-F0, 1728-d, music) as a teacher, from an exported file.

MULE's own package (``sxmp-mule``) runs a TensorFlow 2.13 Keras model and pins numpy < 2,
librosa 0.9.2 and click 8.1.7, so it cannot live beside eastkd's torch stack. eastkd therefore
re-implements MULE's front end in torch and runs the network from a TorchScript export.

Front end (``supporting_data/configs/mule_embedding.yml`` of MULE's repository):
16 kHz mono -> power mel spectrogram (n_fft 2048, window hann 400, hop 160 = 100 frames/s,
centre reflect padding, 96 HTK mel bands 0-8 kHz, each filter scaled to unit L2 norm) ->
``log10(10000 x + 1)`` -> 300-frame slices (3 s) centred every 200 frames (2 s) from frame 200
on, centres clamped to [150, n_frames - 150] -> each slice standardised (mean 0, population std,
std floored at 0.01) -> network -> one 1728-d embedding per slice. Frames are the slice
embeddings (``frame_rate`` 0.5 Hz, ``frame_offset`` 2 s: MULE's timeline); the clip is their
mean (MULE's ``TimelineAverage``). MULE yields nothing for clips under 3 s; here they are
zero-padded to 3 s.
The front end always runs in float32 (under float16 autocast ``10000 * mel`` overflows); the
exported network's float16 behaviour is unknown, so MULE is not ``autocast_safe``.

The export file (``weights``; default ``<torch hub dir>/checkpoints/mule.torchscript.pt``) is a
TorchScript module mapping slices shaped like the Keras input, (N, 96, 300, 1) float32, to
(N, 1728). With ``input="wave"`` it may instead hold a whole pipeline mapping a (B, S) 16 kHz
waveform to (B, 1728) or (B, T, 1728) (frames at ``frame_rate``, pooled by their mean).

Export (not runnable offline; done once where MULE and its weights can be fetched):

1. In a separate Python 3.10 environment with MULE's pins::

       pip install sxmp-mule tf2onnx
       git clone https://github.com/PandoraMedia/music-audio-representations.git
       cd music-audio-representations && git lfs pull      # supporting_data/model/
       python -c "
       import tensorflow as tf, tf2onnx
       from mule.models.layers import WeightStandardization, StochDepth, ScalarMultiply
       custom = {c.__name__: c for c in (WeightStandardization, StochDepth, ScalarMultiply)}
       m = tf.keras.models.load_model('supporting_data/model', custom_objects=custom,
                                      compile=False)
       spec = (tf.TensorSpec((None, 96, 300, 1), tf.float32, name='slices'),)
       tf2onnx.convert.from_keras(m, input_signature=spec, opset=17, output_path='mule.onnx')"

2. Beside eastkd (``pip install onnx onnx2torch``)::

       python -c "
       import torch, onnx2torch
       net = onnx2torch.convert('mule.onnx').eval()
       ts = torch.jit.trace(net, torch.randn(4, 96, 300, 1))
       assert ts(torch.randn(2, 96, 300, 1)).shape == (2, 1728)
       ts.save('mule.torchscript.pt')"

3. Check it once against MULE itself: ``mule analyze --config
   supporting_data/configs/mule_embedding.yml -i x.wav -o ref.npy`` gives (1728, T);
   ``mule(weights=...)(wave_16k).frames[0].T`` should match it closely. Trace on the device
   you will extract on if the traced graph keeps device constants.
"""

from __future__ import annotations

import os
import warnings
from typing import Any

import torch
import torchaudio

from eastkd.errors import EastkdError
from eastkd.pipeline.teachers.base import Teacher, TeacherOutput, file_sha256, float32_front_end

SAMPLE_RATE = 16000
EMBEDDING_DIM = 1728
N_FFT, WIN_LENGTH, HOP = 2048, 400, 160
N_MELS, F_MIN, F_MAX = 96, 0.0, 8000.0
SLICE, SLICE_HOP = 300, 200  # mel frames: 3 s slices every 2 s
MIN_SAMPLES = (SLICE - 1) * HOP  # -> exactly SLICE mel frames
DEFAULT_FILE = "mule.torchscript.pt"
DEFAULTS: dict[str, Any] = {"input": "slices", "max_batch": 32, "frame_rate": 0.5,
                            "frame_offset": 0.0}


class MuleFrontEnd(torch.nn.Module):
    """Waveform (B, S) at 16 kHz -> MULE's log mel spectrogram (B, 96, 1 + S // 160)."""

    def __init__(self) -> None:
        super().__init__()
        fb = torchaudio.functional.melscale_fbanks(
            N_FFT // 2 + 1, F_MIN, F_MAX, N_MELS, SAMPLE_RATE, norm=None, mel_scale="htk")
        fb = fb / fb.norm(dim=0, keepdim=True).clamp_min(1e-10)  # librosa norm=2.0
        self.register_buffer("fb", fb, persistent=False)  # (n_freqs, n_mels)
        self.register_buffer("window", torch.hann_window(WIN_LENGTH), persistent=False)

    def forward(self, wave: torch.Tensor) -> torch.Tensor:
        with float32_front_end(wave.device):  # mel values pass float16's 65504 at 10000 x
            return self._log_mel(wave.float())

    def _log_mel(self, wave: torch.Tensor) -> torch.Tensor:
        spec = torch.stft(wave, N_FFT, hop_length=HOP, win_length=WIN_LENGTH, window=self.window,
                          center=True, pad_mode="reflect", return_complex=True).abs().pow(2)
        mel = torch.einsum("bft,fm->bmt", spec, self.fb)
        return torch.log10(10000.0 * mel + 1.0)


def slice_centres(n_frames: int) -> list[int]:
    """MULE's SliceExtractor: centres 200, 400, ... < n_frames, clamped to fit 300 frames."""
    half = SLICE // 2
    return [min(max(c, half), n_frames - half) for c in range(SLICE_HOP, n_frames, SLICE_HOP)]


def mule_slices(mel: torch.Tensor) -> torch.Tensor:
    """(B, 96, n_frames) -> standardised slices (B, T, 96, 300) as MULE feeds its network."""
    half = SLICE // 2
    x = torch.stack([mel[:, :, c - half:c + half] for c in slice_centres(mel.shape[-1])], dim=1)
    x = x - x.mean(dim=(2, 3), keepdim=True)
    std = torch.nan_to_num(x.std(dim=(2, 3), keepdim=True, correction=0), nan=1.0,
                           posinf=1.0, neginf=1.0)
    return x / std.clamp_min(0.01)


class MuleEmbedder(torch.nn.Module):
    """Waveform (B, S) at 16 kHz -> MULE frames (B, T, 1728) every 2 s and their mean."""

    def __init__(self, net: torch.nn.Module, input: str, max_batch: int) -> None:
        super().__init__()
        self.net = net
        self.input = input
        self.max_batch = max_batch
        self.frontend = MuleFrontEnd()
        self.requires_grad_(False)
        self.eval()

    def train(self, mode: bool = True) -> "MuleEmbedder":
        """A teacher stays in eval mode."""
        return super().train(False)

    def _check(self, out: torch.Tensor, ndims: tuple[int, ...]) -> torch.Tensor:
        if not isinstance(out, torch.Tensor) or out.dim() not in ndims \
                or out.shape[-1] != EMBEDDING_DIM:
            shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
            raise EastkdError(f"MULE export returned {shape}; expected (..., {EMBEDDING_DIM}) — "
                              f"re-export it as described in eastkd.pipeline.teachers.mule")
        return out.float()

    @torch.no_grad()
    def forward(self, wave: torch.Tensor) -> TeacherOutput:
        wave = wave.float()
        if wave.shape[-1] < MIN_SAMPLES:
            wave = torch.nn.functional.pad(wave, (0, MIN_SAMPLES - wave.shape[-1]))
        if self.input == "wave":
            out = self._check(self.net(wave), (2, 3))
            return TeacherOutput(clip=out, frames=None) if out.dim() == 2 else \
                TeacherOutput(clip=out.mean(dim=1), frames=out)
        with float32_front_end(wave.device):
            slices = mule_slices(self.frontend(wave))  # (B, T, 96, 300)
        b, t = slices.shape[:2]
        flat = slices.reshape(b * t, N_MELS, SLICE, 1)  # Keras layout: channels last
        emb = torch.cat([self._check(self.net(c), (2,)) for c in flat.split(self.max_batch)])
        frames = emb.reshape(b, t, EMBEDDING_DIM)
        return TeacherOutput(clip=frames.mean(dim=1), frames=frames)


def default_checkpoint() -> str:
    """Where :func:`mule` looks when ``weights`` is None."""
    return os.path.join(torch.hub.get_dir(), "checkpoints", DEFAULT_FILE)


def _options(options: dict[str, Any]) -> dict[str, Any]:
    unknown = sorted(set(options) - set(DEFAULTS))
    if unknown:
        raise EastkdError(f"unknown MULE option(s) {', '.join(unknown)}; "
                          f"valid: {', '.join(DEFAULTS)}")
    opts = {**DEFAULTS, **options}
    if opts["input"] not in ("slices", "wave"):
        raise EastkdError(f"MULE option input must be 'slices' or 'wave', got {opts['input']!r}")
    opts["max_batch"] = int(opts["max_batch"])
    opts["frame_rate"] = float(opts["frame_rate"])
    opts["frame_offset"] = float(opts["frame_offset"])
    if opts["max_batch"] < 1 or opts["frame_rate"] <= 0:
        raise EastkdError("MULE options max_batch and frame_rate must be positive")
    return opts


def mule(weights: str | None = None, **options: Any) -> Teacher:
    """MULE (1728-d, 16 kHz) from a TorchScript export (see the module doc for how to make it).

    Options: ``input`` ("slices": the file is the network on (N, 96, 300, 1) mel slices;
    "wave": the file maps (B, S) waveforms to embeddings), ``max_batch`` (slices per forward
    pass), ``frame_rate`` and ``frame_offset`` (of a "wave" export's frames: frames per second
    and the first frame's centre in seconds; MULE's own timeline is 0.5 Hz from 2 s).
    """
    opts = _options(options)
    path = os.fspath(weights) if weights is not None else default_checkpoint()
    if not os.path.isfile(path):
        raise EastkdError(f"MULE export {path} not found; export MULE to TorchScript as described "
                          f"in eastkd.pipeline.teachers.mule and save it there (or pass "
                          f"weights=PATH)")
    try:
        with warnings.catch_warnings():  # torch 2.11 marks TorchScript as deprecated
            warnings.simplefilter("ignore", DeprecationWarning)
            net = torch.jit.load(path, map_location="cpu")
    except Exception as err:  # noqa: BLE001 - any unloadable file gets the same advice
        raise EastkdError(f"MULE export {path} is not a TorchScript file ({err}); export it as "
                          f"described in eastkd.pipeline.teachers.mule") from err
    model = MuleEmbedder(net.eval(), opts["input"], opts["max_batch"])
    try:  # one 3 s probe: a bad export fails here, naming the file
        probe = model(torch.zeros(1, MIN_SAMPLES))
    except Exception as err:  # noqa: BLE001
        raise EastkdError(f"MULE export {path} failed on a 3 s probe: {err}") from err
    has_frames = probe.frames is not None
    frame_rate = (SAMPLE_RATE / (HOP * SLICE_HOP) if opts["input"] == "slices"
                  else opts["frame_rate"] if has_frames else None)
    offset = (HOP * SLICE_HOP / SAMPLE_RATE if opts["input"] == "slices"
              else float(opts["frame_offset"]))
    return Teacher(
        name="mule",
        model=model,
        sample_rate=SAMPLE_RATE,
        embedding_dim=EMBEDDING_DIM,
        weights_sha256=file_sha256(path),
        weights_files=(path,),
        frame_rate=frame_rate,
        frame_offset=offset if has_frames else 0.0,
        pooling="mean over frames (MULE TimelineAverage)" if has_frames else "model output",
        options={"input": opts["input"], **({"frame_rate": frame_rate} if has_frames else {}),
                 **({"frame_offset": offset} if has_frames and opts["input"] == "wave" else {})},
    )
