"""Chapter 5 (diffusion and flow matching): the schedules have their properties; the closed form
of q(x_t | x_0) matches the simulated chain; the posterior matches Bayes' rule computed
numerically; the parameterisations convert consistently; the ELBO weight turns the squared
error into the KL term; the bound is tight where the answer is known; DDIM with eta = 0 is
deterministic and inverts, with eta = 1 it is the ancestral sampler; guidance with w = 0 is
the unconditional model; the losses equal their formulas and pass finite differences; bad
input raises errors that name the argument."""
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from aigc_lib import costs, losses, metrics
from aigc_lib.gradcheck import check_gradients
from aigc_lib.models import diffusion as dm
from aigc_lib.training import fit

pytestmark = pytest.mark.usefixtures("one_thread")
f64 = torch.float64


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


class GaussianDenoiser(nn.Module):
    r"""The exact eps-prediction for data x0 ~ N(0, c^2 I) on a VP schedule:
    E[eps | x_t] = sigma x_t / (a^2 c^2 + sigma^2), written as a 'network' of time t/T."""
    num_classes = 0

    def __init__(self, schedule, c=0.5):
        super().__init__()
        self.schedule, self.c = schedule, c
        self.dummy = nn.Parameter(torch.zeros(()))

    def forward(self, x, time, labels=None):
        t = (time.double() * self.schedule.T).round().long()
        ab = self.schedule.alpha_bars[t].to(x.dtype)[:, None]
        return (1 - ab).sqrt() * x / (ab * self.c ** 2 + 1 - ab)


class GaussianVelocity(nn.Module):
    """The exact flow-matching velocity E[eps - x0 | x_s] for x0 ~ N(0, c^2 I)."""
    num_classes = 0

    def __init__(self, c=0.5):
        super().__init__()
        self.c = c
        self.dummy = nn.Parameter(torch.zeros(()))

    def forward(self, x, s, labels=None):
        s = s.to(x.dtype)[:, None]
        return (s - (1 - s) * self.c ** 2) / ((1 - s) ** 2 * self.c ** 2 + s ** 2) * x


class ConstantX0(nn.Module):
    """Predicts one fixed image whatever it sees: the perfect model of a one-image dataset."""
    num_classes = 0

    def __init__(self, image):
        super().__init__()
        self.image = image
        self.dummy = nn.Parameter(torch.zeros(()))

    def forward(self, x, time, labels=None):
        return self.image.expand_as(x).clone()


def random_output(net, seed=0):
    """Give a denoiser a non-zero output layer (it starts at zero), so tests see its inputs."""
    torch.manual_seed(seed)
    last = net.out[-1]
    nn.init.normal_(last.weight, std=0.3)
    nn.init.normal_(last.bias, std=0.3)
    return net


# --- schedules ---------------------------------------------------------------------------------

@pytest.mark.parametrize("name", dm.SCHEDULES)
@pytest.mark.parametrize("T", [50, 1000])
def test_schedules_have_their_properties(name, T):
    s = dm.noise_schedule(name, T)
    assert s.T == T and s.betas[0] == 0 and s.alpha_bars[0] == 1
    assert bool(((s.betas[1:] > 0) & (s.betas[1:] < 1)).all())
    assert bool((s.alpha_bars[1:] < s.alpha_bars[:-1]).all())          # signal only falls
    assert bool((s.snr[2:] < s.snr[1:-1]).all()) and math.isinf(s.snr[0])
    assert s.alpha_bars[-1] < 1e-3                                      # x_T is nearly noise
    torch.testing.assert_close(s.alpha_bars, torch.cumprod(1 - s.betas, 0))


def test_linear_schedule_is_ho_et_al_at_T_1000_and_cosine_follows_its_formula():
    lin = dm.noise_schedule("linear", 1000)
    assert abs(lin.betas[1] - 1e-4) < 1e-12 and abs(lin.betas[-1] - 0.02) < 1e-12
    cos = dm.noise_schedule("cosine", 100, offset=0.008)
    u = torch.arange(101, dtype=f64) / 100
    f = torch.cos((u + 0.008) / 1.008 * math.pi / 2) ** 2
    torch.testing.assert_close(cos.alpha_bars[:-1], (f / f[0])[:-1])   # the last is clipped
    assert abs(cos.betas[-1] - 0.999) < 1e-12


def test_cosine_schedule_can_be_set_by_its_first_step_noise():
    for T, first in ((250, 1 / 16), (1000, 0.01)):
        s = dm.noise_schedule("cosine", T, first_std=first)
        assert abs(s.betas[1].sqrt().item() - first) < 1e-9
    with pytest.raises(ValueError, match="first_std must lie in"):
        dm.noise_schedule("cosine", 100, first_std=0.9)
    with pytest.raises(ValueError, match="cosine schedule only"):
        dm.noise_schedule("linear", 100, first_std=0.01)


