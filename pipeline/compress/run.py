"""The compress stage: fit a compressor on stored embeddings and write compact targets back.

``targets/<name>`` gets an item-aligned ``values`` array (N x d float32), a status copied from
the embeddings (skipped items stay skipped), the fitted parameters under ``params/`` and
provenance attributes chained to the embeddings' own (teacher weights sha256 and the dataset
fingerprint). The embeddings are only read.

Fitting uses exactly the rows distill trains on: ``fit_split`` under the stored split, or under
``fold`` K re-derived the way ``distill --fold K`` derives it (one function:
``reading.item_splits``), with valid rows of the same derivation for early stopping. The
targets record ``fold``, ``fit_split`` and sha256 fingerprints of the item ids fitted on
(``fit_rows_sha256``) and early-stopped on (``valid_rows_sha256``); :func:`check_fit_rows`
(called by distill) refuses targets whose fit saw the run's valid or test items.

A name re-used with other settings is refused unless ``overwrite``; a rerun with the same
settings on unchanged embeddings reuses the finished targets (and redraws the plot) instead of
fitting again.

A compressor (entry point group ``eastkd.compressors``) is a class built as
``cls(dim, whiten=..., seed=..., epochs=..., patience=...)`` (ignoring options it does not use)
with ``identity()``, ``fit(source, rows, items, valid_rows, progress)``, ``out_dim``,
``uses_valid_rows`` (whether ``fit`` early-stops on ``valid_rows``; assumed when absent),
``transform(x)``, ``params()``, ``summary()`` and a static ``plot(fig, attrs, params)``.
Optional: ``dim_from_classes = True`` (``--dim`` does not apply: the output has one column per
class; the default name is ``<key>-<method>``) and ``held_out_scores(source, splits, items)``
(attributes to record from rows the fit never saw, e.g. a probe's valid and test scores),
and ``pools_views = True`` (with views, ``fit`` gets item rows and reads each item's mean over
its views; otherwise every view of a fit item is one fit row).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import time
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from eastkd.pipeline.compress.options import CompressOptions, default_name
from eastkd.pipeline.core import registry
from eastkd.pipeline.core.options import options_from_kwargs
from eastkd.pipeline.core.reading import item_splits
from eastkd.progress import Progress, progress_bar
from eastkd.store import (
    OK,
    SKIPPED,
    ArraySpec,
    EastkdError,
    Section,
    Store,
    eastkd_version,
    is_url,
    open_store,
    store_location,
    store_name,
)

@dataclass
class CompressResult:
    """What one compress run produced (also what the CLI prints)."""

    store: str
    name: str
    method: str
    source: str
    input_dim: int
    output_dim: int
    fit_split: str
    fold: int | None
    fit_rows: int
    n_items: int
    skipped: int
    fit_seconds: float
    seconds: float
    explained_variance: float | None
    metric: str | None
    metric_value: float | None
    plot: str | None
    reused: bool


class ViewRows:
    """An embeddings array with views (N x K x D) read as N*K rows of D: row ``i*K + v`` is view
    ``v`` of item ``i``. What a compressor fits on, so that it sees every view's embedding
    (the read-only part of :class:`~eastkd.store.StoreArray` that fitting uses)."""

    def __init__(self, array: Any) -> None:
        self.array = array
        self.k = int(array.shape[1])
        self.path = array.path

    @property
    def shape(self) -> tuple[int, ...]:
        n, k, *rest = self.array.shape
        return (n * k, *rest)

    @property
    def chunks(self) -> tuple[int, ...]:
        c, k, *rest = self.array.chunks
        return (c * k, *rest)

    @property
    def dtype(self) -> np.dtype:
        return self.array.dtype

    @property
    def backend(self) -> Any:  # a reader in this process (workers=0) reads through this view
        return self.array.backend

    def rows(self, items: np.ndarray) -> np.ndarray:
        """The flat rows of every view of ``items``."""
        return (np.asarray(items, dtype=np.int64)[:, None] * self.k + np.arange(self.k)).ravel()

    def __getitem__(self, selection: slice) -> np.ndarray:
        lo, hi, _ = selection.indices(self.shape[0])
        first, last = lo // self.k, -(-hi // self.k)
        block = self.array[first:last]
        block = block.reshape(len(block) * self.k, *block.shape[2:])
        return block[lo - first * self.k:hi - first * self.k]


def n_views(emb: Section) -> int:
    """K of embeddings written with ``extract --views K`` (a view axis); 0 without views."""
    return int(emb.array("clip").shape[1]) if emb.has("views") else 0


def default_plot_path(store_path: str, name: str) -> str:
    """``<store>.<name>.png`` beside the store (never inside it); for a store at a URL, in the
    current folder."""
    if is_url(store_path):
        return os.path.abspath(f"{store_name(store_path)}.{name}.png")
    return f"{store_location(store_path).rstrip('/')}.{name}.png"


def _json_safe(value: Any) -> Any:
    """Attributes as plain JSON: NaN/inf become None, numpy scalars become Python ones."""
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    if isinstance(value, (np.floating, float)):
        return float(value) if math.isfinite(value) else None
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, np.bool_):
        return bool(value)
    return value


def _sha(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()


def _source(store: Store, key: str | None) -> tuple[str, Section]:
    keys = store.section_names("embeddings")
    if not keys:
        raise EastkdError(f"{store.path}: holds no embeddings; run `eastkd extract` first")
    if key is None:
        if len(keys) != 1:
            raise EastkdError(f"{store.path}: holds several embeddings ({', '.join(keys)}); "
                              "choose one with --embeddings")
        key = keys[0]
    if key not in keys:
        raise EastkdError(f"{store.path}: no embeddings {key!r} in this store (have: "
                          f"{', '.join(keys)}); choose one with --embeddings")
    emb = store.embeddings(key)
    emb.require_complete(f"finish it first with `eastkd extract` (it continues where it "
                         f"stopped) before compressing {key!r}")
    return key, emb


def fit_rows(store: Store, status: np.ndarray, split: str, fold: int | None) -> np.ndarray:
    """The rows of ``split`` under ``fold`` as distill derives them (``item_splits``), with
    embeddings OK, unlabelled items included: PCA fits on all of them, the learned compressor
    keeps the labelled ones (``LearnedCompressor._targets``)."""
    return np.flatnonzero((item_splits(store, fold) == split) & (status == OK))


def rows_fingerprint(store: Store, rows: np.ndarray | None) -> str | None:
    """sha256 of the item ids of ``rows`` (None for no rows)."""
    if rows is None:
        return None
    ids = store.items.ids
    return _sha([ids[int(r)] for r in rows])


def check_fit_rows(store: Store, section: str, attrs: dict[str, Any], fold: int | None) -> None:
    """Refuse targets whose fit saw a valid or test item of a distill run with ``fold``.

    The rows fitted on are re-derived from the targets' ``fit_split`` and ``fold`` (and their
    fingerprint checked); raw embeddings and targets without ``fit_split`` pass.
    """
    if not section.startswith("targets/") or "fit_split" not in attrs:
        return
    status = store.section(*section.split("/", 1)).status()
    fit_fold, fit_split = attrs.get("fold"), attrs["fit_split"]
    fitted = fit_rows(store, status, fit_split, fit_fold)
    recorded = attrs.get("fit_rows_sha256")
    if recorded is not None and recorded != rows_fingerprint(store, fitted):
        raise EastkdError(f"{section}: the rows it was fitted on no longer match this store's "
                          "items; fit it again with `eastkd compress --overwrite`")
    # (rows, use, the run's splits they must not touch): early stopping on valid is intended
    seen = [(fitted, "fitted on", ("test", "valid"))]
    if attrs.get("valid_rows_sha256") is not None:
        seen.append((fit_rows(store, status, "valid", fit_fold), "early-stopped on", ("test",)))
    run_splits = item_splits(store, fold)
    for rows, use, forbidden in seen:
        for split in forbidden:
            n = int((run_splits[rows] == split).sum())
            if n:
                raise EastkdError(
                    f"{section} was {use} {n} items that are {split} items of this run "
                    f"(compress fold {fit_fold}, distill fold {fold}); fit targets for this "
                    f"fold: eastkd compress --fold {fold} --name NAME")


def compress(store_path: str, embeddings_key: str | None = None, method: str | None = None,
             dim: int | float | str | None = None, name: str | None = None,
             options: CompressOptions | None = None, **kwargs: Any) -> CompressResult:
    """Fit ``method`` on ``embeddings/<key>`` (``fit_split`` rows, under ``fold`` K when given:
    the splits of ``distill --fold K``) and write ``targets/<name>``.

    The options are a :class:`CompressOptions` or, equally, its fields as keyword arguments;
    ``embeddings_key``, ``method``, ``dim`` and ``name`` given here win over ``options``.
    """
    t0 = time.perf_counter()
    if options is not None and kwargs:
        raise EastkdError("give compress either a CompressOptions or keyword options, not both")
    opts = options if options is not None else \
        options_from_kwargs(CompressOptions, "compress", kwargs)
    given = {"embeddings": embeddings_key, "method": method, "dim": dim, "name": name}
    opts = replace(opts, **{k: v for k, v in given.items() if v is not None})
    opts.check()
    cls = registry.compressors.get(opts.method)
    with open_store(store_path, "r+") as store:
        key, emb = _source(store, opts.embeddings)
        sized = not getattr(cls, "dim_from_classes", False)  # probe: one column per class
        name = opts.name or (default_name(key, opts.method, opts.dim) if sized
                             else f"{key}-{opts.method}")
        status = emb.status()
        rows = _check_fit(store, emb, key, status, opts, sized)
        comp = cls(opts.dim, whiten=opts.whiten, seed=opts.seed, epochs=opts.epochs,
                   patience=opts.patience)
        identity = _identity(store, emb, key, opts, comp)
        existing = store.has_section("targets", name)
        if existing:
            store.check_identity("targets", name, identity, opts.overwrite)  # before fitting
            old = store.targets(name)
            if old.attrs.get("identity") == identity and not opts.overwrite and old.complete \
                    and "dim" in old.attrs \
                    and old.attrs.get("source_generation") == emb.attrs.get("generation") \
                    and np.array_equal(old.status(), np.where(status == OK, OK, SKIPPED)):
                return _reuse(store, old, cls, opts.plot, t0, store_path, name)

        tf = time.perf_counter()
        valid_rows = _fit(store, store_path, emb, comp, rows, status, opts)
        fit_seconds = time.perf_counter() - tf
        attrs = _targets_attrs(store, emb, key, comp, identity, rows, valid_rows, opts,
                               fit_seconds)
        views = n_views(emb)
        spec = (ArraySpec((views, comp.out_dim), "float32", ("view", "dim")) if views
                else ArraySpec((comp.out_dim,), "float32"))
        errors = emb.errors()
        # all or nothing: an HDF5 store gets the section through a copy swapped in at the end
        with store.replacing(f"targets/{name}"):
            sec = store.require_section("targets", name, {"values": spec},
                                        attrs=attrs, identity=identity, overwrite=existing)
            store.write_params(sec, comp.params())
            _write_values(sec, emb.array("clip"), status, errors, comp, key, opts.progress)
        return _result(store_path, name, attrs, len(status), int((status == SKIPPED).sum()),
                       fit_seconds, t0, _plot(cls, attrs, store.read_params(sec), opts.plot,
                                              store_path, name), reused=False)


def _check_fit(store: Store, emb: Section, key: str, status: np.ndarray,
               opts: CompressOptions, sized: bool = True) -> np.ndarray:
    """The rows the compressor is fitted on, after checking the options against the store
    (the output size against the embeddings' and the fit rows' unless the compressor is not
    ``sized`` by ``--dim``, the fit split exists)."""
    dim, fit_split = opts.dim, opts.fit_split
    src = emb.array("clip")
    views = n_views(emb)
    d_in = int(np.prod(src.shape[2 if views else 1:]))
    if sized and isinstance(dim, int) and dim > d_in:
        raise EastkdError(f"--dim {dim} is larger than the {d_in}-d embeddings {key!r}; "
                          f"choose at most {d_in}")
    splits = sorted(set(item_splits(store, opts.fold)))
    if fit_split not in splits:
        raise EastkdError(f"--fit-split {fit_split!r}: no such split in {store.path} "
                          f"(have: {', '.join(splits)})")
    rows = fit_rows(store, status, fit_split, opts.fold)
    if rows.size == 0:
        raise EastkdError(f"--fit-split {fit_split!r}: no item of it has embeddings "
                          f"{key!r} (all skipped); choose another split")
    n_fit = rows.size * max(1, views)  # every view of a fit item is a fit row
    if opts.method == "pca" and isinstance(dim, int) and dim > n_fit:
        raise EastkdError(f"--dim {dim}: PCA on {n_fit} {fit_split} rows gives at most "
                          f"{n_fit} components; choose a smaller --dim")
    return rows


def _identity(store: Store, emb: Section, key: str, opts: CompressOptions,
              comp: Any) -> dict[str, Any]:
    """What decides the targets' values: the source embeddings, the dataset, the method and
    its settings (an existing section of the same name must match it)."""
    src_attrs = emb.attrs
    return _json_safe({
        "source": key,
        "source_weights_sha256": src_attrs.get("weights_sha256"),
        "source_identity_sha256": _sha(src_attrs.get("identity")),
        "dataset_fingerprint": store.dataset_fingerprint,
        "method": opts.method,
        "fit_split": opts.fit_split,
        **({"fold": opts.fold} if opts.fold is not None else {}),
        "whiten": bool(opts.whiten),
        **comp.identity(),
    })


def _fit(store: Store, store_path: str, emb: Section, comp: Any, rows: np.ndarray,
         status: np.ndarray, opts: CompressOptions) -> np.ndarray | None:
    """Fit ``comp`` on ``rows`` (on a dask cluster with ``opts.dask``); the valid rows it may
    early-stop on (None when fitting on the valid split itself)."""
    valid_rows = fit_rows(store, status, "valid", opts.fold) if opts.fit_split != "valid" \
        else None
    views = n_views(emb)
    if opts.dask is not None:
        from eastkd.pipeline.compress.pca_dask import fit_on_cluster

        fit_on_cluster(comp, store_path, emb.path, "clip", rows, opts.dask, views=bool(views))
    elif views and opts.method == "learned":
        _fit_learned_views(comp, ViewRows(emb.array("clip")), rows, store.items, valid_rows,
                           opts.progress)
    elif views and not getattr(comp, "pools_views", False):  # every view of a fit item: a row
        flat = ViewRows(emb.array("clip"))
        comp.fit(flat, flat.rows(rows), store.items, valid_rows, opts.progress)
    else:  # no views, or a compressor that reads each item's mean over its views (probe)
        comp.fit(emb.array("clip"), rows, store.items, valid_rows, opts.progress)
    return valid_rows


def _fit_learned_views(comp: Any, flat: ViewRows, rows: np.ndarray, items: Any,
                       valid_rows: np.ndarray | None, progress: bool) -> None:
    """The learned transformation on every view of the labelled fit (and valid) items, each
    view one row with its item's label; read in this process (the view rows are a read-only
    view of the stored array, which reader processes could not reopen)."""
    from eastkd.pipeline.core.reading import RowStream

    def labelled(r: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
        r, y = comp._targets(items, np.asarray(r if r is not None else [], dtype=np.int64))
        return flat.rows(r), np.repeat(y, flat.k, axis=0)

    train, y = labelled(rows)
    if train.size == 0:
        raise EastkdError("no fit rows carry a label; the learned transformation needs "
                          "labelled training items")
    valid, vy = labelled(valid_rows)

    def stream(r: np.ndarray) -> RowStream:
        return RowStream({"x": flat}, r, memory_limit=comp.memory_limit, workers=0)

    comp.fit_streams(stream(train), y, stream(valid) if valid.size else None,
                     vy if valid.size else None, items.multi_label, len(items.class_names),
                     progress)


def _targets_attrs(store: Store, emb: Section, key: str, comp: Any, identity: dict[str, Any],
                   rows: np.ndarray, valid_rows: np.ndarray | None, opts: CompressOptions,
                   fit_seconds: float) -> dict[str, Any]:
    """The targets section's attributes: method, provenance chained to the embeddings', the
    rows fitted and early-stopped on (fingerprints), sizes and the compressor's summary."""
    src_attrs = emb.attrs
    summary = comp.summary()
    views = n_views(emb)
    if hasattr(comp, "held_out_scores"):  # scored on rows it never fitted on
        status = emb.status()
        summary.update(comp.held_out_scores(emb.array("clip"), {
            s: fit_rows(store, status, s, opts.fold) for s in ("valid", "test")
            if s != opts.fit_split}, store.items))
    return _json_safe({
        "kind": "compressed teacher embeddings",
        "method": opts.method,
        "source": key,
        "source_section": emb.path,
        "source_identity": src_attrs.get("identity"),
        "source_weights_sha256": src_attrs.get("weights_sha256"),
        "source_teacher": src_attrs.get("teacher"),
        "source_generation": src_attrs.get("generation"),
        "dataset_fingerprint": store.dataset_fingerprint,
        "fingerprint": _sha(identity),
        "fit_split": opts.fit_split,
        "fold": opts.fold,
        "fit_rows": int(summary.get("fit_rows", rows.size)),
        "fit_rows_sha256": rows_fingerprint(store, rows),
        "valid_rows_sha256": rows_fingerprint(store, valid_rows)
        if getattr(comp, "uses_valid_rows", True) else None,
        "input_dim": int(emb.array("clip").shape[-1]),
        "dim": comp.out_dim,
        "whiten": bool(opts.whiten),
        "layout": "items x views x dims" if views else "items x dims",
        **({"views": {"k": views, "source": f"{emb.path}/views"}} if views else {}),
        "params": sorted(comp.params()),
        "seconds": round(fit_seconds, 3),
        "eastkd_version": eastkd_version(),
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        **summary,
    })


