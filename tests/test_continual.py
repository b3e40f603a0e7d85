"""Continual learning: masked softmax, rehearsal, the Fisher diagonal, EWC, one adapter per
batch (chapter 10)."""
import pytest
import torch
import torch.nn.functional as F
from transformers import BertConfig, BertModel

from aigc_lib import classifier, continual, costs


pytestmark = pytest.mark.usefixtures("one_thread")


def test_masked_cross_entropy_is_a_softmax_over_the_active_classes():
    logits = torch.tensor([[2.0, 0.5, -1.0, 3.0], [0.0, 1.0, 2.0, 9.0]])
    labels = torch.tensor([0, 2])
    got = continual.masked_cross_entropy(logits, labels, [0, 1, 2])
    assert got == pytest.approx(F.cross_entropy(logits[:, :3], labels).item())
    masked = continual.masked_logits(logits, [1, 3])
    assert torch.isinf(masked[:, [0, 2]]).all() and torch.equal(masked[:, 3], logits[:, 3])
    with pytest.raises(ValueError, match="labels must all be active"):
        continual.masked_cross_entropy(logits, labels, [0, 1])
    with pytest.raises(ValueError, match="distinct class indices"):
        continual.masked_logits(logits, [0, 4])


def test_replay_indices_keep_k_per_old_class():
    labels = torch.tensor([0] * 10 + [1] * 3 + [2] * 10)
    idx = continual.replay_indices(labels, [0, 1], per_class=4, seed=1)
    assert torch.bincount(labels[idx], minlength=3).tolist() == [4, 3, 0]
    assert torch.equal(idx, idx.sort().values)
    assert not torch.equal(idx, continual.replay_indices(labels, [0, 1], 4, seed=2))


def softmax_log_probs(model, x):
    return F.log_softmax(model(x), dim=-1)


def test_fisher_of_a_softmax_regression_is_p_one_minus_p_x_squared():
    """log p(y|x) = w_y.x + b_y - logsumexp: its Fisher diagonal is known in closed form,
    F[W_kd] = mean_n p_nk (1 - p_nk) x_nd^2 and F[b_k] = mean_n p_nk (1 - p_nk)."""
    torch.manual_seed(0)
    model = torch.nn.Linear(5, 3)
    x = torch.randn(30, 5)
    fisher = continual.diagonal_fisher(model, softmax_log_probs, (x,))
    p = F.softmax(model(x), -1).detach()
    v = p * (1 - p)
    assert torch.allclose(fisher["weight"], (v[:, :, None] * x[:, None, :] ** 2).mean(0),
                          atol=1e-6)
    assert torch.allclose(fisher["bias"], v.mean(0), atol=1e-6)


def test_fisher_ignores_classes_the_model_cannot_answer():
    torch.manual_seed(1)
    model = torch.nn.Linear(4, 3)
    x = torch.randn(10, 4)
    fisher = continual.diagonal_fisher(
        model, lambda m, x: F.log_softmax(continual.masked_logits(m(x), [0, 2]), -1), (x,))
    assert torch.all(fisher["weight"][1] == 0) and torch.all(fisher["bias"][1] == 0)
    p = F.softmax(model(x)[:, [0, 2]], -1).detach()
    assert torch.allclose(fisher["bias"][[0, 2]], (p * (1 - p)).mean(0), atol=1e-6)


def test_ewc_penalty_with_a_known_fisher_and_its_gradient():
    torch.manual_seed(2)
    model = torch.nn.Linear(5, 3)
    x = torch.randn(20, 5)
    fisher = continual.diagonal_fisher(model, softmax_log_probs, (x,))
    ewc = continual.EWC(strength=7.0)
    assert ewc.penalty(model).item() == 0.0
    ewc.consolidate(model, fisher)
    anchor = {n: p.detach().clone() for n, p in model.named_parameters()}
    assert ewc.penalty(model).item() == pytest.approx(0.0, abs=1e-12)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p))
    expected = 0.5 * 7.0 * sum((fisher[n] * (p - anchor[n]) ** 2).sum()
                               for n, p in model.named_parameters())
    penalty = ewc.penalty(model)
    assert penalty.item() == pytest.approx(expected.item(), rel=1e-6)
    penalty.backward()
    for n, p in model.named_parameters():  # d/dθ = λ F (θ − θ*)
        assert torch.allclose(p.grad, 7.0 * fisher[n] * (p.detach() - anchor[n]), atol=1e-6)
    ewc.consolidate(model, fisher)         # a second batch adds a second pull
    assert ewc.penalty(model).item() == pytest.approx(expected.item(), rel=1e-6)
    with pytest.raises(ValueError, match="one entry per trainable parameter"):
        ewc.consolidate(model, {"weight": fisher["weight"]})


