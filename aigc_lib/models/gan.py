r"""A generative adversarial network: an MLP generator and an MLP discriminator (chapter 4).

The generator maps noise :math:`z \sim \mathcal N(0, I)` to a data point :math:`G(z)`; the
discriminator maps a data point to one **logit** :math:`\ell(x)`, with
:math:`D(x) = \sigma(\ell(x))` the probability it assigns to "real". The losses in
:mod:`aigc_lib.losses` (``gan_discriminator_loss``, ``gan_generator_loss``) take these logits,
and :func:`aigc_lib.training.fit_gan` trains the pair. The same two classes serve the 2-D ring of
Gaussians (``output="linear"``) and images with pixels in [0, 1] (``output="sigmoid"``).

Packing (Lin et al. 2018, PacGAN): a discriminator built with ``pack=m`` scores groups of ``m``
examples at once (their coordinates concatenated), so it can see that a batch lacks variety.
Spectral normalisation (Miyato et al. 2018): ``Discriminator(..., spectral_norm=True)`` divides
each weight matrix by its largest singular value (``torch.nn.utils.parametrizations``), and
:func:`lipschitz_bound` multiplies the layers' Lipschitz constants.

Conditional generation on class labels: :class:`ConditionalGenerator` and
:class:`ProjectionDiscriminator` (Miyato and Koyama 2018) play the game on pairs (image, one-hot
label), concatenated into one row, so :func:`aigc_lib.training.fit_gan` trains them unchanged
(:func:`with_labels` builds the real pairs). :class:`ConvGenerator` and
:class:`ConvDiscriminator` follow the DCGAN conventions (Radford et al. 2016) for square images.
"""

from __future__ import annotations

import torch
from torch import nn

from torch.nn.utils import parametrizations

from aigc_lib import checks, runtime

OUTPUTS = ("linear", "sigmoid")


def _mlp(sizes: list[int], activation: type[nn.Module] | nn.Module) -> nn.Sequential:
    """Linear layers with ``activation`` between them (none after the last)."""
    parts: list[nn.Module] = []
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
        parts.append(nn.Linear(a, b))
        if i < len(sizes) - 2:
            parts.append(activation() if isinstance(activation, type) else activation)
    return nn.Sequential(*parts)


def _spectral_norm(net: nn.Module, on: bool) -> None:
    """Spectrally normalise the weight of every linear or convolutional layer of ``net``."""
    if not isinstance(on, bool):
        raise TypeError(f"spectral_norm must be a bool, got {type(on).__name__}")
    if on:
        for layer in net.modules():
            if isinstance(layer, (nn.Linear, nn.Conv2d)):
                parametrizations.spectral_norm(layer)


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
    :math:`m\cdot D`, so ``B`` must be a multiple of ``m``. With ``spectral_norm=True`` every
    weight matrix :math:`W` is used as :math:`W/\sigma(W)`, :math:`\sigma` its largest singular
    value estimated by one power iteration per training-mode forward pass, so the network is
    (up to that estimate) 1-Lipschitz (see :func:`lipschitz_bound`)."""

    def __init__(self, data_dim: int, hidden: int = 128, layers: int = 2, pack: int = 1,
                 spectral_norm: bool = False):
        super().__init__()
        _sizes("data_dim", data_dim, hidden, layers)
        checks.positive_number("pack", pack, integer=True)
        self.data_dim, self.pack = data_dim, pack
        self.net = _mlp([pack * data_dim, *[hidden] * layers, 1], nn.LeakyReLU(0.2))
        _spectral_norm(self.net, spectral_norm)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        checks.tensor("x", x, floating=True, finite=False)   # shapes only: no value is read
        if x.ndim != 2 or x.shape[1] != self.data_dim:
            raise ValueError(f"x must have shape (B, {self.data_dim}), got {tuple(x.shape)}")
        if len(x) % self.pack:
            raise ValueError(f"x has {len(x)} rows, not a multiple of pack={self.pack}")
        return self.net(x.reshape(len(x) // self.pack, -1)).squeeze(-1)


_ACTIVATION_LIPSCHITZ = {nn.ReLU: lambda m: 1.0, nn.Identity: lambda m: 1.0,
                         nn.Tanh: lambda m: 1.0, nn.Sigmoid: lambda m: 0.25,
                         nn.LeakyReLU: lambda m: max(1.0, abs(m.negative_slope))}


@torch.no_grad()
def lipschitz_bound(net: nn.Sequential) -> float:
    r"""An upper bound on the Lipschitz constant (in the Euclidean norm) of a sequence of linear
    layers and activations (chapter 4): the product of the layers' constants,

    .. math:: \lVert f\rVert_L \le \prod_l \sigma_{\max}(W_l) \prod_a L_a ,

    with :math:`\sigma_{\max}(W)` the largest singular value of a weight matrix (computed exactly
    with ``torch.linalg.svdvals``, of the weight the layer actually uses, so of
    :math:`W/\hat\sigma(W)` under spectral normalisation) and :math:`L_a` the activations'
    constants (ReLU, Tanh 1; LeakyReLU :math:`\max(1, |a|)`; Sigmoid 1/4). Because
    :math:`\lVert f\circ g\rVert_L \le \lVert f\rVert_L\lVert g\rVert_L`, every input gradient
    satisfies :math:`\lVert\nabla_x f\rVert_2 \le` the bound; the bound is loose when the
    layers' top singular directions do not line up. Use it on ``Discriminator.net``."""
    if not isinstance(net, nn.Sequential):
        raise TypeError(f"net must be a torch.nn.Sequential, got {type(net).__name__}")
    bound = 1.0
    for layer in net:
        if isinstance(layer, nn.Linear):
            bound *= float(torch.linalg.svdvals(layer.weight.detach().double())[0])
        elif type(layer) in _ACTIVATION_LIPSCHITZ:
            bound *= _ACTIVATION_LIPSCHITZ[type(layer)](layer)
        else:
            known = ", ".join(t.__name__ for t in _ACTIVATION_LIPSCHITZ)
            raise TypeError(f"net holds a {type(layer).__name__}, whose Lipschitz constant "
                            f"lipschitz_bound does not know (Linear and {known} only)")
    return bound


