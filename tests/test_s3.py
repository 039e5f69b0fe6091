"""Stores at URLs, against a real S3 server (moto's server mode on 127.0.0.1, reached with s3fs):
extract into ``s3://``, info, compress, distill and evaluate from the URL, the local chunk cache,
creation "marker last" with take-over of a half-created store, kill-9 resume, and a store
pushed by one team and distilled by another from the URL alone."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from fixtures_s3 import _fresh_access, s3  # noqa: F401  (fixtures)

from eastkd.cli.main import cli
from eastkd.store import (
    OK,
    EastkdError,
    StoreNotFoundError,
    configure_access,
    open_store,
    store_exists,
)

HOP_CLI = ["--teacher-opt", "hop_ms=100"]


def small_manifest(demo_manifest: Path, dst: Path, per_class: int = 3) -> Path:
    """The first ``per_class`` demo clips of each family (every split represented)."""
    with demo_manifest.open(newline="") as fh:
        rows = list(csv.DictReader(fh))
    by: dict[str, list[dict[str, str]]] = {}
    for r in rows:
        r["path"] = str((demo_manifest.parent / r["path"]).resolve())
        by.setdefault(r["label"], []).append(r)
    for c, class_rows in by.items():  # alternate the splits: every split in every family
        by_split: dict[str, list[dict[str, str]]] = {}
        for r in class_rows:
            by_split.setdefault(r["split"], []).append(r)
        by[c] = [rs[i] for i in range(len(class_rows)) for _, rs in sorted(by_split.items())
                 if i < len(rs)]
    picked = [by[c][i] for i in range(per_class) for c in sorted(by)]
    with dst.open("w", newline="") as fh:
        w = csv.DictWriter(fh, ["id", "path", "label", "split"], extrasaction="ignore")
        w.writeheader()
        w.writerows(picked)
    return dst


def invoke(*args: str) -> str:
    res = CliRunner().invoke(cli, list(args), catch_exceptions=False)
    assert res.exit_code == 0, res.output
    return res.output


def all_arrays(path: str) -> dict[str, np.ndarray]:
    """Every array of the store (items table and all sections, params included)."""
    out = {}
    with open_store(path) as s:
        def walk(group: str) -> None:
            for c in s.backend.children(group):
                p = f"{group}/{c}" if group else c
                if s.backend.is_array(p):
                    out[p] = s.backend.read(p)
                else:
                    walk(p)
        walk("")
    return out


def assert_same_arrays(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> None:
    assert sorted(a) == sorted(b)
    for k in a:
        assert a[k].dtype == b[k].dtype and a[k].shape == b[k].shape, k
        assert np.array_equal(a[k], b[k]), k


def test_every_stage_runs_on_a_store_at_an_s3_url(demo_manifest: Path, tmp_path: Path,
                                                   s3) -> None:  # noqa: F811
    manifest = small_manifest(demo_manifest, tmp_path / "m.csv")
    url, local = s3.url("team.zarr"), str(tmp_path / "local.zarr")
    common = [*HOP_CLI, "--chunk-items", "4", "-j", "0", "--no-progress"]
    invoke("extract", str(manifest), url, *common, *s3.cli_options)
    invoke("extract", str(manifest), local, *common)
    assert s3.fs.exists(f"{s3.bucket}/team.zarr/zarr.json")

    configure_access({"endpoint_url": s3.endpoint})
    assert_same_arrays(all_arrays(url), all_arrays(local))

    info = json.loads(invoke("info", url, "--json", *s3.cli_options))
    assert info["path"] == url and info["items"] == 15 and info["bytes_on_disk"] > 0
    assert info["embeddings"]["crepe-tiny"]["complete"]

    # the identity checks hold at a URL: other teacher options, another dataset
    other = CliRunner().invoke(cli, ["extract", str(manifest), url, "--teacher-opt",
                                     "hop_ms=50", *common[2:], *s3.cli_options])
    assert other.exit_code == 1 and "--overwrite" in other.output, other.output
    fewer = small_manifest(demo_manifest, tmp_path / "fewer.csv", per_class=1)
    other = CliRunner().invoke(cli, ["extract", str(fewer), url, *common, *s3.cli_options])
    assert other.exit_code == 1 and "another dataset" in other.output, other.output

    for store in (url, local):
        invoke("compress", store, "--method", "pca", "--dim", "4", "--plot",
               str(tmp_path / "pca.png"), "--no-progress", *s3.cli_options)
    configure_access({"endpoint_url": s3.endpoint})
    with open_store(url) as r, open_store(local) as lo:
        np.testing.assert_allclose(r.targets("crepe-tiny-pca4").array("values")[:],
                                   lo.targets("crepe-tiny-pca4").array("values")[:],
                                   rtol=1e-6, atol=1e-6)

    run = tmp_path / "run"
    invoke("distill", url, "--targets", "crepe-tiny-pca4", "--out", str(run), "--epochs", "2",
           "--width", "8", "--batch-size", "4", "--no-progress", "--cache-dir",
           str(tmp_path / "cache"), *s3.cli_options)
    config = json.loads((run / "config.json").read_text())
    assert config["store"]["path"] == url
    assert any((tmp_path / "cache").rglob("*/c/*")), "no chunk was cached"
    remote = json.loads(invoke("evaluate", str(run), url, "--json", *s3.cli_options))
    here = json.loads(invoke("evaluate", str(run), local, "--json"))
    assert remote["n_items"] == here["n_items"] == 5
    assert remote["metrics"] == here["metrics"]


def test_chunk_cache_serves_reads_and_never_stale_sections(demo_store_master: Path,
                                                           tmp_path: Path,
                                                           s3) -> None:  # noqa: F811
    """A warm cache serves chunks without the server; metadata and status are read afresh, and
    a section rewritten with other settings is never served from the old chunks."""
    s3.fs.put(str(demo_store_master), f"{s3.bucket}/cached.zarr", recursive=True)
    url, cache = s3.url("cached.zarr"), str(tmp_path / "cache")
    configure_access({"endpoint_url": s3.endpoint}, cache_dir=cache)
    with open_store(url) as s:
        first = s.embeddings("crepe-tiny").array("clip")[:]
    chunk = s3.fs.find(f"{s3.bucket}/cached.zarr/embeddings/crepe-tiny/clip/c")[0]
    s3.fs.rm(chunk)  # the object is gone: only the cache still has it
    with open_store(url) as s:
        np.testing.assert_array_equal(s.embeddings("crepe-tiny").array("clip")[:], first)

    # another writer replaces the section with another identity: readers see the new data
    configure_access({"endpoint_url": s3.endpoint})
    with open_store(url, "r+") as w:
        sec = w.embeddings("crepe-tiny")
        w.backend.update_attrs(sec.path, {"identity": {"replaced": True}})
        n = len(w.items)
        sec.write_block(0, {"clip": np.ones((n, first.shape[1]), first.dtype)},
                        np.full(n, OK, np.uint8), [""] * n)
    configure_access({"endpoint_url": s3.endpoint}, cache_dir=cache)
    with open_store(url) as s:
        assert (s.embeddings("crepe-tiny").array("clip")[:] == 1).all()


def test_half_created_store_is_refused_then_taken_over(demo_manifest: Path, tmp_path: Path,
                                                       s3) -> None:  # noqa: F811
    """Object stores cannot rename: the format marker is written last, and a store without it
    (its creator died) is not a store to readers and is taken over by the next extract."""
    import zarr

    from eastkd.store.backends.zarr_url import fsspec_store

    url = s3.url("half.zarr")
    configure_access({"endpoint_url": s3.endpoint})
    root = zarr.open_group(fsspec_store(url, read_only=False), mode="w", zarr_format=3)
    root.create_array("items/id", shape=(2,), dtype=str)  # the creator died here
    assert not store_exists(url)
    with pytest.raises(StoreNotFoundError, match="not an eastkd store"):
        open_store(url)
    manifest = small_manifest(demo_manifest, tmp_path / "m.csv", per_class=1)
    invoke("extract", str(manifest), url, *HOP_CLI, "-j", "0", "--no-progress",
           *s3.cli_options)
    configure_access({"endpoint_url": s3.endpoint})
    with open_store(url) as s:
        assert len(s.items) == 5 and s.embeddings("crepe-tiny").complete


@pytest.mark.parametrize("views", [[], ["--views", "2", "--view-seconds", "0.5",
                                         "--view-gain-db", "3"]], ids=["plain", "views"])
def test_kill9_resume_on_s3_equals_an_uninterrupted_run(demo_manifest: Path, tmp_path: Path,
                                                        s3, views: list[str]) -> None:  # noqa: F811
    manifest = small_manifest(demo_manifest, tmp_path / "m.csv")  # 15 clips
    url = s3.url("resume-views.zarr" if views else "resume.zarr")
    args = ["extract", str(manifest), url, *HOP_CLI, "--chunk-items", "2", "-b", "2", "-j", "0",
            "--no-progress", *views, *s3.cli_options]
    configure_access({"endpoint_url": s3.endpoint})

    def ok_rows() -> int:
        try:
            with open_store(url) as s:
                return int((s.embeddings("crepe-tiny").status() == OK).sum())
        except EastkdError:
            return 0

    proc = subprocess.Popen([sys.executable, "-m", "eastkd.cli.main", *args],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while proc.poll() is None and time.monotonic() < deadline and ok_rows() < 4:
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL, "the run ended before it could be killed"
    assert 4 <= ok_rows() < 15

    invoke(*args)
    ref = str(tmp_path / "ref.zarr")
    invoke(*args[:2], ref, *args[3:-2])
    configure_access({"endpoint_url": s3.endpoint})
    a, b = all_arrays(url), all_arrays(ref)
    assert_same_arrays(a, b)


def test_a_store_pushed_by_one_team_is_distilled_by_another_from_the_url(
        demo_store_master: Path, tmp_path: Path, s3,  # noqa: F811
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Team A extracted locally and pushed the folder; team B has only the URL and the
    endpoint (in the usual environment variable) and never copies the store."""
    s3.fs.put(str(demo_store_master), f"{s3.bucket}/shared/demo.zarr", recursive=True)
    url = s3.url("shared/demo.zarr")
    env = {**os.environ, "AWS_ENDPOINT_URL": s3.endpoint}
    run = tmp_path / "team-b-run"
    cmd = [sys.executable, "-m", "eastkd.cli.main", "distill", url, "--targets", "crepe-tiny",
           "--out", str(run), "--epochs", "2", "--width", "8", "--kd", "dc", "--no-progress"]
    res = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    assert (run / "best.pt").is_file()
    monkeypatch.setenv("AWS_ENDPOINT_URL", s3.endpoint)
    assert json.loads(invoke("evaluate", str(run), url, "--json"))["n_items"] > 0


