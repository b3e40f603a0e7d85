"""Diagrams of chapter 2: optimisers' paths on one loss surface, the training loop as a flow, and
where weight decay enters Adam and AdamW."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import torch
from matplotlib.figure import Figure

from aigc_lib import checks
from aigc_lib.diagrams.core import ACCENT, EDGE, MUTED, arrow, box, canvas, note

PATH_COLOURS = ("#1f77b4", "#2ca02c", "#d62728", "#9467bd", "#8c564b")

# The calls of aigc_lib.training.run that the loop diagram draws, as they are written there
# (tests/test_diagrams.py checks that each still appears in the function's source).
LOOP_CALLS = ("stream.for_step(state.step)", "step(batch, state)", "state.log.end_step",
              "record(state)", "save(state)")


def optimiser_paths(paths: Mapping[str, torch.Tensor], curvatures: Sequence[float],
                    steps: int | None = None) -> Figure:
    r"""The iterates of several optimisers on the quadratic
    :math:`f(x) = \tfrac12\sum_i \lambda_i x_i^2` with ``curvatures`` :math:`(\lambda_1,
    \lambda_2)`, on one contour plot: each path is an ``(n, 2)`` tensor of iterates, e.g. from
    :func:`aigc_lib.optim.descend` (chapter 2). ``steps`` draws the first ``steps`` only."""
    if not isinstance(paths, Mapping) or not paths:
        raise ValueError("paths must map at least one optimiser name to its iterates")
    if len(curvatures) != 2 or min(curvatures) <= 0:
        raise ValueError(f"curvatures must be two positive numbers, got {curvatures!r}")
    for name, points in paths.items():
        checks.tensor(f"paths[{name!r}]", points, floating=True, ndim=2, finite=False)
        if points.shape[1] != 2:
            raise ValueError(f"paths[{name!r}] must have shape (n, 2), got {tuple(points.shape)}")
    drawn = {k: v[:steps].detach().double().numpy() for k, v in paths.items()}
    reach = max(np.abs(v[np.isfinite(v).all(1)]).max() for v in drawn.values()) * 1.15
    u, v = np.meshgrid(np.linspace(-reach, reach, 240), np.linspace(-reach, reach, 240))
    surface = 0.5 * (curvatures[0] * u**2 + curvatures[1] * v**2)
    fig = Figure(figsize=(7.2, 3.9))
    ax = fig.add_axes((0.08, 0.13, 0.6, 0.8))
    levels = np.geomspace(surface.max() * 1e-3, surface.max(), 10)
    ax.contour(u, v, surface, levels=levels, colors="0.78", linewidths=0.7)
    for colour, (name, points) in zip(PATH_COLOURS, drawn.items()):
        ax.plot(points[:, 0], points[:, 1], ".-", color=colour, ms=4, lw=1.1, label=name)
    start = next(iter(drawn.values()))[0]
    ax.plot(*start, "o", color="black", ms=6)
    ax.annotate("start", start, (8, 6), textcoords="offset points", fontsize=8)
    ax.plot(0, 0, "*", color=ACCENT, ms=11)
    ax.set(xlim=(-reach, reach), ylim=(-reach, reach), aspect="equal",
           xlabel=f"$x_1$ (curvature {curvatures[0]:g})",
           ylabel=f"$x_2$ (curvature {curvatures[1]:g})")
    shown = len(next(iter(drawn.values()))) - 1
    fig.legend(loc="center left", bbox_to_anchor=(0.66, 0.55), frameon=False, fontsize=9,
               title=f"first {shown} steps", title_fontsize=9)
    fig.text(0.69, 0.25, "grey: contours of the loss\n★ the minimum", fontsize=8, color=MUTED)
    return fig


def training_loop() -> Figure:
    """:func:`aigc_lib.training.run` as a flow: the batch, the step function, the NaN guard,
    and every ``eval_every`` steps a record and a checkpoint (chapter 2)."""
    fig, ax = canvas(8.9, 3.6)
    state = box(ax, 0.4, 2.3, 1.9, 1.0, "TrainState\nmodel · optimizer\nscheduler · history"
                "\nstep", kind="model", fontsize=8)
    data = box(ax, 0.4, 0.55, 1.9, 0.9, "data + order(epoch)\n(a permutation per epoch,\n"
               "seeded)", kind="data", fontsize=8)
    batch = box(ax, 2.85, 0.55, 1.75, 0.9, "stream.for_step(step)\nthe step's batch,\n"
                "on the device", kind="data", fontsize=8)
    step = box(ax, 5.15, 0.4, 1.75, 1.2, "step(batch, state)\nforward · loss\nbackward · clip"
               "\noptimizer.step()", kind="model", fontsize=8)
    guard = box(ax, 5.15, 2.3, 1.75, 1.0, "step += 1\nlog.end_step:\nNaN guard every\n"
                "sync_interval", kind="loss", fontsize=8)
    record = box(ax, 7.35, 2.45, 1.45, 0.85, "record(state)\n→ History row", kind="plain",
                 fontsize=8)
    save = box(ax, 7.35, 0.55, 1.45, 0.9, "save(state)\n→ checkpoint\n.safetensors",
               kind="frozen", fontsize=8)
    arrow(ax, data.right, batch.left)
    arrow(ax, batch.right, step.left)
    arrow(ax, step.top, guard.bottom)
    arrow(ax, guard.left, state.right, "while step < total", text_at=(3.72, 2.92))
    arrow(ax, (state.x + 1.5, state.y), (batch.x + 0.4, batch.y + batch.h), bend=0.25)
    arrow(ax, guard.right, record.left, dashed=True)
    arrow(ax, record.bottom, save.top, dashed=True)
    note(ax, 7.92, 1.9, "every eval_every\nsteps, and\nat the end", ha="right", fontsize=8)
    route = [(save.x + 0.7, save.y), (save.x + 0.7, 0.2), (0.15, 0.2), (0.15, state.y + 0.5)]
    ax.plot(*zip(*route), color=MUTED, lw=1, ls="--")
    arrow(ax, route[-1], state.left, dashed=True, color=MUTED)
    note(ax, 4.4, 0.05, "resume: call fit(…) again with the same checkpoint path", fontsize=8)
    note(ax, 3.72, 1.95, "one turn = one optimizer step", fontsize=8, color=EDGE)
    return fig


def weight_decay() -> Figure:
    r"""Where :math:`\lambda\theta` enters: Adam with L2 adds it to the gradient *before* the
    division by :math:`\sqrt{\hat v}`; AdamW subtracts :math:`\alpha\lambda\theta` beside the
    normalised step (chapter 2)."""
    fig, ax = canvas(8.6, 2.6)
    rows = (("Adam + L2", 1.55, True), ("AdamW (decoupled)", 0.2, False))
    for title, y, coupled in rows:
        note(ax, 0.05, y + 0.85, title, ha="left", color="black", fontsize=9)
        grad = box(ax, 0.1, y, 1.2, 0.6, r"$\nabla L(\theta)$", kind="data")
        mix = box(ax, 1.75, y, 1.45, 0.6, r"$g = \nabla L + \lambda\theta$" if coupled
                  else r"$g = \nabla L$", kind="loss" if coupled else "data", fontsize=9)
        norm = box(ax, 3.65, y, 2.1, 0.6, r"$\hat m / (\sqrt{\hat v} + \epsilon)$ of $g$",
                   kind="model", fontsize=9)
        update = box(ax, 6.2, y, 2.3, 0.6, r"$\theta \leftarrow \theta - \alpha\,(\cdot)$"
                     if coupled else r"$\theta \leftarrow \theta - \alpha\,(\cdot)"
                     r" - \alpha\lambda\theta$", kind="model", fontsize=9)
        for a, b in ((grad, mix), (mix, norm), (norm, update)):
            arrow(ax, a.right, b.left)
    note(ax, 4.7, 1.35, "λθ is divided by √v̂ too: weights with noisy gradients decay less",
         fontsize=8, color=ACCENT)
    note(ax, 6.9, 0.05, "every weight shrinks by (1 − αλ) per step", fontsize=8,
         color=ACCENT)
    return fig
