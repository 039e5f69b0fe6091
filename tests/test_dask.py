"""``extract --dask``: units run as tasks on a dask.distributed LocalCluster started by the test
(worker processes on 127.0.0.1), writing into an S3 store (moto server); a worker killed with
SIGKILL mid-run loses nothing and the result equals an in-process run bit for bit. Also
``compress --dask``: the PCA scatter as a tree reduction on the cluster."""

from __future__ import annotations

import os
import signal
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from fixtures_s3 import _fresh_access, s3  # noqa: F401  (fixtures)
from test_s3 import all_arrays, assert_same_arrays, invoke, small_manifest

from eastkd.pipeline.extract import ExtractOptions, extract
from eastkd.store import OK, EastkdError, configure_access, open_store

SLOW_TEACHER = "eastkd_test_slow_teacher"
SLOW_SOURCE = '''
"""A deterministic teacher slow enough (0.4 s a batch) to be killed mid-unit."""
import time

import torch


class SlowProjection(torch.nn.Module):
    frame_rate = 10.0
    sample_rate = 16000

    def __init__(self):
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.proj = torch.nn.Parameter(torch.randn(1600, 16, generator=g) / 30)

    def forward(self, wave):
        time.sleep(0.4)
        return torch.tanh(wave.unfold(1, 1600, 1600) @ self.proj)


def make():
    return SlowProjection()
'''


@pytest.fixture(scope="module")
def slow_teacher(tmp_path_factory: pytest.TempPathFactory) -> str:
    d = tmp_path_factory.mktemp("slow_teacher")
    (d / f"{SLOW_TEACHER}.py").write_text(SLOW_SOURCE)
    return str(d)


@pytest.fixture(scope="module")
def cluster(slow_teacher: str):
    """Two single-threaded worker processes (spawned) that can import the slow teacher."""
    import dask
    from distributed import Client, LocalCluster

    from eastkd.pipeline.extract.distributed import local_cluster_config

    sys.path.insert(0, slow_teacher)  # spawned workers start with this process's sys.path
    try:
        with dask.config.set(local_cluster_config(2)):
            with LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                              dashboard_address=":0", host="127.0.0.1") as lc, \
                    Client(lc) as client:
                yield client
    finally:
        sys.path.remove(slow_teacher)


def opts(**kw) -> ExtractOptions:
    base = dict(teacher=f"python:{SLOW_TEACHER}:make", progress=False, workers=0,
                chunk_items=2, batch_size=2)
    base.update(kw)
    return ExtractOptions(**base)


