"""aigc_lib.judge: the digit classifier that scores generated digits (chapters 3–5)."""
import pytest
import torch

from aigc_lib import data, judge

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def trained():
    return judge.train_judge(seed=0, epochs=10)


def test_judge_reads_held_out_digits_and_leaves_the_global_rng_alone():
    state = torch.get_rng_state()
    j = judge.train_judge(seed=0, epochs=10)
    assert torch.equal(state, torch.get_rng_state())
    assert j.test_accuracy > 0.9
    x_test, y_test = data.digits("test")
    assert j.label_accuracy(x_test, y_test) == pytest.approx(j.test_accuracy)
    assert j.embed(x_test).shape == (len(x_test), judge.FEATURES)


def test_training_is_deterministic_for_a_seed(trained):
    again = judge.train_judge(seed=0, epochs=10)
    x, _ = data.digits("test")
    assert torch.equal(trained.embed(x), again.embed(x))


def test_halves_are_disjoint_stratified_and_fixed():
    (x_a, y_a), (x_b, y_b) = judge.heldout_halves()
    x, _ = data.digits("test")
    assert len(x_a) + len(x_b) == len(x)
    assert abs(len(x_a) - len(x_b)) <= 10
    for digit in range(10):
        assert abs(int((y_a == digit).sum()) - int((y_b == digit).sum())) <= 1
    key = lambda rows: sorted(tuple(r.tolist()) for r in rows)   # every test image once
    assert key(torch.cat([x_a, x_b])) == key(x)
    (again_a, _), _ = judge.heldout_halves()
    assert torch.equal(x_a, again_a)


def test_floor_is_far_below_independent_pixels(trained):
    x_train, _ = data.digits("train")
    pick = torch.randint(0, len(x_train), x_train.shape, generator=torch.Generator().manual_seed(0))
    independent = x_train.gather(0, pick)
    floor = judge.floor(trained)
    assert 0 < floor < judge.frechet_to_heldout(trained, independent) / 5


@pytest.mark.parametrize("call, message", [
    (lambda j: j.embed(torch.zeros(3, 10)), r"images must be \(N, 64\)"),
    (lambda j: j.embed(torch.zeros(3, 64, dtype=torch.long)), "floating"),
    (lambda j: j.label_accuracy(torch.zeros(3, 64), torch.zeros(2, dtype=torch.long)),
     "one entry per image"),
    (lambda j: judge.frechet_to_heldout(j, torch.zeros(5, 64)), "at least"),
    (lambda j: judge.frechet_to_heldout("judge", torch.zeros(5, 64)), "judge must be"),
    (lambda j: judge.train_judge(seed=-1), "seed"),
])
def test_bad_input_names_the_argument(trained, call, message):
    with pytest.raises((TypeError, ValueError), match=message):
        call(trained)


def test_mnist_judge_on_a_local_stand_in(monkeypatch):
    """dataset="mnist" trains on MNIST's splits (here a stand-in: no network in tests)."""
    def stand_in(split):
        n = 300 if split == "train" else 100
        g = torch.Generator().manual_seed(0 if split == "train" else 1)
        y = torch.arange(n) % 10
        x = 0.1 * torch.rand(n, 28 * 28, generator=g)
        x[torch.arange(n), y * 78] = 1.0            # one bright pixel per class
        return x, y

    monkeypatch.setattr(data, "mnist", stand_in)
    j = judge.train_judge(seed=0, epochs=20, dataset="mnist")
    assert j.dataset == "mnist" and j.test_accuracy > 0.9
    (x_a, _), (x_b, _) = judge.heldout_halves("mnist")
    assert len(x_a) == len(x_b) == 50
    assert judge.floor(j) == judge.frechet_to_heldout(j, x_a) > 0
    with pytest.raises(ValueError, match=r"images must be \(N, 784\)"):
        j.embed(torch.zeros(2, 64))
    with pytest.raises(ValueError, match="dataset must be one of"):
        judge.train_judge(dataset="cifar")
