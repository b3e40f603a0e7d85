"""Chapter 4, beyond the plain GAN: the Wasserstein critic's losses and the WGAN-GP gradient
penalty (closed forms, a per-example loop, finite differences), spectral normalisation and the
Lipschitz bound, the conditional generator and projection discriminator, the DCGAN-style
convolutional players, and the improved precision and recall (a brute-force reference and
constructed generators whose precision and recall are known)."""
import itertools
import math

import pytest
import torch
from torch import nn

from aigc_lib import data, losses, metrics
from aigc_lib.gradcheck import check_gradients
from aigc_lib.models import gan
from aigc_lib.training import fit_gan

pytestmark = pytest.mark.usefixtures("one_thread")


def _rng(seed):
    return torch.Generator().manual_seed(seed)


# --- losses.wgan_critic_loss / wgan_generator_loss -------------------------------------------

def test_wgan_losses_values_and_gradients():
    real = torch.randn(5, generator=_rng(0), dtype=torch.float64)
    fake = torch.randn(3, generator=_rng(1), dtype=torch.float64)
    torch.testing.assert_close(losses.wgan_critic_loss(real, fake), fake.mean() - real.mean())
    torch.testing.assert_close(losses.wgan_generator_loss(fake), -fake.mean())
    r, f = real.clone().requires_grad_(), fake.clone().requires_grad_()
    losses.wgan_critic_loss(r, f).backward()
    torch.testing.assert_close(r.grad, torch.full_like(real, -1 / 5))
    torch.testing.assert_close(f.grad, torch.full_like(fake, 1 / 3))
    check_gradients(losses.wgan_critic_loss, real, fake,
                    names=["real_scores", "fake_scores"]).raise_if_failed()
    check_gradients(losses.wgan_generator_loss, fake, names=["fake_scores"]).raise_if_failed()


@pytest.mark.parametrize("call, error, words", [
    (lambda: losses.wgan_critic_loss([1.0], torch.zeros(2)), TypeError, "real_scores"),
    (lambda: losses.wgan_critic_loss(torch.zeros(2), torch.zeros(2, dtype=torch.long)),
     TypeError, "fake_scores"),
    (lambda: losses.wgan_critic_loss(torch.zeros(2), torch.zeros(0)), ValueError, "empty"),
    (lambda: losses.wgan_generator_loss(torch.zeros(0)), ValueError, "empty"),
    (lambda: losses.wgan_generator_loss("x"), TypeError, "fake_scores"),
])
def test_wgan_losses_bad_input(call, error, words):
    with pytest.raises(error, match=words):
        call()


# --- losses.gradient_penalty -------------------------------------------------------------------

def _tanh_critic(weights):
    """A small critic f(x) = v . tanh(W x) whose parameters are one flat tensor."""
    w, v = weights[:12].view(4, 3), weights[12:]
    return lambda x: torch.tanh(x @ w.T) @ v


def test_gradient_penalty_of_a_linear_critic_is_known_for_any_mix():
    real = torch.randn(6, 3, generator=_rng(0), dtype=torch.float64)
    fake = torch.randn(6, 3, generator=_rng(1), dtype=torch.float64)
    for w in (torch.tensor([0.6, 0.8, 0.0]), torch.tensor([3.0, -1.0, 2.0])):
        critic = nn.Linear(3, 1).double()
        with torch.no_grad():
            critic.weight.copy_(w)
        expected = (w.norm().double() - 1) ** 2
        for eps in (None, torch.zeros(6), torch.ones(6)):
            penalty = losses.gradient_penalty(lambda x: critic(x).squeeze(-1), real, fake, eps)
            torch.testing.assert_close(penalty, expected)