def test_killed_worker_is_replaced_and_the_s3_store_equals_an_in_process_run(
        demo_manifest: Path, tmp_path: Path, s3, cluster,  # noqa: F811
        slow_teacher: str, monkeypatch: pytest.MonkeyPatch) -> None:
    from eastkd.pipeline.extract.distributed import extract_distributed

    monkeypatch.syspath_prepend(slow_teacher)
    manifest = small_manifest(demo_manifest, tmp_path / "m.csv", per_class=4)  # 20 clips
    url = s3.url("dask.zarr")
    configure_access({"endpoint_url": s3.endpoint})
    pids = cluster.run(os.getpid)  # worker address -> OS pid
    result: dict[str, object] = {}

    def run() -> None:
        try:
            result["summary"] = extract_distributed(str(manifest), url, opts(), cluster)
        except BaseException as e:  # reported below
            result["error"] = e

    thread = threading.Thread(target=run)
    thread.start()
    victim = _kill_a_busy_worker(cluster, pids, url, thread)
    thread.join(timeout=240)
    assert not thread.is_alive(), "the distributed extract did not finish"
    assert "error" not in result, result.get("error")
    assert victim is not None, "no worker was busy with a unit"
    assert victim not in cluster.run(os.getpid).values(), "the killed worker is still there"
    summary = result["summary"]
    assert summary.written == 20 and summary.already_done == 0

    # CPU kernels round by thread count: the reference runs with each worker's torch threads
    ref = str(tmp_path / "ref.zarr")
    before = torch.get_num_threads()
    torch.set_num_threads(max(1, (os.cpu_count() or 1) // 2))
    try:
        extract(str(manifest), ref, opts())
    finally:
        torch.set_num_threads(before)
    assert_same_arrays(all_arrays(url), all_arrays(ref))


def _kill_a_busy_worker(client, pids: dict[str, int], url: str,
                        run: threading.Thread) -> int | None:
    """SIGKILL a worker that is running a unit, once some units are finished."""
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and run.is_alive():
        busy = [w for w, tasks in client.processing().items()
                if any(str(t).startswith("extract-unit-") for t in tasks)]
        if busy and 2 <= _ok_rows(url) < 16:
            os.kill(pids[busy[0]], signal.SIGKILL)
            return pids[busy[0]]
        time.sleep(0.05)
    return None


def _ok_rows(url: str) -> int:
    try:
        with open_store(url) as s:
            keys = s.section_names("embeddings")
            return int((s.embeddings(keys[0]).status() == OK).sum()) if keys else 0
    except EastkdError:
        return 0


@pytest.mark.parametrize("views", [[], ["--views", "2", "--view-seconds", "0.5",
                                         "--view-gain-db", "3"]], ids=["plain", "views"])
def test_cli_dask_local_extract_equals_in_process(demo_manifest: Path, tmp_path: Path,
                                                  views: list[str]) -> None:
    manifest = small_manifest(demo_manifest, tmp_path / "m.csv", per_class=1)
    common = ["--teacher-opt", "hop_ms=100", "--chunk-items", "2", "-j", "0", "--no-progress",
              "--frames", *views]
    out = invoke("extract", str(manifest), str(tmp_path / "d.zarr"), *common, "--dask",
                 "local:1")
    assert "5 written, 0 skipped now, 0 already done, of 5 items" in out
    invoke("extract", str(manifest), str(tmp_path / "p.zarr"), *common)
    assert_same_arrays(all_arrays(str(tmp_path / "d.zarr")), all_arrays(str(tmp_path / "p.zarr")))


def test_pca_tree_reduction_on_the_cluster_equals_the_streaming_fit(
        demo_store: Path, cluster, tmp_path: Path) -> None:
    from eastkd.pipeline.compress.run import compress

    a = compress(str(demo_store), None, "pca", 8, name="stream", plot=False, progress=False)
    b = compress(str(demo_store), None, "pca", 8, name="tree", plot=False, progress=False,
                 dask=cluster)
    assert a.explained_variance == pytest.approx(b.explained_variance, rel=1e-10)
    with open_store(str(demo_store)) as s:
        pa, pb = s.read_params(s.targets("stream")), s.read_params(s.targets("tree"))
        for k in ("mean", "components", "spectrum"):
            np.testing.assert_allclose(pa[k], pb[k], rtol=1e-9, atol=1e-12)
        np.testing.assert_allclose(s.targets("stream").array("values")[:],
                                   s.targets("tree").array("values")[:], rtol=1e-5, atol=1e-6)


def test_pca_on_the_cluster_fits_every_view(demo_manifest: Path, cluster,
                                            tmp_path: Path) -> None:
    from eastkd.pipeline.compress.run import compress

    manifest = small_manifest(demo_manifest, tmp_path / "m.csv", per_class=2)
    store = tmp_path / "views.zarr"
    extract(str(manifest), str(store), opts(views=3, view_seconds=0.5, view_gain_db=3.0))
    a = compress(str(store), None, "pca", 4, name="stream", plot=False, progress=False)
    b = compress(str(store), None, "pca", 4, name="tree", plot=False, progress=False,
                 dask=cluster)
    assert a.fit_rows == b.fit_rows and a.fit_rows % 3 == 0
    with open_store(str(store)) as s:
        pa, pb = s.read_params(s.targets("stream")), s.read_params(s.targets("tree"))
        np.testing.assert_allclose(pa["components"], pb["components"], rtol=1e-8, atol=1e-10)
        tree = s.targets("tree").array("values")[:]
        assert tree.shape == (10, 3, 4)
        np.testing.assert_allclose(s.targets("stream").array("values")[:], tree, rtol=1e-5,
                                   atol=1e-6)


def test_bad_dask_values_are_one_line_errors(demo_manifest: Path, tmp_path: Path) -> None:
    import dask
    from click.testing import CliRunner

    from eastkd.cli.main import cli

    manifest = small_manifest(demo_manifest, tmp_path / "m.csv", per_class=1)
    for value, msg in (("local:0", "local:N with N >= 1"),
                       ("tcp://127.0.0.1:1", "no scheduler answers")):
        with dask.config.set({"distributed.comm.timeouts.connect": "2s"}):
            res = CliRunner().invoke(cli, ["extract", str(manifest), str(tmp_path / "x.zarr"),
                                           "--dask", value, "--no-progress"])
        assert res.exit_code == 1 and msg in res.output, res.output
    res = CliRunner().invoke(cli, ["extract", str(manifest), str(tmp_path / "x.h5"),
                                   "--dask", "local:1", "--no-progress"])
    assert res.exit_code == 1 and "needs a Zarr store" in res.output


def test_workers_share_their_machines_cores_and_gpus(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each worker gets its machine's cores divided by the workers there, and a slot by
    address there; with several GPUs (mocked: this machine has none) ``cuda`` and ``auto`` put
    slot i on GPU i modulo their count, and an explicit device is kept."""
    from eastkd.pipeline.extract.distributed import Placement, placements, worker_device

    workers = {"tcp://10.0.0.2:41": {"host": "10.0.0.2"}, "tcp://10.0.0.1:9": {"host": "10.0.0.1"},
               "tcp://10.0.0.1:7": {"host": "10.0.0.1"}, "tcp://10.0.0.1:8": {"host": "10.0.0.1"}}
    cores = {"tcp://10.0.0.1:7": 16, "tcp://10.0.0.1:8": 16, "tcp://10.0.0.1:9": 16,
             "tcp://10.0.0.2:41": None}
    assert placements(workers, cores) == {
        "tcp://10.0.0.1:7": Placement(5, 0), "tcp://10.0.0.1:8": Placement(5, 1),
        "tcp://10.0.0.1:9": Placement(5, 2), "tcp://10.0.0.2:41": Placement(1, 0)}

    assert [worker_device("cuda", s) for s in range(3)] == ["cuda"] * 3  # no GPU here
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert [worker_device("cuda", s) for s in range(3)] == ["cuda:0", "cuda:1", "cuda:0"]
    assert worker_device("auto", 1) == "cuda:1"
    assert worker_device("cuda:1", 0) == "cuda:1" and worker_device("cpu", 1) == "cpu"
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    assert worker_device("cuda", 1) == "cuda"


def test_local_cluster_run_prints_only_the_summary(demo_manifest: Path, tmp_path: Path) -> None:
    """A normal `extract --dask local:1` run, as a user starts it: the summary, and no dask
    INFO lines, nanny warnings or "leaked semaphore" reports on stderr."""
    import subprocess

    manifest = small_manifest(demo_manifest, tmp_path / "m.csv", per_class=1)  # 5 clips
    res = subprocess.run(
        [sys.executable, "-m", "eastkd.cli.main", "extract", str(manifest),
         str(tmp_path / "s.zarr"), "--teacher", "crepe-tiny", "--teacher-opt", "hop_ms=100",
         "--no-progress", "--dask", "local:1"],
        capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr
    assert "5 written" in res.stdout
    for noise in ("INFO", "distributed", "leaked", "semaphore", "Traceback"):
        assert noise not in res.stderr, res.stderr
