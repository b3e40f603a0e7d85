"""Chapter 3 (VAE): vae_loss equals its definition and torch, its gradients pass finite
differences, the model and the reparameterisation behave, the importance-sampled NLL is exact
where the marginal likelihood is known, the pixel baseline is the maximum-likelihood fit, and
the MNIST loader works on a local stand-in (no network)."""
import gzip
import hashlib
import io
import math
import re
import struct

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from aigc_lib import data, losses, metrics
from aigc_lib.gradcheck import check_gradients
from aigc_lib.models.vae import VAE, VAEConfig, reparameterize

normal = torch.distributions.Normal


def batch(b=5, x_dim=6, d=3, seed=0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(b, x_dim, generator=g, dtype=dtype) * 3
    targets = (torch.rand(b, x_dim, generator=g) < 0.4).to(dtype)
    mu = torch.randn(b, d, generator=g, dtype=dtype)
    logvar = torch.randn(b, d, generator=g, dtype=dtype) * 0.5
    return logits, targets, mu, logvar


# --- losses.vae_loss -------------------------------------------------------------------------

@pytest.mark.parametrize("beta", [1.0, 0.5, 4.0, 0.0])
def test_vae_loss_terms_equal_torch(beta):
    logits, targets, mu, logvar = batch()
    loss, terms = losses.vae_loss(logits, targets, mu, logvar, beta=beta)
    recon = F.binary_cross_entropy_with_logits(logits, targets, reduction="sum") / len(logits)
    kl = torch.distributions.kl_divergence(normal(mu, (0.5 * logvar).exp()),
                                           normal(0.0, 1.0)).sum() / len(mu)
    torch.testing.assert_close(terms["recon"], recon)
    torch.testing.assert_close(terms["kl"], kl)
    torch.testing.assert_close(loss, recon + beta * kl)
    assert set(terms) == {"recon", "kl"}


def test_vae_loss_sums_every_non_batch_dimension():
    logits, targets, mu, logvar = batch(b=4, x_dim=64)
    flat, _ = losses.vae_loss(logits, targets, mu, logvar)
    images, _ = losses.vae_loss(logits.reshape(4, 1, 8, 8), targets.reshape(4, 1, 8, 8), mu, logvar)
    torch.testing.assert_close(flat, images)


def test_vae_loss_kl_matches_a_monte_carlo_estimate():
    _, _, mu, logvar = batch(b=3, d=4, seed=1)
    _, terms = losses.vae_loss(torch.zeros(3, 2, dtype=torch.float64),
                               torch.zeros(3, 2, dtype=torch.float64), mu, logvar)
    q = normal(mu, (0.5 * logvar).exp())
    z = q.sample((200_000,))
    per_draw = (q.log_prob(z) - normal(0.0, 1.0).log_prob(z)).sum(-1).mean(-1)
    stderr = per_draw.std() / math.sqrt(len(per_draw))
    assert abs(per_draw.mean() - terms["kl"]) < 5 * stderr


@pytest.mark.parametrize("beta", [1.0, 2.5])
def test_vae_loss_gradients(beta):
    logits, targets, mu, logvar = batch()
    report = check_gradients(lambda l, m, v: losses.vae_loss(l, targets, m, v, beta=beta)[0],
                             logits, mu, logvar, names=["logits", "mu", "logvar"])
    report.raise_if_failed()
    terms = check_gradients(lambda l, m, v: torch.stack(list(losses.vae_loss(l, targets, m, v)[1].values())),
                            logits, mu, logvar, names=["logits", "mu", "logvar"])
    terms.raise_if_failed()


def test_vae_loss_gradient_in_closed_form():
    logits, targets, mu, logvar = (t.clone().requires_grad_() for t in batch())
    losses.vae_loss(logits, targets.detach(), mu, logvar)[0].backward()
    b = len(mu)
    torch.testing.assert_close(logits.grad, (torch.sigmoid(logits) - targets).detach() / b)
    torch.testing.assert_close(mu.grad, mu.detach() / b)
    torch.testing.assert_close(logvar.grad, 0.5 * (logvar.detach().exp() - 1) / b)


LOGITS, TARGETS, MU, LOGVAR = batch(dtype=torch.float32)


@pytest.mark.parametrize("call, error, words", [
    (lambda: losses.vae_loss(LOGITS, TARGETS[:, :4], MU, LOGVAR), ValueError,
     "logits and targets must have the same shape"),
    (lambda: losses.vae_loss(LOGITS, TARGETS, MU, LOGVAR[:, :2]), ValueError,
     "mu and logvar must have the same shape"),
    (lambda: losses.vae_loss(LOGITS, TARGETS, MU[:4], LOGVAR[:4]), ValueError,
     "same batch size"),
    (lambda: losses.vae_loss(LOGITS[0], TARGETS[0], MU, LOGVAR), ValueError, "logits must have shape (B, ...)"),
    (lambda: losses.vae_loss(LOGITS, TARGETS, MU[0], LOGVAR[0]), ValueError, "mu must have 2 dimensions"),
    (lambda: losses.vae_loss(LOGITS, TARGETS, MU, LOGVAR, beta=-1.0), ValueError, "beta must be >= 0"),
    (lambda: losses.vae_loss(LOGITS, TARGETS, MU, LOGVAR, beta="1"), TypeError, "beta must be a number"),
    (lambda: losses.vae_loss(LOGITS, TARGETS.long(), MU, LOGVAR), TypeError, "targets must be a floating"),
])
def test_vae_loss_bad_input_names_the_argument(call, error, words):
    with pytest.raises(error, match=re.escape(words)):
        call()


# --- models.vae ------------------------------------------------------------------------------

def test_reparameterize_is_mu_plus_sigma_eps_with_the_right_gradients():
    mu, logvar = torch.randn(4, 3, dtype=torch.float64), torch.randn(4, 3, dtype=torch.float64)
    eps = torch.randn(4, 3, dtype=torch.float64)
    torch.testing.assert_close(reparameterize(mu, logvar, eps), mu + (0.5 * logvar).exp() * eps)
    check_gradients(lambda m, v: reparameterize(m, v, eps), mu, logvar,
                    names=["mu", "logvar"]).raise_if_failed()
    z = reparameterize(torch.full((200_000,), 1.5), torch.full((200_000,), math.log(4.0)),
                       generator=torch.Generator().manual_seed(0))
    assert abs(z.mean().item() - 1.5) < 0.02 and abs(z.var().item() - 4.0) < 0.05


def test_vae_shapes_and_outputs():
    torch.manual_seed(0)
    model = VAE(VAEConfig(x_dim=64, latent_dim=5, hidden=32, layers=2))
    x = (torch.rand(7, 64) < 0.3).float()
    logits, mu, logvar = model(x)
    assert logits.shape == (7, 64) and mu.shape == logvar.shape == (7, 5)
    assert model.decode(torch.zeros(3, 7, 5)).shape == (3, 7, 64)
    samples = model.sample(11, generator=torch.Generator().manual_seed(0))
    assert samples.shape == (11, 64) and ((samples > 0) & (samples < 1)).all()
    recon = model.reconstruct(x)
    torch.testing.assert_close(recon, torch.sigmoid(model.decode(model.encode(x)[0])))


def test_vae_loss_backpropagates_to_every_parameter():
    torch.manual_seed(0)
    model = VAE(VAEConfig(x_dim=10, latent_dim=2, hidden=8, layers=1))
    x = (torch.rand(6, 10) < 0.5).float()
    logits, mu, logvar = model(x)
    losses.vae_loss(logits, x, mu, logvar)[0].backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


def test_vae_end_to_end_gradient_check_with_fixed_noise():
    torch.manual_seed(0)
    model = VAE(VAEConfig(x_dim=5, latent_dim=2, hidden=4, layers=1)).double()
    x = (torch.rand(3, 5) < 0.5).double()
    eps = torch.randn(3, 2, dtype=torch.float64)
    w = model.encoder[0].weight

    def loss_of_first_layer(weight):
        h = F.linear(x, weight, model.encoder[0].bias)
        mu, logvar = model.encoder[2](F.silu(h)).chunk(2, dim=-1)
        logits = model.decode(reparameterize(mu, logvar, eps))
        return losses.vae_loss(logits, x, mu, logvar)[0]

    check_gradients(loss_of_first_layer, w.detach(), names=["encoder[0].weight"]).raise_if_failed()


@pytest.mark.parametrize("call, error, words", [
    (lambda m: m.encode(torch.zeros(2, 63)), ValueError, "x must have shape (B, 64)"),
    (lambda m: m.encode(torch.zeros(64)), ValueError, "x must have 2 dimensions"),
    (lambda m: m.decode(torch.zeros(2, 3)), ValueError, "z must have shape (..., 8)"),
    (lambda m: m.sample(0), ValueError, "n must be > 0"),
    (lambda m: VAE(VAEConfig(latent_dim=0)), ValueError, "latent_dim must be > 0"),
    (lambda m: VAE({"latent_dim": 2}), TypeError, "config must be a VAEConfig"),
    (lambda m: reparameterize(torch.zeros(2), torch.zeros(3)), ValueError, "mu and logvar"),
    (lambda m: reparameterize(torch.zeros(2), torch.zeros(2), torch.zeros(3)), ValueError, "mu and eps"),
])
def test_vae_bad_input(call, error, words):
    model = VAE()
    with pytest.raises(error, match=re.escape(words)):
        call(model)


# --- metrics ---------------------------------------------------------------------------------

def prior_proposal_model(x_dim=6):
    """q(z|x) = p(z) = N(0, I) and a decoder that ignores z: then every importance weight equals
    p(x) exactly, whatever the draw."""
    torch.manual_seed(0)
    model = VAE(VAEConfig(x_dim=x_dim, latent_dim=2, hidden=4, layers=1))
    with torch.no_grad():
        model.encoder[-1].weight.zero_(); model.encoder[-1].bias.zero_()
        model.decoder[-1].weight.zero_(); model.decoder[-1].bias.copy_(torch.randn(x_dim))
    return model


def test_importance_sampled_nll_is_exact_when_weights_are_constant():
    model = prior_proposal_model()
    x = (torch.rand(9, 6) < 0.5).float()
    probs = torch.sigmoid(model.decoder[-1].bias.detach().double())
    exact = -torch.distributions.Bernoulli(probs=probs).log_prob(x.double()).sum(1)
    for k in (1, 7):
        torch.testing.assert_close(metrics.importance_sampled_nll(model, x, k=k), exact,
                                   rtol=0, atol=1e-5)


def log_marginal_by_quadrature(model, x):
    """log p(x) for a 1-D latent: integrate p(x|z) p(z) over a fine grid of z."""
    z = torch.linspace(-12, 12, 24_001).unsqueeze(1)
    log_px_z = -F.binary_cross_entropy_with_logits(
        model.decode(z).unsqueeze(1).expand(-1, len(x), -1),
        x.expand(len(z), -1, -1), reduction="none").sum(-1).double()
    log_joint = log_px_z + normal(0.0, 1.0).log_prob(z.double())
    return torch.logsumexp(log_joint, 0) + math.log(z[1, 0] - z[0, 0])


@torch.no_grad()
def test_importance_sampled_nll_converges_to_the_marginal_likelihood():
    torch.manual_seed(3)
    model = VAE(VAEConfig(x_dim=6, latent_dim=1, hidden=16, layers=1))
    with torch.no_grad():
        model.decoder[-1].weight.mul_(4.0)  # make p(x|z) depend strongly on z
    x = (torch.rand(5, 6) < 0.5).float()
    exact = -log_marginal_by_quadrature(model, x)
    g = torch.Generator().manual_seed(0)
    big_k = metrics.importance_sampled_nll(model, x, k=50_000, generator=g)
    torch.testing.assert_close(big_k, exact, rtol=0, atol=0.02)
    repeats = x.repeat(400, 1)                       # 400 independent estimates per image
    one = metrics.importance_sampled_nll(model, repeats, k=1, generator=g).view(400, len(x))
    ten = metrics.importance_sampled_nll(model, repeats, k=10, generator=g).view(400, len(x))
    assert (one.mean(0) >= ten.mean(0) - 0.01).all() and (ten.mean(0) >= exact - 0.01).all()


@torch.no_grad()
def test_importance_sampled_nll_at_k1_is_the_negative_elbo_on_average():
    torch.manual_seed(1)
    model = VAE(VAEConfig(x_dim=6, latent_dim=2, hidden=8, layers=1))
    x = (torch.rand(4, 6) < 0.5).float()
    g = torch.Generator().manual_seed(0)
    draws = metrics.importance_sampled_nll(model, x.repeat(4000, 1), k=1,
                                           generator=g).view(4000, len(x))  # (draws, images)
    mu, logvar = model.encode(x)
    kl = losses.kl_diag_gaussians(mu, logvar)
    z = mu + (0.5 * logvar).exp() * torch.randn(20_000, *mu.shape, generator=g)
    recon = F.binary_cross_entropy_with_logits(model.decode(z), x.expand(len(z), -1, -1),
                                               reduction="none").sum(-1).mean(0)
    stderr = draws.std(0) / math.sqrt(len(draws))
    assert ((draws.mean(0) - (recon + kl).double()).abs() < 5 * stderr + 1e-3).all()


def test_importance_sampled_nll_keeps_the_training_mode_and_chunks_consistently():
    model = prior_proposal_model()
    model.train()
    x = (torch.rand(10, 6) < 0.5).float()
    a = metrics.importance_sampled_nll(model, x, k=5, chunk=30)   # one image per chunk
    b = metrics.importance_sampled_nll(model, x, k=5)
    assert model.training and a.shape == (10,) and a.dtype == torch.float64
    torch.testing.assert_close(a, b, rtol=0, atol=1e-5)


@pytest.mark.parametrize("call, error, words", [
    (lambda m: metrics.importance_sampled_nll(m, torch.full((2, 6), 0.5)), ValueError, "x must hold binary"),
    (lambda m: metrics.importance_sampled_nll(m, torch.zeros(2, 6), k=0), ValueError, "k must be > 0"),
    (lambda m: metrics.importance_sampled_nll(torch.nn.Linear(2, 2), torch.zeros(2, 6)), TypeError,
     "model must have encode"),
    (lambda m: metrics.importance_sampled_nll(m, torch.zeros(6)), ValueError, "x must have 2 dimensions"),
])
def test_importance_sampled_nll_bad_input(call, error, words):
    with pytest.raises(error, match=re.escape(words)):
        call(prior_proposal_model())


def test_independent_bernoulli_nll_is_the_maximum_likelihood_fit():
    g = torch.Generator().manual_seed(0)
    train = (torch.rand(200, 5, generator=g) < torch.tensor([0.1, 0.3, 0.5, 0.7, 0.9])).float()
    test = (torch.rand(30, 5, generator=g) < 0.5).float()
    p = train.double().mean(0)
    ref = -torch.distributions.Bernoulli(probs=p).log_prob(test.double()).sum(1)
    torch.testing.assert_close(metrics.independent_bernoulli_nll(train, test), ref)
    train_nll = metrics.independent_bernoulli_nll(train, train).mean()

    def mean_nll(q):
        return -torch.distributions.Bernoulli(probs=q).log_prob(train.double()).sum(1).mean()

    for delta in (-0.02, 0.02):
        for i in range(5):
            assert mean_nll(p + delta * F.one_hot(torch.tensor(i), 5)) > train_nll
    smooth = metrics.independent_bernoulli_nll(train, test, pseudocount=1.0)
    q = (train.double().sum(0) + 1) / (len(train) + 2)
    torch.testing.assert_close(smooth, -torch.distributions.Bernoulli(probs=q).log_prob(test.double()).sum(1))


def test_independent_bernoulli_nll_is_infinite_for_unseen_pixels_without_pseudocount():
    train, test = torch.zeros(4, 2), torch.tensor([[1.0, 0.0], [0.0, 0.0]])
    nll = metrics.independent_bernoulli_nll(train, test)
    assert math.isinf(nll[0]) and nll[1] == 0
    assert torch.isfinite(metrics.independent_bernoulli_nll(train, test, pseudocount=0.5)).all()


@pytest.mark.parametrize("args, words", [
    ((torch.full((3, 4), 0.5), torch.zeros(2, 4)), "train must hold binary"),
    ((torch.zeros(3, 4), torch.zeros(2, 5)), "same number of pixels"),
    ((torch.zeros(3, 4), torch.zeros(2, 4), -1.0), "pseudocount must be >= 0"),
])
def test_independent_bernoulli_nll_bad_input(args, words):
    with pytest.raises(ValueError, match=re.escape(words)):
        metrics.independent_bernoulli_nll(*args)


# --- data.mnist on a local stand-in ----------------------------------------------------------

def idx_bytes(array: np.ndarray) -> bytes:
    header = bytes([0, 0, 0x08, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    return gzip.compress(header + array.astype(np.uint8).tobytes())


def write_stand_in(folder, split="test", n=5):
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
    labels = rng.integers(0, 10, size=n, dtype=np.uint8)
    (img_name, _), (lab_name, _) = data.MNIST_FILES[split]
    payloads = {img_name: idx_bytes(images), lab_name: idx_bytes(labels)}
    for name, payload in payloads.items():
        (folder / name).write_bytes(payload)
    return images, labels, payloads


@pytest.mark.parametrize("split", ["train", "test"])
def test_mnist_loads_local_files(tmp_path, split):
    images, labels, _ = write_stand_in(tmp_path, split)
    x, y = data.mnist(split, root=tmp_path, download=False)
    assert x.shape == (5, 784) and x.dtype == torch.float32 and y.dtype == torch.int64
    torch.testing.assert_close(x, torch.tensor(images.reshape(5, -1) / 255.0, dtype=torch.float32))
    assert y.tolist() == labels.tolist()
    xb, _ = data.mnist(split, flatten=False, binarize=0.5, root=tmp_path, download=False)
    assert xb.shape == (5, 28, 28)
    assert torch.equal(xb, torch.tensor(images / 255.0 > 0.5, dtype=torch.float32))


def test_read_idx_reads_plain_and_gzip_and_rejects_bad_files(tmp_path):
    array = np.arange(24, dtype=np.uint8).reshape(2, 3, 4)
    (tmp_path / "a.gz").write_bytes(idx_bytes(array))
    (tmp_path / "a").write_bytes(gzip.decompress(idx_bytes(array)))
    assert np.array_equal(data.read_idx(tmp_path / "a.gz"), array)
    assert np.array_equal(data.read_idx(tmp_path / "a"), array)
    (tmp_path / "bad").write_bytes(b"\x00\x00\x0d\x01" + struct.pack(">I", 1) + b"\x00" * 4)
    with pytest.raises(ValueError, match="not an IDX file of unsigned bytes"):
        data.read_idx(tmp_path / "bad")
    (tmp_path / "short").write_bytes(gzip.decompress(idx_bytes(array))[:-1])
    with pytest.raises(ValueError, match=r"shape \(2, 3, 4\)"):
        data.read_idx(tmp_path / "short")


def test_mnist_never_substitutes_missing_or_corrupted_files(tmp_path, monkeypatch):
    with pytest.raises(FileNotFoundError, match="download=True"):
        data.mnist("test", root=tmp_path, download=False)
    (tmp_path / "source").mkdir()
    _, _, payloads = write_stand_in(tmp_path / "source")
    requested = []

    def fake_urlopen(url, timeout):
        requested.append(url)
        return io.BytesIO(payloads[url.rsplit("/", 1)[1]])

    monkeypatch.setattr("urllib.request.urlopen", fake_urlopen)
    target = tmp_path / "cache"
    with pytest.raises(ValueError, match="MD5"):          # stand-in bytes are not MNIST's
        data.mnist("test", root=target)
    assert not target.exists() or not any(target.iterdir())  # nothing was saved
    honest = {"test": tuple((name, hashlib.md5(payloads[name]).hexdigest())
                            for name, _ in data.MNIST_FILES["test"])}
    monkeypatch.setattr(data, "MNIST_FILES", {**data.MNIST_FILES, **honest})
    x, y = data.mnist("test", root=target)
    assert x.shape == (5, 784) and len(y) == 5
    assert requested[-2:] == [data.MNIST_URL + name for name, _ in honest["test"]]


@pytest.mark.parametrize("kwargs, error, words", [
    ({"split": "val"}, ValueError, "split"),
    ({"binarize": 1.0}, ValueError, "binarize"),
    ({"root": 3}, TypeError, "root"),
])
def test_mnist_bad_input(kwargs, error, words, tmp_path):
    with pytest.raises(error, match=words):
        data.mnist(**kwargs)
