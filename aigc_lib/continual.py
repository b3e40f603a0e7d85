r"""Continual learning: a classifier that learns new classes after the old ones (chapter 10).

The router meets intents in batches: it is trained on the first ones, then each later batch of
new intents arrives with its own labelled messages. Training on the new messages alone,
*sequential fine-tuning*, drives the answers towards the new intents and the old ones are
forgotten (*catastrophic forgetting*, McCloskey and Cohen 1989). The remedies here:

- **rehearsal** (experience replay): keep a small buffer of old messages, ``per_class`` of each
  old intent (:func:`replay_indices`), and train on them beside the new ones;
- **EWC**, elastic weight consolidation (Kirkpatrick et al. 2017): after each batch, measure how
  much each parameter mattered for it by the diagonal of the Fisher information
  (:func:`diagonal_fisher`), and pull the parameters that mattered back towards their values
  with the penalty :math:`\frac\lambda2\sum_i F_i(\theta_i - \theta^*_i)^2` (:class:`EWC`);
- **one LoRA adapter per batch** (:class:`AdapterPerBatch`): each batch of intents gets its own
  low-rank adapter on the top layers and its own rows of the shared output layer; the old ones
  are frozen, so the scores of old intents never change.

At every stage the softmax runs over the intents seen so far (:func:`masked_cross_entropy`).
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F

from aigc_lib import checks, classifier, data, encoders


def _classes(name: str, classes: object, num_labels: int) -> list[int]:
    if isinstance(classes, torch.Tensor):
        classes = classes.tolist()
    if isinstance(classes, (str, bytes)) or not isinstance(classes, Sequence) or not classes:
        raise TypeError(f"{name} must be a non-empty sequence of class indices")
    out = [int(c) for c in classes]
    if any(not 0 <= c < num_labels for c in out) or len(set(out)) != len(out):
        raise ValueError(f"{name} must hold distinct class indices in [0, {num_labels}), got "
                         f"{out}")
    return out


def masked_logits(logits: torch.Tensor, active: Sequence[int]) -> torch.Tensor:
    """``logits`` ``(N, C)`` with the classes not in ``active`` set to :math:`-\\infty`, so that
    a softmax, a cross-entropy or an ``argmax`` sees only the classes learned so far."""
    checks.tensor("logits", logits, floating=True, finite=False, ndim=2)
    keep = torch.zeros(logits.shape[1], dtype=torch.bool, device=logits.device)
    keep[_classes("active", active, logits.shape[1])] = True
    return logits.masked_fill(~keep, float("-inf"))


def masked_cross_entropy(logits: torch.Tensor, labels: torch.Tensor,
                         active: Sequence[int]) -> torch.Tensor:
    r"""Mean cross-entropy over the ``active`` classes only:
    :math:`-\log \frac{e^{z_y}}{\sum_{c \in A} e^{z_c}}`; every label must be active."""
    checks.tensor("labels", labels, ndim=1)
    active = _classes("active", active, logits.shape[1])
    if not bool(torch.isin(labels, torch.tensor(active, device=labels.device)).all()):
        raise ValueError(f"labels must all be active classes {active}")
    return F.cross_entropy(masked_logits(logits, active), labels)


def replay_indices(labels: torch.Tensor, classes: Sequence[int], per_class: int,
                   seed: int = 0) -> torch.Tensor:
    """Rehearsal buffer: the indices of ``per_class`` messages of each class in ``classes``
    drawn at random (all of a class that has fewer), in ascending order."""
    checks.tensor("labels", labels, ndim=1)
    classes = _classes("classes", classes, int(labels.max()) + 1)
    checks.positive_number("per_class", per_class, integer=True)
    drawn = data.per_class_subset(labels, per_class, seed)
    return drawn[torch.isin(labels[drawn], torch.tensor(classes))].sort().values


def diagonal_fisher(model: torch.nn.Module, log_probs: Callable[..., torch.Tensor],
                    inputs: Sequence[torch.Tensor]) -> dict[str, torch.Tensor]:
    r"""Diagonal of the Fisher information of the trainable parameters of ``model``,

    .. math:: F_i = \frac1N \sum_{n=1}^N \sum_y p_\theta(y\mid x_n)
              \Big(\frac{\partial \log p_\theta(y\mid x_n)}{\partial \theta_i}\Big)^2,

    the expectation over the model's own answers :math:`y` (the Fisher, not the "empirical
    Fisher" of the labels; Kirkpatrick et al. 2017). ``log_probs(model, *rows)`` returns the
    ``(1, C)`` log-probabilities of one example, :math:`-\infty` for classes it cannot answer;
    ``inputs`` are tensors with one row per example. One forward and one backward per
    possible answer per example; the model runs in eval mode. Returns ``{name: F}``.
    """
    if not isinstance(inputs, (tuple, list)) or not inputs:
        raise TypeError("inputs must be a non-empty tuple of tensors")
    if len({len(t) for t in inputs}) != 1:
        raise ValueError("inputs must share their first dimension")
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    if not named:
        raise ValueError("model has no trainable parameters")
    fisher = {n: torch.zeros_like(p) for n, p in named}
    was_training, total = model.training, len(inputs[0])
    model.eval()
    try:
        for i in range(total):
            logp = log_probs(model, *(t[i:i + 1] for t in inputs))
            checks.tensor("log_probs(...)", logp, floating=True, finite=False, ndim=2)
            p = logp.detach().exp()[0]
            for y in torch.nonzero(p > 0).flatten().tolist():
                grads = torch.autograd.grad(logp[0, y], [q for _, q in named],
                                            retain_graph=True, allow_unused=True)
                for (n, _), g in zip(named, grads):
                    if g is not None:
                        fisher[n] += p[y] * g.detach() ** 2 / total
    finally:
        model.train(was_training)
    return fisher


class EWC:
    r"""Elastic weight consolidation (Kirkpatrick et al. 2017): after each finished batch of
    classes, :meth:`consolidate` stores the parameters :math:`\theta^*` and their Fisher
    diagonal :math:`F`; :meth:`penalty` is

    .. math:: \frac\lambda2 \sum_{k} \sum_i F^{(k)}_i\,\big(\theta_i - \theta^{*(k)}_i\big)^2

    over the stored batches :math:`k`, with :math:`\lambda` = ``strength``: a quadratic pull
    towards each old solution, stiff where that solution's likelihood is sharp.
    """

    def __init__(self, strength: float):
        checks.positive_number("strength", strength, allow_zero=True)
        self.strength = float(strength)
        self.terms: list[tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]] = []

    def consolidate(self, model: torch.nn.Module, fisher: dict[str, torch.Tensor]) -> None:
        """Store ``model``'s current trainable parameters and their ``fisher`` diagonal."""
        anchor = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
        if set(fisher) != set(anchor):
            raise ValueError("fisher must have one entry per trainable parameter of model")
        for n, f in fisher.items():
            if f.shape != anchor[n].shape:
                raise ValueError(f"fisher[{n!r}] has shape {tuple(f.shape)}, the parameter "
                                 f"{tuple(anchor[n].shape)}")
            checks.tensor(f"fisher[{n!r}]", f)
        self.terms.append((anchor, {n: f.detach().clone() for n, f in fisher.items()}))

    def penalty(self, model: torch.nn.Module) -> torch.Tensor:
        """The EWC penalty at ``model``'s current parameters (0 before any consolidation)."""
        params = dict(model.named_parameters())
        total = torch.zeros((), device=next(model.parameters()).device)
        for anchor, fisher in self.terms:
            for n, theta_star in anchor.items():
                total = total + (fisher[n] * (params[n] - theta_star) ** 2).sum()
        return 0.5 * self.strength * total


