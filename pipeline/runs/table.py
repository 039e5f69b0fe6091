"""``eastkd runs DIR``: one table of every distill run under a folder.

A run is a folder holding ``config.json`` and ``metrics.json`` (written by ``eastkd distill``
when it finishes). Runs that differ only in ``--seed`` form one *setting*; each setting's
metrics are given as mean ± sample standard deviation over its seeds.

Runs distilled from a linear probe's targets (``compress --method probe``, which records the
probe's own valid and test scores as ``probe_scores``) get a *reference* setting just before
their first setting: ``kd`` ``probe (reference)``, the probe's scores, no seeds. It is the line a
KD table needs: what the teacher's linear probe reaches on the same splits.
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
SETTING_KEYS = ("dataset", "teacher", "targets", "kd", "lambda", "temperature",
                "teacher_linear", "student", "width", "epochs", "fold")
PROBE_REFERENCE = "probe (reference)"


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
        "temperature": opts.get("temperature"),
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


def probe_reference(run_dir: str) -> dict[str, Any] | None:
    """The reference setting of a run's probe targets (their recorded ``probe_scores``), or
    None when its targets are not a probe's."""
    config = read_config(run_dir)
    targets = config.get("targets") or {}
    scores = (targets.get("attrs") or {}).get("probe_scores")
    if not scores:
        return None
    ref: dict[str, Any] = dict.fromkeys(SETTING_KEYS)
    ref.update(dataset=(config.get("store") or {}).get("dataset"),
               teacher=(config.get("teacher") or {}).get("name"),
               targets=_targets_label(targets), kd=PROBE_REFERENCE,
               fold=(config.get("options") or {}).get("fold"),
               seeds=[], runs=[], parameters=None, reference=True)
    for split, metrics in scores.items():
        for k, v in metrics.items():
            if k != "rows" and isinstance(v, (int, float)):
                ref[f"{split}_{k}"] = {"mean": float(v), "std": 0.0, "n": 1}
    return ref


def _with_references(settings: list[dict[str, Any]],
                     dirs: list[str]) -> list[dict[str, Any]]:
    """``settings`` with each probe reference just before the first setting of its targets."""
    def key(s: dict[str, Any]) -> str:
        return json.dumps([s.get(k) for k in ("dataset", "targets", "fold")])

    refs: dict[str, dict[str, Any]] = {}
    for d in dirs:
        ref = probe_reference(d)
        if ref is not None:
            refs.setdefault(key(ref), ref)
    out = []
    for s in settings:
        ref = refs.pop(key(s), None)
        out += [ref, s] if ref is not None else [s]
    return out


def runs_table(root: str, select: Callable[[str], bool] | None = None) -> RunsTable:
    """Every finished run under ``root`` and its settings (grouped over seeds), in path order.

    ``select`` keeps only the runs whose path relative to ``root`` it accepts.
    """
    if not os.path.isdir(root):
        raise EastkdError(f"{root}: no such folder; give the folder holding your RUN_DIRs")
    dirs = [d for d in _run_dirs(root) if select is None or select(os.path.relpath(d, root))]
    rows = [read_run(d, root) for d in dirs]
    if not rows:
        raise EastkdError(f"{root}: holds no finished run (a folder with {CONFIG} and "
                          f"{METRICS}, written by `eastkd distill`)")
    keys = _metric_keys(rows)
    groups: dict[tuple[Any, ...], list[dict[str, Any]]] = {}
    for r in rows:
        groups.setdefault(tuple(json.dumps(r[k]) for k in SETTING_KEYS), []).append(r)
    settings = [_setting(g, keys) for g in groups.values()]
    return RunsTable(root, rows, _with_references(settings, dirs))


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


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}" + ("" if n == 1 else "s")


def _columns(table: RunsTable, per_run: bool) -> list[str]:
    rows = table.runs if per_run else [s for s in table.settings if not s.get("reference")]
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
    # a setting's seeds column is how many seeds it has (the seeds themselves: --per-run)
    cells += [[str(len(r["seeds"])) if c == "seeds" else _cell(r.get(c)) for c in cols]
              for r in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(cols))]
    lines = ["  ".join(v.ljust(w) for v, w in zip(row, widths)).rstrip() for row in cells]
    trained = [s for s in table.settings if not s.get("reference")]
    n_seeds = sorted({len(s["seeds"]) for s in trained})
    seeds = "/".join(map(str, n_seeds))
    head = (f"{_count(len(table.runs), 'run')}, {_count(len(trained), 'setting')} "
            f"under {table.root}"
            + ("" if per_run else f"; metrics: mean ± std over seeds ({seeds} per setting)"))
    constant = [] if per_run else [
        f"{k}={_cell(trained[0].get(k))}" for k in SETTING_KEYS
        if k not in cols and trained[0].get(k) is not None]
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
