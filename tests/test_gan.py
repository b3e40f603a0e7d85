"""Chapter 4 (GAN): the GAN losses equal torch and pass finite-difference checks, the R1 penalty
is exact where its value is known, the models behave, the ring data and the mode-coverage
metric count what they should, the Fréchet distance matches closed forms and scipy, and
fit_gan learns, logs, resumes bit-identically, guards against NaN and rejects bad input.
The MNIST option runs on a local stand-in (no network)."""
import gzip
import math
import struct

import numpy as np
import pytest
import scipy.linalg
import torch
import torch.nn.functional as F

from aigc_lib import checkpoint as ckpt
from aigc_lib import data, losses, metrics, optim
from aigc_lib.gradcheck import check_gradients
from aigc_lib.models.gan import Discriminator, Generator
from aigc_lib.training import GANHistory, fit_gan


def logits(n=7, seed=0, dtype=torch.float64, scale=4.0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(n, generator=g) * scale).to(dtype)


# --- losses: the GAN losses take logits ------------------------------------------------------

@pytest.mark.parametrize("dtype, tol", [(torch.float32, 1e-6), (torch.float64, 1e-12)])
def test_discriminator_loss_equals_torch(dtype, tol):
    real, fake = logits(6, 0, dtype), logits(9, 1, dtype)
    ours = losses.gan_discriminator_loss(real, fake)
    ref = (F.binary_cross_entropy_with_logits(real, torch.ones_like(real))
           + F.binary_cross_entropy_with_logits(fake, torch.zeros_like(fake)))
    torch.testing.assert_close(ours, ref, rtol=tol, atol=tol)
    summed = losses.gan_discriminator_loss(real, fake, reduction="sum")
    ref_sum = (F.binary_cross_entropy_with_logits(real, torch.ones_like(real), reduction="sum")
               + F.binary_cross_entropy_with_logits(fake, torch.zeros_like(fake), reduction="sum"))
    torch.testing.assert_close(summed, ref_sum, rtol=tol, atol=tol)


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("dtype, tol", [(torch.float32, 1e-6), (torch.float64, 1e-12)])
def test_generator_losses_equal_torch(reduction, dtype, tol):
    fake = logits(8, 2, dtype)
    ns = losses.gan_generator_loss(fake, reduction=reduction)
    sat = losses.gan_generator_loss(fake, saturating=True, reduction=reduction)
    ones, zeros = torch.ones_like(fake), torch.zeros_like(fake)
    torch.testing.assert_close(ns, F.binary_cross_entropy_with_logits(fake, ones,
                                                                      reduction=reduction),
                               rtol=tol, atol=tol)
    torch.testing.assert_close(sat, -F.binary_cross_entropy_with_logits(fake, zeros,
                                                                        reduction=reduction),
                               rtol=tol, atol=tol)


def test_losses_are_the_game_value_written_with_probabilities():
    real, fake = logits(5, 3), logits(5, 4)
    d_real, d_fake = torch.sigmoid(real), torch.sigmoid(fake)
    value = torch.log(d_real).mean() + torch.log(1 - d_fake).mean()
    torch.testing.assert_close(losses.gan_discriminator_loss(real, fake), -value)
    torch.testing.assert_close(losses.gan_generator_loss(fake, saturating=True),
                               torch.log(1 - d_fake).mean())
    torch.testing.assert_close(losses.gan_generator_loss(fake), -torch.log(d_fake).mean())


def test_losses_are_finite_for_extreme_logits():
    extreme = torch.tensor([-1000.0, -100.0, 0.0, 100.0, 1000.0])
    for value in (losses.gan_discriminator_loss(extreme, extreme),
                  losses.gan_generator_loss(extreme),
                  losses.gan_generator_loss(extreme, saturating=True)):
        assert torch.isfinite(value)
    torch.testing.assert_close(losses.gan_generator_loss(torch.tensor([-1000.0])),
                               torch.tensor(1000.0))


