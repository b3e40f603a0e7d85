"""Losses equal torch.nn.functional / torch.distributions, pass finite-difference checks, and
reject bad input with errors naming the argument."""
import math

import pytest
import torch
import torch.nn.functional as F

from aigc_lib import losses
from aigc_lib.gradcheck import check_gradients

torch.manual_seed(0)
LOGITS = torch.randn(6, 5) * 4
TARGETS = torch.rand(6, 5)


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_bce_with_logits_equals_torch(reduction):
    for dtype, tol in ((torch.float32, 1e-6), (torch.float64, 1e-12)):
        x, y = LOGITS.to(dtype), TARGETS.to(dtype)
        ours = losses.bce_with_logits(x, y, reduction=reduction)
        ref = F.binary_cross_entropy_with_logits(x, y, reduction=reduction)
        torch.testing.assert_close(ours, ref, rtol=tol, atol=tol)


def test_bce_with_logits_is_stable_where_the_naive_formula_is_not():
    x, y = torch.tensor([100.0, -100.0]), torch.tensor([0.0, 1.0])
    naive = losses.naive_bce_with_logits(x, y, reduction="none")
    stable = losses.bce_with_logits(x, y, reduction="none")
    assert not torch.isfinite(naive).any()
    torch.testing.assert_close(stable, torch.tensor([100.0, 100.0]))


def test_bce_gradient_is_sigmoid_minus_target():
    x = LOGITS.double().requires_grad_()
    losses.bce_with_logits(x, TARGETS.double(), reduction="sum").backward()
    torch.testing.assert_close(x.grad, torch.sigmoid(x.detach()) - TARGETS.double())
    check_gradients(lambda z, y: losses.bce_with_logits(z, y), LOGITS, TARGETS,
                    names=["logits", "targets"]).raise_if_failed()


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_gaussian_nll_equals_torch(reduction):
    mean, target, var = torch.randn(8, 3), torch.randn(8, 3), torch.rand(8, 3) + 0.1
    ours = losses.gaussian_nll(target, mean, var, reduction=reduction)
    ref = F.gaussian_nll_loss(mean, target, var, full=True, eps=0.0, reduction=reduction)
    torch.testing.assert_close(ours, ref, rtol=1e-6, atol=1e-6)


def test_gaussian_nll_with_fixed_variance_is_scaled_mse_plus_constant():
    mean, target = torch.randn(50), torch.randn(50)
    nll = losses.gaussian_nll(target, mean, 1.0)
    mse = F.mse_loss(mean, target)
    torch.testing.assert_close(nll, 0.5 * mse + 0.5 * math.log(2 * math.pi))


def test_gaussian_nll_gradients():
    check_gradients(losses.gaussian_nll, torch.randn(4, 3), torch.randn(4, 3),
                    torch.rand(4, 3) + 0.5, names=["target", "mean", "var"]).raise_if_failed()


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_cross_entropy_equals_torch(reduction):
    logits, y = torch.randn(7, 4) * 3, torch.randint(0, 4, (7,))
    y[2] = -100
    ours = losses.cross_entropy(logits, y, reduction=reduction)
    ref = F.cross_entropy(logits, y, reduction=reduction)
    torch.testing.assert_close(ours, ref, rtol=1e-6, atol=1e-6)


def test_cross_entropy_on_sequences_equals_torch():
    logits, y = torch.randn(2, 5, 11), torch.randint(0, 11, (2, 5))
    ref = F.cross_entropy(logits.reshape(-1, 11), y.reshape(-1))
    torch.testing.assert_close(losses.cross_entropy(logits, y), ref)


def test_cross_entropy_gradient_is_softmax_minus_onehot():
    logits, y = torch.randn(5, 4, dtype=torch.float64, requires_grad=True), torch.randint(0, 4, (5,))
    losses.cross_entropy(logits, y, reduction="sum").backward()
    torch.testing.assert_close(logits.grad, logits.detach().softmax(-1) - F.one_hot(y, 4).double())
    check_gradients(lambda z: losses.cross_entropy(z, y), torch.randn(5, 4),
                    names=["logits"]).raise_if_failed()


def test_entropy_kl_and_cross_entropy_identity():
    p, q = torch.rand(3, 6).softmax(-1), torch.rand(3, 6).softmax(-1)
    torch.testing.assert_close(losses.cross_entropy_dist(p, q),
                               losses.entropy(p) + losses.kl_categorical(p, q))
    ref = torch.distributions.kl_divergence(torch.distributions.Categorical(probs=p),
                                            torch.distributions.Categorical(probs=q))
    torch.testing.assert_close(losses.kl_categorical(p, q), ref)
    torch.testing.assert_close(losses.entropy(p), torch.distributions.Categorical(probs=p).entropy())
    assert (losses.kl_categorical(p, q) > 0).all()
    torch.testing.assert_close(losses.kl_categorical(p, p), torch.zeros(3))


