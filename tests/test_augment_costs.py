"""Text augmentation (deterministic edits) and cost measurements."""
import random
import time

import pytest
import torch

from aigc_lib import augment, costs

TEXT = "my laptop screen stays black after the update"


def test_augment_text_is_deterministic_under_a_seed():
    assert augment.augment_text(TEXT, 3) == augment.augment_text(TEXT, 3)
    outputs = {augment.augment_text(TEXT, s, p_delete=0.2, n_swap=1) for s in range(20)}
    assert len(outputs) > 10


def test_augment_text_edits_only_as_asked():
    assert augment.augment_text(TEXT, 0, p_delete=0, n_swap=0, p_typo=0) == TEXT
    swapped = augment.augment_text(TEXT, 0, p_delete=0, n_swap=1, p_typo=0)
    assert sorted(swapped.split()) == sorted(TEXT.split()) and swapped != TEXT
    deleted = augment.augment_text(TEXT, 0, p_delete=0.5, n_swap=0, p_typo=0).split()
    remaining = iter(TEXT.split())
    assert all(word in remaining for word in deleted)  # a subsequence, order kept
    typo = augment.augment_text("keyboard", 1, p_delete=0, n_swap=0, p_typo=1)
    assert sorted(typo) == sorted("keyboard") and typo != "keyboard"
    assert typo[0] == "k" and typo[-1] == "d"


def test_augment_text_never_returns_an_empty_message():
    assert augment.augment_text("hello there", 0, p_delete=1.0, p_typo=0) in ("hello", "there")
    assert augment.augment_text("", 0) == ""


def test_augment_dataset_layout_and_labels():
    texts, labels = ["a b c", "d e f g"], torch.tensor([0, 2])
    out, out_labels = augment.augment_dataset(texts, labels, copies=3, seed=5)
    assert out[:2] == texts and len(out) == 8
    assert out_labels.tolist() == [0, 2] * 4 and out_labels.dtype == torch.int64
    again, _ = augment.augment_dataset(texts, [0, 2], copies=3, seed=5)
    assert again == out
    rng = random.Random(5)
    manual = texts + [augment.augment_text(t, rng) for _ in range(3) for t in texts]
    assert manual == out


@pytest.mark.parametrize("call, error, words", [
    (lambda: augment.augment_text(3, 0), TypeError, "text must be a str"),
    (lambda: augment.augment_text(TEXT, 0, p_delete=1.5), ValueError, "p_delete must be a prob"),
    (lambda: augment.augment_text(TEXT, 0, p_typo=-0.1), ValueError, "p_typo must be >= 0"),
    (lambda: augment.augment_text(TEXT, -1), ValueError, "seed must be >= 0"),
    (lambda: augment.augment_text(TEXT, 0, n_swap=1.5), TypeError, "n_swap must be an int"),
    (lambda: augment.augment_dataset(["a"], [0, 1]), ValueError, "one entry per text"),
    (lambda: augment.augment_dataset("abc", [0]), TypeError, "texts must be a list"),
    (lambda: augment.augment_dataset(["a"], [0.5]), TypeError, "labels must be integer"),
    (lambda: augment.augment_dataset(["a"], [0], copies=-1), ValueError, "copies must be >= 0"),
    (lambda: augment.augment_dataset(["a"], [0], p_swap=1), TypeError, "unknown edits"),
])
def test_augment_bad_input(call, error, words):
    with pytest.raises(error, match=words):
        call()


def test_count_parameters_counts_shared_tensors_once():
    a = torch.nn.Linear(3, 4)
    model = torch.nn.Sequential(a, torch.nn.ReLU(), torch.nn.Linear(4, 2))
    model.append(a)  # the same layer twice
    assert costs.count_parameters(model) == 16 + 10
    model[2].requires_grad_(False)
    assert costs.count_parameters(model, trainable_only=True) == 16
    with pytest.raises(TypeError, match="model must be a torch.nn.Module"):
        costs.count_parameters([a])


def test_size_on_disk(tmp_path):
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "a.bin").write_bytes(b"x" * 10)
    (tmp_path / "b.bin").write_bytes(b"x" * 5)
    assert costs.size_on_disk(tmp_path) == 15
    assert costs.size_on_disk(tmp_path / "b.bin", tmp_path / "sub") == 15
    with pytest.raises(FileNotFoundError, match="no file or folder"):
        costs.size_on_disk(tmp_path / "missing")
    with pytest.raises(ValueError, match="at least one path"):
        costs.size_on_disk()


def test_measure_speed_on_a_function_of_known_cost():
    calls = []

    def predict(batch):
        calls.append(len(batch))
        time.sleep(0.002 + 0.0005 * len(batch))
        return [0] * len(batch)

    speed = costs.measure_speed(predict, ["m"] * 20, batch_size=10, singles=5, repeats=2,
                                warmup=1)
    assert calls[:6] == [1] * 6 and calls[6:] == [10, 10] * 2
    assert 0.0025 <= speed.latency < 0.05
    assert 20 / (2 * 0.007) * 0.3 < speed.throughput <= 20 / (2 * 0.007)
    with pytest.raises(ValueError, match="texts must be a non-empty list"):
        costs.measure_speed(predict, [])
    with pytest.raises(TypeError, match="predict must be callable"):
        costs.measure_speed("model", ["m"])
