"""Chapter 3, beyond the plain VAE: the conditional VAE, the autoregressive (MADE) decoder, free
bits, latent activity (active units), the Monte-Carlo negative ELBO, per-image posterior
optimisation (the amortisation gap) and spherical interpolation. Each piece is checked against a
known case or a reference computation, its gradients by finite differences, and its bad inputs
by the error message."""
import math
import re

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from aigc_lib import losses, metrics
from aigc_lib.gradcheck import check_gradients
from aigc_lib.models.vae import (VAE, AutoregressiveDecoder, AutoregressiveVAE, ConditionalVAE,
                                 MaskedLinear, VAEConfig, log_likelihood, made_masks,
                                 optimise_posterior, reparameterize, slerp)

pytestmark = pytest.mark.usefixtures("one_thread")
normal = torch.distributions.Normal


def binary(*shape, seed=0, p=0.4):
    return (torch.rand(*shape, generator=torch.Generator().manual_seed(seed)) < p).float()


# --- free bits -------------------------------------------------------------------------------

def unit_kls(mu, logvar):
    """Batch-mean KL of each latent unit, from torch.distributions (the reference)."""
    q = normal(mu, (0.5 * logvar).exp())
    return torch.distributions.kl_divergence(q, normal(0.0, 1.0)).mean(0)


def free_bits_batch():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(4, 6, generator=g, dtype=torch.float64)
    targets = (torch.rand(4, 6, generator=g) < 0.5).double()
    mu = torch.randn(4, 3, generator=g, dtype=torch.float64) * torch.tensor([0.05, 1.0, 2.0])
    logvar = torch.randn(4, 3, generator=g, dtype=torch.float64) * 0.1
    return logits, targets, mu.double(), logvar


@pytest.mark.parametrize("beta", [1.0, 3.0])
def test_free_bits_clamps_each_units_batch_kl(beta):
    logits, targets, mu, logvar = free_bits_batch()
    kls = unit_kls(mu, logvar)
    lam = float(kls.sort().values[1:].mean())  # between the units: some below, some above
    assert (kls < lam).any() and (kls > lam).any()
    loss, terms = losses.vae_loss(logits, targets, mu, logvar, beta=beta, free_bits=lam)
    recon = F.binary_cross_entropy_with_logits(logits, targets, reduction="sum") / len(logits)
    torch.testing.assert_close(loss, recon + beta * kls.clamp(min=lam).sum())
    torch.testing.assert_close(terms["kl"], kls.sum())          # the true KL, not the clamped
    plain, _ = losses.vae_loss(logits, targets, mu, logvar, beta=beta, free_bits=0.0)
    torch.testing.assert_close(plain, losses.vae_loss(logits, targets, mu, logvar, beta=beta)[0])


def test_free_bits_gradients_and_free_units_get_no_push():
    logits, targets, mu, logvar = free_bits_batch()
    kls = unit_kls(mu, logvar)
    lam = float(kls.sort().values[1:].mean())
    report = check_gradients(lambda l, m, v: losses.vae_loss(l, targets, m, v, free_bits=lam)[0],
                             logits, mu, logvar, names=["logits", "mu", "logvar"])
    report.raise_if_failed()
    m, v = mu.clone().requires_grad_(), logvar.clone().requires_grad_()
    losses.vae_loss(logits, targets, m, v, free_bits=lam)[0].backward()
    free = kls < lam
    assert (m.grad[:, free] == 0).all() and (v.grad[:, free] == 0).all()
    torch.testing.assert_close(m.grad[:, ~free], mu[:, ~free] / len(mu))


@pytest.mark.parametrize("value, error, words", [
    (-0.1, ValueError, "free_bits must be >= 0"),
    ("0.5", TypeError, "free_bits must be a number"),
])
def test_free_bits_bad_input(value, error, words):
    logits, targets, mu, logvar = free_bits_batch()
    with pytest.raises(error, match=re.escape(words)):
        losses.vae_loss(logits, targets, mu, logvar, free_bits=value)


# --- latent activity and active units ---------------------------------------------------------

