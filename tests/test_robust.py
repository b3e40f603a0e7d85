"""Attacks in embedding space and on words, and adversarial training (chapter 10)."""
import functools

import pytest
import torch
import torch.nn.functional as F
from transformers import BertConfig, BertModel

from aigc_lib import augment, classifier, robust


pytestmark = pytest.mark.usefixtures("one_thread")


def tiny_classifier(seed=0, dropout=0.1):
    torch.manual_seed(seed)
    config = BertConfig(vocab_size=40, hidden_size=16, num_hidden_layers=2,
                        num_attention_heads=2, intermediate_size=32,
                        max_position_embeddings=16, hidden_dropout_prob=dropout,
                        attention_probs_dropout_prob=dropout)
    return classifier.SentenceClassifier(BertModel(config), 3)


def toy_batch(n=24, seed=0):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(5, 40, (n, 6), generator=g)
    mask = torch.ones_like(ids)
    mask[::3, 4:] = 0
    return ids, mask, (ids[:, 1] % 3).to(torch.int64)


def test_fgm_perturbation_has_the_stated_norm_and_direction():
    g = torch.Generator().manual_seed(0)
    grad = torch.randn(4, 5, 3, generator=g)
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1], [1, 0, 0, 0, 0], [1, 1, 0, 0, 0]])
    eps = torch.tensor([0.5, 1.0, 2.0, 0.0])
    r = robust.fgm_perturbation(grad, mask, eps)
    assert torch.allclose(r.flatten(1).norm(dim=1), eps, atol=1e-6)
    assert torch.all(r[mask == 0] == 0)  # padding never moves
    masked = grad * mask[..., None]
    cosine = F.cosine_similarity(r[:3].flatten(1), masked[:3].flatten(1))
    assert torch.allclose(cosine, torch.ones(3), atol=1e-6)
    same = robust.fgm_perturbation(grad, mask, 0.7)
    assert torch.allclose(same.flatten(1).norm(dim=1), torch.full((4,), 0.7), atol=1e-6)
    assert torch.all(robust.fgm_perturbation(torch.zeros(2, 3, 4), mask[:2, :3], 1.0) == 0)


def test_fgm_is_the_steepest_first_order_step():
    """For a loss linear in E, <a, E>, no step of length eps raises it more than FGM's."""
    g = torch.Generator().manual_seed(1)
    a, mask = torch.randn(1, 6, 4, generator=g), torch.ones(1, 6, dtype=torch.int64)
    best = (a * robust.fgm_perturbation(a, mask, 0.3)).sum()
    assert best == pytest.approx(0.3 * a.norm().item(), rel=1e-5)
    for _ in range(200):
        r = robust.project_l2(torch.randn(1, 6, 4, generator=g), mask, 0.3)
        r = r * 0.3 / r.norm()
        assert (a * r).sum() <= best + 1e-6


def test_project_l2_shrinks_only_what_is_too_long():
    mask = torch.ones(3, 2, dtype=torch.int64)
    delta = torch.tensor([[[3.0, 4.0], [0, 0]], [[0.3, 0.4], [0, 0]], [[0, 0], [0, 2.0]]])
    out = robust.project_l2(delta, mask, 1.0)
    assert torch.allclose(out.flatten(1).norm(dim=1), torch.tensor([1.0, 0.5, 1.0]))
    assert torch.equal(out[1], delta[1])


def test_message_norms_count_real_tokens_only():
    vectors = torch.ones(2, 3, 4)
    mask = torch.tensor([[1, 1, 0], [1, 1, 1]])
    assert torch.allclose(robust.message_norms(vectors, mask), torch.tensor([8.0, 12.0]).sqrt())


def train(loss_fn, steps_seed=5):
    model = tiny_classifier()
    ids, mask, labels = toy_batch(32)
    history = classifier.train_with_loss(model, (ids, mask, labels), loss_fn=loss_fn, epochs=3,
                                         batch_size=8, lr=3e-3, seed=steps_seed, device="cpu")
    return model, history


def test_adversarial_training_with_zero_epsilon_is_plain_fine_tuning_step_for_step():
    plain, plain_history = train(classifier.cross_entropy_loss)
    adv, adv_history = train(functools.partial(robust.adversarial_loss, epsilon=0.0))
    assert adv_history.step_losses == pytest.approx(plain_history.step_losses, abs=1e-6)
    for (name, p), q in zip(plain.named_parameters(), adv.parameters()):
        assert torch.allclose(p, q, atol=1e-6), name
    # ... while a real budget changes the run
    other, _ = train(functools.partial(robust.adversarial_loss, epsilon=0.5))
    assert not torch.allclose(other.head.weight, plain.head.weight, atol=1e-4)