def test_gradient_penalty_of_the_norm_is_zero_and_of_a_quadratic_is_known():
    real = torch.randn(5, 2, generator=_rng(2), dtype=torch.float64) + 3
    fake = torch.randn(5, 2, generator=_rng(3), dtype=torch.float64) + 3
    eps = torch.rand(5, generator=_rng(4), dtype=torch.float64)
    zero = losses.gradient_penalty(lambda x: x.norm(dim=1), real, fake, eps)
    torch.testing.assert_close(zero, torch.zeros((), dtype=torch.float64))
    mixed = eps[:, None] * real + (1 - eps[:, None]) * fake
    quad = losses.gradient_penalty(lambda x: 0.5 * 2.0 * x.square().sum(1), real, fake, eps)
    torch.testing.assert_close(quad, (2.0 * mixed.norm(dim=1) - 1).square().mean())


def test_gradient_penalty_equals_a_per_example_loop():
    weights = torch.randn(16, generator=_rng(5), dtype=torch.float64)
    critic = _tanh_critic(weights)
    real = torch.randn(7, 3, generator=_rng(6), dtype=torch.float64)
    fake = torch.randn(7, 3, generator=_rng(7), dtype=torch.float64)
    eps = torch.rand(7, generator=_rng(8), dtype=torch.float64)
    terms = []
    for i in range(7):
        x = (eps[i] * real[i] + (1 - eps[i]) * fake[i]).clone().requires_grad_()
        (grad,) = torch.autograd.grad(critic(x[None]).sum(), x)
        terms.append((grad.norm() - 1) ** 2)
    torch.testing.assert_close(losses.gradient_penalty(critic, real, fake, eps),
                               torch.stack(terms).mean())


def test_gradient_penalty_images_shape_and_default_mix():
    critic = nn.Sequential(nn.Flatten(), nn.Linear(12, 1))
    real, fake = torch.randn(4, 3, 4), torch.randn(4, 3, 4)
    torch.manual_seed(0)
    a = losses.gradient_penalty(lambda x: critic(x).squeeze(-1), real, fake)
    torch.manual_seed(0)
    b = losses.gradient_penalty(lambda x: critic(x).squeeze(-1), real, fake,
                                torch.rand(4))
    torch.testing.assert_close(a, b)


def test_gradient_penalty_gradients_pass_finite_differences():
    real = torch.randn(4, 3, generator=_rng(9), dtype=torch.float64)
    fake = torch.randn(4, 3, generator=_rng(10), dtype=torch.float64)
    eps = torch.rand(4, generator=_rng(11), dtype=torch.float64)
    weights = torch.randn(16, generator=_rng(12), dtype=torch.float64)

    def penalty(w, r, f):
        with torch.enable_grad():   # finite differences run without grad; the penalty needs it
            return losses.gradient_penalty(_tanh_critic(w), r, f, eps)

    check_gradients(lambda w: penalty(w, real, fake), weights,
                    names=["critic weights"]).raise_if_failed()
    w = weights.clone().requires_grad_()
    assert torch.autograd.gradcheck(lambda w_: penalty(w_, real, fake), (w,))
    # the interpolates are detached: no gradient reaches the real or generated batches
    r, f = real.clone().requires_grad_(), fake.clone().requires_grad_()
    penalty(weights.clone().requires_grad_(), r, f).backward()
    assert r.grad is None and f.grad is None


def test_gradient_penalty_bad_input():
    critic = nn.Linear(3, 1)
    score = lambda x: critic(x).squeeze(-1)   # noqa: E731
    x = torch.zeros(4, 3)
    with pytest.raises(TypeError, match="critic must be"):
        losses.gradient_penalty("critic", x, x)
    with pytest.raises(ValueError, match="real and fake must have the same shape"):
        losses.gradient_penalty(score, x, torch.zeros(5, 3))
    with pytest.raises(ValueError, match="epsilon must have one weight per row"):
        losses.gradient_penalty(score, x, x, torch.zeros(3))
    with pytest.raises(ValueError, match="one score per row"):
        losses.gradient_penalty(gan.Discriminator(3, pack=2), x, x)
    with pytest.raises(TypeError, match="real must be a floating-point"):
        losses.gradient_penalty(score, x.long(), x)