def test_gan_loss_gradients_closed_form_and_finite_differences():
    real, fake = logits(6, 5), logits(4, 6)
    r, f = real.clone().requires_grad_(), fake.clone().requires_grad_()
    losses.gan_discriminator_loss(r, f).backward()
    torch.testing.assert_close(r.grad, -(1 - torch.sigmoid(real)) / 6)
    torch.testing.assert_close(f.grad, torch.sigmoid(fake) / 4)
    for saturating, closed in ((False, -(1 - torch.sigmoid(fake)) / 4),
                               (True, -torch.sigmoid(fake) / 4)):
        f = fake.clone().requires_grad_()
        losses.gan_generator_loss(f, saturating=saturating).backward()
        torch.testing.assert_close(f.grad, closed)
    check_gradients(losses.gan_discriminator_loss, real, fake,
                    names=["real_logits", "fake_logits"]).raise_if_failed()
    for saturating in (False, True):
        check_gradients(lambda x: losses.gan_generator_loss(x, saturating=saturating,
                                                            reduction="none"),
                        fake, names=["fake_logits"]).raise_if_failed()


def test_saturating_gradient_vanishes_where_the_non_saturating_one_does_not():
    rejected = torch.tensor([-10.0, -20.0], dtype=torch.float64)
    grads = {}
    for saturating in (False, True):
        x = rejected.clone().requires_grad_()
        losses.gan_generator_loss(x, saturating=saturating, reduction="sum").backward()
        grads[saturating] = x.grad.abs()
    assert (grads[False] > 0.99).all() and (grads[True] < 1e-4).all()


@pytest.mark.parametrize("call, error, words", [
    (lambda: losses.gan_discriminator_loss([1.0], torch.zeros(2)), TypeError, "real_logits"),
    (lambda: losses.gan_discriminator_loss(torch.zeros(2), torch.zeros(2, dtype=torch.long)),
     TypeError, "fake_logits"),
    (lambda: losses.gan_discriminator_loss(torch.zeros(2), torch.zeros(2), reduction="none"),
     ValueError, "reduction"),
    (lambda: losses.gan_discriminator_loss(torch.zeros(0), torch.zeros(2)), ValueError,
     "must not be empty"),
    (lambda: losses.gan_generator_loss(torch.zeros(2), saturating="yes"), TypeError,
     "saturating must be a bool"),
    (lambda: losses.gan_generator_loss(torch.zeros(2), reduction="avg"), ValueError,
     "reduction"),
])
def test_gan_losses_bad_input(call, error, words):
    with pytest.raises(error, match=words):
        call()


# --- losses.r1_penalty --------------------------------------------------------------------

def test_r1_penalty_of_linear_and_quadratic_logits():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(5, 3, generator=g, dtype=torch.float64).requires_grad_()
    w = torch.randn(3, generator=g, dtype=torch.float64)
    torch.testing.assert_close(losses.r1_penalty(x @ w + 0.7, x), w.square().sum())
    a = torch.randn(3, 3, generator=g, dtype=torch.float64)
    a = a + a.T
    quad = ((x @ a) * x).sum(1)                      # x^T A x, gradient 2 A x
    expected = (2 * x.detach() @ a).square().sum(1).mean()
    torch.testing.assert_close(losses.r1_penalty(quad, x), expected)


def test_r1_penalty_gradient_reaches_the_parameters():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(4, 2, generator=g, dtype=torch.float64)
    w = torch.randn(2, generator=g, dtype=torch.float64)

    def penalty(weights):
        with torch.enable_grad():   # finite differences run under no_grad; R1 needs a gradient
            inputs = x.clone().requires_grad_()
            return losses.r1_penalty(torch.tanh(inputs @ weights), inputs)

    check_gradients(penalty, w, names=["w"]).raise_if_failed()
    leaf = w.clone().requires_grad_()
    inputs = x.clone().requires_grad_()
    losses.r1_penalty(inputs @ leaf, inputs).backward()
    torch.testing.assert_close(leaf.grad, 2 * w)     # d/dw ||w||^2


def test_r1_penalty_bad_input():
    x = torch.randn(3, 2)
    with pytest.raises(ValueError, match="real must require gradients"):
        losses.r1_penalty(x.sum(1), x)
    x.requires_grad_()
    with pytest.raises(ValueError, match="computed from real"):
        losses.r1_penalty(torch.randn(3, requires_grad=True), x)
    with pytest.raises(TypeError, match="real_logits"):
        losses.r1_penalty("logits", x)


