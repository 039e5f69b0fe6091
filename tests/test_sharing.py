"""A store travels as a zip: it opens read-only, with the same contents as the folder."""

from __future__ import annotations

import json
import os
import zipfile
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from eastkd.cli.main import cli
from eastkd.store import EastkdError, open_store


def _zip_store(store: Path, dst: Path) -> Path:
    """Zip the store's contents at the archive root (``cd store.zarr && zip -r ../s.zip .``)."""
    with zipfile.ZipFile(dst, "w", compression=zipfile.ZIP_STORED) as zf:
        for root, _dirs, files in os.walk(store):
            for f in files:
                full = Path(root) / f
                zf.write(full, full.relative_to(store).as_posix())
    return dst


def test_zipped_store_reads_like_the_folder(demo_store_master: Path, tmp_path: Path) -> None:
    zipped = _zip_store(demo_store_master, tmp_path / "shared.zip")
    with open_store(str(demo_store_master)) as a, open_store(str(zipped)) as b:
        assert a.items.ids == b.items.ids
        assert a.dataset_fingerprint == b.dataset_fingerprint
        ea = a.embeddings("crepe-tiny").array("clip")[:]
        eb = b.embeddings("crepe-tiny").array("clip")[:]
        np.testing.assert_array_equal(ea, eb)
        np.testing.assert_array_equal(a.features().array("values")[:8],
                                      b.features().array("values")[:8])
        assert b.read_only

    res = CliRunner().invoke(cli, ["info", str(zipped), "--json"])
    assert res.exit_code == 0, res.output
    info = json.loads(res.output)
    assert info["embeddings"]["crepe-tiny"]["complete"]
    assert info["items"] == len(open_store(str(demo_store_master)).items)


def test_zipped_store_refuses_writes(demo_store_master: Path, tmp_path: Path) -> None:
    zipped = _zip_store(demo_store_master, tmp_path / "shared.zip")
    with pytest.raises(EastkdError, match="zipped stores are read-only"):
        open_store(str(zipped), "r+")


def test_distill_and_evaluate_from_a_zipped_store(demo_store_master: Path,
                                                  tmp_path: Path) -> None:
    """The receiving team needs neither the teacher nor the audio: only the zip."""
    from eastkd.pipeline.distill.evaluate import evaluate
    from eastkd.pipeline.distill.train import distill

    zipped = _zip_store(demo_store_master, tmp_path / "shared.zip")
    r = distill(str(zipped), "crepe-tiny", str(tmp_path / "run"), kd="dc", width=8, epochs=2,
                progress=False)
    assert r.epochs_run == 2
    ev = evaluate(str(tmp_path / "run"), str(zipped), split="test")
    assert ev["metrics"]["accuracy"] == pytest.approx(r.test_metrics["accuracy"])
