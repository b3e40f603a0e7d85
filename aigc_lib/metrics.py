"""Evaluation metrics used across chapters (accuracy here; likelihoods, compression baselines,
Fréchet distance and mode coverage are added by the chapters that derive them)."""

from __future__ import annotations

import torch

from aigc_lib import checks


def accuracy(logits: torch.Tensor, targets: torch.Tensor) -> float:
    """Fraction of rows whose arg-max logit equals the target class."""
    checks.tensor("logits", logits, floating=True, ndim=2)
    checks.tensor("targets", targets, ndim=1)
    if len(logits) != len(targets):
        raise ValueError(f"logits and targets must have the same length, got {len(logits)} and "
                         f"{len(targets)}")
    return (logits.argmax(dim=1) == targets).float().mean().item()
