"""Diagrams of chapter 1: the likelihood as heights of a density, and entropy + KL as lengths."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from matplotlib.figure import Figure

from aigc_lib import checks, losses
from aigc_lib.diagrams.core import ACCENT, EDGE, MUTED, PALETTE, box, canvas, note


def _gaussian_nll(data: torch.Tensor, mean: float, std: float) -> torch.Tensor:
    return -torch.distributions.Normal(mean, std).log_prob(data)


def likelihood(data: torch.Tensor, means: Sequence[float], std: float = 1.0) -> Figure:
    r"""Data points under Gaussians :math:`\mathcal N(\mu, \sigma^2)` for each ``mean``: each
    point's density is a vertical bar (its height :math:`p(x_i)`), the panel title gives the
    negative log-likelihood :math:`-\sum_i \log p(x_i)`, and a last panel draws that NLL as a
    function of :math:`\mu`, lowest at the sample mean (chapter 1)."""
    checks.tensor("data", data, floating=True, ndim=1)
    checks.positive_number("std", std)
    if not means:
        raise ValueError("means must name at least one Gaussian to draw")
    data = data.double()
    lo, hi = float(data.min()) - 3 * std, float(data.max()) + 3 * std
    grid = torch.linspace(lo, hi, 300, dtype=torch.float64)
    fig = Figure(figsize=(3.0 * (len(means) + 1), 2.7))
    axes = fig.subplots(1, len(means) + 1)
    top = 1.15 / (std * (2 * torch.pi) ** 0.5)
    for ax, mean in zip(axes, means):
        density = torch.distributions.Normal(mean, std).log_prob(grid).exp()
        heights = (-_gaussian_nll(data, mean, std)).exp()
        ax.fill_between(grid, density, color=PALETTE["model"], lw=0)
        ax.plot(grid, density, color=EDGE, lw=1)
        ax.vlines(data, 0, heights, color=ACCENT, lw=1.6)
        ax.plot(data, torch.zeros_like(data), "o", color=PALETTE["data"], mec=EDGE, ms=6,
                clip_on=False, zorder=3)
        nll = float(_gaussian_nll(data, mean, std).sum())
        ax.set_title(f"μ = {mean:.2f}: NLL = {nll:.1f} nats", fontsize=9)
        ax.set(ylim=(0, top), xlabel="x", yticks=[])
        ax.spines[["top", "right", "left"]].set_visible(False)
    axes[0].set_ylabel("density p(x)")
    mus = torch.linspace(lo + 2 * std, hi - 2 * std, 200, dtype=torch.float64)
    curve = torch.stack([_gaussian_nll(data, float(m), std).sum() for m in mus])
    last = axes[-1]
    last.plot(mus, curve, color=EDGE, lw=1.2)
    for mean in means:
        last.plot(mean, float(_gaussian_nll(data, mean, std).sum()), "o", color=ACCENT, ms=5)
    last.axvline(float(data.mean()), color=MUTED, ls=":", lw=1)
    last.set_title("NLL as a function of μ", fontsize=9)
    last.set(xlabel=f"μ (dotted: sample mean {float(data.mean()):.2f})", ylabel="nats")
    last.spines[["top", "right"]].set_visible(False)
    fig.tight_layout()
    return fig


def entropy_decomposition(p: torch.Tensor, q: torch.Tensor,
                          outcomes: Sequence[str] | None = None) -> Figure:
    r"""Two distributions side by side, and :math:`H(p, q) = H(p) + \mathrm{KL}(p\,\|\,q)` as
    one bar of length :math:`H(p,q)` cut into its two parts, in nats (chapter 1)."""
    for name, value in (("p", p), ("q", q)):
        checks.tensor(name, value, floating=True, ndim=1)
        checks.probability_vector(name, value)
    checks.same_shape("p", p, "q", q)
    names = list(outcomes) if outcomes is not None else [str(i + 1) for i in range(len(p))]
    if len(names) != len(p):
        raise ValueError(f"outcomes must name {len(p)} outcomes, got {len(names)}")
    h_p = float(losses.entropy(p))
    kl = float(losses.kl_categorical(p, q))
    fig, ax = canvas(8.4, 2.4)
    width = 0.22
    for i, (pi, qi) in enumerate(zip(p.tolist(), q.tolist())):
        x = 0.5 + i * 0.62
        for dx, value, kind in ((0, pi, "data"), (width, qi, "model")):
            ax.add_patch(_bar(x + dx, 0.45, width, 1.5 * value, kind))
        note(ax, x + width, 0.3, names[i], color=EDGE)
    right = 0.5 + len(p) * 0.62
    box(ax, 0.5, 2.05, 0.18, 0.14, kind="data", rounded=False)
    note(ax, 0.75, 2.12, "p: the data", ha="left", color=EDGE)
    box(ax, 1.9, 2.05, 0.18, 0.14, kind="model", rounded=False)
    note(ax, 2.15, 2.12, "q: the model", ha="left", color=EDGE)
    scale = (8.2 - right - 0.3) / (h_p + kl)
    x0 = right + 0.3
    box(ax, x0, 1.0, h_p * scale, 0.5, f"H(p) = {h_p:.2f}", kind="data", rounded=False)
    box(ax, x0 + h_p * scale, 1.0, kl * scale, 0.5, f"KL = {kl:.2f}", kind="loss",
        rounded=False, fontsize=8)
    ax.annotate("", (x0, 1.72), (x0 + (h_p + kl) * scale, 1.72),
                arrowprops=dict(arrowstyle="<->", color=EDGE, lw=0.9))
    note(ax, x0 + (h_p + kl) * scale / 2, 1.9, f"cross-entropy H(p, q) = {h_p + kl:.2f} nats",
         color="black", fontsize=9)
    note(ax, x0 + h_p * scale / 2, 0.75, "fixed by the data", fontsize=8)
    note(ax, x0 + h_p * scale + kl * scale / 2, 0.75, "what training\ncan remove",
         fontsize=8, va="top")
    return fig


def _bar(x: float, y: float, w: float, h: float, kind: str):
    from matplotlib.patches import Rectangle

    return Rectangle((x, y), w, h, facecolor=PALETTE[kind], edgecolor=EDGE, linewidth=0.8)
