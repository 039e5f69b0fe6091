"""``eastkd distill``: train a small student from the store alone (task + KD loss)."""

from __future__ import annotations

from typing import Any

import click

from eastkd.cli.options import progress_option, store_access
from eastkd.pipeline.distill.options import SCHEDULES, DistillOptions, kd_methods


@click.command("distill", context_settings={"show_default": True})
@click.argument("store")
@click.option("--targets", "-t", metavar="NAME",
              help="Distillation targets: targets/NAME written by `eastkd compress`, else the "
                   "raw embeddings/NAME written by `eastkd extract`. Not needed with --kd none.")
@click.option("--out", "-o", "out_dir", required=True, type=click.Path(file_okay=False),
              help="RUN_DIR for config.json, best.pt, last.pt, metrics.json, history.csv, "
                   "curves.png.")
@click.option("--student", "-s", default=DistillOptions.student,
              help="Student architecture: vgg, mobilenet, mobilefcn (EAsT's MagnaTagATune "
                   "student, 0.31 M at width 16), cpresnet (receptive-field-regularised "
                   "CP-ResNet, 5.5 M at width 16) or any in the eastkd.students group.")
@click.option("--width", type=click.IntRange(min=1), default=DistillOptions.width,
              help="Student width (channels of its first stage).")
@click.option("--kd", type=click.Choice(kd_methods()), default=DistillOptions.kd,
              help="KD loss: fitnet (MSE after a learned regressor; the default, as its "
                   "term in history.csv shows whether the targets teach anything: README, "
                   "'Training runs'), dc (distance "
                   "correlation, EAsT's estimator: biased towards 1 in high dimensions), "
                   "dc-unbiased (bias-corrected distance correlation, Székely & Rizzo 2014), "
                   "kl (response-based: the student's softened logits follow class "
                   "probabilities or logits, e.g. from `compress --method probe`), "
                   "or none (task loss only: the no-teacher baseline).")
@click.option("--lambda", "lam", type=click.FloatRange(0.0, 1.0), default=DistillOptions.lam,
              help="Weight λ in L = (1-λ)·L_task + λ·L_kd (EAsT reference convention).")
@click.option("--temperature", "-T", type=click.FloatRange(min=0.0, min_open=True),
              default=DistillOptions.temperature,
              help="--kd kl: temperature T softening the student's logits and the targets "
                   "(the loss is scaled by T², Hinton et al.).")
@click.option("--teacher-linear", is_flag=True,
              help="The compression paper's teacher transformation: a linear map on the targets "
                   "trained jointly with the student (by its own classifier and task loss); the "
                   "student learns from the transformed targets. (compress --method learned is "
                   "the two-stage, offline variant.)")
@click.option("--teacher-linear-dim", type=click.IntRange(min=1),
              help="Output size of --teacher-linear  [default: the targets' size]")
@click.option("--frame-targets", is_flag=True,
              help="Use frame-level embeddings (embeddings/NAME/frames) aligned in time with "
                   "the student's feature map, instead of clip-level ones.")
@click.option("--epochs", "-e", type=click.IntRange(min=1), default=DistillOptions.epochs,
              help="Maximum epochs.")
@click.option("--batch-size", "-b", type=click.IntRange(min=2),
              default=DistillOptions.batch_size, help="Batch size.")
@click.option("--lr", type=float, default=DistillOptions.lr, help="AdamW learning rate.")
@click.option("--weight-decay", type=float, default=DistillOptions.weight_decay,
              help="AdamW weight decay.")
@click.option("--schedule", type=click.Choice(SCHEDULES), default=DistillOptions.schedule,
              help="Learning-rate schedule: cosine over --epochs, or reduce-on-plateau (x0.2).")
@click.option("--patience", type=click.IntRange(min=0), default=DistillOptions.patience,
              help="Stop after this many epochs without a higher validation metric (0: never). "
                   "An equal metric with a lower validation loss becomes the best epoch but "
                   "does not reset this count.")
@click.option("--seed", type=int, default=DistillOptions.seed,
              help="Seed of initialisation and batch order.")
@click.option("--device", default=DistillOptions.device, help="auto, cpu or cuda.")
@click.option("--fold", type=click.IntRange(1, 5),
              help="Test fold K of a store with an items 'fold' column (ESC-50): fold K is "
                   "test, fold K-1 valid, the rest train.")
@click.option("--memory-limit", default="4G",
              help="Hold the splits' inputs and targets in memory up to this size (float32, "
                   "train first); the rest is streamed from the store in whole chunks. 0 "
                   "always streams.")
