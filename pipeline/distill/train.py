"""The distill stage: train a small student from the store alone (task loss + KD distance loss).

The loss follows the EAsT reference implementation::

    L = (1 - λ) · L_task + λ · L_kd          (λ = 0.6 by default, the reference's MTAT value)

``L_task`` is cross-entropy (single-label) or BCE-with-logits (multi-label); ``L_kd`` is the
FitNet loss (``fitnet``, the default: MSE after a learned regressor, trained with the
student; the README's "Training runs" says why it is the default) or a distance
correlation loss (``dc``: EAsT's estimator; ``dc-unbiased``: the bias-corrected one) between the
student's last-stage features and the stored targets; frame-level targets are paired with the
student's frames by time (nearest frame centre, see ``losses.align_time``). History also logs
``train_kd_shuffled``: the KD term with every target moved to the next item of its batch, i.e.
what the term reads for unrelated pairs (a term that barely differs from ``train_kd`` carries
little signal). With
``kd='none'`` the loss is plain ``L_task`` (the no-KD baseline). Targets are centred and scaled
by one scalar (train statistics) so the FitNet MSE has the same size for every teacher; the
distance correlation is unaffected by that.

Response-based KD (``kd='kl'``, :class:`~eastkd.pipeline.distill.losses.SoftLabelKDLoss`): a
loss that declares ``uses_logits`` gets the student's logits instead of its features, and the
targets as stored (class probabilities from ``compress --method probe``, or a teacher's logits;
``normalise_targets = False``), softened by ``temperature``. Targets whose ``class_names``
differ from the store's are refused.

``teacher_linear`` is the compression paper's teacher transformation, trained jointly: a linear
map on the targets with its own linear classifier, trained by the task loss on the transformed
targets (``L_teacher``, which updates only the map and its classifier); the student is pulled
towards the *detached* transformed targets by ``L_kd``. The optimised sum is
``(1 - λ) L_task + λ L_kd + L_teacher``; the two parameter sets are disjoint.

Unlabelled train rows (a store with ``items/labelled`` 0 rows) join the KD loss only: each step
is a labelled batch plus an unlabelled batch of ``round(unlabelled_ratio * batch_size)`` rows
(:mod:`eastkd.pipeline.distill.streams`, which also defines the epoch), passed through the
student together; the task loss takes the labelled rows. ``spec_augment`` masks the student's
input and ``mixup`` mixes its batches, targets alike (:mod:`eastkd.pipeline.distill.augment`).

AdamW, a cosine (default) or reduce-on-plateau schedule, gradient clipping at 1.0, early
stopping on the validation metric (accuracy, or mAP for multi-label), best epoch kept. A tie on
the metric with a lower validation loss becomes the best epoch but does not reset the patience
counter (:func:`rank_epoch`), so a run whose validation accuracy sits at 1.0 still stops. The
teacher's code is never imported.
"""

from __future__ import annotations

import functools
import os
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from eastkd.pipeline.compress.run import check_fit_rows
from eastkd.pipeline.core import registry
from eastkd.pipeline.core.device import resolve_device
from eastkd.pipeline.core.options import options_from_kwargs
from eastkd.pipeline.core.reading import (
    FEATURES,
    SplitData,
    TargetsSpec,
    load_split,
    resolve_targets,
    skipped_count,
    split_rows,
)
from eastkd.pipeline.datasets.splits import missing_class_warnings
from eastkd.pipeline.distill.augment import Mixup, SpecAugment
from eastkd.pipeline.distill.complexity import count_parameters
from eastkd.pipeline.distill.evaluate import compute_metrics, predict, selection_metric
from eastkd.pipeline.distill.losses import TARGET_KINDS, FrameTiming, TimeAlignment
from eastkd.pipeline.distill.options import (
    DEFAULT_UNLABELLED_RATIO,
    GRAD_CLIP,
    RUNTIME_KEYS,
    DistillOptions,
    uses_logits,
)
from eastkd.pipeline.distill.streams import (
    Step,
    epoch_line,
    steps_per_epoch,
    training_steps,
    unlabelled_batch_size,
)
from eastkd.pipeline.runs.rundir import (
    BEST,
    CONFIG,
    CURVES,
    HISTORY,
    LAST,
    METRICS,
    RUN_FILES,
    plot_curves,
    read_config,
    run_file,
    save_atomic,
    write_history,
    write_json,
)
from eastkd.progress import progress_bar
from eastkd.store import (
    EastkdError,
    StoreMismatchError,
    eastkd_version,
    open_store,
    store_location,
)

