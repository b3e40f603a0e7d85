"""Diagrams of chapter 3: the VAE's graphical model, and one training step from the image through
the encoder, the reparameterised draw and the decoder to the two terms of the loss."""

from __future__ import annotations

from matplotlib.figure import Figure
from matplotlib.patches import Circle, FancyBboxPatch

from aigc_lib.diagrams.core import ACCENT, EDGE, MUTED, PALETTE, arrow, box, canvas, note
from aigc_lib.models.vae import VAEConfig


def _node(ax, x: float, y: float, text: str, kind: str, radius: float = 0.32) -> None:
    ax.add_patch(Circle((x, y), radius, facecolor=PALETTE[kind], edgecolor=EDGE, lw=1.1))
    ax.text(x, y, text, ha="center", va="center", fontsize=13)


def graphical_model() -> Figure:
    r"""The latent-variable model as a graph: :math:`z \sim p(z)`, :math:`x \sim p_\theta(x\mid
    z)` (solid: generation), and the encoder :math:`q_\phi(z\mid x)` (dashed: inference), inside a
    plate repeated for every image; :math:`x` is observed (shaded), :math:`z` is not (chapter 3)."""
    fig, ax = canvas(7.2, 3.0)
    ax.add_patch(FancyBboxPatch((1.6, 0.25), 2.2, 2.5, boxstyle="round,pad=0,rounding_size=0.1",
                                facecolor="none", edgecolor=MUTED, lw=1))
    note(ax, 3.7, 0.4, "N images", ha="right")
    _node(ax, 2.7, 2.25, "$z$", "plain")
    _node(ax, 2.7, 0.8, "$x$", "data")
    arrow(ax, (2.62, 1.93), (2.62, 1.12), width=1.3)
    arrow(ax, (2.98, 0.95), (2.98, 2.1), dashed=True, bend=-0.5, color=ACCENT)
    for name, (x, y), target, dashed, colour in (
            (r"$\theta$", (0.8, 1.5), (2.55, 1.5), False, EDGE),
            (r"$\phi$", (4.6, 1.5), (3.2, 1.5), True, ACCENT)):
        ax.plot(x, y, "o", color=colour, ms=5)
        ax.text(x, y + 0.2, name, ha="center", fontsize=12, color=colour)
        arrow(ax, (x + (0.1 if x < 2 else -0.1), y), target, dashed=dashed, color=colour)
    note(ax, 0.8, 1.05, "decoder\nweights", fontsize=8)
    note(ax, 4.6, 1.05, "encoder\nweights", fontsize=8, color=ACCENT)
    note(ax, 5.0, 2.45, r"generation (solid): $z \sim p(z) = \mathcal{N}(0, I)$,"
         "\n" r"then $x \sim p_\theta(x \mid z)$", ha="left", fontsize=9, color="black")
    note(ax, 5.0, 1.55, r"inference (dashed): $q_\phi(z \mid x)$" "\n"
         r"approximates $p_\theta(z \mid x)$", ha="left", fontsize=9, color=ACCENT)
    note(ax, 5.0, 0.65, "shaded: observed\nwhite: latent", ha="left", fontsize=8)
    return fig


def pipeline(config: VAEConfig) -> Figure:
    r"""One forward pass of a :class:`aigc_lib.models.vae.VAE` with its sizes from ``config``: the
    encoder gives :math:`(\mu, \log\sigma^2)`, the draw :math:`z = \mu + \sigma\odot\varepsilon`
    takes its noise from outside the network, the decoder gives one logit per pixel, and the loss
    is the reconstruction term plus the KL term (chapter 3)."""
    if not isinstance(config, VAEConfig):
        raise TypeError(f"config must be a VAEConfig, got {type(config).__name__}")
    d, hidden, layers, D = config.latent_dim, config.hidden, config.layers, config.x_dim
    fig, ax = canvas(9.2, 3.3)
    x = box(ax, 0.05, 1.3, 0.85, 0.8, f"$x$\n{D} pixels", kind="data", fontsize=9)
    enc = box(ax, 1.3, 1.2, 1.45, 1.0, f"encoder $q_\\phi$\nMLP {D}→{hidden}"
              f"{'→' + str(hidden) if layers > 1 else ''}\n→{2 * d}", kind="model", fontsize=8)
    stats = box(ax, 3.15, 1.2, 1.1, 1.0, f"$\\mu$  ({d})\n\n$\\log\\sigma^2$  ({d})",
                kind="model", fontsize=9)
    eps = box(ax, 4.65, 0.4, 1.25, 0.5, r"$\varepsilon \sim \mathcal{N}(0, I)$",
              kind="noise", fontsize=9)
    z = box(ax, 4.65, 1.25, 1.25, 0.9, f"$z = \\mu + \\sigma \\odot \\varepsilon$\n({d})",
            kind="plain", fontsize=9)
    dec = box(ax, 6.3, 1.2, 1.45, 1.0, f"decoder $p_\\theta$\nMLP {d}→{hidden}"
              f"{'→' + str(hidden) if layers > 1 else ''}\n→{D} logits", kind="model",
              fontsize=8)
    recon = box(ax, 8.0, 1.25, 1.15, 0.9, "reconstruction\n$-\\log p_\\theta(x\\mid z)$\n"
                "(BCE, summed)", kind="loss", fontsize=8)
    kl = box(ax, 2.75, 2.6, 1.9, 0.6, r"KL$(q_\phi(z\mid x)\,\|\,\mathcal{N}(0,I))$",
             kind="loss", fontsize=9)
    for a, b in ((x, enc), (enc, stats), (stats, z), (z, dec), (dec, recon)):
        arrow(ax, a.right, b.left)
    arrow(ax, stats.top, (stats.top[0], kl.y))
    arrow(ax, eps.top, z.bottom)
    note(ax, 4.55, 0.65, "noise from outside:\ngradients flow\nthrough μ and σ", ha="right",
         fontsize=7.5)
    ax.plot([x.center[0], x.center[0], 8.55, 8.55], [1.3, 0.15, 0.15, 1.25], color=MUTED,
            lw=1, ls=":")
    note(ax, 7.2, 0.3, "the image is also the target", fontsize=8)
    note(ax, 7.2, 2.85, "loss = reconstruction + β · KL\n(β = 1: the negative ELBO)",
         fontsize=9, color=ACCENT)
    return fig