# --- models.gan ------------------------------------------------------------------------------

def test_generator_shapes_outputs_and_affine_case():
    torch.manual_seed(0)
    g = Generator(latent_dim=3, data_dim=5, hidden=16, layers=2, output="sigmoid")
    x = g(torch.randn(7, 3) * 10)
    assert x.shape == (7, 5) and bool(((x >= 0) & (x <= 1)).all())
    affine = Generator(latent_dim=2, data_dim=2, layers=0)
    assert len(affine.net) == 1
    z = torch.randn(4, 2)
    torch.testing.assert_close(affine(z), z @ affine.net[0].weight.T + affine.net[0].bias)
    a = g.sample(6, generator=torch.Generator().manual_seed(1))
    b = g.sample(6, generator=torch.Generator().manual_seed(1))
    assert torch.equal(a, b) and not a.requires_grad


def test_discriminator_packs_consecutive_rows():
    torch.manual_seed(0)
    d = Discriminator(data_dim=2, hidden=8, layers=1, pack=3)
    x = torch.randn(6, 2)
    out = d(x)
    assert out.shape == (2,)
    torch.testing.assert_close(out, d.net(torch.cat([x[0:3].reshape(1, -1),
                                                     x[3:6].reshape(1, -1)])).squeeze(-1))
    assert Discriminator(data_dim=4)(torch.randn(5, 4)).shape == (5,)


def test_model_gradients_pass_finite_differences():
    torch.manual_seed(0)
    g = Generator(2, 3, hidden=4, layers=1, output="sigmoid").double()
    d = Discriminator(3, hidden=4, layers=1, pack=2).double()
    z = torch.randn(4, 2, dtype=torch.float64)
    check_gradients(lambda z_: d(g(z_)), z, names=["z"]).raise_if_failed()


@pytest.mark.parametrize("make, error, words", [
    (lambda: Generator(0, 2), ValueError, "latent_dim must be > 0"),
    (lambda: Generator(2, 2, output="tanh"), ValueError, "output must be one of"),
    (lambda: Generator(2, 2.5), TypeError, "data_dim must be an int"),
    (lambda: Discriminator(2, pack=0), ValueError, "pack must be > 0"),
    (lambda: Discriminator(2, layers=-1), ValueError, "layers must be >= 0"),
])
def test_model_bad_config(make, error, words):
    with pytest.raises(error, match=words):
        make()


def test_model_bad_input():
    g, d = Generator(2, 3), Discriminator(3, pack=2)
    with pytest.raises(ValueError, match=r"z must have shape \(B, 2\)"):
        g(torch.zeros(4, 3))
    with pytest.raises(ValueError, match="not a multiple of pack=2"):
        d(torch.zeros(3, 3))
    with pytest.raises(ValueError, match=r"x must have shape \(B, 3\)"):
        d(torch.zeros(4, 2))


# --- data: the ring of Gaussians ---------------------------------------------------------------

def test_gaussian_ring_has_the_stated_modes_and_spread():
    centers = data.ring_centers(8, 2.0)
    torch.testing.assert_close(centers.norm(dim=1), torch.full((8,), 2.0))
    torch.testing.assert_close(centers[2], torch.tensor([0.0, 2.0]), atol=1e-6, rtol=0)
    x, labels = data.gaussian_ring(40_000, std=0.05, generator=torch.Generator().manual_seed(0))
    assert x.shape == (40_000, 2) and labels.shape == (40_000,)
    counts = torch.bincount(labels, minlength=8).double()
    assert (counts / 40_000 - 1 / 8).abs().max() < 0.01
    offsets = x - centers[labels]
    assert abs(offsets.std().item() - 0.05) < 0.002 and offsets.mean(0).abs().max() < 0.002


