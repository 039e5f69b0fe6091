"""``eastkd runs DIR``: one table of every distill run under a folder.

A run is a folder holding ``config.json`` and ``metrics.json`` (written by ``eastkd distill``
when it finishes). Runs that differ only in ``--seed`` form one *setting*; each setting's
metrics are given as mean ± sample standard deviation over its seeds.
"""

from __future__ import annotations

import csv
import io
import json
import os
import statistics
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from eastkd.errors import EastkdError
from eastkd.pipeline.runs.rundir import CONFIG, METRICS, read_config, read_metrics

# the columns that name a setting (everything that decides a run except its seed)
SETTING_KEYS = ("dataset", "teacher", "targets", "kd", "lambda", "teacher_linear", "student",
                "width", "epochs", "fold")


@dataclass
class RunsTable:
    """Every run (one dict each) and every setting (runs grouped over seeds)."""

    root: str
    runs: list[dict[str, Any]] = field(default_factory=list)
    settings: list[dict[str, Any]] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {"root": self.root, "settings": self.settings, "runs": self.runs}


def _run_dirs(root: str) -> Iterator[str]:
    for folder, dirs, files in os.walk(root):
        dirs.sort()
        if CONFIG in files and METRICS in files:
            yield folder


def _targets_label(targets: dict[str, Any]) -> str | None:
    """``raw <key>`` for embeddings, ``<method>-<dim> of <key>`` for compressed targets: the
    targets' settings rather than their name, so that runs whose targets were fitted with their
    own seed (e.g. ``learned32-s0``, ``learned32-s1``) form one setting."""
    section = targets.get("section")
    if not section:
        return None
    attrs = targets.get("attrs") or {}
    frames = " frames" if targets.get("frame_level") else ""
    if section.startswith("targets/") and attrs.get("method"):
        whiten = " whitened" if attrs.get("whiten") else ""
        return f"{attrs['method']}-{attrs.get('dim')}{whiten} of {attrs.get('source')}{frames}"
    return f"raw {section.split('/', 1)[-1]}{frames}"


def read_run(run_dir: str, root: str) -> dict[str, Any]:
    """One row: the run's setting, seed, metrics and student parameters."""
    config, metrics = read_config(run_dir), read_metrics(run_dir)
    opts = config.get("options", {})
    targets = config.get("targets") or {}
    teacher = (config.get("teacher") or {}).get("name")
    linear = opts.get("teacher_linear_dim") or ("yes" if opts.get("teacher_linear") else None)
    row: dict[str, Any] = {
        "run": os.path.relpath(run_dir, root),
        "dataset": (config.get("store") or {}).get("dataset"),
        "teacher": teacher if opts.get("kd") != "none" else None,
        "targets": _targets_label(targets),
        "kd": opts.get("kd"),
        "lambda": opts.get("lambda"),
        "teacher_linear": linear,
        "student": opts.get("student"),
        "width": opts.get("width"),
        "epochs": opts.get("epochs"),
        "fold": opts.get("fold"),
        "seed": opts.get("seed"),
        "best_epoch": metrics.get("best_epoch"),
        "parameters": metrics.get("student_parameters"),
    }
    for split in ("valid", "test"):
        for k, v in (metrics.get(split) or {}).items():
            if k != "loss" and isinstance(v, (int, float)):
                row[f"{split}_{k}"] = float(v)
    return row


def _metric_keys(rows: list[dict[str, Any]]) -> list[str]:
    keys = dict.fromkeys(k for r in rows for k in r if k.startswith(("valid_", "test_")))
    return sorted(keys, key=lambda k: (not k.startswith("valid_"), k))


def _setting(rows: list[dict[str, Any]], metric_keys: list[str]) -> dict[str, Any]:
    out: dict[str, Any] = {k: rows[0][k] for k in SETTING_KEYS}
    out["seeds"] = sorted(r["seed"] for r in rows)
    out["runs"] = [r["run"] for r in rows]
    out["parameters"] = rows[0]["parameters"]
    for k in metric_keys:
        vals = [r[k] for r in rows if k in r]
        if vals:
            out[k] = {"mean": statistics.fmean(vals),
                      "std": statistics.stdev(vals) if len(vals) > 1 else 0.0, "n": len(vals)}
    return out


