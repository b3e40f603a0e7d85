r"""Attacks on a text classifier, and adversarial training against them (chapter 10).

**In embedding space (white box).** A message of :math:`T` tokens enters the encoder as word
vectors :math:`E = (e_1, \dots, e_T)`
(:meth:`~aigc_lib.classifier.SentenceClassifier.word_vectors`).
The fast gradient method (Goodfellow et al. 2015), in the :math:`L_2` form Miyato et al. (2017)
use for text, moves them by

.. math:: r = \epsilon\, \frac{g}{\lVert g\rVert_2}, \qquad g = \nabla_E\, \ell(f(E), y),

the step of length :math:`\epsilon` that raises the loss :math:`\ell` fastest to first order
(the norm runs over all real tokens of the message; padding is never moved). Projected gradient
descent (Madry et al. 2018) takes several such steps of length :math:`\alpha`, projecting back
onto the ball :math:`\lVert r\rVert_2 \le \epsilon` after each. Here :math:`\epsilon` is
*relative*: a fraction of the message's own :math:`\lVert E\rVert_2`.

**On the words (black box).** :func:`greedy_edit_attack` only queries the model's probabilities:
it edits a message one word-level edit at a time with the edits of
:mod:`aigc_lib.augment` (delete a word, swap two, a typo), each time keeping the edit that lowers
the probability of the right answer most, until the answer is wrong or the budget of edits is
spent.

**Adversarial training** minimises :math:`(1-w)\,\ell(f(E), y) + w\,\ell(f(E + r), y)`
(:func:`adversarial_loss`), with :math:`r` recomputed for every batch against the current model.
Both passes use the same dropout masks, so with :math:`\epsilon = 0` the loss, its gradient and
therefore the whole training run equal plain fine-tuning step for step.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from aigc_lib import augment, checks


def _budget(name: str, epsilon: object, n: int) -> torch.Tensor:
    """``epsilon`` as a ``(n,)`` tensor of per-message budgets (a number, or one per message)."""
    if isinstance(epsilon, torch.Tensor):
        checks.tensor(name, epsilon, floating=True, ndim=(0, 1))
        if epsilon.ndim == 1 and len(epsilon) != n:
            raise ValueError(f"{name} must hold one budget per message ({n}), got "
                             f"{len(epsilon)}")
        if bool((epsilon < 0).any()):
            raise ValueError(f"{name} must be >= 0")
        return epsilon.expand(n) if epsilon.ndim == 0 else epsilon
    checks.positive_number(name, epsilon, allow_zero=True)
    return torch.full((n,), float(epsilon))


def _masked(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    checks.tensor("values", values, floating=True, finite=False, ndim=3)
    checks.tensor("mask", mask, ndim=2)
    if tuple(mask.shape) != tuple(values.shape[:2]):
        raise ValueError(f"mask must have shape {tuple(values.shape[:2])}, got "
                         f"{tuple(mask.shape)}")
    return values * mask.unsqueeze(-1).to(values.dtype)


def message_norms(vectors: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    r""":math:`\lVert E_n\rVert_2 = \big(\sum_t m_{nt} \lVert e_{nt}\rVert_2^2\big)^{1/2}` of each
    message's word vectors ``(N, T, H)`` over its real tokens (``mask`` ``(N, T)``)."""
    return _masked(vectors, mask).flatten(1).norm(dim=1)


def fgm_perturbation(grad: torch.Tensor, mask: torch.Tensor,
                     epsilon: float | torch.Tensor) -> torch.Tensor:
    r"""The fast-gradient perturbation :math:`r_n = \epsilon_n\, g_n / \lVert g_n\rVert_2` of
    each message (``grad`` ``(N, T, H)``, the norm over its real tokens; padding gets 0).

    ``epsilon`` is a number or one budget per message. A message whose gradient is zero gets
    :math:`r_n = 0`. So :math:`\lVert r_n\rVert_2 = \epsilon_n` whenever :math:`g_n \ne 0`.
    """
    grad = _masked(grad, mask)
    eps = _budget("epsilon", epsilon, len(grad)).to(grad)
    norms = grad.flatten(1).norm(dim=1)
    scale = torch.where(norms > 0, eps / norms.clamp_min(torch.finfo(grad.dtype).tiny), 0.0)
    return grad * scale[:, None, None]


