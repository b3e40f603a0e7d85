"""Optimisation: learning-rate schedules (chapter 2; the optimisers written out for teaching are
added by that chapter)."""

from __future__ import annotations

import math

import torch

from aigc_lib import checks


def warmup_cosine(step: int, warmup_steps: int, total_steps: int, min_ratio: float = 0.0) -> float:
    r"""Learning-rate multiplier: linear warm-up, then cosine decay to ``min_ratio``.

    .. math:: f(s) = \begin{cases} (s+1)/W & s < W \\
              r + (1-r)\,\tfrac12\left(1 + \cos\pi\,\frac{s-W}{T-W}\right) & W \le s \le T \\
              r & s > T \end{cases}

    with :math:`W` = ``warmup_steps``, :math:`T` = ``total_steps``, :math:`r` = ``min_ratio``.
    Step :math:`s` counts optimizer steps from 0, as ``LambdaLR`` does.
    """
    checks.positive_number("step", step, integer=True, allow_zero=True)
    checks.positive_number("warmup_steps", warmup_steps, integer=True, allow_zero=True)
    checks.positive_number("total_steps", total_steps, integer=True)
    if warmup_steps >= total_steps:
        raise ValueError(f"warmup_steps ({warmup_steps}) must be < total_steps ({total_steps})")
    checks.positive_number("min_ratio", min_ratio, allow_zero=True)
    if min_ratio > 1:
        raise ValueError(f"min_ratio must be in [0, 1], got {min_ratio}")
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    progress = min(1.0, (step - warmup_steps) / (total_steps - warmup_steps))
    return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


def warmup_cosine_scheduler(optimizer: torch.optim.Optimizer, warmup_steps: int, total_steps: int,
                            min_ratio: float = 0.0) -> torch.optim.lr_scheduler.LambdaLR:
    """A ``LambdaLR`` applying :func:`warmup_cosine` to every parameter group; step it once per
    optimizer step (``fit`` does)."""
    if not isinstance(optimizer, torch.optim.Optimizer):
        raise TypeError(f"optimizer must be a torch.optim.Optimizer, got {type(optimizer).__name__}")
    warmup_cosine(0, warmup_steps, total_steps, min_ratio)  # validate the arguments now
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: warmup_cosine(s, warmup_steps, total_steps, min_ratio))
