"""What a distill run is asked to do: :class:`DistillOptions`, checked once, here.

The CLI builds it from its flags, the Python API from keyword arguments (``eastkd.distill(...,
kd="dc", seed=1)``), and the run records :meth:`DistillOptions.record` as ``options`` in
``config.json``. The KD methods and students are the names in their registries (entry-point
groups ``eastkd.losses`` and ``eastkd.students``), plus ``none`` for the task-only baseline.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from eastkd.errors import EastkdError
from eastkd.pipeline.core import registry
from eastkd.pipeline.core.reading import DEFAULT_MEMORY_LIMIT, DEFAULT_SHUFFLE_BUFFER
from eastkd.pipeline.distill.augment import SpecAugment
from eastkd.progress import Progress

NO_KD = "none"
SCHEDULES = ("cosine", "plateau")
GRAD_CLIP = 1.0
# intra-op CPU threads of distill unless --threads says otherwise: fixed, not the machine's
# core count, so that a CPU run gives the same result on every machine (see README)
DEFAULT_CPU_THREADS = 1
# unlabelled rows per labelled row in a step when the train split has unlabelled rows and
# --unlabelled-ratio is not given (without such rows, or without KD, none are drawn)
DEFAULT_UNLABELLED_RATIO = 1.0
# Options that do not change what a run computes (may differ when a run is continued).
RUNTIME_KEYS = ("device", "memory_limit", "progress", "workers", "shuffle_buffer")
# Options that say how to treat RUN_DIR, not what to train (never recorded).
_RUN_DIR_KEYS = ("resume", "overwrite")


def kd_methods() -> list[str]:
    """The ``--kd`` choices: every registered KD loss, then ``none`` (the baseline)."""
    return [*registry.losses.names(), NO_KD]


def uses_logits(kd: str) -> bool:
    """Whether KD loss ``kd`` reads the student's logits (response-based KD, e.g. ``kl``)."""
    return kd != NO_KD and bool(getattr(registry.losses.get(kd), "uses_logits", False))


def student_names() -> list[str]:
    """The ``--student`` choices: every registered student."""
    return registry.students.names()


