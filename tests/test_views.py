"""Consistent augmented views (``extract --views K``) on real rendered audio with the real
crepe-tiny teacher: stored parameters, the teacher's output per view against the teacher run on
the cropped and gained wave directly, one log-mel per item, the K = 1 layout, and errors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from test_extract import (  # noqa: F401 - fixtures
    HOP,
    HOP_CLI,
    TEACHER_MODULE,
    all_arrays,
    assert_bitwise_equal,
    decoded,
    opts,
    pick,
    run_cli,
    teacher_dir,
    user_teacher,
    write_manifest,
)

from eastkd.pipeline.core.audio import Segment
from eastkd.pipeline.core.features import LogMel, LogMelParams
from eastkd.pipeline.core.reading import epoch_views
from eastkd.pipeline.core.views import ViewSpec, log_gain, offset_hops, view_params
from eastkd.pipeline.extract import extract
from eastkd.pipeline.teachers.loading import load_teacher
from eastkd.store import EastkdError, open_store

pytestmark = pytest.mark.usefixtures("one_thread")
VIEWS = dict(views=3, view_seconds=0.6, view_gain_db=6.0, view_seed=7)
KEY = "crepe-tiny"


@pytest.fixture(scope="module")
def views_store(tmp_path_factory: pytest.TempPathFactory, demo_manifest: Path) -> tuple[Path, Path]:
    d = tmp_path_factory.mktemp("views")
    rows = pick(demo_manifest, 3)  # 15 clips: the first two of each family train, one valid
    for i, row in enumerate(rows):
        row["split"] = "train" if i < 10 else "valid"
    manifest = write_manifest(d / "m.csv", rows)
    store = d / "views.zarr"
    extract(str(manifest), str(store), opts(frames=True, dtype="float32", **VIEWS))
    return manifest, store


def test_view_parameters_are_stored_on_the_hop_grid_and_reproducible(views_store) -> None:
    manifest, store = views_store
    lm = LogMelParams()
    with open_store(str(store)) as s:
        emb = s.embeddings(KEY)
        params = emb.array("views")[:]
        ids = s.items.ids
        attrs = emb.attrs["views"]
        assert emb.array("clip").shape == (15, 3, 256)
        assert emb.array("frames").shape[:2] == (15, 3)
        assert s.features("logmel").array("values").shape == (15, 96, lm.n_frames(16000))
    assert params.shape == (15, 3, 3) and params.dtype == np.float64
    assert attrs["k"] == 3 and attrs["seconds"] == 0.6 and attrs["seed"] == 7
    # drawn from (seed, item id, view) alone: recomputed exactly, whatever the position
    spec = ViewSpec(3, 0.6, 6.0, 7)
    np.testing.assert_array_equal(params, view_params(ids, spec, Segment(1.0), lm))
    np.testing.assert_array_equal(params[::-1], view_params(ids[::-1], spec, Segment(1.0), lm))
    hops = offset_hops(params[..., 0], lm)
    np.testing.assert_allclose(params[..., 0], hops * lm.hop_length / lm.sample_rate)
    assert hops.min() >= 0 and hops.max() * lm.hop_length + 9600 <= 16000
    assert len(np.unique(hops)) > 3  # the crops really differ
    assert np.abs(params[..., 1]).max() <= 6.0 and np.abs(params[..., 1]).min() > 0
    other = view_params(ids, ViewSpec(3, 0.6, 6.0, 8), Segment(1.0), lm)
    assert not np.array_equal(other, params)


def test_teacher_output_per_view_equals_the_teacher_on_the_cropped_gained_wave(
        views_store) -> None:
    manifest, store = views_store
    teacher = load_teacher("crepe-tiny", dict(HOP))
    teacher.model.eval()
    with open_store(str(store)) as s:
        emb = s.embeddings(KEY)
        params, clip = emb.array("views")[:], emb.array("clip")[:]
        frames = emb.array("frames")[:]
        paths = s.items.paths
    for i in (0, 7):
        wave = decoded(paths[i])[:16000]
        for v in range(3):
            start = int(round(params[i, v, 0] * 16000))
            crop = wave[start:start + 9600] * 10 ** (params[i, v, 1] / 20)
            with torch.inference_mode():
                out = teacher(crop[None].float())
            np.testing.assert_allclose(clip[i, v], out.clip[0].numpy(), rtol=1e-4, atol=1e-4)
            np.testing.assert_allclose(frames[i, v], out.frames[0].numpy(), rtol=1e-4,
                                       atol=1e-4)
    assert not np.allclose(clip[:, 0], clip[:, 1], atol=1e-3)


def test_a_view_of_the_whole_clip_log_mel_is_the_views_own_log_mel(views_store) -> None:
    """The hop-grid promise distill relies on: frames ``h .. h+F`` of the stored whole-clip
    log-mel are the view's own log-mel (plus its gain in the log domain) away from the STFT
    window at the view's edges."""
    manifest, store = views_store
    lm = LogMelParams()
    logmel = LogMel(lm)
    with open_store(str(store)) as s:
        params = s.embeddings(KEY).array("views")[:]
        whole = s.features("logmel").array("values")[:]
        paths = s.items.paths
    n_view = lm.n_frames(9600)
    edge = lm.n_fft // (2 * lm.hop_length) + 1  # frames whose window reaches past the view
    for i in (1, 4):
        wave = decoded(paths[i])[:16000]
        for v in range(3):
            h = int(offset_hops(params[i, v, 0], lm))
            gain = params[i, v, 1]
            crop = wave[h * lm.hop_length:h * lm.hop_length + 9600] * 10 ** (gain / 20)
            own = logmel(crop[None].float())[0].numpy()
            cut = whole[i][:, h:h + n_view] + log_gain(gain)
            inner = slice(edge, n_view - edge)
            loud = own[:, inner] > np.log(lm.log_offset) + 8  # well above the log floor
            assert loud.mean() > 0.2
            np.testing.assert_allclose(cut[:, inner][loud], own[:, inner][loud], atol=2e-3)


