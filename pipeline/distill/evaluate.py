"""Scoring a trained student on a store: metrics, prediction, run loading, complexity.

A run directory is self-contained (``config.json`` + ``best.pt``), so a student trained on one
store can be evaluated on any other store whose student inputs were computed the same way
(log-mel parameters and segment) and whose classes are the same; anything else is refused with
the difference spelled out, since the scores would be meaningless.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np
import torch
from sklearn.metrics import accuracy_score, f1_score

from eastkd.pipeline.core import registry
from eastkd.pipeline.core.device import resolve_device
from eastkd.pipeline.core.metrics import multilabel_scores
from eastkd.pipeline.core.reading import FEATURES, SplitData, load_split
from eastkd.pipeline.distill.complexity import count_macs, count_parameters, cpu_ms_per_clip
from eastkd.pipeline.runs.rundir import BEST, CONFIG, read_config, run_file
from eastkd.store import EastkdError, Store, StoreMismatchError, open_store



def selection_metric(multi_label: bool) -> str:
    """The validation metric that picks the best epoch: mAP (= PR-AUC) or accuracy."""
    return "pr_auc" if multi_label else "accuracy"


def compute_metrics(logits: np.ndarray, labels: np.ndarray, multi_label: bool) -> dict[str, float]:
    """Single-label: accuracy and macro-F1. Multi-label: macro ROC-AUC and PR-AUC (= mAP), as
    defined once in :func:`eastkd.pipeline.core.metrics.multilabel_scores`."""
    logits = np.asarray(logits, dtype=np.float64)
    labels = np.asarray(labels)
    if len(labels) == 0:
        return {}
    if not multi_label:
        pred = logits.argmax(axis=1)
        classes = list(range(logits.shape[1]))
        return {"accuracy": float(accuracy_score(labels, pred)),
                "macro_f1": float(f1_score(labels, pred, labels=classes, average="macro",
                                           zero_division=0))}
    s = multilabel_scores(labels, logits)  # rank metrics: logits rank as probabilities do
    return {"roc_auc": s["roc_auc"], "pr_auc": s["map"]}


@torch.no_grad()
def predict(model: torch.nn.Module, data: SplitData, device: torch.device,
            batch_size: int = 64) -> tuple[torch.Tensor, torch.Tensor]:
    """Eval-mode logits (on the CPU) and labels of every item of ``data``, in store order."""
    was_training = model.training
    model.eval()
    logits, labels = [], []
    try:
        for batch in data.batches(batch_size):
            logits.append(model(batch.x.to(device, non_blocking=True)).logits.float().cpu())
            labels.append(batch.y)
    finally:
        model.train(was_training)
    if not logits:
        return torch.empty(0), torch.empty(0)
    return torch.cat(logits), torch.cat(labels)


def load_run(run_dir: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """``config.json`` and the ``best.pt`` checkpoint of a finished (or running) distill run."""
    best_path = run_file(run_dir, BEST)
    if not os.path.isfile(run_file(run_dir, CONFIG)) or not os.path.isfile(best_path):
        raise EastkdError(f"{run_dir}: not a distill run directory (needs {CONFIG} and {BEST}); "
                          "train one with `eastkd distill`")
    config = read_config(run_dir)
    ckpt = torch.load(best_path, map_location="cpu", weights_only=True)
    return config, ckpt


def build_student(config: dict[str, Any]) -> torch.nn.Module:
    """An untrained student of the run's architecture and sizes."""
    opts = config["options"]
    return registry.students.create(opts["student"], n_mels=int(config["n_mels"]),
                                    n_classes=len(config["class_names"]),
                                    width=int(opts.get("width", 16)))


def _input_flags(config: dict[str, Any]) -> str:
    """The extract flags that reproduce a run's student inputs."""
    from eastkd.pipeline.runs.like import read_student_inputs_from_config

    try:
        return read_student_inputs_from_config(config, "run").flags()
    except EastkdError:
        return "--segment, --crop, --n-mels, --student-sr"


