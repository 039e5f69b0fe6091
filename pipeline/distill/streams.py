"""The training steps of distill over labelled and unlabelled rows, drawn as two streams.

Without unlabelled rows (or with ``--unlabelled-ratio 0``, or ``--kd none``) a step is one
batch of the labelled train rows, exactly as :meth:`SplitData.batches` deals them: one pass
over them is an epoch. With unlabelled rows, each step is a labelled batch of ``batch_size``
rows (the task loss and the KD loss) *plus* an unlabelled batch of ``unlabelled_batch`` rows
(the KD loss only), each stream shuffled and read through its own :class:`RowStream` (so
memory stays flat however many unlabelled clips there are). An **epoch** is one pass over the
KD pool: enough steps that every train row, labelled and unlabelled, is drawn once; the stream
that finishes its pass first starts another (reshuffled; its partial pass is dropped at the
epoch's end). So 45 labels among 5000 clips give a task loss at every step, the labelled
batches cycling about ``5000 / (45 * ratio)`` times per epoch. Both streams draw their
shuffles from the run's generator, in a fixed order, so ``--resume`` repeats them exactly.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import torch

from eastkd.pipeline.core.reading import Batch, SplitData

LABELLED_MIN = 2  # a labelled batch of one item is dropped (BatchNorm, distance correlation)


@dataclass
class Step:
    """One optimisation step: a labelled batch, and an unlabelled one (KD only) or None."""

    labelled: Batch
    unlabelled: Batch | None = None


def n_batches(n: int, size: int, drop_last_below: int = 1) -> int:
    """Batches of ``size`` that ``n`` rows give when a final batch under ``drop_last_below``
    is dropped."""
    full, rest = divmod(n, size)
    return full + (1 if rest >= max(1, drop_last_below) else 0)


def unlabelled_batch_size(batch_size: int, ratio: float) -> int:
    """Unlabelled rows per step: ``round(ratio * batch_size)``, at least 1 when ``ratio > 0``."""
    return 0 if ratio <= 0 else max(1, int(round(ratio * batch_size)))


def steps_per_epoch(n_labelled: int, n_unlabelled: int, batch_size: int,
                    unlabelled_batch: int) -> int:
    """Steps of one epoch: one pass over the labelled rows, or over the KD pool when an
    unlabelled stream is drawn (the longer of the two streams' passes)."""
    steps = n_batches(n_labelled, batch_size, LABELLED_MIN)
    if unlabelled_batch and n_unlabelled:
        steps = max(steps, n_batches(n_unlabelled, unlabelled_batch))
    return steps


def _cycle(split: SplitData, size: int, gen: torch.Generator,
           drop_last_below: int) -> Iterator[Batch]:
    """The split's batches, pass after pass (each pass reshuffled from ``gen``)."""
    while True:
        yielded = False
        for batch in split.batches(size, gen, drop_last_below=drop_last_below):
            yielded = True
            yield batch
        if not yielded:
            return


def training_steps(labelled: SplitData, unlabelled: SplitData | None, batch_size: int,
                   unlabelled_batch: int, gen: torch.Generator) -> Iterator[Step]:
    """One epoch's steps (module docstring). Without an unlabelled stream the labelled batches
    are exactly those of ``labelled.batches(batch_size, gen, drop_last_below=2)``."""
    if unlabelled is None or not unlabelled_batch or len(unlabelled) == 0:
        for batch in labelled.batches(batch_size, gen, drop_last_below=LABELLED_MIN):
            yield Step(batch)
        return
    steps = steps_per_epoch(len(labelled), len(unlabelled), batch_size, unlabelled_batch)
    lab = _cycle(labelled, batch_size, gen, LABELLED_MIN)
    unl = _cycle(unlabelled, unlabelled_batch, gen, 1)
    try:
        for _ in range(steps):
            yield Step(next(lab), next(unl))
    finally:  # stop the streams' read-ahead of a pass the epoch does not finish
        lab.close()
        unl.close()


def epoch_line(n_labelled: int, n_unlabelled: int, batch_size: int,
               unlabelled_batch: int) -> str:
    """A line for the run's start: how one epoch draws the two streams."""
    steps = steps_per_epoch(n_labelled, n_unlabelled, batch_size, unlabelled_batch)
    return (f"epoch = one pass over the KD pool ({n_labelled} labelled + {n_unlabelled} "
            f"unlabelled train rows): {steps} steps of {batch_size} labelled + "
            f"{unlabelled_batch} unlabelled rows, the labelled rows drawn "
            f"{steps * batch_size / max(1, n_labelled):.1f} times over")