def test_views_one_keeps_todays_layout_and_bad_settings_are_one_line(
        demo_manifest: Path, tmp_path: Path) -> None:
    manifest = write_manifest(tmp_path / "m.csv", pick(demo_manifest, 1))
    extract(str(manifest), str(tmp_path / "a.zarr"), opts())
    extract(str(manifest), str(tmp_path / "b.zarr"), opts(views=1))
    a, b = all_arrays(tmp_path / "a.zarr"), all_arrays(tmp_path / "b.zarr")
    assert "embeddings/crepe-tiny/views" not in a and a["embeddings/crepe-tiny/clip"].ndim == 2
    assert_bitwise_equal(a, b)
    for kw, msg in [(dict(views=1, view_seconds=0.5), "need --views K with K > 1"),
                    (dict(views=2, view_seconds=2.0), "longer than the segment"),
                    (dict(views=0), "must be at least 1")]:
        with pytest.raises(EastkdError, match=msg):
            extract(str(manifest), str(tmp_path / "c.zarr"), opts(**kw))
    # other views on a store with views: refused, naming the setting
    extract(str(manifest), str(tmp_path / "v.zarr"), opts(views=2, view_seconds=0.5))
    r = run_cli("extract", str(manifest), str(tmp_path / "v.zarr"), *HOP_CLI, "--views", "2",
                "--view-seconds", "0.4", "-j", "0", "--no-progress")
    assert r.returncode != 0 and "differs in: views" in r.stderr
    assert "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) == 1