def _write_values(sec: Section, src: Any, status: np.ndarray, errors: np.ndarray, comp: Any,
                  key: str, progress: Progress) -> None:
    """Transform every OK item in whole write units; skipped items stay zero and skipped."""
    n = len(status)
    step = max(sec.unit, int(src.chunks[0]))
    bar = progress_bar(total=n, desc="compress write", unit="item", progress=progress)
    for start in range(0, n, step):
        stop = min(n, start + step)
        ok = status[start:stop] == OK
        values = np.zeros((stop - start, *src.shape[1:-1], comp.out_dim), dtype=np.float32)
        if ok.any():  # with views: each view transformed alike (items x views x d)
            x = src[start:stop][ok]
            y = comp.transform(x.reshape(-1, x.shape[-1]) if x.ndim == 3 else x)
            values[ok] = y.reshape(len(x), *values.shape[1:])
        errs = ["" if o else f"skipped in embeddings/{key}: {e}"
                for o, e in zip(ok, errors[start:stop])]
        sec.write_block(start, {"values": values}, np.where(ok, OK, SKIPPED).astype(np.uint8),
                        errs)
        bar.update(stop - start)
    bar.close()


def _plot(cls: Any, attrs: dict[str, Any], params: dict[str, np.ndarray],
          plot: str | None | bool, store_path: str, name: str) -> str | None:
    if plot is False:
        return None
    path = default_plot_path(store_path, name) if plot in (None, True) else str(plot)
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig = plt.figure(figsize=(7, 4.5))
    try:
        cls.plot(fig, attrs, params)
        fig.tight_layout()
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        fig.savefig(path, dpi=110)
    except OSError as e:
        raise EastkdError(f"{path}: cannot write the plot ({e}); choose another --plot") from e
    finally:
        plt.close(fig)
    return path