@dataclass
class DistillOptions:
    """Every option of a distill run (the README's "Training runs" explains each).

    ``lam`` is λ in ``L = (1 - λ) L_task + λ L_kd``; ``temperature`` softens the logits of a
    response-based KD loss (``kl``; recorded only for such a loss); ``memory_limit`` and
    ``shuffle_buffer``
    are bytes; ``workers`` None picks reader processes automatically; ``threads`` fixes the
    intra-op CPU threads of a CPU run (results depend on it; unused on CUDA).
    ``unlabelled_ratio`` is unlabelled rows per labelled row in a step (None: 1 when the train
    split has unlabelled rows; unused without KD), ``spec_augment`` masks the student's input
    (:class:`~eastkd.pipeline.distill.augment.SpecAugment`, recorded with its settings),
    ``mixup`` > 0 mixes batches (``Beta(mixup, mixup)`` weights; 0: off).
    """

    targets: str | None = None
    student: str = "vgg"
    width: int = 16
    kd: str = "fitnet"
    lam: float = 0.6
    temperature: float = 1.0
    teacher_linear: bool = False
    teacher_linear_dim: int | None = None
    frame_targets: bool = False
    epochs: int = 50
    batch_size: int = 16
    lr: float = 1e-3
    weight_decay: float = 1e-4
    schedule: str = "cosine"
    patience: int = 10
    seed: int = 0
    fold: int | None = None
    device: str = "auto"
    memory_limit: int = DEFAULT_MEMORY_LIMIT
    shuffle_buffer: int = DEFAULT_SHUFFLE_BUFFER
    workers: int | None = None
    threads: int = DEFAULT_CPU_THREADS
    unlabelled_ratio: float | None = None  # None: DEFAULT_UNLABELLED_RATIO if there are any
    spec_augment: bool = False
    mixup: float = 0.0  # Beta(alpha, alpha) of mixup's weight; 0: off
    progress: Progress = False  # None: bars on a terminal, else plain lines (the CLI's)
    resume: bool = False
    overwrite: bool = False

    @property
    def uses_kd(self) -> bool:
        return self.kd != NO_KD

    def check(self) -> None:
        """Reject values (and combinations) a run cannot use, one line each."""
        methods = kd_methods()
        if self.kd not in methods:
            raise EastkdError(f"--kd {self.kd!r}: choose one of {', '.join(methods)}")
        if self.student not in student_names():
            raise EastkdError(f"--student {self.student!r}: choose one of "
                              f"{', '.join(student_names())}")
        if self.schedule not in SCHEDULES:
            raise EastkdError(f"--schedule {self.schedule!r}: choose one of "
                              f"{', '.join(SCHEDULES)}")
        if not 0.0 <= self.lam <= 1.0:
            raise EastkdError(f"--lambda {self.lam}: must be in [0, 1] "
                              "(L = (1-λ) L_task + λ L_kd)")
        if self.uses_kd and not self.targets:
            raise EastkdError(f"--kd {self.kd} needs --targets NAME (targets/NAME or "
                              "embeddings/NAME); use --kd none for the baseline without a "
                              "teacher")
        if self.teacher_linear and not self.uses_kd:
            raise EastkdError("--teacher-linear needs a KD loss (--kd fitnet or dc)")
        if not self.temperature > 0:
            raise EastkdError(f"--temperature {self.temperature}: must be positive")
        if uses_logits(self.kd):
            if self.teacher_linear or self.frame_targets:
                raise EastkdError(f"--kd {self.kd} distils class targets from clip-level "
                                  "logits; drop --teacher-linear and --frame-targets")
        elif self.temperature != 1.0:
            raise EastkdError(f"--temperature applies to response-based KD (--kd kl), not "
                              f"--kd {self.kd}; drop it")
        if self.epochs < 1 or self.batch_size < 2:
            raise EastkdError("--epochs must be >= 1 and --batch-size >= 2")
        if self.threads < 1:
            raise EastkdError(f"--threads {self.threads}: must be >= 1")
        if self.unlabelled_ratio is not None and not self.unlabelled_ratio >= 0:
            raise EastkdError(f"--unlabelled-ratio {self.unlabelled_ratio}: must be >= 0 "
                              "(unlabelled rows per labelled row in a step; 0: none)")
        if not self.mixup >= 0:
            raise EastkdError(f"--mixup {self.mixup}: must be >= 0 (Beta(A, A); 0: off)")

    def record(self, device_type: str) -> dict[str, Any]:
        """The run's ``options`` as written to config.json: every option but ``resume`` and
        ``overwrite``, with options that a setting makes moot normalised, so that equal runs
        have equal options (``lam`` is recorded as ``lambda``)."""
        out = {k: v for k, v in asdict(self).items() if k not in _RUN_DIR_KEYS}
        kd = self.uses_kd
        out.update(
            width=int(self.width), lam=float(self.lam) if kd else 0.0,
            targets=self.targets if kd else None, teacher_linear=bool(self.teacher_linear),
            teacher_linear_dim=self.teacher_linear_dim if self.teacher_linear else None,
            frame_targets=bool(self.frame_targets) if kd else False, epochs=int(self.epochs),
            batch_size=int(self.batch_size), lr=float(self.lr),
            weight_decay=float(self.weight_decay), seed=int(self.seed),
            patience=int(self.patience), memory_limit=int(self.memory_limit),
            progress=self.progress, shuffle_buffer=int(self.shuffle_buffer),
            threads=int(self.threads) if device_type == "cpu" else None,
            unlabelled_ratio=(float(self.unlabelled_ratio)
                              if kd and self.unlabelled_ratio is not None else None),
            spec_augment=SpecAugment().config() if self.spec_augment else None,
            mixup=float(self.mixup) if self.mixup else None)
        out["lambda"] = out.pop("lam")
        if uses_logits(self.kd):  # only then: other runs' options stay as they were
            out["temperature"] = float(self.temperature)
        else:
            out.pop("temperature")
        out["grad_clip"] = GRAD_CLIP
        return out