def test_hdf5_and_zip_urls_are_refused_with_one_line(s3) -> None:  # noqa: F811
    for name, what in (("x.h5", "HDF5 stores must be local"),
                       ("x.zip", "zipped stores must be local")):
        res = CliRunner().invoke(cli, ["info", s3.url(name), *s3.cli_options])
        assert res.exit_code == 1
        assert what in res.output and len(res.output.strip().splitlines()) == 1


def test_missing_url_store_says_so(s3) -> None:  # noqa: F811
    res = CliRunner().invoke(cli, ["info", s3.url("nothing.zarr"), *s3.cli_options])
    assert res.exit_code == 1 and "no such store" in res.output


@pytest.mark.parametrize("context", ["spawn", "fork"])
def test_reader_workers_open_the_url_with_the_same_options(demo_store_master: Path,
                                                           tmp_path: Path, context: str,
                                                           s3) -> None:  # noqa: F811
    """Reader worker processes reopen the store by its URL: the storage options and the chunk
    cache of the process that made the reader reach them (a spawned worker inherits no
    configuration), and they read the same batches as the in-process reader."""
    import torch

    from eastkd.pipeline.core.reading import RowStream, split_rows

    s3.fs.put(str(demo_store_master), f"{s3.bucket}/{context}.zarr", recursive=True)
    url, cache = s3.url(f"{context}.zarr"), tmp_path / "cache"
    configure_access({"endpoint_url": s3.endpoint}, cache_dir=str(cache))  # no env variable
    with open_store(url) as s:
        rows = split_rows(s, "train")
        arrays = {"x": s.features().array("values"), "t": s.embeddings("crepe-tiny").array("clip")}
        multi = RowStream(arrays, rows, memory_limit=0, shuffle_buffer=1 << 16, workers=2,
                          context=context)
        try:
            b = list(multi.batches(8, torch.Generator().manual_seed(3)))
        finally:
            multi.close()
        assert any(cache.rglob("*/embeddings/crepe-tiny/clip/c/*")), "workers bypassed the cache"
        plain = RowStream(arrays, rows, memory_limit=0, shuffle_buffer=1 << 16, workers=0)
        a = list(plain.batches(8, torch.Generator().manual_seed(3)))
    assert len(a) == len(b) > 1
    for p, q in zip(a, b):
        assert all(torch.equal(p[k], q[k]) for k in ("pos", "x", "t"))