def project_l2(delta: torch.Tensor, mask: torch.Tensor,
               epsilon: float | torch.Tensor) -> torch.Tensor:
    r"""Project each message's perturbation onto the ball :math:`\lVert r_n\rVert_2 \le
    \epsilon_n` (scale it down when it is longer; padding set to 0)."""
    delta = _masked(delta, mask)
    eps = _budget("epsilon", epsilon, len(delta)).to(delta)
    norms = delta.flatten(1).norm(dim=1)
    scale = torch.where(norms > eps, eps / norms.clamp_min(torch.finfo(delta.dtype).tiny), 1.0)
    return delta * scale[:, None, None]


def _rng_state(device: torch.device) -> tuple:
    cuda = torch.cuda.get_rng_state(device) if device.type == "cuda" else None
    return torch.get_rng_state(), cuda


def _set_rng_state(device: torch.device, state: tuple) -> None:
    torch.set_rng_state(state[0])
    if state[1] is not None:
        torch.cuda.set_rng_state(state[1], device)


def _perturbation(loss_at: Callable[[torch.Tensor], torch.Tensor], grad: torch.Tensor,
                  mask: torch.Tensor, eps: torch.Tensor, steps: int,
                  step_size: float | None) -> torch.Tensor:
    """FGM (``steps = 1``, step ``epsilon``) or L2 PGD from the gradient ``grad`` at r = 0."""
    if steps == 1 and step_size is None:
        return fgm_perturbation(grad, mask, eps)
    alpha = eps * (step_size if step_size is not None else 2.5 / steps)
    delta = project_l2(fgm_perturbation(grad, mask, alpha), mask, eps)
    for _ in range(steps - 1):
        delta = delta.detach().requires_grad_(True)
        (grad,) = torch.autograd.grad(loss_at(delta), delta)
        delta = project_l2(delta + fgm_perturbation(grad, mask, alpha), mask, eps)
    return delta.detach()


def _check_attack_args(epsilon: object, steps: object, step_size: object) -> None:
    checks.positive_number("steps", steps, integer=True)
    if step_size is not None:
        checks.positive_number("step_size", step_size)
    if isinstance(epsilon, torch.Tensor) or not isinstance(epsilon, (int, float)):
        raise TypeError(f"epsilon must be a number (a fraction of each message's word-vector "
                        f"norm), got {type(epsilon).__name__}")
    checks.positive_number("epsilon", epsilon, allow_zero=True)