def test_schedule_rejects_bad_input():
    with pytest.raises(ValueError, match="name"):
        dm.noise_schedule("sigmoid", 10)
    with pytest.raises(TypeError, match="T"):
        dm.noise_schedule("cosine", 10.5)
    with pytest.raises(ValueError, match="T=10 is too small"):
        dm.noise_schedule("linear", 10)
    with pytest.raises(ValueError, match="betas"):
        dm.NoiseSchedule("x", torch.tensor([0.0, 1.5]))


# --- forward process and posterior ---------------------------------------------------------------

def test_closed_form_matches_the_simulated_chain():
    s = dm.noise_schedule("linear", 100)
    x0 = torch.tensor([[-0.8, 0.3, 1.0]], dtype=f64).expand(20_000, 3)
    x, g = x0.clone(), gen(1)
    for t in range(1, s.T + 1):
        x = dm.q_step(s, x, t, torch.randn(x.shape, generator=g, dtype=f64))
        if t in (1, 10, 100):
            mean, var = s.alpha_bars[t].sqrt() * x0[0], 1 - s.alpha_bars[t]
            se_mean, se_var = math.sqrt(var / len(x)), var * math.sqrt(2 / len(x))
            assert ((x.mean(0) - mean).abs() < 5 * se_mean).all()
            assert ((x.var(0) - var).abs() < 5 * se_var).all()
            closed = dm.q_sample(s, x0, t, torch.randn(x.shape, generator=g, dtype=f64))
            assert ((closed.mean(0) - x.mean(0)).abs() < 7 * se_mean).all()


def test_closed_form_is_the_chain_composed_exactly():
    """Without noise the chain scales x0 by prod sqrt(alpha); its variance obeys
    v_t = alpha_t v_{t-1} + beta_t. Both compose to the closed form, to rounding."""
    s = dm.noise_schedule("cosine", 300)
    x0 = torch.randn(4, 5, dtype=f64, generator=gen())
    x, var = x0.clone(), torch.zeros((), dtype=f64)
    for t in range(1, s.T + 1):
        x = dm.q_step(s, x, t, torch.zeros_like(x))
        var = s.alphas[t] * var + s.betas[t]
        torch.testing.assert_close(x, s.alpha_bars[t].sqrt() * x0, rtol=1e-10, atol=1e-12)
        torch.testing.assert_close(var, 1 - s.alpha_bars[t], rtol=1e-10, atol=1e-12)


def test_posterior_matches_bayes_rule_computed_numerically():
    s = dm.noise_schedule("linear", 100)
    grid = torch.linspace(-6, 6, 400_001, dtype=f64)
    for t, x0, xt in ((2, 0.7, 0.1), (30, -0.4, 1.3), (100, 0.9, -0.5)):
        prior = torch.distributions.Normal(s.alpha_bars[t - 1].sqrt() * x0,
                                           (1 - s.alpha_bars[t - 1]).sqrt())
        step = torch.distributions.Normal(s.alphas[t].sqrt() * grid, s.betas[t].sqrt())
        log_joint = prior.log_prob(grid) + step.log_prob(torch.tensor(xt, dtype=f64))
        w = torch.softmax(log_joint, 0)
        mean_num = (w * grid).sum()
        var_num = (w * (grid - mean_num) ** 2).sum()
        mean, var = dm.q_posterior(s, torch.tensor([[x0]], dtype=f64),
                                   torch.tensor([[xt]], dtype=f64), t)
        torch.testing.assert_close(mean[0, 0], mean_num, rtol=1e-6, atol=1e-8)
        torch.testing.assert_close(var[0, 0], var_num, rtol=1e-5, atol=1e-10)


def test_forward_functions_reject_bad_input():
    s = dm.noise_schedule("cosine", 20)
    x = torch.zeros(3, 4)
    with pytest.raises(ValueError, match=r"t must lie in \[0, 20\]"):
        dm.q_sample(s, x, 21, x)
    with pytest.raises(ValueError, match=r"t must lie in \[1, 20\]"):
        dm.q_posterior(s, x, x, torch.tensor([0, 1, 2]))
    with pytest.raises(ValueError, match="t must lie"):
        dm.q_sample(s, x, torch.tensor([-1, 0, 1]), x)
    with pytest.raises(TypeError, match="t must hold integer"):
        dm.q_sample(s, x, torch.tensor([0.5, 1.0, 2.0]), x)
    with pytest.raises(ValueError, match=r"t must be an int or have shape \(3,\)"):
        dm.q_sample(s, x, torch.tensor([1, 2]), x)
    with pytest.raises(ValueError, match="x0 and noise must have the same shape"):
        dm.q_sample(s, x, 3, torch.zeros(3, 5))
    with pytest.raises(TypeError, match="schedule"):
        dm.q_sample("cosine", x, 3, x)


# --- parameterisations ---------------------------------------------------------------------------

