"""``eastkd extract``: run a teacher once over a dataset into a store."""

from __future__ import annotations

from typing import TYPE_CHECKING

import click

from eastkd.cli.options import check_teacher, parse_key_values, progress_option, store_access

RESAMPLER_NAMES = ["kaiser-best", "fast"]  # eastkd.pipeline.core.audio.RESAMPLERS (kept light here)

if TYPE_CHECKING:
    from eastkd.pipeline.core.features import LogMelParams


@click.command("extract", context_settings={"show_default": True})
@click.argument("dataset")
@click.argument("store")
@click.option("--teacher", "-t", default="crepe-tiny", callback=check_teacher,
              help="Teacher name (crepe, crepe-tiny, aisfx, passt, mule, "
                   "python:MODULE:CALLABLE, or any registered in the eastkd.teachers entry-point "
                   "group). The contract for your own module: README, 'Bring your own teacher'.")
@click.option("--teacher-opt", "teacher_opts", multiple=True, metavar="KEY=VALUE",
              help="Option passed to the teacher factory, e.g. hop_ms=100 (repeatable).")
@click.option("--weights", type=click.Path(dir_okay=False),
              help="Local checkpoint file for teachers that load weights (passt, mule; aisfx "
                   "reads the one in the aisfx wheel by default).")
@click.option("--key", help="Name of the embeddings in the store (letters, digits, . _ + -)  "
                            "[default: the teacher name; CALLABLE for python:MODULE:CALLABLE]")
@click.option("--segment", type=float,
              help="Crop/pad every clip to this many seconds; without it, clips whose longest "
                   "is more than 1.25x the median length are refused (one outlier would set "
                   "every clip's length)  [default: longest clip]")
@click.option("--crop", type=click.Choice(["start", "center"]), default="start",
              help="Where to cut clips longer than --segment.")
@click.option("--dtype", type=click.Choice(["float16", "float32"]), default="float16",
              help="Storage dtype of embeddings and features.")
@click.option("--frames/--no-frames", default=False,
              help="Also store frame-level embeddings (N x T x D).")
@click.option("--batch-size", "-b", type=click.IntRange(min=1), default=16,
              help="Clips per teacher forward pass.")
@click.option("--batch-seconds", type=click.FloatRange(min=0, min_open=True), default=None,
              metavar="S", help="Size batches in audio instead: S // segment clips per forward "
                                "(overrides --batch-size).")
@click.option("--workers", "-j", type=click.IntRange(min=0), default=None,
              show_default="available cores - 1, at most 8",
              help="Worker processes decoding audio (0 = in the main process).")
@click.option("--resampler", type=click.Choice(RESAMPLER_NAMES), default=RESAMPLER_NAMES[0],
              help="Resampling filter: kaiser-best (windowed sinc, >= 80 dB stopband) or fast "
                   "(torchaudio's default, 6 zero crossings). Part of the store's identity.")
@click.option("--device", default="auto",
              help="auto (CUDA when present), cpu, cuda or cuda:K (GPU K). With --dask, cuda "
                   "and auto give the workers on a machine one GPU each.")
@click.option("--on-error", type=click.Choice(["fail", "skip"]), default="fail",
              help="Bad audio or NaN output: stop naming the item, or skip and record it.")
@click.option("--allow-duplicates", is_flag=True,
              help="Accept the same audio (equal file sha256, or the same path) under ids in "
                   "different splits, a leak between them, refused by default (recorded in the "
                   "store). Duplicates within one split are only warned about.")
@click.option("--overwrite", is_flag=True,
              help="Replace embeddings/features written earlier with other settings.")
@click.option("--rehash", is_flag=True,
              help="Hash every file again instead of trusting the hashes cached for unchanged "
                   "(path, size, mtime); items whose bytes changed are updated in the items "
                   "table and extracted again.")
@click.option("--shard", default="0/1", metavar="I/N",
              help="Fill only unit u with u % N == I, so N processes can share one Zarr store. "
                   "Processes that write one store without it (or --dask) do not split the "
                   "work: each computes every row (the store stays correct, at N times the "
                   "work).")
@click.option("--dask", "dask_cluster", default=None, metavar="local:N|ADDRESS",
              help="Run the units as tasks on a dask.distributed cluster: local:N starts N "
                   "worker processes here, ADDRESS (tcp://host:8786) joins a running scheduler "
                   "whose workers reach the audio and the store. Bit-identical to a run "
                   "without it; a lost worker's units are run again; the workers on a machine "
                   "with several GPUs take one each.  [default: in-process]")
@click.option("--chunk-items", type=click.IntRange(min=1), default=None, metavar="N",
              help="Cap items per chunk (a power of two) of the arrays this run creates; only "
                   "ever makes chunks smaller than the ~4 MB default, giving finer --shard and "
                   "resume units (chunks of small rows hold up to 8192 items). Default: a cap "
                   "giving small datasets at least 8 units. Each chunk is written once: the "
                   "writer holds one chunk per array (about 4 MB each) plus 8 queued batches.")
@click.option("--views", type=click.IntRange(min=1), default=1, metavar="K",
              help="Seeded views per item, each run through the teacher: embeddings get a view "
                   "axis (items x K x D; frames items x K x T x D) and the view parameters are "
                   "stored per item and view. The student's log-mel stays one per item, over "
                   "the whole segment; distill cuts each view out of it. 1: one view, the "
                   "segment (the layout without views).")
@click.option("--view-seconds", type=click.FloatRange(min=0, min_open=True), default=None,
              metavar="S", help="Each view is a random crop of S seconds inside the segment, "
                                "starting on the student's log-mel hop grid (needs --views K > "
                                "1).  [default: the whole segment]")
