"""Tiny real stores shared by test_integrity, test_digest and test_faults: 15 rendered clips
(3 per family, 1 s), the crepe-tiny teacher (hop 100 ms), 4-item chunks, frames and PCA
targets ``pca4``. ``built`` is one store per backend (module-scoped); ``store`` is a private
copy of it that a test may damage."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner
from conftest import extract_demo

from eastkd.cli.main import cli

TARGETS = "pca4"
KEY = "crepe-tiny"
SUFFIX = {"zarr": "zarr", "hdf5": "h5"}


def extract_tiny(manifest: Path, store: Path, units: list[int] | None = None) -> None:
    """Extract crepe-tiny clip and frame embeddings in 4-item chunks (only ``units`` if given)."""
    extract_demo(manifest, store, chunk_items=4, frames=True, units=units)


def compress_tiny(store: Path) -> None:
    """Fit the 4-dimensional PCA targets ``pca4``."""
    from eastkd.pipeline.compress.run import compress

    compress(str(store), None, "pca", 4, name=TARGETS, plot=False, progress=False)


def run(*args: object) -> tuple[int, str]:
    """Exit code and output (stdout and stderr, interleaved) of one ``eastkd`` command; an
    exception other than the exit re-raises, so that a traceback fails the test."""
    res = CliRunner().invoke(cli, [str(a) for a in args])
    if res.exception is not None and not isinstance(res.exception, SystemExit):
        raise res.exception
    return res.exit_code, res.output


@pytest.fixture(scope="module")
def tiny_manifest(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from eastkd.pipeline.demo.data import render_demo_dataset

    out = tmp_path_factory.mktemp("tiny_data")
    return render_demo_dataset(out, clips_per_class=3, seconds=1.0, seed=0, progress=False)


@pytest.fixture(scope="module", params=["zarr", "hdf5"])
def built(request: pytest.FixtureRequest, tiny_manifest: Path,
          tmp_path_factory: pytest.TempPathFactory) -> Path:
    store = tmp_path_factory.mktemp("tiny_store") / f"tiny.{SUFFIX[request.param]}"
    extract_tiny(tiny_manifest, store)
    compress_tiny(store)
    return store


@pytest.fixture
def store(built: Path, tmp_path: Path) -> Path:
    dst = tmp_path / built.name
    (shutil.copytree if built.is_dir() else shutil.copy)(built, dst)
    return dst
