"""distill / evaluate on the real demo store (80 rendered clips, 5 classes, crepe-tiny targets):
students beat chance, targets from embeddings and targets sections, teacher-linear, resume and
determinism, the block loader, evaluation on other stores and refusals, the teacher never
imported, and the CLI."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from conftest import extract_demo

from eastkd.cli.main import cli
from eastkd.pipeline.core.features import LogMelParams
from eastkd.pipeline.core.reading import chunk_groups, load_split, resolve_targets
from eastkd.pipeline.distill.evaluate import evaluate
from eastkd.pipeline.distill.train import LAST, distill
from eastkd.pipeline.runs.rundir import finished_epochs
from eastkd.store import OK, SKIPPED, ArraySpec, EastkdError, StoreMismatchError, open_store

TEACHER = "crepe-tiny"
CREPE_TINY_PARAMS = 486_552
# Cheap runs for behaviour that does not need a good model.
FAST = dict(width=8, epochs=3, batch_size=16, progress=False)


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def fitnet_run(tmp_path_factory: pytest.TempPathFactory, demo_store_master: Path):
    out = tmp_path_factory.mktemp("runs") / "fitnet"
    return out, distill(str(demo_store_master), TEACHER, str(out), kd="fitnet", epochs=15,
                        lr=1e-3, seed=0, progress=False)


def _strip(history: list[dict]) -> list[dict]:
    return [{k: v for k, v in r.items() if k != "seconds"} for r in history]


def _write_targets(store: Path, name: str, values: np.ndarray, status: np.ndarray,
                   attrs: dict) -> None:
    with open_store(str(store), "r+") as s:
        sec = s.require_section("targets", name,
                                {"values": ArraySpec((values.shape[1],), "float32")},
                                attrs=attrs, identity={"test": name})
        sec.write_block(0, {"values": values.astype(np.float32)}, status.astype(np.uint8))


def test_fitnet_student_beats_chance_and_writes_run_dir(fitnet_run, demo_store_master):
    out, r = fitnet_run
    assert r.test_metrics["accuracy"] >= 0.5  # 5 classes: chance 0.2
    assert r.n_items == {"train": 60, "valid": 10, "test": 10, "skipped": 0}
    assert sorted(os.listdir(out)) == ["best.pt", "config.json", "curves.png", "history.csv",
                                       "last.pt", "metrics.json"]
    cfg = json.loads((out / "config.json").read_text())
    with open_store(str(demo_store_master)) as s:
        assert cfg["store"]["dataset_fingerprint"] == s.dataset_fingerprint
        assert cfg["logmel"] == s.features("logmel").attrs["params"]
    assert cfg["options"]["kd"] == "fitnet" and cfg["options"]["lambda"] == 0.6
    assert cfg["targets"]["section"] == f"embeddings/{TEACHER}"
    assert cfg["targets"]["array"] == "clip" and cfg["targets"]["dim"] == 256
    assert cfg["teacher"]["parameters"] == CREPE_TINY_PARAMS
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["test"] == r.test_metrics and metrics["best_epoch"] == r.best_epoch
    lines = (out / "history.csv").read_text().strip().splitlines()
    assert len(lines) == 1 + r.epochs_run and "train_kd" in lines[0]
    assert (out / "curves.png").read_bytes()[:4] == b"\x89PNG"
    # the stored best model reproduces the reported test metrics
    ev = evaluate(str(out), str(demo_store_master), "test")
    assert ev["metrics"] == r.test_metrics and ev["n_items"] == 10
    c = ev["complexity"]
    assert c["student_parameters"] == r.student_parameters
    assert c["student_macs_per_clip"] > 1e6 and c["student_cpu_ms_per_clip"] > 0
    assert c["teacher_parameters"] == CREPE_TINY_PARAMS
    assert c["parameter_ratio"] == pytest.approx(CREPE_TINY_PARAMS / r.student_parameters, 0.01)


def test_dc_student_beats_chance(demo_store_master, tmp_path):
    r = distill(str(demo_store_master), TEACHER, str(tmp_path / "dc"), kd="dc", epochs=20,
                lr=2e-3, seed=0, progress=False)
    assert r.test_metrics["accuracy"] >= 0.5
    assert r.valid_metrics["accuracy"] >= 0.5
    # the KD term on a shuffled pairing of the same batches: higher once the student follows
    # its own items' targets, which shows the term carries signal
    last = r.history[-1]
    assert last["train_kd_shuffled"] > last["train_kd"] + 0.05
    header = (tmp_path / "dc" / "history.csv").read_text().splitlines()[0].split(",")
    assert "train_kd_shuffled" in header


def test_targets_section_and_teacher_linear(demo_store, tmp_path):
    with open_store(str(demo_store)) as s:
        clip = s.embeddings(TEACHER).array("clip")[:].astype(np.float64)
        train = s.items.split_indices("train")
    mean = clip[train].mean(0)
    comps = np.linalg.svd(clip[train] - mean, full_matrices=False)[2][:16]
    _write_targets(demo_store, "pca16", (clip - mean) @ comps.T, np.full(80, OK),
                   {"method": "pca", "source": TEACHER})
    r = distill(str(demo_store), "pca16", str(tmp_path / "pca"), kd="fitnet", **FAST)
    cfg = json.loads((tmp_path / "pca" / "config.json").read_text())
    assert cfg["targets"]["section"] == "targets/pca16" and cfg["targets"]["dim"] == 16
    assert cfg["teacher"]["parameters"] == CREPE_TINY_PARAMS  # via the section's source attr
    best = torch.load(tmp_path / "pca" / "best.pt", weights_only=True)
    assert best["kd_loss"]["regressor.weight"].shape == (16, 64)  # width 8 -> 64-d features
    assert 0 < r.best_epoch <= 3

    r = distill(str(demo_store), TEACHER, str(tmp_path / "lin"), kd="dc", teacher_linear=True,
                teacher_linear_dim=8, **{**FAST, "epochs": 4})
    best = torch.load(tmp_path / "lin" / "best.pt", weights_only=True)
    assert best["teacher_linear"]["transform.weight"].shape == (8, 256)
    assert best["teacher_linear"]["classifier.weight"].shape == (5, 8)
    teacher_loss = [h["train_teacher"] for h in r.history]
    assert teacher_loss[-1] < teacher_loss[0]  # the linear map learns the task from the targets


@pytest.mark.parametrize("kd", ["fitnet", "dc", "dc-unbiased"])
def test_frame_level_targets_are_aligned_in_time(demo_store_master, tmp_path, kd):
    """Raw frame embeddings (N x T x D) as targets: the run trains, and config.json records the
    frame-level alignment used by the losses."""
    with open_store(str(demo_store_master)) as s:
        frames_shape = s.embeddings(TEACHER).array("frames").shape
    r = distill(str(demo_store_master), TEACHER, str(tmp_path / kd), kd=kd,
                frame_targets=True, **FAST)
    cfg = json.loads((tmp_path / kd / "config.json").read_text())
    t = cfg["targets"]
    assert t["array"] == "frames" and t["frame_level"] and t["dim"] == frames_shape[2]
    assert "frame-level" in t["alignment"] and "nearest in time" in t["alignment"]
    assert t["attrs"]["frame_rate"] == 10.0 and t["attrs"]["frame_offset"] == 0.0  # hop 100 ms
    kd_losses = [h["train_kd"] for h in r.history]
    assert all(np.isfinite(kd_losses)) and kd_losses[-1] < kd_losses[0]
    # clip-level runs record the time-averaged alignment instead
    spec = resolve_targets(open_store(str(demo_store_master)), TEACHER)
    assert not spec.frame_level and spec.alignment.startswith("clip-level")


def test_determinism_resume_and_run_dir_refusals(demo_store_master, tmp_path):
    store = str(demo_store_master)
    kw = dict(kd="dc", patience=0, seed=3, **{**FAST, "epochs": 4})
    a = distill(store, TEACHER, str(tmp_path / "a"), **kw)
    c = distill(store, TEACHER, str(tmp_path / "c"), **kw)
    assert _strip(a.history) == _strip(c.history)
    assert a.test_metrics == c.test_metrics

    def stop_after_2(rec: dict) -> None:
        if rec["epoch"] == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        distill(store, TEACHER, str(tmp_path / "b"), callback=stop_after_2, **kw)
    assert (tmp_path / "b" / LAST).exists() and not (tmp_path / "b" / "metrics.json").exists()
    with pytest.raises(StoreMismatchError, match="differs in: lr"):
        distill(store, TEACHER, str(tmp_path / "b"), **{**kw, "lr": 5e-3})
    b = distill(store, TEACHER, str(tmp_path / "b"), **kw)  # the same call continues
    assert b.resumed_from == 2
    assert _strip(b.history) == _strip(a.history)
    assert b.test_metrics == a.test_metrics
    wa = torch.load(tmp_path / "a" / "best.pt", weights_only=True)["student"]
    wb = torch.load(tmp_path / "b" / "best.pt", weights_only=True)["student"]
    assert all(torch.equal(wa[k], wb[k]) for k in wa)

    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("mine")
    with pytest.raises(EastkdError, match="not empty"):
        distill(store, TEACHER, str(tmp_path / "other"), **kw)


def _history_rows(path: Path) -> int:
    try:
        return max(0, len(path.read_text().splitlines()) - 1)
    except OSError:
        return 0


def _run_files(run: Path) -> tuple[list[dict], dict, dict]:
    """history.csv without its timings, and the student weights of best.pt and last.pt."""
    import csv

    with open(run / "history.csv", encoding="utf-8") as f:
        history = [{k: v for k, v in r.items() if k != "seconds"} for r in csv.DictReader(f)]
    best = torch.load(run / "best.pt", weights_only=True)["student"]
    last = torch.load(run / LAST, weights_only=True)["student"]
    return history, best, last


def test_the_same_distill_command_continues_after_ctrl_c(demo_store_master, tmp_path):
    """Ctrl-C in the middle of a run, then the very same command: it continues after the last
    finished epoch and ends bit-identical to an uninterrupted run. Other settings are refused
    naming them; --overwrite starts over."""
    import signal

    cmd = [sys.executable, "-m", "eastkd.cli.main", "distill", str(demo_store_master),
           "--targets", TEACHER, "--kd", "dc", "--width", "8", "--epochs", "12",
           "--patience", "0", "--seed", "3", "--no-progress"]
    ref, run = tmp_path / "ref", tmp_path / "run"
    done = subprocess.run([*cmd, "--out", str(ref)], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr

    # a background job of a non-interactive shell ignores SIGINT: restore Ctrl-C's default
    proc = subprocess.Popen([*cmd, "--out", str(run)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.monotonic() + 300
    while proc.poll() is None and _history_rows(run / "history.csv") < 2 \
            and time.monotonic() < deadline:
        time.sleep(0.02)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, (out, err)
    kept = finished_epochs(str(run))  # in last.pt: where the same command continues
    assert err.endswith(f"Error: interrupted: epochs 1-{kept} of 12 are kept in {run}; rerun "
                        "the same command to continue\n"), err
    assert 2 <= kept < 12 and not (run / "metrics.json").exists()

    again = subprocess.run([*cmd, "--out", str(run)], capture_output=True, text=True,
                           timeout=600)
    assert again.returncode == 0, again.stderr
    assert f"continuing {run} after epoch {kept} of 12" in again.stdout
    want, got = _run_files(ref), _run_files(run)
    assert got[0] == want[0]
    for a, b in zip(want[1:], got[1:]):
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert json.loads((run / "metrics.json").read_text())["test"] == \
        json.loads((ref / "metrics.json").read_text())["test"]

    other = subprocess.run([*cmd, "--out", str(run), "--lr", "0.005"], capture_output=True,
                           text=True, timeout=600)
    assert other.returncode == 1 and other.stdout == ""
    assert other.stderr.startswith(f"Error: {run}: holds a run with other settings "
                                   "(differs in: lr)"), other.stderr
    over = subprocess.run([*cmd, "--out", str(run), "--lr", "0.005", "--epochs", "1",
                           "--overwrite"], capture_output=True, text=True, timeout=600)
    assert over.returncode == 0, over.stderr
    assert _history_rows(run / "history.csv") == 1 and "continuing" not in over.stdout


def test_loader_reads_blocks_and_streams_shuffled_chunks(demo_store_master):
    with open_store(str(demo_store_master)) as s:
        spec = resolve_targets(s, TEACHER)
        mem = load_split(s, "train", spec)
        stream = load_split(s, "train", spec, memory_limit=0, workers=0)
        assert mem.in_memory and not stream.in_memory
        stream.stream.unit = 8  # pretend 8-item chunks: the train rows span several of them
        stream.stream.window_units = 2
        x_all, t_all = mem.stream.resident["x"], mem.stream.resident["t"]
        seen, orders = [], []
        for seed in (0, 1):
            rows = []
            for b in stream.batches(16, torch.Generator().manual_seed(seed)):
                assert b.x.dtype == torch.float32 and b.x.shape[1:] == (96, 51)
                pos = np.searchsorted(mem.rows, b.rows)
                torch.testing.assert_close(b.x, x_all[pos])
                torch.testing.assert_close(b.t, t_all[pos])
                assert np.array_equal(b.y.numpy(), s.items.label[b.rows])
                rows.extend(b.rows.tolist())
            seen.append(sorted(rows))
            orders.append(rows)
        assert seen[0] == seen[1] == mem.rows.tolist()  # every row once per epoch
        assert orders[0] != orders[1]
        # one read per 8-item unit, of the rows between its first and last train row
        spans = [hi - lo for _, lo, hi in chunk_groups(mem.rows, 8)]
        row_bytes = sum(int(np.prod(a.shape[1:])) * a.dtype.itemsize for a in
                        (s.features().array("values"), s.embeddings(TEACHER).array("clip")))
        assert stream.stream.last_read_bytes == sum(spans) * row_bytes
        clip = s.embeddings(TEACHER).array("clip")
        np.testing.assert_array_equal(clip.read_rows(mem.rows), clip[:][mem.rows])


def test_skipped_rows_excluded_and_pending_refused(demo_store, tmp_path):
    with open_store(str(demo_store)) as s:
        train = s.items.split_indices("train")
    status = np.full(80, OK)
    status[train[:5]] = SKIPPED
    _write_targets(demo_store, "partial", np.ones((80, 4)), status, {})
    with open_store(str(demo_store)) as s:
        data = load_split(s, "train", resolve_targets(s, "partial"))
        assert len(data) == 55 and not set(train[:5]) & set(data.rows)
    with open_store(str(demo_store), "r+") as s:
        s.require_section("targets", "pending", {"values": ArraySpec((4,), "float32")},
                          attrs={}, identity={"test": "pending"})
    with pytest.raises(EastkdError, match="targets/pending is unfinished"):
        distill(str(demo_store), "pending", str(tmp_path / "p"), **FAST)
    with pytest.raises(EastkdError, match="no targets or embeddings named 'nope'"):
        distill(str(demo_store), "nope", str(tmp_path / "n"), **FAST)


def test_evaluate_on_other_stores(fitnet_run, demo_manifest, demo_store, tmp_path):
    out, r = fitnet_run
    h5 = tmp_path / "again.h5"
    extract_demo(demo_manifest, h5)  # same audio, HDF5 backend, no frames
    ev = evaluate(str(out), str(h5), "test")
    assert ev["metrics"] == r.test_metrics
    assert ev["complexity"]["teacher_parameters"] == CREPE_TINY_PARAMS
    # training streamed from the HDF5 store (memory limit 0) reads it while training
    r5 = distill(str(h5), TEACHER, str(tmp_path / "h5run"), memory_limit=0,
                 **{**FAST, "epochs": 1})
    assert r5.n_items["train"] == 60
    assert json.loads((tmp_path / "h5run" / "config.json").read_text())["store"]["backend"] \
        == "hdf5"

    m64 = tmp_path / "mels64.zarr"
    extract_demo(demo_manifest, m64, logmel=LogMelParams(n_mels=64))
    with pytest.raises(StoreMismatchError, match="n_mels: run 96, store 64"):
        evaluate(str(out), str(m64))

    with open_store(str(demo_store), "r+") as s:
        items = s.items
        items.class_names = list(items.class_names)[::-1]
        s.update_items(items, "test: other class names")
    with pytest.raises(StoreMismatchError, match="classes differ"):
        evaluate(str(out), str(demo_store))


def test_multi_label_store_with_folds(demo_manifest, tmp_path):
    """BCE training, mAP model selection and ROC/PR-AUC on a multi-label manifest whose items
    carry a fold column (split re-derived per test fold, as for ESC-50)."""
    group = {"brass": "wind", "reed": "wind", "guitar": "plucked", "piano": "struck",
             "strings": "bowed"}
    lines = demo_manifest.read_text().strip().splitlines()[1:]
    rows = ["id,path,labels,split,fold"]
    for i, line in enumerate(lines):
        item, path, label, split = line.split(",")
        rows.append(f"{item},{demo_manifest.parent / path},{label};{group[label]},{split},"
                    f"{i % 5 + 1}")
    manifest = tmp_path / "multi.csv"
    manifest.write_text("\n".join(rows) + "\n")
    store = tmp_path / "multi.zarr"
    extract_demo(manifest, store)
    r = distill(str(store), TEACHER, str(tmp_path / "run"), kd="fitnet", fold=2, **FAST)
    assert r.selection_metric == "pr_auc"
    assert r.n_items == {"train": 48, "valid": 16, "test": 16, "skipped": 0}
    assert set(r.test_metrics) == {"roc_auc", "pr_auc"}
    ev = evaluate(str(tmp_path / "run"), str(store))  # the run's fold by default
    assert ev["n_items"] == 16 and ev["fold"] == 2
    assert ev["metrics"] == r.test_metrics
    assert 0.0 < ev["metrics"]["pr_auc"] <= 1.0 and 0.0 <= ev["metrics"]["roc_auc"] <= 1.0
    assert evaluate(str(tmp_path / "run"), str(store), fold=5)["n_items"] == 16
    # compress --fold K fits on fold K's train items; distill refuses them for another fold
    from eastkd.pipeline.compress.run import compress

    compress(str(store), TEACHER, "learned", 8, name="l-f2", fold=2, epochs=5, plot=False,
             progress=False)
    with pytest.raises(EastkdError, match="targets/l-f2 was fitted on 16 items that are test "
                                          "items of this run"):
        distill(str(store), "l-f2", str(tmp_path / "leak"), kd="dc", fold=3, **FAST)
    r = distill(str(store), "l-f2", str(tmp_path / "clean"), kd="dc", fold=2, **FAST)
    assert r.n_items["train"] == 48


def test_fold_needs_fold_column(demo_store_master, tmp_path):
    with pytest.raises(EastkdError, match="needs an items column 'fold'"):
        distill(str(demo_store_master), TEACHER, str(tmp_path / "f"), fold=1, **FAST)


def test_teacher_code_never_imported(demo_store_master, tmp_path):
    code = (
        "import json, sys, torch\n"
        "torch.set_num_threads(1)\n"
        "from eastkd.pipeline.distill.train import distill\n"
        f"distill({str(demo_store_master)!r}, {TEACHER!r}, {str(tmp_path / 'run')!r}, "
        "kd='fitnet', width=8, epochs=1, progress=False)\n"
        "print(json.dumps(sorted(m for m in sys.modules if 'crepe' in m or 'teachers' in m)))\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr
    loaded = json.loads(proc.stdout.strip().splitlines()[-1])
    assert "torchcrepe" not in loaded and "eastkd.pipeline.teachers" not in loaded
    assert loaded == []
    assert (tmp_path / "run" / "metrics.json").exists()


def test_cli_distill_and_evaluate(demo_store_master, tmp_path):
    runner = CliRunner()
    store, run = str(demo_store_master), str(tmp_path / "run")
    res = runner.invoke(cli, ["distill", store, "--targets", TEACHER, "--out", run, "--kd", "dc",
                              "--width", "8", "--epochs", "2", "--no-progress"])
    assert res.exit_code == 0, res.output
    assert "parameters" in res.output.splitlines()[0]
    assert "best epoch" in res.output and "test accuracy" in res.output

    res = runner.invoke(cli, ["evaluate", run, store, "--json"])
    assert res.exit_code == 0, res.output
    obj = json.loads(res.output)
    assert set(obj["metrics"]) == {"accuracy", "macro_f1"} and obj["n_items"] == 10
    assert obj["complexity"]["teacher_parameters"] == CREPE_TINY_PARAMS

    res = runner.invoke(cli, ["evaluate", run, store, "--split", "valid"])
    assert res.exit_code == 0, res.output
    assert "accuracy" in res.output and "teacher parameters (crepe-tiny)" in res.output

    res = runner.invoke(cli, ["distill", store, "--out", str(tmp_path / "x"), "--no-progress"])
    assert res.exit_code == 1 and "needs --targets" in res.output
    res = runner.invoke(cli, ["distill", "--help"])
    assert res.exit_code == 0 and "--lambda" in res.output and "default: 0.6" in res.output


def test_probe_targets_and_kl_distillation_end_to_end(demo_store, tmp_path):
    """compress --method probe writes soft labels for every clip; distill --kd kl trains on
    them (logits, not features; targets as stored); the runs table shows the probe beside it;
    targets of other classes are refused."""
    from eastkd.pipeline.runs.table import PROBE_REFERENCE, render_text, runs_table

    runner = CliRunner()
    store = str(demo_store)
    res = runner.invoke(cli, ["compress", store, "--method", "probe", "--name", "soft",
                              "--plot", str(tmp_path / "soft.png"), "--no-progress"])
    assert res.exit_code == 0, res.output
    assert "256 -> 5" in res.output and "valid accuracy" in res.output
    with open_store(store) as s:
        sec = s.targets("soft")
        values, attrs = sec.array("values")[:], sec.attrs
        assert attrs["kind"] == "probabilities"
        assert attrs["class_names"] == list(s.items.class_names)
    assert values.shape == (80, 5)
    np.testing.assert_allclose(values.sum(axis=1), 1.0, atol=1e-5)

    run = tmp_path / "runs" / "kl"
    res = runner.invoke(cli, ["distill", store, "-t", "soft", "--kd", "kl", "-T", "2", "--out",
                              str(run), "--width", "8", "--epochs", "3", "--no-progress"])
    assert res.exit_code == 0, res.output
    cfg = json.loads((run / "config.json").read_text())
    assert cfg["options"]["kd"] == "kl" and cfg["options"]["temperature"] == 2.0
    assert cfg["targets"]["attrs"]["kind"] == "probabilities"
    best = torch.load(run / "best.pt", weights_only=True)
    assert best["target_norm"] == {}  # probabilities are used as stored
    history = (run / "history.csv").read_text().splitlines()
    header = history[0].split(",")
    assert "train_kd" in header and "train_kd_shuffled" in header
    last = dict(zip(header, history[-1].split(",")))
    assert float(last["train_kd_shuffled"]) > float(last["train_kd"]) > 0.0
    # a run without KL records no temperature (older runs' options are unchanged)
    fit = distill(store, "soft", str(tmp_path / "runs" / "fitnet"), kd="fitnet", **FAST)
    assert "temperature" not in json.loads(
        (tmp_path / "runs" / "fitnet" / "config.json").read_text())["options"]
    assert fit.epochs_run == 3

    table = runs_table(str(tmp_path / "runs"))
    kinds = [s["kd"] for s in table.settings]
    assert kinds.index(PROBE_REFERENCE) < kinds.index("kl")
    ref = table.settings[kinds.index(PROBE_REFERENCE)]
    assert ref["test_accuracy"]["mean"] == attrs["probe_scores"]["test"]["accuracy"]
    assert PROBE_REFERENCE in render_text(table)

    # targets for other classes, or not class targets at all: refused in one line
    _write_targets(demo_store, "other", values, np.full(80, OK),
                   {**attrs, "params": [],  # no fitted parameters written for this one
                    "class_names": list(reversed(attrs["class_names"]))})
    with pytest.raises(StoreMismatchError, match="classes .* differ from the store's"):
        distill(store, "other", str(tmp_path / "other"), kd="kl", **FAST)
    with pytest.raises(EastkdError, match="needs class probabilities or logits"):
        distill(store, TEACHER, str(tmp_path / "raw"), kd="kl", **FAST)
    with pytest.raises(EastkdError, match="--temperature applies to response-based KD"):
        distill(store, "soft", str(tmp_path / "t"), kd="dc", temperature=2.0, **FAST)