def test_kl_diag_gaussians_equals_torch_distributions():
    mu_q, lv_q, mu_p, lv_p = (torch.randn(4, 3) for _ in range(4))
    normal = torch.distributions.Normal
    ref = torch.distributions.kl_divergence(normal(mu_q, (0.5 * lv_q).exp()),
                                            normal(mu_p, (0.5 * lv_p).exp())).sum(-1)
    torch.testing.assert_close(losses.kl_diag_gaussians(mu_q, lv_q, mu_p, lv_p), ref)
    standard = torch.distributions.kl_divergence(normal(mu_q, (0.5 * lv_q).exp()),
                                                 normal(0.0, 1.0)).sum(-1)
    torch.testing.assert_close(losses.kl_diag_gaussians(mu_q, lv_q), standard)


def test_kl_diag_gaussians_gradients():
    check_gradients(lambda m, lv: losses.kl_diag_gaussians(m, lv), torch.randn(3, 2),
                    torch.randn(3, 2), names=["mu_q", "logvar_q"]).raise_if_failed()


def test_perplexity():
    torch.testing.assert_close(losses.perplexity(math.log(50.0)), torch.tensor(50.0, dtype=torch.float64))
    uniform = torch.full((3, 10), 0.1)
    torch.testing.assert_close(losses.perplexity(losses.entropy(uniform).mean()), torch.tensor(10.0))


@pytest.mark.parametrize("call, error, words", [
    (lambda: losses.bce_with_logits(LOGITS, TARGETS[:3]), ValueError, "logits and targets"),
    (lambda: losses.bce_with_logits(LOGITS.long(), TARGETS), TypeError, "logits"),
    (lambda: losses.bce_with_logits(LOGITS.tolist(), TARGETS), TypeError, "logits must be a torch.Tensor"),
    (lambda: losses.bce_with_logits(LOGITS, TARGETS, reduction="avg"), ValueError, "reduction"),
    (lambda: losses.gaussian_nll(TARGETS, LOGITS, -1.0), ValueError, "var must be > 0"),
    (lambda: losses.gaussian_nll(TARGETS, LOGITS, torch.ones(4)), ValueError, "var of shape"),
    (lambda: losses.cross_entropy(LOGITS, torch.zeros(6)), TypeError, "targets must hold integer"),
    (lambda: losses.cross_entropy(LOGITS, torch.zeros(5, dtype=torch.long)), ValueError, "targets must have shape"),
    (lambda: losses.cross_entropy(LOGITS, torch.full((6,), 5)), ValueError, "targets must be in [0, 5)"),
    (lambda: losses.cross_entropy(LOGITS[0], torch.zeros((), dtype=torch.long)), ValueError, "logits must have 2 or 3"),
    (lambda: losses.entropy(torch.tensor([0.5, 0.6])), ValueError, "p must sum to 1"),
    (lambda: losses.kl_categorical(torch.tensor([0.5, 0.5]), torch.tensor([1.5, -0.5])), ValueError, "q must lie in [0, 1]"),
    (lambda: losses.kl_diag_gaussians(torch.zeros(2, 3), torch.zeros(2, 2)), ValueError, "mu_q and logvar_q"),
    (lambda: losses.kl_diag_gaussians(torch.zeros(2), torch.zeros(2), mu_p=torch.zeros(2)), ValueError, "given together"),
    (lambda: losses.perplexity(-1.0), ValueError, "mean_nll must be >= 0"),
    (lambda: losses.perplexity("3"), TypeError, "mean_nll"),
])
def test_bad_input_raises_naming_the_argument(call, error, words):
    with pytest.raises(error, match=__import__("re").escape(words)):
        call()


def test_causal_lm_loss_reductions_and_pre_shifted_logits():
    """One next-token loss for every caller: 'sum' and 'none' agree with 'mean', and logits of
    input_ids[:, :-1] (chapter 7's windows) give the same loss as logits of all of input_ids."""
    torch.manual_seed(0)
    logits, ids = torch.randn(3, 6, 11, dtype=torch.float64), torch.randint(0, 11, (3, 6))
    ids[0, :3] = -100
    mean = losses.causal_lm_loss(logits, ids)
    total = losses.causal_lm_loss(logits, ids, reduction="sum")
    rows = losses.causal_lm_loss(logits, ids, reduction="none")
    scored = (ids[:, 1:] != -100).sum()
    torch.testing.assert_close(total / scored, mean)
    assert rows.shape == (3, 5) and (rows[0, :2] == 0).all()
    torch.testing.assert_close(rows.sum(), total)
    torch.testing.assert_close(losses.causal_lm_loss(logits[:, :-1], ids), mean)
    ref = F.cross_entropy(logits[:, :-1].reshape(-1, 11), ids[:, 1:].reshape(-1))
    torch.testing.assert_close(mean, ref)
    with pytest.raises(ValueError, match="reduction"):
        losses.causal_lm_loss(logits, ids, reduction="max")
