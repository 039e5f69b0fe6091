"""``eastkd compress``: fit PCA or the learned teacher transformation and write compact targets."""

from __future__ import annotations

from typing import Any

import click

from eastkd.cli.options import progress_option, store_access
from eastkd.pipeline.compress.options import CompressOptions


@click.command("compress", context_settings={"show_default": True})
@click.argument("store")
@click.option("--embeddings", default=None, metavar="KEY",
              help="Embeddings to compress (a key shown by `eastkd info`).  "
                   "[default: the only one in the store]")
@click.option("--method", default=CompressOptions.method, metavar="NAME",
              help="Compressor: pca (unsupervised, streaming) or learned (a two-stage, offline "
                   "teacher transformation: a linear map trained through a linear probe on the "
                   "labels before distillation; the paper trains it jointly with the student, "
                   "which is `distill --teacher-linear`), or probe (the class probabilities of "
                   "the linear probe of `eastkd probe`, for every item: soft labels for "
                   "`distill --kd kl`).")
@click.option("--dim", default=str(CompressOptions.dim), metavar="D",
              help="Output dimensions; for pca a fraction in (0, 1) keeps that share of the "
                   "train variance instead (e.g. 0.95); probe ignores it (one column per "
                   "class).")
@click.option("--name", default=None,
              help="Targets name in the store.  "
                   "[default: <key>-<method><dim>; probe: <key>-probe]")
@click.option("--fit-split", default=CompressOptions.fit_split,
              help="Split whose items the compressor is fitted "
              "on (targets are written for every item).")
@click.option("--fold", type=click.IntRange(1, 5), default=None,
              help="Test fold K of a store with an items 'fold' column (ESC-50): fit on the "
                   "train items of `distill --fold K` and early-stop on its valid items. "
                   "distill refuses targets whose fit saw its valid or test items.  "
                   "[default: the stored split]")
@click.option("--whiten", is_flag=True, help="pca: scale components to unit train variance.")
@click.option("--overwrite", is_flag=True,
              help="Replace existing targets of this name written with other settings.")
@click.option("--plot", default=None, type=click.Path(dir_okay=False),
              help="Where to write the PNG (explained variance or learning curve).  "
                   "[default: <store>.<name>.png beside the store]")
@click.option("--seed", default=CompressOptions.seed, type=int,
              help="learned: random seed (init and batches).")
@click.option("--epochs", default=CompressOptions.epochs, type=click.IntRange(min=1),
              help="learned: maximum epochs (stops early when validation stops improving).")
@click.option("--patience", default=CompressOptions.patience, type=click.IntRange(min=1),
              help="learned: epochs without validation improvement before stopping.")
@click.option("--dask", default=None, metavar="local:N|ADDRESS",
              help="pca: fit on a dask.distributed cluster (one task per chunk, moments merged "
                   "in a tree); local:N starts N worker processes here.  [default: in-process]")
@progress_option()
@store_access
def command(store: str, **options: Any) -> None:
    """Fit a compressor on STORE's embeddings and write targets/<name> into STORE.

    \b
    Examples:
      eastkd compress demo.zarr --method pca --dim 0.95
      eastkd compress demo.zarr --embeddings crepe-tiny --method learned --dim 64
      eastkd compress esc50.zarr --method learned --dim 128 --fold 3 --name learned128-f3
      eastkd compress demo.zarr --method probe --name soft   # then distill --kd kl
    """
    from eastkd.pipeline.compress.run import compress

    r = compress(store, options=CompressOptions(**options))
    if r.explained_variance is not None:
        quality = f"explained variance {100 * r.explained_variance:.2f} %"
    elif r.metric_value is not None:
        quality = f"valid {r.metric} {r.metric_value:.4f}"
    else:
        quality = "-"
    rows = [
        ("targets", f"targets/{r.name}" + ("  (unchanged: same settings, reused)"
                                           if r.reused else "")),
        ("method", r.method),
        ("embeddings", r.source),
        ("dims", f"{r.input_dim} -> {r.output_dim}"),
        ("quality", quality),
        ("fit rows", f"{r.fit_rows} ({r.fit_split}"
                     + (f", fold {r.fold} held out)" if r.fold is not None else ")")),
        ("items", f"{r.n_items}" + (f" ({r.skipped} skipped)" if r.skipped else "")),
        ("time", f"fit {r.fit_seconds:.2f} s, total {r.seconds:.2f} s"),
    ]
    width = max(len(k) for k, _ in rows)
    for k, v in rows:
        click.echo(f"{k:<{width}}  {v}")
    if r.plot:
        click.echo(f"{'plot':<{width}}  {r.plot}")
