"""The run folder (RUN_DIR) of ``eastkd distill``: the one place that names its files and reads
and writes them. Each file is written atomically (temp file + rename): a run killed while
writing keeps the previous version of every file.

    config.json   every option, the store, log-mel settings, classes, targets, teacher
    best.pt       weights of the best epoch        last.pt       resume state after an epoch
    metrics.json  the finished run's metrics       history.csv   one row per epoch
    curves.png    losses and validation metric per epoch
"""

from __future__ import annotations

import csv
import json
import os
from typing import Any

import torch

from eastkd.errors import EastkdError

CONFIG, BEST, LAST = "config.json", "best.pt", "last.pt"
METRICS, HISTORY, CURVES = "metrics.json", "history.csv", "curves.png"
RUN_FILES = (CONFIG, BEST, LAST, METRICS, HISTORY, CURVES)


def run_file(run_dir: str, name: str) -> str:
    """The path of one of the run's files (``name`` one of :data:`RUN_FILES`)."""
    return os.path.join(run_dir, name)


def is_finished(run_dir: str) -> bool:
    """Whether RUN_DIR holds a finished run (its config and final metrics)."""
    return all(os.path.isfile(run_file(run_dir, n)) for n in (CONFIG, METRICS))


def finished_epochs(run_dir: str) -> int:
    """How many epochs of the run in RUN_DIR are kept (in last.pt): where rerunning the same
    command continues; 0 without a last.pt."""
    path = run_file(run_dir, LAST)
    if not os.path.isfile(path):
        return 0
    return int(torch.load(path, map_location="cpu", weights_only=True)["state"]["epoch"])


def read_json(path: str) -> dict[str, Any]:
    """A JSON file of a run; an unreadable one is a one-line error."""
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except (OSError, json.JSONDecodeError) as e:
        raise EastkdError(f"{path}: unreadable ({e}); remove the run or train it again") from None


def read_config(run_dir: str) -> dict[str, Any]:
    return read_json(run_file(run_dir, CONFIG))


def read_metrics(run_dir: str) -> dict[str, Any]:
    return read_json(run_file(run_dir, METRICS))


def save_atomic(obj: Any, path: str) -> None:
    tmp = f"{path}.partial"
    torch.save(obj, tmp)
    os.replace(tmp, path)


def write_json(path: str, obj: Any) -> None:
    tmp = f"{path}.partial"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(obj, f, indent=2, default=lambda o: o.item() if hasattr(o, "item") else str(o))
        f.write("\n")
    os.replace(tmp, path)


def write_history(path: str, history: list[dict[str, Any]]) -> None:
    """history.csv: one row per epoch (losses, validation metrics, learning rate, seconds)."""
    keys = list(dict.fromkeys(k for rec in history for k in rec))
    tmp = f"{path}.partial"
    with open(tmp, "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=keys)
        writer.writeheader()
        writer.writerows(history)
    os.replace(tmp, path)


def plot_curves(path: str, history: list[dict[str, Any]], metric: str) -> None:
    """curves.png: training/validation losses and the validation metric per epoch."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ep = [r["epoch"] for r in history]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4))
    try:
        for key in ("train_loss", "train_task", "train_kd", "train_teacher", "valid_loss"):
            if key in history[0]:
                ax1.plot(ep, [r[key] for r in history], label=key, ls="--" if "valid" in key
                         else "-")
        ax1.set_xlabel("epoch")
        ax1.set_ylabel("loss")
        ax1.legend(fontsize=8)
        ax2.plot(ep, [r.get(f"valid_{metric}") for r in history], color="C3")
        best = [r["epoch"] for r in history if r.get("best")]
        if best:
            ax2.axvline(best[-1], color="grey", ls=":", label=f"best (epoch {best[-1]})")
            ax2.legend(fontsize=8)
        ax2.set_xlabel("epoch")
        ax2.set_ylabel(f"valid {metric}")
        fig.tight_layout()
        fig.savefig(path, dpi=100)
    finally:
        plt.close(fig)
