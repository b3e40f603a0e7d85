r"""A variational autoencoder with an MLP encoder and a Bernoulli decoder (chapter 3).

The encoder maps an image :math:`x` to the mean :math:`\mu(x)` and log-variance
:math:`\log\sigma^2(x)` of a diagonal Gaussian :math:`q(z\mid x)`; the decoder maps a latent
:math:`z` to one logit per pixel, the parameters of :math:`p(x\mid z) = \prod_i
\operatorname{Bernoulli}(x_i; \sigma(\ell_i(z)))`; the prior is :math:`p(z) = \mathcal N(0, I)`.
Train it with :func:`aigc_lib.losses.vae_loss`; score it with
:func:`aigc_lib.metrics.importance_sampled_nll`. The forward pass checks shapes, not values (reading
a value would stall a GPU at every step); :meth:`VAE.reconstruct` checks its input's values.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from aigc_lib import checks


@dataclass(frozen=True)
class VAEConfig:
    """Sizes of a :class:`VAE`: ``x_dim`` pixels, ``latent_dim`` latent coordinates, and
    ``layers`` hidden layers of width ``hidden`` in the encoder and again in the decoder."""
    x_dim: int = 64
    latent_dim: int = 8
    hidden: int = 256
    layers: int = 2

    def __post_init__(self) -> None:
        for name in ("x_dim", "latent_dim", "hidden", "layers"):
            checks.positive_number(name, getattr(self, name), integer=True)


def _mlp(sizes: list[int]) -> nn.Sequential:
    """Linear layers with SiLU between them (none after the last)."""
    parts: list[nn.Module] = []
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
        parts.append(nn.Linear(a, b))
        if i < len(sizes) - 2:
            parts.append(nn.SiLU())
    return nn.Sequential(*parts)


def reparameterize(mu: torch.Tensor, logvar: torch.Tensor,
                   eps: torch.Tensor | None = None,
                   generator: torch.Generator | None = None) -> torch.Tensor:
    r"""A draw from :math:`\mathcal N(\mu, \operatorname{diag}\sigma^2)` written as a
    differentiable function of its parameters (chapter 3):

    .. math:: z = \mu + \sigma \odot \varepsilon, \qquad \sigma = e^{\frac12\log\sigma^2},
              \quad \varepsilon \sim \mathcal N(0, I),

    so :math:`\partial z/\partial\mu = 1` and :math:`\partial z/\partial\sigma = \varepsilon`.
    ``eps`` (same shape as ``mu``) fixes the noise; otherwise it is drawn with ``generator``.
    """
    checks.tensor("mu", mu, floating=True, finite=False)
    checks.tensor("logvar", logvar, floating=True, finite=False)
    checks.same_shape("mu", mu, "logvar", logvar)
    if eps is None:
        eps = torch.randn(mu.shape, generator=generator, device=mu.device, dtype=mu.dtype)
    else:
        checks.tensor("eps", eps, floating=True, finite=False)
        checks.same_shape("mu", mu, "eps", eps)
    return mu + torch.exp(0.5 * logvar) * eps


class VAE(nn.Module):
    r"""MLP VAE: ``encode`` gives :math:`(\mu, \log\sigma^2)`, ``decode`` gives pixel logits.

    ``forward(x)`` returns ``(logits, mu, logvar)`` for one reparameterised draw
    :math:`z \sim q(z\mid x)`, the arguments :func:`aigc_lib.losses.vae_loss` needs.
    """

    def __init__(self, config: VAEConfig | None = None):
        super().__init__()
        if config is None:
            config = VAEConfig()
        if not isinstance(config, VAEConfig):
            raise TypeError(f"config must be a VAEConfig, got {type(config).__name__}")
        self.config = config
        widths = [config.hidden] * config.layers
        self.encoder = _mlp([config.x_dim, *widths, 2 * config.latent_dim])
        self.decoder = _mlp([config.latent_dim, *widths, config.x_dim])

    def _check_x(self, x: torch.Tensor) -> None:
        checks.tensor("x", x, floating=True, ndim=2, finite=False)
        if x.shape[1] != self.config.x_dim:
            raise ValueError(f"x must have shape (B, {self.config.x_dim}), got {tuple(x.shape)}")

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        r"""Mean and log-variance of :math:`q(z\mid x)`, each of shape ``(B, latent_dim)``."""
        self._check_x(x)
        mu, logvar = self.encoder(x).chunk(2, dim=-1)
        return mu, logvar

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        r"""Logits :math:`\ell(z)` of :math:`p(x\mid z)`; ``z`` has shape ``(..., latent_dim)``."""
        checks.tensor("z", z, floating=True, finite=False)
        if z.ndim < 1 or z.shape[-1] != self.config.latent_dim:
            raise ValueError(f"z must have shape (..., {self.config.latent_dim}), "
                             f"got {tuple(z.shape)}")
        return self.decoder(z)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        mu, logvar = self.encode(x)
        return self.decode(reparameterize(mu, logvar)), mu, logvar

    @torch.no_grad()
    def sample(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        r"""Pixel probabilities :math:`\sigma(\ell(z))` for ``n`` draws :math:`z \sim \mathcal N(0, I)`."""
        checks.positive_number("n", n, integer=True)
        device = next(self.parameters()).device
        z = torch.randn(n, self.config.latent_dim, generator=generator, device=device)
        return torch.sigmoid(self.decode(z))

    @torch.no_grad()
    def reconstruct(self, x: torch.Tensor) -> torch.Tensor:
        r"""Pixel probabilities decoded from the posterior mean, :math:`\sigma(\ell(\mu(x)))`."""
        checks.tensor("x", x, floating=True)
        mu, _ = self.encode(x)
        return torch.sigmoid(self.decode(mu))
