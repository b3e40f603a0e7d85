"""Diagrams of chapter 5: the forward (noising) and reverse (denoising) chains on one image, the
geometry that ties the ε, x₀, v and score parameterisations together, and the steps a sampler
visits for a given number of network evaluations."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from matplotlib.figure import Figure
from matplotlib.patches import Arc, Rectangle

from aigc_lib.diagrams.core import ACCENT, EDGE, MUTED, PALETTE, arrow, canvas, note
from aigc_lib.models import diffusion as dm


def chains(schedule: dm.NoiseSchedule, image: torch.Tensor, steps: Sequence[int],
           seed: int = 0) -> Figure:
    r"""The forward chain :math:`q(x_t\mid x_{t-1})` that adds noise (left to right) and the
    learned reverse chain :math:`p_\theta(x_{t-1}\mid x_t)` that removes it (right to left), drawn
    on one square ``image`` noised to the chosen ``steps`` with :func:`~aigc_lib.models.diffusion.
    q_sample` and one fixed noise draw; under each picture :math:`\bar\alpha_t` and the
    signal-to-noise ratio of ``schedule`` (chapter 5)."""
    schedule = dm._schedule(schedule)
    if not isinstance(image, torch.Tensor) or image.ndim != 2 or image.shape[0] != image.shape[1]:
        raise ValueError("image must be a square 2-D tensor (side, side)")
    steps = list(steps)
    if len(steps) < 3 or steps != sorted(set(steps)) or steps[0] < 0 or steps[-1] > schedule.T:
        raise ValueError(f"steps must be >= 3 increasing steps in [0, {schedule.T}], "
                         f"got {steps}")
    x0 = image.double().flatten()[None]
    noise = torch.randn(x0.shape, generator=torch.Generator().manual_seed(seed),
                        dtype=torch.float64)
    n, size, gap = len(steps), 0.9, 0.55
    width = n * size + (n - 1) * gap + 0.3
    fig, ax = canvas(max(width, 6.0), 2.9)
    for i, t in enumerate(steps):
        x = 0.15 + i * (size + gap)
        xt = dm.q_sample(schedule, x0, t, noise).reshape(image.shape)
        ax.imshow(xt.numpy(), cmap="gray_r", extent=(x, x + size, 1.0, 1.0 + size),
                  vmin=-1.5, vmax=1.5, interpolation="nearest")
        ax.add_patch(Rectangle((x, 1.0), size, size, fill=False, edgecolor=EDGE, lw=0.8))
        note(ax, x + size / 2, 2.05, f"$x_{{{t}}}$", fontsize=10, color="black")
        ab = float(schedule.alpha_bars[t])
        snr = "∞" if t == 0 else f"{ab / (1 - ab):.2g}"
        note(ax, x + size / 2, 0.8, f"ᾱ = {ab:.3g}", fontsize=7)
        note(ax, x + size / 2, 0.6, f"SNR = {snr}", fontsize=7)
        if i:
            left = x - gap
            jump = "" if steps[i] - steps[i - 1] == 1 else " …"
            arrow(ax, (left + 0.05, 1.65), (x - 0.05, 1.65), color=EDGE)
            arrow(ax, (x - 0.05, 1.3), (left + 0.05, 1.3), color=ACCENT)
            note(ax, x - gap / 2, 1.47, jump, fontsize=7)
    note(ax, width / 2, 2.45, r"forward $q(x_t \mid x_{t-1})$: add a little Gaussian noise "
         r"(fixed, no parameters) →", fontsize=8.5, color=EDGE)
    note(ax, width / 2, 0.3, r"← reverse $p_\theta(x_{t-1} \mid x_t)$: a network removes "
         "it, one step at a time", fontsize=8.5, color=ACCENT)
    note(ax, width / 2, 0.08, f"{schedule.name} schedule, T = {schedule.T}; one noise draw "
         "for all pictures", fontsize=7)
    return fig


def parameterisations(schedule: dm.NoiseSchedule, t: int) -> Figure:
    r"""Why :math:`\varepsilon`, :math:`x_0`, :math:`v` and the score are one prediction in four
    coordinates: with :math:`a = \sqrt{\bar\alpha_t}` and :math:`\sigma = \sqrt{1-\bar\alpha_t}`
    (:math:`a^2 + \sigma^2 = 1`), :math:`x_t = a x_0 + \sigma\varepsilon` lies on a quarter circle
    spanned by :math:`x_0` and :math:`\varepsilon`, at the angle :math:`\phi` of step ``t`` of
    ``schedule``; :math:`v = a\varepsilon - \sigma x_0` is the tangent, and the score is
    :math:`-\varepsilon/\sigma` (chapter 5; :func:`~aigc_lib.models.diffusion.convert`)."""
    schedule = dm._schedule(schedule)
    if isinstance(t, bool) or not isinstance(t, int) or not 1 <= t <= schedule.T:
        raise ValueError(f"t must be an int in [1, {schedule.T}], got {t!r}")
    ab = float(schedule.alpha_bars[t])
    a, s = math.sqrt(ab), math.sqrt(1 - ab)
    fig, ax = canvas(7.6, 3.4)
    o, r = (0.5, 0.4), 2.6
    ax.add_patch(Arc(o, 2 * r, 2 * r, theta1=0, theta2=90, color=MUTED, lw=0.8, ls=":"))
    pt = lambda u, w: (o[0] + r * u, o[1] + r * w)  # noqa: E731  (x0, eps) → inches
    arrow(ax, o, pt(1, 0), color="#2c6fb0", width=1.4)
    note(ax, *pt(1.03, -0.06), "$x_0$ (data)", color="#2c6fb0", fontsize=10, ha="left")
    arrow(ax, o, pt(0, 1), color="#7d4fb3", width=1.4)
    note(ax, *pt(0.04, 1.02), r"$\varepsilon$ (noise)", color="#7d4fb3", fontsize=10,
         ha="left")
    xt = pt(a, s)
    arrow(ax, o, xt, color="black", width=1.6)
    note(ax, xt[0] + 0.1, xt[1] + 0.12, "$x_t = a x_0 + \\sigma\\varepsilon$", fontsize=10,
         color="black", ha="left")
    arrow(ax, xt, (xt[0] - 0.9 * s, xt[1] + 0.9 * a), color=ACCENT, width=1.4)
    note(ax, xt[0] - 0.9 * s - 0.05, xt[1] + 0.9 * a, r"$v = a\varepsilon - \sigma x_0$",
         fontsize=10, color=ACCENT, ha="right")
    ax.add_patch(Arc(o, 1.0, 1.0, theta1=0, theta2=math.degrees(math.atan2(s, a)),
                     color=EDGE, lw=0.8))
    note(ax, o[0] + 0.62, o[1] + 0.15, r"$\phi$", fontsize=9, color=EDGE)
    lines = [f"step t = {t} of {schedule.T} ({schedule.name} schedule):",
             f"a = √ᾱ = cos φ = {a:.3f},  σ = √(1 − ᾱ) = sin φ = {s:.3f}",
             "", "one network output, four readings:",
             r"$\hat x_0 = (x_t - \sigma\hat\varepsilon)\,/\,a$",
             r"$\hat\varepsilon = (x_t - a\hat x_0)\,/\,\sigma$",
             r"$\hat v = a\hat\varepsilon - \sigma\hat x_0$",
             r"score $\nabla\log q(x_t) \approx -\hat\varepsilon\,/\,\sigma$"]
    for i, line in enumerate(lines):
        note(ax, 4.0, 3.15 - 0.33 * i, line, ha="left", fontsize=8.5,
             color="black" if i > 3 or i == 0 else EDGE)
    return fig


def nfe_ladder(T: int, nfes: Sequence[int]) -> Figure:
    r"""The steps :math:`T = \tau_n > \dots > \tau_1 > 0` a sampler visits with ``nfe`` network
    evaluations, one row per value of ``nfes``, from :func:`~aigc_lib.models.diffusion.
    sampling_steps`: fewer evaluations mean longer jumps, each of which the sampler's rule must
    bridge (chapter 5)."""
    nfes = list(nfes)
    if not nfes or any(isinstance(n, bool) or not isinstance(n, int) for n in nfes):
        raise ValueError(f"nfes must be a non-empty list of ints, got {nfes!r}")
    rows = {n: dm.sampling_steps(T, n) for n in nfes}
    fig, ax = canvas(7.6, 0.55 * len(nfes) + 0.9)
    left, right = 1.1, 7.3
    to_x = lambda step: right - (right - left) * step / T  # noqa: E731  T on the left
    for i, n in enumerate(nfes):
        y = 0.55 * (len(nfes) - i) + 0.3
        note(ax, 0.05, y, f"NFE {n}", ha="left", fontsize=8.5, color="black")
        ax.plot([left, right], [y, y], color=MUTED, lw=0.6)
        steps = rows[n]
        for a, b in zip(steps[:-1], steps[1:]):
            length = max(to_x(b) - to_x(a), 1e-3)       # arcs at most ~0.2 in high
            arrow(ax, (to_x(a), y), (to_x(b), y), bend=-min(0.35, 0.4 / length),
                  color=ACCENT, width=0.8)
        ax.plot([to_x(s) for s in steps[:-1]], [y] * (len(steps) - 1), "o", ms=3.5,
                color=PALETTE["model"], markeredgecolor=EDGE)
        ax.plot([to_x(0)], [y], "s", ms=4, color=PALETTE["data"], markeredgecolor=EDGE)
    note(ax, left, 0.12, f"t = {T} (pure noise)", ha="left", fontsize=7.5)
    note(ax, right, 0.12, "t = 0 (a sample)", ha="right", fontsize=7.5)
    note(ax, (left + right) / 2, 0.12, "one network evaluation per dot; the jump after "
         "the last lands on the data", fontsize=7.5)
    return fig
