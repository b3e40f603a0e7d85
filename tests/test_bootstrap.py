"""metrics.bootstrap_ci and paired_bootstrap_difference: the intervals used for rankings."""
import math

import numpy as np
import pytest
import torch
from scipy import stats

from aigc_lib import metrics


def mean(x):
    return x.double().mean().item()


def test_interval_of_a_mean_matches_the_normal_approximation_and_scipy():
    x = torch.randn(400, generator=torch.Generator().manual_seed(1)) * 2 + 5
    ci = metrics.bootstrap_ci(mean, x, n_resamples=2000)
    half = 1.96 * x.double().std().item() / math.sqrt(len(x))
    assert ci.estimate == pytest.approx(mean(x))
    assert ci.low < ci.estimate < ci.high
    assert (ci.high - ci.low) / 2 == pytest.approx(half, rel=0.1)
    ref = stats.bootstrap((x.numpy(),), np.mean, n_resamples=2000, method="percentile",
                          random_state=0).confidence_interval
    assert ci.low == pytest.approx(ref.low, abs=0.15 * half)
    assert ci.high == pytest.approx(ref.high, abs=0.15 * half)


def test_interval_covers_the_true_value_about_as_often_as_it_says():
    gen = torch.Generator().manual_seed(0)
    covered = 0
    for seed in range(200):
        x = (torch.rand(60, generator=gen) < 0.7).float()
        covered += not metrics.bootstrap_ci(mean, x, n_resamples=300, seed=seed).excludes(0.7)
    assert 0.88 <= covered / 200 <= 0.99


def accuracy_of(y, pred):
    return (y == pred).double().mean().item()


def test_paired_difference_of_one_model_with_itself_is_exactly_zero():
    y = torch.randint(0, 3, (100,))
    pred = torch.randint(0, 3, (100,))
    ci = metrics.paired_bootstrap_difference(accuracy_of, y, pred, pred, n_resamples=200)
    assert (ci.estimate, ci.low, ci.high) == (0.0, 0.0, 0.0)
    assert not ci.excludes(0.0)


def test_pairing_narrows_the_interval_of_correlated_scores():
    gen = torch.Generator().manual_seed(3)
    y = torch.zeros(300, dtype=torch.long)
    a = (torch.rand(300, generator=gen) < 0.3).long()          # a is wrong on 30 %
    b = a.clone()
    b[torch.randperm(300, generator=gen)[:15]] = 1              # b: a few more mistakes
    paired = metrics.paired_bootstrap_difference(accuracy_of, y, a, b, n_resamples=500)
    separate = [metrics.bootstrap_ci(accuracy_of, y, p, n_resamples=500) for p in (a, b)]
    assert paired.high - paired.low < 0.5 * min(s.high - s.low for s in separate)
    assert paired.estimate > 0 and str(paired).endswith("(95% bootstrap)")


@pytest.mark.parametrize("call, message", [
    (lambda: metrics.bootstrap_ci("mean", torch.ones(3)), "statistic must be callable"),
    (lambda: metrics.bootstrap_ci(mean), "give at least one array"),
    (lambda: metrics.bootstrap_ci(mean, torch.ones(3), torch.ones(4)), "share their first"),
    (lambda: metrics.bootstrap_ci(mean, torch.ones(0)), "must not be empty"),
    (lambda: metrics.bootstrap_ci(mean, torch.tensor(1.0)), "scalar"),
    (lambda: metrics.bootstrap_ci(mean, torch.ones(3), confidence=1.0), "confidence"),
    (lambda: metrics.bootstrap_ci(mean, torch.ones(3), n_resamples=0), "n_resamples"),
    (lambda: metrics.bootstrap_ci(lambda x: float("nan"), torch.ones(3)), "NaN"),
    (lambda: metrics.paired_bootstrap_difference(1, torch.ones(2), torch.ones(2),
                                                 torch.ones(2)), "metric must be callable"),
])
def test_bad_input_names_the_argument(call, message):
    with pytest.raises((TypeError, ValueError), match=message):
        call()