def test_latent_activity_is_the_variance_of_the_posterior_means():
    g = torch.Generator().manual_seed(0)
    mu = torch.randn(50, 4, generator=g) * torch.tensor([0.0, 0.05, 0.5, 2.0]) + 3.0
    activity = metrics.latent_activity(mu)
    reference = np.diag(np.cov(mu.numpy().astype(np.float64), rowvar=False))
    np.testing.assert_allclose(activity.numpy(), reference, rtol=1e-10, atol=1e-12)
    assert activity[0] == 0                                     # a constant unit is inactive
    assert metrics.active_units(mu) == 2                        # 0.05² = 0.0025 < 0.01 < 0.25
    assert metrics.active_units(mu, threshold=1e-3) == 3
    assert metrics.active_units(mu, threshold=10.0) == 0
    torch.testing.assert_close(metrics.latent_activity(mu + 5.0), activity)  # shift-invariant


@pytest.mark.parametrize("call, error, words", [
    (lambda: metrics.latent_activity(torch.zeros(1, 3)), ValueError, "at least 2 images"),
    (lambda: metrics.latent_activity(torch.zeros(5)), ValueError, "mu must have 2 dimensions"),
    (lambda: metrics.latent_activity(torch.zeros(5, 2, dtype=torch.long)), TypeError,
     "mu must be a floating"),
    (lambda: metrics.latent_activity(torch.full((3, 2), math.nan)), ValueError, "mu contains NaN"),
    (lambda: metrics.active_units(torch.zeros(3, 2), threshold=-1.0), ValueError,
     "threshold must be > 0"),
])
def test_latent_activity_bad_input(call, error, words):
    with pytest.raises(error, match=re.escape(words)):
        call()


# --- the conditional VAE ----------------------------------------------------------------------

def small_cvae(seed=0, x_dim=6, latent=2, classes=3):
    torch.manual_seed(seed)
    return ConditionalVAE(VAEConfig(x_dim=x_dim, latent_dim=latent, hidden=8, layers=1),
                          num_classes=classes)


def test_conditional_vae_reads_the_label_in_encoder_and_decoder():
    model = small_cvae()
    x, y = binary(5, 6), torch.tensor([0, 1, 2, 0, 1])
    logits, mu, logvar = model(x, y)
    assert logits.shape == (5, 6) and mu.shape == logvar.shape == (5, 2)
    one_hot = F.one_hot(y, 3).float()
    torch.testing.assert_close(model.encode(x, y), tuple(model.encoder(torch.cat([x, one_hot], 1))
                                                         .chunk(2, -1)))
    z = torch.randn(4, 5, 2)
    assert model.decode(z, y.expand(4, 5)).shape == (4, 5, 6)
    assert not torch.allclose(model.decode(z[0], y), model.decode(z[0], (y + 1) % 3))
    assert not torch.allclose(model.encode(x, y)[0], model.encode(x, (y + 1) % 3)[0])
    samples = model.sample(torch.tensor([2, 2, 0]), generator=torch.Generator().manual_seed(0))
    assert samples.shape == (3, 6) and ((samples > 0) & (samples < 1)).all()
    torch.testing.assert_close(model.reconstruct(x, y),
                               torch.sigmoid(model.decode(model.encode(x, y)[0], y)))


def test_conditional_vae_end_to_end_gradient_check_with_fixed_noise():
    model = small_cvae().double()
    x, y = binary(3, 6).double(), torch.tensor([2, 0, 1])
    eps = torch.randn(3, 2, dtype=torch.float64)
    first = model.encoder[0]

    def loss_of_first_layer(weight):
        h = F.linear(torch.cat([x, F.one_hot(y, 3).double()], 1), weight, first.bias)
        mu, logvar = model.encoder[2](F.silu(h)).chunk(2, dim=-1)
        logits = model.decode(reparameterize(mu, logvar, eps), y)
        return losses.vae_loss(logits, x, mu, logvar)[0]

    check_gradients(loss_of_first_layer, first.weight.detach(),
                    names=["encoder[0].weight"]).raise_if_failed()
    logits, mu, logvar = model(x, y)
    losses.vae_loss(logits, x, mu, logvar)[0].backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters())


