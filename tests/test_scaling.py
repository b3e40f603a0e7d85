"""Scaling laws: the fit recovers known coefficients from synthetic runs, the bootstrap covers
them, the frontier and the forecast follow from the law as derived, repeated data is discounted
as Muennighoff et al. write it, sweep runs are cached once under a lock, and bad input gets clear
errors."""
import math
import threading

import numpy as np
import pytest
import torch

from aigc_lib import pretrained, scaling

TRUE = scaling.ScalingLaw(E=1.3, A=40.0, alpha=0.35, B=80.0, beta=0.3)


def synthetic_runs(noise=0.0, seed=0):
    n = np.repeat([3e4, 6e4, 1.2e5, 2.5e5, 5e5, 1e6], 4)
    d = np.tile([5e4, 2e5, 8e5, 3.2e6], 6)
    losses = TRUE.loss(n, d) * np.exp(np.random.default_rng(seed).normal(0, noise, len(n)))
    return n, d, losses


def test_fit_recovers_known_coefficients_from_exact_runs():
    law = scaling.fit_law(*synthetic_runs())
    assert law.alpha == pytest.approx(TRUE.alpha, rel=1e-3)
    assert law.beta == pytest.approx(TRUE.beta, rel=1e-3)
    assert law.E == pytest.approx(TRUE.E, rel=1e-3)
    assert law.A == pytest.approx(TRUE.A, rel=1e-2) and law.B == pytest.approx(TRUE.B, rel=1e-2)


def test_fixed_exponents_recover_the_coefficients():
    law = scaling.fit_coefficients(*synthetic_runs(), alpha=TRUE.alpha, beta=TRUE.beta)
    for name in ("E", "A", "B"):
        assert getattr(law, name) == pytest.approx(getattr(TRUE, name), rel=1e-6), name
    wrong = scaling.fit_coefficients(*synthetic_runs(), alpha=0.5, beta=0.5)
    n, d, losses = synthetic_runs()
    assert np.abs(np.log(wrong.loss(n, d) / losses)).max() > 1e-3    # wrong exponents show
    with pytest.raises(ValueError, match="alpha must be > 0"):
        scaling.fit_coefficients(n, d, losses, alpha=0.0, beta=0.3)


def test_bootstrap_intervals_cover_the_truth_and_are_reproducible():
    runs = synthetic_runs(noise=0.002, seed=1)
    law = scaling.fit_law(*runs)
    laws = scaling.bootstrap(*runs, n_resamples=60, seed=3, law=law)
    again = scaling.bootstrap(*runs, n_resamples=60, seed=3, law=law)
    assert len(laws) == 60 and laws == again
    for name in ("alpha", "beta", "E"):
        low, high = scaling.percentile_interval([getattr(x, name) for x in laws])
        assert low <= getattr(TRUE, name) <= high, name
        assert high - low > 0                                   # resampling changes the fit
    wider = scaling.bootstrap(*synthetic_runs(noise=0.02, seed=1), n_resamples=60, seed=3)
    spread = [np.ptp([getattr(x, "alpha") for x in ls]) for ls in (laws, wider)]
    assert spread[1] > spread[0]                                # more noise, wider interval


def test_frontier_is_the_constrained_minimum():
    for compute in (1e15, 1e18, 1e21):
        n, d, loss = TRUE.optimal(compute)
        assert 6 * n * d == pytest.approx(compute, rel=1e-9)
        grid = np.geomspace(n / 30, n * 30, 20001)
        assert loss == pytest.approx(TRUE.loss(grid, compute / (6 * grid)).min(), rel=1e-7)
        assert loss <= TRUE.loss(grid, compute / (6 * grid)).min() + 1e-12
        # on an endless corpus the numerical search agrees with the closed form
        n2, d2, loss2 = TRUE.optimal(compute, unique=1e30)
        assert n2 == pytest.approx(n, rel=0.01) and loss2 == pytest.approx(loss, rel=1e-6)
    exponent = math.log(TRUE.optimal(1e20)[0] / TRUE.optimal(1e18)[0]) / math.log(100)
    assert exponent == pytest.approx(TRUE.size_exponent, rel=1e-9)


