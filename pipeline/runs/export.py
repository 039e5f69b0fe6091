"""``eastkd export``: a trained student as one self-contained file (TorchScript or ONNX).

The exported model takes a batch of mono waveforms at the run's student sample rate, already
cut or padded to the run's segment (``(batch, n_samples)`` float32), and returns class
probabilities ``(batch, classes)`` (softmax, or per-class sigmoid for multi-label runs). Inside:
pre-emphasis, the log-mel front end with the run's parameters, the frozen input normalisation
and the student. The STFT is written as a strided 1-D convolution with fixed windowed-DFT
kernels (equal to ``torch.stft`` with the same window), which both TorchScript and ONNX
export exactly. Class names and input settings travel inside the file: TorchScript in the
extra file ``eastkd.json``, ONNX in the model's metadata (key ``eastkd``).
"""

from __future__ import annotations

import json
import math
import os
import warnings
from typing import Any

import torch
from torch import nn

from eastkd.errors import EastkdError
from eastkd.pipeline.core.features import LogMel, LogMelParams
from eastkd.pipeline.runs.predict import Predictor

FORMATS = ("torchscript", "onnx")
META_KEY = "eastkd"
SUFFIX = {"torchscript": ".pt", "onnx": ".onnx"}


class ConvLogMel(nn.Module):
    """(B, S) waveform -> (B, n_mels, T) log-mel, equal to :class:`LogMel` up to rounding.

    Centre-padded (reflect) frames, a Hann window of ``win_length`` centred in ``n_fft``, and the
    power spectrum from a convolution with cosine and sine kernels.
    """

    def __init__(self, params: LogMelParams) -> None:
        super().__init__()
        self.params = params
        ref = LogMel(params).mel
        n_fft = params.n_fft
        window = ref.spectrogram.window.double()
        left = (n_fft - window.numel()) // 2
        window = nn.functional.pad(window, (left, n_fft - window.numel() - left))
        k = torch.arange(n_fft // 2 + 1, dtype=torch.float64)[:, None]
        n = torch.arange(n_fft, dtype=torch.float64)[None, :]
        angle = 2 * math.pi * k * n / n_fft
        kernels = torch.cat([torch.cos(angle) * window, -torch.sin(angle) * window])
        self.register_buffer("kernels", kernels.float()[:, None, :])  # (2F, 1, n_fft)
        self.register_buffer("mel_fb", ref.mel_scale.fb.float())  # (F, n_mels)

    def forward(self, wave: torch.Tensor) -> torch.Tensor:
        p = self.params
        if p.pre_emphasis:
            wave = torch.cat([wave[:, :1], wave[:, 1:] - p.pre_emphasis * wave[:, :-1]], dim=1)
        x = nn.functional.pad(wave[:, None, :], (p.n_fft // 2, p.n_fft // 2), mode="reflect")
        spec = nn.functional.conv1d(x, self.kernels, stride=p.hop_length)  # (B, 2F, T)
        n_freq = self.mel_fb.shape[0]
        power = spec[:, :n_freq] ** 2 + spec[:, n_freq:] ** 2
        mel = torch.matmul(power.transpose(1, 2), self.mel_fb).transpose(1, 2)
        return torch.log(mel + p.log_offset)


class ExportedStudent(nn.Module):
    """Front end + student + probabilities: waveform in, class scores out."""

    def __init__(self, student: nn.Module, params: LogMelParams, multi_label: bool) -> None:
        super().__init__()
        self.frontend = ConvLogMel(params)
        self.student = student.eval()
        self.multi_label = multi_label

    def forward(self, wave: torch.Tensor) -> torch.Tensor:
        logits = self.student(self.frontend(wave)).logits
        return torch.sigmoid(logits) if self.multi_label else torch.softmax(logits, dim=1)


def metadata(predictor: Predictor) -> dict[str, Any]:
    """What a user of the exported file needs: classes, input format, provenance."""
    cfg = predictor.config
    return {"class_names": predictor.class_names, "multi_label": predictor.multi_label,
            "sample_rate": predictor.sample_rate, "n_samples": predictor.n_samples,
            "segment": {"seconds": predictor.segment.seconds, "crop": predictor.segment.crop},
            "input": "float32 (batch, n_samples) mono waveform at sample_rate",
            "output": "sigmoid per class" if predictor.multi_label else "softmax over classes",
            "logmel": cfg.get("logmel"), "student": cfg["options"]["student"],
            "eastkd_version": cfg.get("eastkd_version"), "run_dir": os.path.abspath(
                predictor.run_dir)}


def _export_torchscript(model: nn.Module, example: torch.Tensor, meta: dict[str, Any],
                        path: str) -> None:
    with torch.no_grad(), warnings.catch_warnings():
        # the student's input-shape check is traced as a constant: the exported input shape is
        # fixed by the run anyway
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        traced = torch.jit.trace(model, example)
    traced.save(path, _extra_files={f"{META_KEY}.json": json.dumps(meta)})


def _export_onnx(model: nn.Module, example: torch.Tensor, meta: dict[str, Any],
                 path: str) -> None:
    try:
        import onnx
        import onnxscript  # noqa: F401 - torch.onnx's exporter needs it
    except ImportError as e:
        raise EastkdError(f"--format onnx needs the onnx packages ({e.name} is missing): "
                          "pip install 'eastkd[onnx]', or use --format torchscript") from None

    batch = torch.export.Dim("batch", min=1, max=4096)
    tmp = f"{path}.partial"
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # torch.export's own deprecation notes
        torch.onnx.export(model, (example,), tmp, input_names=["waveform"],
                          output_names=["scores"], dynamic_shapes={"wave": {0: batch}},
                          dynamo=True, external_data=False, verbose=False)
    proto = onnx.load(tmp)
    entry = proto.metadata_props.add()
    entry.key, entry.value = META_KEY, json.dumps(meta)
    onnx.save(proto, tmp)
    os.replace(tmp, path)


def export(run_dir: str, fmt: str = "torchscript", out: str | None = None) -> str:
    """Write the run's best student with its front end to ``out``; returns the path.

    ``out`` defaults to ``RUN_DIR/student.pt`` (TorchScript) or ``RUN_DIR/student.onnx``.
    """
    if fmt not in FORMATS:
        raise EastkdError(f"--format {fmt!r}: choose one of {', '.join(FORMATS)}")
    predictor = Predictor(run_dir, "cpu")
    model = ExportedStudent(predictor.model, predictor.logmel.params, predictor.multi_label)
    example = torch.zeros(2, predictor.n_samples)
    path = out or os.path.join(run_dir, f"student{SUFFIX[fmt]}")
    meta = metadata(predictor)
    if fmt == "torchscript":
        _export_torchscript(model.eval(), example, meta, path)
    else:
        _export_onnx(model.eval(), example, meta, path)
    return path


def load_torchscript(path: str) -> tuple[torch.jit.ScriptModule, dict[str, Any]]:
    """An exported TorchScript student and its metadata (class names, input settings)."""
    files = {f"{META_KEY}.json": ""}
    model = torch.jit.load(path, map_location="cpu", _extra_files=files)
    return model, json.loads(files[f"{META_KEY}.json"])


def onnx_metadata(path: str) -> dict[str, Any]:
    """The metadata stored in an exported ONNX student."""
    import onnx

    props = {p.key: p.value for p in onnx.load(path, load_external_data=False).metadata_props}
    if META_KEY not in props:
        raise EastkdError(f"{path}: not an ONNX student exported by eastkd (no metadata)")
    return json.loads(props[META_KEY])
