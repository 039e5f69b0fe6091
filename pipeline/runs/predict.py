"""``eastkd predict``: a trained student on new audio files.

Each file is decoded, mixed to mono, resampled to the run's student sample rate, cropped or
padded to the run's segment, turned into log-mel with the run's recorded parameters and scored
by the best checkpoint: the same path as ``extract`` + ``evaluate``, without a store. Scores
are softmax probabilities (single-label) or per-class sigmoids (multi-label; a class is
predicted at 0.5 and above).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from eastkd.errors import EastkdError
from eastkd.pipeline.core.audio import (
    AudioError,
    Segment,
    decode,
    fit_segment,
    read_bytes,
    resample,
)
from eastkd.pipeline.core.device import resolve_device
from eastkd.pipeline.core.features import LogMel
from eastkd.pipeline.distill.evaluate import build_student, load_run
from eastkd.pipeline.runs.like import read_student_inputs_from_config

MULTI_LABEL_THRESHOLD = 0.5


@dataclass
class Prediction:
    """One file's prediction: the predicted class(es) and every class's score."""

    id: str
    path: str
    labels: list[str]
    scores: dict[str, float]

    def as_dict(self) -> dict[str, Any]:
        return {"id": self.id, "path": self.path, "labels": self.labels, "scores": self.scores}


class Predictor:
    """A run's front end (decode, resample, segment, log-mel) and its best student."""

    def __init__(self, run_dir: str, device: str = "cpu") -> None:
        config, ckpt = load_run(run_dir)
        self.run_dir = run_dir
        self.config = config
        inputs = read_student_inputs_from_config(config, run_dir)
        self.segment = Segment(inputs.segment, inputs.crop)
        self.sample_rate = inputs.logmel.sample_rate
        self.n_samples = self.segment.samples(self.sample_rate)
        self.logmel = LogMel(inputs.logmel)
        self.class_names: list[str] = list(config["class_names"])
        self.multi_label = bool(config["multi_label"])
        self.device = resolve_device(device)
        self.model = build_student(config)
        self.model.load_state_dict(ckpt["student"])
        self.model.to(self.device).eval()

    def waveform(self, path: str) -> torch.Tensor:
        """The student's input waveform of one file: mono, resampled, fitted to the segment."""
        try:
            mono, sr = decode(read_bytes(path)[0])
        except AudioError as e:
            raise EastkdError(f"{path}: {e}; predict needs readable audio files") from None
        return fit_segment(resample(mono, sr, self.sample_rate), self.n_samples,
                           self.segment.crop)

    @torch.no_grad()
    def scores(self, waves: torch.Tensor) -> torch.Tensor:
        """(B, S) waveforms -> (B, classes) probabilities (softmax, or sigmoid if multi-label)."""
        logits = self.model(self.logmel(waves).to(self.device)).logits.float().cpu()
        return torch.sigmoid(logits) if self.multi_label else torch.softmax(logits, dim=1)

    def labels_of(self, scores: np.ndarray) -> list[str]:
        if self.multi_label:
            return [c for c, s in zip(self.class_names, scores) if s >= MULTI_LABEL_THRESHOLD]
        return [self.class_names[int(np.argmax(scores))]]

    def predict(self, files: list[tuple[str, str]], batch_size: int = 32) -> list[Prediction]:
        """Predictions for ``(id, path)`` pairs, in order."""
        out: list[Prediction] = []
        for b in range(0, len(files), batch_size):
            batch = files[b:b + batch_size]
            waves = torch.stack([self.waveform(path) for _, path in batch])
            for (item_id, path), s in zip(batch, self.scores(waves).numpy()):
                out.append(Prediction(item_id, path, self.labels_of(s),
                                      {c: float(v) for c, v in zip(self.class_names, s)}))
        return out


def _manifest_files(path: Path) -> list[tuple[str, str]]:
    """``(id, path)`` of every row of a manifest (only ``path`` is needed; ``id`` defaults to
    it; paths relative to the manifest's folder)."""
    from eastkd.pipeline.datasets.manifest import read_manifest_rows

    columns, rows = read_manifest_rows(path)
    if "path" not in columns:
        raise EastkdError(f"manifest {path} has no 'path' column; list one audio file per row")
    base = path.resolve().parent
    files = []
    for _, row in rows:
        rel = str(row.get("path") or "").strip()
        audio = Path(rel).expanduser()
        audio = audio if audio.is_absolute() else base / audio
        files.append((str(row.get("id") or rel).strip(), str(audio)))
    return files


def resolve_inputs(inputs: list[str]) -> list[tuple[str, str]]:
    """``(id, path)`` pairs from audio files and/or .csv/.jsonl manifests."""
    from eastkd.pipeline.datasets.manifest import MANIFEST_SUFFIXES

    files: list[tuple[str, str]] = []
    for text in inputs:
        p = Path(text).expanduser()
        if p.suffix.lower() in MANIFEST_SUFFIXES and p.is_file():
            files.extend(_manifest_files(p))
        elif p.is_file():
            files.append((p.stem, str(p)))
        else:
            raise EastkdError(f"{text}: no such audio file or manifest")
    missing = [path for _, path in files if not os.path.isfile(path)]
    if missing:
        raise EastkdError(f"{missing[0]}: audio file does not exist ({len(missing)} missing)")
    if not files:
        raise EastkdError("no audio to predict; give audio files or a manifest with rows")
    return files


def predict(run_dir: str, inputs: list[str], device: str = "cpu",
            batch_size: int = 32) -> list[Prediction]:
    """Labels and scores of a run's best student for audio files or manifests."""
    files = resolve_inputs(inputs)
    return Predictor(run_dir, device).predict(files, batch_size)
