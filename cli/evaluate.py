"""``eastkd evaluate``: score a trained student on a store's split, with its complexity."""

from __future__ import annotations

import click

from eastkd.cli.options import echo_json, store_access, progress_option


@click.command("evaluate", context_settings={"show_default": True})
@click.argument("run_dir", type=click.Path(file_okay=False))
@click.argument("store")
@click.option("--split", default="test",
              help="Split to score (train, valid, test, or all for every item).")
@click.option("--fold", type=click.IntRange(1, 5),
              help="Re-derive splits from the items 'fold' column (ESC-50)  "
                   "[default: the run's own fold, if any]")
@click.option("--device", default="auto", help="auto, cpu or cuda.")
@click.option("--json", "as_json", is_flag=True,
              help="Print one JSON object (metrics, n_items, complexity, ...) instead of tables.")
@progress_option("Accepted for uniformity (evaluate prints no progress bar).", draws=False)
@store_access
def command(run_dir: str, store: str, split: str, fold: int | None, device: str,
            as_json: bool, progress: bool | None) -> None:
    """Score the best student of RUN_DIR on SPLIT of STORE.

    STORE may be another store than the one trained on (e.g. another dataset with the same
    classes) as long as its log-mel inputs were extracted with the same settings; a store that
    differs is refused with the difference. Metrics: accuracy and macro-F1 (single-label),
    macro ROC-AUC and PR-AUC = mAP (multi-label). Complexity: student parameters, MACs and CPU
    ms per clip, and the teacher's parameters where the store records them.
    """
    from eastkd.pipeline.distill.evaluate import evaluate

    res = evaluate(run_dir, store, split=split, fold=fold, device=device)
    if as_json:
        echo_json(res)
        return
    click.echo(f"{run_dir} (best epoch {res['best_epoch']}) on {store} [{split}, "
               f"{res['n_items']} items]")
    rows = [(k, f"{v:.4f}") for k, v in res["metrics"].items()]
    c = res["complexity"]
    crow = [("student parameters", f"{c['student_parameters']:,}"),
            ("student MACs / clip", f"{c['student_macs_per_clip']:,}"),
            ("student CPU ms / clip (1 thread)", f"{c['student_cpu_ms_per_clip']:.2f}")]
    if c.get("teacher_parameters"):
        crow += [(f"teacher parameters ({c['teacher']})", f"{c['teacher_parameters']:,}"),
                 ("teacher / student parameters", f"{c['parameter_ratio']:.1f}x")]
    width = max(len(k) for k, _ in rows + crow) + 2
    click.echo("\nmetric".ljust(width + 1) + "value")
    for k, v in rows:
        click.echo(f"  {k.ljust(width)}{v}")
    click.echo("\ncomplexity")
    for k, v in crow:
        click.echo(f"  {k.ljust(width)}{v}")
