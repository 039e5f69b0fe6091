"""Content digests (docs/store-format.md, "Content digest"): per-chunk sha256 of the decoded
rows recorded at write time and one store digest, printed by ``info``, reported and checked by
``verify``. Tiny real stores (15 rendered clips, crepe-tiny, 4-item chunks, PCA targets), both
backends; tampering is done the way a careful attacker would: through zarr/h5py, so that every
codec checksum stays valid."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from fixtures_tiny import KEY, compress_tiny, extract_tiny, run

from eastkd.store import open_store


def info_digest(store: Path) -> str:
    return json.loads(run("info", store, "--json")[1])["digest"]


def _rewrite_as_zeros(store: Path, array: str, rows: slice) -> None:
    """Overwrite rows through the format's own library: the codec checksums stay valid."""
    if store.is_dir():
        import zarr

        arr = zarr.open_array(str(store / array), mode="r+")
        arr[rows] = 0
    else:
        import h5py

        with h5py.File(store, "r+") as f:
            f[array][rows] = 0


def test_info_and_verify_agree_on_the_digest(built: Path, tmp_path: Path) -> None:
    code, out = run("info", built)
    digest = info_digest(built)
    assert code == 0 and digest.startswith("eastkd:sha256:") and len(digest) == 14 + 64
    assert f"digest   {digest}" in out
    report = json.loads(run("verify", built, "--json", "--no-progress")[1])
    assert report["ok"] and report["digest"] == digest and not report["digest_checked"]
    report = json.loads(run("verify", built, "--json", "--deep", "--no-progress")[1])
    assert report["ok"] and report["digest"] == digest and report["digest_checked"]
    assert set(report["digest_sections"]) == {"features/logmel", f"embeddings/{KEY}",
                                              "targets/pca4"}
    code, out = run("verify", built, "--digest", digest, "--no-progress")
    assert code == 0, out
    card = tmp_path / "card.json"
    card.write_text(run("info", built, "--json")[1])
    assert run("verify", built, "--digest", card, "--no-progress")[0] == 0


def test_rewrite_with_valid_checksum_is_caught(store: Path, built: Path, tiny_manifest: Path,
                                              tmp_path: Path) -> None:
    published = tmp_path / "published.json"
    published.write_text(run("info", built, "--json")[1])
    digest = info_digest(built)
    _rewrite_as_zeros(store, f"embeddings/{KEY}/clip", slice(4, 8))
    code, out = run("verify", store, "--no-progress")  # checksums only (the default): unseen
    assert code == 0 and "content digest" not in out, out
    code, out = run("verify", store, "--deep", "--no-progress")
    assert code == 1, out
    assert (f"DAMAGED  embeddings/{KEY}/clip items 4-7: content differs from the digest "
            "recorded when it was written") in out
    code, out = run("verify", store, "--digest", published, "--no-progress")
    lines = [line for line in out.splitlines() if "differs from the expected" in line]
    assert code == 1 and len(lines) == 1 and lines[0].endswith(f"differing: embeddings/{KEY}")
    # the usual way back: repair marks the rows pending, the same extract recomputes them
    assert run("verify", store, "--deep", "--repair", "--no-progress")[0] == 1
    extract_tiny(tiny_manifest, store)
    compress_tiny(store)  # the targets fitted before the repair are stale: the same compress refits
    assert info_digest(store) == digest
    assert run("verify", store, "--digest", digest, "--no-progress")[0] == 0


def test_digest_is_stable_across_a_resume(built: Path, tiny_manifest: Path,
                                          tmp_path: Path) -> None:
    """A run stopped after two units, then resumed (then compressed), has the digest of the
    store written in one go; a repeat run writes nothing and keeps it."""
    store = tmp_path / built.name
    extract_tiny(tiny_manifest, store, units=[0, 1])
    partial = info_digest(store)
    extract_tiny(tiny_manifest, store)
    compress_tiny(store)
    assert partial != info_digest(store) == info_digest(built)
    extract_tiny(tiny_manifest, store)
    assert info_digest(store) == info_digest(built)


def test_same_data_has_the_same_digest_in_both_backends(tmp_path: Path) -> None:
    from synthetic import make_synthetic_store

    digests = {info_digest(Path(make_synthetic_store(str(tmp_path / name), 200)))
               for name in ("a.zarr", "a.h5")}
    assert len(digests) == 1


def _drop_digests(store: Path) -> None:
    """Make the store look written before format 3: no chunk digests recorded."""
    with open_store(str(store), "r+") as s:
        for kind in ("features", "embeddings", "targets"):
            for name in s.section_names(kind):
                s.backend.delete(f"{kind}/{name}/digest")
        s.backend.update_attrs("", {"format_version": 2})


def test_store_without_digests_still_works(store: Path, built: Path) -> None:
    digest = info_digest(built)
    _drop_digests(store)
    code, out = run("info", store)
    assert code == 0 and "digest   no digest (" in out and "verify --deep" in out
    report = json.loads(run("verify", store, "--json", "--no-progress")[1])
    assert report["ok"] and report["digest"] is None
    # computed from the content: the same digest as the store that recorded it
    report = json.loads(run("verify", store, "--json", "--deep", "--no-progress")[1])
    assert report["ok"] and report["digest"] == digest
    assert run("verify", store, "--digest", digest, "--no-progress")[0] == 0
    _rewrite_as_zeros(store, "features/logmel/values", slice(0, 4))
    code, out = run("verify", store, "--digest", digest, "--no-progress")
    assert code == 1 and "differs from the expected" in out
    with open_store(str(store)) as s:  # still read as before
        assert np.isfinite(s.features().array("values")[:4]).all()