def _result(store_path: str, name: str, attrs: dict[str, Any], n_items: int, skipped: int,
            fit_seconds: float, t0: float, plot: str | None, reused: bool) -> CompressResult:
    probe = attrs.get("probe_metric") or {}
    return CompressResult(
        store=store_path, name=name, method=attrs["method"], source=attrs["source"],
        input_dim=int(attrs["input_dim"]), output_dim=int(attrs["dim"]),
        fit_split=attrs["fit_split"], fold=attrs.get("fold"), fit_rows=int(attrs["fit_rows"]),
        n_items=n_items,
        skipped=skipped, fit_seconds=fit_seconds, seconds=time.perf_counter() - t0,
        explained_variance=attrs.get("explained_variance"),
        metric=probe.get("name"), metric_value=probe.get("value"),
        plot=plot, reused=reused,
    )


def _reuse(store: Store, sec: Section, cls: Any, plot: str | None | bool, t0: float,
           store_path: str, name: str) -> CompressResult:
    """The finished targets of an identical earlier run: nothing is refitted or rewritten."""
    attrs = sec.attrs
    counts = sec.counts()
    path = _plot(cls, attrs, store.read_params(sec), plot, store_path, name)
    return _result(store_path, name, attrs, len(store.items), counts["skipped"],
                   float(attrs.get("seconds", 0.0)), t0, path, reused=True)