def test_adversarial_loss_is_the_stated_mixture():
    model = tiny_classifier(dropout=0.0).eval()
    ids, mask, labels = toy_batch()
    loss, terms = robust.adversarial_loss(model, ids, mask, labels, epsilon=0.2, adv_weight=0.25)
    vectors = model.word_vectors(ids).detach().requires_grad_(True)
    clean = F.cross_entropy(model.forward_embeddings(vectors, mask), labels)
    (grad,) = torch.autograd.grad(clean, vectors)
    r = robust.fgm_perturbation(grad, mask, 0.2 * robust.message_norms(vectors, mask))
    adv = F.cross_entropy(model.forward_embeddings(vectors + r, mask), labels)
    assert terms["clean_loss"] == pytest.approx(clean.item(), abs=1e-6)
    assert terms["adv_loss"] == pytest.approx(adv.item(), abs=1e-5)
    assert loss.item() == pytest.approx(0.75 * clean.item() + 0.25 * adv.item(), abs=1e-5)
    assert adv.item() > clean.item()  # the perturbation raises the loss
    loss.backward()
    assert model.head.weight.grad is not None
    assert model.encoder.embeddings.word_embeddings.weight.grad is not None


def test_pgd_stays_in_the_ball_and_one_full_step_is_fgm():
    model = tiny_classifier(dropout=0.0).eval()
    ids, mask, labels = toy_batch()
    fgm = robust.adversarial_loss(model, ids, mask, labels, epsilon=0.3)[1]["adv_loss"]
    one = robust.adversarial_loss(model, ids, mask, labels, epsilon=0.3, steps=1,
                                  step_size=1.0)[1]["adv_loss"]
    assert one == pytest.approx(fgm.item(), abs=1e-6)
    vectors = model.word_vectors(ids).detach()
    eps = 0.3 * robust.message_norms(vectors, mask)

    def loss_at(delta):
        return F.cross_entropy(model.forward_embeddings(vectors + delta, mask), labels,
                               reduction="sum")
    zero = torch.zeros_like(vectors, requires_grad=True)
    (grad,) = torch.autograd.grad(loss_at(zero), zero)
    delta = robust._perturbation(loss_at, grad, mask, eps, steps=5, step_size=None)
    assert torch.all(delta.flatten(1).norm(dim=1) <= eps + 1e-5)
    assert loss_at(delta) > loss_at(torch.zeros_like(vectors))


def test_embedding_attack_answers_plainly_at_zero_and_flips_with_budget():
    model = tiny_classifier(dropout=0.1)
    ids, mask, labels = toy_batch(40)
    classifier.train_with_loss(model, (ids, mask, labels), loss_fn=classifier.cross_entropy_loss,
                               epochs=20, batch_size=8, lr=3e-3, device="cpu")
    answers = robust.embedding_attack(model, ids, mask, labels, [0.0, 0.05, 1.0],
                                      batch_size=16)
    plain = classifier.predict_logits(model, ids, mask).argmax(1)
    assert answers.shape == (3, 40) and torch.equal(answers[0], plain)
    rates = robust.attack_success(plain, answers, labels)
    assert rates[0] == 0 and rates[2] > 0.5
    pgd = robust.embedding_attack(model, ids, mask, labels, [1.0], steps=3)
    assert robust.attack_success(plain, pgd, labels)[0] > 0.5


def test_attack_success_counts_only_messages_answered_right():
    labels = torch.tensor([0, 1, 2, 0])
    clean = torch.tensor([0, 1, 0, 0])          # three right
    attacked = torch.tensor([[0, 2, 0, 1], [0, 1, 1, 0]])
    assert torch.allclose(robust.attack_success(clean, attacked, labels),
                          torch.tensor([2 / 3, 0.0]))
    with pytest.raises(ValueError, match="no message is answered right"):
        robust.attack_success(torch.tensor([1, 0, 0, 1]), attacked, labels)


def bad_word_model(texts):
    """Class 1 with probability 0.9 for every 'bad' left, else class 0."""
    p1 = torch.tensor([1 - 0.5 ** (t.split().count("bad") + 1) for t in texts])
    return torch.stack([1 - p1, p1], 1)


def test_greedy_edit_attack_finds_the_fewest_edits():
    texts = ["this is bad", "bad and bad", "fine here", "so very bad bad bad"]
    labels = torch.tensor([1, 1, 1, 1])  # "fine here" is answered wrong from the start
    result = robust.greedy_edit_attack(texts, labels, bad_word_model, budget=2)
    assert result.edits.tolist() == [1, 2, 0, -1]
    assert "bad" not in result.texts[0].split() and result.texts[1].split().count("bad") == 0
    assert result.queries[2] == 0 and result.queries[0] == len(augment.single_edits(texts[0]))
    assert result.success_rate(1) == pytest.approx(1 / 3)
    assert result.success_rate(2) == pytest.approx(2 / 3)
    sampled = robust.greedy_edit_attack(texts, labels, bad_word_model, budget=3, candidates=2)
    assert torch.all(sampled.queries <= 3 * 2)


def test_single_edits_enumerate_augment_edits():
    edits = augment.single_edits("the cats sat")
    expected = {"cats sat", "the sat", "the cats",                  # deletions
                "cats the sat", "sat cats the", "the sat cats",     # swaps
                "the ctas sat"}                                     # one inner typo in "cats"
    assert set(edits) == expected and len(edits) == len(expected)
    assert augment.single_edits("word") == ["wrod"]
    assert "aa aa" not in augment.single_edits("aa aa")
    for seed in range(20):  # one augment_text edit is always among them
        edited = augment.augment_text("the cats sat", seed, p_delete=0.0, n_swap=0, p_typo=1.0)
        assert edited in edits


