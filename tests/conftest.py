"""Shared fixtures: a small real dataset rendered from the bundled SoundFont, and a store
extracted from it with the real crepe-tiny teacher (session-scoped: built once per run)."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Iterator

import pytest

# the tiny real stores (``built``, ``store``, ``tiny_manifest``) of the integrity, digest and
# faults tests: fixtures for every module that asks for them by name
pytest_plugins = ["fixtures_tiny"]

# 5 families x 16 clips of 1 s: big enough that a student clearly beats chance in seconds
DEMO_CLIPS_PER_CLASS = 16
DEMO_SECONDS = 1.0
TEACHER_OPTS = {"hop_ms": 100}


@pytest.fixture(autouse=True)
def no_hdf5_handle_left_open() -> Iterator[None]:
    """No test may leave an HDF5 handle that a failed write could not close: it would crash
    the process when it is garbage-collected later, in another test (run such a command in a
    subprocess instead)."""
    yield
    from eastkd.store.backends.hdf5_backend import has_abandoned_files

    assert not has_abandoned_files(), "an HDF5 handle was left open after a failed write"


@pytest.fixture(scope="module")
def one_thread():
    """One intra-op thread for a module's tests: faster on the shared 2-core machine and a
    fixed reduction order (modules opt in with ``pytest.mark.usefixtures("one_thread")``)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def demo_manifest(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from eastkd.pipeline.demo.data import render_demo_dataset

    out = tmp_path_factory.mktemp("demo_data")
    return render_demo_dataset(out, clips_per_class=DEMO_CLIPS_PER_CLASS, seconds=DEMO_SECONDS,
                               seed=0, progress=False)


def extract_demo(manifest: Path, store: Path, **kw) -> None:
    from eastkd.pipeline.extract import ExtractOptions, extract

    opts = ExtractOptions(teacher="crepe-tiny", teacher_options=dict(TEACHER_OPTS),
                          progress=False, workers=0, **kw)
    extract(str(manifest), str(store), opts)


@pytest.fixture(scope="session")
def demo_store_master(tmp_path_factory: pytest.TempPathFactory, demo_manifest: Path) -> Path:
    store = tmp_path_factory.mktemp("stores") / "demo.zarr"
    extract_demo(demo_manifest, store, frames=True)
    return store


@pytest.fixture
def demo_store(tmp_path: Path, demo_store_master: Path) -> Path:
    """A private copy of the extracted demo store that a test may modify."""
    dst = tmp_path / "demo.zarr"
    shutil.copytree(demo_store_master, dst)
    return dst