def test_conversions_are_consistent_and_the_score_is_the_gaussian_one():
    s = dm.noise_schedule("cosine", 50)
    g = gen(2)
    x0, eps = torch.randn(6, 8, generator=g, dtype=f64), torch.randn(6, 8, generator=g, dtype=f64)
    t = torch.tensor([1, 5, 10, 25, 40, 50])
    xt = dm.q_sample(s, x0, t, eps)
    ab = s.alpha_bars[t][:, None]
    truth = {"eps": eps, "x0": x0, "v": dm.training_target("v", x0, eps, ab),
             "score": -(xt - ab.sqrt() * x0) / (1 - ab)}
    torch.testing.assert_close(truth["v"], ab.sqrt() * eps - (1 - ab).sqrt() * x0)
    for source in dm.PARAMETERISATIONS:
        for target in dm.TARGETS:
            got = dm.convert(truth[source], source, target, xt, s, t)
            torch.testing.assert_close(got, truth[target], rtol=1e-9, atol=1e-9)


def test_tweedie_the_optimal_denoiser_gives_the_marginal_score():
    """For x0 ~ N(0, c^2 I), q(x_t) = N(0, (a^2 c^2 + sigma^2) I): its score is -x_t / that."""
    s = dm.noise_schedule("cosine", 100)
    model = dm.DiffusionModel(GaussianDenoiser(s, c=0.5), s)
    xt = torch.randn(5, 3, dtype=f64, generator=gen())
    for t in (1, 20, 99):
        ab = s.alpha_bars[t]
        score = model.predict(xt, t, "score")
        torch.testing.assert_close(score, -xt / (ab * 0.25 + 1 - ab))
        x0 = model.predict(xt, t, "x0")                 # E[x0 | xt] = a c^2 / (...) xt
        torch.testing.assert_close(x0, ab.sqrt() * 0.25 / (ab * 0.25 + 1 - ab) * xt)


def test_conversions_reject_unknown_names():
    s = dm.noise_schedule("cosine", 10)
    x = torch.zeros(2, 3)
    with pytest.raises(ValueError, match="source"):
        dm.convert(x, "noise", "x0", x, s, 1)
    with pytest.raises(ValueError, match="target"):
        dm.convert(x, "eps", "velocity", x, s, 1)
    with pytest.raises(ValueError, match="parameterisation"):
        dm.training_target("score", x, x, torch.ones(2, 1))
    with pytest.raises(ValueError, match="parameterisation"):
        dm.DiffusionModel(dm.MLPDenoiser(3), s, parameterisation="mu")
    with pytest.raises(ValueError, match=r"t must lie in \[1, 10\]"):
        dm.convert(x, "eps", "x0", x, s, 0)


@pytest.mark.parametrize("variance", dm.VARIANCES)
def test_elbo_weight_turns_the_squared_error_into_the_kl_term(variance):
    """KL(q(x_{t-1}|x_t,x_0) || p(x_{t-1}|x_t)) with p's mean from eps_hat equals
    lambda_t ||eps - eps_hat||^2 + c_t, with c_t independent of eps_hat (0 for 'posterior')."""
    s = dm.noise_schedule("linear", 100)
    g = gen(3)
    x0, eps = torch.randn(4, 6, generator=g, dtype=f64), torch.randn(4, 6, generator=g, dtype=f64)
    t = torch.tensor([2, 10, 50, 100])
    xt = dm.q_sample(s, x0, t, eps)
    mean_q, var_q = dm.q_posterior(s, x0, xt, t)
    var_p = dm._reverse_variance(s, t, variance)[:, None].expand_as(x0)
    weight = dm.elbo_weight(s, t, 4, variance)
    offsets = []
    for trial in range(3):
        eps_hat = eps + torch.randn(4, 6, generator=g, dtype=f64) * trial
        x0_hat = dm.convert(eps_hat, "eps", "x0", xt, s, t)
        mean_p, _ = dm.q_posterior(s, x0_hat, xt, t)
        kl = losses.kl_diag_gaussians(mean_q, var_q.log(), mean_p, var_p.log())
        offsets.append(kl - weight * ((eps - eps_hat) ** 2).sum(1))
    for offset in offsets[1:]:
        torch.testing.assert_close(offset, offsets[0], rtol=1e-8, atol=1e-10)
    if variance == "posterior":
        torch.testing.assert_close(offsets[0], torch.zeros(4, dtype=f64), atol=1e-10, rtol=0)
    with pytest.raises(ValueError, match=r"t must lie in \[2, 100\]"):
        dm.elbo_weight(s, 1, 1)


# --- losses --------------------------------------------------------------------------------------

def test_diffusion_loss_is_the_summed_squared_error_and_its_gradient_checks():
    g = gen(4)
    pred, target = torch.randn(5, 2, 3, generator=g, dtype=f64), torch.randn(5, 2, 3, generator=g,
                                                                             dtype=f64)
    ref = F.mse_loss(pred, target, reduction="sum") / 5
    torch.testing.assert_close(losses.diffusion_loss(pred, target), ref)
    w = torch.rand(5, generator=g, dtype=f64)
    ref_w = (w * ((pred - target) ** 2).sum((1, 2))).mean()
    torch.testing.assert_close(losses.diffusion_loss(pred, target, w), ref_w)
    report = check_gradients(lambda p, w_: losses.diffusion_loss(p, target, w_), pred, w,
                             names=["prediction", "weights"])
    assert report.passed, report.message()
    with pytest.raises(ValueError, match="prediction and target"):
        losses.diffusion_loss(pred, target[:, :1])
    with pytest.raises(ValueError, match="weights"):
        losses.diffusion_loss(pred, target, w[:3])