@click.option("--view-gain-db", type=click.FloatRange(min=0), default=0.0, metavar="G",
              help="Each view gets a random gain, uniform in +-G dB (needs --views K > 1).")
@click.option("--view-seed", type=int, default=None,
              help="Seed of the views: view v of an item is drawn from (seed, item id, v) "
                   "alone, so shards, workers and resumed runs draw the same.  [default: "
                   "--split-seed]")
@click.option("--n-mels", type=click.IntRange(min=8), default=96, help="Log-mel bands.")
@click.option("--student-sr", type=click.IntRange(min=8000), default=16000,
              help="Sample rate of the student's log-mel input.")
@click.option("--like", metavar="RUN_DIR|STORE",
              help="Copy the student-input settings (segment, crop, log-mel parameters) of a "
                   "trained run or another store, so that this store matches it (e.g. to "
                   "evaluate or predict with that run). Replaces --segment, --crop, --n-mels, "
                   "--student-sr.")
@click.option("--split-ratios", default="0.7,0.15,0.15", metavar="TRAIN,VALID,TEST",
              help="Stratified split of folders and manifests that name no splits.")
@click.option("--split-seed", type=int, default=0, help="Seed of that stratified split.")
@click.option("--unlabelled", "unlabelled", multiple=True, metavar="DIR",
              type=click.Path(file_okay=False),
              help="A folder of audio without classes, added as unlabelled train items (KD "
                   "targets only; repeatable). Inside a class-folder DATASET it is no class. "
                   "A rerun names the same folders.  [default: none]")
@progress_option()
@click.pass_context
@store_access
def command(ctx: click.Context,
            dataset: str, store: str, teacher: str, teacher_opts: tuple[str, ...],
            weights: str | None, key: str | None, segment: float | None, crop: str, dtype: str,
            frames: bool, batch_size: int, batch_seconds: float | None, workers: int | None,
            resampler: str, device: str, on_error: str, allow_duplicates: bool,
            overwrite: bool, rehash: bool,
            shard: str, dask_cluster: str | None, chunk_items: int | None, views: int,
            view_seconds: float | None, view_gain_db: float, view_seed: int | None, n_mels: int,
            student_sr: int, like: str | None, split_ratios: str, split_seed: int,
            unlabelled: tuple[str, ...], progress: bool | None) -> None:
    """Run TEACHER once over DATASET and write embeddings and log-mel features into STORE.

    DATASET is a manifest (.csv/.jsonl with id, path, label or labels, split; a row with an
    empty label is an unlabelled train item), a folder with one sub-folder per class, or
    NAME:PATH for a known dataset (esc50, mtat, fma-small); --unlabelled adds folders of audio
    without classes.
    STORE is a Zarr directory (*.zarr, default), an HDF5 file (*.h5), or a Zarr store at a URL
    (s3://bucket/name.zarr, gs://..., with --storage-option). Rerunning the same command
    continues an interrupted run without recomputing finished chunks; a rerun reads no audio
    for indexing (file hashes are cached by path, size and mtime), and one with nothing left
    to do does not load the teacher when its weights files are unchanged.
    """
    from eastkd.pipeline.datasets.manifest import resolve_dataset
    from eastkd.pipeline.datasets.splits import dataset_split_report, parse_ratios
    from eastkd.pipeline.extract import ExtractOptions, extract, parse_shard
    from eastkd.pipeline.core.features import LogMelParams
    from eastkd.cli.report import print_extract_summary

    logmel = LogMelParams(sample_rate=student_sr, n_mels=n_mels,
                          f_max=min(8000.0, student_sr / 2))
    if like:
        segment, crop, logmel = _like(ctx, like)
    spec = resolve_dataset(dataset, split_ratios=parse_ratios(split_ratios),
                           split_seed=split_seed, unlabelled=unlabelled)
    for line in dataset_split_report(spec):
        click.echo(line)

    topts = parse_key_values(teacher_opts, "--teacher-opt")
    if weights:
        topts["weights"] = weights
    opts = ExtractOptions(
        teacher=teacher, teacher_options=topts, key=key, segment=segment, crop=crop, dtype=dtype,
        frames=frames, batch_size=batch_size, batch_seconds=batch_seconds, workers=workers,
        resampler=resampler, device=device, on_error=on_error, overwrite=overwrite,
        rehash=rehash, shard=parse_shard(shard), progress=progress, chunk_items=chunk_items,
        logmel=logmel, allow_duplicates=allow_duplicates, views=views,
        view_seconds=view_seconds, view_gain_db=view_gain_db,
        view_seed=split_seed if view_seed is None else view_seed,
    )
    if dask_cluster:
        from eastkd.pipeline.extract.distributed import extract_distributed

        print_extract_summary(extract_distributed(spec, store, opts, dask_cluster))
    else:
        print_extract_summary(extract(spec, store, opts))


def _like(ctx: click.Context, like: str) -> tuple[float, str, LogMelParams]:
    """Segment, crop and log-mel parameters from ``--like``; refuses flags given beside it."""
    from eastkd.pipeline.runs.like import read_student_inputs

    given = [f"--{name.replace('_', '-')}" for name in ("segment", "crop", "n_mels", "student_sr")
             if ctx.get_parameter_source(name) == click.core.ParameterSource.COMMANDLINE]
    if given:
        raise click.UsageError(f"--like sets the student inputs; drop {', '.join(given)}")
    inputs = read_student_inputs(like)
    click.echo(f"student inputs like {like}: {inputs.flags()}")
    return inputs.segment, inputs.crop, inputs.logmel
