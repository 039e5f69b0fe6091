"""The everyday user's path: stratified splits and their warnings, extract --like, predict,
export (TorchScript and ONNX against the run), the runs table, epoch lines and early-stopping
ties, the Python API and the one-line CLI errors."""

from __future__ import annotations

import csv
import json
import statistics
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from eastkd.cli.main import cli
from eastkd.pipeline.datasets.splits import (
    missing_class_warnings,
    parse_ratios,
    rarest_label,
    split_sizes,
    stratified_split,
)
from eastkd.pipeline.distill.train import distill, rank_epoch
from eastkd.store import EastkdError, open_store

TEACHER = "crepe-tiny"


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory: pytest.TempPathFactory, demo_store_master: Path) -> Path:
    """A task-only student trained well above chance on the demo store."""
    out = tmp_path_factory.mktemp("userpath") / "run"
    distill(str(demo_store_master), None, str(out), kd="none", epochs=12, patience=0,
            progress=False)
    return out


def _rewrite_manifest(src: Path, dst: Path, keep: callable, drop_split: bool) -> Path:
    """A copy of ``src`` (absolute paths) with only rows where ``keep(row)``."""
    with src.open(newline="") as f:
        rows = [r for r in csv.DictReader(f) if keep(r)]
    fields = ["id", "path", "label"] + ([] if drop_split else ["split"])
    with dst.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=fields, extrasaction="ignore")
        w.writeheader()
        for r in rows:
            w.writerow({**r, "path": str(src.parent / r["path"])})
    return dst


# ------------------------------------------------------------------------------------ splits