def test_flow_matching_loss_is_its_formula_and_its_gradient_checks():
    g = gen(5)
    v, x0, noise = (torch.randn(4, 7, generator=g, dtype=f64) for _ in range(3))
    ref = ((v - (noise - x0)) ** 2).sum(1).mean()
    torch.testing.assert_close(losses.flow_matching_loss(v, x0, noise), ref)
    report = check_gradients(lambda v_, x_: losses.flow_matching_loss(v_, x_, noise), v, x0,
                             names=["velocity", "x0"])
    assert report.passed, report.message()
    with pytest.raises(ValueError, match="x0 and noise"):
        losses.flow_matching_loss(v, x0, noise[:, :3])


def test_discretized_gaussian_probabilities_sum_to_one_and_match_the_cdf():
    levels = torch.linspace(-1, 1, 17, dtype=f64)
    g = gen(6)
    for mean, std in ((0.13, 0.05), (-0.9, 0.3), (2.5, 0.01), (0.0, 3.0)):
        m = torch.full_like(levels, mean)
        sd = torch.full_like(levels, std)
        nll = losses.discretized_gaussian_nll(levels, m, sd, bin_width=0.125)
        torch.testing.assert_close((-nll).exp().sum(), torch.tensor(1.0, dtype=f64),
                                   rtol=1e-9, atol=1e-9)
    normal = torch.distributions.Normal(torch.tensor(0.1, dtype=f64), torch.tensor(0.2, dtype=f64))
    inner = levels[3:-3]
    direct = normal.cdf(inner + 0.0625) - normal.cdf(inner - 0.0625)
    ours = losses.discretized_gaussian_nll(inner, torch.full_like(inner, 0.1),
                                           torch.full_like(inner, 0.2), 0.125)
    torch.testing.assert_close(ours, -direct.log(), rtol=1e-9, atol=1e-12)
    far = losses.discretized_gaussian_nll(levels[8:9], torch.tensor([0.9], dtype=f64),
                                          torch.tensor([0.01], dtype=f64), 0.125)
    assert torch.isfinite(far).all() and far.item() > 1000    # 84 standard deviations away
    x = levels[torch.randint(0, 17, (12,), generator=g)]
    mean = torch.randn(12, generator=g, dtype=f64) * 0.5
    std = torch.rand(12, generator=g, dtype=f64) * 0.3 + 0.02
    report = check_gradients(lambda m_, s_: losses.discretized_gaussian_nll(x, m_, s_, 0.125).sum(),
                             mean, std, names=["mean", "std"])
    assert report.passed, report.message()


def test_discretized_gaussian_rejects_bad_input():
    x = torch.zeros(3)
    with pytest.raises(ValueError, match="std must be > 0"):
        losses.discretized_gaussian_nll(x, x, torch.zeros(3), 0.1)
    with pytest.raises(ValueError, match=r"x must lie in \[low, high\]"):
        losses.discretized_gaussian_nll(x + 2, x, x + 1, 0.1)
    with pytest.raises(ValueError, match="x and mean"):
        losses.discretized_gaussian_nll(x, x[:2], x + 1, 0.1)
    with pytest.raises(ValueError, match="bin_width"):
        losses.discretized_gaussian_nll(x, x, x + 1, 0.0)


# --- networks ------------------------------------------------------------------------------------

def test_time_features_are_the_sinusoids():
    time = torch.tensor([0.0, 0.25, 1.0])
    feats = dm.time_features(time, 6)
    freqs = torch.exp(-math.log(10000.0) * torch.arange(3) / 3)
    angles = 1000 * time[:, None] * freqs
    torch.testing.assert_close(feats, torch.cat([angles.sin(), angles.cos()], 1))
    with pytest.raises(ValueError, match="dim must be even"):
        dm.time_features(time, 5)


@pytest.mark.parametrize("make", [
    lambda: dm.MLPDenoiser(4, hidden=8, blocks=2, num_classes=3),
    lambda: dm.ConvDenoiser(side=2, channels=8, blocks=1, num_classes=3, width=8)])
