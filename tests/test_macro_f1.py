"""metrics.macro_f1 equals scikit-learn's macro-averaged F1 (chapters 9 and 10)."""
import numpy as np
import pytest
import torch
from sklearn.metrics import f1_score

from aigc_lib import metrics


@pytest.mark.parametrize("seed", range(5))
def test_macro_f1_equals_scikit_learn(seed):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 6, 80)
    p = np.where(rng.random(80) < 0.6, y, rng.integers(0, 7, 80))  # a class never true
    expected = f1_score(y, p, average="macro", zero_division=0)
    assert metrics.macro_f1(torch.tensor(y), torch.tensor(p)) == pytest.approx(expected)
    assert metrics.macro_f1(y, p, num_classes=7) == pytest.approx(expected)


def test_macro_f1_by_hand():
    y, p = torch.tensor([0, 0, 1, 1, 2]), torch.tensor([0, 1, 1, 1, 0])
    # class 0: tp 1, fp 1, fn 1 -> 0.5; class 1: tp 2, fp 1, fn 0 -> 0.8; class 2: 0
    assert metrics.macro_f1(y, p) == pytest.approx((0.5 + 0.8 + 0.0) / 3)
    assert metrics.macro_f1(y, y) == 1.0


@pytest.mark.parametrize("call, error, words", [
    (lambda: metrics.macro_f1(torch.tensor([0, 1]), torch.tensor([0])), ValueError,
     "same shape"),
    (lambda: metrics.macro_f1(torch.tensor([0.0, 1.0]), torch.tensor([0, 1])), TypeError,
     "targets must hold integer"),
    (lambda: metrics.macro_f1(torch.tensor([0, 3]), torch.tensor([0, 1]), num_classes=3),
     ValueError, "outside num_classes"),
    (lambda: metrics.macro_f1(torch.tensor([0, -1]), torch.tensor([0, 1])), ValueError,
     ">= 0"),
    (lambda: metrics.macro_f1(torch.tensor([0, 1]), torch.tensor([True, False])), TypeError,
     "predictions must hold integer"),
    (lambda: metrics.macro_f1(torch.tensor([], dtype=torch.int64),
                              torch.tensor([], dtype=torch.int64)), ValueError, "empty"),
])
def test_macro_f1_bad_input(call, error, words):
    with pytest.raises(error, match=words):
        call()