def test_fit_gan_trains_a_wasserstein_critic_with_the_penalty():
    """Through fit_gan's hooks, a WGAN-GP critic estimates W1 between N(0, 1) and N(3, 1)
    (exactly 3: a translation) while the generator is frozen, inflated by the soft penalty's
    optimal slope s* = 1 + W1 / (2 lambda) (chapter 4), then moves the generator towards the
    data."""
    torch.manual_seed(0)
    real = torch.randn(2048, 1) + 3.0
    gen = gan.Generator(1, 1, layers=0)
    with torch.no_grad():
        gen.net[0].weight.fill_(1.0)
        gen.net[0].bias.fill_(0.0)
    critic = gan.Discriminator(1, hidden=32)
    torch.nn.init.zeros_(critic.net[-1].weight)   # a flat start: no slope of the wrong sign

    def critic_loss(c, r, f):
        return losses.wgan_critic_loss(c(r), c(f)) + 10 * losses.gradient_penalty(c, r, f)

    def train(lr_g, steps):
        # fit_gan splits each batch into d_steps critic batches: 768 gives the critic 256 rows
        return fit_gan(gen, critic, real, steps=steps, batch_size=768, progress=False,
                       d_steps=3, d_loss_fn=critic_loss, eval_every=steps,
                       g_loss_fn=lambda c, f: losses.wgan_generator_loss(c(f)),
                       g_optimizer=torch.optim.SGD(gen.parameters(), lr=lr_g),
                       d_optimizer=torch.optim.Adam(critic.parameters(), lr=3e-3,
                                                    betas=(0.5, 0.9)))

    train(0.0, 300)
    with torch.no_grad():
        w1 = critic(real).mean() - critic(gen.sample(4096, generator=_rng(0))).mean()
    assert abs(w1.item() - 3.0 * (1 + 3.0 / 20)) < 0.15
    train(0.05, 20)
    assert 0.5 < gen.net[0].bias.item() < 2.5      # about 20 steps of size 0.05 towards 3


# --- spectral normalisation and the Lipschitz bound ---------------------------------------------

def test_spectral_norm_makes_each_layer_and_the_bound_about_one():
    torch.manual_seed(0)
    d = gan.Discriminator(5, hidden=32, spectral_norm=True)
    with torch.no_grad():
        for _ in range(30):                  # power iterations run in training mode
            d(torch.randn(8, 5))
    d.eval()
    layers = [m for m in d.net if isinstance(m, nn.Linear)]
    for layer in layers:
        top = torch.linalg.svdvals(layer.weight.detach())[0].item()
        assert abs(top - 1) < 1e-3
        raw = layer.parametrizations.weight.original.detach()
        u, v = layer.parametrizations.weight[0]._u, layer.parametrizations.weight[0]._v
        torch.testing.assert_close(u @ raw @ v, torch.linalg.svdvals(raw)[0], rtol=1e-3,
                                   atol=0)
    bound = gan.lipschitz_bound(d.net)
    assert abs(bound - 1) < 5e-3
    x = torch.randn(200, 5, requires_grad=True)
    (grad,) = torch.autograd.grad(d(x).sum(), x)
    assert grad.norm(dim=1).max().item() <= bound * (1 + 1e-5)


def test_lipschitz_bound_is_exact_for_one_linear_layer_and_an_upper_bound_otherwise():
    torch.manual_seed(1)
    layer = nn.Linear(4, 1)
    torch.testing.assert_close(gan.lipschitz_bound(nn.Sequential(layer)),
                               layer.weight.norm().item())
    net = nn.Sequential(nn.Linear(4, 16), nn.LeakyReLU(0.2), nn.Linear(16, 16), nn.Tanh(),
                        nn.Linear(16, 1), nn.Sigmoid())
    expected = math.prod(torch.linalg.svdvals(m.weight.double())[0].item()
                         for m in net if isinstance(m, nn.Linear)) * 0.25
    torch.testing.assert_close(gan.lipschitz_bound(net), expected)
    x = torch.randn(500, 4, requires_grad=True)
    (grad,) = torch.autograd.grad(net(x).sum(), x)
    assert grad.norm(dim=1).max().item() <= expected
    assert gan.lipschitz_bound(nn.Sequential(nn.LeakyReLU(3.0))) == 3.0