def test_denoiser_gradients_pass_finite_differences(make):
    net = random_output(make()).double()
    x = torch.randn(3, 4, dtype=f64, generator=gen())
    time = torch.tensor([0.1, 0.5, 0.9], dtype=f64)
    labels = torch.tensor([0, 3, 2])
    assert torch.autograd.gradcheck(lambda x_: net(x_, time, labels),
                                    (x.requires_grad_(),), eps=1e-6, atol=1e-6)
    weight = net.blocks[0].film.weight
    loss = net(x.detach(), time, labels).square().sum()
    (grad,) = torch.autograd.grad(loss, weight)
    numeric = torch.zeros_like(weight)
    for idx in [(0, 0), (3, 5), (7, 2)]:
        with torch.no_grad():
            weight[idx] += 1e-6
            up = net(x.detach(), time, labels).square().sum()
            weight[idx] -= 2e-6
            down = net(x.detach(), time, labels).square().sum()
            weight[idx] += 1e-6
        numeric[idx] = (up - down) / 2e-6
        assert abs(numeric[idx] - grad[idx]) < 1e-6 * (1 + abs(grad[idx]))


def test_denoisers_start_at_zero_and_reject_bad_input():
    net = dm.MLPDenoiser(4, hidden=8, blocks=1, num_classes=2)
    x, time = torch.randn(3, 4), torch.rand(3)
    assert net(x, time).abs().max() == 0                  # zero-initialised output layer
    with pytest.raises(ValueError, match=r"x must have shape \(B, 4\)"):
        net(torch.randn(3, 5), time)
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 2\]"):
        net(x, time, torch.tensor([0, 1, 3]))
    with pytest.raises(ValueError, match="time must have shape"):
        net(x, torch.rand(2))
    with pytest.raises(ValueError, match="unconditional"):
        dm.MLPDenoiser(4, hidden=8)(x, time, torch.tensor([0, 1, 1]))
    with pytest.raises(ValueError, match="channels must be a multiple of 8"):
        dm.ConvDenoiser(side=8, channels=12)


# --- guidance ------------------------------------------------------------------------------------

def test_guidance_zero_is_the_unconditional_model_and_one_the_conditional():
    net = random_output(dm.MLPDenoiser(4, hidden=16, blocks=2, num_classes=3))
    x, time = torch.randn(5, 4, generator=gen()), torch.rand(5, generator=gen(1))
    labels = torch.tensor([0, 1, 2, 1, 0])
    uncond, cond = net(x, time), net(x, time, labels)
    assert (uncond - cond).abs().max() > 1e-3             # the label matters
    torch.testing.assert_close(dm.guided(net, x, time, labels, 0.0), uncond, rtol=0, atol=1e-6)
    torch.testing.assert_close(dm.guided(net, x, time, labels, 1.0), cond)
    torch.testing.assert_close(dm.guided(net, x, time, labels, 3.0), uncond + 3 * (cond - uncond),
                               rtol=1e-5, atol=1e-5)
    s = dm.noise_schedule("cosine", 10)
    model = dm.DiffusionModel(net, s)
    torch.manual_seed(0)
    a = model.sample_ddim(torch.randn(5, 4), 5, labels=labels, guidance=0.0)
    torch.manual_seed(0)
    b = model.sample_ddim(torch.randn(5, 4), 5)
    torch.testing.assert_close(a, b, rtol=0, atol=1e-5)


def test_label_dropout_replaces_labels_with_the_null_label_at_its_rate():
    torch.manual_seed(0)
    labels = torch.zeros(20_000, dtype=torch.long)
    dropped = dm._drop_labels(labels, 10, 0.2)
    share = (dropped == 10).double().mean().item()
    assert abs(share - 0.2) < 4 * math.sqrt(0.2 * 0.8 / 20_000)
    assert set(dropped.unique().tolist()) == {0, 10}


def test_guidance_and_labels_are_checked():
    s = dm.noise_schedule("cosine", 10)
    cond = dm.DiffusionModel(dm.MLPDenoiser(4, hidden=8, num_classes=3), s)
    uncond = dm.DiffusionModel(dm.MLPDenoiser(4, hidden=8), s)
    noise = torch.randn(2, 4)
    with pytest.raises(ValueError, match="guidance needs labels"):
        cond.sample_ddim(noise, 3, guidance=2.0)
    with pytest.raises(ValueError, match="unconditional"):
        uncond.sample_ddim(noise, 3, labels=torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="guidance must be >= 0"):
        cond.sample_ddim(noise, 3, labels=torch.tensor([0, 1]), guidance=-1.0)
    with pytest.raises(ValueError, match="one entry per sample"):
        cond.sample_ddim(noise, 3, labels=torch.tensor([0, 1, 2]))


# --- samplers ------------------------------------------------------------------------------------

def test_sampling_steps_are_even_distinct_and_end_at_the_data():
    for T, nfe in ((1000, 1), (1000, 7), (100, 100), (37, 36)):
        steps = dm.sampling_steps(T, nfe)
        assert steps[0] == T and steps[-1] == 0 and len(steps) == nfe + 1
        assert all(a > b for a, b in zip(steps, steps[1:]))
    assert dm.sampling_steps(5, 5) == [5, 4, 3, 2, 1, 0]
    with pytest.raises(ValueError, match="nfe must be > 0"):
        dm.sampling_steps(10, 0)
    with pytest.raises(ValueError, match="nfe must be <= T"):
        dm.sampling_steps(10, 11)