@pytest.mark.parametrize("call, error, words", [
    (lambda: data.gaussian_ring(0), ValueError, "n must be > 0"),
    (lambda: data.gaussian_ring(5, std=-1.0), ValueError, "std must be > 0"),
    (lambda: data.gaussian_ring(5, modes=2.5), TypeError, "modes must be an int"),
    (lambda: data.ring_centers(radius=0), ValueError, "radius must be > 0"),
])
def test_gaussian_ring_bad_input(call, error, words):
    with pytest.raises(error, match=words):
        call()


# --- metrics.mode_coverage ---------------------------------------------------------------------

def test_mode_coverage_counts_modes_and_quality():
    centers = data.ring_centers()
    exact = metrics.mode_coverage(centers.repeat(3, 1), centers, std=0.02)
    assert exact.modes_covered == 8 and exact.high_quality == 1.0 and exact.counts == (3,) * 8
    one = metrics.mode_coverage(centers[:1] + torch.tensor([[0.05, 0.0]]), centers, std=0.02)
    assert one.modes_covered == 1 and one.high_quality == 1.0 and one.counts[0] == 1
    outside = metrics.mode_coverage(centers[:1] + torch.tensor([[0.07, 0.0]]), centers, std=0.02)
    assert outside.modes_covered == 0 and outside.high_quality == 0.0
    centre_of_ring = metrics.mode_coverage(torch.zeros(10, 2), centers, std=0.02)
    assert centre_of_ring.modes_covered == 0 and centre_of_ring.high_quality == 0.0
    samples = torch.cat([centers[:1].repeat(5, 1), centers[1:2], torch.zeros(4, 2)])
    strict = metrics.mode_coverage(samples, centers, std=0.02, min_count=2)
    assert strict.modes_covered == 1 and strict.high_quality == 0.6


@pytest.mark.parametrize("args, kwargs, error, words", [
    ((torch.zeros(3, 2), torch.zeros(8, 3), 0.1), {}, ValueError, "same number of columns"),
    ((torch.zeros(3), torch.zeros(8, 2), 0.1), {}, ValueError, "samples must have 2"),
    ((torch.zeros(3, 2), torch.zeros(8, 2), 0.0), {}, ValueError, "std must be > 0"),
    ((torch.zeros(3, 2), torch.zeros(8, 2), 0.1), {"min_count": 0}, ValueError, "min_count"),
    ((torch.zeros(0, 2), torch.zeros(8, 2), 0.1), {}, ValueError, "must not be empty"),
])
def test_mode_coverage_bad_input(args, kwargs, error, words):
    with pytest.raises(error, match=words):
        metrics.mode_coverage(*args, **kwargs)


# --- metrics.frechet_distance ------------------------------------------------------------------

def random_psd(d, seed):
    g = torch.Generator().manual_seed(seed)
    a = torch.randn(d, d, generator=g, dtype=torch.float64)
    return a @ a.T / d + 0.1 * torch.eye(d, dtype=torch.float64)


def scipy_frechet(mu_a, cov_a, mu_b, cov_b):
    """The formula of the FID reference code: |mu_a - mu_b|^2 + tr(A + B - 2 sqrtm(A B))."""
    root = scipy.linalg.sqrtm(cov_a.numpy() @ cov_b.numpy()).real
    return float(((mu_a - mu_b) ** 2).sum() + np.trace(cov_a.numpy() + cov_b.numpy() - 2 * root))


def test_frechet_distance_closed_forms():
    one = metrics.frechet_distance_gaussians(
        torch.tensor([1.0]), torch.tensor([[4.0]]), torch.tensor([-2.0]), torch.tensor([[0.25]]))
    assert one == pytest.approx(9.0 + (2.0 - 0.5) ** 2, rel=1e-12)
    var_a = torch.tensor([1.0, 4.0, 9.0], dtype=torch.float64)
    var_b = torch.tensor([4.0, 1.0, 0.01], dtype=torch.float64)
    diag = metrics.frechet_distance_gaussians(torch.zeros(3), torch.diag(var_a),
                                              torch.ones(3), torch.diag(var_b))
    assert diag == pytest.approx(3.0 + float((var_a.sqrt() - var_b.sqrt()).square().sum()),
                                 rel=1e-10)
    cov = random_psd(5, 0)
    assert metrics.frechet_distance_gaussians(torch.ones(5), cov, torch.ones(5), cov) == \
        pytest.approx(0.0, abs=1e-10)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_frechet_distance_equals_the_scipy_formula(seed):
    d = 6
    g = torch.Generator().manual_seed(seed)
    mu_a, mu_b = torch.randn(2, d, generator=g, dtype=torch.float64)
    cov_a, cov_b = random_psd(d, 10 + seed), random_psd(d, 20 + seed)
    ours = metrics.frechet_distance_gaussians(mu_a, cov_a, mu_b, cov_b)
    assert ours == pytest.approx(scipy_frechet(mu_a, cov_a, mu_b, cov_b), rel=1e-8)
    assert ours == pytest.approx(metrics.frechet_distance_gaussians(mu_b, cov_b, mu_a, cov_a),
                                 rel=1e-10)