def test_stratified_split_counts_seed_and_multi_label() -> None:
    ids = [f"c{c}-{k}" for c in range(3) for k in range(20)]
    strata = [i // 20 for i in range(60)]
    a = stratified_split(ids, strata, (0.7, 0.15, 0.15), seed=0)
    for c in range(3):
        mine = [s for s, st in zip(a, strata) if st == c]
        assert (mine.count("train"), mine.count("valid"), mine.count("test")) == (14, 3, 3)
    assert stratified_split(ids, strata, seed=0) == a
    # 40 items: 6 valid and 6 test, the extra ones on different classes, 7 train in each
    assert split_sizes([10] * 4, (0.7, 0.15, 0.15)) == [(7, 1, 2), (7, 1, 2), (7, 2, 1), (7, 2, 1)]
    assert split_sizes([3, 3, 100], (0.7, 0.15, 0.15)) == [(1, 1, 1), (1, 1, 1), (70, 15, 15)]
    assert stratified_split(ids, strata, seed=1) != a
    # the order the items come in does not matter: the split follows the ids
    rev = stratified_split(ids[::-1], strata[::-1], seed=0)
    assert rev[::-1] == a
    assert rarest_label([[0, 1], [0], [0, 2], []]) == [1, 0, 2, -1]


def test_parse_ratios() -> None:
    assert parse_ratios("0.8,0.1,0.1") == (0.8, 0.1, 0.1)
    for bad in ("0.7,0.3", "0.5,0.5,0.5", "a,b,c", "0,0.5,0.5"):
        with pytest.raises(EastkdError, match="--split-ratios"):
            parse_ratios(bad)


def test_missing_class_warnings() -> None:
    labels = np.eye(3, dtype=np.uint8)[[0, 1, 2, 0, 1, 0, 1, 2]]
    splits = ["train"] * 3 + ["valid", "valid", "test", "test", "valid"]
    warnings = missing_class_warnings(["a", "b", "c"], labels, splits)
    assert warnings == ["warning: 1 class(es) have no test items: c; test metrics cannot "
                        "measure them (macro-F1 scores them 0)"]
    assert missing_class_warnings(["a", "b", "c"], labels, ["train"] * 8) == [
        "warning: the valid split is empty", "warning: the test split is empty"]


def test_split_warned_at_extract_and_distill(demo_manifest: Path, tmp_path: Path) -> None:
    """A test split without one class: warned when extracting and again when distilling."""
    manifest = _rewrite_manifest(
        demo_manifest, tmp_path / "m.csv",
        lambda r: (r["split"] != "train" or int(r["id"].rsplit("_", 1)[1]) < 4)
        and not (r["label"] == "reed" and r["split"] == "test"),
        drop_split=False)
    runner = CliRunner()
    store = str(tmp_path / "s.zarr")
    res = runner.invoke(cli, ["extract", str(manifest), store, "--teacher-opt", "hop_ms=100",
                              "--workers", "0", "--no-progress"])
    assert res.exit_code == 0, res.output
    assert "split: given by the dataset" in res.output
    assert "warning: 1 class(es) have no test items: reed;" in res.output
    assert "no valid items" not in res.output
    res = runner.invoke(cli, ["distill", store, "--kd", "none", "--out", str(tmp_path / "r"),
                              "--epochs", "1", "--width", "4", "--no-progress"])
    assert res.exit_code == 0, res.output
    assert "class(es) have no test items: reed" in res.output


# ----------------------------------------------------------------------- extract --like


def test_extract_like_a_run_and_stratified_split_recorded(demo_manifest: Path, trained_run: Path,
                                                          tmp_path: Path) -> None:
    """A second, split-less dataset extracted --like the run: stratified split announced and
    recorded; the store matches the run, so evaluate accepts it. Without --like its segment
    differs and evaluate's refusal names the flag."""
    manifest = _rewrite_manifest(demo_manifest, tmp_path / "second.csv",
                                 lambda r: r["split"] != "train", drop_split=True)
    runner = CliRunner()
    base = ["extract", str(manifest), "--teacher-opt", "hop_ms=100", "--workers", "0",
            "--no-progress", "--split-ratios", "0.5,0.25,0.25", "--split-seed", "3"]
    like = str(tmp_path / "like.zarr")
    res = runner.invoke(cli, [*base[:2], like, *base[2:], "--like", str(trained_run)])
    assert res.exit_code == 0, res.output
    assert "student inputs like" in res.output and "--segment 1 --crop start" in res.output
    assert ("split: stratified by class, ratios 0.5/0.25/0.25 (--split-ratios), seed 3 "
            "(--split-seed)") in res.output
    with open_store(like) as s:
        assert s.attrs["dataset"]["split"] == {"method": "stratified",
                                               "ratios": [0.5, 0.25, 0.25], "seed": 3,
                                               "stratified_on": "class"}
        per_class = {(int(np.argmax(lab)), sp) for lab, sp in zip(s.items.labels, s.items.splits)}
        assert all((c, sp) in per_class for c in range(5) for sp in ("train", "valid", "test"))
    res = runner.invoke(cli, ["evaluate", str(trained_run), like, "--split", "all",
                              "--no-progress"])
    assert res.exit_code == 0, res.output
    res = runner.invoke(cli, ["info", like])
    assert "split    stratified by class, ratios 0.5/0.25/0.25, seed 3" in res.output

    res = runner.invoke(cli, [*base[:2], like, *base[2:], "--like", str(trained_run),
                              "--n-mels", "64"])
    assert res.exit_code == 2 and res.output.count("\n") == 1
    assert "--like sets the student inputs; drop --n-mels" in res.output

    other = str(tmp_path / "other.zarr")
    res = runner.invoke(cli, [*base[:2], other, *base[2:], "--segment", "0.5"])
    assert res.exit_code == 0, res.output
    res = runner.invoke(cli, ["evaluate", str(trained_run), other])
    assert res.exit_code == 1
    assert f"--like {trained_run}" in res.output and "--segment 1 --crop start" in res.output


def test_like_reads_a_store_too(demo_store_master: Path, trained_run: Path) -> None:
    from eastkd.pipeline.runs.like import read_student_inputs

    assert read_student_inputs(str(demo_store_master)) == read_student_inputs(str(trained_run))
    with pytest.raises(EastkdError, match="no such run directory or store"):
        read_student_inputs(str(demo_store_master) + "-missing")


# ------------------------------------------------------------------------ predict, export


def _test_files(manifest: Path) -> list[tuple[str, str]]:
    with manifest.open(newline="") as f:
        return [(r["id"], str(manifest.parent / r["path"])) for r in csv.DictReader(f)
                if r["split"] == "test"]


def test_predict_agrees_with_evaluate(trained_run: Path, demo_manifest: Path,
                                      demo_store_master: Path) -> None:
    """Predicting the test audio from scratch gives the labels evaluate scores from the store
    (the store keeps float16 log-mel, so scores differ in rounding only)."""
    from eastkd.pipeline.distill.evaluate import evaluate
    from eastkd.pipeline.runs.predict import predict

    preds = predict(str(trained_run), [str(demo_manifest)])
    assert len(preds) == 80 and preds[0].id == "piano_0000"
    files = dict(_test_files(demo_manifest))
    test_preds = [p for p in preds if p.id in files]
    truth = {r["id"]: r["label"] for r in csv.DictReader(demo_manifest.open())}
    acc = np.mean([p.labels == [truth[p.id]] for p in test_preds])
    ev = evaluate(str(trained_run), str(demo_store_master), split="test")
    assert acc == pytest.approx(ev["metrics"]["accuracy"], abs=0.1 + 1e-9)
    assert acc > 0.4  # 5 classes: chance is 0.2
    for p in preds[:5]:
        assert sum(p.scores.values()) == pytest.approx(1.0, abs=1e-5)

    runner = CliRunner()
    one = files[next(iter(files))]
    res = runner.invoke(cli, ["predict", str(trained_run), one, "--csv"])
    assert res.exit_code == 0, res.output
    header, row = list(csv.reader(res.output.splitlines()))
    assert header[:3] == ["id", "path", "labels"] and len(header) == 8 and row[1] == one
    res = runner.invoke(cli, ["predict", str(trained_run), one, "--json"])
    assert json.loads(res.output)[0]["labels"] == [row[2]]
    res = runner.invoke(cli, ["predict", str(trained_run), "nope.wav"])
    assert res.exit_code == 1 and res.output == "Error: nope.wav: no such audio file or manifest\n"


def test_export_torchscript_and_onnx_equal_the_run(trained_run: Path, demo_manifest: Path,
                                                   tmp_path: Path) -> None:
    import onnxruntime as ort

    from eastkd.pipeline.runs.export import ConvLogMel, export, load_torchscript, onnx_metadata
    from eastkd.pipeline.runs.predict import Predictor

    predictor = Predictor(str(trained_run))
    waves = torch.stack([predictor.waveform(p) for _, p in _test_files(demo_manifest)])
    expected = predictor.scores(waves).numpy()
    # the conv front end equals torchaudio's log-mel
    torch.testing.assert_close(ConvLogMel(predictor.logmel.params)(waves),
                               predictor.logmel(waves), atol=2e-3, rtol=1e-4)

    ts_path = export(str(trained_run), "torchscript", str(tmp_path / "s.pt"))
    model, meta = load_torchscript(ts_path)
    assert meta["class_names"] == ["brass", "guitar", "piano", "reed", "strings"]
    assert meta["n_samples"] == waves.shape[1] and meta["sample_rate"] == 16000
    with torch.no_grad():
        np.testing.assert_allclose(model(waves).numpy(), expected, atol=1e-4)

    res = CliRunner().invoke(cli, ["export", str(trained_run), "--format", "onnx", "--out",
                                   str(tmp_path / "s.onnx")])
    assert res.exit_code == 0, res.output
    sess = ort.InferenceSession(str(tmp_path / "s.onnx"))
    got = sess.run(None, {sess.get_inputs()[0].name: waves.numpy()})[0]
    np.testing.assert_allclose(got, expected, atol=1e-4)
    assert np.array_equal(got.argmax(1), expected.argmax(1))
    assert onnx_metadata(str(tmp_path / "s.onnx"))["class_names"] == meta["class_names"]
    one = sess.run(None, {sess.get_inputs()[0].name: waves[:1].numpy()})[0]  # dynamic batch
    np.testing.assert_allclose(one, expected[:1], atol=1e-4)


# -------------------------------------------------------------------------------- runs


def test_runs_table_groups_seeds(demo_store: Path, tmp_path: Path) -> None:
    from eastkd.pipeline.compress.run import compress
    from eastkd.pipeline.runs.table import runs_table

    root = tmp_path / "runs"
    for seed in (0, 1):  # targets fitted per seed under their own names, as the demo does
        compress(str(demo_store), TEACHER, "pca", 8, name=f"pca8-s{seed}", plot=False,
                 progress=False)
    for kd, targets in (("none", None), ("dc", TEACHER), ("fitnet", "pca8-s{seed}")):
        for seed in (0, 1):
            distill(str(demo_store), targets and targets.format(seed=seed),
                    str(root / f"{kd}-s{seed}"), kd=kd, epochs=2, width=4, seed=seed,
                    progress=False)

    table = runs_table(str(root))
    assert [r["run"] for r in table.runs] == ["dc-s0", "dc-s1", "fitnet-s0", "fitnet-s1",
                                              "none-s0", "none-s1"]
    assert len(table.settings) == 3
    fitnet = next(s for s in table.settings if s["kd"] == "fitnet")
    assert fitnet["targets"] == f"pca-8 of {TEACHER}" and fitnet["seeds"] == [0, 1]
    dc = next(s for s in table.settings if s["kd"] == "dc")
    assert dc["seeds"] == [0, 1] and dc["teacher"] == TEACHER and dc["lambda"] == 0.6
    assert dc["targets"] == f"raw {TEACHER}"
    vals = [json.loads((root / f"dc-s{s}" / "metrics.json").read_text())["test"]["accuracy"]
            for s in (0, 1)]
    assert dc["test_accuracy"]["mean"] == pytest.approx(statistics.fmean(vals))
    assert dc["test_accuracy"]["std"] == pytest.approx(statistics.stdev(vals))

    runner = CliRunner()
    res = runner.invoke(cli, ["runs", str(root)])
    assert res.exit_code == 0, res.output
    assert "6 runs, 3 settings" in res.output and "±" in res.output
    lines = res.output.splitlines()
    head = next(i for i, line in enumerate(lines) if line.startswith("teacher "))
    col = lines[head].index(" seeds ") + 1  # left-aligned: each row's count starts there
    assert [line[col:].split()[0] for line in lines[head + 1:]] == ["2", "2", "2"]
    res = runner.invoke(cli, ["runs", str(root), "--csv"])
    rows = list(csv.DictReader(res.output.splitlines()))
    assert len(rows) == 3 and float(rows[0]["test_accuracy_mean"]) >= 0
    res = runner.invoke(cli, ["runs", str(root), "--json", "--per-run"])
    assert len(json.loads(res.output)["runs"]) == 6
    res = runner.invoke(cli, ["runs", str(tmp_path / "empty")])
    assert res.exit_code == 1 and "no such folder" in res.output


# --------------------------------------------------------------- epoch lines, ties


def test_tie_at_the_best_metric_does_not_reset_patience() -> None:
    """Validation accuracy stuck at 1.0 with a falling loss: the best epoch moves, but the run
    stops after `patience` such epochs (before the fix, patience never fired)."""
    state = {"best": None, "best_loss": None, "best_epoch": 0, "bad": 0}
    history = [(0.8, 0.9), (1.0, 0.5), (1.0, 0.4), (1.0, 0.3), (1.0, 0.2), (1.0, 0.1)]
    patience, stopped_at = 3, None
    for epoch, (score, loss) in enumerate(history, start=1):
        best, resets = rank_epoch(state["best"], state["best_loss"], score, loss)
        if best:
            state.update(best=score, best_loss=loss, best_epoch=epoch)
        state["bad"] = 0 if resets else state["bad"] + 1
        if state["bad"] >= patience:
            stopped_at = epoch
            break
    assert stopped_at == 5 and state["best_epoch"] == 5
    assert rank_epoch(1.0, 0.2, 1.0, 0.3) == (False, False)
    assert rank_epoch(0.9, 0.2, 1.0, 0.3) == (True, True)


def test_cpu_runs_do_not_depend_on_the_machines_thread_count(demo_store_master: Path,
                                                            tmp_path: Path) -> None:
    """The same run started under 2 and under 1 torch threads (as on a 2-core and a 1-core
    machine) gives the same bits: distill fixes its own intra-op threads (--threads)."""
    histories = []
    for machine_threads in (2, 1):
        torch.set_num_threads(machine_threads)
        r = distill(str(demo_store_master), TEACHER, str(tmp_path / f"t{machine_threads}"),
                    kd="dc", epochs=2, width=4, progress=False)
        assert torch.get_num_threads() == machine_threads  # restored afterwards
        histories.append([{k: v for k, v in h.items() if k != "seconds"} for h in r.history])
    torch.set_num_threads(1)
    assert histories[0] == histories[1]
    a, b = (torch.load(tmp_path / f"t{n}" / "best.pt", weights_only=True)["student"]
            for n in (2, 1))
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_no_progress_prints_one_line_per_epoch(demo_store_master: Path, tmp_path: Path) -> None:
    res = CliRunner().invoke(cli, ["distill", str(demo_store_master), "--kd", "none", "--out",
                                   str(tmp_path / "r"), "--epochs", "3", "--width", "4",
                                   "--no-progress"])
    assert res.exit_code == 0, res.output
    lines = [ln for ln in res.output.splitlines() if ln.startswith("epoch ")]
    assert [ln.split(",")[0] for ln in lines] == ["epoch 1/3", "epoch 2/3", "epoch 3/3"]
    assert "valid accuracy" in lines[0] and lines[0].endswith(" s")


# ------------------------------------------------------------------- API and CLI form


def test_import_eastkd_is_light_and_lazy() -> None:
    code = ("import sys, eastkd; print(eastkd.__version__); "
            "print('torch' in sys.modules, 'zarr' in sys.modules); "
            "print(eastkd.open_store.__module__, eastkd.distill.__module__)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout.split("\n")
    from importlib.metadata import version

    assert out[0] == version("eastkd")
    assert out[1] == "False False"
    assert out[2] == "eastkd.store.store eastkd.pipeline.distill.train"
    import eastkd

    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        eastkd.nope  # noqa: B018


def test_every_command_takes_progress_flags_and_errors_fit_one_line(demo_store_master: Path,
                                                                     trained_run: Path,
                                                                     tmp_path: Path) -> None:
    from eastkd.cli.main import COMMANDS

    runner = CliRunner()
    for name in COMMANDS:
        res = runner.invoke(cli, [name, "--help"])
        assert "--progress / --no-progress" in res.output, name
    res = runner.invoke(cli, ["info", str(demo_store_master), "--no-progress"])
    assert res.exit_code == 0, res.output
    res = runner.invoke(cli, ["evaluate", str(trained_run), str(demo_store_master),
                              "--no-progress", "--json"])
    assert res.exit_code == 0, res.output
    res = runner.invoke(cli, ["compress", str(tmp_path / "missing.zarr")])  # a user error
    assert res.exit_code == 1
    assert res.output.count("\n") == 1 and "no such store" in res.output
    res = runner.invoke(cli, ["compress"])  # a usage error
    assert res.exit_code == 2
    assert res.output.count("\n") == 1 and res.output.startswith("Error: Missing argument")
    res = runner.invoke(cli, ["nosuch"])
    assert res.exit_code == 2 and res.output.count("\n") == 1
