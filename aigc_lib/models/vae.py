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

from aigc_lib import checks, losses, runtime


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


def _one_hot(name: str, labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Integer class labels → one-hot floats; names ``name`` when a label is out of range."""
    checks.class_indices(name, labels, num_classes, on_device=True)   # every step: no wait
    return nn.functional.one_hot(labels, num_classes).float()


class ConditionalVAE(VAE):
    r"""A VAE conditioned on a class label :math:`y` (chapter 3; Sohn et al. 2015).

    Encoder :math:`q(z\mid x, y)` and decoder :math:`p(x\mid z, y)` both read the one-hot label
    next to their usual input; the prior stays :math:`p(z) = \mathcal N(0, I)` for every class.
    The conditional ELBO

    .. math:: \log p(x\mid y) \ge \mathbb E_{q(z\mid x, y)}\big[\log p(x\mid z, y)\big]
              - \mathrm{KL}\big(q(z\mid x, y)\,\|\,p(z)\big)

    is the VAE's with every distribution conditioned on :math:`y`, so
    :func:`aigc_lib.losses.vae_loss` trains it unchanged. Labels are integers in
    ``[0, num_classes)``; ``forward(x, y)`` returns ``(logits, mu, logvar)``.
    """

    def __init__(self, config: VAEConfig | None = None, num_classes: int = 10):
        super().__init__(config)
        self.num_classes = checks.positive_number("num_classes", num_classes, integer=True)
        c = self.config
        widths = [c.hidden] * c.layers
        self.encoder = _mlp([c.x_dim + num_classes, *widths, 2 * c.latent_dim])
        self.decoder = _mlp([c.latent_dim + num_classes, *widths, c.x_dim])

    def _labels(self, y: torch.Tensor, batch_shape: torch.Size) -> torch.Tensor:
        if not isinstance(y, torch.Tensor) or y.shape != batch_shape:
            shape = tuple(y.shape) if isinstance(y, torch.Tensor) else type(y).__name__
            raise ValueError(f"y must be a tensor of integer labels of shape "
                             f"{tuple(batch_shape)}, got {shape}")
        return _one_hot("y", y, self.num_classes)

    def encode(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        r"""Mean and log-variance of :math:`q(z\mid x, y)`."""
        self._check_x(x)
        return self._encode(x, self._labels(y, x.shape[:1]))

    def decode(self, z: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        r"""Logits of :math:`p(x\mid z, y)`; ``y`` has shape ``z.shape[:-1]``."""
        checks.tensor("z", z, floating=True, finite=False)
        if z.ndim < 1 or z.shape[-1] != self.config.latent_dim:
            raise ValueError(f"z must have shape (..., {self.config.latent_dim}), "
                             f"got {tuple(z.shape)}")
        return self.decoder(torch.cat([z, self._labels(y, z.shape[:-1])], -1))

    def _encode(self, x: torch.Tensor, one_hot: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mu, logvar = self.encoder(torch.cat([x, one_hot], -1)).chunk(2, -1)
        return mu, logvar

    def forward(self, x: torch.Tensor, y: torch.Tensor
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        self._check_x(x)
        one_hot = self._labels(y, x.shape[:1])       # checked and encoded once per step
        mu, logvar = self._encode(x, one_hot)
        z = reparameterize(mu, logvar)
        return self.decoder(torch.cat([z, one_hot], -1)), mu, logvar

    @torch.no_grad()
    def sample(self, labels: torch.Tensor,
               generator: torch.Generator | None = None) -> torch.Tensor:
        r"""Pixel probabilities :math:`\sigma(\ell(z, y))`, one image per entry of ``labels``,
        with :math:`z \sim \mathcal N(0, I)`."""
        checks.tensor("labels", labels, ndim=1)
        device = next(self.parameters()).device
        z = torch.randn(len(labels), self.config.latent_dim, generator=generator, device=device)
        return torch.sigmoid(self.decode(z, labels.to(device)))

    @torch.no_grad()
    def reconstruct(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        r"""Pixel probabilities decoded from the posterior mean,
        :math:`\sigma(\ell(\mu(x, y), y))`."""
        mu, _ = self.encode(x, y)
        return torch.sigmoid(self.decode(mu, y))


class MaskedLinear(nn.Linear):
    r"""A linear layer whose weight is multiplied by a fixed 0/1 ``mask`` of the same shape,
    :math:`y = (W \odot M)\,x + b` (MADE, Germain et al. 2015; chapter 3): a zero in
    ``mask[i, j]`` cuts the path from input ``j`` to output ``i``."""

    def __init__(self, mask: torch.Tensor, bias: bool = True):
        checks.tensor("mask", mask, ndim=2)
        if not bool(((mask == 0) | (mask == 1)).all()):
            raise ValueError("mask must hold only zeros and ones")
        super().__init__(mask.shape[1], mask.shape[0], bias=bias)
        self.register_buffer("mask", mask.to(self.weight.dtype))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return nn.functional.linear(x, self.weight * self.mask, self.bias)


def made_masks(x_dim: int, hidden: int, layers: int) -> list[torch.Tensor]:
    r"""Masks of a MADE with ``layers`` hidden layers of width ``hidden`` over ``x_dim`` inputs
    in raster order (Germain et al. 2015). Input :math:`i` has degree :math:`i` (1-based);
    hidden unit :math:`k` has degree :math:`m(k) = (k \bmod (D-1)) + 1`. A hidden unit sees
    inputs of degree :math:`\le m(k)` and units of degree :math:`\le m(k)` below it; output
    :math:`i` sees units of degree :math:`< i`, so logit :math:`i` depends on :math:`x_{<i}`
    only."""
    for name, value in (("x_dim", x_dim), ("hidden", hidden), ("layers", layers)):
        checks.positive_number(name, value, integer=True)
    if x_dim < 2:
        raise ValueError(f"x_dim must be >= 2 for an autoregressive decoder, got {x_dim}")
    inputs = torch.arange(1, x_dim + 1)
    units = torch.arange(hidden) % (x_dim - 1) + 1
    masks = [(units[:, None] >= inputs[None, :]).float()]
    masks += [(units[:, None] >= units[None, :]).float() for _ in range(layers - 1)]
    masks.append((inputs[:, None] > units[None, :]).float())
    return masks


class AutoregressiveDecoder(nn.Module):
    r"""A MADE decoder conditioned on :math:`z` (chapter 3): logit :math:`i` is a function of
    :math:`z` and of the pixels before it, so

    .. math:: p(x\mid z) = \prod_{i=1}^D \operatorname{Bernoulli}\big(x_i;
              \sigma(\ell_i(x_{<i}, z))\big)

    can model dependencies between pixels without help from :math:`z`: the kind of decoder that
    lets a VAE ignore its latent code (posterior collapse). :math:`z` enters the first hidden
    layer and the output through unmasked linear maps."""

    def __init__(self, x_dim: int, latent_dim: int, hidden: int, layers: int):
        super().__init__()
        masks = made_masks(x_dim, hidden, layers)
        self.masked = nn.ModuleList(MaskedLinear(m) for m in masks)
        self.from_z = nn.Linear(latent_dim, hidden)
        self.z_to_out = nn.Linear(latent_dim, x_dim, bias=False)

    def forward(self, z: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        h = nn.functional.silu(self.masked[0](x) + self.from_z(z))
        for layer in self.masked[1:-1]:
            h = nn.functional.silu(layer(h))
        return self.masked[-1](h) + self.z_to_out(z)


class AutoregressiveVAE(VAE):
    r"""The VAE of this module with an :class:`AutoregressiveDecoder` of the same width and depth
    in place of the MLP decoder (chapter 3, posterior collapse). ``decode(z, x)`` needs the
    image whose pixels it predicts (teacher forcing); ``forward(x)`` returns
    ``(logits, mu, logvar)`` as :class:`VAE` does, so :func:`aigc_lib.losses.vae_loss` trains it.
    """

    autoregressive = True

    def __init__(self, config: VAEConfig | None = None):
        super().__init__(config)
        c = self.config
        self.decoder = AutoregressiveDecoder(c.x_dim, c.latent_dim, c.hidden, c.layers)

    def decode(self, z: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        r"""Logits :math:`\ell_i(x_{<i}, z)`; ``x`` has shape ``z.shape[:-1] + (x_dim,)``."""
        checks.tensor("z", z, floating=True, finite=False)
        checks.tensor("x", x, floating=True, finite=False)
        if z.ndim < 1 or z.shape[-1] != self.config.latent_dim:
            raise ValueError(f"z must have shape (..., {self.config.latent_dim}), "
                             f"got {tuple(z.shape)}")
        if x.shape != (*z.shape[:-1], self.config.x_dim):
            raise ValueError(f"x must have shape {(*z.shape[:-1], self.config.x_dim)} to match "
                             f"z, got {tuple(x.shape)}")
        return self.decoder(z, x)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        mu, logvar = self.encode(x)
        return self.decode(reparameterize(mu, logvar), x), mu, logvar

    @torch.no_grad()
    def sample(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        r"""``n`` binary images drawn pixel by pixel from :math:`p(x\mid z)`,
        :math:`z \sim \mathcal N(0, I)` (an autoregressive decoder has no closed-form mean
        image, so unlike :meth:`VAE.sample` this returns draws, not probabilities)."""
        checks.positive_number("n", n, integer=True)
        device = next(self.parameters()).device
        z = torch.randn(n, self.config.latent_dim, generator=generator, device=device)
        x = torch.zeros(n, self.config.x_dim, device=device)
        for i in range(self.config.x_dim):
            p = torch.sigmoid(self.decode(z, x)[:, i])
            x[:, i] = torch.bernoulli(p, generator=generator)
        return x

    @torch.no_grad()
    def reconstruct(self, x: torch.Tensor) -> torch.Tensor:
        r"""The decoder's one-step-ahead pixel probabilities
        :math:`\sigma(\ell_i(x_{<i}, \mu(x)))` at the posterior mean."""
        mu, _ = self.encode(x)
        return torch.sigmoid(self.decode(mu, x))


def log_likelihood(model: VAE, x: torch.Tensor, z: torch.Tensor,
                   y: torch.Tensor | None = None) -> torch.Tensor:
    r"""Decoder log-likelihood :math:`\log p(x\mid z[, y]) = \sum_i \big[x_i\log\sigma(\ell_i)
    + (1 - x_i)\log(1 - \sigma(\ell_i))\big]` of images ``x`` ``(B, D)`` for draws ``z``
    ``(..., B, d)``, one value per draw ``(..., B)`` (chapter 3). Works for :class:`VAE`,
    :class:`ConditionalVAE` (``y`` required: the labels of ``x``) and
    :class:`AutoregressiveVAE` (its logits also read ``x``)."""
    lead = z.shape[:-1]
    if isinstance(model, ConditionalVAE):
        if y is None:
            raise ValueError("y (the labels of x) is required for a ConditionalVAE")
        logits = model.decode(z, y.expand(lead))
    elif y is not None:
        raise ValueError(f"y must be None for an unconditional {type(model).__name__}")
    elif getattr(model, "autoregressive", False):
        logits = model.decode(z, x.expand(*lead, x.shape[-1]))
    else:
        logits = model.decode(z)
    return -nn.functional.binary_cross_entropy_with_logits(
        logits, x.expand_as(logits), reduction="none").sum(-1)


def encode(model: VAE, x: torch.Tensor,
           y: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """``model.encode(x)``, or ``model.encode(x, y)`` for a :class:`ConditionalVAE`."""
    if isinstance(model, ConditionalVAE):
        if y is None:
            raise ValueError("y (the labels of x) is required for a ConditionalVAE")
        return model.encode(x, y)
    if y is not None:
        raise ValueError(f"y must be None for an unconditional {type(model).__name__}")
    return model.encode(x)


def optimise_posterior(model: VAE, x: torch.Tensor, y: torch.Tensor | None = None, *,
                       steps: int = 300, lr: float = 0.05, samples: int = 16,
                       generator: torch.Generator | None = None
                       ) -> tuple[torch.Tensor, torch.Tensor]:
    r"""A Gaussian :math:`q_x = \mathcal N(\mu_x, \operatorname{diag}\sigma_x^2)` fitted to each
    image on its own, with the decoder fixed (chapter 3; Cremer et al. 2018): Adam on
    :math:`(\mu_x, \log\sigma_x^2)`, started at the encoder's output, maximises

    .. math:: \mathrm{ELBO}(x; q_x) = \mathbb E_{q_x}[\log p(x\mid z)]
              - \mathrm{KL}(q_x\,\|\,\mathcal N(0, I)),

    the expectation estimated with ``samples`` reparameterised draws per step, the KL in closed
    form. Images do not interact (the loss is a sum over them and Adam is per-coordinate). The
    difference between this ELBO and the encoder's is the *amortisation gap*. Returns
    ``(mu, logvar)``, each ``(B, latent_dim)``, detached."""
    if not isinstance(model, VAE):
        raise TypeError(f"model must be an aigc_lib VAE, got {type(model).__name__}")
    checks.tensor("x", x, floating=True, ndim=2)
    for name, value in (("steps", steps), ("samples", samples)):
        checks.positive_number(name, value, integer=True)
    checks.positive_number("lr", lr)
    with runtime.eval_mode(model):
        with torch.no_grad():
            mu0, logvar0 = encode(model, x, y)
        mu, logvar = mu0.clone().requires_grad_(), logvar0.clone().requires_grad_()
        opt = torch.optim.Adam([mu, logvar], lr=lr)
        for _ in range(steps):
            eps = torch.randn((samples, *mu.shape), generator=generator, device=mu.device,
                              dtype=mu.dtype)
            z = mu + torch.exp(0.5 * logvar) * eps
            neg_elbo = (-log_likelihood(model, x, z, y).mean(0)
                        + losses.kl_diag_gaussians(mu, logvar)).sum()
            mu.grad, logvar.grad = torch.autograd.grad(neg_elbo, [mu, logvar])
            opt.step()
    return mu.detach(), logvar.detach()


def slerp(z_a: torch.Tensor, z_b: torch.Tensor, t: torch.Tensor | float) -> torch.Tensor:
    r"""Spherical interpolation between codes ``z_a`` and ``z_b`` (last dimension; chapters 3
    and 4): with :math:`\cos\Omega = \hat z_a\cdot\hat z_b`,

    .. math:: \operatorname{slerp}(z_a, z_b; t) = \frac{\sin((1-t)\Omega)}{\sin\Omega}\,z_a
              + \frac{\sin(t\Omega)}{\sin\Omega}\,z_b ,

    which moves along the great circle at constant angular speed; for codes of equal norm the
    norm stays constant along the path. Where :math:`\sin\Omega` is (nearly) 0 (parallel or
    opposite codes) it falls back to the straight line. ``t`` is a number or a tensor that
    broadcasts against ``z_a[..., :1]`` (e.g. shape ``(T, 1)`` for a ``(T, d)`` path between two
    ``(d,)`` codes)."""
    checks.tensor("z_a", z_a, floating=True)
    checks.tensor("z_b", z_b, floating=True)
    checks.same_shape("z_a", z_a, "z_b", z_b)
    if z_a.ndim < 1 or z_a.shape[-1] < 2:
        raise ValueError(f"z_a must have shape (..., d) with d >= 2, got {tuple(z_a.shape)}")
    t = torch.as_tensor(t, dtype=z_a.dtype, device=z_a.device)
    norms = z_a.norm(dim=-1, keepdim=True) * z_b.norm(dim=-1, keepdim=True)
    if bool((norms == 0).any()):
        raise ValueError("z_a and z_b must be non-zero (a zero code has no direction)")
    cos = ((z_a * z_b).sum(-1, keepdim=True) / norms).clamp(-1.0, 1.0)
    omega = torch.arccos(cos)
    sin = torch.sin(omega)
    straight = sin < 1e-6
    safe = torch.where(straight, torch.ones_like(sin), sin)
    wa = torch.where(straight, 1 - t, torch.sin((1 - t) * omega) / safe)
    wb = torch.where(straight, t, torch.sin(t * omega) / safe)
    return wa * z_a + wb * z_b