def test_frechet_distance_of_feature_sets_uses_mean_and_unbiased_covariance():
    g = torch.Generator().manual_seed(3)
    a = torch.randn(50, 4, generator=g)
    b = torch.randn(30, 4, generator=g) * 2 + 1
    stats = [torch.tensor(s) for f in (a, b)
             for s in (f.double().mean(0).numpy(), np.cov(f.double().numpy(), rowvar=False))]
    assert metrics.frechet_distance(a, b) == pytest.approx(scipy_frechet(*stats), rel=1e-8)
    assert metrics.frechet_distance(a, a) == pytest.approx(0.0, abs=1e-9)
    rotation, _ = torch.linalg.qr(torch.randn(4, 4, generator=g))
    assert metrics.frechet_distance(a @ rotation, b @ rotation) == pytest.approx(
        metrics.frechet_distance(a, b), rel=1e-5)


def test_frechet_distance_of_samples_converges_to_the_gaussian_value():
    g = torch.Generator().manual_seed(4)
    n = 200_000
    a = torch.randn(n, 2, generator=g, dtype=torch.float64)
    b = torch.randn(n, 2, generator=g, dtype=torch.float64) * torch.tensor([2.0, 0.5]) + 1.0
    exact = 2.0 + (2.0 - 1.0) ** 2 + (0.5 - 1.0) ** 2
    assert metrics.frechet_distance(a, b) == pytest.approx(exact, rel=0.02)


@pytest.mark.parametrize("call, error, words", [
    (lambda: metrics.frechet_distance(torch.zeros(5, 3), torch.zeros(5, 4)), ValueError,
     "same number of columns"),
    (lambda: metrics.frechet_distance(torch.zeros(1, 3), torch.zeros(5, 3)), ValueError,
     "features_a needs at least 2 rows"),
    (lambda: metrics.frechet_distance(torch.zeros(5), torch.zeros(5, 1)), ValueError,
     "features_a must have 2"),
    (lambda: metrics.frechet_distance(np.zeros((5, 2)), torch.zeros(5, 2)), TypeError,
     "features_a must be a torch.Tensor"),
    (lambda: metrics.frechet_distance(torch.zeros(5, 2), torch.full((5, 2), math.nan)),
     ValueError, "features_b contains NaN"),
    (lambda: metrics.frechet_distance_gaussians(torch.zeros(2), torch.eye(2), torch.zeros(2),
                                                torch.tensor([[1.0, 2.0], [0.0, 1.0]])),
     ValueError, "cov_b must be symmetric"),
    (lambda: metrics.frechet_distance_gaussians(torch.zeros(2), -torch.eye(2), torch.zeros(2),
                                                torch.eye(2)),
     ValueError, "cov_a must be positive semi-definite"),
    (lambda: metrics.frechet_distance_gaussians(torch.zeros(2), torch.eye(3), torch.zeros(2),
                                                torch.eye(2)),
     ValueError, r"cov_a must have shape \(2, 2\)"),
])
def test_frechet_distance_bad_input(call, error, words):
    with pytest.raises(error, match=words):
        call()


# --- training.fit_gan --------------------------------------------------------------------------