def quadrature_log_marginal(log_px_given_z):
    """log ∫ p(x|z) N(z; 0, 1) dz for a 1-D latent, on a fine grid (the reference)."""
    z = torch.linspace(-12, 12, 24_001).unsqueeze(1)
    log_joint = log_px_given_z(z).double() + normal(0.0, 1.0).log_prob(z.double())
    return torch.logsumexp(log_joint, 0) + math.log(z[1, 0] - z[0, 0])


@torch.no_grad()
def test_conditional_importance_sampled_nll_converges_to_log_p_x_given_y():
    model = small_cvae(seed=3, latent=1)
    model.decoder[-1].weight.mul_(4.0)
    x, y = binary(4, 6, seed=1), torch.tensor([0, 1, 2, 1])
    exact = -quadrature_log_marginal(lambda z: log_likelihood(
        model, x, z.unsqueeze(1).expand(-1, len(x), -1), y))
    estimate = metrics.importance_sampled_nll(model, x, k=50_000, labels=y,
                                              generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(estimate, exact, rtol=0, atol=0.02)


@pytest.mark.parametrize("call, error, words", [
    (lambda m: m.encode(binary(2, 6), torch.tensor([0, 3])), ValueError, "y must be class indices in [0, 3)"),
    (lambda m: m.encode(binary(2, 6), torch.tensor([0.0, 1.0])), TypeError,
     "y must hold integer class indices"),
    (lambda m: m.encode(binary(2, 6), torch.tensor([0, 1, 2])), ValueError,
     "y must be a tensor of integer labels of shape (2,)"),
    (lambda m: m.decode(torch.zeros(2, 2), None), ValueError, "y must be a tensor"),
    (lambda m: m.sample(torch.tensor([[0, 1]])), ValueError, "labels must have 1 dimensions"),
    (lambda m: m.sample(torch.tensor([5])), ValueError, "y must be class indices in [0, 3)"),
    (lambda m: ConditionalVAE(num_classes=0), ValueError, "num_classes must be > 0"),
    (lambda m: metrics.importance_sampled_nll(m, binary(2, 6)), ValueError,
     "y (the labels of x) is required"),
    (lambda m: metrics.importance_sampled_nll(m, binary(2, 6), labels=torch.tensor([0])),
     ValueError, "labels must have one entry per image"),
])
def test_conditional_vae_bad_input(call, error, words):
    with pytest.raises(error, match=re.escape(words)):
        call(small_cvae())


# --- the autoregressive (MADE) decoder ---------------------------------------------------------

def test_masked_linear_equals_linear_with_a_masked_weight_and_passes_gradcheck():
    torch.manual_seed(0)
    mask = (torch.rand(4, 5) < 0.5).float()
    layer = MaskedLinear(mask).double()
    x = torch.randn(3, 5, dtype=torch.float64)
    torch.testing.assert_close(layer(x), F.linear(x, layer.weight * mask.double(), layer.bias))
    layer(x).sum().backward()
    assert (layer.weight.grad[mask == 0] == 0).all()
    check_gradients(lambda w, b, v: F.linear(v, w * layer.mask, b), layer.weight.detach(),
                    layer.bias.detach(), x, names=["weight", "bias", "x"]).raise_if_failed()
    torch.testing.assert_close(layer.state_dict()["mask"], mask.double())


def test_made_decoder_is_autoregressive_and_reads_z():
    torch.manual_seed(0)
    decoder = AutoregressiveDecoder(x_dim=7, latent_dim=3, hidden=20, layers=2).double()
    x, z = binary(1, 7).double(), torch.randn(1, 3, dtype=torch.float64)
    jac_x = torch.autograd.functional.jacobian(lambda v: decoder(z, v)[0], x)[:, 0]   # (7, 7)
    allowed = torch.tril(torch.ones(7, 7), diagonal=-1).bool()                        # j < i
    assert (jac_x[~allowed] == 0).all()        # logit i does not see x_i or any later pixel
    assert (jac_x[allowed] != 0).all()         # and sees every earlier pixel
    jac_z = torch.autograd.functional.jacobian(lambda v: decoder(v, x)[0], z)[:, 0]
    assert (jac_z.abs().sum(1) > 0).all()      # every logit, the first included, reads z
    masks = made_masks(7, 20, 2)
    assert [tuple(m.shape) for m in masks] == [(20, 7), (20, 20), (7, 20)]


def test_autoregressive_vae_likelihood_and_gradients():
    torch.manual_seed(0)
    model = AutoregressiveVAE(VAEConfig(x_dim=5, latent_dim=2, hidden=8, layers=1)).double()
    x = binary(3, 5).double()
    logits, mu, logvar = model(x)
    assert logits.shape == (3, 5) and model.autoregressive
    z = torch.randn(4, 3, 2, dtype=torch.float64)
    manual = -F.binary_cross_entropy_with_logits(model.decode(z, x.expand(4, 3, 5)),
                                                 x.expand(4, 3, 5), reduction="none").sum(-1)
    torch.testing.assert_close(log_likelihood(model, x, z), manual)

    def loss_of(weight):
        torch.manual_seed(0)                   # the same reparameterisation noise every call
        out = torch.func.functional_call(model, {"decoder.masked.0.weight": weight}, (x,))
        return losses.vae_loss(out[0], x, out[1], out[2])[0]

    check_gradients(loss_of, model.decoder.masked[0].weight.detach().clone(),
                    names=["decoder.masked[0].weight"]).raise_if_failed()


@torch.no_grad()
def test_autoregressive_samples_follow_the_model():
    torch.manual_seed(1)
    model = AutoregressiveVAE(VAEConfig(x_dim=2, latent_dim=1, hidden=6, layers=1))
    for p in model.decoder.parameters():
        p.mul_(3.0)                               # make the pixels depend on z and each other
    g = torch.Generator().manual_seed(0)
    draws = model.sample(40_000, generator=g)
    assert set(draws.unique().tolist()) <= {0.0, 1.0} and draws.shape == (40_000, 2)
    patterns = torch.tensor([[0.0, 0.0], [0.0, 1.0], [1.0, 0.0], [1.0, 1.0]])
    z = torch.randn(200_000, 1, 1, generator=g)
    exact = log_likelihood(model, patterns, z.expand(-1, 4, -1)).exp().mean(0)   # p(x) by MC
    observed = torch.stack([(draws == p).all(1).float().mean() for p in patterns])
    stderr = (exact * (1 - exact) / len(draws)).sqrt()
    assert ((observed - exact).abs() < 5 * stderr + 2e-3).all()


@pytest.mark.parametrize("call, error, words", [
    (lambda m: m.decode(torch.zeros(2, 2)), TypeError, "missing 1 required positional"),
    (lambda m: m.decode(torch.zeros(2, 2), torch.zeros(3, 5)), ValueError,
     "x must have shape (2, 5) to match z"),
    (lambda m: made_masks(1, 4, 1), ValueError, "x_dim must be >= 2"),
    (lambda m: MaskedLinear(torch.full((2, 2), 0.5)), ValueError, "mask must hold only zeros"),
    (lambda m: log_likelihood(m, binary(2, 5), torch.zeros(2, 2), torch.tensor([0, 1])),
     ValueError, "y must be None for an unconditional AutoregressiveVAE"),
])
def test_autoregressive_bad_input(call, error, words):
    model = AutoregressiveVAE(VAEConfig(x_dim=5, latent_dim=2, hidden=8, layers=1))
    with pytest.raises(error, match=re.escape(words)):
        call(model)


# --- negative ELBO and importance sampling with a given posterior -----------------------------

def small_vae(seed=1, latent=2, x_dim=6):
    torch.manual_seed(seed)
    return VAE(VAEConfig(x_dim=x_dim, latent_dim=latent, hidden=8, layers=1))


@torch.no_grad()
def test_negative_elbo_bounds_the_importance_estimate_draw_by_draw():
    model, x = small_vae(), binary(7, 6)
    for k in (1, 5, 50):
        elbo = metrics.negative_elbo(model, x, k=k, generator=torch.Generator().manual_seed(k))
        iwae = metrics.importance_sampled_nll(model, x, k=k,
                                              generator=torch.Generator().manual_seed(k))
        assert (elbo >= iwae - 1e-9).all()     # Jensen on the very same draws
        if k == 1:
            torch.testing.assert_close(elbo, iwae)


@torch.no_grad()
def test_negative_elbo_matches_the_closed_form_kl_bound():
    model, x = small_vae(), binary(4, 6)
    estimate = metrics.negative_elbo(model, x, k=40_000, generator=torch.Generator().manual_seed(0))
    mu, logvar = model.encode(x)
    z = mu + (0.5 * logvar).exp() * torch.randn(40_000, *mu.shape,
                                                generator=torch.Generator().manual_seed(1))
    recon = -log_likelihood(model, x, z).mean(0)
    reference = (recon + losses.kl_diag_gaussians(mu, logvar)).double()
    torch.testing.assert_close(estimate, reference, rtol=0, atol=0.05)


@torch.no_grad()
def test_posterior_argument_replaces_the_encoder():
    model, x = small_vae(), binary(5, 6)
    mu, logvar = model.encode(x)
    for fn in (metrics.importance_sampled_nll, metrics.negative_elbo):
        a = fn(model, x, k=9, generator=torch.Generator().manual_seed(0))
        b = fn(model, x, k=9, generator=torch.Generator().manual_seed(0), posterior=(mu, logvar))
        torch.testing.assert_close(a, b)
        c = fn(model, x, k=9, generator=torch.Generator().manual_seed(0),
               posterior=(mu + 1.0, logvar))
        assert not torch.allclose(a, c)


@pytest.mark.parametrize("call, error, words", [
    (lambda m: metrics.negative_elbo(m, binary(2, 6), posterior=torch.zeros(2, 2)), TypeError,
     "posterior must be a tuple (mu, logvar)"),
    (lambda m: metrics.negative_elbo(m, binary(2, 6), posterior=(torch.zeros(3, 2),) * 2),
     ValueError, "posterior mu must have one row per image"),
    (lambda m: metrics.negative_elbo(m, binary(2, 6), labels=torch.tensor([0, 1])), ValueError,
     "y must be None for an unconditional VAE"),
    (lambda m: metrics.negative_elbo(m, torch.full((2, 6), 0.5)), ValueError, "x must hold binary"),
    (lambda m: metrics.negative_elbo(m, binary(2, 6), k=0), ValueError, "k must be > 0"),
])
def test_negative_elbo_bad_input(call, error, words):
    with pytest.raises(error, match=re.escape(words)):
        call(small_vae())


# --- per-image posterior optimisation (the amortisation gap) ----------------------------------

def quadrature_elbo(model, x, m, log_v):
    """ELBO of q = N(m, v) for one image and a 1-D latent by Gauss-Hermite quadrature, for a
    whole grid of (m, log v) at once (the reference)."""
    nodes, weights = np.polynomial.hermite_e.hermegauss(80)
    nodes = torch.tensor(nodes, dtype=torch.float64)[:, None]
    weights = torch.tensor(weights / math.sqrt(2 * math.pi), dtype=torch.float64)[:, None]
    z = m + (0.5 * log_v).exp() * nodes                                   # (nodes, G)
    recon = (weights * log_likelihood(model, x, z[..., None])).sum(0)
    return recon - 0.5 * (m ** 2 + log_v.exp() - log_v - 1)


@torch.no_grad()
def best_gaussian_by_grid(model, x):
    m, log_v = torch.meshgrid(torch.linspace(-3, 3, 121, dtype=torch.float64),
                              torch.linspace(-6, 1, 71, dtype=torch.float64), indexing="ij")
    values = quadrature_elbo(model, x, m.flatten(), log_v.flatten())
    i = int(values.argmax())
    return values[i], m.flatten()[i], log_v.flatten()[i]


def test_optimise_posterior_finds_the_best_gaussian_of_a_1d_latent():
    torch.manual_seed(2)
    model = VAE(VAEConfig(x_dim=6, latent_dim=1, hidden=16, layers=1)).double()
    with torch.no_grad():
        model.decoder[-1].weight.mul_(3.0)
    x = binary(1, 6, seed=3).double()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    model.train()
    mu, logvar = optimise_posterior(model, x, steps=600, lr=0.05, samples=64,
                                    generator=torch.Generator().manual_seed(0))
    assert model.training and all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert all(p.grad is None for p in model.parameters())
    with torch.no_grad():
        ours = quadrature_elbo(model, x, mu[0], logvar[0])[0]
        encoder = quadrature_elbo(model, x, *(t[0] for t in model.encode(x)))[0]
    best, best_m, best_v = best_gaussian_by_grid(model, x)
    assert ours > encoder                      # the encoder's q is not the best Gaussian
    assert best - ours < 0.01                  # ours is within 0.01 nats of the grid optimum
    assert abs(mu[0, 0].item() - best_m.item()) < 0.1


def test_optimise_posterior_improves_every_images_elbo():
    model, x = small_vae(latent=3), binary(6, 6, seed=5)
    post = optimise_posterior(model, x, steps=200, samples=16,
                              generator=torch.Generator().manual_seed(0))
    gen = lambda: torch.Generator().manual_seed(1)  # noqa: E731
    encoder = metrics.negative_elbo(model, x, k=20_000, generator=gen())
    optimised = metrics.negative_elbo(model, x, k=20_000, generator=gen(), posterior=post)
    assert (optimised < encoder - 0.01).all()


@pytest.mark.parametrize("call, error, words", [
    (lambda m: optimise_posterior(torch.nn.Linear(2, 2), binary(2, 6)), TypeError,
     "model must be an aigc_lib VAE"),
    (lambda m: optimise_posterior(m, binary(2, 6), steps=0), ValueError, "steps must be > 0"),
    (lambda m: optimise_posterior(m, binary(2, 6), lr=-1.0), ValueError, "lr must be > 0"),
    (lambda m: optimise_posterior(m, binary(6)), ValueError, "x must have 2 dimensions"),
])
def test_optimise_posterior_bad_input(call, error, words):
    with pytest.raises(error, match=re.escape(words)):
        call(small_vae())


# --- spherical interpolation ------------------------------------------------------------------

def test_slerp_is_a_rotation_in_the_plane_of_the_two_codes():
    r, omega = 2.5, 1.2
    z_a = torch.tensor([r, 0.0], dtype=torch.float64)
    z_b = torch.tensor([r * math.cos(omega), r * math.sin(omega)], dtype=torch.float64)
    t = torch.linspace(0, 1, 11, dtype=torch.float64)[:, None]
    path = slerp(z_a, z_b, t)
    rotation = r * torch.cat([torch.cos(t * omega), torch.sin(t * omega)], 1)
    torch.testing.assert_close(path, rotation)


def test_slerp_endpoints_norms_and_angles_in_many_dimensions():
    g = torch.Generator().manual_seed(0)
    z_a, z_b = torch.randn(2, 16, generator=g, dtype=torch.float64)
    z_b = z_b * z_a.norm() / z_b.norm()
    t = torch.linspace(0, 1, 21, dtype=torch.float64)[:, None]
    path = slerp(z_a, z_b, t)
    torch.testing.assert_close(path[0], z_a)
    torch.testing.assert_close(path[-1], z_b)
    torch.testing.assert_close(path.norm(dim=1), z_a.norm().expand(21))   # stays on the sphere
    angle = torch.arccos((path @ z_a / z_a.norm() ** 2).clamp(-1, 1))
    torch.testing.assert_close(angle, t[:, 0] * angle[-1])                 # constant speed
    linear = (1 - t) * z_a + t * z_b
    assert (linear.norm(dim=1)[1:-1] < path.norm(dim=1)[1:-1]).all()       # the chord dips in


def test_slerp_batches_and_falls_back_to_the_line_for_parallel_codes():
    z = torch.tensor([[1.0, 2.0, 2.0]])
    torch.testing.assert_close(slerp(z, 3 * z, 0.5), 2 * z)
    g = torch.Generator().manual_seed(1)
    a, b = torch.randn(2, 4, 5, generator=g)
    batched = slerp(a, b, 0.3)
    torch.testing.assert_close(batched, torch.stack([slerp(a[i], b[i], 0.3) for i in range(4)]))


@pytest.mark.parametrize("args, error, words", [
    ((torch.zeros(3), torch.ones(3), 0.5), ValueError, "must be non-zero"),
    ((torch.ones(3), torch.ones(4), 0.5), ValueError, "z_a and z_b must have the same shape"),
    ((torch.ones(1), torch.ones(1), 0.5), ValueError, "d >= 2"),
    ((torch.ones(3, dtype=torch.long), torch.ones(3), 0.5), TypeError, "z_a must be a floating"),
])
def test_slerp_bad_input(args, error, words):
    with pytest.raises(error, match=re.escape(words)):
        slerp(*args)


# --- mutual information between images and codes ----------------------------------------------

def test_mutual_information_is_zero_for_identical_and_log_n_for_separated_posteriors():
    same = metrics.latent_mutual_information(torch.full((7, 3), 0.4), torch.full((7, 3), -0.5))
    assert abs(same) < 1e-12
    apart = torch.arange(7.0)[:, None] * torch.tensor([[40.0, 0.0]])
    separated = metrics.latent_mutual_information(apart, torch.full((7, 2), -4.0))
    assert abs(separated - math.log(7)) < 1e-9


def test_mutual_information_matches_a_mixture_reference_and_is_below_the_rate():
    g = torch.Generator().manual_seed(0)
    mu, logvar = torch.randn(30, 4, generator=g), torch.randn(30, 4, generator=g) * 0.3 - 1.0
    ours = metrics.latent_mutual_information(mu, logvar, samples=50,
                                             generator=torch.Generator().manual_seed(1))
    eps = torch.randn((50, 30, 4), generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    mu64, sd64 = mu.double(), (0.5 * logvar.double()).exp()
    z = mu64 + sd64 * eps
    q_n = torch.distributions.Independent(normal(mu64, sd64), 1)
    q_agg = torch.distributions.MixtureSameFamily(
        torch.distributions.Categorical(logits=torch.zeros(30, dtype=torch.float64)), q_n)
    reference = (q_n.log_prob(z) - q_agg.log_prob(z[..., None, :]).squeeze(-1)).mean().item()
    assert abs(ours - reference) < 1e-9
    rate = losses.kl_diag_gaussians(mu, logvar).mean().item()
    assert 0 < ours < rate and ours <= math.log(30)


@pytest.mark.parametrize("args, error, words", [
    ((torch.zeros(3, 2), torch.zeros(3, 3)), ValueError, "mu and logvar must have the same shape"),
    ((torch.zeros(3), torch.zeros(3)), ValueError, "mu must have 2 dimensions"),
    ((torch.zeros(3, 2), torch.zeros(3, 2), 0), ValueError, "samples must be > 0"),
])
def test_mutual_information_bad_input(args, error, words):
    with pytest.raises(error, match=re.escape(words)):
        metrics.latent_mutual_information(*args)


def test_conditional_forward_is_encode_then_decode():
    """forward encodes the labels once; it must compute what encode and decode compute."""
    torch.manual_seed(0)
    model = ConditionalVAE(VAEConfig(x_dim=6, latent_dim=2, hidden=8), num_classes=3)
    x, y = binary(4, 6), torch.tensor([0, 2, 1, 2])
    torch.manual_seed(1)
    logits, mu, logvar = model(x, y)
    torch.manual_seed(1)
    mu2, logvar2 = model.encode(x, y)
    logits2 = model.decode(reparameterize(mu2, logvar2), y)
    for a, b in ((logits, logits2), (mu, mu2), (logvar, logvar2)):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
