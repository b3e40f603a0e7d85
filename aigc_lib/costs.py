"""What a model costs: parameters, bytes on disk, latency and throughput (chapter 9; the verdict
chapter compares techniques by them).

Timings are wall-clock (``time.perf_counter``) medians over repeats, so that one interruption by
another program on a shared machine does not decide the number; they still depend on the machine,
its load and the thread count, which is why a chapter prints them next to ``runtime.describe()``.
"""

from __future__ import annotations

import os
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from aigc_lib import checks


def count_parameters(model: torch.nn.Module, trainable_only: bool = False) -> int:
    """Number of scalar parameters of ``model`` (shared tensors counted once); only those that
    require gradients when ``trainable_only``."""
    if not isinstance(model, torch.nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    # Module.parameters() yields each tensor once, however many times it is shared
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


def size_on_disk(*paths: str | os.PathLike) -> int:
    """Total bytes of the given files and of every file under the given folders."""
    if not paths:
        raise ValueError("give at least one path")
    total = 0
    for path in paths:
        if not isinstance(path, (str, os.PathLike)):
            raise TypeError(f"paths must be str or os.PathLike, got {type(path).__name__}")
        path = Path(path)
        if path.is_file():
            total += path.stat().st_size
        elif path.is_dir():
            total += sum(f.stat().st_size for f in path.rglob("*") if f.is_file())
        else:
            raise FileNotFoundError(f"no file or folder at {path}")
    return total


@dataclass(frozen=True)
class Speed:
    """Inference speed: ``latency`` seconds for one message alone (median), and ``throughput``
    messages per second when messages come in batches of ``batch_size``."""
    latency: float
    throughput: float
    batch_size: int


def measure_speed(predict: Callable[[list[str]], Any], texts: Sequence[str],
                  batch_size: int = 64, singles: int = 30, repeats: int = 3,
                  warmup: int = 2) -> Speed:
    """Time ``predict`` (a function from a list of messages to predictions, tokenization
    included) on ``texts``.

    Latency: the median over ``singles`` calls with one message each, after ``warmup`` calls.
    Throughput: ``len(texts)`` divided by the median over ``repeats`` passes through all
    ``texts`` in batches of ``batch_size``.
    """
    if not callable(predict):
        raise TypeError(f"predict must be callable, got {type(predict).__name__}")
    if isinstance(texts, str) or not isinstance(texts, Sequence) or not texts:
        raise ValueError("texts must be a non-empty list of str")
    if not all(isinstance(t, str) for t in texts):
        raise TypeError("texts must hold only str")
    for name, value in (("batch_size", batch_size), ("singles", singles), ("repeats", repeats)):
        checks.positive_number(name, value, integer=True)
    checks.positive_number("warmup", warmup, integer=True, allow_zero=True)
    texts = list(texts)
    for i in range(warmup):
        predict([texts[i % len(texts)]])
    single = []
    for i in range(singles):
        start = time.perf_counter()
        predict([texts[i % len(texts)]])
        single.append(time.perf_counter() - start)
    passes = []
    for _ in range(repeats):
        start = time.perf_counter()
        for s in range(0, len(texts), batch_size):
            predict(texts[s:s + batch_size])
        passes.append(time.perf_counter() - start)
    return Speed(statistics.median(single), len(texts) / statistics.median(passes), batch_size)


def count_flops(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> tuple[Any, int]:
    r"""Run ``fn(*args, **kwargs)`` once and count the floating-point operations of its matrix
    products and convolutions, forward and backward (``torch.utils.flop_counter``; chapter 5
    sets equal training budgets with it). A product of an :math:`m\times k` and a
    :math:`k\times n` matrix counts :math:`2mkn`; element-wise operations are not counted, which
    for MLPs and convolution nets leaves out a few per cent. Returns ``(result, flops)``."""
    if not callable(fn):
        raise TypeError(f"fn must be callable, got {type(fn).__name__}")
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        result = fn(*args, **kwargs)
    return result, int(counter.get_total_flops())