def make_gan(seed=0, pack=1):
    torch.manual_seed(seed)
    generator = Generator(latent_dim=2, data_dim=1, hidden=16, layers=1)
    discriminator = Discriminator(1, hidden=16, layers=1, pack=pack)
    g_opt = torch.optim.Adam(generator.parameters(), lr=5e-3, betas=(0.5, 0.999))
    d_opt = torch.optim.Adam(discriminator.parameters(), lr=5e-3, betas=(0.5, 0.999))
    return generator, discriminator, g_opt, d_opt


REAL = 3.0 + 0.5 * torch.randn(512, 1, generator=torch.Generator().manual_seed(0))


def run_gan(checkpoint=None, interrupt_at=None, steps=40, eval_every=10, schedule=False,
            **kwargs):
    generator, discriminator, g_opt, d_opt = make_gan()
    calls = {"n": 0}

    def g_loss_fn(d, fake):
        calls["n"] += 1
        if interrupt_at is not None and calls["n"] == interrupt_at:
            raise KeyboardInterrupt
        return losses.gan_generator_loss(d(fake)), {"fake_mean": fake.mean()}

    scheds = {}
    if schedule:
        scheds = {"g_scheduler": optim.warmup_cosine_scheduler(g_opt, 5, steps),
                  "d_scheduler": optim.warmup_cosine_scheduler(d_opt, 5, steps)}
    history = fit_gan(generator, discriminator, REAL, g_optimizer=g_opt, d_optimizer=d_opt,
                      steps=steps, batch_size=32, g_loss_fn=g_loss_fn, eval_every=eval_every,
                      checkpoint=checkpoint, progress=False, seed=3, **scheds, **kwargs)
    return generator, discriminator, history


def test_fit_gan_learns_a_gaussian_and_records_both_losses():
    generator, discriminator, g_opt, d_opt = make_gan()
    before = generator.sample(2000, generator=torch.Generator().manual_seed(1)).mean().item()
    history = fit_gan(generator, discriminator, (REAL, torch.zeros(512)), g_optimizer=g_opt,
                      d_optimizer=d_opt, steps=400, batch_size=64, progress=False,
                      evaluate=lambda g, d: {"mean": g.sample(500).mean().item()})
    after = generator.sample(2000, generator=torch.Generator().manual_seed(1)).mean().item()
    assert abs(before - 3.0) > 2.0 and abs(after - 3.0) < 0.5
    assert isinstance(history, GANHistory)
    assert len(history.d_losses) == len(history.g_losses) == 400 and not history.step_losses
    assert history.column("step") == list(range(8, 401, 8))   # 512 // 64 = 8 steps per epoch
    last = history.records[-1]
    assert {"d_loss", "g_loss", "d_real", "d_fake", "d_grad_norm", "g_grad_norm", "mean",
            "seconds", "epoch"} <= set(last)
    assert last["d_loss"] == pytest.approx(sum(history.d_losses[-8:]) / 8)
    assert 0.2 < last["d_fake"] < 0.8


def test_fit_gan_d_steps_and_saturating_and_packing():
    generator, discriminator, g_opt, d_opt = make_gan(pack=4)
    seen = []

    def d_loss_fn(d, real, fake):
        seen.append((len(real), len(fake)))
        return losses.gan_discriminator_loss(d(real), d(fake))

    history = fit_gan(generator, discriminator, REAL, g_optimizer=g_opt, d_optimizer=d_opt,
                      steps=6, batch_size=32, d_steps=3, saturating=True, d_loss_fn=d_loss_fn,
                      progress=False)
    assert seen == [(32, 32)] * 18
    assert history.records[-1]["epoch"] == pytest.approx(18 / 16)
    assert "d_real" not in history.records[-1]        # the custom loss returned no extras


@pytest.mark.parametrize("sync_interval", [1, 4])
def test_the_history_keeps_the_mean_of_each_steps_d_losses(sync_interval):
    generator, discriminator, g_opt, d_opt = make_gan()
    values = []

    def d_loss_fn(d, real, fake):
        loss = losses.gan_discriminator_loss(d(real), d(fake))
        values.append(loss.item())
        return loss

    history = fit_gan(generator, discriminator, REAL, g_optimizer=g_opt, d_optimizer=d_opt,
                      steps=6, batch_size=32, d_steps=3, d_loss_fn=d_loss_fn,
                      sync_interval=sync_interval, progress=False)
    means = [sum(values[i:i + 3]) / 3 for i in range(0, 18, 3)]
    assert history.d_losses == pytest.approx(means, rel=1e-6)
    assert len(history.g_losses) == 6