def _clean_loss_and_gradient(model: torch.nn.Module, vectors: torch.Tensor,
                             mask: torch.Tensor,
                             labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The clean cross-entropy and its gradient with respect to the word vectors.

    When the model's bottom is frozen (``frozen_below = k``) and the word vectors need no
    gradient, the loss is taken from the frozen bottom's detached output, and the gradient is
    carried through the bottom by hand: the training step's backward pass then stops at
    layer ``k`` instead of running through the frozen layers a second time (same values)."""
    k = getattr(model, "frozen_below", None) or 0
    zero = torch.zeros_like(vectors, requires_grad=True)
    if k == 0 or vectors.requires_grad:
        clean = F.cross_entropy(model.forward_embeddings(vectors + zero, mask), labels)
        return clean, torch.autograd.grad(clean, zero, retain_graph=True)[0]
    hidden = model.hidden_states(None, mask, k, vectors=vectors + zero)
    top = hidden.detach().requires_grad_(True)
    clean = F.cross_entropy(model.forward_from(top, mask[:, :top.shape[1]], k), labels)
    (grad_top,) = torch.autograd.grad(clean, top, retain_graph=True)
    (grad,) = torch.autograd.grad(hidden, zero, grad_top)
    return clean, grad


def adversarial_loss(model: torch.nn.Module, ids: torch.Tensor, mask: torch.Tensor,
                     labels: torch.Tensor, *, epsilon: float, steps: int = 1,
                     step_size: float | None = None,
                     adv_weight: float = 0.5) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    r"""Adversarial-training loss of a classifier on one batch (``fit``'s ``loss_fn``, chapter 10):

    .. math:: (1-w)\,\ell\big(f(E), y\big) + w\,\ell\big(f(E + r), y\big),

    :math:`\ell` the mean cross-entropy, :math:`E` the batch's word vectors, :math:`w` =
    ``adv_weight``, and :math:`r` the perturbation of budget :math:`\epsilon_n` = ``epsilon``
    :math:`\times \lVert E_n\rVert_2` found against the current model: the fast gradient method
    (``steps = 1``; Miyato et al. 2017) or ``steps`` steps of L2 projected gradient ascent of
    length ``step_size`` :math:`\times\, \epsilon_n` (default :math:`2.5/\text{steps}`; Madry et
    al. 2018). :math:`r` is a constant for the gradient. Every forward pass reuses the dropout
    masks of the clean one, so ``epsilon = 0`` gives exactly the cross-entropy and its gradient.

    ``model`` needs ``word_vectors(ids)`` and ``forward_embeddings(vectors, mask)``
    (:class:`~aigc_lib.classifier.SentenceClassifier`). Returns the loss and its two terms.
    """
    _check_attack_args(epsilon, steps, step_size)
    checks.positive_number("adv_weight", adv_weight, allow_zero=True)
    if adv_weight > 1:
        raise ValueError(f"adv_weight must be in [0, 1], got {adv_weight}")
    vectors = model.word_vectors(ids)
    device = vectors.device
    eps = epsilon * message_norms(vectors.detach(), mask)
    before = _rng_state(device)
    clean, grad = _clean_loss_and_gradient(model, vectors, mask, labels)
    after = _rng_state(device)

    def loss_at(delta: torch.Tensor) -> torch.Tensor:
        _set_rng_state(device, before)
        return F.cross_entropy(model.forward_embeddings(vectors.detach() + delta, mask), labels)

    delta = _perturbation(loss_at, grad, mask, eps, steps, step_size)
    _set_rng_state(device, before)
    adv = F.cross_entropy(model.forward_embeddings(vectors + delta, mask), labels)
    _set_rng_state(device, after)
    loss = (1 - adv_weight) * clean + adv_weight * adv
    return loss, {"clean_loss": clean.detach(), "adv_loss": adv.detach()}


def embedding_attack(model: torch.nn.Module, ids: torch.Tensor, mask: torch.Tensor,
                     labels: torch.Tensor, epsilons: Sequence[float], *, steps: int = 1,
                     step_size: float | None = None, batch_size: int = 32) -> torch.Tensor:
    r"""White-box attack in embedding space: the model's answers ``(len(epsilons), N)`` when each
    message's word vectors are moved by a perturbation of budget :math:`\epsilon \times
    \lVert E_n\rVert_2` for each ``epsilon``: the fast gradient method when ``steps = 1`` (one
    gradient per message serves every budget), L2 PGD otherwise (:func:`adversarial_loss`
    explains both). The model runs in eval mode (no dropout); ``epsilon = 0`` gives its plain
    answers. Messages are attacked in batches of similar length (less padding).
    """
    if isinstance(epsilons, (str, bytes)) or not isinstance(epsilons, Sequence) or not epsilons:
        raise TypeError("epsilons must be a non-empty sequence of numbers")
    for e in epsilons:
        _check_attack_args(e, steps, step_size)
    checks.tensor("labels", labels, ndim=1)
    checks.positive_number("batch_size", batch_size, integer=True)
    device = next(model.parameters()).device
    order = torch.argsort(mask.sum(1), stable=True)
    was_training, out = model.training, []
    model.eval()
    try:
        for s in range(0, len(ids), batch_size):
            rows = order[s:s + batch_size]
            batch = (t[rows].to(device) for t in (ids, mask, labels))
            out.append(_attack_batch(model, *batch, epsilons, steps, step_size))
    finally:
        model.train(was_training)
    answers = torch.empty(len(epsilons), len(ids), dtype=torch.int64)
    answers[:, order] = torch.cat(out, dim=1)
    return answers


def _attack_batch(model: torch.nn.Module, ids: torch.Tensor, mask: torch.Tensor,
                  labels: torch.Tensor, epsilons: Sequence[float], steps: int,
                  step_size: float | None) -> torch.Tensor:
    with torch.enable_grad():
        vectors = model.word_vectors(ids).detach()
        norms = message_norms(vectors, mask)

        def loss_at(delta: torch.Tensor) -> torch.Tensor:
            logits = model.forward_embeddings(vectors + delta, mask)
            return F.cross_entropy(logits, labels, reduction="sum")

        zero = torch.zeros_like(vectors, requires_grad=True)
        (grad,) = torch.autograd.grad(loss_at(zero), zero)
        deltas = [_perturbation(loss_at, grad, mask, e * norms, steps, step_size)
                  for e in epsilons]
    with torch.no_grad():
        return torch.stack([model.forward_embeddings(vectors + d, mask).argmax(1).cpu()
                            for d in deltas])


def attack_success(clean: torch.Tensor, attacked: torch.Tensor,
                   labels: torch.Tensor) -> torch.Tensor:
    """Attack success rate: among the messages answered right without the attack (``clean``
    predictions), the share answered wrong under it (``attacked``: ``(N,)`` or ``(K, N)``, one
    rate per row)."""
    for name, value in (("clean", clean), ("labels", labels)):
        checks.tensor(name, value, ndim=1)
    checks.tensor("attacked", attacked, ndim=(1, 2))
    if attacked.shape[-1] != len(labels) or len(clean) != len(labels):
        raise ValueError("clean, attacked and labels must describe the same messages")
    right = clean == labels
    if not bool(right.any()):
        raise ValueError("no message is answered right without the attack")
    return ((attacked != labels) & right).float().sum(-1) / right.sum()


@dataclass
class EditAttack:
    """What :func:`greedy_edit_attack` found for each message.

    ``edits[n]``: how many edits first made the answer to message ``n`` wrong (0 if it was wrong
    already, -1 if no edit within the budget did); ``texts[n]``: the message after the edits
    kept; ``queries[n]``: how many edited messages the model was asked about.
    """
    edits: torch.Tensor
    texts: list[str]
    queries: torch.Tensor

    def success_rate(self, budget: int) -> float:
        """Share of the messages answered right at first whose answer at most ``budget`` edits
        made wrong."""
        right = self.edits != 0
        if not bool(right.any()):
            raise ValueError("no message was answered right before the attack")
        return float(((self.edits >= 1) & (self.edits <= budget)).sum() / right.sum())


def _sample(options: list[str], k: int | None, key: str) -> list[str]:
    return random.Random(key).sample(options, k) if k and len(options) > k else options


def greedy_edit_attack(texts: Sequence[str], labels: torch.Tensor,
                       predict_proba: Callable[[list[str]], torch.Tensor], budget: int, *,
                       candidates: int | None = None, seed: int = 0) -> EditAttack:
    """Black-box word-level attack (chapter 10): for each message the model answers right, up to
    ``budget`` rounds; each round asks ``predict_proba`` (texts -> ``(N, C)`` probabilities)
    about the single edits of the current message (:func:`aigc_lib.augment.single_edits`; a
    random sample of ``candidates`` of them when given, drawn from ``seed``, the message's
    position and the round, so that two models attacked alike are asked about the same edits),
    keeps the one that gives the right answer the lowest probability, and stops when the answer
    is wrong. The messages still in play are queried together, one call per round.
    """
    texts = list(texts)
    checks.tensor("labels", labels, ndim=1)
    if len(labels) != len(texts):
        raise ValueError(f"labels must have one entry per text ({len(texts)}), got "
                         f"{len(labels)}")
    checks.positive_number("budget", budget, integer=True)
    if candidates is not None:
        checks.positive_number("candidates", candidates, integer=True)
    labels = labels.cpu()
    first = torch.as_tensor(predict_proba(texts)).argmax(1).cpu()
    edits = torch.where(first == labels, -1, 0)
    queries = torch.zeros(len(texts), dtype=torch.int64)
    current = list(texts)
    for round_ in range(1, budget + 1):
        live = [n for n in range(len(texts)) if edits[n] == -1]
        options = {n: augment.single_edits(current[n]) for n in live}
        options = {n: _sample(o, candidates, f"{seed}/{n}/{round_}") for n, o in options.items()
                   if o}
        if not options:
            break
        flat = [t for o in options.values() for t in o]
        probs = torch.as_tensor(predict_proba(flat)).cpu()
        start = 0
        for n, o in options.items():
            p = probs[start:start + len(o)]
            start += len(o)
            queries[n] += len(o)
            best = int(p[:, labels[n]].argmin())
            current[n] = o[best]
            if int(p[best].argmax()) != int(labels[n]):
                edits[n] = round_
    return EditAttack(edits, current, queries)
