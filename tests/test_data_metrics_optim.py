import math

import pytest
import torch

from aigc_lib import data, metrics, optim


def test_digits_split_is_fixed_stratified_and_scaled():
    x_train, y_train = data.digits("train")
    x_test, y_test = data.digits("test")
    assert x_train.shape == (1437, 64) and x_test.shape == (360, 64)
    assert x_train.dtype == torch.float32 and y_train.dtype == torch.int64
    assert 0 <= x_train.min() and x_train.max() == 1
    assert torch.bincount(y_test).min() >= 35  # stratified: every class present in test
    again, _ = data.digits("test")
    assert torch.equal(again, x_test)
    images, _ = data.digits("test", flatten=False, binarize=0.5)
    assert images.shape == (360, 8, 8) and set(images.unique().tolist()) == {0.0, 1.0}
    assert torch.equal(images.reshape(360, -1), (x_test > 0.5).float())


@pytest.mark.parametrize("kwargs, words", [({"split": "val"}, "split"),
                                           ({"binarize": 1.5}, "binarize"),
                                           ({"binarize": True}, "binarize")])
def test_digits_bad_input(kwargs, words):
    with pytest.raises(ValueError, match=words):
        data.digits(**kwargs)


def test_accuracy():
    logits = torch.tensor([[2.0, 1.0], [0.0, 3.0], [1.0, 0.0]])
    assert metrics.accuracy(logits, torch.tensor([0, 1, 1])) == pytest.approx(2 / 3)
    with pytest.raises(ValueError, match="same length"):
        metrics.accuracy(logits, torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="logits must have 2 dimensions"):
        metrics.accuracy(logits[0], torch.tensor([0]))
    # issue 12 §5: one column and out-of-range targets used to give silent wrong answers
    with pytest.raises(ValueError, match="at least 2 classes"):
        metrics.accuracy(logits[:, :1], torch.tensor([0, 0, 0]))
    with pytest.raises(ValueError, match=r"class indices in \[0, 2\)"):
        metrics.accuracy(logits, torch.tensor([0, 1, 2]))
    with pytest.raises(ValueError, match=r"class indices in \[0, 2\)"):
        metrics.accuracy(logits, torch.tensor([0, -1, 1]))
    with pytest.raises(TypeError, match="targets must hold integer"):
        metrics.accuracy(logits, torch.tensor([0.0, 1.0, 1.0]))


def test_warmup_cosine_shape():
    f = [optim.warmup_cosine(s, 10, 110, 0.1) for s in range(120)]
    assert f[0] == pytest.approx(0.1) and f[9] == pytest.approx(1.0) and f[10] == pytest.approx(1.0)
    assert all(a < b for a, b in zip(f[:9], f[1:10]))           # rising during warm-up
    assert all(a >= b for a, b in zip(f[10:110], f[11:111]))    # falling afterwards
    assert f[60] == pytest.approx(0.1 + 0.9 * 0.5)               # half-way: the cosine's midpoint
    assert f[110] == pytest.approx(0.1) and f[119] == pytest.approx(0.1)


def test_warmup_cosine_equals_torch_linear_then_cosine():
    params = [torch.nn.Parameter(torch.zeros(1))]
    ours = torch.optim.SGD(params, lr=0.5)
    ref = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.5)
    sched = optim.warmup_cosine_scheduler(ours, warmup_steps=5, total_steps=50, min_ratio=0.2)
    torch_sched = torch.optim.lr_scheduler.SequentialLR(ref, [
        torch.optim.lr_scheduler.LinearLR(ref, start_factor=1 / 5, total_iters=4),
        torch.optim.lr_scheduler.CosineAnnealingLR(ref, T_max=45, eta_min=0.5 * 0.2)],
        milestones=[5])
    for _ in range(50):
        assert ours.param_groups[0]["lr"] == pytest.approx(ref.param_groups[0]["lr"], abs=1e-6)
        ours.step(); ref.step(); sched.step(); torch_sched.step()


@pytest.mark.parametrize("args, error, words", [
    ((-1, 5, 50), ValueError, "step must be >= 0"),
    ((0, 50, 50), ValueError, "warmup_steps"),
    ((0, 5, 0), ValueError, "total_steps must be > 0"),
    ((0, 5, 50, 1.5), ValueError, "min_ratio must be in"),
    ((0.5, 5, 50), TypeError, "step must be an int"),
])
def test_warmup_cosine_bad_input(args, error, words):
    with pytest.raises(error, match=words):
        optim.warmup_cosine(*args)
    assert math.isfinite(optim.warmup_cosine(0, 0, 10))


def test_calibration_bins_and_ece_by_hand():
    from aigc_lib.metrics import calibration_bins, expected_calibration_error
    conf = torch.tensor([0.95, 0.91, 0.55, 0.52, 0.0])
    correct = torch.tensor([1, 0, 1, 1, 0])
    bins = calibration_bins(conf, correct, n_bins=10)
    assert [b[2] for b in bins] == [1, 2, 2]          # 0 -> first bin; 0.5x; 0.9x
    assert bins[1][0] == pytest.approx(0.535) and bins[1][1] == 1.0
    expected = (1 * 0.0 + 2 * abs(1 - 0.535) + 2 * abs(0.5 - 0.93)) / 5
    assert expected_calibration_error(conf, correct) == pytest.approx(expected)


def test_ece_is_small_for_calibrated_predictions_and_large_for_overconfident_ones():
    from aigc_lib.metrics import expected_calibration_error
    gen = torch.Generator().manual_seed(0)
    conf = torch.rand(200_000, generator=gen)
    calibrated = (torch.rand(200_000, generator=gen) < conf).long()
    assert expected_calibration_error(conf, calibrated) < 0.01
    overconfident = torch.full((1000,), 0.99)
    coin = (torch.rand(1000, generator=gen) < 0.5).long()
    assert expected_calibration_error(overconfident, coin) == pytest.approx(0.49, abs=0.05)


@pytest.mark.parametrize("conf, correct, n_bins, match", [
    (torch.tensor([0.5, 1.2]), torch.tensor([1, 0]), 10, "confidence"),
    (torch.tensor([0.5, 0.2]), torch.tensor([1, 2]), 10, "correct"),
    (torch.tensor([0.5, 0.2]), torch.tensor([1]), 10, "same shape"),
    (torch.tensor([0.5]), torch.tensor([1]), 0, "n_bins"),
    (torch.tensor([], dtype=torch.float32), torch.tensor([], dtype=torch.int64), 10, "empty"),
])
def test_calibration_bad_input(conf, correct, n_bins, match):
    from aigc_lib.metrics import expected_calibration_error
    with pytest.raises((ValueError, TypeError), match=match):
        expected_calibration_error(conf, correct, n_bins)
