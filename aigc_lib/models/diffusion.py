r"""Diffusion models and flow matching (chapter 5).

A diffusion model is a hierarchical VAE whose encoder is fixed: the forward process
:math:`q(x_t \mid x_{t-1}) = \mathcal N(\sqrt{1-\beta_t}\,x_{t-1}, \beta_t I)` adds a little
Gaussian noise at each of :math:`T` steps, and a network learns the reverse steps
:math:`p_\theta(x_{t-1}\mid x_t)`. Flow matching learns instead the velocity of a straight path
from data to noise and integrates it as an ordinary differential equation.

Conventions of this module:

- data :math:`x_0` lie in :math:`[-1, 1]`; integer steps :math:`t = 0, \dots, T`, with
  :math:`t = 0` the data. Per-step coefficients are tensors of length :math:`T + 1` whose entry 0
  belongs to the data (:math:`\beta_0 = 0`, :math:`\bar\alpha_0 = 1`);
- a network sees a continuous time in :math:`[0, 1]` (:math:`t/T` for the diffusion model, the
  interpolation time :math:`s` for the flow model; 0 is the data, 1 the noise) and, when it is
  class-conditional, a label in :math:`\{0, \dots, C-1\}` or the *null* label :math:`C`
  ("no class"), which classifier-free guidance needs;
- "nfe" is the number of network evaluations a sampler makes per image (guidance doubles the
  work of each: the conditional and unconditional predictions are one batched pass).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from aigc_lib import checks, losses

SCHEDULES = ("linear", "cosine")
PARAMETERISATIONS = ("eps", "x0", "v")
TARGETS = (*PARAMETERISATIONS, "score")
VARIANCES = ("beta", "posterior")
FLOW_METHODS = ("euler", "heun")


# --- Noise schedules --------------------------------------------------------------------------

@dataclass(frozen=True, eq=False)
class NoiseSchedule:
    r"""The variances :math:`\beta_t` of the forward steps and what follows from them, all
    float64 tensors of length :math:`T + 1` (entry 0 is the data: :math:`\beta_0 = 0`):
    :math:`\alpha_t = 1 - \beta_t`, :math:`\bar\alpha_t = \prod_{s \le t}\alpha_s` and the
    signal-to-noise ratio :math:`\mathrm{SNR}(t) = \bar\alpha_t/(1 - \bar\alpha_t)`.
    Make one with :func:`noise_schedule`."""
    name: str
    betas: torch.Tensor

    def __post_init__(self) -> None:
        checks.tensor("betas", self.betas, floating=True, ndim=1)
        if len(self.betas) < 2 or self.betas[0] != 0:
            raise ValueError("betas must have length T + 1 >= 2 with betas[0] = 0 (the data)")
        if bool(((self.betas[1:] <= 0) | (self.betas[1:] >= 1)).any()):
            raise ValueError("betas[1:] must lie in (0, 1)")
        object.__setattr__(self, "betas", self.betas.double().cpu())
        object.__setattr__(self, "alpha_bars", torch.cumprod(1 - self.betas, 0))

    @property
    def T(self) -> int:
        """The number of diffusion steps."""
        return len(self.betas) - 1

    @property
    def alphas(self) -> torch.Tensor:
        return 1 - self.betas

    @property
    def snr(self) -> torch.Tensor:
        r""":math:`\bar\alpha_t/(1-\bar\alpha_t)`, infinite at :math:`t = 0`."""
        return self.alpha_bars / (1 - self.alpha_bars)


def noise_schedule(name: str = "cosine", T: int = 1000, offset: float = 0.008,
                   max_beta: float = 0.999, first_std: float | None = None) -> NoiseSchedule:
    r"""A noise schedule with ``T`` steps.

    - ``"linear"`` (Ho et al. 2020): :math:`\beta_t` rises linearly from :math:`10^{-4}k` to
      :math:`0.02k`, :math:`k = 1000/T` (so other ``T`` destroy the signal as fast as
      :math:`T = 1000` does, as in Nichol and Dhariwal's code);
    - ``"cosine"`` (Nichol and Dhariwal 2021): :math:`\bar\alpha_t = f(t)/f(0)` with
      :math:`f(t) = \cos^2\!\big(\tfrac{t/T + s}{1 + s}\cdot\tfrac\pi2\big)`, ``offset``
      :math:`s` keeping the first steps' noise from vanishing, and
      :math:`\beta_t = \min(1 - \bar\alpha_t/\bar\alpha_{t-1},\ \text{max\_beta})`.
      With ``first_std`` the offset is instead found by bisection so that the first step's
      noise is :math:`\sqrt{\beta_1}` = ``first_std`` (:math:`\beta_1` grows with :math:`s`);
      Nichol and Dhariwal set it near the spacing of the pixel values.
    """
    if name not in SCHEDULES:
        raise ValueError(f"name must be one of {SCHEDULES}, got {name!r}")
    checks.positive_number("T", T, integer=True)
    checks.positive_number("offset", offset)
    checks.positive_number("max_beta", max_beta)
    if max_beta >= 1:
        raise ValueError(f"max_beta must be < 1, got {max_beta}")
    if first_std is not None:
        if name != "cosine":
            raise ValueError("first_std applies to the cosine schedule only")
        return _cosine_with_first_std(T, first_std, max_beta)
    if name == "linear":
        scale = 1000 / T
        if 0.02 * scale >= 1:
            raise ValueError(f"T={T} is too small for the linear schedule (beta_T = "
                             f"{0.02 * scale:.3g} >= 1); use T >= 21 or the cosine schedule")
        betas = torch.linspace(1e-4 * scale, 0.02 * scale, T, dtype=torch.float64)
    else:
        u = torch.arange(T + 1, dtype=torch.float64) / T
        f = torch.cos((u + offset) / (1 + offset) * math.pi / 2) ** 2
        alpha_bar = f / f[0]
        betas = (1 - alpha_bar[1:] / alpha_bar[:-1]).clamp(max=max_beta)
    return NoiseSchedule(name, torch.cat([torch.zeros(1, dtype=torch.float64), betas]))


def _cosine_with_first_std(T: int, first_std: float, max_beta: float) -> NoiseSchedule:
    checks.positive_number("first_std", first_std)
    low, high = 1e-6, 1e3
    reachable = [noise_schedule("cosine", T, s, max_beta).betas[1].sqrt().item()
                 for s in (low, high)]
    if not reachable[0] < first_std < reachable[1]:
        raise ValueError(f"first_std must lie in ({reachable[0]:.3g}, {reachable[1]:.3g}) "
                         f"for T={T}, got {first_std}")
    for _ in range(100):                      # bisection on a log scale
        mid = math.sqrt(low * high)
        if noise_schedule("cosine", T, mid, max_beta).betas[1].sqrt() < first_std:
            low = mid
        else:
            high = mid
    return noise_schedule("cosine", T, math.sqrt(low * high), max_beta)


def _schedule(schedule: object) -> NoiseSchedule:
    if not isinstance(schedule, NoiseSchedule):
        raise TypeError(f"schedule must be a NoiseSchedule, got {type(schedule).__name__}")
    return schedule


def _steps(t: int | torch.Tensor, T: int, batch: int, low: int = 0) -> torch.Tensor:
    """``t`` as a long tensor of shape ``(batch,)``, checked to lie in ``[low, T]``."""
    if isinstance(t, bool):
        raise TypeError("t must be an int or an integer tensor, got bool")
    if isinstance(t, int):
        t = torch.full((batch,), t, dtype=torch.long)
    checks.tensor("t", t)
    if t.is_floating_point() or t.dtype == torch.bool:
        raise TypeError(f"t must hold integer steps, got dtype {t.dtype}")
    if t.ndim == 0:
        t = t.expand(batch)
    if t.shape != (batch,):
        raise ValueError(f"t must be an int or have shape ({batch},) (one step per example), "
                         f"got {tuple(t.shape)}")
    checks.require(((t >= low) & (t <= T)).all(), lambda: ValueError(
        f"t must lie in [{low}, {T}], got values in [{int(t.min())}, {int(t.max())}]"))
    return t.long()


def _at(values: torch.Tensor, t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """``values[t]`` shaped to broadcast against ``like`` (batch first)."""
    picked = values.to(like.device)[t.to(like.device)].to(like.dtype)
    return picked.view(-1, *([1] * (like.ndim - 1)))


def _batch(name: str, x: torch.Tensor) -> torch.Tensor:
    checks.tensor(name, x, floating=True, finite=False)
    if x.ndim < 2:
        raise ValueError(f"{name} must have a batch dimension and data dimensions, "
                         f"got shape {tuple(x.shape)}")
    return x


# --- The forward process and its posterior ------------------------------------------------------

def q_step(schedule: NoiseSchedule, x_prev: torch.Tensor, t: int | torch.Tensor,
           noise: torch.Tensor) -> torch.Tensor:
    r"""One forward step :math:`x_t = \sqrt{1-\beta_t}\,x_{t-1} + \sqrt{\beta_t}\,\varepsilon`,
    a draw from :math:`q(x_t \mid x_{t-1})`; ``t`` in :math:`[1, T]`."""
    schedule, x_prev = _schedule(schedule), _batch("x_prev", x_prev)
    checks.same_shape("x_prev", x_prev, "noise", noise)
    t = _steps(t, schedule.T, len(x_prev), low=1)
    beta = _at(schedule.betas, t, x_prev)
    return (1 - beta).sqrt() * x_prev + beta.sqrt() * noise


def q_sample(schedule: NoiseSchedule, x0: torch.Tensor, t: int | torch.Tensor,
             noise: torch.Tensor) -> torch.Tensor:
    r"""A draw from :math:`q(x_t \mid x_0) = \mathcal N(\sqrt{\bar\alpha_t}\,x_0,
    (1-\bar\alpha_t) I)` in one step, :math:`x_t = \sqrt{\bar\alpha_t}\,x_0 +
    \sqrt{1-\bar\alpha_t}\,\varepsilon` (chapter 5 derives it from :func:`q_step` by induction:
    a sum of independent Gaussians is Gaussian, and the variances add up)."""
    schedule, x0 = _schedule(schedule), _batch("x0", x0)
    checks.same_shape("x0", x0, "noise", noise)
    t = _steps(t, schedule.T, len(x0))
    alpha_bar = _at(schedule.alpha_bars, t, x0)
    return alpha_bar.sqrt() * x0 + (1 - alpha_bar).sqrt() * noise


def q_posterior(schedule: NoiseSchedule, x0: torch.Tensor, xt: torch.Tensor,
                t: int | torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    r"""Mean and variance of :math:`q(x_{t-1} \mid x_t, x_0) = \mathcal N(\tilde\mu_t,
    \tilde\beta_t I)` for ``t`` in :math:`[1, T]` (Bayes' rule for Gaussians, chapter 5):

    .. math:: \tilde\mu_t = \frac{\sqrt{\bar\alpha_{t-1}}\,\beta_t}{1-\bar\alpha_t}\,x_0
              + \frac{\sqrt{\alpha_t}\,(1-\bar\alpha_{t-1})}{1-\bar\alpha_t}\,x_t,
              \qquad \tilde\beta_t = \frac{1-\bar\alpha_{t-1}}{1-\bar\alpha_t}\,\beta_t .

    The variance is returned with the shape of ``x0`` (it does not depend on the data)."""
    schedule, x0, xt = _schedule(schedule), _batch("x0", x0), _batch("xt", xt)
    checks.same_shape("x0", x0, "xt", xt)
    t = _steps(t, schedule.T, len(x0), low=1)
    return _posterior(schedule.alpha_bars, t, t - 1, x0, xt)


def _posterior(alpha_bars: torch.Tensor, t: torch.Tensor, s: torch.Tensor, x0: torch.Tensor,
               xt: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    r""":math:`q(x_s \mid x_t, x_0)` for any :math:`s < t` (the respaced steps of a sampler):
    the formulas of :func:`q_posterior` with :math:`\alpha = \bar\alpha_t/\bar\alpha_s`."""
    ab_t, ab_s = _at(alpha_bars, t, x0), _at(alpha_bars, s, x0)
    alpha = ab_t / ab_s
    beta = 1 - alpha
    mean = (ab_s.sqrt() * beta * x0 + alpha.sqrt() * (1 - ab_s) * xt) / (1 - ab_t)
    var = (1 - ab_s) / (1 - ab_t) * beta
    return mean, var.expand_as(x0)


# --- Parameterisations: eps, x0, v and the score ---------------------------------------------------

def convert(prediction: torch.Tensor, source: str, target: str, xt: torch.Tensor,
            schedule: NoiseSchedule, t: int | torch.Tensor) -> torch.Tensor:
    r"""Turn a network's ``prediction`` in parameterisation ``source`` into ``target``.

    With :math:`a = \sqrt{\bar\alpha_t}` and :math:`\sigma = \sqrt{1-\bar\alpha_t}` (so
    :math:`a^2 + \sigma^2 = 1`) and :math:`x_t = a x_0 + \sigma\varepsilon`:

    .. math:: \hat x_0 = \frac{x_t - \sigma\hat\varepsilon}{a}, \quad
              \hat\varepsilon = \frac{x_t - a\hat x_0}{\sigma}, \quad
              \hat v = a\hat\varepsilon - \sigma\hat x_0, \quad
              \hat x_0 = a x_t - \sigma\hat v, \quad \hat\varepsilon = \sigma x_t + a\hat v,

    and the score of :math:`q(x_t)` is :math:`\nabla\log q(x_t) \approx -\hat\varepsilon/\sigma`
    (Tweedie's formula, chapter 5). ``source`` is one of :data:`PARAMETERISATIONS`, ``target``
    one of :data:`TARGETS`; ``t`` lies in :math:`[1, T]` (at :math:`t = 0` there is no noise to
    speak of)."""
    schedule = _schedule(schedule)
    if source not in PARAMETERISATIONS:
        raise ValueError(f"source must be one of {PARAMETERISATIONS}, got {source!r}")
    if target not in TARGETS:
        raise ValueError(f"target must be one of {TARGETS}, got {target!r}")
    prediction, xt = _batch("prediction", prediction), _batch("xt", xt)
    checks.same_shape("prediction", prediction, "xt", xt)
    t = _steps(t, schedule.T, len(xt), low=1)
    alpha_bar = _at(schedule.alpha_bars, t, xt)
    return _convert(prediction, source, target, xt, alpha_bar.sqrt(), (1 - alpha_bar).sqrt())


def _convert(pred: torch.Tensor, source: str, target: str, xt: torch.Tensor, a: torch.Tensor,
             sigma: torch.Tensor) -> torch.Tensor:
    if source == target:
        return pred
    if source == "eps":
        eps, x0 = pred, (xt - sigma * pred) / a
    elif source == "x0":
        eps, x0 = (xt - a * pred) / sigma, pred
    else:
        eps, x0 = sigma * xt + a * pred, a * xt - sigma * pred
    return {"eps": eps, "x0": x0, "v": a * eps - sigma * x0, "score": -eps / sigma}[target]


def training_target(parameterisation: str, x0: torch.Tensor, noise: torch.Tensor,
                    alpha_bar: torch.Tensor) -> torch.Tensor:
    r"""What a network with ``parameterisation`` learns to output at
    :math:`x_t = \sqrt{\bar\alpha}\,x_0 + \sqrt{1-\bar\alpha}\,\varepsilon`: :math:`\varepsilon`
    (``"eps"``), :math:`x_0` (``"x0"``) or :math:`v = \sqrt{\bar\alpha}\,\varepsilon -
    \sqrt{1-\bar\alpha}\,x_0` (``"v"``, Salimans and Ho 2022). ``alpha_bar`` broadcasts
    against ``x0``."""
    if parameterisation not in PARAMETERISATIONS:
        raise ValueError(f"parameterisation must be one of {PARAMETERISATIONS}, "
                         f"got {parameterisation!r}")
    checks.same_shape("x0", x0, "noise", noise)
    if parameterisation == "eps":
        return noise
    if parameterisation == "x0":
        return x0
    return alpha_bar.sqrt() * noise - (1 - alpha_bar).sqrt() * x0


def elbo_weight(schedule: NoiseSchedule, t: int | torch.Tensor, batch: int,
                variance: str = "posterior") -> torch.Tensor:
    r"""The weight :math:`\lambda_t` that turns the squared error of an
    :math:`\varepsilon`-prediction into the ELBO term :math:`L_{t-1}` (chapter 5):

    .. math:: L_{t-1} = \mathrm{KL}\big(q(x_{t-1}\mid x_t, x_0)\,\|\,p_\theta(x_{t-1}\mid x_t)\big)
              = \frac{\beta_t^2}{2\sigma_t^2\,\alpha_t\,(1-\bar\alpha_t)}
              \,\lVert\varepsilon - \hat\varepsilon\rVert^2 + c_t ,

    where :math:`\sigma_t^2` is :math:`\tilde\beta_t` (``"posterior"``, for which :math:`c_t = 0`)
    or :math:`\beta_t` (``"beta"``). The "simple" loss sets :math:`\lambda_t = 1`. ``t`` in
    :math:`[2, T]`; returns ``(batch,)`` float64."""
    schedule = _schedule(schedule)
    if variance not in VARIANCES:
        raise ValueError(f"variance must be one of {VARIANCES}, got {variance!r}")
    t = _steps(t, schedule.T, batch, low=2)
    beta, alpha_bar = schedule.betas[t], schedule.alpha_bars[t]
    var = _reverse_variance(schedule, t, variance)
    return beta ** 2 / (2 * var * (1 - beta) * (1 - alpha_bar))


def _reverse_variance(schedule: NoiseSchedule, t: torch.Tensor, variance: str) -> torch.Tensor:
    r""":math:`\sigma_t^2` of :math:`p_\theta(x_{t-1}\mid x_t)`: :math:`\tilde\beta_t` or
    :math:`\beta_t`; at :math:`t = 1`, where :math:`\tilde\beta_1 = 0`, always :math:`\beta_1`."""
    beta, ab = schedule.betas, schedule.alpha_bars
    if variance == "beta":
        return beta[t]
    posterior = (1 - ab[(t - 1).clamp(min=0)]) / (1 - ab[t]) * beta[t]
    return torch.where(t == 1, beta[t], posterior)


# --- Denoising networks ---------------------------------------------------------------------------

def time_features(time: torch.Tensor, dim: int, scale: float = 1000.0) -> torch.Tensor:
    r"""Sinusoidal features of a continuous time (the positional encoding of the Transformer,
    applied to :math:`\tau = \text{scale}\cdot\text{time}`, as in Ho et al. 2020):
    :math:`[\sin(\tau\omega_k), \cos(\tau\omega_k)]_{k < d/2}` with
    :math:`\omega_k = 10000^{-k/(d/2)}`. ``time`` is ``(B,)``; returns ``(B, dim)``."""
    checks.tensor("time", time, floating=True, ndim=1, finite=False)
    checks.positive_number("dim", dim, integer=True)
    if dim % 2:
        raise ValueError(f"dim must be even, got {dim}")
    half = dim // 2
    freqs = torch.exp(-math.log(10000.0) * torch.arange(half, device=time.device) / half)
    angles = scale * time[:, None] * freqs.to(time.dtype)
    return torch.cat([angles.sin(), angles.cos()], dim=1)


class _Conditioning(nn.Module):
    """Time features through a small MLP, plus a learned embedding of the class label (with
    one extra row for the null label) when the network is class-conditional."""

    def __init__(self, width: int, num_classes: int, features: int = 64):
        super().__init__()
        checks.positive_number("num_classes", num_classes, integer=True, allow_zero=True)
        self.features, self.num_classes = features, num_classes
        self.time = nn.Sequential(nn.Linear(features, width), nn.SiLU(), nn.Linear(width, width))
        self.label = nn.Embedding(num_classes + 1, width) if num_classes else None

    def forward(self, time: torch.Tensor, labels: torch.Tensor | None, batch: int) -> torch.Tensor:
        checks.tensor("time", time, floating=True, ndim=1, finite=False)
        if len(time) != batch:
            raise ValueError(f"time must have shape ({batch},), got {tuple(time.shape)}")
        emb = self.time(time_features(time, self.features))
        if self.label is None:
            if labels is not None:
                raise ValueError("labels given to an unconditional network (num_classes=0)")
            return emb
        if labels is None:
            labels = torch.full((batch,), self.num_classes, dtype=torch.long, device=time.device)
        checks.tensor("labels", labels, ndim=1)
        if labels.is_floating_point() or labels.shape != (batch,):
            raise ValueError(f"labels must be integer classes of shape ({batch},), got "
                             f"{labels.dtype} {tuple(labels.shape)}")
        checks.require(((labels >= 0) & (labels <= self.num_classes)).all(), lambda: ValueError(
            f"labels must lie in [0, {self.num_classes}] ({self.num_classes} is the null label)"))
        return emb + self.label(labels)


class _ResidualBlock(nn.Module):
    r""":math:`h + W_2\,\mathrm{SiLU}\big(W_1\,\mathrm{LN}(h)\odot(1 + \gamma(e)) + \delta(e)\big)`:
    the conditioning :math:`e` scales and shifts each block's features (adaptive layer norm)."""

    def __init__(self, width: int):
        super().__init__()
        self.norm = nn.LayerNorm(width)
        self.inner = nn.Linear(width, width)
        self.film = nn.Linear(width, 2 * width)
        self.outer = nn.Linear(width, width)

    def forward(self, h: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        scale, shift = self.film(nn.functional.silu(emb)).chunk(2, dim=-1)
        inner = self.inner(self.norm(h)) * (1 + scale) + shift
        return h + self.outer(nn.functional.silu(inner))


class _Denoiser(nn.Module):
    """What the two denoisers share: the conditioning ``cond``, an input layer ``inp``,
    conditioned ``blocks`` and an output ``out`` whose last layer starts at zero (so training
    starts from the prediction 0). Subclasses say how flat data enter and leave."""

    data_dim: int

    def _zero_output(self) -> None:
        nn.init.zeros_(self.out[-1].weight)
        nn.init.zeros_(self.out[-1].bias)

    def _shape_in(self, x: torch.Tensor) -> torch.Tensor:
        return x

    def _shape_out(self, y: torch.Tensor) -> torch.Tensor:
        return y

    def forward(self, x: torch.Tensor, time: torch.Tensor,
                labels: torch.Tensor | None = None) -> torch.Tensor:
        checks.tensor("x", x, floating=True, ndim=2, finite=False)
        if x.shape[1] != self.data_dim:
            raise ValueError(f"x must have shape (B, {self.data_dim}), got {tuple(x.shape)}")
        emb = self.cond(time, labels, len(x))
        h = self.inp(self._shape_in(x))
        for block in self.blocks:
            h = block(h, emb)
        return self._shape_out(self.out(h))


class MLPDenoiser(_Denoiser):
    r"""A time- (and optionally class-) conditioned MLP for flat data ``(B, data_dim)``: an
    input layer, ``blocks`` residual blocks of width ``hidden`` modulated by the conditioning,
    and an output layer (initialised to zero, so training starts from the prediction 0).
    ``forward(x, time, labels=None)``: ``time`` ``(B,)`` in [0, 1]; ``labels`` ``(B,)`` in
    ``[0, num_classes]``, where ``num_classes`` is the null label (None means all null)."""

    def __init__(self, data_dim: int, hidden: int = 256, blocks: int = 3, num_classes: int = 0):
        super().__init__()
        for name, value in (("data_dim", data_dim), ("hidden", hidden), ("blocks", blocks)):
            checks.positive_number(name, value, integer=True)
        self.data_dim, self.num_classes = data_dim, num_classes
        self.cond = _Conditioning(hidden, num_classes)
        self.inp = nn.Linear(data_dim, hidden)
        self.blocks = nn.ModuleList(_ResidualBlock(hidden) for _ in range(blocks))
        self.out = nn.Sequential(nn.LayerNorm(hidden), nn.SiLU(), nn.Linear(hidden, data_dim))
        self._zero_output()


class _ConvBlock(nn.Module):
    """A residual block of two 3×3 convolutions; the conditioning scales and shifts the
    channels of the first one's (group-normalised) output."""

    def __init__(self, channels: int, width: int):
        super().__init__()
        self.norm1, self.norm2 = nn.GroupNorm(8, channels), nn.GroupNorm(8, channels)
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1)
        self.film = nn.Linear(width, 2 * channels)

    def forward(self, h: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        scale, shift = self.film(nn.functional.silu(emb))[:, :, None, None].chunk(2, dim=1)
        inner = self.conv1(nn.functional.silu(self.norm1(h)))
        inner = self.norm2(inner) * (1 + scale) + shift
        return h + self.conv2(nn.functional.silu(inner))


class ConvDenoiser(_Denoiser):
    r"""The same interface as :class:`MLPDenoiser` for flat square one-channel images
    ``(B, side²)``: a 3×3 convolution to ``channels`` channels, ``blocks`` residual
    convolution blocks at full resolution (an 8×8 digit has nothing to gain from a U-Net's
    downsampling), and a 3×3 convolution back to one channel, initialised to zero."""

    def __init__(self, side: int, channels: int = 32, blocks: int = 3, num_classes: int = 0,
                 width: int = 128):
        super().__init__()
        for name, value in (("side", side), ("channels", channels), ("blocks", blocks),
                            ("width", width)):
            checks.positive_number(name, value, integer=True)
        if channels % 8:
            raise ValueError(f"channels must be a multiple of 8 (group norm), got {channels}")
        self.side, self.data_dim, self.num_classes = side, side * side, num_classes
        self.cond = _Conditioning(width, num_classes)
        self.inp = nn.Conv2d(1, channels, 3, padding=1)
        self.blocks = nn.ModuleList(_ConvBlock(channels, width) for _ in range(blocks))
        self.out = nn.Sequential(nn.GroupNorm(8, channels), nn.SiLU(),
                                 nn.Conv2d(channels, 1, 3, padding=1))
        self._zero_output()

    def _shape_in(self, x: torch.Tensor) -> torch.Tensor:
        return x.view(-1, 1, self.side, self.side)

    def _shape_out(self, y: torch.Tensor) -> torch.Tensor:
        return y.flatten(1)


def _network(net: object) -> nn.Module:
    if not isinstance(net, nn.Module) or not isinstance(getattr(net, "num_classes", None), int):
        raise TypeError("net must be a torch.nn.Module with an int attribute num_classes "
                        f"(e.g. MLPDenoiser), got {type(net).__name__}")
    return net


def _labels_and_guidance(net: nn.Module, labels: torch.Tensor | None, guidance: float,
                         batch: int) -> None:
    checks.positive_number("guidance", guidance, allow_zero=True)
    if labels is not None:
        if not net.num_classes:
            raise ValueError("labels given, but the network is unconditional (num_classes=0)")
        if len(labels) != batch:
            raise ValueError(f"labels must have one entry per sample ({batch}), got "
                             f"{len(labels)}")
    elif guidance != 1.0:
        raise ValueError("guidance needs labels (guidance != 1 mixes the conditional and the "
                         "unconditional predictions)")


def guided(net: nn.Module, x: torch.Tensor, time: torch.Tensor, labels: torch.Tensor | None,
           guidance: float = 1.0) -> torch.Tensor:
    r"""The network's output with classifier-free guidance (Ho and Salimans 2022):

    .. math:: \tilde f = f(x, \varnothing) + w\,\big(f(x, c) - f(x, \varnothing)\big),

    so :math:`w = 0` is the unconditional model, :math:`w = 1` the conditional one and
    :math:`w > 1` extrapolates past it (Ho and Salimans write :math:`1 + w` for our :math:`w`).
    Because every parameterisation is an affine function of the output with weights summing
    to one, guiding :math:`\varepsilon`, :math:`x_0`, :math:`v` or a velocity is the same.
    The two predictions are one batched pass; ``labels=None`` is the unconditional model."""
    if labels is None or guidance == 1.0:
        return net(x, time, labels)
    null = torch.full_like(labels, net.num_classes)
    both = net(torch.cat([x, x]), torch.cat([time, time]), torch.cat([labels, null]))
    cond, uncond = both.chunk(2)
    return uncond + guidance * (cond - uncond)


def _drop_labels(labels: torch.Tensor | None, num_classes: int,
                 p_uncond: float) -> torch.Tensor | None:
    """Replace each label by the null label with probability ``p_uncond`` (training for
    classifier-free guidance)."""
    if labels is None or p_uncond == 0:
        return labels
    drop = torch.rand(labels.shape, device=labels.device) < p_uncond
    return torch.where(drop, torch.full_like(labels, num_classes), labels)


# --- The diffusion model: training, prediction, sampling, likelihood bound ------------------------

@dataclass(frozen=True)
class Trajectory:
    """What a sampler passed through: the steps ``t`` (from the start down to 0, or the
    interpolation times of a flow), the states ``x`` (one per entry of ``t``) and the network's
    clean-data predictions ``x0`` at each step taken (one fewer)."""
    t: tuple[float, ...]
    x: torch.Tensor
    x0: torch.Tensor


def sampling_steps(T: int, nfe: int) -> list[int]:
    r"""The ``nfe`` steps a sampler visits, evenly spaced from :math:`T` down to 1, followed by
    0 (the data): :math:`\tau_i = \lfloor 1 + (T-1)\frac{i-1}{n-1} + \tfrac12\rfloor`
    (:math:`\tau_n = T`); ``nfe=1`` jumps from :math:`T` straight to 0. A sampler that starts
    part-way (``start < T``) passes its start as ``T``."""
    checks.positive_number("T", T, integer=True)
    checks.positive_number("nfe", nfe, integer=True)
    if nfe > T:
        raise ValueError(f"nfe must be <= T = {T} (one network evaluation per step), got {nfe}")
    taus = torch.floor(torch.linspace(T, 1, nfe, dtype=torch.float64) + 0.5).long().tolist()
    return [*taus, 0]


class DiffusionModel(nn.Module):
    r"""A denoising network ``net`` with its :class:`NoiseSchedule` and parameterisation
    (``"eps"``, ``"x0"`` or ``"v"``): the DDPM of Ho et al. 2020 and its samplers.

    ``loss(x0, labels)`` is the training objective for :func:`aigc_lib.training.fit`;
    ``predict`` gives any parameterisation (with classifier-free guidance); ``sample_ddpm``,
    ``sample_ddim`` and ``invert_ddim`` generate and encode with a given number of network
    evaluations; ``bound_terms`` is the variational bound on :math:`-\log p(x_0)`.
    ``p_uncond`` is the probability that a training label is replaced by the null label."""

    def __init__(self, net: nn.Module, schedule: NoiseSchedule, parameterisation: str = "eps",
                 p_uncond: float = 0.0):
        super().__init__()
        self.net, self.schedule = _network(net), _schedule(schedule)
        if parameterisation not in PARAMETERISATIONS:
            raise ValueError(f"parameterisation must be one of {PARAMETERISATIONS}, "
                             f"got {parameterisation!r}")
        checks.positive_number("p_uncond", p_uncond, allow_zero=True)
        if p_uncond > 1:
            raise ValueError(f"p_uncond must be a probability in [0, 1], got {p_uncond}")
        self.parameterisation, self.p_uncond = parameterisation, p_uncond

    def forward(self, xt: torch.Tensor, t: torch.Tensor, labels: torch.Tensor | None = None,
                guidance: float = 1.0) -> torch.Tensor:
        """The network's raw output at integer steps ``t`` (time ``t / T``), guided."""
        time = t.to(xt.device, xt.dtype) / self.schedule.T
        return guided(self.net, xt, time, labels, guidance)

    def loss(self, x0: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        r"""The simple loss of chapter 5 in the model's parameterisation: draw
        :math:`t \sim \mathcal U\{1..T\}` and :math:`\varepsilon \sim \mathcal N(0, I)` per
        example, form :math:`x_t` and return :func:`aigc_lib.losses.diffusion_loss` of the
        output against :func:`training_target` (labels dropped with ``p_uncond``)."""
        x0 = _batch("x0", x0)
        t = torch.randint(1, self.schedule.T + 1, (len(x0),), device=x0.device)
        noise = torch.randn_like(x0)
        alpha_bar = _at(self.schedule.alpha_bars, t, x0)
        xt = alpha_bar.sqrt() * x0 + (1 - alpha_bar).sqrt() * noise
        labels = _drop_labels(labels, self.net.num_classes, self.p_uncond)
        output = self(xt, t, labels)
        target = training_target(self.parameterisation, x0, noise, alpha_bar)
        return losses.diffusion_loss(output, target)

    def predict(self, xt: torch.Tensor, t: int | torch.Tensor, target: str = "eps",
                labels: torch.Tensor | None = None, guidance: float = 1.0) -> torch.Tensor:
        """The network's prediction at ``(xt, t)`` converted to ``target`` (see
        :func:`convert`); ``t`` in [1, T]."""
        xt = _batch("xt", xt)
        t = _steps(t, self.schedule.T, len(xt), low=1)
        _labels_and_guidance(self.net, labels, guidance, len(xt))
        output = self(xt, t, labels, guidance)
        return convert(output, self.parameterisation, target, xt, self.schedule, t)

    def _denoise(self, xt: torch.Tensor, t: int, labels: torch.Tensor | None, guidance: float,
                 clip: bool) -> tuple[torch.Tensor, torch.Tensor]:
        """(x0, eps) predicted at step ``t``; with ``clip`` x0 is clamped to [-1, 1] and eps
        recomputed from it, so the two stay consistent."""
        steps = torch.full((len(xt),), t, dtype=torch.long, device=xt.device)
        alpha_bar = _at(self.schedule.alpha_bars, steps, xt)
        a, sigma = alpha_bar.sqrt(), (1 - alpha_bar).sqrt()
        output = self(xt, steps, labels, guidance)
        x0 = _convert(output, self.parameterisation, "x0", xt, a, sigma)
        if clip:
            x0 = x0.clamp(-1, 1)
            return x0, (xt - a * x0) / sigma
        return x0, _convert(output, self.parameterisation, "eps", xt, a, sigma)

    def _start(self, start: int | None) -> int:
        if start is None:
            return self.schedule.T
        checks.positive_number("start", start, integer=True)
        if start > self.schedule.T:
            raise ValueError(f"start must be a step in [1, {self.schedule.T}], got {start}")
        return start

    @torch.no_grad()
    def _run(self, noise: torch.Tensor, nfe: int, step, labels: torch.Tensor | None,
             guidance: float, clip: bool, return_path: bool, start: int | None = None):
        noise = _batch("noise", noise)
        _labels_and_guidance(self.net, labels, guidance, len(noise))
        checks.tensor("noise", noise, floating=True)
        steps = sampling_steps(self._start(start), nfe)
        x, states, preds = noise, [noise], []
        for t, s in zip(steps[:-1], steps[1:]):
            x0, eps = self._denoise(x, t, labels, guidance, clip)
            x = step(x, x0, eps, t, s)
            if return_path:
                states.append(x)
                preds.append(x0)
        if not return_path:
            return x
        return x, Trajectory(tuple(float(t) for t in steps), torch.stack(states),
                             torch.stack(preds))

    def sample_ddpm(self, noise: torch.Tensor, nfe: int, labels: torch.Tensor | None = None,
                    guidance: float = 1.0, variance: str = "beta", clip: bool = False,
                    generator: torch.Generator | None = None, return_path: bool = False,
                    start: int | None = None):
        r"""Ancestral sampling (Ho et al. 2020) from :math:`x_T` = ``noise``, with ``nfe`` steps
        :math:`\tau_n > \dots > \tau_1 > \tau_0 = 0` (:func:`sampling_steps`; ``nfe = T`` is the
        full chain, fewer steps respace it as Nichol and Dhariwal 2021 do): each step draws
        :math:`x_{s} \sim \mathcal N(\tilde\mu(\hat x_0, x_t), \sigma^2 I)` with the posterior
        mean of :func:`q_posterior` between :math:`t` and :math:`s`, and :math:`\sigma^2` the
        step's :math:`\beta = 1 - \bar\alpha_t/\bar\alpha_s` (``"beta"``) or its posterior
        variance :math:`\tilde\beta` (``"posterior"``); the last step adds no noise. ``clip``
        clamps :math:`\hat x_0` to [-1, 1]. Batched over the rows of ``noise``. ``start``
        (default :math:`T`) begins part-way, with ``noise`` taken as :math:`x_{\text{start}}`."""
        if variance not in VARIANCES:
            raise ValueError(f"variance must be one of {VARIANCES}, got {variance!r}")
        ab = self.schedule.alpha_bars

        def step(x, x0, eps, t, s):
            tt, ss = (torch.full((len(x),), v, dtype=torch.long) for v in (t, s))
            mean, var = _posterior(ab, tt, ss, x0, x)
            if s == 0:
                return mean
            if variance == "beta":
                var = (1 - ab[t] / ab[s]).to(x.dtype) * torch.ones_like(x)
            z = torch.randn(x.shape, generator=generator, dtype=x.dtype).to(x.device)
            return mean + var.sqrt() * z

        return self._run(noise, nfe, step, labels, guidance, clip, return_path, start)

    def sample_ddim(self, noise: torch.Tensor, nfe: int, eta: float = 0.0,
                    labels: torch.Tensor | None = None, guidance: float = 1.0,
                    clip: bool = False, generator: torch.Generator | None = None,
                    return_path: bool = False, start: int | None = None):
        r"""DDIM (Song, Meng and Ermon 2021) from :math:`x_T` = ``noise`` in ``nfe`` steps:

        .. math:: x_s = \sqrt{\bar\alpha_s}\,\hat x_0 + \sqrt{1 - \bar\alpha_s - \sigma^2}\,
                  \hat\varepsilon + \sigma z, \qquad \sigma = \eta\,\sqrt{\tilde\beta_{t\to s}},

        deterministic for :math:`\eta = 0` (a discretisation of the probability-flow ODE) and
        equal, step by step, to :meth:`sample_ddpm` with ``variance="posterior"`` for
        :math:`\eta = 1`. ``start`` as in :meth:`sample_ddpm`."""
        checks.positive_number("eta", eta, allow_zero=True)
        ab = self.schedule.alpha_bars

        def step(x, x0, eps, t, s):
            ab_s = ab[s].to(x.dtype)
            var = eta ** 2 * (1 - ab[s]) / (1 - ab[t]) * (1 - ab[t] / ab[s])
            x_next = ab_s.sqrt() * x0 + (1 - ab_s - var).clamp(min=0).sqrt() * eps
            if var == 0:
                return x_next
            z = torch.randn(x.shape, generator=generator, dtype=x.dtype).to(x.device)
            return x_next + var.to(x.dtype).sqrt() * z

        return self._run(noise, nfe, step, labels, guidance, clip, return_path, start)

    @torch.no_grad()
    def invert_ddim(self, x0: torch.Tensor, nfe: int, labels: torch.Tensor | None = None,
                    guidance: float = 1.0, start: int | None = None) -> torch.Tensor:
        r"""Encode data into noise by running deterministic DDIM backwards: from a step
        :math:`s` to the next one up, :math:`t`,

        .. math:: x_t = \sqrt{\bar\alpha_t}\,\frac{x_s - \sqrt{1-\bar\alpha_s}\,\hat\varepsilon}
                  {\sqrt{\bar\alpha_s}} + \sqrt{1-\bar\alpha_t}\,\hat\varepsilon,
                  \qquad \hat\varepsilon = \hat\varepsilon_\theta(x_s, t),

        the DDIM step solved for the later state, with the noise predicted at :math:`x_s`
        instead of the unknown :math:`x_t` (the ODE's velocity barely changes over one small
        step). ``sample_ddim(invert_ddim(x0, n), n)`` returns about ``x0``; the error shrinks as
        ``nfe`` grows. With ``start`` the code is :math:`x_{\text{start}}` instead of
        :math:`x_T`: at the last steps of a schedule whose :math:`\bar\alpha_T` is nearly 0
        an :math:`\varepsilon`-model's :math:`\hat x_0 = (x_t - \sigma\hat\varepsilon)/
        \sqrt{\bar\alpha_t}` multiplies every error by :math:`1/\sqrt{\bar\alpha_t}`."""
        x = _batch("x0", x0)
        _labels_and_guidance(self.net, labels, guidance, len(x))
        steps = sampling_steps(self._start(start), nfe)[::-1]
        ab = self.schedule.alpha_bars.to(x.dtype)
        for s, t in zip(steps[:-1], steps[1:]):
            _, eps = self._denoise(x, t, labels, guidance, clip=False)
            x0_hat = (x - (1 - ab[s]).sqrt() * eps) / ab[s].sqrt()
            x = ab[t].sqrt() * x0_hat + (1 - ab[t]).sqrt() * eps
        return x

    @torch.no_grad()
    def bound_terms(self, x0: torch.Tensor, bin_width: float, t_samples: int | None = None,
                    labels: torch.Tensor | None = None, variance: str = "posterior",
                    clip: bool = False, decoder_std: float | None = None,
                    generator: torch.Generator | None = None) -> dict[str, torch.Tensor]:
        r"""The variational bound :math:`-\log p_\theta(x_0) \le L_T + \sum_{t=2}^T L_{t-1} + L_0`
        per image, in nats, as ``{"prior": L_T, "diffusion": Σ L_{t-1}, "decoder": L_0}``:

        - :math:`L_T = \mathrm{KL}(q(x_T\mid x_0)\,\|\,\mathcal N(0, I))`;
        - :math:`L_{t-1} = \mathrm{KL}(q(x_{t-1}\mid x_t, x_0)\,\|\,p_\theta(x_{t-1}\mid x_t))`
          at one draw of :math:`x_t \sim q(x_t\mid x_0)`, with :math:`p_\theta`'s variance
          :math:`\tilde\beta_t` or :math:`\beta_t` (``variance``);
        - :math:`L_0 = -\log p_\theta(x_0\mid x_1)`, a Gaussian with mean
          :math:`\hat x_0(x_1)` and standard deviation ``decoder_std`` (default
          :math:`\sqrt{\beta_1}`, as in Ho et al. 2020) integrated over each pixel's bin of
          width ``bin_width`` (:func:`aigc_lib.losses.discretized_gaussian_nll`), so the bound
          is on the probability of the discrete image.

        ``clip`` bounds the model that samples with ``clip=True``: the means of its steps
        :math:`t \ge 2` are computed from :math:`\hat x_0` clamped to [-1, 1] (the decoder's
        mean is never clamped: an end level's bin reaches to infinity, and a mean beyond it
        puts more mass there).

        With ``t_samples=None`` every step :math:`2..T` is evaluated; with ``t_samples=k`` the
        sum is estimated, without bias, from one step drawn uniformly in each of ``k`` equal
        strata of :math:`\{2..T\}`, weighted by the stratum's size."""
        x0 = _batch("x0", x0)
        checks.tensor("x0", x0, floating=True)
        checks.positive_number("bin_width", bin_width)
        if variance not in VARIANCES:
            raise ValueError(f"variance must be one of {VARIANCES}, got {variance!r}")
        _labels_and_guidance(self.net, labels, 1.0, len(x0))
        if decoder_std is not None:
            checks.positive_number("decoder_std", decoder_std)
        T, ab = self.schedule.T, self.schedule.alpha_bars
        ab_T = _at(ab, torch.full((len(x0),), T), x0)
        prior = losses.kl_diag_gaussians((ab_T.sqrt() * x0).flatten(1),
                                         (1 - ab_T).log().expand_as(x0).flatten(1))
        strata = _strata(T, t_samples)
        diffusion = torch.zeros(len(x0), dtype=torch.float64, device=x0.device)
        for low, high in strata:
            t = torch.randint(low, high + 1, (len(x0),), generator=generator).to(x0.device)
            diffusion += (high - low + 1) * self.step_kl(x0, t, variance, labels, clip,
                                                         generator)
        if decoder_std is None:
            decoder_std = self.schedule.betas[1].sqrt().item()
        decoder = self.decoder_nll(x0, bin_width, decoder_std, labels, generator)
        return {"prior": prior.double(), "diffusion": diffusion, "decoder": decoder}

    def _reverse_mean(self, x0: torch.Tensor, t: torch.Tensor, labels, clip, generator):
        noise = torch.randn(x0.shape, generator=generator, dtype=x0.dtype).to(x0.device)
        xt = q_sample(self.schedule, x0, t, noise)
        x0_hat = self.predict(xt, t, "x0", labels)
        if clip:
            x0_hat = x0_hat.clamp(-1, 1)
        mean_q, var_q = _posterior(self.schedule.alpha_bars, t, t - 1, x0, xt)
        mean_p, _ = _posterior(self.schedule.alpha_bars, t, t - 1, x0_hat, xt)
        return mean_q, var_q, mean_p

    @torch.no_grad()
    def step_kl(self, x0: torch.Tensor, t: int | torch.Tensor, variance: str = "posterior",
                labels: torch.Tensor | None = None, clip: bool = False,
                generator: torch.Generator | None = None) -> torch.Tensor:
        r"""One term of the bound per image (nats): :math:`L_{t-1} = \mathrm{KL}(q(x_{t-1}\mid
        x_t, x_0)\,\|\,p_\theta(x_{t-1}\mid x_t))` at one draw of :math:`x_t`, for ``t`` in
        :math:`[2, T]` (an int or one step per image); arguments as in :meth:`bound_terms`."""
        x0 = _batch("x0", x0)
        t = _steps(t, self.schedule.T, len(x0), low=2).to(x0.device)
        if variance not in VARIANCES:
            raise ValueError(f"variance must be one of {VARIANCES}, got {variance!r}")
        mean_q, var_q, mean_p = self._reverse_mean(x0, t, labels, clip, generator)
        var_p = _reverse_variance(self.schedule, t.cpu(), variance)
        var_p = var_p.to(x0.device, x0.dtype).view(-1, *([1] * (x0.ndim - 1))).expand_as(x0)
        return losses.kl_diag_gaussians(mean_q.flatten(1), var_q.log().flatten(1),
                                        mean_p.flatten(1), var_p.log().flatten(1)).double()

    @torch.no_grad()
    def decoder_nll(self, x0: torch.Tensor, bin_width: float, decoder_std: float,
                    labels: torch.Tensor | None = None,
                    generator: torch.Generator | None = None) -> torch.Tensor:
        r""":math:`L_0 = -\log p_\theta(x_0\mid x_1)` per image (nats) at one draw of
        :math:`x_1 \sim q(x_1\mid x_0)`, for a decoder of standard deviation ``decoder_std``
        (see :meth:`bound_terms`); a chapter can fit that one number on training images."""
        x0 = _batch("x0", x0)
        checks.positive_number("decoder_std", decoder_std)
        t = torch.ones(len(x0), dtype=torch.long, device=x0.device)
        _, _, mean = self._reverse_mean(x0, t, labels, False, generator)
        nll = losses.discretized_gaussian_nll(x0, mean, decoder_std * torch.ones_like(x0),
                                              bin_width)
        return nll.flatten(1).sum(1).double()


def _strata(T: int, t_samples: int | None) -> list[tuple[int, int]]:
    """Contiguous, nearly equal blocks ``(low, high)`` covering the steps 2..T."""
    if T < 2:
        return []
    if t_samples is None:
        return [(t, t) for t in range(2, T + 1)]
    checks.positive_number("t_samples", t_samples, integer=True)
    k = min(t_samples, T - 1)
    edges = torch.linspace(2, T + 1, k + 1).round().long().tolist()
    return [(a, b - 1) for a, b in zip(edges[:-1], edges[1:])]


# --- Flow matching / rectified flow -----------------------------------------------------------

def flow_interpolate(x0: torch.Tensor, noise: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
    r"""The straight path from data to noise, :math:`x_s = (1 - s)\,x_0 + s\,\varepsilon`, whose
    velocity :math:`dx_s/ds = \varepsilon - x_0` the flow model learns (Lipman et al. 2023;
    Liu, Gong and Liu 2023). ``s`` is ``(B,)`` in [0, 1]."""
    x0 = _batch("x0", x0)
    checks.same_shape("x0", x0, "noise", noise)
    checks.tensor("s", s, floating=True, ndim=1, finite=False)
    message = f"s must have shape ({len(x0)},) and lie in [0, 1]"
    if len(s) != len(x0):
        raise ValueError(message)
    checks.require(((s >= 0) & (s <= 1)).all(), lambda: ValueError(message))  # NaN fails too
    s = s.view(-1, *([1] * (x0.ndim - 1))).to(x0.dtype)
    return (1 - s) * x0 + s * noise


class FlowModel(nn.Module):
    r"""A velocity network ``net`` trained by (conditional) flow matching on the straight path
    of :func:`flow_interpolate`, sampled by integrating :math:`dx/ds = v_\theta(x, s)` from
    :math:`s = 1` (noise) to :math:`s = 0` with Euler or Heun steps. ``p_uncond`` as in
    :class:`DiffusionModel`."""

    def __init__(self, net: nn.Module, p_uncond: float = 0.0):
        super().__init__()
        self.net = _network(net)
        checks.positive_number("p_uncond", p_uncond, allow_zero=True)
        if p_uncond > 1:
            raise ValueError(f"p_uncond must be a probability in [0, 1], got {p_uncond}")
        self.p_uncond = p_uncond

    def forward(self, x: torch.Tensor, s: torch.Tensor, labels: torch.Tensor | None = None,
                guidance: float = 1.0) -> torch.Tensor:
        """The predicted velocity at ``(x, s)``, guided."""
        return guided(self.net, x, s.to(x.device, x.dtype), labels, guidance)

    def loss(self, x0: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        r"""Flow matching: :math:`s \sim \mathcal U(0, 1)`, :math:`\varepsilon \sim
        \mathcal N(0, I)`, and :func:`aigc_lib.losses.flow_matching_loss` of
        :math:`v_\theta(x_s, s)` against :math:`\varepsilon - x_0`."""
        x0 = _batch("x0", x0)
        s = torch.rand(len(x0), device=x0.device)
        noise = torch.randn_like(x0)
        labels = _drop_labels(labels, self.net.num_classes, self.p_uncond)
        velocity = self(flow_interpolate(x0, noise, s), s, labels)
        return losses.flow_matching_loss(velocity, x0, noise)

    @torch.no_grad()
    def sample(self, noise: torch.Tensor, nfe: int, method: str = "euler",
               labels: torch.Tensor | None = None, guidance: float = 1.0,
               return_path: bool = False):
        r"""Integrate from ``noise`` at :math:`s = 1` to :math:`s = 0` on a uniform grid.
        ``"euler"``: ``nfe`` steps :math:`x \leftarrow x - h\,v(x, s)`; ``"heun"``: ``nfe/2``
        steps of the trapezoidal predictor-corrector, two evaluations each (``nfe`` even),
        error :math:`O(h^2)` instead of :math:`O(h)`."""
        noise = _batch("noise", noise)
        checks.tensor("noise", noise, floating=True)
        if method not in FLOW_METHODS:
            raise ValueError(f"method must be one of {FLOW_METHODS}, got {method!r}")
        checks.positive_number("nfe", nfe, integer=True)
        if method == "heun" and nfe % 2:
            raise ValueError(f"nfe must be even for Heun (two evaluations per step), got {nfe}")
        _labels_and_guidance(self.net, labels, guidance, len(noise))
        n = nfe if method == "euler" else nfe // 2
        grid = torch.linspace(1, 0, n + 1).tolist()
        x, states, preds = noise, [noise], []
        for s, s_next in zip(grid[:-1], grid[1:]):
            v = self(x, torch.full((len(x),), s), labels, guidance)
            if return_path:
                preds.append(x - s * v)          # x0 = x_s - s v on the straight path
            if method == "heun":
                ahead = x + (s_next - s) * v
                v = (v + self(ahead, torch.full((len(x),), s_next), labels, guidance)) / 2
            x = x + (s_next - s) * v
            if return_path:
                states.append(x)
        if not return_path:
            return x
        return x, Trajectory(tuple(grid), torch.stack(states), torch.stack(preds))
