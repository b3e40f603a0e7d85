"""The optimisers of aigc_lib.optim: Adam and AdamW equal torch.optim over many steps, the
source articles' rule is SGD with a schedule, and descend follows gradient descent's closed form."""
import copy

import pytest
import torch

from aigc_lib import optim


def random_problem(seed, dtype=torch.float64):
    """A small non-convex problem: a two-layer tanh network on random regression data."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(64, 5, generator=g, dtype=dtype)
    y = torch.randn(64, 2, generator=g, dtype=dtype)
    shapes = [(5, 16), (16,), (16, 2), (2,)]
    weights = [torch.randn(s, generator=g, dtype=dtype) * 0.5 for s in shapes]

    def loss(w):
        return ((torch.tanh(x @ w[0] + w[1]) @ w[2] + w[3] - y) ** 2).mean()

    return weights, loss


def train(make_optimizer, seed, steps, dtype=torch.float64, lr_lambda=None):
    start, loss = random_problem(seed, dtype)
    params = [w.clone().requires_grad_(True) for w in start]
    opt = make_optimizer(params)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda) if lr_lambda else None
    for _ in range(steps):
        opt.zero_grad()
        loss(params).backward()
        opt.step()
        if sched is not None:
            sched.step()
    with torch.no_grad():
        return [p.detach() for p in params], loss(params).item()


def max_difference(a, b):
    return max((x - y).abs().max().item() for x, y in zip(a, b))


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("ours, theirs, kwargs", [
    (optim.Adam, torch.optim.Adam, {}),
    (optim.Adam, torch.optim.Adam, {"weight_decay": 0.1}),
    (optim.Adam, torch.optim.Adam, {"lr": 3e-2, "betas": (0.8, 0.99), "eps": 1e-6}),
    (optim.AdamW, torch.optim.AdamW, {}),
    (optim.AdamW, torch.optim.AdamW, {"weight_decay": 0.0}),
    (optim.AdamW, torch.optim.AdamW, {"lr": 3e-2, "weight_decay": 0.5, "betas": (0.5, 0.9)}),
])
def test_adam_and_adamw_equal_torch_over_200_steps(seed, ours, theirs, kwargs):
    mine, mine_loss = train(lambda p: ours(p, **kwargs), seed, steps=200)
    ref, ref_loss = train(lambda p: theirs(p, **kwargs), seed, steps=200)
    start, _ = random_problem(seed)
    assert max_difference(mine, start) > 1e-2          # the weights did move
    assert max_difference(mine, ref) < 1e-6
    assert mine_loss == pytest.approx(ref_loss, abs=1e-6)


@pytest.mark.parametrize("ours, theirs", [(optim.Adam, torch.optim.Adam),
                                          (optim.AdamW, torch.optim.AdamW)])
def test_equal_in_float32_with_a_schedule_and_param_groups(ours, theirs):
    def make(cls):
        def build(p):
            return cls([{"params": p[:2]}, {"params": p[2:], "lr": 3e-3, "weight_decay": 0.2}],
                       lr=1e-2, weight_decay=0.05)
        return build

    schedule = lambda s: optim.warmup_cosine(s, 10, 150)
    mine, _ = train(make(ours), 7, 150, torch.float32, schedule)
    ref, _ = train(make(theirs), 7, 150, torch.float32, schedule)
    assert max_difference(mine, ref) < 1e-5


def test_adam_and_adamw_differ_when_and_only_when_decay_is_on():
    same_a, _ = train(lambda p: optim.Adam(p, lr=1e-2), 3, 50)
    same_w, _ = train(lambda p: optim.AdamW(p, lr=1e-2, weight_decay=0.0), 3, 50)
    assert max_difference(same_a, same_w) == 0
    l2, _ = train(lambda p: optim.Adam(p, lr=1e-2, weight_decay=0.1), 3, 50)
    decoupled, _ = train(lambda p: optim.AdamW(p, lr=1e-2, weight_decay=0.1), 3, 50)
    assert max_difference(l2, decoupled) > 1e-3


def test_first_adam_step_moves_each_coordinate_by_lr():
    x = torch.tensor([1e-3, -2.0, 50.0], dtype=torch.float64, requires_grad=True)
    opt = optim.Adam([x], lr=0.1)
    (x ** 2).sum().backward()
    opt.step()
    # t = 1: m_hat = g and v_hat = g^2, so the step is lr * g / (|g| + eps)
    torch.testing.assert_close(x.detach(), torch.tensor([1e-3 - 0.1, -1.9, 49.9],
                                                        dtype=torch.float64), atol=1e-6, rtol=0)


def test_state_dict_round_trip_continues_identically():
    start, loss = random_problem(4)
    a = [w.clone().requires_grad_(True) for w in start]
    opt_a = optim.AdamW(a, lr=1e-2)
    for _ in range(5):
        opt_a.zero_grad(); loss(a).backward(); opt_a.step()
    b = [w.detach().clone().requires_grad_(True) for w in a]
    opt_b = optim.AdamW(b, lr=1e-2)
    opt_b.load_state_dict(copy.deepcopy(opt_a.state_dict()))  # as from a checkpoint
    for _ in range(5):
        for params, opt in ((a, opt_a), (b, opt_b)):
            opt.zero_grad(); loss(params).backward(); opt.step()
    assert max_difference(a, b) == 0


def test_closure_is_evaluated_and_returned():
    x = torch.ones(2, requires_grad=True)
    opt = optim.Adam([x], lr=0.1)

    def closure():
        opt.zero_grad()
        value = (x ** 2).sum()
        value.backward()
        return value

    assert opt.step(closure).item() == 2.0
    assert torch.all(x < 1)


@pytest.mark.parametrize("betas", [(0.9, 0.999), (0.5, 0.9)])
def test_article_adam_is_sgd_with_a_schedule(betas):
    mine, _ = train(lambda p: optim.ArticleAdam(p, lr=0.05, betas=betas), 5, 120)
    ref, _ = train(lambda p: torch.optim.SGD(p, lr=0.05), 5, 120,
                   lr_lambda=lambda s: optim.article_adam_multiplier(s + 1, betas))
    start, _ = random_problem(5)
    assert max_difference(mine, start) > 1e-2
    assert max_difference(mine, ref) < 1e-10


def test_article_adam_multiplier_values():
    assert optim.article_adam_multiplier(1) == pytest.approx(0.9 / 0.1 + 0.999)
    assert optim.article_adam_multiplier(2, (0.5, 0.5)) == pytest.approx(0.25 / 0.75 + 0.25)
    assert optim.article_adam_multiplier(10_000) < 1e-4          # the steps die out


def test_descend_follows_the_closed_form_of_gradient_descent():
    a = torch.tensor([1.0, 10.0], dtype=torch.float64)
    start = torch.tensor([1.0, 1.0], dtype=torch.float64)
    lr, steps = 0.15, 30
    points, losses = optim.descend(lambda x: 0.5 * (a * x * x).sum(), start,
                                   lambda p: torch.optim.SGD(p, lr=lr), steps)
    t = torch.arange(steps + 1, dtype=torch.float64).unsqueeze(1)
    expected = (1 - lr * a) ** t * start              # x_t = (I - lr A)^t x_0
    torch.testing.assert_close(points, expected, atol=1e-12, rtol=1e-12)
    torch.testing.assert_close(losses, 0.5 * (a * expected ** 2).sum(1), atol=1e-12, rtol=1e-12)
    assert torch.equal(start, torch.tensor([1.0, 1.0], dtype=torch.float64))  # not modified


@pytest.mark.parametrize("call, error, words", [
    (lambda p: optim.Adam(p, lr=-1.0), ValueError, "lr must be >= 0"),
    (lambda p: optim.Adam(p, betas=(0.9, 1.0)), ValueError, r"betas\[1\] must be in \[0, 1\)"),
    (lambda p: optim.Adam(p, betas=0.9), TypeError, "betas must be a pair"),
    (lambda p: optim.Adam(p, eps="1e-8"), TypeError, "eps must be a number"),
    (lambda p: optim.AdamW(p, weight_decay=-0.1), ValueError, "weight_decay must be >= 0"),
    (lambda p: optim.ArticleAdam(p, betas=(-0.1, 0.9)), ValueError, r"betas\[0\]"),
    (lambda p: optim.article_adam_multiplier(0), ValueError, "step must be > 0"),
])
def test_bad_optimizer_arguments(call, error, words):
    with pytest.raises(error, match=words):
        call([torch.zeros(2, requires_grad=True)])


@pytest.mark.parametrize("args, error, words", [
    ((lambda x: x.sum(), [1.0], torch.optim.SGD, 3), TypeError, "start must be a torch.Tensor"),
    ((lambda x: x.sum(), torch.ones(2), torch.optim.SGD, -1), ValueError, "steps must be >= 0"),
    ((None, torch.ones(2), torch.optim.SGD, 3), TypeError, "loss_fn must be callable"),
    ((lambda x: x.sum(), torch.ones(2), lambda p: "sgd", 3), TypeError,
     "make_optimizer must return"),
    ((lambda x: x, torch.ones(2), lambda p: torch.optim.SGD(p, lr=0.1), 3), TypeError,
     "loss_fn must return a scalar"),
])
def test_descend_bad_input(args, error, words):
    with pytest.raises(error, match=words):
        optim.descend(*args)
