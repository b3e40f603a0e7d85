"""Chapter 8's task metrics (chrF equal to sacrebleu, exact match after normalisation,
semantic similarity) and the retrieval baseline (nearest question, one embedding per text)."""
import pytest
import sacrebleu
import torch

from aigc_lib import metrics, retrieval

HYP = ["Restart the router and check the cables.", "print(i)", "", "What is AI?"]
REF = ["Restart your router and check if the cables are connected.", ["for i in x:", "print(i)"],
       "Something.", "what is ai"]


def bag_of_letters(texts):
    """A toy embedding: letter counts (similar strings, similar vectors)."""
    return torch.tensor([[t.lower().count(c) for c in "abcdefghijklmnopqrstuvwxyz"]
                         for t in texts], dtype=torch.float32) + 1e-3


def test_chrf_equals_sacrebleu_and_takes_the_best_reference():
    ours = metrics.chrf(HYP, REF)
    for h, r, value in zip(HYP, REF, ours.tolist()):
        refs = [r] if isinstance(r, str) else r
        assert value == pytest.approx(max(sacrebleu.sentence_chrf(h, [x]).score for x in refs))
    assert ours[1] == pytest.approx(100.0) and ours[2] == 0.0 and 0 < ours[0] < 100


def test_exact_match_ignores_case_and_punctuation_only():
    assert metrics.exact_match(HYP, REF).tolist() == [0.0, 1.0, 0.0, 1.0]


def test_semantic_similarity_is_the_best_cosine():
    sim = metrics.semantic_similarity(HYP, REF, bag_of_letters)
    assert sim[1] == pytest.approx(1.0) and sim[2] == 0.0
    a, b = bag_of_letters([HYP[0], REF[0]])
    assert sim[0] == pytest.approx(torch.nn.functional.cosine_similarity(a, b, dim=0).item())


@pytest.mark.parametrize("call, error, words", [
    (lambda: metrics.chrf("abc", ["abc"]), TypeError, "hypotheses must be"),
    (lambda: metrics.chrf(["a"], ["a", "b"]), ValueError, "equally long"),
    (lambda: metrics.exact_match(["a"], [[]]), TypeError, r"references\[0\]"),
    (lambda: metrics.semantic_similarity(["a"], ["b"], None), TypeError, "embed must be"),
    (lambda: metrics.semantic_similarity(["a"], ["b"], lambda t: torch.ones(1, 3)), ValueError,
     "vectors"),
])
def test_metrics_bad_input(call, error, words):
    with pytest.raises(error, match=words):
        call()


def test_nearest_answer_returns_the_answer_of_the_closest_question():
    questions = ["My printer is not printing.", "I forgot my password.", "What is Python?"]
    answers = ["Check the paper.", "Reset it.", "A language."]
    bot = retrieval.NearestAnswer(questions, answers, bag_of_letters)
    assert bot(["I forgot my password!", "my printer wont print"]) == ["Reset it.",
                                                                         "Check the paper."]
    cos, idx = bot.search(["What is Python"], k=2)
    assert idx[0, 0] == 2 and cos[0, 0] > cos[0, 1] and cos[0, 0] == pytest.approx(1.0, abs=1e-4)
    assert bot.pairs(["What is Python"]) == [(questions[2], answers[2])]
    with pytest.raises(ValueError, match="k must be <="):
        bot.search(["x"], k=4)
    with pytest.raises(ValueError, match="equally long"):
        retrieval.NearestAnswer(questions, answers[:2], bag_of_letters)


def test_embedder_embeds_each_text_once_with_minilm():
    embed = retrieval.Embedder()
    calls = []
    original = embed.encoder.forward

    def counting(*args, **kwargs):
        calls.append(kwargs["input_ids"].shape[0])
        return original(*args, **kwargs)

    embed.encoder.forward = counting
    first = embed(["How do I reset my password?", "I forgot my password.", ""])
    again = embed(["I forgot my password.", "How do I reset my password?"])
    assert sum(calls) == 3 and torch.equal(first[[1, 0]], again)
    torch.testing.assert_close(first.norm(dim=1), torch.ones(3))
    assert first[0] @ first[1] > 0.5            # paraphrases are close in MiniLM's space