def check_compatible(config: dict[str, Any], store: Store, run_dir: str = "RUN_DIR") -> None:
    """Refuse a store whose student inputs or classes differ from those the run trained on."""
    attrs = store.features(FEATURES).attrs
    theirs = {"logmel": attrs.get("params", {}), "segment": attrs.get("segment", {})}
    diffs = []
    for part in ("logmel", "segment"):
        a, b = config.get(part, {}), theirs[part]
        for k in sorted(set(a) | set(b)):
            if a.get(k) != b.get(k):
                diffs.append(f"{part} {k}: run {a.get(k)!r}, store {b.get(k)!r}")
    if diffs:
        raise StoreMismatchError(
            f"{store.path}: student inputs differ from the run's ({'; '.join(diffs)}); extract "
            f"this dataset again into a new store with `eastkd extract DATASET STORE --like "
            f"{run_dir}` (the same as {_input_flags(config)})")
    items = store.items
    if list(items.class_names) != list(config["class_names"]):
        raise StoreMismatchError(
            f"{store.path}: classes differ from the run's (run: {', '.join(config['class_names'])};"
            f" store: {', '.join(items.class_names)}); evaluate on a store of the same classes")
    if bool(items.multi_label) != bool(config["multi_label"]):
        raise StoreMismatchError(f"{store.path}: multi_label={items.multi_label} but the run was "
                                 f"trained with multi_label={config['multi_label']}")


def _teacher_info(config: dict[str, Any], store: Store) -> dict[str, Any] | None:
    """The teacher the run learned from (recorded at distill time), else the store's only one."""
    if config.get("teacher"):
        return config["teacher"]
    keys = store.section_names("embeddings")
    if len(keys) == 1:
        a = store.embeddings(keys[0]).attrs
        if a.get("teacher_parameters"):
            return {"name": a.get("teacher"), "parameters": int(a["teacher_parameters"]),
                    "embeddings": keys[0]}
    return None


def complexity(model: torch.nn.Module, n_mels: int, n_frames: int,
               teacher: dict[str, Any] | None = None, repeats: int = 10) -> dict[str, Any]:
    """Student parameters, MACs and single-thread CPU milliseconds per clip (batch of one),
    and the teacher's parameters and the teacher/student parameter ratio where known."""
    x = torch.zeros(1, n_mels, n_frames)
    model = model.to("cpu")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # one thread: the stable, comparable figure on a shared machine
    try:
        ms = cpu_ms_per_clip(model, x, repeats=repeats, warmup=2)
    finally:
        torch.set_num_threads(threads)
    out: dict[str, Any] = {
        "student_parameters": count_parameters(model),
        "student_macs_per_clip": count_macs(model, x),
        "student_cpu_ms_per_clip": round(ms, 3), "cpu_threads": 1,
        "teacher": None, "teacher_parameters": None, "parameter_ratio": None,
    }
    if teacher and teacher.get("parameters"):
        out["teacher"] = teacher.get("name")
        out["teacher_parameters"] = int(teacher["parameters"])
        out["parameter_ratio"] = round(out["teacher_parameters"] / out["student_parameters"], 2)
    return out


def evaluate(run_dir: str, store_path: str, split: str = "test", fold: int | None = None,
             device: str = "auto", batch_size: int = 64) -> dict[str, Any]:
    """Metrics of the run's best student on ``split`` of the store (``all`` for every item).

    ``fold`` re-derives the splits from ``items.extra['fold']``; by default the run's own fold
    is used on stores that have that column.

    Returns ``{"metrics", "n_items", "split", "store", "run_dir", "complexity"}``.
    """
    config, ckpt = load_run(run_dir)
    dev = resolve_device(device)
    with open_store(store_path, "r") as store:
        check_compatible(config, store, run_dir)
        if fold is None and "fold" in store.items.extra:  # the run's own fold split by default
            fold = config["options"].get("fold")
        data = load_split(store, split, None, fold, pin_memory=dev.type == "cuda")
        if len(data) == 0:
            have = ", ".join(sorted(set(store.items.splits)))
            raise EastkdError(f"{store_path}: split {split!r} has no usable items (splits: "
                              f"{have}); choose another with --split")
        model = build_student(config)
        model.load_state_dict(ckpt["student"])
        model.to(dev)
        logits, labels = predict(model, data, dev, batch_size)
        data.close()
        teacher = _teacher_info(config, store)
        n_frames = data.input_shape[1]
    metrics = compute_metrics(logits.numpy(), labels.numpy(), config["multi_label"])
    return {
        "metrics": metrics, "n_items": len(data), "split": split, "fold": fold,
        "store": store_path, "run_dir": run_dir, "best_epoch": ckpt.get("epoch"),
        "complexity": complexity(model, int(config["n_mels"]), n_frames, teacher),
    }