def test_compress_fits_every_view_and_writes_targets_per_view(views_store, tmp_path: Path
                                                              ) -> None:
    import shutil

    from eastkd.pipeline.compress.run import compress
    from eastkd.pipeline.compress.pca import PCACompressor

    store = tmp_path / "v.zarr"
    shutil.copytree(views_store[1], store)
    res = compress(str(store), KEY, "pca", 8, name="p8", plot=False, progress=False)
    with open_store(str(store)) as s:
        emb = s.embeddings(KEY)
        clip = emb.array("clip")[:].astype(np.float64)
        train = np.flatnonzero(np.asarray(s.items.splits) == "train")
        sec = s.targets("p8")
        values, attrs = sec.array("values")[:], sec.attrs
    assert values.shape == (15, 3, 8) and attrs["views"]["k"] == 3
    assert attrs["fit_rows"] == 3 * len(train) == res.fit_rows
    ref = PCACompressor(8).fit_array(clip[train].reshape(-1, 256))
    want = ref.transform(clip.reshape(-1, 256)).reshape(15, 3, 8)
    np.testing.assert_allclose(values, want, rtol=1e-4, atol=1e-4)
    assert not np.allclose(values[:, 0], values[:, 1], atol=1e-3)  # one target per view
    # distill reads the targets of the view it cuts: one per item, d wide
    from eastkd.pipeline.core.reading import load_split, resolve_targets

    with open_store(str(store)) as s:
        spec = resolve_targets(s, "p8")
        assert (spec.views, spec.views_path, spec.frame_level) == (3, f"embeddings/{KEY}/views",
                                                                  False)
        train = load_split(s, "train", spec)
        train.set_epoch(0, 1)
        b = next(train.batches(4))
        v = epoch_views(0, 1, b.rows, 3)
        np.testing.assert_array_equal(b.t.numpy(), values[b.rows, v])
        assert b.x.shape == (4, 96, LogMelParams().n_frames(9600))
    # the learned transformation: every view of a labelled train item is one row
    learned = compress(str(store), KEY, "learned", 4, name="l4", plot=False, progress=False,
                       epochs=3)
    assert learned.fit_rows == 3 * len(train)
    with open_store(str(store)) as s:
        lv, p = s.targets("l4").array("values")[:], s.read_params(s.targets("l4"))
    assert lv.shape == (15, 3, 4)
    want = ((clip - p["input_mean"]) / p["input_std"]) @ p["weight"].T + p["bias"]
    np.testing.assert_allclose(lv, want, rtol=1e-4, atol=1e-4)
    # the probe's soft labels: fitted on each item's mean over its views (as `eastkd probe`),
    # class probabilities written for every view
    soft = compress(str(store), KEY, "probe", None, name="soft", plot=False, progress=False)
    assert soft.fit_rows == len(train) and soft.output_dim == 5
    with open_store(str(store)) as s:
        pv = s.targets("soft").array("values")[:]
    assert pv.shape == (15, 3, 5)
    np.testing.assert_allclose(pv.sum(axis=-1), 1.0, atol=1e-5)
    assert not np.allclose(pv[:, 0], pv[:, 1], atol=1e-4)  # one soft label per view


# ------------------------------------------------------------------------------------------
# distill: one view per item per epoch, cut out of the whole-clip log-mel


def test_distill_batches_cut_the_chosen_views_frames_and_targets(views_store) -> None:
    from eastkd.pipeline.core.reading import epoch_views, load_split, resolve_targets

    _, store = views_store
    lm = LogMelParams()
    for memory_limit in (4 << 30, 0):  # resident, and streamed in chunks
        with open_store(str(store)) as s:
            spec = resolve_targets(s, KEY, frame_targets=True)
            assert spec.views == 3 and spec.frame_level and spec.dim == 256
            params = s.embeddings(KEY).array("views")[:]
            whole = s.features("logmel").array("values")[:]
            frames = s.embeddings(KEY).array("frames")[:]
            train = load_split(s, "train", spec, memory_limit=memory_limit, workers=0)
            n_view = lm.n_frames(9600)
            assert train.input_shape == (96, n_view)
            seen = {}
            for epoch in (1, 2):
                train.set_epoch(5, epoch)
                chosen = epoch_views(5, epoch, train.rows, 3)
                for b in train.batches(4, torch.Generator().manual_seed(epoch)):
                    for j, row in enumerate(b.rows):
                        v = int(chosen[np.searchsorted(train.rows, row)])
                        h = int(offset_hops(params[row, v, 0], lm))
                        want = whole[row][:, h:h + n_view] + log_gain(params[row, v, 1])
                        np.testing.assert_allclose(b.x[j].numpy(), want, rtol=0, atol=1e-6)
                        np.testing.assert_array_equal(b.t[j].numpy(), frames[row, v])
                        seen[(epoch, int(row))] = v
            train.close()
    # drawn from (seed, epoch, row) alone: the views change between epochs, all are used
    assert len(set(seen.values())) == 3
    assert any(seen[(1, r)] != seen[(2, r)] for (_, r) in seen)
    np.testing.assert_array_equal(epoch_views(5, 2, train.rows[::-1], 3),
                                  epoch_views(5, 2, train.rows, 3)[::-1])


