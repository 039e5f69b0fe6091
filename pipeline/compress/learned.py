"""The learned teacher transformation of Ding & Lerch (2024), fitted in two stages: a linear map
D -> d trained offline, before distillation, with the target task's labels through a linear
classifier d -> C; the targets are then fixed. (The paper trains the transformation jointly with
the student: that is ``distill --teacher-linear``.)

Only the map and the classifier are trained; the teacher embeddings are fixed inputs read from
the store and streamed in batches through :mod:`eastkd.pipeline.core.reading` (held in memory only
while the split fits ``memory_limit``). Inputs are standardised with the fit split's mean and
std (streaming float64 moments). Training uses AdamW on minibatches (CPU, seeded: the same call
gives the same weights), cross-entropy for single-label
and BCE-with-logits for multi-label data, and stops early on the validation split (accuracy, or
mAP for multi-label: :func:`eastkd.pipeline.core.metrics.multilabel_scores`), keeping the best
epoch's weights. The targets are the map's outputs.
"""

from __future__ import annotations

import copy
import math
from typing import Any

import numpy as np
import torch
from torch import nn

from eastkd.pipeline.core.metrics import multilabel_scores
from eastkd.pipeline.core.reading import DEFAULT_MEMORY_LIMIT, RowStream
from eastkd.progress import Progress, progress_bar
from eastkd.store import EastkdError, ItemsTable, StoreArray