def test_ddim_eta_zero_is_deterministic_and_inverts():
    s = dm.noise_schedule("cosine", 500)
    model = dm.DiffusionModel(GaussianDenoiser(s, c=0.5), s)
    x0 = 0.5 * torch.randn(64, 3, dtype=f64, generator=gen(7))
    noise = torch.randn(64, 3, dtype=f64, generator=gen(8))
    a = model.sample_ddim(noise, 50, generator=gen(1))
    b = model.sample_ddim(noise, 50, generator=gen(2))
    assert torch.equal(a, b)                                 # no randomness at eta = 0
    errors = []
    for nfe in (20, 100, 500):
        back = model.sample_ddim(model.invert_ddim(x0, nfe), nfe)
        errors.append((back - x0).abs().max().item())
    assert errors[-1] < 0.01                                 # about 1 % of the data's scale
    assert errors[0] > 3 * errors[1] > 9 * errors[2]         # first order: error ~ 1 / nfe


def test_ddim_inverts_from_an_intermediate_start_with_a_learned_like_network():
    s = dm.noise_schedule("cosine", 200)
    net = random_output(dm.MLPDenoiser(3, hidden=16, blocks=1), seed=3).double()
    for p in net.out[-1].parameters():
        p.data *= 0.1                               # a smooth, small eps-prediction
    model = dm.DiffusionModel(net, s)
    x0 = torch.rand(16, 3, dtype=f64, generator=gen(2)) * 2 - 1
    errors = [(model.sample_ddim(model.invert_ddim(x0, n, start=150), n, start=150) - x0)
              .abs().max().item() for n in (15, 150)]
    assert errors[1] < errors[0] and errors[1] < 0.02
    with pytest.raises(ValueError, match=r"start must be a step in \[1, 200\]"):
        model.invert_ddim(x0, 5, start=201)