def runs_table(root: str, select: Callable[[str], bool] | None = None) -> RunsTable:
    """Every finished run under ``root`` and its settings (grouped over seeds), in path order.

    ``select`` keeps only the runs whose path relative to ``root`` it accepts.
    """
    if not os.path.isdir(root):
        raise EastkdError(f"{root}: no such folder; give the folder holding your RUN_DIRs")
    rows = [read_run(d, root) for d in _run_dirs(root)
            if select is None or select(os.path.relpath(d, root))]
    if not rows:
        raise EastkdError(f"{root}: holds no finished run (a folder with {CONFIG} and "
                          f"{METRICS}, written by `eastkd distill`)")
    keys = _metric_keys(rows)
    groups: dict[tuple[Any, ...], list[dict[str, Any]]] = {}
    for r in rows:
        groups.setdefault(tuple(json.dumps(r[k]) for k in SETTING_KEYS), []).append(r)
    return RunsTable(root, rows, [_setting(g, keys) for g in groups.values()])


# ---------------------------------------------------------------------------------------------
# rendering


def _cell(v: Any) -> str:
    if v is None:
        return "-"
    if isinstance(v, dict):
        return f"{v['mean']:.3f} ± {v['std']:.3f}" if v["n"] > 1 else f"{v['mean']:.3f}"
    if isinstance(v, float):
        return f"{v:.3f}" if abs(v) < 1000 else f"{v:.0f}"
    if isinstance(v, list):
        return ",".join(map(str, v))
    return str(v)


def _columns(table: RunsTable, per_run: bool) -> list[str]:
    rows = table.runs if per_run else table.settings
    shown = [k for k in SETTING_KEYS if any(r.get(k) is not None for r in rows)]
    if not per_run:  # a column that is the same everywhere says little: keep it to the header
        shown = [k for k in shown if k in ("teacher", "targets", "kd")
                 or len({json.dumps(r.get(k)) for r in rows}) > 1]
    lead = ["run", *shown, "seed", "best_epoch"] if per_run else [*shown, "seeds"]
    return lead + _metric_keys(table.runs) + ["parameters"]


def render_text(table: RunsTable, per_run: bool = False) -> str:
    """An aligned text table (settings with mean ± std over seeds, or one row per run)."""
    rows = table.runs if per_run else table.settings
    cols = _columns(table, per_run)
    cells = [[c.replace("_", " ") for c in cols]]
    cells += [[_cell(r.get(c)) for c in cols] for r in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(cols))]
    lines = ["  ".join(v.ljust(w) for v, w in zip(row, widths)).rstrip() for row in cells]
    n_seeds = sorted({len(s["seeds"]) for s in table.settings})
    head = (f"{len(table.runs)} runs, {len(table.settings)} settings under {table.root}"
            + ("" if per_run else f"; metrics: mean ± std over seeds ({'/'.join(map(str, n_seeds))}"
               " per setting)"))
    constant = [] if per_run else [
        f"{k}={_cell(table.settings[0].get(k))}" for k in SETTING_KEYS
        if k not in cols and table.settings[0].get(k) is not None]
    if constant:
        head += "\nall settings: " + ", ".join(constant)
    return head + "\n" + "\n".join(lines)


def render_csv(table: RunsTable, per_run: bool = False) -> str:
    """CSV: one row per setting (``<metric>_mean``/``_std`` columns) or per run."""
    rows = table.runs if per_run else table.settings
    keys = _metric_keys(table.runs)
    lead = (["run", *SETTING_KEYS, "seed", "best_epoch"] if per_run
            else [*SETTING_KEYS, "seeds", "runs"])
    metric_cols = keys if per_run else [f"{k}_{s}" for k in keys for s in ("mean", "std")]
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(lead + metric_cols + ["parameters"])
    for r in rows:
        vals = [";".join(map(str, r[k])) if isinstance(r.get(k), list) else r.get(k)
                for k in lead]
        if per_run:
            vals += [r.get(k) for k in keys]
        else:
            vals += [(r.get(k) or {}).get(s) for k in keys for s in ("mean", "std")]
        writer.writerow(["" if v is None else v for v in vals] + [r.get("parameters")])
    return buf.getvalue()