@click.option("--shuffle-buffer", default="128M",
              help="Streamed splits: rows shuffled together, drawn from this many bytes of "
                   "randomly chosen chunks (see docs/store-format.md, Reading order).")
@click.option("--workers", type=click.IntRange(min=0),
              help="Reader processes for streamed splits (0: one background thread)  "
                   "[default: half the CPU cores, 1 to 4]")
@click.option("--threads", type=click.IntRange(min=1), default=DistillOptions.threads,
              help="Intra-op CPU threads (CPU runs). Results depend on this count, so a fixed "
                   "one makes a run repeat on any machine; more are faster on many cores.")
@click.option("--unlabelled-ratio", type=click.FloatRange(min=0), default=None, metavar="R",
              show_default="1 when the train split has unlabelled rows, else unused",
              help="Unlabelled train rows per labelled row in a step: each step draws a "
                   "labelled batch (task + KD loss) plus round(R x batch size) unlabelled rows "
                   "(KD loss only), and an epoch is one pass over all train rows, the shorter "
                   "stream cycling. 0: unlabelled rows unused; always unused with --kd none.")
@click.option("--spec-augment", is_flag=True,
              help="SpecAugment-style masks on the student's input: per item 2 bands of <= 8 "
                   "mel bins and 2 spans of <= 10% of the frames set to the mel bin's training "
                   "mean (0 after normalisation); seeded from --seed, recorded in config.json.")
@click.option("--mixup", type=click.FloatRange(min=0), default=DistillOptions.mixup,
              metavar="A",
              help="Mixup with weights m ~ Beta(A, A), one per step (0: off): each training "
                   "input becomes m x_i + (1-m) x_j, its KD target the same mix of the two "
                   "targets, its task loss the same mix of both labels' losses; labelled rows "
                   "pair with labelled, unlabelled with unlabelled. Recorded in config.json.")
@click.option("--resume", is_flag=True,
              help="Continue the run in RUN_DIR. Not needed: the same command continues an "
                   "interrupted run whenever RUN_DIR holds one with the same settings.")
@click.option("--overwrite", is_flag=True,
              help="Start over: replace a run in RUN_DIR (needed when its settings differ).")
@progress_option("Progress: --progress forces tqdm bars; --no-progress prints one line per "
                 "epoch instead (losses, validation metric, best so far, seconds).")
@store_access
def command(store: str, out_dir: str, memory_limit: str, shuffle_buffer: str,
            **options: Any) -> None:
    """Train a student on STORE's log-mel inputs with KD towards stored teacher targets.

    The teacher never runs: inputs, labels and targets all come from STORE. The best epoch
    (validation accuracy, or mAP for multi-label data) is kept in RUN_DIR/best.pt and scored
    on the test split; `eastkd evaluate RUN_DIR STORE` scores it on any matching store.
    Rerunning the same command continues an interrupted run after its last finished epoch
    (bit-identical to an uninterrupted one); other settings in the same RUN_DIR are refused,
    naming them, unless --overwrite.
    """
    from eastkd.pipeline.core.reading import parse_bytes

    opts = DistillOptions(memory_limit=parse_bytes(memory_limit),
                          shuffle_buffer=parse_bytes(shuffle_buffer, "--shuffle-buffer"),
                          **options)
    r = _distill_or_interrupted(store, out_dir, opts)
    fmt = ", ".join
    valid = fmt(f"{k} {v:.4f}" for k, v in r.valid_metrics.items() if k != "loss")
    test = fmt(f"{k} {v:.4f}" for k, v in r.test_metrics.items()) or "no test items"
    stop = " (early stop)" if r.stopped_early else ""
    click.echo(f"distill -> {r.run_dir}: {r.epochs_run} epochs{stop} in {r.seconds:.1f} s; "
               f"best epoch {r.best_epoch}: valid {valid}; test {test}")


def _distill_or_interrupted(store: str, out_dir: str, opts: Any) -> Any:
    """distill, with Ctrl-C turned into one line saying what is kept (exit status 130)."""
    from eastkd.errors import RunInterrupted
    from eastkd.pipeline.distill.train import distill
    from eastkd.pipeline.runs.rundir import finished_epochs

    try:
        return distill(store, opts.targets, out_dir, opts, log=click.echo)
    except KeyboardInterrupt:
        done = finished_epochs(out_dir)
        kept = f"epochs 1-{done} of {opts.epochs} are kept" if done else "no epoch finished"
        raise RunInterrupted(f"interrupted: {kept} in {out_dir}; rerun the same command to "
                             "continue") from None