def test_reword_keeps_the_message_inside_each_frame():
    text = "Can you code?"
    assert augment.reword(text, "lower case") == "can you code?"
    assert augment.reword(text, "no final punctuation") == "Can you code"
    for how in augment.NEUTRAL_FRAMES:
        assert text in augment.reword(text, how) and augment.reword(text, how) != text
    assert augment.reword(text, "small edits", seed=1) == augment.augment_text(text, 1)
    with pytest.raises(ValueError, match="how must be one of"):
        augment.reword(text, "shout")


@pytest.mark.parametrize("call, error, words", [
    (lambda: robust.fgm_perturbation(torch.ones(2, 3), torch.ones(2, 3), 1.0), ValueError,
     "must have 3 dimensions"),
    (lambda: robust.fgm_perturbation(torch.ones(2, 3, 4), torch.ones(2, 4), 1.0), ValueError,
     "mask must have shape"),
    (lambda: robust.fgm_perturbation(torch.ones(2, 3, 4), torch.ones(2, 3), -1.0), ValueError,
     "epsilon must be >= 0"),
    (lambda: robust.fgm_perturbation(torch.ones(2, 3, 4), torch.ones(2, 3),
                                     torch.ones(3)), ValueError, "one budget per message"),
    (lambda: robust.adversarial_loss(tiny_classifier(), *toy_batch(), epsilon=0.1, steps=0),
     ValueError, "steps must be > 0"),
    (lambda: robust.adversarial_loss(tiny_classifier(), *toy_batch(), epsilon=0.1,
                                     adv_weight=2.0), ValueError, "adv_weight must be in"),
    (lambda: robust.adversarial_loss(tiny_classifier(), *toy_batch(),
                                     epsilon=torch.tensor(0.1)), TypeError,
     "epsilon must be a number"),
    (lambda: robust.embedding_attack(tiny_classifier(), *toy_batch(), 0.1), TypeError,
     "epsilons must be a non-empty sequence"),
    (lambda: robust.greedy_edit_attack(["a b"], torch.tensor([0, 1]), bad_word_model, 1),
     ValueError, "one entry per text"),
    (lambda: robust.greedy_edit_attack(["a b"], torch.tensor([0]), bad_word_model, 0),
     ValueError, "budget must be > 0"),
    (lambda: augment.single_edits(3), TypeError, "text must be a str"),
])
def test_bad_input(call, error, words):
    with pytest.raises(error, match=words):
        call()


def frozen_bottom_classifier():
    model = tiny_classifier(dropout=0.1)
    return model.freeze_below(1)


def test_frozen_bottom_shortcut_gives_the_same_loss_and_gradients():
    ids, mask, labels = toy_batch()
    results = []
    for shortcut in (True, False):
        model = frozen_bottom_classifier()
        model.train()
        if not shortcut:
            model.frozen_below = None  # same frozen weights, the generic route
        torch.manual_seed(3)
        loss, terms = robust.adversarial_loss(model, ids, mask, labels, epsilon=0.2)
        loss.backward()
        grads = [p.grad.clone() for p in model.parameters() if p.requires_grad]
        results.append((loss.item(), terms["adv_loss"].item(), grads))
    (l1, a1, g1), (l2, a2, g2) = results
    assert l1 == pytest.approx(l2, abs=1e-6) and a1 == pytest.approx(a2, abs=1e-6)
    assert all(torch.allclose(x, y, atol=1e-6) for x, y in zip(g1, g2))


def test_zero_epsilon_on_a_frozen_bottom_equals_training_on_cached_layers():
    """Chapter 10's setting: plain training reads cached layer outputs, adversarial training
    reads token ids; with epsilon = 0 they take the same steps."""
    ids, mask, labels = toy_batch(32)
    cached = frozen_bottom_classifier()
    with torch.no_grad():
        hidden = cached.hidden_states(ids, mask, 1)
    cached_loss = lambda m, h, k, y: F.cross_entropy(m.forward_from(h, k, 1), y)
    runs = []
    for model, data, loss_fn in (
            (cached, (hidden, mask[:, :hidden.shape[1]], labels), cached_loss),
            (frozen_bottom_classifier(), (ids, mask, labels),
             functools.partial(robust.adversarial_loss, epsilon=0.0))):
        history = classifier.train_with_loss(model, data, loss_fn=loss_fn, epochs=3,
                                             batch_size=8, lr=3e-3, seed=2, device="cpu",
                                             lengths=mask.sum(1))
        runs.append((model, history.step_losses))
    assert runs[0][1] == pytest.approx(runs[1][1], abs=1e-6)
    for p, q in zip(runs[0][0].parameters(), runs[1][0].parameters()):
        assert torch.allclose(p, q, atol=1e-6)