def test_ddim_eta_one_is_the_ancestral_sampler_with_posterior_variance():
    s = dm.noise_schedule("linear", 100)
    net = random_output(dm.MLPDenoiser(3, hidden=16, blocks=1)).double()
    model = dm.DiffusionModel(net, s)
    noise = torch.randn(8, 3, dtype=f64, generator=gen())
    for nfe in (100, 13):
        ddim = model.sample_ddim(noise, nfe, eta=1.0, generator=gen(5))
        ddpm = model.sample_ddpm(noise, nfe, variance="posterior", generator=gen(5))
        torch.testing.assert_close(ddim, ddpm, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("sampler", ["ddpm", "ddim"])
def test_samplers_with_the_optimal_denoiser_draw_the_data_distribution(sampler):
    s = dm.noise_schedule("cosine", 200)
    model = dm.DiffusionModel(GaussianDenoiser(s, c=0.5), s, parameterisation="eps")
    noise = torch.randn(20_000, 2, dtype=f64, generator=gen(9))
    if sampler == "ddpm":
        x = model.sample_ddpm(noise, 200, generator=gen(10))
    else:
        x = model.sample_ddim(noise, 200)
    sd = x.std(0)
    assert ((sd - 0.5).abs() < 0.02).all() and (x.mean(0).abs() < 0.02).all()


def test_trajectory_records_every_step():
    s = dm.noise_schedule("cosine", 20)
    model = dm.DiffusionModel(GaussianDenoiser(s), s)
    x, path = model.sample_ddpm(torch.randn(4, 2, dtype=f64), 5, return_path=True,
                                generator=gen())
    assert path.t == (20.0, 15.0, 11.0, 6.0, 1.0, 0.0)
    assert path.x.shape == (6, 4, 2) and path.x0.shape == (5, 4, 2)
    assert torch.equal(path.x[-1], x)


def test_samplers_do_not_build_a_graph():
    s = dm.noise_schedule("cosine", 20)
    model = dm.DiffusionModel(dm.MLPDenoiser(2, hidden=8), s)
    flow = dm.FlowModel(dm.MLPDenoiser(2, hidden=8))
    noise = torch.randn(3, 2)
    outputs = [model.sample_ddpm(noise, 4), model.sample_ddim(noise, 4),
               model.invert_ddim(noise, 4), flow.sample(noise, 4, "heun")]
    assert not any(out.requires_grad for out in outputs)


def test_samplers_reject_bad_input():
    s = dm.noise_schedule("cosine", 10)
    model = dm.DiffusionModel(dm.MLPDenoiser(4, hidden=8), s)
    noise = torch.randn(2, 4)
    with pytest.raises(ValueError, match="nfe must be > 0"):
        model.sample_ddpm(noise, 0)
    with pytest.raises(TypeError, match="nfe must be an int"):
        model.sample_ddim(noise, 2.5)
    with pytest.raises(ValueError, match="variance"):
        model.sample_ddpm(noise, 3, variance="learned")
    with pytest.raises(ValueError, match="eta must be >= 0"):
        model.sample_ddim(noise, 3, eta=-0.5)
    with pytest.raises(ValueError, match=r"x must have shape \(B, 4\)"):
        model.sample_ddim(torch.randn(2, 5), 3)
    flow = dm.FlowModel(dm.MLPDenoiser(4, hidden=8))
    with pytest.raises(ValueError, match="nfe must be even"):
        flow.sample(noise, 5, method="heun")
    with pytest.raises(ValueError, match="method"):
        flow.sample(noise, 4, method="rk4")
    with pytest.raises(ValueError, match="nfe must be > 0"):
        flow.sample(noise, 0)


# --- flow matching -------------------------------------------------------------------------------

def test_flow_path_and_its_velocity():
    g = gen(11)
    x0, noise = torch.randn(3, 4, generator=g), torch.randn(3, 4, generator=g)
    s = torch.tensor([0.0, 0.3, 1.0])
    xs = dm.flow_interpolate(x0, noise, s)
    torch.testing.assert_close(xs[0], x0[0])
    torch.testing.assert_close(xs[2], noise[2])
    h = 1e-3
    ahead = dm.flow_interpolate(x0, noise, s.clamp(max=1 - h) + h)
    torch.testing.assert_close((ahead[1] - xs[1]) / h, noise[1] - x0[1], rtol=1e-3, atol=1e-3)
    with pytest.raises(ValueError, match=r"s must have shape \(3,\) and lie in \[0, 1\]"):
        dm.flow_interpolate(x0, noise, torch.tensor([0.0, 0.5, 1.5]))


def test_heun_beats_euler_on_the_exact_flow_of_gaussian_data():
    """The exact ODE maps z at s = 1 to c z at s = 0 (it moves quantiles)."""
    flow = dm.FlowModel(GaussianVelocity(c=0.5))
    z = torch.randn(100, 2, dtype=f64, generator=gen())
    nfes = (8, 32, 64)
    error = {m: [(flow.sample(z, n, method=m) - 0.5 * z).abs().max().item() for n in nfes]
             for m in dm.FLOW_METHODS}
    assert all(h < e / 5 for h, e in zip(error["heun"], error["euler"]))
    assert 3 < error["euler"][0] / error["euler"][1] < 5     # first order: 4x the steps, 1/4
    assert error["heun"][0] / error["heun"][2] > 16          # better than first order's 8


# --- the variational bound -----------------------------------------------------------------------

def test_bound_of_a_perfect_model_of_one_image_is_nearly_zero():
    s = dm.noise_schedule("cosine", 100)
    levels = torch.linspace(-1, 1, 17, dtype=f64)
    image = levels[torch.randint(0, 17, (1, 16), generator=gen())]
    model = dm.DiffusionModel(ConstantX0(image), s, parameterisation="x0")
    terms = model.bound_terms(image.expand(4, 16), bin_width=0.125, generator=gen(1))
    assert terms["diffusion"].abs().max() < 1e-9                     # every KL is exactly 0
    assert terms["prior"].max() < 1e-3
    # The decoder N(x0, beta_1) puts the mass Phi(h/sd) - Phi(-h/sd) on an inner level's bin
    # (half-width h) and Phi(h/sd) on the two end levels' bins, which reach to infinity.
    z = torch.tensor(0.0625 / s.betas[1].sqrt().item(), dtype=f64)
    normal = torch.distributions.Normal(torch.tensor(0.0, dtype=f64), torch.tensor(1.0, dtype=f64))
    ends = (image.abs() == 1).sum()
    expected = -(ends * normal.cdf(z).log() + (16 - ends) * (2 * normal.cdf(z) - 1).log())
    torch.testing.assert_close(terms["decoder"], expected.expand(4), rtol=1e-9, atol=1e-12)
    expected_prior = losses.kl_diag_gaussians(
        (s.alpha_bars[-1].sqrt() * image), (1 - s.alpha_bars[-1]).log().expand(1, 16))
    torch.testing.assert_close(terms["prior"][0], expected_prior[0])
    assert model.step_kl(image, 50).abs().max() < 1e-9
    with pytest.raises(ValueError, match=r"t must lie in \[2, 100\]"):
        model.step_kl(image, 1)


def test_step_kl_is_the_weighted_noise_error_of_the_model():
    """With p's variance the posterior one, L_{t-1} = lambda_t ||eps - eps_hat||^2 for the
    noise draw the method makes (replayed here with the same generator)."""
    s = dm.noise_schedule("cosine", 60)
    net = random_output(dm.MLPDenoiser(5, hidden=16, blocks=1)).double()
    model = dm.DiffusionModel(net, s)
    x0 = torch.rand(7, 5, dtype=f64, generator=gen()) * 2 - 1
    t = torch.tensor([2, 5, 9, 20, 33, 47, 60])
    kl = model.step_kl(x0, t, generator=gen(4))
    eps = torch.randn(x0.shape, generator=gen(4), dtype=f64)
    xt = dm.q_sample(s, x0, t, eps)
    eps_hat = model.predict(xt, t, "eps")
    expected = dm.elbo_weight(s, t, 7) * ((eps - eps_hat) ** 2).sum(1)
    torch.testing.assert_close(kl, expected, rtol=1e-8, atol=1e-10)


def test_stratified_bound_estimates_the_full_sum_without_bias():
    s = dm.noise_schedule("linear", 40)
    net = random_output(dm.MLPDenoiser(3, hidden=16, blocks=1)).double()
    model = dm.DiffusionModel(net, s)
    x0 = torch.linspace(-1, 1, 17, dtype=f64)[torch.randint(0, 17, (1, 3), generator=gen())]
    x0 = x0.expand(4000, 3)
    full = model.bound_terms(x0, 0.125, generator=gen(1))["diffusion"]
    strat = model.bound_terms(x0, 0.125, t_samples=5, generator=gen(2))["diffusion"]
    se = math.sqrt(full.var() / len(full) + strat.var() / len(strat))
    assert abs(full.mean() - strat.mean()) < 4 * se
    with pytest.raises(ValueError, match="bin_width"):
        model.bound_terms(x0, 0.0)


# --- training ------------------------------------------------------------------------------------

@pytest.mark.parametrize("parameterisation", dm.PARAMETERISATIONS)
def test_a_small_model_learns_with_fit(parameterisation):
    torch.manual_seed(0)
    centres = torch.tensor([[-0.6, 0.6], [0.6, -0.6]])
    x = centres[torch.randint(0, 2, (2048,))] + 0.05 * torch.randn(2048, 2)
    model = dm.DiffusionModel(dm.MLPDenoiser(2, hidden=64, blocks=2),
                              dm.noise_schedule("cosine", 100), parameterisation)
    history = fit(model, x, loss_fn=lambda m, xb: m.loss(xb), steps=400, batch_size=256,
                  optimizer=torch.optim.Adam(model.parameters(), lr=2e-3), progress=False,
                  device="cpu")
    first, last = history.step_losses[:20], history.step_losses[-50:]
    assert sum(last) / len(last) < sum(first) / len(first)
    samples = model.sample_ddim(torch.randn(500, 2), 50, clip=True)
    nearest = torch.cdist(samples, centres).min(1).values
    assert (nearest < 0.25).double().mean() > 0.8


def test_a_conditional_flow_model_learns_its_classes():
    torch.manual_seed(0)
    centres = torch.tensor([[-0.6, 0.0], [0.6, 0.0]])
    y = torch.randint(0, 2, (2048,))
    x = centres[y] + 0.05 * torch.randn(2048, 2)
    flow = dm.FlowModel(dm.MLPDenoiser(2, hidden=64, blocks=2, num_classes=2), p_uncond=0.2)
    fit(flow, (x, y), loss_fn=lambda m, xb, yb: m.loss(xb, yb), steps=400, batch_size=256,
        optimizer=torch.optim.Adam(flow.parameters(), lr=2e-3), progress=False, device="cpu")
    labels = torch.tensor([0, 1]).repeat(200)
    samples = flow.sample(torch.randn(400, 2), 20, method="heun", labels=labels, guidance=2.0)
    assert (torch.cdist(samples, centres).argmin(1) == labels).double().mean() > 0.9


# --- metrics and costs used by chapter 5 -------------------------------------------------------------

def test_independent_categorical_nll_is_the_fitted_histogram():
    train = torch.tensor([[0, 2], [0, 1], [1, 2]])
    test = torch.tensor([[0, 2], [2, 0]])
    nll = metrics.independent_categorical_nll(train, test, levels=3, pseudocount=1.0)
    p0 = torch.tensor([3, 2, 1], dtype=f64) / 6      # pixel 0: counts (2, 1, 0) + 1
    p1 = torch.tensor([1, 2, 3], dtype=f64) / 6      # pixel 1: counts (0, 1, 2) + 1
    expected = -torch.stack([p0[0].log() + p1[2].log(), p0[2].log() + p1[0].log()])
    torch.testing.assert_close(nll, expected)
    mle = metrics.independent_categorical_nll(train, test, levels=3, pseudocount=0.0)
    assert math.isfinite(mle[0]) and math.isinf(mle[1])
    with pytest.raises(ValueError, match=r"test must hold levels in \[0, 3\)"):
        metrics.independent_categorical_nll(train, test + 1, levels=3)
    with pytest.raises(TypeError, match="integer levels"):
        metrics.independent_categorical_nll(train.float(), test, levels=3)


def test_count_flops_counts_matrix_products_forward_and_backward():
    layer = nn.Linear(30, 20)
    x = torch.randn(8, 30)
    out, flops = costs.count_flops(layer, x)
    assert out.shape == (8, 20) and flops == 2 * 8 * 30 * 20

    def step():
        layer(x.requires_grad_()).sum().backward()
    _, train_flops = costs.count_flops(step)
    assert train_flops == 3 * 2 * 8 * 30 * 20         # forward, and two products backward
    with pytest.raises(TypeError, match="fn must be callable"):
        costs.count_flops(3)