def test_crossover_reaches_the_target_and_respects_the_floors():
    forecast = TRUE.crossover(1.6)
    assert forecast.reachable
    assert TRUE.loss(forecast.params, forecast.tokens) == pytest.approx(1.6, abs=1e-6)
    assert TRUE.optimal(forecast.flops / 1.01)[2] > 1.6         # the smallest such compute
    assert not TRUE.crossover(1.3).reachable                    # at the floor E: never
    assert math.isinf(TRUE.crossover(1.2).tokens_per_param)
    # a small corpus raises the floor; a target above it is reached with more compute
    unique = 1e6
    floor = TRUE.floor(unique)
    assert floor == pytest.approx(1.3 + 80.0 * (unique * (1 + scaling.REPEAT_HALF_LIFE)) ** -0.3)
    assert not TRUE.crossover(floor - 1e-3, unique=unique).reachable
    limited = TRUE.crossover(floor + 0.05, unique=unique)
    assert limited.reachable and limited.flops > TRUE.crossover(floor + 0.05).flops
    n, d, loss = TRUE.optimal(limited.flops, unique=unique)
    assert loss == pytest.approx(floor + 0.05, abs=1e-4) and d > unique   # repeats the corpus


def test_effective_tokens_follow_muennighoff_and_invert():
    unique = 1e5
    assert scaling.effective_tokens(5e4, unique) == 5e4                # one epoch or less
    four_epochs = scaling.effective_tokens(4e5, unique)
    expected = unique + unique * 15.4 * (1 - math.exp(-3 / 15.4))
    assert four_epochs == pytest.approx(expected) and 0.9 * 4e5 < four_epochs < 4e5
    ceiling = unique * (1 + scaling.REPEAT_HALF_LIFE)
    assert scaling.effective_tokens(1e12, unique) == pytest.approx(ceiling)
    for tokens in (3e4, 2e5, 1e6):
        back = scaling.tokens_for_effective(scaling.effective_tokens(tokens, unique), unique)
        assert back == pytest.approx(tokens)
    assert math.isinf(scaling.tokens_for_effective(ceiling * 1.01, unique))
    array = scaling.effective_tokens(np.array([1e4, 1e6]), unique)
    assert array.shape == (2,) and array[0] == 1e4


def test_percentile_interval_treats_infinity_as_large():
    assert scaling.percentile_interval(list(range(1, 101)), 0.9) == (5.0, 95.0)
    low, high = scaling.percentile_interval([1.0] * 90 + [math.inf] * 10, 0.9)
    assert low == 1.0 and math.isinf(high)


def test_bad_input():
    n, d, losses = synthetic_runs()
    with pytest.raises(ValueError, match="same length"):
        scaling.fit_law(n, d[:-1], losses)
    with pytest.raises(ValueError, match="losses must hold positive finite"):
        scaling.fit_law(n, d, np.where(losses > 2, np.nan, losses))
    with pytest.raises(ValueError, match="at least 5 runs"):
        scaling.fit_law(n[:4], d[:4], losses[:4])
    with pytest.raises(ValueError, match="2 distinct"):
        scaling.fit_law(np.full(8, 1e5), d[:8], losses[:8])
    with pytest.raises(ValueError, match="n_params must be a 1-D"):
        scaling.fit_law(n.reshape(4, 6), d, losses)
    with pytest.raises(ValueError, match="target must be a positive"):
        TRUE.crossover(float("nan"))
    with pytest.raises(ValueError, match="compute must be positive"):
        TRUE.optimal(-1.0)
    with pytest.raises(ValueError, match="tokens must be positive"):
        scaling.effective_tokens(0.0, 1e5)
    with pytest.raises(ValueError, match="confidence"):
        scaling.percentile_interval([1.0, 2.0], 1.5)
    with pytest.raises(ValueError, match="block must be one of"):
        scaling.Run(1, 16, 2, 10, block="rwkv")
    with pytest.raises(TypeError, match="steps must be an int"):
        scaling.Run(1, 16, 2, 10.5)
    with pytest.raises(TypeError, match="sweep must be a scaling.Plan"):
        scaling.run_sweep([scaling.Run(1, 16, 2, 10)])


