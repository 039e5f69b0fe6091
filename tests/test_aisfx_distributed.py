"""``extract --teacher aisfx`` on a dask LocalCluster (``--dask local:2``) and into a store at an
S3 URL (moto server): both equal an in-process run into a local folder, bit for bit."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
from fixtures_s3 import _fresh_access, s3  # noqa: F401  (fixtures)
from test_s3 import all_arrays, assert_same_arrays, invoke, small_manifest

from eastkd.store import configure_access

pytestmark = pytest.mark.skipif(importlib.util.find_spec("aisfx") is None,
                                reason="aisfx not installed (pip install --no-deps aisfx==0.1.2)")


def test_aisfx_extract_on_dask_and_at_an_s3_url_equals_in_process(
        demo_manifest: Path, tmp_path: Path, s3) -> None:  # noqa: F811
    manifest = str(small_manifest(demo_manifest, tmp_path / "m.csv", per_class=1))  # 5 clips
    common = ["--teacher", "aisfx", "--chunk-items", "2", "-j", "0", "--no-progress"]
    local, dask, url = str(tmp_path / "p.zarr"), str(tmp_path / "d.zarr"), s3.url("ax.zarr")
    invoke("extract", manifest, local, *common)
    out = invoke("extract", manifest, dask, *common, "--dask", "local:2")
    assert "5 written, 0 skipped now, 0 already done, of 5 items" in out
    invoke("extract", manifest, url, *common, *s3.cli_options)

    reference = all_arrays(local)
    assert reference["embeddings/aisfx/clip"].shape == (5, 512)
    assert_same_arrays(all_arrays(dask), reference)
    configure_access({"endpoint_url": s3.endpoint})
    assert_same_arrays(all_arrays(url), reference)