class AdapterPerBatch(torch.nn.Module):
    """One LoRA adapter per batch of classes, and a shared output layer (chapter 10).

    ``base`` is a :class:`~aigc_lib.classifier.SentenceClassifier` frozen below ``layer``
    (:meth:`~aigc_lib.classifier.SentenceClassifier.freeze_below`); the model reads the outputs
    of that frozen bottom (:meth:`forward_from`, e.g. from a
    :class:`~aigc_lib.classifier.LayerCache`). :meth:`add_batch` freezes everything learned so
    far and adds, for the new classes, a copy of the frozen top layers with LoRA adapters
    (:func:`aigc_lib.models.lora.add_lora`) and their rows of the output layer. The score of a
    class is computed with the adapter of its batch, so the scores of old classes never change;
    only the new adapter and the new rows train. A class not yet added scores
    :math:`-\\infty`.
    """

    def __init__(self, base: torch.nn.Module, layer: int, *, r: int = 8, alpha: float = 16.0,
                 targets: Sequence[str] = ("query", "value")):
        super().__init__()
        if not isinstance(base, classifier.SentenceClassifier):
            raise TypeError(f"base must be a SentenceClassifier, got {type(base).__name__}")
        self.layer = base._layer("layer", layer)
        if base.frozen_below != self.layer:
            raise ValueError(f"base must be frozen below layer {layer} (freeze_below)")
        checks.positive_number("r", r, integer=True)
        checks.positive_number("alpha", alpha)
        self.r, self.alpha, self.targets = r, alpha, tuple(targets)
        self.num_labels, self.normalize = base.head.out_features, base.normalize
        self.config = base.bert.config
        self.top = copy.deepcopy(base.bert.encoder.layer[self.layer:]).requires_grad_(False)
        self.tops = torch.nn.ModuleList()
        self.heads = torch.nn.ModuleList()
        self.groups: list[list[int]] = []

    def add_batch(self, classes: Sequence[int]) -> None:
        """Freeze what is learned and add an adapter and output rows for ``classes``."""
        from aigc_lib.models import lora

        classes = _classes("classes", classes, self.num_labels)
        if set(classes) & {c for g in self.groups for c in g}:
            raise ValueError(f"classes {classes} overlap the batches already added")
        self.requires_grad_(False)
        top = copy.deepcopy(self.top)
        lora.add_lora(top, r=self.r, alpha=self.alpha, targets=self.targets)
        self.tops.append(top)
        self.heads.append(torch.nn.Linear(self.config.hidden_size, len(classes)))
        self.groups.append(classes)

    def forward_from(self, hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Logits ``(N, num_labels)`` from the frozen bottom's outputs ``(N, T, H)``."""
        if not self.groups:
            raise RuntimeError("no batch of classes added yet (add_batch)")
        hidden, mask = encoders.trim(hidden, mask)
        logits = hidden.new_full((len(hidden), self.num_labels), float("-inf"))
        for top, head, classes in zip(self.tops, self.heads, self.groups):
            pooled = encoders.mean_pool(classifier.run_layers(top, hidden, mask, self.config), mask)
            if self.normalize:
                pooled = F.normalize(pooled, dim=-1)
            logits[:, classes] = head(pooled)
        return logits