def test_the_plans_meet_the_design():
    for profile in ("cpu", "gpu"):
        p = scaling.plan(profile)
        gpt2 = [r for r in p.runs if r.block == "gpt2"]
        shapes = sorted({(r.n_layer, r.n_embd) for r in gpt2})
        assert len(shapes) >= 5
        sizes = [scaling._count(scaling.Run(L, d, 2, 1).recipe(p.base), "gpt2",
                                p.base.vocab_size)[1] for L, d in shapes]
        assert max(sizes) / min(sizes) >= 30                     # non-embedding span
        for L, d in shapes:
            runs = [r for r in gpt2 if (r.n_layer, r.n_embd) == (L, d)]
            assert len({r.steps for r in runs}) >= 3
        for L, d in (shapes[0], shapes[-1]):
            assert len({r.seed for r in gpt2 if (r.n_layer, r.n_embd) == (L, d)}) >= 2
        llama_runs = [r for r in p.runs if r.block == "llama"]
        assert len({r.seed for r in llama_runs}) >= 3
        twins = [r for r in gpt2 if (r.n_layer, r.n_embd, r.steps) ==
                 (llama_runs[0].n_layer, llama_runs[0].n_embd, llama_runs[0].steps)]
        assert len({r.seed for r in twins}) >= 3


TINY = pretrained.Recipe(vocab_size=300, n_layer=1, n_head=2, n_embd=16, block_size=32,
                         dropout=0.0, steps=8, batch_size=2, lr=3e-3, warmup_steps=1,
                         min_lr_ratio=0.1, weight_decay=0.1, clip_grad_norm=1.0, eval_every=8)


def test_sweep_runs_are_cached_once_under_a_lock(tmp_path, monkeypatch):
    monkeypatch.setenv("AIGC_CACHE", str(tmp_path))
    plan = scaling.Plan(base=TINY, runs=(scaling.Run(1, 16, 2, 4), scaling.Run(1, 16, 2, 4,
                                                                             block="llama")))
    calls = []
    real = scaling.train_run

    def counting(*args, **kwargs):
        calls.append(args[0])
        return real(*args, **kwargs)

    monkeypatch.setattr(scaling, "train_run", counting)
    results = []
    threads = [threading.Thread(target=lambda: results.append(scaling.run_sweep(
        plan, progress=False))) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(calls) == 2 and results[0] == results[1]
    first = results[0]
    assert first[0].tokens == 4 * 2 * 32 and 0 < first[0].test_bpb < 12
    assert first[0].params > first[0].params_nonembedding > 0
    assert first[1].run.block == "llama" and first[1].test_bpb != first[0].test_bpb
    assert scaling.run_sweep(plan, progress=False) == first and len(calls) == 2
    # a different seed or block is a different cache entry; so is another device/precision
    assert scaling.run_path(plan.runs[0], TINY) != scaling.run_path(plan.runs[1], TINY)
    before = scaling.run_path(plan.runs[0], TINY)
    monkeypatch.setattr(pretrained, "trained_on",
                        lambda device=None: {"device": "cuda", "precision": "bf16-autocast"})
    assert scaling.run_path(plan.runs[0], TINY) != before


def test_cpu_peak_and_training_throughput_are_measured():
    peak = scaling.matmul_peak_flops(size=128, seconds=0.05)
    from aigc_lib.models import gpt
    model = gpt.GPT(gpt.GPTConfig(vocab_size=50, block_size=16, n_layer=1, n_head=2, n_embd=16))
    achieved = scaling.training_flops_per_second(model, gpt.flops_per_token(model.config), 2, 2)
    assert peak > 1e7 and 0 < achieved
    assert all(p.grad is None for p in model.parameters())      # the model itself is untouched
    with pytest.raises(TypeError, match="language model"):
        scaling.training_flops_per_second(torch.nn.Linear(2, 2), 1.0, 2)


def test_verification_trains_where_the_law_points(tmp_path, monkeypatch):
    """The gpu profile's check of the forecast, exercised on a tiny recipe on the CPU."""
    monkeypatch.setenv("AIGC_CACHE", str(tmp_path))
    law = scaling.ScalingLaw(E=1.0, A=30.0, alpha=0.3, B=50.0, beta=0.3)
    shape = scaling.shape_for(2e4, TINY)
    assert shape.n_embd == 64 * shape.n_layer
    check = scaling.verify(law, [law, dataclass_replace(law, E=1.2)], 2e9, TINY, unique=5e4)
    assert check.result.run.n_embd == 64 and check.result.tokens > 0
    low, high = check.interval
    assert low <= check.predicted <= high + 1e-9
    assert check.held == (low <= check.result.test_bpb <= high)


def dataclass_replace(obj, **changes):
    import dataclasses
    return dataclasses.replace(obj, **changes)
