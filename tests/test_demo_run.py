"""``eastkd demo`` end to end on a tiny render: the probe line, the students, rerun reuse."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from eastkd.pipeline.demo.run import DemoOptions, run_demo, student_runs

pytestmark = pytest.mark.usefixtures("one_thread")

TINY = {"families": ("piano", "brass", "flute"), "clips_per_class": 6, "seconds": 1.0,
        "labels_per_class": 2, "unlabelled": True, "dim": 2, "epochs": 1, "progress": False}
AISFX = pytest.mark.skipif(importlib.util.find_spec("aisfx") is None,
                           reason="aisfx not installed (pip install --no-deps aisfx==0.1.2)")


def _run(out: Path, opts: DemoOptions) -> tuple[dict, list[str]]:
    lines: list[str] = []
    return run_demo(out, opts, say=lines.append), lines


@pytest.mark.parametrize("teacher", [
    pytest.param({"teacher": "aisfx"}, marks=AISFX, id="aisfx"),
    pytest.param({"teacher": "crepe-tiny", "teacher_options": {"hop_ms": 100},
                  "sample_rate": 16000}, id="crepe-tiny"),
])
def test_demo_end_to_end_and_rerun(tmp_path: Path, teacher: dict) -> None:
    opts = DemoOptions(**TINY, **teacher)
    report, lines = _run(tmp_path / "demo", opts)
    text = "\n".join(lines)
    assert "keeping the labels of 2 training clips per class" in text
    probe = [ln for ln in lines if ln.strip().startswith("probe (teacher's linear classifier")]
    assert len(probe) == 1 and "valid accuracy" in probe[0] and "test accuracy" in probe[0]
    assert 0.0 <= report["probe"]["test"] <= 1.0
    names = [r.name for r in student_runs({"probe": "p", "pca": "x"})]
    assert list(report["results"]) == names == ["baseline", "kl-probe", "fitnet-pca"]
    for name in names:
        assert any(ln.strip().startswith(f"{name} ") and "test accuracy" in ln for ln in lines)
    saved = json.loads((tmp_path / "demo" / f"results-store-k2-s0.json").read_text())
    assert saved["results"] == report["results"] and saved["teacher"] == opts.teacher
    # 3 classes x 2 labelled train clips, the other 2 per class unlabelled, valid/test labelled
    from eastkd.store import open_store

    with open_store(report["store"], "r") as store:
        assert store.items.split_counts() == {"train": 12, "valid": 3, "test": 3}
        assert int(store.items.labelled_mask.sum()) == 12

    again, lines = _run(tmp_path / "demo", opts)  # everything is reused
    assert sum("already trained" in ln for ln in lines) == len(names)
    assert again["results"] == report["results"] and again["probe"] == report["probe"]


def test_demo_cli_help_states_defaults() -> None:
    from eastkd.cli.main import cli

    res = CliRunner().invoke(cli, ["demo", "--help"], terminal_width=200)
    assert res.exit_code == 0
    for needle in ("--teacher TEXT", "[default: aisfx]", "--labels-per-class", "[default: 10;",
                   "--sample-rate", "[default: 44100;", "--family", "[default: piano, guitar,"):
        assert needle in res.output, needle