def test_spectral_norm_off_keeps_the_discriminator_as_it_was():
    torch.manual_seed(2)
    plain = gan.Discriminator(3, hidden=8)
    torch.manual_seed(2)
    default = gan.Discriminator(3, hidden=8, spectral_norm=False)
    assert list(plain.state_dict()) == list(default.state_dict())
    assert list(plain.state_dict()) == ["net.0.weight", "net.0.bias", "net.2.weight",
                                        "net.2.bias", "net.4.weight", "net.4.bias"]


def test_lipschitz_bound_and_spectral_norm_bad_input():
    with pytest.raises(TypeError, match="net must be a torch.nn.Sequential"):
        gan.lipschitz_bound(nn.Linear(2, 2))
    with pytest.raises(TypeError, match="Conv2d"):
        gan.lipschitz_bound(nn.Sequential(nn.Conv2d(1, 1, 3)))
    with pytest.raises(TypeError, match="spectral_norm must be a bool"):
        gan.Discriminator(2, spectral_norm="yes")


# --- conditional GAN ---------------------------------------------------------------------------

def test_conditional_generator_draws_uniform_labels_from_the_last_noise_coordinate():
    torch.manual_seed(0)
    g = gan.ConditionalGenerator(noise_dim=3, n_classes=10, data_dim=6, hidden=8)
    assert g.latent_dim == 4
    z = torch.randn(50_000, 4, generator=_rng(0))
    out = g(z)
    assert out.shape == (50_000, 16)
    one_hot = out[:, 6:]
    assert torch.equal(one_hot.sum(1), torch.ones(50_000))
    labels = one_hot.argmax(1)
    shares = torch.bincount(labels, minlength=10) / 50_000
    assert (shares - 0.1).abs().max() < 0.01
    torch.testing.assert_close(out[:, :6], g.generate(z[:, :3], labels))
    expected = (torch.special.ndtr(z[:, 3]) * 10).long().clamp(max=9)
    assert torch.equal(labels, expected)


def test_conditional_generator_sample_and_with_labels():
    torch.manual_seed(1)
    g = gan.ConditionalGenerator(2, 3, 4, hidden=8)
    labels = torch.tensor([0, 2, 1, 2])
    a = g.sample(labels, generator=_rng(3))
    noise = torch.randn(4, 2, generator=_rng(3))
    torch.testing.assert_close(a, g.generate(noise, labels))
    assert a.shape == (4, 4) and bool(((a >= 0) & (a <= 1)).all()) and not a.requires_grad
    joint = gan.with_labels(a, labels, 3)
    assert torch.equal(joint[:, 4:].argmax(1), labels) and torch.equal(joint[:, :4], a)


def test_projection_discriminator_is_the_stated_formula():
    torch.manual_seed(2)
    d = gan.ProjectionDiscriminator(data_dim=5, n_classes=4, hidden=6, layers=1).double()
    x = torch.randn(3, 5, dtype=torch.float64)
    y = torch.tensor([0, 3, 1])
    h = torch.nn.functional.leaky_relu(d.features[0][0](x), 0.2)
    expected = (h @ d.out.weight.T).squeeze(-1) + d.out.bias + (d.embed.weight.T[y] * h).sum(1)
    torch.testing.assert_close(d(gan.with_labels(x, y, 4)), expected)
    check_gradients(lambda xy: d(xy), gan.with_labels(x, y, 4), names=["xy"]).raise_if_failed()