def _one_hot(labels: torch.Tensor, n_classes: int, like: torch.Tensor) -> torch.Tensor:
    return nn.functional.one_hot(labels, n_classes).to(like.dtype)


def with_labels(images: torch.Tensor, labels: torch.Tensor, n_classes: int) -> torch.Tensor:
    """Rows ``[image, one_hot(label)]`` of shape ``(N, D + n_classes)``: the real examples of a
    conditional GAN (chapter 4), in the form :class:`ConditionalGenerator` produces."""
    checks.tensor("images", images, floating=True, ndim=2)
    checks.tensor("labels", labels, ndim=1)
    checks.positive_number("n_classes", n_classes, integer=True)
    if labels.dtype not in (torch.int64, torch.int32, torch.int16, torch.uint8):
        raise TypeError(f"labels must be an integer tensor, got dtype {labels.dtype}")
    if len(labels) != len(images):
        raise ValueError(f"labels must have one entry per image, got {len(labels)} labels for "
                         f"{len(images)} images")
    checks.class_indices("labels", labels, n_classes)
    return torch.cat([images, _one_hot(labels.long(), n_classes, images)], dim=1)


class ConditionalGenerator(nn.Module):
    r"""Conditional MLP generator :math:`G(z, y)` (Mirza and Osindero 2014; chapter 4): the noise
    :math:`z \in \mathbb R^{k}` and the one-hot label :math:`y` are concatenated and mapped by
    ``layers`` hidden ReLU layers to an image (``output`` as in :class:`Generator`).

    For :func:`aigc_lib.training.fit_gan`, which only draws Gaussian noise, the generator plays
    the game on pairs: its ``latent_dim`` is :math:`k + 1`, and ``forward(z)`` turns the last
    coordinate :math:`u` into a label :math:`y = \min(\lfloor C\,\Phi(u)\rfloor, C - 1)`
    (:math:`\Phi` the standard normal CDF, so :math:`y` is uniform over the :math:`C` classes)
    and returns the rows ``[G(z, y), one_hot(y)]`` (shape ``(B, data_dim + n_classes)``), the
    form of :func:`with_labels`. :meth:`sample` makes images of chosen labels."""

    def __init__(self, noise_dim: int, n_classes: int, data_dim: int, hidden: int = 128,
                 layers: int = 2, output: str = "sigmoid"):
        super().__init__()
        _sizes("noise_dim", noise_dim, hidden, layers)
        checks.positive_number("n_classes", n_classes, integer=True)
        checks.positive_number("data_dim", data_dim, integer=True)
        if output not in OUTPUTS:
            raise ValueError(f"output must be one of {OUTPUTS}, got {output!r}")
        self.noise_dim, self.n_classes, self.data_dim = noise_dim, n_classes, data_dim
        self.latent_dim, self.output = noise_dim + 1, output
        self.net = _mlp([noise_dim + n_classes, *[hidden] * layers, data_dim], nn.ReLU)

    def generate(self, noise: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Images ``(B, data_dim)`` for noise ``(B, noise_dim)`` and integer labels ``(B,)``."""
        checks.tensor("noise", noise, floating=True, finite=False, ndim=2)
        checks.tensor("labels", labels, ndim=1)
        if labels.dtype != torch.int64:
            raise TypeError(f"labels must be an int64 tensor, got dtype {labels.dtype}")
        if noise.shape[1] != self.noise_dim or labels.shape != (len(noise),):
            raise ValueError(f"noise must be (B, {self.noise_dim}) and labels (B,), got "
                             f"{tuple(noise.shape)} and {tuple(labels.shape)}")
        x = self.net(torch.cat([noise, _one_hot(labels, self.n_classes, noise)], dim=1))
        return torch.sigmoid(x) if self.output == "sigmoid" else x

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        checks.tensor("z", z, floating=True, finite=False)
        if z.ndim != 2 or z.shape[1] != self.latent_dim:
            raise ValueError(f"z must have shape (B, {self.latent_dim}), got {tuple(z.shape)}")
        uniform = 0.5 * (1 + torch.erf(z[:, -1] / 2 ** 0.5))
        labels = (uniform * self.n_classes).long().clamp(0, self.n_classes - 1)
        images = self.generate(z[:, :-1], labels)
        return torch.cat([images, _one_hot(labels, self.n_classes, images)], dim=1)

    @torch.no_grad()
    def sample(self, labels: torch.Tensor, generator: torch.Generator | None = None
               ) -> torch.Tensor:
        """Images ``(len(labels), data_dim)`` of the given integer ``labels``, without
        gradients; ``generator`` (a CPU ``torch.Generator``) fixes the noise."""
        checks.tensor("labels", labels, ndim=1)
        if labels.dtype != torch.int64 or len(labels) == 0:
            raise TypeError(f"labels must be a non-empty int64 tensor, got dtype {labels.dtype} "
                            f"and {len(labels)} entries")
        checks.class_indices("labels", labels, self.n_classes)
        device = next(self.parameters()).device
        noise = torch.randn(len(labels), self.noise_dim, generator=generator).to(device)
        return self.generate(noise, labels.to(device))


class ProjectionDiscriminator(nn.Module):
    r"""Projection discriminator (Miyato and Koyama 2018; chapter 4) on rows
    ``[x, one_hot(y)]``: an MLP :math:`\phi` (``layers`` LeakyReLU(0.2) layers of width
    ``hidden``) embeds the image, and the logit is

    .. math:: \ell(x, y) = w^\top\phi(x) + b + e_y^\top\phi(x),

    with a learnt embedding :math:`e_y` per class. The form follows the optimal
    discriminator: :math:`\ell^* = \log\frac{p_r(x)}{p_g(x)} + \log\frac{p_r(y\mid x)}{p_g(y
    \mid x)}`, and when both conditionals are softmax models on :math:`\phi(x)` the second term
    is an inner product of a class vector with :math:`\phi(x)` (plus a constant per class).
    ``spectral_norm`` as in :class:`Discriminator`. Output ``(B,)``."""

    def __init__(self, data_dim: int, n_classes: int, hidden: int = 128, layers: int = 2,
                 spectral_norm: bool = False):
        super().__init__()
        _sizes("data_dim", data_dim, hidden, layers)
        checks.positive_number("n_classes", n_classes, integer=True)
        if layers == 0:
            raise ValueError("layers must be >= 1 (the projection needs features phi(x))")
        self.data_dim, self.n_classes = data_dim, n_classes
        self.features = nn.Sequential(_mlp([data_dim, *[hidden] * layers], nn.LeakyReLU(0.2)),
                                      nn.LeakyReLU(0.2))
        self.out = nn.Linear(hidden, 1)
        self.embed = nn.Linear(n_classes, hidden, bias=False)
        for part in (self.features, self.out, self.embed):
            _spectral_norm(part, spectral_norm)

    def forward(self, xy: torch.Tensor) -> torch.Tensor:
        checks.tensor("xy", xy, floating=True, finite=False)
        width = self.data_dim + self.n_classes
        if xy.ndim != 2 or xy.shape[1] != width:
            raise ValueError(f"xy must have shape (B, {width}): images and one-hot labels "
                             f"(see with_labels), got {tuple(xy.shape)}")
        h = self.features(xy[:, :self.data_dim])
        return self.out(h).squeeze(-1) + (self.embed(xy[:, self.data_dim:]) * h).sum(dim=1)


def _side(side: int) -> int:
    checks.positive_number("side", side, integer=True)
    if side % 4:
        raise ValueError(f"side must be a multiple of 4 (two stride-2 layers), got {side}")
    return side


class ConvGenerator(nn.Module):
    r"""DCGAN-style generator (Radford et al. 2016; chapter 4) for ``side``×``side`` images,
    flattened: a linear projection of :math:`z` to ``2·channels`` maps of size side/4, then two
    stride-2 transposed convolutions (kernel 4) with batch normalisation and ReLU in between and
    a sigmoid at the end; no pooling. Output ``(B, side²)`` in [0, 1]. :meth:`sample` uses the
    batch-norm running statistics (eval mode) and restores the previous mode."""

    def __init__(self, latent_dim: int, side: int, channels: int = 64):
        super().__init__()
        checks.positive_number("latent_dim", latent_dim, integer=True)
        checks.positive_number("channels", channels, integer=True)
        self.latent_dim, self.side, self.channels = latent_dim, _side(side), channels
        self.data_dim = side * side
        self.project = nn.Linear(latent_dim, 2 * channels * (side // 4) ** 2)
        self.net = nn.Sequential(
            nn.BatchNorm2d(2 * channels), nn.ReLU(),
            nn.ConvTranspose2d(2 * channels, channels, 4, stride=2, padding=1),
            nn.BatchNorm2d(channels), nn.ReLU(),
            nn.ConvTranspose2d(channels, 1, 4, stride=2, padding=1))

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        checks.tensor("z", z, floating=True, finite=False)
        if z.ndim != 2 or z.shape[1] != self.latent_dim:
            raise ValueError(f"z must have shape (B, {self.latent_dim}), got {tuple(z.shape)}")
        maps = self.project(z).view(len(z), 2 * self.channels, self.side // 4, self.side // 4)
        return torch.sigmoid(self.net(maps)).flatten(1)

    @torch.no_grad()
    def sample(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """:math:`n` images from :math:`z \\sim \\mathcal N(0, I)` in eval mode."""
        checks.positive_number("n", n, integer=True)
        with runtime.eval_mode(self):
            device = next(self.parameters()).device
            return self(torch.randn(n, self.latent_dim, generator=generator).to(device))


class ConvDiscriminator(nn.Module):
    r"""DCGAN-style discriminator (chapter 4) on flattened ``side``×``side`` images: two
    stride-2 convolutions (kernel 4) with LeakyReLU(0.2), then a linear layer to one logit; no
    pooling, and no batch normalisation (unlike DCGAN), because the R1 and WGAN-GP penalties
    need each row's gradient on its own. Output ``(B,)``."""

    def __init__(self, side: int, channels: int = 64, spectral_norm: bool = False):
        super().__init__()
        checks.positive_number("channels", channels, integer=True)
        self.side, self.data_dim = _side(side), side * side
        self.net = nn.Sequential(
            nn.Conv2d(1, channels, 4, stride=2, padding=1), nn.LeakyReLU(0.2),
            nn.Conv2d(channels, 2 * channels, 4, stride=2, padding=1), nn.LeakyReLU(0.2),
            nn.Flatten(), nn.Linear(2 * channels * (side // 4) ** 2, 1))
        _spectral_norm(self.net, spectral_norm)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        checks.tensor("x", x, floating=True, finite=False)
        if x.ndim != 2 or x.shape[1] != self.data_dim:
            raise ValueError(f"x must have shape (B, {self.data_dim}), got {tuple(x.shape)}")
        return self.net(x.view(len(x), 1, self.side, self.side)).squeeze(-1)