class LearnedCompressor:
    """Linear teacher transformation trained through a linear probe on the task labels."""

    method = "learned"
    uses_valid_rows = True  # early stopping: compress records which rows (run.py)

    def __init__(self, dim: int | float, whiten: bool = False, seed: int = 0, epochs: int = 100,
                 patience: int = 10, batch_size: int = 64, lr: float = 1e-3,
                 weight_decay: float = 1e-4, memory_limit: int = DEFAULT_MEMORY_LIMIT,
                 **_unused: Any) -> None:
        if whiten:
            raise EastkdError("--whiten applies to --method pca only; drop it for learned")
        if isinstance(dim, float) or int(dim) < 1:
            raise EastkdError(f"--dim {dim}: the learned transformation needs a whole number "
                              "of dimensions (fractions of variance are for PCA)")
        if epochs < 1 or patience < 1 or batch_size < 1:
            raise EastkdError("--epochs, patience and batch size must be at least 1")
        self.dim = int(dim)
        self.seed, self.epochs, self.patience = int(seed), int(epochs), int(patience)
        self.batch_size, self.lr = int(batch_size), float(lr)
        self.weight_decay = float(weight_decay)
        self.memory_limit = int(memory_limit)  # how it reads, not what it computes
        self.mean_: np.ndarray | None = None
        self.std_: np.ndarray | None = None
        self.map_: nn.Linear | None = None
        self.head_: nn.Linear | None = None
        self.curve: list[dict[str, float]] = []
        self.best_epoch = 0
        self.early_stopped = False
        self.n_rows = 0
        self._probe: dict[str, Any] = {}

    def identity(self) -> dict[str, Any]:
        return {"dim": self.dim, "seed": self.seed, "epochs": self.epochs,
                "patience": self.patience, "batch_size": self.batch_size, "lr": self.lr,
                "weight_decay": self.weight_decay}

    @property
    def out_dim(self) -> int:
        return self.dim

    # -- data ----------------------------------------------------------------------------------
    @staticmethod
    def _targets(items: ItemsTable, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(labelled rows, targets): class indices or multi-hot float rows; unlabelled rows
        (and single-label rows without exactly one class) are left out."""
        rows = rows[items.labelled_mask[rows]]
        if items.multi_label:
            return rows, items.labels[rows].astype(np.float32)
        lab = items.label[rows]
        keep = lab >= 0
        return rows[keep], lab[keep].astype(np.int64)

    # -- fitting -------------------------------------------------------------------------------
    def fit(self, source: StoreArray, rows: np.ndarray, items: ItemsTable | None = None,
            valid_rows: np.ndarray | None = None,
            progress: Progress = False) -> "LearnedCompressor":
        """Train on ``source[rows]`` with ``items``' labels; early-stop on ``valid_rows``."""
        if items is None or len(items.class_names) < (1 if items.multi_label else 2):
            raise EastkdError("the learned transformation needs class labels (at least 2 "
                              "classes); this dataset has none: use --method pca")
        rows, y = self._targets(items, np.asarray(rows, dtype=np.int64))
        if rows.size == 0:
            raise EastkdError("no fit rows carry a label; the learned transformation needs "
                              "labelled training items")
        vrows = np.asarray(valid_rows if valid_rows is not None else [], dtype=np.int64)
        vrows, vy = self._targets(items, vrows)
        if len(source.shape) != 2:
            raise EastkdError(f"{source.path}: the learned transformation needs clip-level "
                              "(items x dims) embeddings")

        def stream(r: np.ndarray) -> RowStream:
            return RowStream({"x": source}, r, memory_limit=self.memory_limit, workers=0)

        return self.fit_streams(stream(rows), y, stream(vrows) if vrows.size else None,
                                vy if vrows.size else None, items.multi_label,
                                len(items.class_names), progress)

    def fit_streams(self, train: RowStream, y: np.ndarray, valid: RowStream | None,
                    vy: np.ndarray | None, multi_label: bool, n_classes: int,
                    progress: Progress = False) -> "LearnedCompressor":
        """Train on row streams (array ``x``) with labels ``y``/``vy`` per stream row."""
        m = train.moments("x")
        finite = np.isfinite(m.m2).all() and (valid is None or np.isfinite(
            valid.moments("x").m2).all())
        if not finite:
            raise EastkdError("embeddings contain NaN/inf; re-extract them (--dtype float32)")
        self.n_rows = len(train)
        std = np.sqrt(m.var)
        std[std < 1e-8] = 1.0
        self.mean_, self.std_ = m.mean.astype(np.float32), std.astype(np.float32)

        threads = torch.get_num_threads()
        torch.set_num_threads(1)  # same bits on any machine, and fastest for these small layers
        try:
            return self._train(train, torch.from_numpy(y), valid, vy, multi_label, n_classes,
                               progress)
        finally:
            torch.set_num_threads(threads)

    def _standardised(self, x: torch.Tensor) -> torch.Tensor:
        return (x - torch.from_numpy(self.mean_)) / torch.from_numpy(self.std_)

    def _train(self, train: RowStream, yt: torch.Tensor, valid: RowStream | None,
               vy: np.ndarray | None, multi_label: bool, n_classes: int,
               progress: Progress) -> "LearnedCompressor":
        loss_fn: nn.Module = nn.BCEWithLogitsLoss() if multi_label else nn.CrossEntropyLoss()
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.seed)
            model = nn.Sequential(nn.Linear(train.shapes["x"][0], self.dim),
                                  nn.Linear(self.dim, n_classes))
        gen = torch.Generator().manual_seed(self.seed)
        opt = torch.optim.AdamW(model.parameters(), lr=self.lr, weight_decay=self.weight_decay)
        metric_name = "map" if multi_label else "accuracy"
        best: tuple[float, float] = (-math.inf, -math.inf)
        best_state, bad = copy.deepcopy(model.state_dict()), 0
        self.curve, self.early_stopped = [], False
        bar = progress_bar(range(1, self.epochs + 1), desc="learned fit", unit="epoch",
                           progress=progress)
        for epoch in bar:
            model.train()
            total = torch.zeros((), dtype=torch.float64)
            for b in train.batches(self.batch_size, gen):
                loss = loss_fn(model(self._standardised(b["x"])), yt[b["pos"]])
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                total += loss.detach() * len(b["pos"])
            point = {"epoch": epoch, "train_loss": float(total) / len(train)}
            if valid is not None:
                assert vy is not None
                point.update(self._evaluate(model, self._logits(model, valid), vy, multi_label,
                                            loss_fn))
                metric = point["valid_" + metric_name]
                # ties (frequent with small valid sets) go to the lower valid loss; no class with
                # positives in valid: the loss alone decides
                score = (-math.inf if math.isnan(metric) else metric, -point["valid_loss"])
            else:
                score = (float(epoch), 0.0)  # nothing to stop on: keep the last epoch
            self.curve.append(point)
            if score > best:
                best, best_state, bad, self.best_epoch = score, copy.deepcopy(
                    model.state_dict()), 0, epoch
            else:
                bad += 1
                if bad >= self.patience:
                    self.early_stopped = True
                    break
            bar.set_postfix({k: f"{v:.3f}" for k, v in point.items() if k != "epoch"},
                            refresh=False)
        bar.close()
        model.load_state_dict(best_state)
        model.eval()
        self.map_, self.head_ = model[0], model[1]
        best_point = self.curve[self.best_epoch - 1]
        self._probe = {
            "name": metric_name,
            "split": "valid",
            "value": best_point.get("valid_" + metric_name),
            "rows": 0 if valid is None else len(valid),
            "chance": self._chance(yt.numpy() if vy is None else vy, multi_label, n_classes),
        }
        if multi_label and valid is not None:
            self._probe["roc_auc"] = best_point["valid_roc_auc"]
        return self

    def _logits(self, model: nn.Module, valid: RowStream) -> torch.Tensor:
        """Eval-mode logits of every row of ``valid``, in order (one batch when resident)."""
        model.eval()
        step = len(valid) if valid.in_memory else valid.window_units * valid.unit
        with torch.no_grad():
            return torch.cat([model(self._standardised(b["x"]))
                              for b in valid.batches(max(1, step))])

    @staticmethod
    def _evaluate(model: nn.Module, logits: torch.Tensor, vy: np.ndarray, multi_label: bool,
                  loss_fn: nn.Module) -> dict[str, float]:
        with torch.no_grad():
            loss = float(loss_fn(logits, torch.from_numpy(vy)))
        out = {"valid_loss": loss}
        if multi_label:
            s = multilabel_scores(vy, torch.sigmoid(logits).numpy())
            out.update({"valid_map": s["map"], "valid_roc_auc": s["roc_auc"]})
        else:
            out["valid_accuracy"] = float((logits.argmax(dim=1).numpy() == vy).mean())
        return out

    @staticmethod
    def _chance(y: np.ndarray, multi_label: bool, n_classes: int) -> float:
        """Score of a constant guess: majority-class accuracy, or mAP of random scores."""
        if multi_label:
            pos = y.mean(axis=0)
            return float(pos[pos > 0].mean()) if (pos > 0).any() else math.nan
        return float(np.bincount(y, minlength=n_classes).max() / len(y))

    # -- results -------------------------------------------------------------------------------
    def transform(self, x: np.ndarray) -> np.ndarray:
        """(k, D) embeddings -> (k, d) float32: the map applied to standardised inputs."""
        p = self.params()
        x = np.asarray(x, dtype=np.float32).reshape(len(x), -1)
        x = (x - p["input_mean"]) / p["input_std"]
        return (x @ p["weight"].T + p["bias"]).astype(np.float32)

    def params(self) -> dict[str, np.ndarray]:
        if self.map_ is None or self.head_ is None:
            raise RuntimeError("fit first")
        return {
            "weight": self.map_.weight.detach().numpy().copy(),
            "bias": self.map_.bias.detach().numpy().copy(),
            "classifier_weight": self.head_.weight.detach().numpy().copy(),
            "classifier_bias": self.head_.bias.detach().numpy().copy(),
            "input_mean": self.mean_,
            "input_std": self.std_,
        }

    def summary(self) -> dict[str, Any]:
        return {
            "probe_metric": self._probe,
            "best_epoch": self.best_epoch,
            "epochs_run": len(self.curve),
            "early_stopped": self.early_stopped,
            "fit_rows": self.n_rows,
            "learning_curve": self.curve,
            "optimizer": {"name": "AdamW", "lr": self.lr, "weight_decay": self.weight_decay,
                          "batch_size": self.batch_size},
        }

    @staticmethod
    def plot(fig: Any, attrs: dict[str, Any], params: dict[str, np.ndarray]) -> None:
        """Per-epoch train/valid loss and the validation metric, best epoch marked."""
        curve = attrs["learning_curve"]
        ep = [p["epoch"] for p in curve]
        ax = fig.add_subplot(1, 1, 1)
        ax.plot(ep, [p["train_loss"] for p in curve], color="C0", label="train loss")
        if curve and "valid_loss" in curve[0]:
            ax.plot(ep, [p["valid_loss"] for p in curve], color="C1", label="valid loss")
        ax.set_xlabel("epoch")
        ax.set_ylabel("loss")
        ax.grid(True, alpha=0.3)
        lines, labels = ax.get_legend_handles_labels()
        probe = attrs.get("probe_metric") or {}
        metric = probe.get("name", "")
        if curve and f"valid_{metric}" in curve[0]:
            ax2 = ax.twinx()
            ax2.plot(ep, [p[f"valid_{metric}"] for p in curve], color="C2",
                     label=f"valid {metric}")
            if probe.get("chance") is not None:
                ax2.axhline(probe["chance"], color="C2", ls=":", lw=1, label="chance")
            ax2.set_ylabel(f"valid {metric}")
            ax2.set_ylim(0, 1.02)
            l2, lab2 = ax2.get_legend_handles_labels()
            lines, labels = lines + l2, labels + lab2
        best = attrs.get("best_epoch")
        if best:
            ax.axvline(best, color="C3", ls="--", lw=1)
            lines.append(ax.lines[-1])
            labels.append(f"best epoch {best}")
        ax.legend(lines, labels, loc="center right")
        ax.set_title(f"learned {attrs['input_dim']} -> {attrs['dim']} on {attrs['source']}"
                     f" ({attrs['fit_rows']} {attrs['fit_split']} rows)")