def test_distill_from_the_url_with_reader_workers(demo_store_master: Path, tmp_path: Path,
                                                  s3) -> None:  # noqa: F811
    """`distill --workers 2` streaming from an S3 URL reached only through --storage-option."""
    s3.fs.put(str(demo_store_master), f"{s3.bucket}/workers.zarr", recursive=True)
    url = s3.url("workers.zarr")
    run = tmp_path / "run"
    invoke("distill", url, "--targets", "crepe-tiny", "--out", str(run), "--epochs", "1",
           "--width", "8", "--batch-size", "8", "--memory-limit", "0", "--workers", "2",
           "--no-progress", "--cache-dir", str(tmp_path / "cache"), *s3.cli_options)
    assert (run / "best.pt").is_file()
    assert json.loads((run / "config.json").read_text())["store"]["path"] == url
    assert any((tmp_path / "cache").rglob("*/c/*"))


def test_verify_checks_and_repairs_a_store_at_a_url(demo_store_master: Path,
                                                    s3) -> None:  # noqa: F811
    """`eastkd verify` lists and checks the chunk objects at the URL (never a local cache of
    them): a flipped and a deleted chunk are found, and --repair marks their rows pending."""
    s3.fs.put(str(demo_store_master), f"{s3.bucket}/verify.zarr", recursive=True)
    url = s3.url("verify.zarr")
    assert "ok: every chunk" in invoke("verify", url, "--no-progress", *s3.cli_options)
    res = CliRunner().invoke(cli, ["verify", url, "--cache-dir", "x", *s3.cli_options])
    assert res.exit_code == 2 and "--cache-dir" in res.output  # verify reads the store itself

    chunks = sorted(s3.fs.find(f"{s3.bucket}/verify.zarr/embeddings/crepe-tiny/clip/c"))
    data = bytearray(s3.fs.cat_file(chunks[0]))
    data[len(data) // 2] ^= 0xFF
    s3.fs.pipe_file(chunks[0], bytes(data))
    s3.fs.rm(chunks[-1])
    res = CliRunner().invoke(cli, ["verify", url, "--no-progress", *s3.cli_options])
    assert res.exit_code == 1, res.output
    assert res.output.count("DAMAGED  embeddings/crepe-tiny/clip") == 2, res.output
    assert "checksum mismatch" in res.output and "missing" in res.output, res.output
    res = CliRunner().invoke(cli, ["verify", url, "--repair", "--no-progress",
                                   *s3.cli_options])
    assert res.exit_code == 1 and "rows marked pending" in res.output, res.output
    res = CliRunner().invoke(cli, ["verify", url, "--no-progress", *s3.cli_options])
    assert res.exit_code == 0 and "DAMAGED" not in res.output, res.output
