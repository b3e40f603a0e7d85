"""Evaluation metrics used across chapters: accuracy; the likelihood estimates of the VAE chapter
(chapter 3); the Fréchet distance, the mode coverage and the improved precision and recall of
the GAN chapter (chapter 4); calibration and bootstrap intervals (chapters 8, 9, 12); chrF, exact
match and semantic similarity of generated answers (chapter 8)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from aigc_lib import checks, runtime
from aigc_lib.models import vae


def accuracy(logits: torch.Tensor, targets: torch.Tensor) -> float:
    """Fraction of rows whose arg-max logit equals the target class."""
    checks.tensor("logits", logits, floating=True, ndim=2)
    checks.tensor("targets", targets, ndim=1)
    if len(logits) != len(targets):
        raise ValueError(f"logits and targets must have the same length, got {len(logits)} and "
                         f"{len(targets)}")
    if logits.shape[1] < 2:
        raise ValueError(f"logits must have one column per class and at least 2 classes, got "
                         f"shape {tuple(logits.shape)} (for one logit per row, compare "
                         f"(logits[:, 0] > 0) with the 0/1 targets)")
    checks.class_indices("targets", targets, logits.shape[1])
    return (logits.argmax(dim=1) == targets).float().mean().item()


def _binary(name: str, x: torch.Tensor) -> None:
    checks.tensor(name, x, floating=True, ndim=2)
    if not bool(((x == 0) | (x == 1)).all()):
        raise ValueError(f"{name} must hold binary pixels (0.0 or 1.0) for a Bernoulli "
                         f"likelihood; binarise it first (e.g. data.digits(binarize=0.5))")


def independent_bernoulli_nll(train: torch.Tensor, test: torch.Tensor,
                              pseudocount: float = 0.0) -> torch.Tensor:
    r"""Per-image NLL (nats) of ``test`` under independent Bernoulli pixels fitted to ``train``
    (the baseline of chapter 3).

    Pixel :math:`i` gets :math:`\hat p_i = (\sum_n x^{\text{train}}_{n,i} + a)/(N + 2a)` with
    pseudocount :math:`a`; :math:`a = 0` is the maximum-likelihood fit (the fraction of training
    images with the pixel on). Each test image scores

    .. math:: -\log p(x) = -\sum_i \left[x_i \log\hat p_i + (1-x_i)\log(1-\hat p_i)\right],

    with :math:`0\log 0 = 0`; it is infinite if a test pixel takes a value never seen in training
    and :math:`a = 0`. ``train`` is ``(N, D)``, ``test`` is ``(M, D)``, both binary.
    """
    _binary("train", train)
    _binary("test", test)
    if train.shape[1] != test.shape[1]:
        raise ValueError(f"train and test must have the same number of pixels, got "
                         f"{train.shape[1]} and {test.shape[1]}")
    checks.positive_number("pseudocount", pseudocount, allow_zero=True)
    train, test = train.double(), test.double()
    p = (train.sum(0) + pseudocount) / (len(train) + 2 * pseudocount)
    return -(torch.special.xlogy(test, p) + torch.special.xlogy(1 - test, 1 - p)).sum(1)


def _log_weights(model: torch.nn.Module, x: torch.Tensor, k: int, chunk: int,
                 generator: torch.Generator | None, labels: torch.Tensor | None,
                 posterior: tuple[torch.Tensor, torch.Tensor] | None) -> list[torch.Tensor]:
    r"""Groups of log importance weights :math:`\log w_j = \log p(x\mid z_j) + \log p(z_j)
    - \log q(z_j\mid x)`, each ``(k, b)``, for :func:`importance_sampled_nll` and
    :func:`negative_elbo`."""
    if not (callable(getattr(model, "encode", None)) and callable(getattr(model, "decode", None))):
        raise TypeError(f"model must have encode(x) -> (mu, logvar) and decode(z) -> logits "
                        f"methods, got {type(model).__name__}")
    _binary("x", x)
    checks.positive_number("k", k, integer=True)
    checks.positive_number("chunk", chunk, integer=True)
    if labels is not None:
        checks.tensor("labels", labels, ndim=1)
        if len(labels) != len(x):
            raise ValueError(f"labels must have one entry per image, got {len(labels)} for "
                             f"{len(x)} images")
    if posterior is not None:
        if not (isinstance(posterior, tuple) and len(posterior) == 2):
            raise TypeError("posterior must be a tuple (mu, logvar) of (B, d) tensors")
        for name, t in zip(("posterior mu", "posterior logvar"), posterior):
            checks.tensor(name, t, floating=True, ndim=2)
            if len(t) != len(x):
                raise ValueError(f"{name} must have one row per image, got {len(t)} for "
                                 f"{len(x)} images")
    device = next(model.parameters()).device
    group = max(1, chunk // (k * x.shape[1]))
    out = []
    log_2pi = math.log(2 * math.pi)
    with runtime.eval_mode(model):
        for start in range(0, len(x), group):
            part = slice(start, start + group)
            xb = x[part].to(device)
            yb = None if labels is None else labels[part].to(device)
            if posterior is None:
                mu, logvar = vae.encode(model, xb, yb)                     # (b, d)
            else:
                mu, logvar = (t[part].to(device) for t in posterior)
            eps = torch.randn((k, *mu.shape), generator=generator, device=device, dtype=mu.dtype)
            z = mu + torch.exp(0.5 * logvar) * eps                          # (k, b, d)
            log_px_z = vae.log_likelihood(model, xb, z, yb)                 # (k, b)
            log_pz = -0.5 * (z ** 2 + log_2pi).sum(-1)
            log_qz = -0.5 * (eps ** 2 + logvar + log_2pi).sum(-1)
            out.append((log_px_z + log_pz - log_qz).double())
    return out


@torch.no_grad()
def importance_sampled_nll(model: torch.nn.Module, x: torch.Tensor, k: int = 1000,
                           chunk: int = 4_000_000,
                           generator: torch.Generator | None = None,
                           labels: torch.Tensor | None = None,
                           posterior: tuple[torch.Tensor, torch.Tensor] | None = None
                           ) -> torch.Tensor:
    r"""Per-image estimate (nats) of :math:`-\log p(x)` for a VAE with a Bernoulli decoder, by
    importance sampling with the encoder as proposal (chapter 3; Burda et al. 2016).

    With :math:`z_1, \dots, z_k \sim q(z\mid x)` and weights
    :math:`w_j = p(x\mid z_j)\,p(z_j)/q(z_j\mid x)`,

    .. math:: -\log p(x) \approx -\log\frac1k\sum_{j=1}^k w_j
              = -\left(\operatorname{logsumexp}_j \log w_j - \log k\right).

    Its expectation is an upper bound on :math:`-\log p(x)` that decreases with :math:`k`, equals
    the negative ELBO at :math:`k = 1`, and tends to :math:`-\log p(x)` as
    :math:`k \to \infty`. ``model`` needs ``encode(x) -> (mu, logvar)`` and
    ``decode(z) -> logits`` (:class:`aigc_lib.models.vae.VAE`; a
    :class:`~aigc_lib.models.vae.ConditionalVAE` with ``labels``, which estimates
    :math:`-\log p(x\mid y)`; an :class:`~aigc_lib.models.vae.AutoregressiveVAE`); ``x`` is
    ``(B, D)`` binary. ``posterior=(mu, logvar)`` replaces the encoder's proposal by given
    Gaussians (e.g. from :func:`aigc_lib.models.vae.optimise_posterior`). The ``k`` samples of
    each image are decoded in one batch; images are processed in groups so that at most about
    ``chunk`` logits exist at once.
    """
    log_w = _log_weights(model, x, k, chunk, generator, labels, posterior)
    return torch.cat([-(torch.logsumexp(w, dim=0) - math.log(k)) for w in log_w]).cpu()


@torch.no_grad()
def negative_elbo(model: torch.nn.Module, x: torch.Tensor, k: int = 100,
                  chunk: int = 4_000_000, generator: torch.Generator | None = None,
                  labels: torch.Tensor | None = None,
                  posterior: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
    r"""Per-image Monte-Carlo estimate (nats) of the negative ELBO,
    :math:`-\frac1k\sum_{j=1}^k \log w_j` with the weights of :func:`importance_sampled_nll`
    (chapter 3): an unbiased estimate of
    :math:`\mathbb E_q[-\log p(x\mid z)] + \mathrm{KL}(q\,\|\,p)`, whose difference from the
    importance-sampled NLL estimates how loose the bound is for this :math:`q`. Same arguments
    as :func:`importance_sampled_nll`."""
    log_w = _log_weights(model, x, k, chunk, generator, labels, posterior)
    return torch.cat([-w.mean(dim=0) for w in log_w]).cpu()


def latent_activity(mu: torch.Tensor) -> torch.Tensor:
    r"""Activity of each latent unit (chapter 3; Burda et al. 2016): the variance over images of
    the posterior mean,

    .. math:: A_u = \operatorname{Cov}_x\big(\mathbb E_{q(z\mid x)}[z_u]\big)
              = \frac1{N-1}\sum_{n=1}^{N}\big(\mu_u(x_n) - \bar\mu_u\big)^2 .

    A unit whose mean does not move with the image carries no information about it.
    ``mu`` is ``(N, d)`` with :math:`N \ge 2`; returns ``(d,)``."""
    checks.tensor("mu", mu, floating=True, ndim=2)
    if len(mu) < 2:
        raise ValueError(f"mu must hold at least 2 images (rows) to have a variance, got {len(mu)}")
    return mu.double().var(dim=0, unbiased=True)


def active_units(mu: torch.Tensor, threshold: float = 0.01) -> int:
    r"""Number of latent units whose activity :math:`A_u` (:func:`latent_activity`) exceeds
    ``threshold`` (Burda et al. 2016 use :math:`10^{-2}`)."""
    checks.positive_number("threshold", threshold)
    return int((latent_activity(mu) > threshold).sum())


@torch.no_grad()
def latent_mutual_information(mu: torch.Tensor, logvar: torch.Tensor, samples: int = 10,
                              generator: torch.Generator | None = None) -> float:
    r"""Mutual information :math:`I_q(x; z)` (nats) between the images and their codes under the
    encoder's joint :math:`q(x, z) = \hat p(x)\,q(z\mid x)`, with :math:`\hat p` uniform over
    the :math:`N` images whose posteriors are ``(mu, logvar)`` (chapter 3):

    .. math:: I_q(x; z) = \frac1N\sum_{n=1}^N \mathbb E_{z\sim q(z\mid x_n)}\Big[\log q(z\mid x_n)
              - \log \frac1N\sum_{m=1}^N q(z\mid x_m)\Big].

    The aggregate posterior :math:`q(z) = \frac1N\sum_m q(z\mid x_m)` is computed exactly; the
    expectation uses ``samples`` draws per image (``eps`` of shape ``(samples, N, d)`` from
    ``generator``). It lies in :math:`[0, \log N]`, and the rate
    :math:`R = \frac1N\sum_n \mathrm{KL}(q(z\mid x_n)\,\|\,p(z)) = I_q(x; z)
    + \mathrm{KL}(q(z)\,\|\,p(z))` bounds it from above (Hoffman & Johnson 2016). Costs
    :math:`O(N^2 d)` per draw."""
    checks.tensor("mu", mu, floating=True, ndim=2)
    checks.tensor("logvar", logvar, floating=True, ndim=2)
    checks.same_shape("mu", mu, "logvar", logvar)
    checks.positive_number("samples", samples, integer=True)
    mu, logvar = mu.double(), logvar.double()
    n, d = mu.shape
    eps = torch.randn((samples, n, d), generator=generator, dtype=torch.float64,
                      device=mu.device)
    z = mu + (0.5 * logvar).exp() * eps                                     # (S, N, d)
    log_2pi = math.log(2 * math.pi)
    own = -0.5 * (eps ** 2 + logvar + log_2pi).sum(-1)                      # log q(z|x_n)
    # log q(z|x_m) for every draw z and image m, expanding the square into two matrix products:
    # -1/2 [ z^2 . (1/v_m) - 2 z . (mu_m / v_m) + sum_j (mu_mj^2 / v_mj + log v_mj + log 2 pi) ]
    inv_var = (-logvar).exp()                                               # (N, d)
    const = (mu ** 2 * inv_var + logvar + log_2pi).sum(-1)                  # (N,)
    flat, rows = z.reshape(-1, d), max(1, 2 ** 22 // n)                     # (S N, d)
    aggregate = torch.cat([torch.logsumexp(-0.5 * (
        (block ** 2) @ inv_var.T - 2 * block @ (mu * inv_var).T + const), dim=1)
        for block in flat.split(rows)]) - math.log(n)                       # log q(z)
    return (own - aggregate.view(samples, n)).mean().item()


def macro_f1(targets: torch.Tensor, predictions: torch.Tensor,
             num_classes: int | None = None) -> float:
    r"""Macro-averaged F1 of class predictions (chapters 9 and 10): the mean over classes of
    :math:`F_1^{(c)} = 2\,\mathrm{TP}_c / (2\,\mathrm{TP}_c + \mathrm{FP}_c + \mathrm{FN}_c)`,
    a class that is neither present nor predicted counting as 0 (scikit-learn's
    ``f1_score(average="macro", zero_division=0)`` over the classes that occur in either).

    Fast enough to recompute on thousands of bootstrap resamples (:func:`bootstrap_ci`).
    """
    targets, predictions = torch.as_tensor(targets), torch.as_tensor(predictions)
    for name, value in (("targets", targets), ("predictions", predictions)):
        checks.tensor(name, value, ndim=1)
        checks.class_indices(name, value)
    checks.same_shape("targets", targets, "predictions", predictions)
    if len(targets) == 0:
        raise ValueError("targets must not be empty")
    size = int(max(targets.max(), predictions.max())) + 1
    if num_classes is not None:
        checks.positive_number("num_classes", num_classes, integer=True)
        if size > num_classes:
            raise ValueError(f"class index {size - 1} is outside num_classes={num_classes}")
        size = num_classes
    true = torch.bincount(targets, minlength=size).double()
    predicted = torch.bincount(predictions, minlength=size).double()
    hits = torch.bincount(targets[targets == predictions], minlength=size).double()
    seen = (true + predicted) > 0
    f1 = 2 * hits[seen] / (true[seen] + predicted[seen])
    return float(f1.mean())


# ------------------------------------------------- bits per byte and compression (chapter 7)

COMPRESSORS = ("gzip", "bz2", "xz")


def bits_per_byte(total_nll_nats: float, n_bytes: int) -> float:
    r"""Code length per byte of text: :math:`\text{bpb} = \frac{-\sum_t \ln p(x_t \mid x_{<t})}
    {\ln 2 \cdot n_\text{bytes}}` (chapter 7).

    A model that assigns the text probability :math:`p` can encode it in
    :math:`-\log_2 p` bits (arithmetic coding), whatever its tokens are; dividing by the text's
    UTF-8 length makes models with different vocabularies, and compressors, comparable.
    Perplexity per token is not (chapter 1).
    """
    if isinstance(total_nll_nats, bool) or not isinstance(total_nll_nats, (int, float)):
        raise TypeError(f"total_nll_nats must be a number, got {type(total_nll_nats).__name__}")
    if not math.isfinite(total_nll_nats) or total_nll_nats < 0:
        raise ValueError(f"total_nll_nats must be finite and >= 0, got {total_nll_nats!r}")
    checks.positive_number("n_bytes", n_bytes, integer=True)
    return total_nll_nats / (math.log(2) * n_bytes)


def _compress(data: bytes, method: str) -> int:
    import bz2
    import lzma
    import zlib

    if method == "gzip":
        return len(zlib.compress(data, 9))   # DEFLATE, as gzip -9 (without gzip's 18-byte header)
    if method == "bz2":
        return len(bz2.compress(data, 9))
    return len(lzma.compress(data, preset=9 | lzma.PRESET_EXTREME))


def compression_bits_per_byte(test: str | bytes, method: str, context: str | bytes = b"") -> float:
    r"""Bits per byte that a standard compressor needs for ``test`` after having seen ``context``:

    .. math:: \text{bpb} = 8\,\frac{|C(\text{context} + \text{test})| - |C(\text{context})|}
              {|\text{test}|}

    with :math:`|C(\cdot)|` the compressed size in bytes (chapter 7). With the training text as
    ``context`` this is the compressor's counterpart of a model's held-out bits per byte. How much
    of the context a compressor can use is its own limit: gzip's window is 32 KB, bz2 works in
    blocks of 900 KB, xz (LZMA, preset ``9e``) has a 64 MB dictionary. ``method`` is ``"gzip"``,
    ``"bz2"`` or ``"xz"``.
    """
    if method not in COMPRESSORS:
        raise ValueError(f"method must be one of {COMPRESSORS}, got {method!r}")
    test_bytes = test.encode() if isinstance(test, str) else test
    context_bytes = context.encode() if isinstance(context, str) else context
    if not isinstance(test_bytes, bytes) or not isinstance(context_bytes, bytes):
        raise TypeError("test and context must be str or bytes")
    if not test_bytes:
        raise ValueError("test must not be empty")
    base = _compress(context_bytes, method) if context_bytes else 0
    return 8 * (_compress(context_bytes + test_bytes, method) - base) / len(test_bytes)


# ------------------------------------------------------------ calibration (chapter 12)

def calibration_bins(confidence: torch.Tensor, correct: torch.Tensor,
                     n_bins: int = 10) -> list[tuple[float, float, int]]:
    r"""Reliability-diagram bins: ``(mean confidence, accuracy, count)`` for each non-empty bin.

    Predictions are grouped by their confidence into ``n_bins`` equal-width bins of
    :math:`(0, 1]` (bin :math:`b` holds :math:`(b-1)/B < c \le b/B`; a confidence of 0 goes
    to the first bin).
    """
    checks.tensor("confidence", confidence, floating=True, ndim=1)
    checks.in_unit_interval("confidence", confidence)
    checks.tensor("correct", correct, ndim=1)
    checks.same_shape("confidence", confidence, "correct", correct)
    if len(confidence) == 0:
        raise ValueError("confidence must not be empty")
    if not bool(((correct == 0) | (correct == 1)).all()):
        raise ValueError("correct must hold only 0/1 or False/True")
    checks.positive_number("n_bins", n_bins, integer=True)
    conf = confidence.double()
    hits = correct.double()
    index = (torch.ceil(conf * n_bins).long() - 1).clamp(0, n_bins - 1)
    out = []
    for b in range(n_bins):
        in_bin = index == b
        count = int(in_bin.sum())
        if count:
            out.append((conf[in_bin].mean().item(), hits[in_bin].mean().item(), count))
    return out


def expected_calibration_error(confidence: torch.Tensor, correct: torch.Tensor,
                               n_bins: int = 10) -> float:
    r"""ECE :math:`= \sum_b \frac{n_b}{N}\,\lvert \mathrm{acc}_b - \mathrm{conf}_b\rvert` over
    the bins of :func:`calibration_bins` (chapter 12): how far, on average over predictions,
    the stated confidence is from the accuracy actually achieved at that confidence."""
    bins = calibration_bins(confidence, correct, n_bins)
    total = sum(count for _, _, count in bins)
    return sum(count / total * abs(acc - conf) for conf, acc, count in bins)


# --- Chapter 4: Fréchet distance and mode coverage ----------------------------------------------

def _sqrtm_psd(a: torch.Tensor) -> torch.Tensor:
    """Symmetric square root of a symmetric positive semi-definite matrix, by eigendecomposition
    (eigenvalues below zero, from rounding, are clamped to zero)."""
    w, v = torch.linalg.eigh(a)
    return (v * w.clamp(min=0).sqrt()) @ v.T


def frechet_distance_gaussians(mu_a: torch.Tensor, cov_a: torch.Tensor, mu_b: torch.Tensor,
                               cov_b: torch.Tensor) -> float:
    r"""Fréchet (2-Wasserstein squared) distance between :math:`\mathcal N(\mu_a, \Sigma_a)`
    and :math:`\mathcal N(\mu_b, \Sigma_b)` (Dowson and Landau 1982; chapter 4):

    .. math:: d^2 = \lVert\mu_a - \mu_b\rVert_2^2 + \operatorname{tr}\Big(\Sigma_a + \Sigma_b
              - 2\big(\Sigma_a^{1/2}\Sigma_b\Sigma_a^{1/2}\big)^{1/2}\Big).

    The trace term equals :math:`\operatorname{tr}(\Sigma_a\Sigma_b)^{1/2}`, the form printed in
    the FID paper (Heusel et al. 2017); the symmetric form used here needs only eigenvalues of
    symmetric matrices, so it is computed exactly in float64 without a general matrix square
    root. Means are ``(d,)``, covariances ``(d, d)`` symmetric positive semi-definite.
    """
    for name, value in (("mu_a", mu_a), ("mu_b", mu_b)):
        checks.tensor(name, value, floating=True, ndim=1)
    for name, value in (("cov_a", cov_a), ("cov_b", cov_b)):
        checks.tensor(name, value, floating=True, ndim=2)
    d = len(mu_a)
    for name, value in (("mu_b", mu_b), ("cov_a", cov_a), ("cov_b", cov_b)):
        wanted = (d,) if value.ndim == 1 else (d, d)
        if tuple(value.shape) != wanted:
            raise ValueError(f"{name} must have shape {wanted} to match mu_a, got "
                             f"{tuple(value.shape)}")
    mu_a, mu_b, cov_a, cov_b = (t.double() for t in (mu_a, mu_b, cov_a, cov_b))
    for name, value in (("cov_a", cov_a), ("cov_b", cov_b)):
        if not torch.allclose(value, value.T, rtol=1e-6, atol=1e-8 * float(value.abs().max())):
            raise ValueError(f"{name} must be symmetric")
        if float(torch.linalg.eigvalsh(value).min()) < -1e-6 * float(value.abs().max()):
            raise ValueError(f"{name} must be positive semi-definite")
    root_a = _sqrtm_psd(cov_a)
    middle = root_a @ cov_b @ root_a
    trace_root = torch.linalg.eigvalsh((middle + middle.T) / 2).clamp(min=0).sqrt().sum()
    value = (mu_a - mu_b).square().sum() + cov_a.trace() + cov_b.trace() - 2 * trace_root
    return max(float(value), 0.0)


def frechet_distance(features_a: torch.Tensor, features_b: torch.Tensor) -> float:
    r"""Fréchet distance between two sets of feature vectors (rows), each summarised by its mean
    and covariance (chapter 4): :func:`frechet_distance_gaussians` of
    :math:`(\hat\mu_a, \hat\Sigma_a)` and :math:`(\hat\mu_b, \hat\Sigma_b)`, with unbiased
    covariances :math:`\hat\Sigma = \frac{1}{N-1}\sum_i (f_i - \hat\mu)(f_i - \hat\mu)^\top`.

    With Inception-v3 features this is the FID; this book uses the features of its own digit
    classifier, so its numbers are on a different scale. The estimate is biased upwards for
    finite samples (it is positive even for two samples of one distribution), and the bias
    depends on the sample sizes: compare distances computed with equal sizes. ``features_a``
    is ``(N, d)`` and ``features_b`` is ``(M, d)``, with :math:`N, M \ge 2`; float64 inside.
    """
    checks.tensor("features_a", features_a, floating=True, ndim=2)
    checks.tensor("features_b", features_b, floating=True, ndim=2)
    if features_a.shape[1] != features_b.shape[1]:
        raise ValueError(f"features_a and features_b must have the same number of columns "
                         f"(features), got {features_a.shape[1]} and {features_b.shape[1]}")
    for name, value in (("features_a", features_a), ("features_b", features_b)):
        if len(value) < 2:
            raise ValueError(f"{name} needs at least 2 rows to estimate a covariance, got "
                             f"{len(value)}")
    stats = []
    for f in (features_a.double().cpu(), features_b.double().cpu()):
        stats += [f.mean(0), torch.cov(f.T).reshape(f.shape[1], f.shape[1])]
    return frechet_distance_gaussians(*stats)


@dataclass(frozen=True)
class ModeCoverage:
    """The result of :func:`mode_coverage`: ``modes_covered`` of ``n_modes``, the fraction of
    samples that are ``high_quality``, and the number of high-quality samples per mode."""
    modes_covered: int
    n_modes: int
    high_quality: float
    counts: tuple[int, ...]


def mode_coverage(samples: torch.Tensor, centers: torch.Tensor, std: float,
                  threshold: float = 3.0, min_count: int = 1) -> ModeCoverage:
    r"""Mode-collapse metrics for a mixture of isotropic Gaussians with known centres
    (chapter 4; the definitions of the VEEGAN paper, Srivastava et al. 2017).

    A sample :math:`x` is **high quality** if it lies within ``threshold`` standard deviations
    of its nearest centre, :math:`\min_k \lVert x - \mu_k\rVert_2 \le t\,\sigma`. A mode is
    **covered** if at least ``min_count`` high-quality samples have it as nearest centre
    (``min_count=1`` is VEEGAN's definition). ``samples`` is ``(N, d)``, ``centers`` ``(K, d)``.
    """
    checks.tensor("samples", samples, floating=True, ndim=2)
    checks.tensor("centers", centers, floating=True, ndim=2)
    if samples.shape[1] != centers.shape[1]:
        raise ValueError(f"samples and centers must have the same number of columns, got "
                         f"{samples.shape[1]} and {centers.shape[1]}")
    if len(samples) == 0 or len(centers) == 0:
        raise ValueError("samples and centers must not be empty")
    checks.positive_number("std", std)
    checks.positive_number("threshold", threshold)
    checks.positive_number("min_count", min_count, integer=True)
    dist = torch.cdist(samples.double().cpu(), centers.double().cpu())
    nearest_dist, nearest = dist.min(1)
    good = nearest_dist <= threshold * std
    counts = torch.bincount(nearest[good], minlength=len(centers))
    return ModeCoverage(modes_covered=int((counts >= min_count).sum()), n_modes=len(centers),
                        high_quality=float(good.double().mean()),
                        counts=tuple(int(c) for c in counts))


@dataclass(frozen=True)
class PrecisionRecall:
    """The result of :func:`precision_recall`: ``precision`` (share of generated samples inside
    the real manifold) and ``recall`` (share of real samples inside the generated manifold),
    estimated with ``k`` nearest neighbours."""
    precision: float
    recall: float
    k: int


def knn_radii(features: torch.Tensor, k: int, chunk: int = 1024) -> torch.Tensor:
    r"""Distance from each row of ``features`` (``(N, d)``) to its ``k``-th nearest *other* row
    (chapter 4): the radius of the ball that :func:`precision_recall` puts around each point.
    Needs :math:`N > k`; float64 inside."""
    checks.tensor("features", features, floating=True, ndim=2)
    checks.positive_number("k", k, integer=True)
    if len(features) <= k:
        raise ValueError(f"features needs more than k={k} rows, got {len(features)}")
    f = features.double().cpu()
    radii = []
    for start in range(0, len(f), chunk):   # the k+1-th smallest: the 1st is the point itself
        dist = torch.cdist(f[start:start + chunk], f)
        radii.append(dist.kthvalue(k + 1, dim=1).values)
    return torch.cat(radii)


def _inside_manifold(queries: torch.Tensor, points: torch.Tensor, radii: torch.Tensor,
                     chunk: int) -> torch.Tensor:
    """For each query: is it within ``radii[i]`` of some ``points[i]``?"""
    inside = []
    for start in range(0, len(queries), chunk):
        dist = torch.cdist(queries[start:start + chunk], points)
        inside.append((dist <= radii[None, :]).any(dim=1))
    return torch.cat(inside)


def precision_recall(real_features: torch.Tensor, fake_features: torch.Tensor, k: int = 3,
                     chunk: int = 1024) -> PrecisionRecall:
    r"""Improved precision and recall of a generative model (Kynkäänniemi et al. 2019;
    chapter 4), from features of real samples :math:`\Phi_r` and generated samples
    :math:`\Phi_g` (rows).

    Each set approximates its manifold by a union of balls, one around every point
    :math:`\phi` with radius :math:`\mathrm{NN}_k(\phi)`, the distance to its ``k``-th nearest
    neighbour in the same set: :math:`f(\psi, \Phi) = 1` if
    :math:`\lVert\psi - \phi\rVert_2 \le \mathrm{NN}_k(\phi)` for some :math:`\phi \in \Phi`.
    Then

    .. math:: \mathrm{precision} = \frac{1}{|\Phi_g|}\sum_{\psi\in\Phi_g} f(\psi, \Phi_r),
              \qquad
              \mathrm{recall} = \frac{1}{|\Phi_r|}\sum_{\phi\in\Phi_r} f(\phi, \Phi_g).

    Precision asks whether generated samples look real (a generator that copies one mode
    scores high); recall asks whether the real data is covered (a generator that smears its
    samples everywhere scores high). The paper uses ``k = 3`` and equal set sizes; both
    estimates depend on the set sizes, so compare values computed with equal sizes. Float64
    inside; ``chunk`` rows of distances at a time.
    """
    checks.tensor("real_features", real_features, floating=True, ndim=2)
    checks.tensor("fake_features", fake_features, floating=True, ndim=2)
    if real_features.shape[1] != fake_features.shape[1]:
        raise ValueError(f"real_features and fake_features must have the same number of "
                         f"columns (features), got {real_features.shape[1]} and "
                         f"{fake_features.shape[1]}")
    checks.positive_number("k", k, integer=True)
    checks.positive_number("chunk", chunk, integer=True)
    for name, value in (("real_features", real_features), ("fake_features", fake_features)):
        if len(value) <= k:
            raise ValueError(f"{name} needs more than k={k} rows, got {len(value)}")
    real, fake = real_features.double().cpu(), fake_features.double().cpu()
    precision = _inside_manifold(fake, real, knn_radii(real, k, chunk), chunk)
    recall = _inside_manifold(real, fake, knn_radii(fake, k, chunk), chunk)
    return PrecisionRecall(precision=float(precision.double().mean()),
                           recall=float(recall.double().mean()), k=k)


# --- Spreads: bootstrap intervals over a test set (chapters 8, 9, 12) -----------------------------

@dataclass(frozen=True)
class Interval:
    """A statistic on the full sample and its bootstrap ``confidence`` interval."""

    estimate: float
    low: float
    high: float
    confidence: float

    def excludes(self, value: float = 0.0) -> bool:
        """True when ``value`` lies outside ``[low, high]``."""
        return not self.low <= value <= self.high

    def __str__(self) -> str:
        return (f"{self.estimate:.4g} [{self.low:.4g}, {self.high:.4g}] "
                f"({self.confidence:.0%} bootstrap)")


def _bootstrap_inputs(arrays: tuple) -> tuple:
    if not arrays:
        raise ValueError("arrays: give at least one array (the per-example data)")
    out = []
    for i, a in enumerate(arrays):
        if not isinstance(a, torch.Tensor):
            a = torch.as_tensor(a)
        if a.ndim == 0:
            raise ValueError(f"arrays[{i}] must have a first dimension (one row per example), "
                             f"got a scalar")
        out.append(a)
    sizes = {len(a) for a in out}
    if len(sizes) != 1:
        raise ValueError(f"arrays must share their first dimension (paired examples), got "
                         f"lengths {[len(a) for a in out]}")
    if sizes == {0}:
        raise ValueError("arrays must not be empty")
    return tuple(out)


def bootstrap_ci(statistic, *arrays, n_resamples: int = 1000, confidence: float = 0.95,
                 seed: int = 0) -> Interval:
    r"""Percentile bootstrap interval of ``statistic(*arrays)`` over the examples.

    The examples (rows of every array, *paired*: one index draws row :math:`i` of each) are
    resampled with replacement ``n_resamples`` times; the interval is the
    :math:`(1-c)/2` and :math:`(1+c)/2` quantiles of the statistic over the resamples
    (Efron and Tibshirani 1993). For a difference between two models scored on the same test
    set, let ``statistic`` return the difference (see :func:`paired_bootstrap_difference`):
    resampling the pairs keeps the correlation between the two scores, which makes the interval
    of the difference much narrower than two separate intervals would suggest. Only the test
    sample varies here; when training varies too, use seeds.
    """
    if not callable(statistic):
        raise TypeError(f"statistic must be callable, got {type(statistic).__name__}")
    checks.positive_number("n_resamples", n_resamples, integer=True)
    checks.confidence(confidence)
    checks.positive_number("seed", seed, integer=True, allow_zero=True)
    arrays = _bootstrap_inputs(arrays)
    n = len(arrays[0])
    estimate = float(statistic(*arrays))
    rng = torch.Generator().manual_seed(seed)
    values = torch.tensor([float(statistic(*(a[idx] for a in arrays)))
                           for idx in torch.randint(0, n, (n_resamples, n), generator=rng)],
                          dtype=torch.float64)
    if not bool(torch.isfinite(values).all()):
        raise ValueError("statistic returned NaN or infinite values on a resample")
    tail = (1 - confidence) / 2
    low, high = torch.quantile(values, torch.tensor([tail, 1 - tail], dtype=torch.float64))
    return Interval(estimate, float(low), float(high), float(confidence))


def paired_bootstrap_difference(metric, targets, predictions_a, predictions_b,
                                **kwargs) -> Interval:
    """Bootstrap interval of ``metric(targets, a) - metric(targets, b)`` over the test examples,
    resampling the (target, a, b) triples together (:func:`bootstrap_ci`)."""
    if not callable(metric):
        raise TypeError(f"metric must be callable, got {type(metric).__name__}")
    return bootstrap_ci(lambda y, a, b: metric(y, a) - metric(y, b), targets, predictions_a,
                        predictions_b, **kwargs)


# --- Chapter 8: metrics of generated answers against reference answers --------------------------

def _answers(name: str, hypotheses: object, references: object) -> list[list[str]]:
    """Check ``hypotheses`` (str per example) and ``references`` (a str or a non-empty list of
    str per example: any reference may be matched); return the references as lists."""
    if isinstance(hypotheses, str) or not isinstance(hypotheses, (list, tuple)) or \
            not all(isinstance(h, str) for h in hypotheses):
        raise TypeError("hypotheses must be a list of str")
    if isinstance(references, str) or not isinstance(references, (list, tuple)):
        raise TypeError("references must be a list with a str or a list of str per hypothesis")
    if len(hypotheses) != len(references) or not hypotheses:
        raise ValueError(f"hypotheses and references must be non-empty and equally long, got "
                         f"{len(hypotheses)} and {len(references)} ({name})")
    out = []
    for i, refs in enumerate(references):
        refs = [refs] if isinstance(refs, str) else refs
        if not isinstance(refs, (list, tuple)) or not refs or \
                not all(isinstance(r, str) for r in refs):
            raise TypeError(f"references[{i}] must be a str or a non-empty list of str")
        out.append(list(refs))
    return out


def chrf(hypotheses: list[str], references: list) -> torch.Tensor:
    r"""Sentence-level chrF (Popović 2015) of each hypothesis against its reference(s), in
    [0, 100], as computed by ``sacrebleu.sentence_chrf`` (character n-grams up to 6, recall
    weighted :math:`\beta = 2`: :math:`F_\beta = (1+\beta^2)PR/(\beta^2P + R)`, averaged over
    n-gram orders). With several references the best-matching one counts (chapter 8).
    Returns ``(N,)`` float64."""
    from sacrebleu.metrics import CHRF

    refs = _answers("chrf", hypotheses, references)
    metric = CHRF()
    return torch.tensor([metric.sentence_score(h, r).score for h, r in zip(hypotheses, refs)],
                        dtype=torch.float64)


def exact_match(hypotheses: list[str], references: list) -> torch.Tensor:
    """1.0 where a hypothesis equals one of its references after
    :func:`aigc_lib.data.normalise_message` (case, punctuation and spacing ignored), else 0.0;
    ``(N,)`` float64 (chapter 8)."""
    from aigc_lib.data import normalise_message

    refs = _answers("exact_match", hypotheses, references)
    return torch.tensor([float(normalise_message(h) in {normalise_message(r) for r in rs})
                         for h, rs in zip(hypotheses, refs)], dtype=torch.float64)


def semantic_similarity(hypotheses: list[str], references: list, embed) -> torch.Tensor:
    r"""Cosine similarity :math:`\frac{u\cdot v}{\lVert u\rVert\,\lVert v\rVert}` between the
    sentence embeddings of each hypothesis and its reference(s) (the best one counts), with
    ``embed(texts) -> (n, d)`` tensor, e.g. all-MiniLM-L6-v2 (chapter 8). An empty
    hypothesis scores 0. Returns ``(N,)`` float64 in [-1, 1]."""
    if not callable(embed):
        raise TypeError(f"embed must be callable, got {type(embed).__name__}")
    refs = _answers("semantic_similarity", hypotheses, references)
    flat = [r for rs in refs for r in rs]
    vectors = embed(list(hypotheses) + flat)
    checks.tensor("embed(texts)", vectors, floating=True, ndim=2)
    if len(vectors) != len(hypotheses) + len(flat):
        raise ValueError(f"embed returned {len(vectors)} vectors for "
                         f"{len(hypotheses) + len(flat)} texts")
    unit = F.normalize(vectors.double(), dim=-1)
    hyp, ref = unit[:len(hypotheses)], unit[len(hypotheses):]
    out, start = [], 0
    for h, rs in zip(range(len(hypotheses)), refs):
        best = (ref[start:start + len(rs)] @ hyp[h]).max()
        out.append(best if hypotheses[h].strip() else best.new_zeros(()))
        start += len(rs)
    return torch.stack(out)
# --- Chapter 5: the independent-pixel baseline for grey levels -----------------------------------

def independent_categorical_nll(train: torch.Tensor, test: torch.Tensor, levels: int,
                                pseudocount: float = 1.0) -> torch.Tensor:
    r"""Per-image NLL (nats) of ``test`` under independent categorical pixels fitted to
    ``train`` (the baseline of chapter 5 for images with ``levels`` grey levels).

    Pixel :math:`i` takes level :math:`k` with probability
    :math:`\hat p_{ik} = (n_{ik} + a)/(N + K a)`, where :math:`n_{ik}` counts the training
    images with that level there, :math:`K` = ``levels`` and :math:`a` = ``pseudocount``
    (:math:`a = 0` is the maximum-likelihood fit, infinite on a level never seen in training);
    an image scores :math:`-\sum_i \log \hat p_{i, x_i}`. ``train`` ``(N, D)`` and ``test``
    ``(M, D)`` hold integer levels in :math:`[0, K)`."""
    checks.positive_number("levels", levels, integer=True)
    checks.positive_number("pseudocount", pseudocount, allow_zero=True)
    for name, value in (("train", train), ("test", test)):
        checks.tensor(name, value, ndim=2)
        if value.is_floating_point() or value.dtype == torch.bool:
            raise TypeError(f"{name} must hold integer levels, got dtype {value.dtype}")
        if bool(((value < 0) | (value >= levels)).any()):
            raise ValueError(f"{name} must hold levels in [0, {levels}), got values in "
                             f"[{int(value.min())}, {int(value.max())}]")
    if train.shape[1] != test.shape[1]:
        raise ValueError(f"train and test must have the same number of pixels, got "
                         f"{train.shape[1]} and {test.shape[1]}")
    counts = F.one_hot(train.long(), levels).sum(0).double()          # (D, K)
    p = (counts + pseudocount) / (len(train) + levels * pseudocount)
    picked = p.gather(1, test.long().T)                               # (D, M)
    return -torch.log(picked).sum(0)