def test_distill_with_views_resumes_bit_identical_and_evaluates_whole_clips(
        views_store, tmp_path: Path) -> None:
    import json

    from eastkd.pipeline.distill.train import distill

    _, store = views_store
    kw = dict(kd="fitnet", width=8, epochs=3, batch_size=4, patience=0, seed=2,
              progress=False)
    a = distill(str(store), KEY, str(tmp_path / "a"), **kw)

    def stop_after_1(rec: dict) -> None:
        if rec["epoch"] == 1:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        distill(str(store), KEY, str(tmp_path / "b"), callback=stop_after_1, **kw)
    b = distill(str(store), KEY, str(tmp_path / "b"), resume=True, **kw)
    assert b.resumed_from == 1
    strip = [{k: v for k, v in r.items() if k != "seconds"} for r in a.history]
    assert strip == [{k: v for k, v in r.items() if k != "seconds"} for r in b.history]
    wa = torch.load(tmp_path / "a" / "best.pt", weights_only=True)["student"]
    wb = torch.load(tmp_path / "b" / "best.pt", weights_only=True)["student"]
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    config = json.loads((tmp_path / "a" / "config.json").read_text())
    assert config["views"]["k"] == 3 and config["views"]["evaluation"] == "whole clip"
    assert config["targets"]["views"] == 3
    # another seed draws other views, and trains to another student
    c = distill(str(store), KEY, str(tmp_path / "c"), **{**kw, "seed": 3})
    assert c.history[0]["train_kd"] != a.history[0]["train_kd"]


# ------------------------------------------------------------------------------------------
# the teacher-skipping rerun and verify --repair with views


def test_views_rerun_skips_the_teacher_and_repair_recomputes_exactly(
        demo_manifest: Path, tmp_path: Path, user_teacher: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    import shutil

    import eastkd.pipeline.extract.run as run

    loads = []
    real_load = run.load_teacher
    monkeypatch.setattr(run, "load_teacher", lambda *a: loads.append(a) or real_load(*a))
    manifest = write_manifest(tmp_path / "m.csv", pick(demo_manifest, 1))  # 5 clips
    weights = tmp_path / "proj.pt"
    torch.save(torch.randn(1600, 8, generator=torch.Generator().manual_seed(1)) / 30, weights)
    teacher = dict(teacher=f"python:{TEACHER_MODULE}:make_from_file",
                   teacher_options={"path": str(weights)}, key="filed", frames=True,
                   chunk_items=1, views=3, view_seconds=0.5, view_gain_db=4.0)
    store = tmp_path / "s.zarr"
    extract(str(manifest), str(store), opts(**teacher))
    assert len(loads) == 1
    with open_store(str(store)) as s:
        assert s.embeddings("filed").array("frames").shape == (5, 3, 5, 8)
    before = all_arrays(store)
    assert extract(str(manifest), str(store), opts(**teacher)).already_done == 5
    assert len(loads) == 1  # views unchanged: nothing to do, the teacher not loaded
    with pytest.raises(EastkdError, match="differs in: views"):
        extract(str(manifest), str(store), opts(**{**teacher, "view_seed": 1}))
    assert len(loads) == 2  # other views: loaded, and refused

    # a lost chunk of the views' embeddings and one of their parameters: repaired exactly
    for array in ("clip", "views"):
        chunk = store / "embeddings" / "filed" / array / "c" / "2" / "0" / "0"
        assert chunk.exists(), chunk
        chunk.unlink()
    assert run_cli("verify", str(store), "--no-progress").returncode == 1
    fixed = run_cli("verify", str(store), "--repair", "--no-progress")
    assert "rows marked pending" in fixed.stdout, fixed.stdout + fixed.stderr
    assert "--views 3 --view-seconds 0.5 --view-gain-db 4.0 --view-seed 0" in fixed.stdout
    assert run_cli("verify", str(store), "--no-progress").returncode == 0  # only pending left
    redo = extract(str(manifest), str(store), opts(**teacher))
    assert (redo.written, redo.already_done) == (1, 4)
    assert_bitwise_equal(all_arrays(store), before)
    shutil.rmtree(store)
