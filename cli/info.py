"""``eastkd info``: what a store holds."""

from __future__ import annotations

from typing import Any

import click

from eastkd.cli.options import store_access, progress_option


def _print_text(d: dict[str, Any], show_skipped: int) -> None:
    from eastkd.cli.report import human_bytes

    ds = d["dataset"]
    click.echo(f"{d['path']}  ({d['backend']}, {d['format']} v{d['format_version']}, "
               f"{human_bytes(d['bytes_on_disk'])} on disk, eastkd {d['eastkd_version']}, "
               f"created {d['created']})")
    click.echo(f"dataset  {ds.get('name', '?')}  fingerprint {str(ds.get('fingerprint', ''))[:16]}"
               f"  source {ds.get('source', '') or '-'}")
    splits = ", ".join(f"{k} {v}" for k, v in d["splits"].items())
    click.echo(f"items    {d['items']}  ({splits})")
    if any(d["unlabelled"].values()):
        counts = ", ".join(f"{k} {d['labelled'][k]} labelled + {v} unlabelled"
                           for k, v in d["unlabelled"].items())
        click.echo(f"labels   {counts} (unlabelled items: KD targets only)")
    click.echo(f"digest   {d['digest'] or d['digest_note']}")
    how = ds.get("split") or {}
    if how.get("method") == "stratified":
        from eastkd.pipeline.datasets.splits import stratified_on

        click.echo(f"split    stratified by {stratified_on(how)}, ratios "
                   f"{'/'.join(f'{r:g}' for r in how['ratios'])}, seed {how['seed']}")
    kind = "multi-label" if d["multi_label"] else "single-label"
    classes = ", ".join(f"{k} ({v})" for k, v in d["classes"].items())
    if len(classes) > 300:
        classes = classes[:297] + "..."
    click.echo(f"classes  {len(d['classes'])} {kind}: {classes}")
    for kind_name in ("features", "embeddings", "targets"):
        sections = d[kind_name]
        if not sections:
            continue
        click.echo(f"{kind_name}:")
        for name, s in sections.items():
            st = s["status"]
            state = "complete" if s["complete"] else f"UNFINISHED ({st['pending']} pending)"
            arrays = "; ".join(f"{a} {'x'.join(map(str, v['shape']))} {v['dtype']}"
                               for a, v in s["arrays"].items())
            click.echo(f"  {name:<18} {arrays}  [{st['ok']} ok, {st['skipped']} skipped, {state}]")
            a = s["attrs"]
            facts = []
            for key in ("teacher", "weights_sha256", "sample_rate", "pooling", "method", "source",
                        "fit_split", "explained_variance", "probe_metric"):
                if key in a and a[key] is not None:
                    v = a[key]
                    if key == "weights_sha256":
                        v = str(v)[:16]
                    if isinstance(v, float):
                        v = f"{v:.4g}"
                    if key == "probe_metric" and isinstance(v, dict):
                        value = v.get("value")
                        v = (f"{v.get('split')} {v.get('name')} "
                             + (f"{float(value):.3f}" if value is not None else "-"))
                    if key == "teacher":
                        v = f"{v}{_teacher_options(s.get('identity') or {})}"
                    facts.append(f"{key}={v}")
            test = (a.get("probe_scores") or {}).get("test") or {}
            metric = (a.get("probe_metric") or {}).get("name")
            if test.get(metric) is not None:  # compress --method probe: its held-out score
                facts.append(f"probe test {metric} {float(test[metric]):.3f}")
            if "segment" in a:
                facts.append(f"segment={a['segment'].get('seconds')}s/{a['segment'].get('crop')}")
            views = a.get("views")
            if isinstance(views, dict) and "seconds" in views:  # extract --views K
                facts.append(f"views={views.get('k')} x {views.get('seconds')}s, "
                             f"gain ±{views.get('gain_db')} dB, seed {views.get('seed')}")
            if facts:
                click.echo("  " + " " * 19 + ", ".join(facts))
            for sk in s["skipped"][:show_skipped]:
                click.echo(f"  {'':19}skipped {sk['id']}: {sk['reason']}")
            if len(s["skipped"]) > show_skipped:
                click.echo(f"  {'':19}... {len(s['skipped']) - show_skipped} more skipped "
                           "(--json lists all)")


def _teacher_options(identity: dict[str, Any]) -> str:
    """`` (hop_ms=50)``: the --teacher-opt options the embeddings were extracted with."""
    opts = identity.get("teacher_options") or {}
    return f" ({' '.join(f'{k}={v}' for k, v in opts.items())})" if opts else ""


@click.command("info", context_settings={"show_default": True})
@click.argument("store")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object instead of text.")
@click.option("--show-skipped", type=click.IntRange(min=0), default=10,
              help="How many skipped items to list per section in the text view.")
@progress_option("Accepted for uniformity (info prints no progress bar).", draws=False)
@store_access
def command(store: str, as_json: bool, show_skipped: int, progress: bool | None) -> None:
    """Show what STORE holds: items, splits, classes, features, teachers' embeddings,
    compressed targets (with status and provenance), skipped items and bytes on disk, and
    the store's content digest (from the chunk digests recorded when they were written; put
    it in the store's card, and let receivers check it with `eastkd verify --digest`).

    STORE may be a .zarr folder, a .zip of one (read-only), an .h5 file, or a Zarr store at a
    URL (s3://bucket/name.zarr; see --storage-option).
    """
    from eastkd.cli.options import echo_json
    from eastkd.store import open_store
    from eastkd.store.info import describe

    with open_store(store, "r") as s:
        d = describe(s)
    if as_json:
        echo_json(d)
    else:
        _print_text(d, show_skipped)
