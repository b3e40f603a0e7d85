"""Plots used across the book: training histories and image grids."""

from __future__ import annotations

import math
from html import escape
from collections.abc import Sequence

import matplotlib.pyplot as plt
import numpy as np
import torch

from aigc_lib.training import History


def plot_history(history: History, keys: Sequence[str] = ("train_loss", "val_loss"),
                 ax: plt.Axes | None = None, steps: bool = True, logy: bool = False,
                 title: str | None = None) -> plt.Axes:
    """Plot per-step training loss (faint, when ``steps``) and the recorded ``keys`` against step."""
    if not isinstance(history, History):
        raise TypeError(f"history must be an aigc_lib.training.History, got {type(history).__name__}")
    if not history.records:
        raise ValueError("history has no records to plot")
    missing = [k for k in keys if all(k not in r for r in history.records)]
    if missing:
        raise ValueError(f"keys {missing} are not in the history; available: "
                         f"{sorted(set().union(*history.records))}")
    if ax is None:
        _, ax = plt.subplots(figsize=(6, 3.5))
    if steps and history.step_losses:
        ax.plot(range(1, len(history.step_losses) + 1), history.step_losses, color="0.75",
                linewidth=0.8, label="train loss per step")
    x = history.column("step")
    for key in keys:
        ax.plot(x, history.column(key), marker="o", markersize=3, label=key.replace("_", " "))
    ax.set_xlabel("step")
    ax.set_ylabel("loss" if all("loss" in k for k in keys) else "value")
    if logy:
        ax.set_yscale("log")
    if title:
        ax.set_title(title)
    ax.legend(frameon=False)
    ax.grid(alpha=0.3)
    return ax


def _as_images(images: torch.Tensor | np.ndarray) -> np.ndarray:
    if isinstance(images, torch.Tensor):
        images = images.detach().float().cpu().numpy()
    if not isinstance(images, np.ndarray):
        raise TypeError(f"images must be a tensor or NumPy array, got {type(images).__name__}")
    if images.ndim == 4 and images.shape[1] in (1, 3):
        images = np.moveaxis(images, 1, -1)  # (N, C, H, W) -> (N, H, W, C)
    if images.ndim == 4 and images.shape[-1] == 1:
        images = images[..., 0]
    if images.ndim not in (3, 4) or (images.ndim == 4 and images.shape[-1] != 3):
        raise ValueError("images must have shape (N, H, W), (N, 1|3, H, W) or (N, H, W, 3), "
                         f"got {images.shape}")
    return images


def show_images(images: torch.Tensor | np.ndarray, ncols: int = 10,
                titles: Sequence[str] | None = None, cmap: str = "gray_r", scale: float = 1.0,
                vmin: float | None = None, vmax: float | None = None,
                suptitle: str | None = None) -> plt.Figure:
    """Show a batch of images as a grid (``ncols`` per row) and return the figure."""
    images = _as_images(images)
    if isinstance(ncols, bool) or not isinstance(ncols, int) or ncols < 1:
        raise ValueError(f"ncols must be a positive int, got {ncols!r}")
    if titles is not None and len(titles) != len(images):
        raise ValueError(f"titles must have one entry per image ({len(images)}), got {len(titles)}")
    n = len(images)
    if n == 0:
        raise ValueError("images is empty")
    cols = min(ncols, n)
    rows = math.ceil(n / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(scale * cols, scale * rows * (1.25 if titles else 1)),
                             squeeze=False)
    for i, ax in enumerate(axes.flat):
        ax.axis("off")
        if i < n:
            ax.imshow(images[i], cmap=cmap if images.ndim == 3 else None, vmin=vmin, vmax=vmax,
                      interpolation="nearest")
            if titles is not None:
                ax.set_title(titles[i], fontsize=8)
    if suptitle:
        fig.suptitle(suptitle)
    fig.tight_layout()
    return fig


class ResultsTable:
    """A small table that renders as HTML in notebooks and the book, and as text elsewhere."""

    def __init__(self, rows: Sequence[Sequence[object]], header: Sequence[str]):
        self.header = [str(h) for h in header]
        self.rows = [[_fmt(v) for v in row] for row in rows]

    def _repr_html_(self) -> str:
        head = "".join(f"<th>{escape(h)}</th>" for h in self.header)
        body = "".join("<tr>" + "".join(f"<td>{escape(v)}</td>" for v in row) + "</tr>"
                       for row in self.rows)
        return f'<table class="aigc-results"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'

    def __repr__(self) -> str:
        widths = [max(len(r[i]) for r in [self.header, *self.rows]) for i in range(len(self.header))]
        lines = ["  ".join(v.ljust(w) for v, w in zip(r, widths)) for r in [self.header, *self.rows]]
        return "\n".join(lines)


def _fmt(value: object) -> str:
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, torch.Tensor) and value.numel() == 1:
        return f"{value.item():.4g}"
    return str(value)


def results_table(rows: Sequence[Sequence[object]],
                  header: Sequence[str] = ("quantity", "measured", "check")) -> ResultsTable:
    """The table that closes each chapter: one row per measured quantity (floats to 4 digits)."""
    rows = list(rows)
    if not rows:
        raise ValueError("rows must not be empty")
    for i, row in enumerate(rows):
        if isinstance(row, (str, bytes)) or len(row) != len(header):
            raise ValueError(f"rows[{i}] must have {len(header)} entries (one per header column), "
                             f"got {row!r}")
    return ResultsTable(rows, header)