@pytest.mark.parametrize("interrupt_at", [17, 25])
def test_interrupted_gan_resumes_bit_identically(tmp_path, interrupt_at):
    ref_g, ref_d, ref_history = run_gan(schedule=True)
    path = tmp_path / "gan.safetensors"
    with pytest.raises(KeyboardInterrupt):
        run_gan(path, interrupt_at=interrupt_at, schedule=True)
    assert ckpt.load_state(path)["step"] == 10 * ((interrupt_at - 1) // 10)
    torch.manual_seed(12345)     # resuming must not depend on the global RNG state
    g, d, history = run_gan(path, schedule=True)
    for ref, new in ((ref_g, g), (ref_d, d)):
        for a, b in zip(ref.state_dict().values(), new.state_dict().values()):
            assert torch.equal(a, b)
    assert history.d_losses == ref_history.d_losses
    assert history.g_losses == ref_history.g_losses
    assert history.column("fake_mean") == ref_history.column("fake_mean")


def test_finished_gan_checkpoint_loads_and_changed_settings_are_refused(tmp_path):
    path = tmp_path / "gan.safetensors"
    trained_g, _, _ = run_gan(path)
    g, _, history = run_gan(path, interrupt_at=1)   # would raise if a step were taken
    assert all(torch.equal(a, b) for a, b in zip(trained_g.state_dict().values(),
                                                 g.state_dict().values()))
    assert len(history.d_losses) == 40
    before = path.read_bytes()
    with pytest.raises(ValueError, match="different run.*total_steps"):
        run_gan(path, steps=50)
    with pytest.raises(FileExistsError, match="resume=True"):
        run_gan(path, resume=False)
    assert path.read_bytes() == before


@pytest.mark.parametrize("which", ["discriminator", "generator"])
def test_fit_gan_nan_guard_names_the_loss_and_keeps_the_checkpoint(tmp_path, which):
    path = tmp_path / "gan.safetensors"
    generator, discriminator, g_opt, d_opt = make_gan()
    calls = {"n": 0}

    def poisoned(loss):
        calls["n"] += 1
        return loss * math.nan if calls["n"] == 13 else loss

    d_loss_fn = (lambda d, r, f: poisoned(losses.gan_discriminator_loss(d(r), d(f)))) \
        if which == "discriminator" else None
    g_loss_fn = (lambda d, f: poisoned(losses.gan_generator_loss(d(f)))) \
        if which == "generator" else None
    with pytest.raises(FloatingPointError, match=rf"{which} loss is nan at step 13 .*kept"):
        fit_gan(generator, discriminator, REAL, g_optimizer=g_opt, d_optimizer=d_opt, steps=30,
                batch_size=32, d_loss_fn=d_loss_fn, g_loss_fn=g_loss_fn, eval_every=5,
                checkpoint=path, progress=False)
    assert ckpt.load_state(path)["step"] == 10
    for module in (generator, discriminator):
        assert all(torch.isfinite(p).all() for p in module.parameters())


@pytest.mark.parametrize("kwargs, error, words", [
    (dict(generator=torch.nn.Linear(2, 1)), TypeError, "latent_dim"),
    (dict(discriminator="d"), TypeError, "discriminator must be a torch.nn.Module"),
    (dict(g_optimizer=None), TypeError, "g_optimizer must be a torch.optim.Optimizer"),
    (dict(steps=0), ValueError, "steps must be > 0"),
    (dict(steps=2.5), TypeError, "steps must be an int"),
    (dict(d_steps=0), ValueError, "d_steps must be > 0"),
    (dict(batch_size=1000), ValueError, "exceeds the 512 training examples"),
    (dict(saturating=1), TypeError, "saturating must be a bool"),
    (dict(saturating=True, g_loss_fn=lambda d, f: d(f).mean()), ValueError, "not both"),
    (dict(d_loss_fn="bce"), TypeError, "d_loss_fn must be callable"),
    (dict(train=[1, 2]), TypeError, "train must be a Dataset"),
    (dict(checkpoint="gan.pt"), ValueError, "checkpoint must end in .safetensors"),
    (dict(amp="fp16"), ValueError, "amp must be"),
    (dict(g_loss_fn=lambda d, f: d(f)), TypeError, "loss_fn must return a scalar"),
    (dict(g_scheduler="cosine"), TypeError, "g_scheduler must be a learning-rate scheduler"),
    (dict(evaluate=lambda g, d: 1.0), TypeError, "evaluate must return a mapping"),
    (dict(d_optimizer=torch.optim.SGD(torch.nn.Linear(1, 1).parameters(), 0.1)), ValueError,
     "d_optimizer holds none of discriminator's trainable parameters"),
])
def test_fit_gan_bad_input(kwargs, error, words):
    generator, discriminator, g_opt, d_opt = make_gan()
    args = dict(generator=generator, discriminator=discriminator, train=REAL, g_optimizer=g_opt,
                d_optimizer=d_opt, steps=3, batch_size=32, progress=False)
    args.update(kwargs)
    with pytest.raises(error, match=words):
        fit_gan(**args)


def test_fit_gan_refuses_one_optimizer_for_both_players():
    generator, discriminator, g_opt, _ = make_gan()
    with pytest.raises(ValueError, match="two different optimizers"):
        fit_gan(generator, discriminator, REAL, g_optimizer=g_opt, d_optimizer=g_opt, steps=2,
                progress=False)


# --- the chapter's MNIST option on a local stand-in ------------------------------------------

def write_mnist_stand_in(folder, n=64):
    rng = np.random.default_rng(0)
    arrays = {"images": rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8),
              "labels": rng.integers(0, 10, size=n, dtype=np.uint8)}
    for (name, _), array in zip(data.MNIST_FILES["train"], arrays.values()):
        header = bytes([0, 0, 0x08, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
        (folder / name).write_bytes(gzip.compress(header + array.tobytes()))


def test_mnist_sized_gan_pipeline_runs_on_a_local_stand_in(tmp_path):
    write_mnist_stand_in(tmp_path)
    x, y = data.mnist("train", root=tmp_path, download=False)
    assert x.shape == (64, 784)
    torch.manual_seed(0)
    generator = Generator(latent_dim=8, data_dim=784, hidden=32, output="sigmoid")
    discriminator = Discriminator(784, hidden=32)
    history = fit_gan(generator, discriminator, (x, y),
                      g_optimizer=torch.optim.Adam(generator.parameters(), 1e-3),
                      d_optimizer=torch.optim.Adam(discriminator.parameters(), 1e-3),
                      steps=4, batch_size=16, progress=False)
    assert len(history.g_losses) == 4
    samples = generator.sample(32)
    assert samples.shape == (32, 784) and bool(((samples >= 0) & (samples <= 1)).all())
    assert metrics.frechet_distance(samples[:, :20], x[:32, :20]) > 0


def test_fit_gan_deferred_loss_reads_as_on_a_gpu():
    """On a GPU the losses are read every 25 steps; the history and the NaN guard must agree."""
    _, _, reference = run_gan(steps=30)
    _, _, deferred = run_gan(steps=30, sync_interval=7)
    assert deferred.d_losses == reference.d_losses
    assert deferred.g_losses == reference.g_losses
    assert deferred.column("g_loss") == reference.column("g_loss")
    generator, discriminator, g_opt, d_opt = make_gan()
    calls = {"n": 0}

    def poisoned(d, fake):     # a NaN value with finite gradients: the step is taken
        calls["n"] += 1
        loss = losses.gan_generator_loss(d(fake))
        return loss + torch.tensor(math.nan) if calls["n"] == 9 else loss

    with pytest.raises(FloatingPointError, match="generator loss is nan at step 9"):
        fit_gan(generator, discriminator, REAL, g_optimizer=g_opt, d_optimizer=d_opt,
                steps=20, batch_size=32, g_loss_fn=poisoned, progress=False, sync_interval=7)
