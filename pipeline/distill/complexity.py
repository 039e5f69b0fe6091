"""How expensive a model is: parameters, multiply-accumulates, CPU latency per clip.

The point of distillation is a student far cheaper than its teacher, so ``distill`` and
``evaluate`` report these numbers for students (and teachers where they can run).
"""

from __future__ import annotations

import copy
import statistics
import time
from collections.abc import Sequence

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from eastkd.errors import EastkdError

Inputs = torch.Tensor | Sequence[torch.Tensor]


def _as_args(example_input: Inputs) -> tuple[torch.Tensor, ...]:
    return (example_input,) if isinstance(example_input, torch.Tensor) else tuple(example_input)


def _batch_size(args: tuple[torch.Tensor, ...]) -> int:
    if not args or args[0].dim() == 0 or args[0].shape[0] < 1:
        raise EastkdError("complexity: the example input needs a non-empty batch dimension")
    return int(args[0].shape[0])


def count_parameters(model: nn.Module, trainable_only: bool = False) -> int:
    """Number of parameter elements (all, or only those with ``requires_grad``)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


def count_macs(model: nn.Module, example_input: Inputs) -> int:
    """Multiply-accumulates of one eval-mode forward pass on ``example_input`` (whole batch).

    Counted by :class:`torch.utils.flop_counter.FlopCounterMode` (convolutions and matrix
    products; normalisation, activations and pooling are not counted); MACs = FLOPs / 2.
    """
    args = _as_args(example_input)
    was_training = model.training
    model.eval()
    try:
        counter = FlopCounterMode(display=False)
        with torch.no_grad(), counter:
            model(*args)
    finally:
        model.train(was_training)
    return int(counter.get_total_flops()) // 2


def cpu_ms_per_clip(
    model: nn.Module, example_input: Inputs, repeats: int = 20, warmup: int = 3
) -> float:
    """Median wall-clock milliseconds per clip of an eval-mode CPU forward pass.

    Runs ``warmup`` untimed passes, then ``repeats`` timed ones under ``torch.inference_mode``,
    and divides the median by the batch size. Uses the current torch thread setting (set
    ``torch.set_num_threads`` first for a single-thread figure). A model on another device is
    copied to the CPU; the original is left untouched.
    """
    if repeats < 1 or warmup < 0:
        raise EastkdError(
            f"cpu_ms_per_clip: repeats must be >= 1 and warmup >= 0 "
            f"(got repeats={repeats}, warmup={warmup})"
        )
    args = tuple(a.to("cpu") for a in _as_args(example_input))
    batch = _batch_size(args)
    on_cpu = all(t.device.type == "cpu" for t in list(model.parameters()) + list(model.buffers()))
    net = model if on_cpu else copy.deepcopy(model).to("cpu")
    was_training = net.training
    net.eval()
    times: list[float] = []
    try:
        with torch.inference_mode():
            for _ in range(warmup):
                net(*args)
            for _ in range(repeats):
                start = time.perf_counter()
                net(*args)
                times.append(time.perf_counter() - start)
    finally:
        net.train(was_training)
    return 1000.0 * statistics.median(times) / batch
