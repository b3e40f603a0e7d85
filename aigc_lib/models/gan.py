r"""A generative adversarial network: an MLP generator and an MLP discriminator (chapter 4).

The generator maps noise :math:`z \sim \mathcal N(0, I)` to a data point :math:`G(z)`; the
discriminator maps a data point to one **logit** :math:`\ell(x)`, with
:math:`D(x) = \sigma(\ell(x))` the probability it assigns to "real". The losses in
:mod:`aigc_lib.losses` (``gan_discriminator_loss``, ``gan_generator_loss``) take these logits,
and :func:`aigc_lib.training.fit_gan` trains the pair. The same two classes serve the 2-D ring of
Gaussians (``output="linear"``) and images with pixels in [0, 1] (``output="sigmoid"``).

Packing (Lin et al. 2018, PacGAN): a discriminator built with ``pack=m`` scores groups of ``m``
examples at once (their coordinates concatenated), so it can see that a batch lacks variety.
"""

from __future__ import annotations

import torch
from torch import nn

from aigc_lib import checks

OUTPUTS = ("linear", "sigmoid")


def _mlp(sizes: list[int], activation: type[nn.Module] | nn.Module) -> nn.Sequential:
    """Linear layers with ``activation`` between them (none after the last)."""
    parts: list[nn.Module] = []
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
        parts.append(nn.Linear(a, b))
        if i < len(sizes) - 2:
            parts.append(activation() if isinstance(activation, type) else activation)
    return nn.Sequential(*parts)


def _sizes(name_in: str, n_in: int, hidden: int, layers: int) -> None:
    checks.positive_number(name_in, n_in, integer=True)
    checks.positive_number("hidden", hidden, integer=True)
    checks.positive_number("layers", layers, integer=True, allow_zero=True)


class Generator(nn.Module):
    r"""MLP generator :math:`G: \mathbb R^{k} \to \mathbb R^{D}`: ``layers`` hidden ReLU layers of
    width ``hidden``, then a linear output (``output="linear"``) or a sigmoid, for pixels in
    [0, 1] (``output="sigmoid"``). ``layers=0`` is an affine map :math:`G(z) = Az + b`.
    ``latent_dim`` :math:`k` is read by :func:`aigc_lib.training.fit_gan` to draw the noise."""

    def __init__(self, latent_dim: int, data_dim: int, hidden: int = 128, layers: int = 2,
                 output: str = "linear"):
        super().__init__()
        _sizes("latent_dim", latent_dim, hidden, layers)
        checks.positive_number("data_dim", data_dim, integer=True)
        if output not in OUTPUTS:
            raise ValueError(f"output must be one of {OUTPUTS}, got {output!r}")
        self.latent_dim, self.data_dim, self.output = latent_dim, data_dim, output
        self.net = _mlp([latent_dim, *[hidden] * layers, data_dim], nn.ReLU)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        checks.tensor("z", z, floating=True, finite=False)   # shapes only: no value is read
        if z.ndim != 2 or z.shape[1] != self.latent_dim:
            raise ValueError(f"z must have shape (B, {self.latent_dim}), got {tuple(z.shape)}")
        x = self.net(z)
        return torch.sigmoid(x) if self.output == "sigmoid" else x

    @torch.no_grad()
    def sample(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        r""":math:`n` samples :math:`G(z)`, :math:`z \sim \mathcal N(0, I)`, without gradients.
        ``generator`` (a CPU ``torch.Generator``) fixes the noise."""
        checks.positive_number("n", n, integer=True)
        device = next(self.parameters()).device
        z = torch.randn(n, self.latent_dim, generator=generator).to(device)
        return self(z)


class Discriminator(nn.Module):
    r"""MLP discriminator returning one logit :math:`\ell` per example (or per group of ``pack``
    examples): ``layers`` hidden LeakyReLU(0.2) layers of width ``hidden``, then a linear layer
    to one output. Input ``(B, data_dim)``; output shape ``(B // pack,)``. With ``pack = m`` the
    rows :math:`x_{mi}, \dots, x_{mi+m-1}` are concatenated into one input of size
    :math:`m\cdot D`, so ``B`` must be a multiple of ``m``."""

    def __init__(self, data_dim: int, hidden: int = 128, layers: int = 2, pack: int = 1):
        super().__init__()
        _sizes("data_dim", data_dim, hidden, layers)
        checks.positive_number("pack", pack, integer=True)
        self.data_dim, self.pack = data_dim, pack
        self.net = _mlp([pack * data_dim, *[hidden] * layers, 1], nn.LeakyReLU(0.2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        checks.tensor("x", x, floating=True, finite=False)   # shapes only: no value is read
        if x.ndim != 2 or x.shape[1] != self.data_dim:
            raise ValueError(f"x must have shape (B, {self.data_dim}), got {tuple(x.shape)}")
        if len(x) % self.pack:
            raise ValueError(f"x has {len(x)} rows, not a multiple of pack={self.pack}")
        return self.net(x.reshape(len(x) // self.pack, -1)).squeeze(-1)
