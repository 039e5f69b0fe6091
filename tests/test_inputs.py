"""Inputs that are not what they claim: a manifest row whose file does not exist, the same
file or the same audio under two ids (within a split: a warning; across splits: a leak,
refused unless --allow-duplicates). Real rendered clips, real extract runs through the CLI."""

from __future__ import annotations

import csv
import json
import logging
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner

from eastkd.cli.main import cli
from eastkd.store import open_store

ARGS = ("--teacher", "crepe-tiny", "--teacher-opt", "hop_ms=100", "-j", "0", "--no-progress")
KEY = "crepe-tiny"


def run(*args: object) -> tuple[int, str]:
    res = CliRunner().invoke(cli, [str(a) for a in args])
    if res.exception is not None and not isinstance(res.exception, SystemExit):
        raise res.exception
    return res.exit_code, res.output


@pytest.fixture(scope="module")
def rows(tmp_path_factory: pytest.TempPathFactory) -> list[dict[str, str]]:
    """Six real clips (absolute paths), two per split."""
    from eastkd.pipeline.demo.data import render_demo_dataset

    out = tmp_path_factory.mktemp("inputs_data")
    manifest = render_demo_dataset(out, clips_per_class=2, seconds=1.0, seed=0, progress=False)
    with open(manifest) as f:
        found = list(csv.DictReader(f))
    for r in found:
        r["path"] = str(manifest.parent / r["path"])
    picked = found[:6]
    for r, split in zip(picked, ["train", "train", "valid", "valid", "test", "test"]):
        r["split"] = split
    return picked


def write(path: Path, rows: list[dict[str, str]]) -> Path:
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["id", "path", "label", "split"])
        w.writeheader()
        w.writerows(rows)
    return path


def one_error_line(out: str) -> str:
    assert "Traceback" not in out, out
    errors = [line for line in out.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1, out
    return errors[0]


def test_missing_file_is_skipped_under_skip(rows: list[dict[str, str]], tmp_path: Path) -> None:
    ghost = {**rows[0], "id": "ghost", "path": str(tmp_path / "never-there.wav")}
    manifest = write(tmp_path / "m.csv", [*rows, ghost])
    store = tmp_path / "s.zarr"
    code, out = run("extract", manifest, store, *ARGS)
    assert code == 1
    line = one_error_line(out)
    assert "'ghost'" in line and "file not found" in line and "--on-error skip" in line
    code, out = run("extract", manifest, store, *ARGS, "--on-error", "skip")
    assert code == 0, out
    assert "1 skipped now" in out and "ghost: file not found" in out
    with open_store(str(store)) as s:
        assert s.embeddings(KEY).skipped() == [("ghost", "file not found")]
        assert s.features().skipped() == [("ghost", "file not found")]
        assert s.embeddings(KEY).counts() == {"ok": 6, "skipped": 1, "pending": 0}
    info = json.loads(run("info", store, "--json")[1])
    assert info["embeddings"][KEY]["skipped"] == [{"id": "ghost", "reason": "file not found"}]


@pytest.mark.parametrize("same", ["content", "path"])
def test_duplicates_across_splits_refused_unless_allowed(rows: list[dict[str, str]],
                                                         tmp_path: Path, same: str) -> None:
    src = rows[0]  # a train clip
    path = src["path"]
    if same == "content":
        path = str(tmp_path / "copy.wav")
        shutil.copy(src["path"], path)
    twin = {**src, "id": "twin", "path": path, "split": "test"}
    manifest = write(tmp_path / "m.csv", [*rows, twin])
    store = tmp_path / "s.zarr"
    code, out = run("extract", manifest, store, *ARGS)
    line = one_error_line(out)
    assert code == 1 and f"'{src['id']}' (train), 'twin' (test)" in line
    assert "--allow-duplicates" in line and "different splits" in line
    assert not store.exists()
    code, out = run("extract", manifest, store, *ARGS, "--allow-duplicates")
    assert code == 0, out
    recorded = json.loads(run("info", store, "--json")[1])["dataset"]["duplicates"]
    assert recorded["allowed_across_splits"] is True and recorded["across_splits"] == 1
    assert recorded["groups"] == [[src["id"], "twin"]]
    # the store's record stands for the flag: a rerun without it continues
    assert run("extract", manifest, store, *ARGS)[0] == 0


def test_duplicates_within_a_split_are_warned(rows: list[dict[str, str]], tmp_path: Path,
                                              caplog: pytest.LogCaptureFixture) -> None:
    src = rows[0]
    copy = tmp_path / "copy.wav"
    shutil.copy(src["path"], copy)
    twins = [{**src, "id": "twin", "path": str(copy)}, {**src, "id": "again"}]
    manifest = write(tmp_path / "m.csv", [*rows, *twins])
    with caplog.at_level(logging.WARNING, logger="eastkd"):
        code, out = run("extract", manifest, tmp_path / "s.zarr", *ARGS)
    assert code == 0, out
    warned = [r.getMessage() for r in caplog.records if r.name == "eastkd"]
    assert len(warned) == 2, warned
    assert any(f"'{src['id']}' (train), 'again' (train) list the same file" in w
               for w in warned)
    assert any(f"'{src['id']}' (train), 'twin' (train) have the same audio" in w
               for w in warned)