@dataclass
class DistillResult:
    """What one distill run produced (also what the CLI prints)."""

    run_dir: str
    best_epoch: int
    epochs_run: int
    stopped_early: bool
    selection_metric: str
    valid_metrics: dict[str, float]
    test_metrics: dict[str, float]
    student_parameters: int
    n_items: dict[str, int]
    seconds: float
    resumed_from: int = 0
    history: list[dict[str, Any]] = field(default_factory=list)


class TeacherLinear(nn.Module):
    """A trainable linear map on the targets plus the linear classifier that trains it."""

    def __init__(self, in_dim: int, out_dim: int, n_classes: int) -> None:
        super().__init__()
        self.transform = nn.Linear(in_dim, out_dim)
        self.classifier = nn.Linear(out_dim, n_classes)

    def forward(self, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        z = self.transform(t)
        return z, self.classifier(z.mean(dim=1) if z.dim() == 3 else z)


def rank_epoch(best: float | None, best_loss: float | None, score: float,
               v_loss: float) -> tuple[bool, bool]:
    """``(is_best, resets_patience)`` of an epoch against the best so far.

    A higher validation metric is a new best and resets the patience counter; an equal metric
    with a lower validation loss is a new best (its checkpoint is kept) but counts towards
    patience like an epoch without improvement.
    """
    if best is None or score > best:
        return True, True
    return score == best and best_loss is not None and v_loss < best_loss, False


def _epoch_line(record: dict[str, Any], epochs: int, metric: str, state: dict[str, Any]) -> str:
    """The one line per epoch printed with ``progress=False`` (``--no-progress``)."""
    parts = [f"epoch {record['epoch']}/{epochs}", f"loss {record['train_loss']:.4f}"]
    parts += [f"{k[len('train_'):]} {v:.4f}" for k, v in record.items()
              if k.startswith("train_") and k != "train_loss"]
    parts += [f"valid loss {record['valid_loss']:.4f}",
              f"valid {metric} {record.get(f'valid_{metric}', float('nan')):.4f}",
              f"best {state['best']:.4f}@{state['best_epoch']}" + (" *" if record["best"] else ""),
              f"{record['seconds']:.1f} s"]
    return ", ".join(parts)


def _task_loss(multi_label: bool) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    return F.binary_cross_entropy_with_logits if multi_label else F.cross_entropy


@contextmanager
def _deterministic(enabled: bool, threads: int) -> Iterator[None]:
    """Deterministic kernels and ``threads`` intra-op threads for the duration of a CPU run
    (both restored afterwards). The thread count changes how CPU kernels split their sums, so
    a fixed count is what makes a CPU run repeat bit for bit on another machine."""
    before = torch.are_deterministic_algorithms_enabled()
    threads_before = torch.get_num_threads()
    if enabled:
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(before)
        torch.set_num_threads(threads_before)


def _metrics_record(r: DistillResult) -> dict[str, Any]:
    return {"best_epoch": r.best_epoch, "epochs_run": r.epochs_run,
            "stopped_early": r.stopped_early, "selection_metric": r.selection_metric,
            "valid": r.valid_metrics, "test": r.test_metrics, "n_items": r.n_items,
            "student_parameters": r.student_parameters, "seconds": round(r.seconds, 3)}


def _identity(config: dict[str, Any]) -> dict[str, Any]:
    """The part of a config that decides the result (compared before a run is continued)."""
    opts = {k: v for k, v in config["options"].items() if k not in RUNTIME_KEYS}
    t = config.get("targets") or {}
    return {"options": opts, "dataset_fingerprint": config["store"]["dataset_fingerprint"],
            "logmel": config["logmel"], "segment": config["segment"],
            "targets": [t.get("section"), t.get("array"), (t.get("attrs") or {}).get("identity")]}


def _prepare_run_dir(out_dir: str, config: dict[str, Any], overwrite: bool) -> bool:
    """Check RUN_DIR against the new config; True when it holds this run (same settings) with
    a last.pt to continue from, as extract continues a store: the same command resumes."""
    existing = os.path.isdir(out_dir) and os.listdir(out_dir)
    if not existing:
        os.makedirs(out_dir, exist_ok=True)
        return False
    if os.path.isfile(run_file(out_dir, CONFIG)) and not overwrite:
        old = read_config(out_dir)
        a, b = _identity(old), _identity(config)
        if a != b:
            diff = sorted(k for k in set(a["options"]) | set(b["options"])
                          if a["options"].get(k) != b["options"].get(k))
            diff += [k for k in ("dataset_fingerprint", "logmel", "segment", "targets")
                     if a[k] != b[k]]
            raise StoreMismatchError(
                f"{out_dir}: holds a run with other settings (differs in: {', '.join(diff)}); "
                "choose another --out or pass --overwrite to start over")
        return os.path.isfile(run_file(out_dir, LAST))
    if not overwrite:
        raise EastkdError(f"{out_dir}: exists and is not empty (no {CONFIG}); choose an empty "
                          "--out or pass --overwrite")
    for name in RUN_FILES:
        path = run_file(out_dir, name)
        if os.path.exists(path):
            os.remove(path)
    return False


def _time_alignment(config: dict[str, Any], spec: TargetsSpec) -> TimeAlignment:
    """Frame timing of both sides: log-mel frames centred every hop from 0 (STFT centre=True),
    target frames at the ``frame_rate`` and ``frame_offset`` recorded at extract (offset 0 in
    stores written before it was recorded)."""
    lm = config["logmel"]
    n_input = config.get("views", {}).get("frames", config["n_frames"])  # a view's, with views
    return TimeAlignment(FrameTiming(lm["sample_rate"] / lm["hop_length"]), n_input,
                         FrameTiming(float(spec.attrs["frame_rate"]),
                                     float(spec.attrs.get("frame_offset") or 0.0)))


def _build_config(store: Any, store_path: str, spec: TargetsSpec | None, options: dict[str, Any],
                  sizes: dict[str, int]) -> dict[str, Any]:
    items = store.items
    feat = store.features(FEATURES)
    fattrs = feat.attrs
    shape = feat.array("values").shape
    teacher = None
    if spec is not None:
        src = spec.attrs.get("source") if spec.section.startswith("targets/") else spec.name
        if src and store.has_section("embeddings", src):
            ea = store.embeddings(src).attrs
            teacher = {"name": ea.get("teacher"), "parameters": ea.get("teacher_parameters"),
                       "embeddings": src, "weights_sha256": ea.get("weights_sha256")}
    return {
        "eastkd_version": eastkd_version(),
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "options": options,
        "store": {"path": store_location(store_path), "backend": store.backend_name,
                  "dataset_fingerprint": store.dataset_fingerprint,
                  "dataset": store.attrs.get("dataset", {}).get("name")},
        "logmel": fattrs.get("params", {}), "segment": fattrs.get("segment", {}),
        "n_mels": int(shape[1]), "n_frames": int(shape[2]),
        "class_names": list(items.class_names), "multi_label": bool(items.multi_label),
        "targets": spec.provenance() if spec is not None else None,
        "teacher": teacher, "n_items": sizes,
    }


def _step_losses(run: "_Run", step: Step, task_loss: Callable[..., torch.Tensor], lam: float,
                 dev: torch.device, aug_gen: torch.Generator | None
                 ) -> tuple[torch.Tensor, dict[str, torch.Tensor], dict[str, int]]:
    """The loss of one step, its terms, and the items each term is a mean over.

    The labelled and the unlabelled batch go through the student together; the task loss (and
    the teacher-linear map's) takes the labelled rows only, the KD loss every row.
    """
    model, kd_loss, tlin = run.model, run.kd_loss, run.tlin
    lab, unl = step.labelled, step.unlabelled
    x = lab.x if unl is None else torch.cat([lab.x, unl.x])
    x, y = x.to(dev, non_blocking=True), lab.y.to(dev, non_blocking=True)
    n_lab, n_all = len(y), len(x)
    mix = (run.mixup.draw(n_lab, n_all, aug_gen)
           if run.mixup is not None and aug_gen is not None else None)
    if mix is not None:
        x, task_loss = mix.apply(x), functools.partial(mix.loss, task_loss)
    if run.augment is not None and aug_gen is not None:
        x = run.augment(x, model.input_mean, aug_gen)
    out = model(x)
    counts = {"loss": n_lab, "task": n_lab, "teacher": n_lab, "kd": n_all, "kd_shuffled": n_all}
    parts = {"task": task_loss(out.logits[:n_lab], y)}
    loss = parts["task"]
    if kd_loss is not None:
        t = lab.t if unl is None else torch.cat([lab.t, unl.t])
        t = t.to(dev, non_blocking=True)
        t = mix.apply(t) if mix is not None else t  # a mixed pair's target: the same mix
        if tlin is not None:
            t, t_logits = tlin(t)
            parts["teacher"] = task_loss(t_logits[:n_lab], y)  # trains the linear map + head
            t = t.detach()  # the student follows the map; the KD loss does not train it
        # a response-based loss reads the logits; a distance loss the last stage's features
        feats = (out.logits if getattr(kd_loss, "uses_logits", False)
                 else out.feature_map if t.dim() == 3 else out.features)
        parts["kd"] = kd_loss(feats, t)
        loss = (1.0 - lam) * parts["task"] + lam * parts["kd"] + parts.get("teacher", 0.0)
        with torch.no_grad():  # the same term with each item paired with another's target
            parts["kd_shuffled"] = kd_loss(feats, t.roll(1, dims=0))
    return loss, parts, counts


def _train_epoch(run: "_Run", splits: "_Splits", task_loss: Callable[..., torch.Tensor],
                 lam: float, batch_size: int, dev: torch.device, bar: Any) -> dict[str, float]:
    """One epoch (``streams.training_steps``); the mean of each loss term per item it covers.

    ``L = (1 - lam) L_task + lam L_kd (+ L_teacher)``; only ``L_task`` without a KD loss.
    The loss sums stay on the device: the host waits for the device once, at the epoch's end.
    """
    model, kd_loss, tlin, opt = run.model, run.kd_loss, run.tlin, run.opt
    model.train()
    params = list(model.parameters()) + (list(kd_loss.parameters()) if kd_loss else [])
    keys = ["loss", "task"] + (["kd", "kd_shuffled"] if kd_loss is not None else []) \
        + (["teacher"] if tlin is not None else [])
    sums = {k: torch.zeros((), dtype=torch.float64, device=dev) for k in keys}
    seen = dict.fromkeys(keys, 0)
    # the augmentations' own generator, seeded from the run's (the streams' draws stay apart)
    aug_gen = (torch.Generator().manual_seed(int(torch.randint(0, 2**62, (1,),
                                                               generator=run.gen)))
               if run.augment is not None or run.mixup is not None else None)
    for step in training_steps(splits.train, splits.unlabelled, batch_size,
                               splits.unlabelled_batch, run.gen):
        loss, parts, counts = _step_losses(run, step, task_loss, lam, dev, aug_gen)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        nn.utils.clip_grad_norm_(params, GRAD_CLIP)
        if tlin is not None:
            nn.utils.clip_grad_norm_(tlin.parameters(), GRAD_CLIP)
        opt.step()
        for key, v in {"loss": loss, **parts}.items():  # kd_shuffled: not optimised, logged
            sums[key] += v.detach() * counts[key]
            seen[key] += counts[key]
        bar.update(1)
    means = {k: float(v) / max(1, seen[k]) for k, v in sums.items()}
    bar.set_postfix(loss=f"{means['loss']:.3f}", refresh=False)
    return means


@dataclass
class _Splits:
    """The three splits of a run and their item counts (``sizes`` also counts skipped items)."""

    train: SplitData
    valid: SplitData
    test: SplitData
    sizes: dict[str, int]
    # the unlabelled train rows drawn for the KD loss, and how many per step (None, 0: unused)
    unlabelled: SplitData | None = None
    unlabelled_batch: int = 0

    def close(self) -> None:
        for split in (self.train, self.valid, self.test, self.unlabelled):
            if split is not None:
                split.close()

    def steps_per_epoch(self, batch_size: int) -> int:
        n_unl = len(self.unlabelled) if self.unlabelled is not None else 0
        return steps_per_epoch(len(self.train), n_unl, batch_size, self.unlabelled_batch)


@dataclass
class _Run:
    """The trained parts of a run and its bookkeeping (``state`` is what last.pt resumes)."""

    model: nn.Module
    kd_loss: nn.Module | None
    tlin: TeacherLinear | None
    opt: torch.optim.Optimizer
    sched: Any
    gen: torch.Generator
    norm: dict[str, Any]
    augment: SpecAugment | None = None
    mixup: Mixup | None = None
    state: dict[str, Any] = field(default_factory=lambda: {
        "epoch": 0, "best": None, "best_loss": None, "best_epoch": 0, "bad": 0,
        "history": [], "seconds": 0.0, "finished": False})
    resumed_from: int = 0


def _resolve_run_targets(store: Any, options: dict[str, Any]) -> TargetsSpec | None:
    """The KD targets of the run (None without KD), checked not to be fitted on held-out
    items (targets fitted on this run's valid/test items are a leak)."""
    if options["kd"] == "none":
        return None
    spec = resolve_targets(store, options["targets"], options["frame_targets"])
    check_fit_rows(store, spec.section, spec.attrs, options["fold"])
    if uses_logits(options["kd"]):
        _check_class_targets(store, spec, options["kd"])
    return spec


def _check_class_targets(store: Any, spec: TargetsSpec, kd: str) -> None:
    """Refuse targets a response-based loss cannot read: not class probabilities or logits
    (``kind``), or for other classes than the store's (``class_names``)."""
    kind, names = spec.attrs.get("kind"), spec.attrs.get("class_names")
    if kind not in TARGET_KINDS or names is None:
        raise EastkdError(f"--kd {kd} needs class probabilities or logits as targets; "
                          f"{spec.section} holds {kind or 'embeddings'}: write them with "
                          f"`eastkd compress --method probe`")
    if list(names) != list(store.items.class_names) or spec.dim != len(names):
        raise StoreMismatchError(
            f"{spec.section}: its classes ({', '.join(map(str, names))}) differ from the "
            f"store's ({', '.join(store.items.class_names)}); fit them on this store with "
            "`eastkd compress --method probe`")


def _load_splits(store: Any, store_path: str, spec: TargetsSpec | None,
                 options: dict[str, Any], dev: torch.device) -> _Splits:
    """Open train (with targets), valid and test; ``memory_limit`` is shared in that order."""
    feed = dict(shuffle_buffer=options["shuffle_buffer"], workers=options["workers"],
                pin_memory=dev.type == "cuda")
    fold, memory_limit = options["fold"], options["memory_limit"]
    train = load_split(store, "train", spec, fold, memory_limit, **feed)
    left = max(0, memory_limit - train.resident_bytes)
    valid = load_split(store, "valid", None, fold, left, **feed)
    test = load_split(store, "test", None, fold, max(0, left - valid.resident_bytes), **feed)
    sizes = {"train": len(train), "valid": len(valid), "test": len(test),
             "skipped": skipped_count(store, spec)}
    if len(train) < 2 or len(valid) == 0:
        raise EastkdError(f"{store_path}: need train and valid items (have {sizes}); check "
                          "the manifest's split column or --fold")
    splits = _Splits(train, valid, test, sizes)
    ratio = _unlabelled_ratio(store, spec, options)
    if ratio:
        left = max(0, left - valid.resident_bytes - test.resident_bytes)
        splits.unlabelled = load_split(store, "train", spec, fold, left, labelled=False, **feed)
        splits.unlabelled_batch = unlabelled_batch_size(options["batch_size"], ratio)
        sizes["unlabelled"] = len(splits.unlabelled)
    return splits


def _unlabelled_ratio(store: Any, spec: TargetsSpec | None, options: dict[str, Any]) -> float:
    """Unlabelled rows per labelled row in a step: ``--unlabelled-ratio``, by default 1 when
    the train split has unlabelled rows with targets; 0 (unused) without KD or such rows."""
    if spec is None:
        return 0.0
    n = len(split_rows(store, "train", spec, options["fold"], labelled=False))
    given = options.get("unlabelled_ratio")
    return 0.0 if n == 0 else float(DEFAULT_UNLABELLED_RATIO if given is None else given)


def _build_run(config: dict[str, Any], spec: TargetsSpec | None, splits: _Splits,
               dev: torch.device) -> _Run:
    """Student, KD loss, teacher-linear map, optimizer, schedule and sampling generator, seeded
    (the creation order fixes which random numbers each module's initial weights take)."""
    o = config["options"]
    n_classes = len(config["class_names"])
    torch.manual_seed(o["seed"])
    model = registry.students.create(o["student"], n_mels=config["n_mels"], n_classes=n_classes,
                                     width=o["width"])
    train, pool = splits.train, [s for s in (splits.unlabelled,) if s is not None]
    model.set_input_stats(*train.input_stats(pool))  # over every row the student trains on
    kd_loss: nn.Module | None = None
    tlin: TeacherLinear | None = None
    norm: dict[str, Any] = {}
    if spec is not None:
        loss_cls = registry.losses.get(o["kd"])
        if getattr(loss_cls, "normalise_targets", True):
            mean, scale = train.target_stats(pool)
            for split in (train, *pool):
                split.normalise_targets(mean, scale)
            norm = {"mean": mean, "scale": scale}
        t_dim = spec.dim
        if o["teacher_linear"]:
            t_dim = int(o["teacher_linear_dim"] or spec.dim)
            tlin = TeacherLinear(spec.dim, t_dim, n_classes).to(dev)
        if getattr(loss_cls, "uses_logits", False):
            kd_loss = loss_cls(n_classes, t_dim, temperature=o["temperature"],
                               target_kind=spec.attrs["kind"],
                               multi_label=config["multi_label"]).to(dev)
        else:
            kd_loss = loss_cls(model.feature_dim, t_dim).to(dev)
        if spec.frame_level:
            kd_loss.timing = _time_alignment(config, spec)
    model.to(dev)

    student_params = list(model.parameters()) + (list(kd_loss.parameters()) if kd_loss else [])
    groups: list[dict[str, Any]] = [{"params": student_params}]
    if tlin is not None:
        groups.append({"params": list(tlin.parameters())})
    opt = torch.optim.AdamW(groups, lr=o["lr"], weight_decay=o["weight_decay"])
    sched: Any = (torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=o["epochs"])
                  if o["schedule"] == "cosine" else
                  torch.optim.lr_scheduler.ReduceLROnPlateau(
                      opt, mode="max", factor=0.2, patience=max(1, o["patience"] // 2)))
    gen = torch.Generator().manual_seed(o["seed"])
    augment = SpecAugment() if o.get("spec_augment") else None
    mixup = Mixup(float(o["mixup"])) if o.get("mixup") else None
    return _Run(model, kd_loss, tlin, opt, sched, gen, norm, augment, mixup)


def _start_line(run: _Run, spec: TargetsSpec | None, splits: _Splits, options: dict[str, Any],
                n_params: int, dev: torch.device) -> str:
    """The one-line summary logged when a run starts."""
    sizes, train = splits.sizes, splits.train
    return (f"student {options['student']}: {n_params:,} parameters "
            f"(feature dim {run.model.feature_dim}); "
            f"items train {sizes['train']}, valid {sizes['valid']}, test {sizes['test']}"
            + (f"; targets {spec.section}/{spec.array} ({spec.dim}-d), {options['kd']} "
               f"λ={options['lambda']}" if spec else "; no KD (task loss only)")
            + (f" T={options['temperature']:g}" if spec and "temperature" in options else "")
            + (f"; teacher-linear {spec.dim}->{run.tlin.transform.out_features}"
               if spec is not None and run.tlin is not None else "")
            + f"; device {dev}; train split "
            + ("in memory" if train.in_memory else f"streamed ({train.workers} reader workers)")
            + _unlabelled_note(splits, options)
            + (f"; spec-augment: {run.augment.describe()}" if run.augment is not None else "")
            + (f"; mixup Beta({run.mixup.alpha:g}, {run.mixup.alpha:g})" if run.mixup else ""))


def _unlabelled_note(splits: _Splits, options: dict[str, Any]) -> str:
    """How the run uses unlabelled train rows (nothing when it draws none)."""
    unl = splits.unlabelled
    if unl is None:
        return ""
    where = "in memory" if unl.in_memory else f"streamed ({unl.workers} reader workers)"
    return (f"; unlabelled rows {len(unl)} for the KD loss only ({where}); "
            + epoch_line(len(splits.train), len(unl), options["batch_size"],
                         splits.unlabelled_batch))


def _checkpoint(run: _Run, **extra: Any) -> dict[str, Any]:
    """A checkpoint dictionary (best.pt, last.pt): the weights of the student, the KD loss and
    the teacher-linear map (None where the run has none), then ``extra``."""
    return {"student": run.model.state_dict(),
            "kd_loss": run.kd_loss.state_dict() if run.kd_loss is not None else None,
            "teacher_linear": run.tlin.state_dict() if run.tlin is not None else None,
            **extra}


def _save_last(run: _Run, out_dir: str, dev: torch.device) -> None:
    """last.pt: the weights plus everything :func:`_restore_last` needs to continue exactly."""
    save_atomic(_checkpoint(
        run, optimizer=run.opt.state_dict(), scheduler=run.sched.state_dict(),
        generator=run.gen.get_state(), torch_rng=torch.get_rng_state(),
        cuda_rng=torch.cuda.get_rng_state(dev) if dev.type == "cuda" else None,
        state=run.state), run_file(out_dir, LAST))


def _restore_last(run: _Run, out_dir: str, dev: torch.device) -> None:
    """Put ``run`` back where last.pt left it (weights, optimizer, schedule, random states)."""
    last = torch.load(run_file(out_dir, LAST), map_location="cpu", weights_only=True)
    run.model.load_state_dict(last["student"])
    if run.kd_loss is not None:
        run.kd_loss.load_state_dict(last["kd_loss"])
    if run.tlin is not None:
        run.tlin.load_state_dict(last["teacher_linear"])
    run.opt.load_state_dict(last["optimizer"])
    run.sched.load_state_dict(last["scheduler"])
    run.gen.set_state(last["generator"])
    torch.set_rng_state(last["torch_rng"])
    if dev.type == "cuda" and last.get("cuda_rng") is not None:
        torch.cuda.set_rng_state(last["cuda_rng"], dev)
    run.state = last["state"]
    run.resumed_from = run.state["epoch"]


def _run_epoch(run: _Run, splits: _Splits, config: dict[str, Any], out_dir: str,
               dev: torch.device) -> dict[str, Any]:
    """Train one epoch, validate, step the schedule and update the best/patience bookkeeping
    (best.pt on a new best); the epoch's history record (also appended to the state)."""
    e0 = time.perf_counter()
    o, state = config["options"], run.state
    multi_label = config["multi_label"]
    task_loss = _task_loss(multi_label)
    epoch = state["epoch"] + 1
    bar = progress_bar(total=splits.steps_per_epoch(o["batch_size"]),
                       desc=f"epoch {epoch}/{o['epochs']}", unit="batch", leave=False,
                       position=1, progress=o["progress"])
    for split in (splits.train, splits.unlabelled):  # with views: this epoch's view of each
        if split is not None:
            split.set_epoch(o["seed"], epoch)
    with bar:
        means = _train_epoch(run, splits, task_loss, o["lambda"], o["batch_size"], dev, bar)
    logits, labels = predict(run.model, splits.valid, dev)
    v_loss = float(task_loss(logits, labels))
    v_metrics = compute_metrics(logits.numpy(), labels.numpy(), multi_label)
    score = v_metrics.get(selection_metric(multi_label), float("nan"))
    lr_now = run.opt.param_groups[0]["lr"]
    if o["schedule"] == "plateau":
        run.sched.step(score)
    else:
        run.sched.step()
    state["epoch"] = epoch
    improved, resets = rank_epoch(state["best"], state["best_loss"], score, v_loss)
    if improved:
        state.update(best=score, best_loss=v_loss, best_epoch=epoch)
        save_atomic(_checkpoint(run, target_norm=run.norm, epoch=epoch, config=config),
                    run_file(out_dir, BEST))
    state["bad"] = 0 if resets else state["bad"] + 1
    state["seconds"] += time.perf_counter() - e0
    record = {"epoch": epoch, "lr": lr_now, **{f"train_{k}": v for k, v in means.items()},
              "valid_loss": v_loss, **{f"valid_{k}": v for k, v in v_metrics.items()},
              "best": bool(improved), "seconds": round(time.perf_counter() - e0, 3)}
    state["history"].append(record)
    if o["patience"] and state["bad"] >= o["patience"]:
        state["finished"] = True
    return record


def _train_epochs(run: _Run, splits: _Splits, config: dict[str, Any], out_dir: str,
                  dev: torch.device, log: Callable[[str], None],
                  callback: Callable[[dict[str, Any]], None] | None) -> None:
    """Run epochs until the last one or early stopping; after each, write last.pt and
    history.csv, then report the epoch (progress bar or log line, and ``callback``)."""
    o, state = config["options"], run.state
    epochs, metric = o["epochs"], selection_metric(config["multi_label"])
    with progress_bar(total=epochs, initial=state["epoch"], desc=f"distill {o['student']}",
                      unit="epoch", progress=o["progress"]) as ebar:
        while not run.state["finished"] and run.state["epoch"] < epochs:
            record = _run_epoch(run, splits, config, out_dir, dev)
            _save_last(run, out_dir, dev)
            write_history(run_file(out_dir, HISTORY), run.state["history"])
            ebar.update(1)
            score = record.get(f"valid_{metric}", float("nan"))
            ebar.set_postfix({"loss": f"{record['train_loss']:.3f}",
                              f"valid {metric}": f"{score:.3f}",
                              "best": f"{run.state['best']:.3f}@{run.state['best_epoch']}"})
            if o["progress"] is False:  # --no-progress: the epoch lines instead
                log(_epoch_line(record, epochs, metric, run.state))
            if callback is not None:
                callback(record)


def _continue_line(run: _Run, out_dir: str, epochs: int) -> str:
    """What a rerun of the same command does with the run it finds in RUN_DIR."""
    done = run.state["epoch"]
    if run.state["finished"] or done >= epochs:
        return f"{out_dir} already holds this run, trained ({done} epochs); nothing to train"
    return f"continuing {out_dir} after epoch {done} of {epochs}"


def _evaluate_best(run: _Run, test: SplitData, config: dict[str, Any], out_dir: str,
                   dev: torch.device) -> tuple[dict[str, float], dict[str, float]]:
    """``(valid, test)`` metrics of the best epoch: valid from its history record, test by
    loading best.pt into the student (no test metrics without test items)."""
    best_ckpt = torch.load(run_file(out_dir, BEST), map_location="cpu", weights_only=True)
    run.model.load_state_dict(best_ckpt["student"])
    valid_at_best = {k[len("valid_"):]: v for k, v in
                     run.state["history"][run.state["best_epoch"] - 1].items()
                     if k.startswith("valid_")}
    test_metrics: dict[str, float] = {}
    if len(test):
        logits, labels = predict(run.model, test, dev)
        test_metrics = compute_metrics(logits.numpy(), labels.numpy(), config["multi_label"])
    return valid_at_best, test_metrics


def _finish_run(run: _Run, splits: _Splits, config: dict[str, Any], out_dir: str,
                n_params: int, t0: float, dev: torch.device) -> DistillResult:
    """Evaluate the best epoch, close the splits and write metrics.json and curves.png."""
    valid_at_best, test_metrics = _evaluate_best(run, splits.test, config, out_dir, dev)
    splits.close()
    state, metric = run.state, selection_metric(config["multi_label"])
    result = DistillResult(
        run_dir=out_dir, best_epoch=state["best_epoch"], epochs_run=state["epoch"],
        stopped_early=state["epoch"] < config["options"]["epochs"], selection_metric=metric,
        valid_metrics=valid_at_best, test_metrics=test_metrics, student_parameters=n_params,
        n_items=splits.sizes, seconds=time.perf_counter() - t0, resumed_from=run.resumed_from,
        history=state["history"])
    write_json(run_file(out_dir, METRICS), _metrics_record(result))
    plot_curves(run_file(out_dir, CURVES), state["history"], metric)
    return result


def distill(store_path: str, targets: str | None, out_dir: str,
            options: DistillOptions | None = None, *,
            log: Callable[[str], None] | None = None,
            callback: Callable[[dict[str, Any]], None] | None = None,
            **kwargs: Any) -> DistillResult:
    """Train a student on ``store_path`` with KD towards ``targets``; write RUN_DIR ``out_dir``.

    ``targets`` names ``targets/NAME`` or ``embeddings/NAME`` (unused with ``kd='none'``).
    The run's options are a :class:`DistillOptions` or, equally, its fields as keyword
    arguments (``distill(store, "pca32", "runs/a", kd="dc", seed=1)``); ``targets`` given
    here wins over ``options.targets``. ``log`` receives one-line messages (start info, and
    one line per epoch without progress bars); ``callback`` gets each epoch's history record
    after the epoch's checkpoints are written.
    """
    t0 = time.perf_counter()
    opts = options if options is not None else \
        options_from_kwargs(DistillOptions, "distill", kwargs)
    if kwargs and options is not None:
        raise EastkdError("give distill either a DistillOptions or keyword options, not both")
    if targets is not None:
        opts = replace(opts, targets=targets)
    opts.check()
    dev = resolve_device(opts.device)
    log = log or (lambda msg: None)
    options_record = opts.record(dev.type)

    with _deterministic(dev.type == "cpu", opts.threads), open_store(store_path, "r") as store:
        spec = _resolve_run_targets(store, options_record)
        splits = _load_splits(store, store_path, spec, options_record, dev)
        config = _build_config(store, store_path, spec, options_record, splits.sizes)
        if splits.unlabelled is not None:
            config["unlabelled"] = {
                "rows": len(splits.unlabelled), "batch": splits.unlabelled_batch,
                "steps_per_epoch": splits.steps_per_epoch(opts.batch_size),
                "epoch": "one pass over the KD pool (every train row drawn once; the shorter "
                         "stream cycles)"}
        if splits.train.views is not None:  # recorded only with views: plain runs unchanged
            config["views"] = {"k": splits.train.views.k, "frames": splits.train.views.frames,
                               "draw": "one view per item per epoch: splitmix64(seed, epoch, "
                                       "store row) mod K", "evaluation": "whole clip"}
        if opts.fold is None:
            items = store.items
            for warning in missing_class_warnings(items.class_names, items.labels, items.splits):
                log(warning)
        resuming = _prepare_run_dir(out_dir, config, opts.overwrite)

        run = _build_run(config, spec, splits, dev)
        n_params = count_parameters(run.model)
        log(_start_line(run, spec, splits, options_record, n_params, dev))
        if resuming:
            _restore_last(run, out_dir, dev)
            log(_continue_line(run, out_dir, opts.epochs))
        else:
            write_json(run_file(out_dir, CONFIG), config)

        _train_epochs(run, splits, config, out_dir, dev, log, callback)
        return _finish_run(run, splits, config, out_dir, n_params, t0, dev)