def test_ewc_keeps_the_important_parameter_and_frees_the_other():
    """Two parameters, one that the old task pins (high Fisher) and one it ignores: a new task
    that pulls both to 1 moves the free one there and the pinned one only to the minimum of
    (t - 1)^2 + 50 t^2, t = 1/51."""
    theta = torch.nn.Parameter(torch.zeros(2))
    holder = torch.nn.Module()
    holder.theta = theta
    ewc = continual.EWC(strength=100.0)
    ewc.consolidate(holder, {"theta": torch.tensor([1.0, 0.0])})
    opt = torch.optim.SGD([theta], lr=0.005)
    for _ in range(2000):
        opt.zero_grad()
        loss = ((theta - torch.tensor([1.0, 1.0])) ** 2).sum() + ewc.penalty(holder)
        loss.backward()
        opt.step()
    assert theta[0].item() == pytest.approx(1 / 51, abs=1e-4)
    assert theta[1].item() == pytest.approx(1.0, abs=1e-3)


def tiny_classifier(seed=0):
    torch.manual_seed(seed)
    config = BertConfig(vocab_size=40, hidden_size=16, num_hidden_layers=3,
                        num_attention_heads=2, intermediate_size=32,
                        max_position_embeddings=16, hidden_dropout_prob=0.1,
                        attention_probs_dropout_prob=0.1)
    return classifier.SentenceClassifier(BertModel(config), 4).freeze_below(2)


def toy_hidden(model, n=32, seed=0):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(5, 40, (n, 6), generator=g)
    mask = torch.ones_like(ids)
    with torch.no_grad():
        hidden = model.hidden_states(ids, mask, 2)
    return hidden, mask, (ids[:, 1] % 4).to(torch.int64)


def test_one_adapter_per_batch_never_changes_old_scores():
    base = tiny_classifier()
    router = continual.AdapterPerBatch(base, 2, r=2, alpha=4)
    hidden, mask, labels = toy_hidden(base)
    router.add_batch([0, 1])
    first = labels < 2
    classifier.train_with_loss(
        router, (hidden[first], mask[first], labels[first]), epochs=3, batch_size=8, lr=1e-2,
        loss_fn=lambda m, h, k, y: continual.masked_cross_entropy(m.forward_from(h, k), y,
                                                                  [0, 1]), device="cpu")
    with torch.no_grad():
        old = router.forward_from(hidden, mask)
    assert torch.isinf(old[:, 2:]).all()
    trainable_before = costs.count_parameters(router, trainable_only=True)
    router.add_batch([2, 3])
    trainable = costs.count_parameters(router, trainable_only=True)
    assert trainable == trainable_before == 2 * 1 * 2 * (16 + 16) + 2 * 16 + 2
    classifier.train_with_loss(
        router, (hidden[~first], mask[~first], labels[~first]), epochs=3, batch_size=8,
        lr=1e-2, loss_fn=lambda m, h, k, y: F.cross_entropy(m.forward_from(h, k), y),
        device="cpu")
    with torch.no_grad():
        new = router.forward_from(hidden, mask)
    assert torch.equal(new[:, :2], old[:, :2])      # old intents: exactly the same scores
    assert torch.isfinite(new).all()
    with pytest.raises(ValueError, match="overlap"):
        router.add_batch([3])


def test_adapter_per_batch_bad_input():
    with pytest.raises(TypeError, match="base must be a SentenceClassifier"):
        continual.AdapterPerBatch(torch.nn.Linear(2, 2), 1)
    with pytest.raises(ValueError, match="frozen below layer 1"):
        continual.AdapterPerBatch(tiny_classifier(), 1)
    with pytest.raises(RuntimeError, match="no batch of classes"):
        base = tiny_classifier()
        continual.AdapterPerBatch(base, 2).forward_from(*toy_hidden(base)[:2])
