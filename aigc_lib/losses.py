"""Loss functions, each derived in the book and tested equal to ``torch.nn.functional``.

Chapter 1 (probability and losses) derives: binary cross-entropy from logits, the Gaussian and
categorical negative log-likelihoods, entropy and KL divergence, and perplexity. Chapter 3 adds
the VAE loss, chapter 4 the GAN losses (which take the discriminator's logits), the Wasserstein
critic's losses and the gradient penalties; later chapters add the language-model losses here.

Conventions: ``reduction`` is ``'mean'`` (over every element), ``'sum'`` or ``'none'``; losses are
in nats (natural logarithms). The losses that training computes at every step check the types,
dtypes and shapes of their arguments, never their values: reading a value (is it finite? in
[0, 1]?) would make a GPU wait at every step (chapter 2). Values are checked where data enters
(``fit`` refuses non-finite training data, ``metrics`` check their inputs), and ``fit`` stops at
the first non-finite loss. The functions of distributions (entropy, KL of categoricals,
perplexity) check their values.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from aigc_lib import checks


def bce_with_logits(logits: torch.Tensor, targets: torch.Tensor,
                    reduction: str = "mean") -> torch.Tensor:
    r"""Binary cross-entropy computed from logits, stable for any logit.

    With :math:`\sigma(x) = 1/(1+e^{-x})` the loss of one element is
    :math:`-[y\log\sigma(x) + (1-y)\log(1-\sigma(x))]`, which simplifies to

    .. math:: \ell(x, y) = \max(x, 0) - x y + \log\left(1 + e^{-|x|}\right),

    a form that never exponentiates a large positive number. Its gradient is
    :math:`\partial\ell/\partial x = \sigma(x) - y` (chapter 1). Targets may be soft, in [0, 1]
    (not checked: a per-step loss reads no values).
    """
    checks.tensor("logits", logits, floating=True, finite=False)
    checks.tensor("targets", targets, floating=True, finite=False)
    checks.same_shape("logits", logits, "targets", targets)
    checks.reduction(reduction)
    losses = logits.clamp(min=0) - logits * targets + torch.log1p(torch.exp(-logits.abs()))
    return checks.apply_reduction(losses, reduction)


def naive_bce_with_logits(logits: torch.Tensor, targets: torch.Tensor,
                          reduction: str = "mean") -> torch.Tensor:
    r"""The textbook formula :math:`-[y\log\sigma(x) + (1-y)\log(1-\sigma(x))]`, evaluated literally.

    Kept only to show why losses take logits (chapter 1): in float32, :math:`\sigma(100)` rounds
    to exactly 1, so :math:`\log(1-\sigma(100)) = -\infty` and the loss is ``inf`` (or ``nan``
    when multiplied by a zero target). Use :func:`bce_with_logits` instead.
    """
    checks.tensor("logits", logits, floating=True)
    checks.tensor("targets", targets, floating=True)
    checks.same_shape("logits", logits, "targets", targets)
    checks.in_unit_interval("targets", targets)
    checks.reduction(reduction)
    p = torch.sigmoid(logits)
    losses = -(targets * torch.log(p) + (1 - targets) * torch.log(1 - p))
    return checks.apply_reduction(losses, reduction)


def gaussian_nll(target: torch.Tensor, mean: torch.Tensor, var: torch.Tensor | float,
                 reduction: str = "mean") -> torch.Tensor:
    r"""Negative log-likelihood of ``target`` under :math:`\mathcal N(\text{mean}, \text{var})`:

    .. math:: -\log \mathcal N(x;\mu,\sigma^2) = \tfrac12\left[\log(2\pi) + \log\sigma^2
              + \frac{(x-\mu)^2}{\sigma^2}\right].

    With a fixed :math:`\sigma^2` this is the squared error up to scale and a constant: MSE is
    the Gaussian NLL (chapter 1). Equals ``F.gaussian_nll_loss(mean, target, var, full=True)``.
    """
    checks.tensor("target", target, floating=True, finite=False)
    checks.tensor("mean", mean, floating=True, finite=False)
    checks.same_shape("target", target, "mean", mean)
    if not isinstance(var, torch.Tensor):
        checks.positive_number("var", var)
        var = torch.full_like(mean, float(var))
    checks.tensor("var", var, floating=True, finite=False)   # a var <= 0 gives a NaN loss
    checks.reduction(reduction)
    try:
        var = var.expand_as(mean)
    except RuntimeError as err:
        raise ValueError(f"var of shape {tuple(var.shape)} cannot broadcast to mean's shape "
                         f"{tuple(mean.shape)}") from err
    losses = 0.5 * (math.log(2 * math.pi) + torch.log(var) + (target - mean) ** 2 / var)
    return checks.apply_reduction(losses, reduction)


def cross_entropy(logits: torch.Tensor, targets: torch.Tensor, ignore_index: int = -100,
                  reduction: str = "mean") -> torch.Tensor:
    r"""Categorical cross-entropy of class indices given unnormalised logits:

    .. math:: \ell(z, y) = -\log \operatorname{softmax}(z)_y = \log\sum_j e^{z_j} - z_y,

    computed with log-sum-exp. ``logits`` is ``(N, C)`` (or ``(N, T, C)`` for sequences),
    ``targets`` holds integer classes of shape ``(N,)`` (or ``(N, T)``); positions equal to
    ``ignore_index`` contribute nothing and are left out of the mean. Gradient:
    :math:`\operatorname{softmax}(z) - \text{onehot}(y)` (chapter 1). Equals ``F.cross_entropy``.
    """
    checks.tensor("logits", logits, floating=True, ndim=(2, 3), finite=False)
    checks.tensor("targets", targets)
    if targets.dtype not in (torch.int64, torch.int32, torch.int16, torch.uint8):
        raise TypeError(f"targets must hold integer class indices, got dtype {targets.dtype}")
    if targets.shape != logits.shape[:-1]:
        raise ValueError(f"targets must have shape {tuple(logits.shape[:-1])} (logits without the "
                         f"class dimension), got {tuple(targets.shape)}")
    checks.reduction(reduction)
    targets = targets.long()
    keep = targets != ignore_index
    classes = logits.shape[-1]
    checks.require((~keep | ((targets >= 0) & (targets < classes))).all(), lambda: ValueError(
        f"targets must be in [0, {classes}) or equal ignore_index={ignore_index}"))
    safe = torch.where(keep, targets, torch.zeros_like(targets))
    picked = logits.gather(-1, safe.unsqueeze(-1)).squeeze(-1)
    losses = (torch.logsumexp(logits, dim=-1) - picked) * keep
    if reduction == "mean":
        return losses.sum() / keep.sum()
    return checks.apply_reduction(losses, reduction)


def entropy(p: torch.Tensor) -> torch.Tensor:
    r"""Entropy :math:`H(p) = -\sum_i p_i \log p_i` of categorical distributions along the last
    dimension (with :math:`0 \log 0 = 0`)."""
    checks.tensor("p", p, floating=True)
    checks.probability_vector("p", p)
    return -torch.special.xlogy(p, p).sum(-1)


def kl_categorical(p: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    r"""KL divergence :math:`\mathrm{KL}(p\,\|\,q) = \sum_i p_i \log(p_i / q_i)` along the last
    dimension. It is :math:`\ge 0`, zero iff :math:`p = q`, and
    :math:`H(p, q) = H(p) + \mathrm{KL}(p\,\|\,q)` (chapter 1). Infinite where
    :math:`q_i = 0 < p_i`."""
    checks.tensor("p", p, floating=True)
    checks.tensor("q", q, floating=True)
    checks.same_shape("p", p, "q", q)
    checks.probability_vector("p", p)
    checks.probability_vector("q", q)
    return (torch.special.xlogy(p, p) - torch.special.xlogy(p, q)).sum(-1)


def cross_entropy_dist(p: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    r"""Cross-entropy :math:`H(p, q) = -\sum_i p_i \log q_i` between categorical distributions."""
    checks.tensor("p", p, floating=True)
    checks.tensor("q", q, floating=True)
    checks.same_shape("p", p, "q", q)
    checks.probability_vector("p", p)
    checks.probability_vector("q", q)
    return -torch.special.xlogy(p, q).sum(-1)


def kl_diag_gaussians(mu_q: torch.Tensor, logvar_q: torch.Tensor,
                      mu_p: torch.Tensor | None = None,
                      logvar_p: torch.Tensor | None = None) -> torch.Tensor:
    r"""KL divergence between diagonal Gaussians, summed over the last dimension:

    .. math:: \mathrm{KL}(q\,\|\,p) = \tfrac12 \sum_j \left[\log\frac{\sigma_{p,j}^2}{\sigma_{q,j}^2}
              + \frac{\sigma_{q,j}^2 + (\mu_{q,j}-\mu_{p,j})^2}{\sigma_{p,j}^2} - 1\right].

    With ``mu_p`` and ``logvar_p`` left out, :math:`p = \mathcal N(0, I)` and this is the VAE's
    :math:`\tfrac12\sum_j(\mu_j^2 + \sigma_j^2 - \log\sigma_j^2 - 1)`. Variances are passed as
    log-variances, as encoders output them. Returns one value per leading index.
    """
    checks.tensor("mu_q", mu_q, floating=True, finite=False)
    checks.tensor("logvar_q", logvar_q, floating=True, finite=False)
    checks.same_shape("mu_q", mu_q, "logvar_q", logvar_q)
    if (mu_p is None) != (logvar_p is None):
        raise ValueError("mu_p and logvar_p must be given together (or both left out for N(0, I))")
    if mu_p is None:
        mu_p, logvar_p = torch.zeros_like(mu_q), torch.zeros_like(logvar_q)
    checks.tensor("mu_p", mu_p, floating=True, finite=False)
    checks.tensor("logvar_p", logvar_p, floating=True, finite=False)
    checks.same_shape("mu_q", mu_q, "mu_p", mu_p)
    checks.same_shape("mu_q", mu_q, "logvar_p", logvar_p)
    terms = (logvar_p - logvar_q + (logvar_q.exp() + (mu_q - mu_p) ** 2) / logvar_p.exp() - 1)
    return 0.5 * terms.sum(-1)


def perplexity(mean_nll: torch.Tensor | float) -> torch.Tensor:
    r"""Perplexity :math:`\exp(\bar\ell)` of a mean negative log-likelihood :math:`\bar\ell` in nats
    per token: the size of a uniform distribution that would be as surprised (chapter 1)."""
    if not isinstance(mean_nll, torch.Tensor):
        if isinstance(mean_nll, bool) or not isinstance(mean_nll, (int, float)):
            raise TypeError(f"mean_nll must be a number or tensor, got {type(mean_nll).__name__}")
        mean_nll = torch.tensor(float(mean_nll), dtype=torch.float64)
    checks.tensor("mean_nll", mean_nll, floating=True)
    if bool((mean_nll < 0).any()):
        raise ValueError(f"mean_nll must be >= 0 (a negative log-likelihood of discrete data), "
                         f"got {mean_nll.min().item():.4g}")
    return torch.exp(mean_nll)


def vae_loss(logits: torch.Tensor, targets: torch.Tensor, mu: torch.Tensor, logvar: torch.Tensor,
             beta: float = 1.0, free_bits: float = 0.0
             ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    r"""The VAE's negative evidence lower bound for a Bernoulli decoder and a Gaussian encoder
    (chapter 3), returned as ``(loss, {"recon": ..., "kl": ...})``.

    For a batch of :math:`B` images :math:`x_b` with :math:`D` pixels, decoder logits
    :math:`\ell_b` computed from one reparameterised draw :math:`z_b \sim q(z\mid x_b)
    = \mathcal N(\mu_b, \operatorname{diag}\sigma_b^2)`, and a prior :math:`p(z) = \mathcal N(0, I)`:

    .. math:: \text{recon} = \frac1B\sum_b \sum_{i=1}^{D} \operatorname{BCE}(\ell_{b,i}, x_{b,i})
              \approx \frac1B\sum_b -\mathbb E_q[\log p(x_b\mid z)],

    .. math:: \text{kl} = \frac1B\sum_b \tfrac12\sum_{j=1}^{d}\left(\mu_{b,j}^2 + \sigma_{b,j}^2
              - \log\sigma_{b,j}^2 - 1\right) = \frac1B\sum_b \mathrm{KL}(q(z\mid x_b)\,\|\,p(z)),

    and ``loss`` :math:`= \text{recon} + \beta\,\text{kl}`. Both terms are **summed** over their
    dimensions (pixels, latent coordinates) and **averaged** over the batch, so with
    :math:`\beta = 1` the loss is the negative ELBO in nats per image, an upper bound on
    :math:`-\log p(x)`. ``beta`` :math:`\ne 1` gives the :math:`\beta`-VAE objective. ``logits``
    and ``targets`` have shape ``(B, D)`` (or ``(B, ...)``: every dimension after the first is
    summed); ``mu`` and ``logvar`` have shape ``(B, d)``; targets lie in [0, 1] (not checked: a
    per-step loss reads no values).

    ``free_bits`` :math:`\lambda > 0` (nats per latent unit; Kingma et al. 2016) replaces the KL in
    the loss by :math:`\sum_j \max\big(\lambda, \frac1B\sum_b \mathrm{KL}_{b,j}\big)`: a unit
    whose batch-average KL is below :math:`\lambda` gets no push towards the prior, so the
    encoder can use it for free. The returned ``kl`` stays the true KL, so ``recon + kl``
    remains the negative ELBO.
    """
    checks.tensor("logits", logits, floating=True, finite=False)
    checks.tensor("targets", targets, floating=True, finite=False)
    checks.same_shape("logits", logits, "targets", targets)
    checks.tensor("mu", mu, floating=True, ndim=2, finite=False)
    checks.tensor("logvar", logvar, floating=True, ndim=2, finite=False)
    checks.same_shape("mu", mu, "logvar", logvar)
    if logits.ndim < 2 or len(logits) != len(mu):
        raise ValueError(f"logits must have shape (B, ...) with the same batch size B as mu; got "
                         f"logits {tuple(logits.shape)} and mu {tuple(mu.shape)}")
    checks.positive_number("beta", beta, allow_zero=True)
    checks.positive_number("free_bits", free_bits, allow_zero=True)
    recon = bce_with_logits(logits, targets, reduction="none").flatten(1).sum(1).mean()
    kl_units = kl_diag_gaussians(mu.unsqueeze(-1), logvar.unsqueeze(-1)).mean(0)  # (d,)
    kl = kl_units.sum()
    penalty = kl_units.clamp(min=free_bits).sum() if free_bits > 0 else kl
    return recon + beta * penalty, {"recon": recon, "kl": kl}


def causal_lm_loss(logits: torch.Tensor, input_ids: torch.Tensor,
                   ignore_index: int = -100, reduction: str = "mean") -> torch.Tensor:
    r"""Next-token (shifted) language-model loss, in nats per scored token (chapters 6–8):

    .. math:: \mathcal L = \frac{1}{|S|}\sum_{(b,t) \in S} -\log \operatorname{softmax}(z_{b,t})_{x_{b,t+1}},

    where position :math:`t` of ``logits`` predicts token :math:`t+1` of ``input_ids``
    ``(B, T)`` and :math:`S` leaves out targets equal to ``ignore_index`` (padding, prompts).
    ``logits`` is ``(B, T, V)`` when the model read all of ``input_ids`` (its last position
    predicts nothing and is dropped), or ``(B, T-1, V)`` when it read ``input_ids[:, :-1]``
    (chapter 7's training windows). This is the loss that ``transformers``'
    ``GPT2LMHeadModel(input_ids, labels=input_ids)`` reports (``tests/test_gpt.py`` checks it),
    and the one next-token loss of the library: chapter 7's ``gpt.lm_loss`` and chapter 8's
    fine-tuning losses call it. ``reduction="sum"`` gives the total (for token-weighted
    averages over many batches), ``"none"`` the ``(B, T-1)`` per-target losses (0 where
    ignored). It reads no tensor value on the host (no synchronisation on a GPU).
    """
    checks.tensor("logits", logits, floating=True, ndim=3, finite=False)
    checks.tensor("input_ids", input_ids, ndim=2)
    checks.reduction(reduction)
    if input_ids.shape[1] < 2:
        raise ValueError("input_ids must have at least 2 positions: one to read, one to predict")
    batch, length = input_ids.shape
    if logits.shape[:2] not in ((batch, length), (batch, length - 1)):
        raise ValueError(f"input_ids must have shape {tuple(logits.shape[:2])} (logits without the "
                         f"vocabulary dimension) or one more position, got "
                         f"{tuple(input_ids.shape)}")
    shifted = logits[:, :length - 1]
    if shifted.dtype in (torch.float16, torch.bfloat16):   # reduce in float32 under autocast
        shifted = shifted.float()
    targets = input_ids[:, 1:]
    losses = F.cross_entropy(shifted.flatten(0, 1), targets.flatten(), ignore_index=ignore_index,
                             reduction=reduction)
    return losses.view(batch, length - 1) if reduction == "none" else losses


def dpo_loss(policy_chosen_logps: torch.Tensor, policy_rejected_logps: torch.Tensor,
             ref_chosen_logps: torch.Tensor, ref_rejected_logps: torch.Tensor,
             beta: float = 0.1, reduction: str = "mean") -> torch.Tensor:
    r"""Direct preference optimisation loss (Rafailov et al. 2023; chapter 8).

    For a prompt :math:`x` with a preferred answer :math:`y_w` and a rejected one :math:`y_l`,
    the inputs are sequence log-probabilities (sums over the answer tokens) under the policy
    :math:`\pi_\theta` and the frozen reference :math:`\pi_\text{ref}`. With the implicit
    rewards :math:`r(x, y) = \beta \log \frac{\pi_\theta(y\mid x)}{\pi_\text{ref}(y\mid x)}`,

    .. math:: \ell = -\log\sigma\big(r(x, y_w) - r(x, y_l)\big),

    the Bradley–Terry negative log-likelihood of the observed preference; the optimum of the
    KL-regularised reward objective has exactly this reward (chapter 8 derives it). Its
    gradient pushes :math:`\log\pi_\theta(y_w)` up and :math:`\log\pi_\theta(y_l)` down, each
    weighted by :math:`\sigma(r_l - r_w)`: pairs already ranked right count little. Equals
    TRL's ``DPOTrainer`` loss with ``loss_type="sigmoid"`` (``tests/test_preference.py``).
    All four inputs are ``(B,)`` floating tensors; ``reduction`` is ``'mean'``, ``'sum'`` or
    ``'none'``.
    """
    names = ("policy_chosen_logps", "policy_rejected_logps", "ref_chosen_logps",
             "ref_rejected_logps")
    values = (policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps)
    for name, value in zip(names, values):
        checks.tensor(name, value, floating=True, ndim=1, finite=False)
        checks.same_shape(names[0], values[0], name, value)
    checks.positive_number("beta", beta)
    checks.reduction(reduction)
    margin = beta * ((policy_chosen_logps - ref_chosen_logps)
                     - (policy_rejected_logps - ref_rejected_logps))
    return checks.apply_reduction(_neg_log_sigmoid(margin), reduction)


def _neg_log_sigmoid(logits: torch.Tensor) -> torch.Tensor:
    r""":math:`-\log\sigma(\ell) = \log(1 + e^{-\ell}) = \max(-\ell, 0) + \log(1 + e^{-|\ell|})`,
    stable for any logit (the binary cross-entropy of chapter 1 with target 1)."""
    return (-logits).clamp(min=0) + torch.log1p(torch.exp(-logits.abs()))


def gan_discriminator_loss(real_logits: torch.Tensor, fake_logits: torch.Tensor,
                           reduction: str = "mean") -> torch.Tensor:
    r"""The discriminator's loss in the GAN game (chapter 4), from logits: binary cross-entropy
    with real examples labelled 1 and generated ones labelled 0.

    With :math:`D = \sigma(\ell)`, logits :math:`\ell^r_i` of :math:`m` real examples and
    :math:`\ell^g_j` of :math:`n` generated ones,

    .. math:: L_D = -\frac1m\sum_{i=1}^m \log\sigma(\ell^r_i)
              - \frac1n\sum_{j=1}^n \log\big(1 - \sigma(\ell^g_j)\big)
              = \frac1m\sum_i \operatorname{softplus}(-\ell^r_i)
              + \frac1n\sum_j \operatorname{softplus}(\ell^g_j),

    the negative of the game's value :math:`V(G, D)` estimated on the batch. Its minimiser over
    all functions is :math:`D^* = p_r/(p_r + p_g)`, where :math:`L_D = 2\log 2 - 2\,
    \mathrm{JS}(p_r\,\|\,p_g)`. Gradients: :math:`\partial L_D/\partial\ell^r_i =
    -(1 - \sigma(\ell^r_i))/m` and :math:`\partial L_D/\partial\ell^g_j = \sigma(\ell^g_j)/n`.
    Equals ``F.binary_cross_entropy_with_logits(real, ones) + F.binary_cross_entropy_with_logits(
    fake, zeros)``. ``reduction='sum'`` sums both terms instead of averaging them; there is no
    ``'none'``, since the two batches may differ in size. Logits of any (matching or not) shapes.
    """
    checks.tensor("real_logits", real_logits, floating=True, finite=False)
    checks.tensor("fake_logits", fake_logits, floating=True, finite=False)
    checks.reduction(reduction, allowed=("mean", "sum"))
    if real_logits.numel() == 0 or fake_logits.numel() == 0:
        raise ValueError("real_logits and fake_logits must not be empty")
    real, fake = _neg_log_sigmoid(real_logits), _neg_log_sigmoid(-fake_logits)
    return checks.apply_reduction(real, reduction) + checks.apply_reduction(fake, reduction)


def gan_generator_loss(fake_logits: torch.Tensor, saturating: bool = False,
                       reduction: str = "mean") -> torch.Tensor:
    r"""The generator's loss in the GAN game (chapter 4), from the discriminator's logits
    :math:`\ell_j` on :math:`n` generated examples, in two forms.

    **Non-saturating** (the default; Goodfellow et al. 2014 recommend it):

    .. math:: L_G = -\frac1n\sum_j \log\sigma(\ell_j) = \frac1n\sum_j
              \operatorname{softplus}(-\ell_j), \qquad
              \frac{\partial L_G}{\partial \ell_j} = -\frac{1 - \sigma(\ell_j)}{n}.

    **Saturating** (``saturating=True``, the minimax game as written):

    .. math:: L_G = \frac1n\sum_j \log\big(1 - \sigma(\ell_j)\big) = -\frac1n\sum_j
              \operatorname{softplus}(\ell_j), \qquad
              \frac{\partial L_G}{\partial \ell_j} = -\frac{\sigma(\ell_j)}{n}.

    Both push :math:`\ell_j` up. When the discriminator confidently rejects a sample
    (:math:`\ell_j \ll 0`, as early in training) the saturating gradient vanishes like
    :math:`e^{\ell_j}` while the non-saturating one tends to :math:`-1/n`. Equal to
    ``F.binary_cross_entropy_with_logits(fake, ones)`` and to
    ``-F.binary_cross_entropy_with_logits(fake, zeros)`` respectively. ``reduction`` is
    ``'mean'``, ``'sum'`` or ``'none'`` (per-example terms).
    """
    checks.tensor("fake_logits", fake_logits, floating=True, finite=False)
    if not isinstance(saturating, bool):
        raise TypeError(f"saturating must be a bool, got {type(saturating).__name__}")
    checks.reduction(reduction)
    if fake_logits.numel() == 0:
        raise ValueError("fake_logits must not be empty")
    terms = -_neg_log_sigmoid(-fake_logits) if saturating else _neg_log_sigmoid(fake_logits)
    return checks.apply_reduction(terms, reduction)


def r1_penalty(real_logits: torch.Tensor, real: torch.Tensor) -> torch.Tensor:
    r"""The R1 gradient penalty on real data (Mescheder et al. 2018; chapter 4): the mean squared
    norm of the gradient of the discriminator's logit with respect to its real input,

    .. math:: R_1 = \frac1m\sum_{i=1}^m \big\lVert \nabla_{x}\,\ell(x)\big|_{x = x_i}\big\rVert_2^2 .

    Adding :math:`\tfrac\gamma2 R_1` to the discriminator's loss penalises a discriminator that
    changes steeply around the data, which damps the oscillations of GAN training. ``real``
    (``(m, ...)``) must require gradients and ``real_logits`` must be computed from it; the
    penalty is built with ``create_graph=True``, so it can be backpropagated to the
    discriminator's parameters. For a linear logit :math:`\ell(x) = w^\top x + b` it equals
    :math:`\lVert w\rVert_2^2`.
    """
    checks.tensor("real_logits", real_logits, floating=True, finite=False)
    checks.tensor("real", real, floating=True, finite=False)
    if not real.requires_grad:
        raise ValueError("real must require gradients: call real.requires_grad_() before "
                         "computing real_logits from it")
    if real.ndim == 0 or len(real) == 0:
        raise ValueError(f"real must have a batch dimension and at least one row, got shape "
                         f"{tuple(real.shape)}")
    try:
        (grad,) = torch.autograd.grad(real_logits.sum(), real, create_graph=True)
    except RuntimeError as err:
        raise ValueError("real_logits must be computed from real (no gradient path)") from err
    return grad.flatten(1).square().sum(1).mean() if real.ndim > 1 else grad.square().mean()


def wgan_critic_loss(real_scores: torch.Tensor, fake_scores: torch.Tensor) -> torch.Tensor:
    r"""The critic's loss of the Wasserstein GAN (Arjovsky et al. 2017; chapter 4), from the
    critic's unbounded scores :math:`f(x)` (no sigmoid) on :math:`m` real and :math:`n`
    generated examples:

    .. math:: L_C = \frac1n\sum_{j=1}^n f(\tilde x_j) - \frac1m\sum_{i=1}^m f(x_i).

    By the Kantorovich–Rubinstein duality, :math:`W_1(p_r, p_g) = \sup_{\lVert f\rVert_L \le 1}
    \mathbb E_{p_r} f - \mathbb E_{p_g} f`, so a 1-Lipschitz critic that minimises :math:`L_C`
    reaches :math:`-W_1`; the Lipschitz constraint comes from elsewhere (a gradient penalty,
    :func:`gradient_penalty`, or spectral normalisation). Gradients: :math:`-1/m` for each real
    score and :math:`1/n` for each generated one. Scores of any shapes (each averaged)."""
    checks.tensor("real_scores", real_scores, floating=True, finite=False)
    checks.tensor("fake_scores", fake_scores, floating=True, finite=False)
    if real_scores.numel() == 0 or fake_scores.numel() == 0:
        raise ValueError("real_scores and fake_scores must not be empty")
    return fake_scores.mean() - real_scores.mean()


def wgan_generator_loss(fake_scores: torch.Tensor) -> torch.Tensor:
    r"""The generator's loss of the Wasserstein GAN (chapter 4): :math:`L_G = -\frac1n
    \sum_j f(G(z_j))`. Its gradient with respect to a generated point is :math:`-\nabla_x f/n`,
    whose size a 1-Lipschitz critic keeps near 1 wherever the critic is tight, even when the
    supports of :math:`p_r` and :math:`p_g` are disjoint (where the JS-based losses saturate)."""
    checks.tensor("fake_scores", fake_scores, floating=True, finite=False)
    if fake_scores.numel() == 0:
        raise ValueError("fake_scores must not be empty")
    return -fake_scores.mean()


def gradient_penalty(critic: torch.nn.Module, real: torch.Tensor, fake: torch.Tensor,
                     epsilon: torch.Tensor | None = None) -> torch.Tensor:
    r"""The WGAN-GP gradient penalty (Gulrajani et al. 2017; chapter 4): the mean over
    :math:`m` interpolates :math:`\hat x_i = \epsilon_i x_i + (1 - \epsilon_i)\tilde x_i`,
    :math:`\epsilon_i \sim U[0, 1]`, of

    .. math:: \big(\lVert \nabla_x f(\hat x_i)\rVert_2 - 1\big)^2 .

    An optimal 1-Lipschitz critic has gradient norm 1 almost everywhere on the straight lines
    between coupled real and generated points, so the penalty pulls the critic towards that
    property instead of clipping its weights; the critic's loss becomes
    :math:`L_C + \lambda\,\mathrm{GP}` (the paper's :math:`\lambda = 10`). For a linear critic
    :math:`f(x) = w^\top x + b` it equals :math:`(\lVert w\rVert_2 - 1)^2`.

    ``critic`` maps ``(m, ...)`` to one score per row, and must treat rows independently (no
    batch normalisation or packing: the gradient of the summed scores is then the per-row
    gradient). ``real`` and ``fake`` have the same shape ``(m, ...)``; the interpolates are
    detached from both (the penalty trains the critic only), and the penalty is built with
    ``create_graph=True`` so it backpropagates to the critic's parameters. ``epsilon``
    (``(m,)`` in [0, 1]) fixes the mixing weights; by default they are drawn with
    ``torch.rand`` (the global generator).
    """
    if not callable(critic):
        raise TypeError(f"critic must be a torch.nn.Module or callable, got "
                        f"{type(critic).__name__}")
    checks.tensor("real", real, floating=True, finite=False)
    checks.tensor("fake", fake, floating=True, finite=False)
    checks.same_shape("real", real, "fake", fake)
    if real.ndim == 0 or len(real) == 0:
        raise ValueError(f"real must have a batch dimension and at least one row, got shape "
                         f"{tuple(real.shape)}")
    if epsilon is None:
        epsilon = torch.rand(len(real), device=real.device, dtype=real.dtype)
    checks.tensor("epsilon", epsilon, floating=True, finite=False, ndim=1)
    if len(epsilon) != len(real):
        raise ValueError(f"epsilon must have one weight per row ({len(real)}), got "
                         f"{len(epsilon)}")
    weight = epsilon.to(real.dtype).view(-1, *[1] * (real.ndim - 1))
    mixed = (weight * real.detach() + (1 - weight) * fake.detach()).requires_grad_(True)
    scores = critic(mixed)
    if not isinstance(scores, torch.Tensor) or scores.numel() != len(real):
        raise ValueError(f"critic must return one score per row ({len(real)}), got "
                         f"{getattr(scores, 'shape', type(scores).__name__)}")
    (grad,) = torch.autograd.grad(scores.sum(), mixed, create_graph=True)
    return (grad.flatten(1).norm(dim=1) - 1).square().mean()


# --- Chapter 5: diffusion and flow matching ----------------------------------------------------

def _squared_error_per_example(name: str, prediction: torch.Tensor,
                               target: torch.Tensor) -> torch.Tensor:
    checks.tensor(name, prediction, floating=True, finite=False)
    checks.tensor("target", target, floating=True, finite=False)
    checks.same_shape(name, prediction, "target", target)
    if prediction.ndim < 2:
        raise ValueError(f"{name} must have shape (B, ...), got {tuple(prediction.shape)}")
    return (prediction - target).square().flatten(1).sum(1)


def diffusion_loss(prediction: torch.Tensor, target: torch.Tensor,
                   weights: torch.Tensor | None = None) -> torch.Tensor:
    r"""The denoising loss of a diffusion model (chapter 5): the squared error of the network's
    output, summed over each example's dimensions and averaged over the batch,

    .. math:: L = \frac1B\sum_b w_b\,\lVert \hat y_b - y_b\rVert_2^2 ,

    where :math:`y` is the model's target (:math:`\varepsilon`, :math:`x_0` or :math:`v`). With
    :math:`w_b = 1` and :math:`y = \varepsilon` it is the "simple" loss of Ho et al. 2020 (their
    mean over pixels is this divided by :math:`D`); with :math:`w_b = \lambda_{t_b}` of
    :func:`aigc_lib.models.diffusion.elbo_weight` it is the ELBO term :math:`L_{t-1}` in nats.
    ``prediction`` and ``target`` are ``(B, ...)``; ``weights`` is ``(B,)``."""
    per_example = _squared_error_per_example("prediction", prediction, target)
    if weights is not None:
        checks.tensor("weights", weights, floating=True, ndim=1, finite=False)
        if len(weights) != len(per_example):
            raise ValueError(f"weights must have shape ({len(per_example)},), got "
                             f"{tuple(weights.shape)}")
        per_example = per_example * weights.to(per_example.dtype)
    return per_example.mean()


def flow_matching_loss(velocity: torch.Tensor, x0: torch.Tensor,
                       noise: torch.Tensor) -> torch.Tensor:
    r"""The (conditional) flow-matching loss on the straight path
    :math:`x_s = (1-s)\,x_0 + s\,\varepsilon` (chapter 5; Lipman et al. 2023, Liu et al. 2023):

    .. math:: L = \frac1B\sum_b \big\lVert \hat v_b - (\varepsilon_b - x_{0,b})\big\rVert_2^2,

    the squared error of the predicted velocity against the path's velocity
    :math:`dx_s/ds = \varepsilon - x_0`, summed over dimensions and averaged over the batch. Its
    minimiser over functions is :math:`\hat v(x, s) = \mathbb E[\varepsilon - x_0 \mid x_s = x]`.
    All three tensors are ``(B, ...)`` of one shape."""
    checks.tensor("x0", x0, floating=True, finite=False)
    checks.tensor("noise", noise, floating=True, finite=False)
    checks.same_shape("x0", x0, "noise", noise)
    return _squared_error_per_example("velocity", velocity, noise - x0).mean()


def _log_normal_mass(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    r""":math:`\log(\Phi(b) - \Phi(a))` for :math:`a < b` (either may be infinite), computed in
    the tail where it is accurate: on the left of 0 with log-CDFs, on the right by symmetry."""
    flip = a > 0
    a, b = torch.where(flip, -b, a), torch.where(flip, -a, b)
    log_b, log_a = torch.special.log_ndtr(b), torch.special.log_ndtr(a)
    return log_b + torch.log(-torch.expm1((log_a - log_b).clamp(max=-1e-30)))


def discretized_gaussian_nll(x: torch.Tensor, mean: torch.Tensor, std: torch.Tensor,
                             bin_width: float, low: float = -1.0,
                             high: float = 1.0) -> torch.Tensor:
    r"""Negative log-probability, element by element, of discrete values :math:`x` on a grid of
    spacing ``bin_width`` from ``low`` to ``high``, under a Gaussian
    :math:`\mathcal N(\mu, \sigma^2)` integrated over each value's bin (the decoder of Ho et al.
    2020, chapter 5):

    .. math:: -\log P(x) = -\log\Big[\Phi\Big(\frac{x + h - \mu}{\sigma}\Big)
              - \Phi\Big(\frac{x - h - \mu}{\sigma}\Big)\Big], \qquad h = \tfrac12\,\text{bin\_width},

    with the first bin extended to :math:`-\infty` and the last to :math:`+\infty`, so the
    probabilities of the grid's values sum to one. Computed from log-CDFs, so it stays finite
    far in the tails. ``x``, ``mean`` and ``std`` share one shape; returns that shape (nats)."""
    checks.tensor("x", x, floating=True)
    checks.tensor("mean", mean, floating=True, finite=False)
    checks.tensor("std", std, floating=True, finite=False)
    checks.same_shape("x", x, "mean", mean)
    checks.same_shape("x", x, "std", std)
    checks.positive("std", std)
    checks.positive_number("bin_width", bin_width)
    if not high > low:
        raise ValueError(f"high must be > low, got low={low}, high={high}")
    half = bin_width / 2
    if bool(((x < low - 1e-6) | (x > high + 1e-6)).any()):
        raise ValueError(f"x must lie in [low, high] = [{low}, {high}]")
    upper = torch.where(x > high - half, torch.full_like(x, math.inf), (x + half - mean) / std)
    lower = torch.where(x < low + half, torch.full_like(x, -math.inf), (x - half - mean) / std)
    return -_log_normal_mass(lower, upper)