def test_conditional_models_gradients_and_training_through_fit_gan():
    torch.manual_seed(3)
    g = gan.ConditionalGenerator(2, 3, 4, hidden=8).double()
    d = gan.ProjectionDiscriminator(4, 3, hidden=8, spectral_norm=True).double()
    z = torch.randn(6, 3, dtype=torch.float64)
    d.eval()
    check_gradients(lambda z_: d(g(z_)), z, names=["z"]).raise_if_failed()
    d.train()
    x, y = torch.rand(256, 4), torch.randint(0, 3, (256,))
    g, d = gan.ConditionalGenerator(2, 3, 4, hidden=8), gan.ProjectionDiscriminator(4, 3)
    history = fit_gan(g, d, gan.with_labels(x, y, 3), steps=20, batch_size=32, progress=False,
                      g_optimizer=torch.optim.Adam(g.parameters(), 1e-3),
                      d_optimizer=torch.optim.Adam(d.parameters(), 1e-3))
    assert len(history.d_losses) == 20


@pytest.mark.parametrize("call, error, words", [
    (lambda: gan.with_labels(torch.zeros(2, 3), torch.tensor([0, 5]), 3), ValueError,
     r"labels must be class indices in \[0, 3\)"),
    (lambda: gan.with_labels(torch.zeros(2, 3), torch.tensor([0.0, 1.0]), 3), TypeError,
     "labels must be an integer"),
    (lambda: gan.with_labels(torch.zeros(2, 3), torch.tensor([0]), 3), ValueError,
     "one entry per image"),
    (lambda: gan.ConditionalGenerator(2, 3, 4).sample(torch.tensor([3])), ValueError,
     "labels must be class indices"),
    (lambda: gan.ConditionalGenerator(2, 3, 4).sample(torch.tensor([0.0])), TypeError,
     "int64"),
    (lambda: gan.ConditionalGenerator(2, 3, 4)(torch.zeros(2, 2)), ValueError,
     r"z must have shape \(B, 3\)"),
    (lambda: gan.ProjectionDiscriminator(4, 3)(torch.zeros(2, 4)), ValueError,
     r"xy must have shape \(B, 7\)"),
    (lambda: gan.ProjectionDiscriminator(4, 3, layers=0), ValueError, "layers must be >= 1"),
    (lambda: gan.ConditionalGenerator(2, 3, 4).generate(torch.zeros(2, 2),
                                                        torch.zeros(2)), TypeError, "int64"),
    (lambda: gan.ConditionalGenerator(2, 3, 4).generate(torch.zeros(2, 2),
                                                        torch.zeros(3, dtype=torch.long)),
     ValueError, r"noise must be \(B, 2\) and labels \(B,\)"),
    (lambda: gan.ConditionalGenerator(2, 0, 4), ValueError, "n_classes must be > 0"),
])
def test_conditional_models_bad_input(call, error, words):
    with pytest.raises(error, match=words):
        call()


# --- DCGAN-style convolutional players -----------------------------------------------------------

@pytest.mark.parametrize("side", [8, 28])
def test_conv_players_shapes_and_sampling_mode(side):
    torch.manual_seed(0)
    g, d = gan.ConvGenerator(5, side, channels=8), gan.ConvDiscriminator(side, channels=8)
    x = g(torch.randn(3, 5))
    assert x.shape == (3, side * side) and bool(((x >= 0) & (x <= 1)).all())
    assert d(x).shape == (3,)
    g.train()
    a = g.sample(4, generator=_rng(1))
    assert g.training and a.shape == (4, side * side)
    g.eval()
    torch.testing.assert_close(a, g(torch.randn(4, 5, generator=_rng(1))))


def test_conv_players_gradients_and_training_through_fit_gan():
    torch.manual_seed(1)
    g = gan.ConvGenerator(3, 8, channels=4).double().eval()
    d = gan.ConvDiscriminator(8, channels=4, spectral_norm=True).double().eval()
    check_gradients(lambda z: d(g(z)), torch.randn(2, 3, dtype=torch.float64),
                    names=["z"]).raise_if_failed()
    x, _ = data.digits("train")
    g, d = gan.ConvGenerator(4, 8, channels=8), gan.ConvDiscriminator(8, channels=8)
    history = fit_gan(g, d, x[:256], steps=10, batch_size=32, progress=False,
                      g_optimizer=torch.optim.Adam(g.parameters(), 1e-3),
                      d_optimizer=torch.optim.Adam(d.parameters(), 1e-3))
    assert len(history.g_losses) == 10


