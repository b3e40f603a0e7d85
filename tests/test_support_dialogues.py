"""The chatterbot-corpus support dialogues of chapter 8: deterministic splits, no conversation
(or copy of one) in two splits, and errors that name the bad argument."""
import pytest

from aigc_lib import data


def splits(**kwargs):
    return {s: data.support_dialogues(s, **kwargs) for s in data.SUPPORT_SPLITS}


def test_raw_conversations_include_the_duplicates():
    raw = data.support_conversations("tech_support")
    assert len(raw) == 1050 and all(c == "tech_support" for c, _ in raw)
    assert len({tuple(turns) for _, turns in raw}) == 10      # ten conversations, repeated
    assert all(len(turns) == 2 for _, turns in raw)


def test_splits_are_deterministic_and_cover_every_distinct_pair():
    a, b = splits(), splits()
    assert a == b
    assert all(a[s] for s in data.SUPPORT_SPLITS)
    assert len(a["train"]) > 3 * len(a["test"])
    everything = {(d.question, d.answer) for s in a.values() for d in s}
    raw = {(turns[0], turns[1]) for _, turns in data.support_conversations(
        data.SUPPORT_CATEGORIES)}
    normal = {tuple(map(data.normalise_message, p)) for p in raw}
    assert {tuple(map(data.normalise_message, p)) for p in everything} == normal
    assert sum(len(s) for s in a.values()) == len(everything) == len(normal)
    other_seed = splits(seed=1)
    assert {d.question for d in other_seed["test"]} != {d.question for d in a["test"]}


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_no_conversation_or_statement_is_in_two_splits(seed):
    parts = splits(seed=seed)
    ids = {s: {d.conversation for d in parts[s]} for s in parts}
    statements = {s: {data.normalise_message(x) for d in parts[s]
                      for x in (d.question, d.answer)} for s in parts}
    for first, second in (("train", "val"), ("train", "test"), ("val", "test")):
        assert not ids[first] & ids[second]
        assert not statements[first] & statements[second], (first, second)


def test_every_split_has_every_category():
    for pairs in splits().values():
        assert {d.category for d in pairs} == set(data.SUPPORT_CATEGORIES)


def test_statements_are_normalised_for_grouping():
    norm = data.normalise_message
    assert norm("What’s a CPU?  ") == norm("what's a cpu")
    assert data.normalise_message("Hello, World!") == "hello world"


def test_multi_turn_conversations_give_consecutive_pairs():
    pairs = [d for s in splits(categories=("computers",)).values() for d in s]
    raw = data.support_conversations("computers")
    assert len(pairs) == len({(a, b) for _, t in raw for a, b in zip(t, t[1:])})


@pytest.mark.parametrize("kwargs, error, words", [
    (dict(split="dev"), ValueError, "split must be one of"),
    (dict(split="validation"), ValueError, "split must be one of"),   # named 'val' everywhere
    (dict(categories=("tech_support", "klingon")), ValueError, "categories has unknown"),
    (dict(categories=()), TypeError, "categories must be"),
    (dict(categories=[1]), TypeError, "categories must be"),
    (dict(categories=("coding", "coding")), ValueError, "twice"),
    (dict(fractions=(0.5, 0.5)), TypeError, "fractions must be a sequence of three"),
    (dict(fractions=(0.8, 0.3, -0.1)), ValueError, "fractions must be three positive"),
    (dict(fractions=(0.5, 0.2, 0.2)), ValueError, "summing to 1"),
    (dict(seed=1.5), TypeError, "seed must be an int"),
    (dict(categories="health"), ValueError, "at least 3"),
])
def test_bad_input(kwargs, error, words):
    with pytest.raises(error, match=words):
        data.support_dialogues(**kwargs)
