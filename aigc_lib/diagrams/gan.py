"""Diagrams of chapter 4: the GAN game as one training step (who sees what, which gradient reaches
which network), and the generator's two losses as functions of the discriminator's verdict."""

from __future__ import annotations

import torch
from matplotlib.figure import Figure

from aigc_lib import losses
from aigc_lib.diagrams.core import ACCENT, EDGE, MUTED, arrow, box, canvas, note
from aigc_lib.models.gan import Discriminator, Generator


def _widths(module: torch.nn.Module) -> str:
    """The layer widths of an MLP, read from its linear layers: ``2→128→128→1``."""
    linears = [m for m in module.modules() if isinstance(m, torch.nn.Linear)]
    return "→".join([str(linears[0].in_features)] + [str(m.out_features) for m in linears])


def game_loop(generator: Generator, discriminator: Discriminator) -> Figure:
    r"""One step of the GAN game with the widths of ``generator`` and ``discriminator``: noise
    :math:`z` → :math:`G` → :math:`G(z)`; :math:`D` scores real and generated examples. The
    discriminator's loss (real → 1, generated → 0) updates only :math:`D`, with :math:`G(z)`
    detached; the generator's loss goes back *through* :math:`D`, which it does not update,
    into :math:`G` (chapter 4). The generator never sees a real example."""
    if not isinstance(generator, Generator):
        raise TypeError(f"generator must be a Generator, got {type(generator).__name__}")
    if not isinstance(discriminator, Discriminator):
        raise TypeError(f"discriminator must be a Discriminator, "
                        f"got {type(discriminator).__name__}")
    if generator.data_dim != discriminator.data_dim:
        raise ValueError(f"the generator makes {generator.data_dim}-dim data, the "
                         f"discriminator reads {discriminator.data_dim}")
    k, D = generator.latent_dim, generator.data_dim
    fig, ax = canvas(9.0, 3.6)
    z = box(ax, 0.05, 0.55, 1.05, 0.65, f"noise $z$\n$\\mathcal{{N}}(0, I_{{{k}}})$",
            kind="noise", fontsize=8.5)
    g = box(ax, 1.5, 0.5, 1.45, 0.75, f"generator $G$\nMLP {_widths(generator)}",
            kind="model", fontsize=8)
    fake = box(ax, 3.35, 0.55, 1.05, 0.65, f"$G(z)$\n{D} numbers", kind="plain", fontsize=8.5)
    real = box(ax, 3.35, 2.25, 1.05, 0.65, f"real $x$\n{D} numbers", kind="data",
               fontsize=8.5)
    pack = f"\n(packs of {discriminator.pack})" if discriminator.pack > 1 else ""
    d = box(ax, 4.85, 1.3, 1.55, 0.85, f"discriminator $D$\nMLP {_widths(discriminator)}"
            f"{pack}", kind="model", fontsize=8)
    loss_d = box(ax, 6.9, 2.25, 2.05, 0.75, "$L_D$: real → 1, fake → 0\n"
                 "updates $D$ only", kind="loss", fontsize=8)
    loss_g = box(ax, 6.9, 0.45, 2.05, 0.75, r"$L_G = -\log\sigma(\ell(G(z)))$" "\n"
                 "updates $G$ only", kind="loss", fontsize=8)
    arrow(ax, z.right, g.left)
    arrow(ax, g.right, fake.left)
    arrow(ax, real.right, (d.x + 0.3, d.y + d.h))
    arrow(ax, fake.right, (d.x + 0.3, d.y))
    arrow(ax, (d.x + d.w, d.y + 0.6), loss_d.left, "logits ℓ", text_at=(6.65, 2.1))
    arrow(ax, (d.x + d.w, d.y + 0.25), loss_g.left)
    # the generator's gradient: back through D (not updated) into G
    ax.plot([loss_g.x + 0.6, loss_g.x + 0.6], [loss_g.y, 0.15], color=ACCENT, lw=1.2, ls="--")
    ax.plot([loss_g.x + 0.6, g.center[0]], [0.15, 0.15], color=ACCENT, lw=1.2, ls="--")
    arrow(ax, (g.center[0], 0.15), g.bottom, color=ACCENT, dashed=True)
    note(ax, 5.3, 0.27, "∂L_G/∂θ_G flows back through D (D is not updated here)",
         color=ACCENT, fontsize=7.5)
    arrow(ax, (loss_d.x + 0.6, loss_d.y + loss_d.h), (loss_d.x + 0.6, 3.35), color=ACCENT,
          dashed=True)
    ax.plot([loss_d.x + 0.6, d.center[0]], [3.35, 3.35], color=ACCENT, lw=1.2, ls="--")
    arrow(ax, (d.center[0], 3.35), d.top, color=ACCENT, dashed=True)
    note(ax, 6.4, 3.48, "∂L_D/∂θ_D: G(z) is detached", color=ACCENT, fontsize=7.5)
    note(ax, 1.9, 2.55, "G never sees a real example:\nit learns only from D's verdicts",
         color=EDGE, fontsize=8)
    return fig


def generator_losses(logits: torch.Tensor | None = None) -> Figure:
    r"""The generator's two losses on one sample as functions of the discriminator's logit
    :math:`\ell` (or of :math:`D = \sigma(\ell)`), computed with
    :func:`aigc_lib.losses.gan_generator_loss`: the saturating :math:`\log(1 - D)` is flat where
    :math:`D` rejects the sample (early in training), the non-saturating
    :math:`-\log D` is steep there (chapter 4)."""
    if logits is None:
        logits = torch.linspace(-6, 6, 241, dtype=torch.float64)
    if not isinstance(logits, torch.Tensor) or logits.ndim != 1 or len(logits) < 2:
        raise ValueError("logits must be a 1-D tensor of at least 2 logits")
    d = torch.sigmoid(logits)
    curves = {"saturating  log(1 − D)": losses.gan_generator_loss(
                  logits, saturating=True, reduction="none"),
              "non-saturating  −log D": losses.gan_generator_loss(logits, reduction="none")}
    fig = Figure(figsize=(6.4, 3.0))
    ax = fig.add_axes((0.1, 0.17, 0.62, 0.75))
    for (label, values), colour in zip(curves.items(), (MUTED, ACCENT)):
        ax.plot(d.numpy(), values.numpy(), color=colour, lw=2, label=label)
    ax.axvspan(0, 0.1, color="#e2e2e2", lw=0)
    ax.text(0.05, 0.97, "D rejects G(z):\nearly training", transform=ax.get_xaxis_transform(),
            ha="left", va="top", fontsize=7.5, color=EDGE)
    ax.set(xlabel="D(G(z)): the discriminator's probability of 'real'",
           ylabel="generator's loss", xlim=(0, 1))
    ax.legend(frameon=False, fontsize=8, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    fig.text(0.74, 0.35, "both push D(G(z)) up;\nonly −log D has a\nusable slope where\n"
             "D(G(z)) ≈ 0", fontsize=8, color=EDGE, va="top")
    return fig