def test_conv_players_bad_config():
    with pytest.raises(ValueError, match="side must be a multiple of 4"):
        gan.ConvGenerator(4, 10)
    with pytest.raises(ValueError, match=r"x must have shape \(B, 64\)"):
        gan.ConvDiscriminator(8)(torch.zeros(2, 65))


# --- metrics.precision_recall ---------------------------------------------------------------------

def _brute_precision_recall(real, fake, k):
    """Improved precision and recall with explicit loops over points (the reference)."""
    def radius(points, i):
        others = sorted(math.dist(points[i], points[j]) for j in range(len(points)) if j != i)
        return others[k - 1]

    def inside(query, points):
        return any(math.dist(query, points[i]) <= radius(points, i)
                   for i in range(len(points)))

    real, fake = real.tolist(), fake.tolist()
    precision = sum(inside(q, real) for q in fake) / len(fake)
    recall = sum(inside(q, fake) for q in real) / len(real)
    return precision, recall


@pytest.mark.parametrize("k, seed", list(itertools.product([1, 3], [0, 1])))
def test_precision_recall_equals_brute_force(k, seed):
    real = torch.randn(40, 3, generator=_rng(seed), dtype=torch.float64)
    fake = 1.5 * torch.randn(35, 3, generator=_rng(seed + 10), dtype=torch.float64) + 0.5
    ours = metrics.precision_recall(real, fake, k=k, chunk=7)
    precision, recall = _brute_precision_recall(real, fake, k)
    assert ours.precision == pytest.approx(precision) and ours.recall == pytest.approx(recall)
    assert ours.k == k


def test_knn_radii_equal_brute_force():
    x = torch.randn(20, 2, generator=_rng(3), dtype=torch.float64)
    radii = metrics.knn_radii(x, 3, chunk=6)
    for i in range(20):
        others = sorted(math.dist(x[i].tolist(), x[j].tolist()) for j in range(20) if j != i)
        assert radii[i].item() == pytest.approx(others[2])


def _ring(n, seed, modes=None):
    x, labels = data.gaussian_ring(n, std=0.05, generator=_rng(seed))
    return x if modes is None else x[torch.isin(labels, torch.tensor(modes))]


def test_precision_recall_of_constructed_generators():
    real = _ring(2000, 0)
    same = metrics.precision_recall(real, _ring(2000, 1))
    one_mode = metrics.precision_recall(real, _ring(16_000, 2, modes=[3])[:2000])
    blurry = metrics.precision_recall(real, _ring(2000, 3) + 0.5 * torch.randn(
        2000, 2, generator=_rng(4)))
    assert same.precision > 0.9 and same.recall > 0.9
    assert one_mode.precision > 0.9 and one_mode.recall < 0.2      # copies one mode
    assert blurry.precision < 0.3 and blurry.recall > 0.9           # smears everywhere


@pytest.mark.parametrize("call, error, words", [
    (lambda: metrics.precision_recall(torch.zeros(5, 2), torch.zeros(5, 3)), ValueError,
     "same number of columns"),
    (lambda: metrics.precision_recall(torch.zeros(3, 2), torch.zeros(5, 2)), ValueError,
     "real_features needs more than k=3 rows"),
    (lambda: metrics.precision_recall(torch.zeros(5, 2), torch.zeros(5, 2), k=0), ValueError,
     "k must be > 0"),
    (lambda: metrics.precision_recall(torch.zeros(5), torch.zeros(5, 2)), ValueError,
     "real_features must have 2 dimensions"),
    (lambda: metrics.precision_recall(torch.zeros(5, 2), torch.full((5, 2), math.nan)),
     ValueError, "fake_features contains NaN"),
    (lambda: metrics.knn_radii(torch.zeros(2, 2), 2), ValueError, "more than k=2 rows"),
])
def test_precision_recall_bad_input(call, error, words):
    with pytest.raises(error, match=words):
        call()
