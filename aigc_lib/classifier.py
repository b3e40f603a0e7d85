"""Fine-tuning a pretrained encoder as a text classifier, fully or with LoRA (chapter 9).

:class:`SentenceClassifier` is the encoder, mean pooling (:func:`aigc_lib.encoders.mean_pool`),
optional unit-length scaling and one linear layer, the head. Its head can start from a linear
probe fitted on frozen embeddings (*linear probing, then fine-tuning*), so that fine-tuning
begins from a working classifier instead of a random one. :func:`add_lora` freezes the encoder
and adds low-rank adapters with ``peft``; :func:`train_classifier` trains either kind with
:func:`aigc_lib.training.fit` (AdamW, warm-up and cosine decay, cross-entropy).

Chapter 10 opens the classifier up: :meth:`SentenceClassifier.forward_embeddings` takes the word
vectors instead of token ids (what an attack in embedding space perturbs);
:meth:`SentenceClassifier.freeze_below` freezes the embedding layer and the first layers, whose
outputs :meth:`SentenceClassifier.hidden_states` computes once and
:meth:`SentenceClassifier.forward_from` carries on from; :class:`LayerCache` keeps those outputs
per distinct message; and :func:`train_with_loss` trains with any ``loss_fn``.
"""

from __future__ import annotations

import math
import os
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from aigc_lib import checkpoint, checks, encoders, optim, runtime
from aigc_lib.models import lora
from aigc_lib.training import History, fit, seeded_order


def _bert(encoder: torch.nn.Module) -> torch.nn.Module:
    unwrap = getattr(encoder, "get_base_model", None)  # peft's wrapper after add_lora
    model = unwrap() if callable(unwrap) else encoder
    if not (hasattr(model, "embeddings") and hasattr(getattr(model, "encoder", None), "layer")):
        raise TypeError(f"the encoder must be a BERT-style transformers model (embeddings, "
                        f"encoder.layer), got {type(model).__name__}")
    return model


def _check_mask(mask: object, like: torch.Tensor) -> None:
    checks.tensor("mask", mask, ndim=2)
    if tuple(mask.shape) != tuple(like.shape[:2]):
        raise ValueError(f"mask must have shape (N, T) = {tuple(like.shape[:2])}, got "
                         f"{tuple(mask.shape)}")


def run_layers(layers: Sequence[torch.nn.Module], hidden: torch.Tensor, mask: torch.Tensor,
               config: Any) -> torch.Tensor:
    """Run BERT-style transformer ``layers`` (e.g. ``bert.encoder.layer[2:4]``) on hidden states
    ``(N, T, H)`` with the padding ``mask`` ``(N, T)``, as the model itself runs them (the
    attention mask made by ``transformers``' ``create_bidirectional_mask`` from ``config``)."""
    from transformers.masking_utils import create_bidirectional_mask

    if len(layers) == 0:
        return hidden
    attention = create_bidirectional_mask(config=config, inputs_embeds=hidden,
                                          attention_mask=mask)
    for layer in layers:
        out = layer(hidden, attention_mask=attention)
        hidden = out[0] if isinstance(out, tuple) else out
    return hidden


class SentenceClassifier(torch.nn.Module):
    r"""Logits :math:`W e + b` of the mean-pooled sentence embedding :math:`e` of a message,
    :math:`e` scaled to unit length when ``normalize`` (as all-MiniLM-L6-v2 is used for
    similarity search).

    ``forward(ids, mask)`` takes token ids and the attention mask, ``(N, T)`` each, and returns
    ``(N, num_labels)`` logits; padding columns unused by the batch are dropped first.
    """

    def __init__(self, encoder: torch.nn.Module, num_labels: int, normalize: bool = True):
        super().__init__()
        if not isinstance(encoder, torch.nn.Module):
            raise TypeError(f"encoder must be a torch.nn.Module, got {type(encoder).__name__}")
        checks.positive_number("num_labels", num_labels, integer=True)
        if num_labels < 2:
            raise ValueError(f"num_labels must be >= 2, got {num_labels}")
        hidden = getattr(getattr(encoder, "config", None), "hidden_size", None)
        if not isinstance(hidden, int):
            raise TypeError("encoder must have config.hidden_size (a transformers model)")
        self.encoder = encoder
        self.head = torch.nn.Linear(hidden, num_labels)
        self.normalize = bool(normalize)
        self.frozen_below: int | None = None  # set by freeze_below

    def forward(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return self.head(encoders.encode(self.encoder, ids, mask, normalize=self.normalize))

    @property
    def bert(self) -> torch.nn.Module:
        """The BERT-style model inside the encoder (under ``peft``'s wrapper after
        :func:`add_lora`): it has ``embeddings``, ``encoder.layer`` and ``config``."""
        return _bert(self.encoder)

    @property
    def num_layers(self) -> int:
        """Number of transformer layers of the encoder."""
        return len(self.bert.encoder.layer)

    def word_vectors(self, ids: torch.Tensor) -> torch.Tensor:
        """The word vectors ``(N, T, H)`` of token ids (the rows of the word-embedding matrix,
        before the position embeddings and the layer norm): what an attack in embedding space
        perturbs (chapter 10)."""
        checks.tensor("ids", ids, ndim=2)
        return self.bert.embeddings.word_embeddings(ids)

    def forward_embeddings(self, vectors: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Logits ``(N, C)`` computed from word vectors (:meth:`word_vectors`, perturbed or not)
        instead of token ids; equal to ``forward(ids, mask)`` for ``word_vectors(ids)``."""
        checks.tensor("vectors", vectors, floating=True, finite=False, ndim=3)
        _check_mask(mask, vectors)
        vectors, mask = encoders.trim(vectors, mask)
        hidden = self.encoder(inputs_embeds=vectors, attention_mask=mask).last_hidden_state
        return self._logits(hidden, mask)

    def hidden_states(self, ids: torch.Tensor | None, mask: torch.Tensor, layer: int,
                      vectors: torch.Tensor | None = None) -> torch.Tensor:
        """The output ``(N, T', H)`` of the embedding layer followed by the first ``layer``
        transformer layers (``layer = 0``: the embedding layer alone), with the padding columns
        that no message uses dropped (``T' <= T``; slice ``mask`` to match). Give token
        ``ids``, or ``ids=None`` and the word ``vectors`` (:meth:`word_vectors`)."""
        if (ids is None) == (vectors is None):
            raise TypeError("give exactly one of ids and vectors")
        if ids is not None:
            checks.tensor("ids", ids, ndim=2)
        else:
            checks.tensor("vectors", vectors, floating=True, finite=False, ndim=3)
        _check_mask(mask, ids if ids is not None else vectors)
        layer, bert = self._layer("layer", layer), self.bert
        if ids is not None:
            ids, mask = encoders.trim(ids, mask)
            hidden = bert.embeddings(input_ids=ids)
        else:
            vectors, mask = encoders.trim(vectors, mask)
            hidden = bert.embeddings(inputs_embeds=vectors)
        return run_layers(bert.encoder.layer[:layer], hidden, mask, bert.config)

    def forward_from(self, hidden: torch.Tensor, mask: torch.Tensor, layer: int) -> torch.Tensor:
        """Logits ``(N, C)`` from the output of the first ``layer`` layers
        (:meth:`hidden_states`): the remaining layers, mean pooling and the head. So
        ``forward_from(hidden_states(ids, mask, k), mask, k)`` equals ``forward(ids, mask)``."""
        checks.tensor("hidden", hidden, floating=True, finite=False, ndim=3)
        _check_mask(mask, hidden)
        layer = self._layer("layer", layer)
        hidden, mask = encoders.trim(hidden, mask)
        bert = self.bert
        hidden = run_layers(bert.encoder.layer[layer:], hidden, mask, bert.config)
        return self._logits(hidden, mask)

    def freeze_below(self, layer: int) -> SentenceClassifier:
        """Freeze the embedding layer and the first ``layer`` transformer layers (and BERT's
        pooler, which mean pooling never uses); they also stay in eval mode (no dropout) when the
        model trains, so that their outputs are the ones
        :meth:`hidden_states` computes once and a :class:`LayerCache` keeps. Returns ``self``."""
        layer = self._layer("layer", layer)
        bottom = [self.bert.embeddings, *self.bert.encoder.layer[:layer]]
        for module in bottom:
            module.requires_grad_(False).eval()
        if getattr(self.bert, "pooler", None) is not None:  # mean pooling never uses it
            self.bert.pooler.requires_grad_(False)
        self.frozen_below = layer
        return self

    def train(self, mode: bool = True) -> SentenceClassifier:
        super().train(mode)
        frozen = self.frozen_below
        if frozen is not None:
            self.bert.embeddings.eval()
            for module in self.bert.encoder.layer[:frozen]:
                module.eval()
        return self

    def _logits(self, hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        pooled = encoders.mean_pool(hidden, mask)
        if self.normalize:
            pooled = F.normalize(pooled, dim=-1)
        return self.head(pooled)

    def _layer(self, name: str, layer: object) -> int:
        checks.positive_number(name, layer, integer=True, allow_zero=True)
        if layer > self.num_layers:
            raise ValueError(f"{name} must be in [0, {self.num_layers}], got {layer}")
        return int(layer)

    @torch.no_grad()
    def init_head(self, weight: object, bias: object) -> SentenceClassifier:
        """Copy a linear probe's coefficients (``(num_labels, hidden)`` and ``(num_labels,)``,
        e.g. scikit-learn's ``coef_`` and ``intercept_``) into the head; returns ``self``."""
        weight = torch.as_tensor(weight, dtype=self.head.weight.dtype)
        bias = torch.as_tensor(bias, dtype=self.head.bias.dtype)
        if weight.shape != self.head.weight.shape or bias.shape != self.head.bias.shape:
            raise ValueError(f"weight and bias must have shapes {tuple(self.head.weight.shape)} "
                             f"and {tuple(self.head.bias.shape)}, got {tuple(weight.shape)} "
                             f"and {tuple(bias.shape)}")
        checks.tensor("weight", weight)
        checks.tensor("bias", bias)
        self.head.weight.copy_(weight)
        self.head.bias.copy_(bias)
        return self


def add_lora(model: SentenceClassifier, *, r: int = 8, alpha: float = 16.0,
             dropout: float = 0.0,
             targets: Sequence[str] = ("query", "value")) -> SentenceClassifier:
    r"""Freeze ``model``'s encoder and add LoRA adapters to the modules named by ``targets``
    (``peft``; a target names a module or the end of its dotted name).

    Each adapted linear layer :math:`y = W x` becomes :math:`y = W x + \frac{\alpha}{r} B A x`
    with :math:`A \in \mathbb R^{r\times d_\text{in}}` (random) and
    :math:`B \in \mathbb R^{d_\text{out}\times r}` (zeros), so the model is unchanged until
    training moves :math:`A` and :math:`B`; only they and the head train, which is
    :math:`r\,(d_\text{in} + d_\text{out})` parameters per adapted layer. Modifies ``model`` in
    place and returns it. Every argument is checked before anything is frozen.
    """
    from peft import LoraConfig, get_peft_model

    if not isinstance(model, SentenceClassifier):
        raise TypeError(f"model must be a SentenceClassifier, got {type(model).__name__}")
    lora.check_hyperparameters(r, alpha, dropout)
    if (isinstance(targets, str) or not isinstance(targets, Sequence) or not targets
            or not all(isinstance(t, str) and t for t in targets)):
        raise TypeError(f"targets must be a non-empty sequence of module names, got "
                        f"{targets!r}")
    if hasattr(model.encoder, "peft_config"):
        raise ValueError("model already has LoRA adapters")
    names = [name for name, _ in model.encoder.named_modules()]
    unknown = [t for t in targets if not any(n == t or n.endswith("." + t) for n in names)]
    if unknown:
        raise ValueError(f"targets {unknown} are not modules of the encoder (a target names "
                         f"a module or the end of its dotted name)")
    config = LoraConfig(r=r, lora_alpha=alpha, lora_dropout=dropout, target_modules=list(targets),
                        bias="none")
    with warnings.catch_warnings():  # peft calls a transformers property deprecated in v5
        warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing",
                                category=FutureWarning)
        model.encoder = get_peft_model(model.encoder, config)
    return model


def trainable_parameters(model: torch.nn.Module) -> list[torch.nn.Parameter]:
    """The parameters that require gradients (each once)."""
    seen: dict[int, torch.nn.Parameter] = {}
    for p in model.parameters():
        if p.requires_grad:
            seen.setdefault(id(p), p)
    return list(seen.values())


def cross_entropy_loss(model: torch.nn.Module, ids: torch.Tensor, mask: torch.Tensor,
                       labels: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy of ``model(ids, mask)`` against ``labels`` (``fit``'s ``loss_fn``)."""
    return F.cross_entropy(model(ids, mask), labels)


def length_bucketed_order(lengths: torch.Tensor, batch_size: int,
                          generator: torch.Generator, pool: int = 8) -> torch.Tensor:
    """One pass over the data, in batches of messages of similar length (less padding).

    A random permutation is cut into pools of ``pool * batch_size`` messages; each pool is
    sorted by length and cut into batches; the full batches are shuffled, and a last partial
    batch, if any, stays last. Returns the permutation (every index once), to be read in
    consecutive slices of ``batch_size``.
    """
    checks.tensor("lengths", lengths, ndim=1)
    checks.positive_number("batch_size", batch_size, integer=True)
    checks.positive_number("pool", pool, integer=True)
    if not isinstance(generator, torch.Generator):
        raise TypeError(f"generator must be a torch.Generator, got {type(generator).__name__}")
    order = torch.randperm(len(lengths), generator=generator)
    size = pool * batch_size
    pools = [order[s:s + size] for s in range(0, len(order), size)]
    ranked = torch.cat([p[torch.argsort(lengths[p], stable=True)] for p in pools])
    batches = list(torch.split(ranked, batch_size))
    partial = [batches.pop()] if len(batches[-1]) < batch_size else []
    shuffled = [batches[i] for i in torch.randperm(len(batches), generator=generator)]
    return torch.cat(shuffled + partial)


def train_classifier(model: torch.nn.Module, ids: torch.Tensor, mask: torch.Tensor,
                     labels: torch.Tensor, *, epochs: int, batch_size: int = 16,
                     lr: float = 1e-4, weight_decay: float = 0.01, warmup: float = 0.1,
                     seed: int = 0, bucket: bool = True,
                     device: torch.device | str | None = None,
                     progress: bool = False, desc: str = "fine-tune") -> History:
    r"""Train the trainable parameters of ``model`` on tokenized messages with
    :func:`aigc_lib.training.fit`.

    The loss is the cross-entropy; the optimiser AdamW (decoupled weight decay, fused kernel)
    with the learning rate rising linearly over the first ``warmup`` fraction of the steps and
    decaying along a cosine to zero (:func:`aigc_lib.optim.warmup_cosine_scheduler`).
    With ``bucket`` each epoch reads the messages in batches of similar length
    (:func:`length_bucketed_order`, passed to ``fit`` as its data order), so that little
    compute goes to padding; otherwise ``fit`` shuffles them. ``seed`` seeds the data order
    and dropout.
    Returns the history (one record per epoch); ``model`` is trained in place and left in
    eval mode.
    """
    checks.tensor("ids", ids, ndim=2)
    checks.tensor("mask", mask, ndim=2)
    checks.tensor("labels", labels, ndim=1)
    if ids.shape != mask.shape or len(labels) != len(ids):
        raise ValueError(f"ids {tuple(ids.shape)}, mask {tuple(mask.shape)} and labels "
                         f"{tuple(labels.shape)} must describe the same messages")
    if labels.dtype != torch.int64:
        raise TypeError(f"labels must be int64 class indices, got {labels.dtype}")
    checks.positive_number("epochs", epochs, integer=True)
    checks.positive_number("batch_size", batch_size, integer=True)
    checks.positive_number("lr", lr)
    checks.positive_number("weight_decay", weight_decay, allow_zero=True)
    checks.positive_number("warmup", warmup, allow_zero=True)
    if warmup >= 1:
        raise ValueError(f"warmup must be a fraction in [0, 1), got {warmup}")
    params = trainable_parameters(model)
    if not params:
        raise ValueError("model has no trainable parameters")
    dev = runtime.device(device) if device is not None else runtime.device()
    model.to(dev)
    runtime.seed_everything(seed)
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay, fused=True)
    steps = epochs * math.ceil(len(ids) / batch_size)
    schedule = optim.warmup_cosine_scheduler(opt, max(1, round(warmup * steps)), steps)
    order = None
    if bucket:
        lengths = mask.sum(1)
        order = seeded_order(lambda g: length_bucketed_order(lengths, batch_size, g), seed)
    history = fit(model, (ids, mask, labels), loss_fn=cross_entropy_loss, optimizer=opt,
                  epochs=epochs, batch_size=batch_size, scheduler=schedule, seed=seed,
                  device=dev, progress=progress, desc=desc, order=order)
    model.eval()
    return history


def _adamw_with_schedule(params: list, lr: float, weight_decay: float, warmup: float,
                         steps: int) -> tuple[torch.optim.Optimizer, Any]:
    checks.positive_number("weight_decay", weight_decay, allow_zero=True)
    checks.positive_number("warmup", warmup, allow_zero=True)
    if warmup >= 1:
        raise ValueError(f"warmup must be a fraction in [0, 1), got {warmup}")
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay, fused=True)
    return opt, optim.warmup_cosine_scheduler(opt, max(1, round(warmup * steps)), steps)


def _parameter_groups(model: torch.nn.Module, lr: float, head_lr: float | None) -> list[dict]:
    """AdamW groups: the trainable parameters whose name starts with ``head`` at ``head_lr``,
    the others at ``lr``."""
    named = {id(p): (n, p) for n, p in model.named_parameters() if p.requires_grad}
    if not named:
        raise ValueError("model has no trainable parameters")
    head = [p for n, p in named.values() if n.startswith("head")]
    rest = [p for n, p in named.values() if not n.startswith("head")]
    if head_lr is None:
        return [{"params": head + rest, "lr": lr}]
    return [g for g in ({"params": rest, "lr": lr}, {"params": head, "lr": head_lr})
            if g["params"]]


def train_with_loss(model: torch.nn.Module, data: tuple[torch.Tensor, ...], *,
                    loss_fn: Callable[..., Any], epochs: int, batch_size: int = 16,
                    lr: float = 1e-4, head_lr: float | None = None, weight_decay: float = 0.01,
                    warmup: float = 0.1, lengths: torch.Tensor | None = None, seed: int = 0,
                    device: torch.device | str | None = None, progress: bool = False,
                    desc: str = "train") -> History:
    r"""Train the trainable parameters of ``model`` on ``data`` (a tuple of tensors sharing
    their first dimension) by minimising ``loss_fn(model, *batch)``, as
    :func:`train_classifier` does with the cross-entropy (chapter 10 passes an adversarial loss,
    a loss on cached hidden states, a loss plus an EWC penalty).

    AdamW with a linear warm-up over the first ``warmup`` fraction of the steps and a cosine
    decay to zero; parameters whose name starts with ``head`` use ``head_lr`` when it is given.
    With ``lengths`` (tokens per message) each epoch reads the data in batches of similar length
    (:func:`length_bucketed_order`; an epoch's last incomplete batch is dropped), otherwise
    ``fit`` shuffles it. ``seed`` seeds the data order and dropout. Returns the history;
    ``model`` is trained in place and left in eval mode.
    """
    if not isinstance(data, tuple) or not data or not all(
            isinstance(t, torch.Tensor) for t in data):
        raise TypeError("data must be a non-empty tuple of tensors")
    if len({len(t) for t in data}) != 1:
        raise ValueError(f"data must share their first dimension, got "
                         f"{[tuple(t.shape) for t in data]}")
    if not callable(loss_fn):
        raise TypeError(f"loss_fn must be callable, got {type(loss_fn).__name__}")
    checks.positive_number("epochs", epochs, integer=True)
    checks.positive_number("batch_size", batch_size, integer=True)
    checks.positive_number("lr", lr)
    if head_lr is not None:
        checks.positive_number("head_lr", head_lr)
    dev = runtime.device(device) if device is not None else runtime.device()
    groups = _parameter_groups(model, lr, head_lr)
    model.to(dev)
    runtime.seed_everything(seed)
    common = dict(loss_fn=loss_fn, batch_size=batch_size, seed=seed, device=dev,
                  progress=progress, desc=desc)
    if lengths is None:
        steps = epochs * math.ceil(len(data[0]) / batch_size)
        opt, schedule = _adamw_with_schedule(groups, lr, weight_decay, warmup, steps)
        history = fit(model, data, epochs=epochs, optimizer=opt, scheduler=schedule, **common)
    else:
        checks.tensor("lengths", lengths, ndim=1)
        if len(lengths) != len(data[0]) or len(lengths) < batch_size:
            raise ValueError(f"lengths must have one entry per example ({len(data[0])}), and "
                             f"there must be at least batch_size={batch_size} of them")
        generator, full = torch.Generator().manual_seed(seed), len(lengths) // batch_size
        order = torch.cat([length_bucketed_order(lengths, batch_size, generator)[
            :full * batch_size] for _ in range(epochs)])
        opt, schedule = _adamw_with_schedule(groups, lr, weight_decay, warmup,
                                             len(order) // batch_size)
        history = fit(model, tuple(t[order] for t in data), epochs=1, shuffle=False,
                      optimizer=opt, scheduler=schedule, **common)
    model.eval()
    return history


class LayerCache:
    """The outputs of the frozen bottom of a :class:`SentenceClassifier` (the embedding layer and
    the first ``layer`` transformer layers, :meth:`SentenceClassifier.hidden_states`), computed
    once per distinct message and kept on the CPU (chapter 10).

    Every model whose bottom is frozen at the same pretrained weights
    (:meth:`SentenceClassifier.freeze_below`) shares them, so messages that several models read
    (training messages, rewordings, the candidates of an attack) go through the bottom once.
    ``cache(texts)`` returns ``(hidden, mask)``, ``(N, T, H)`` and ``(N, T)``, padded to the
    longest of the messages, for :meth:`SentenceClassifier.forward_from`.
    """

    def __init__(self, model: SentenceClassifier, tokenizer: Any, layer: int,
                 max_length: int = 32, batch_size: int = 64):
        if not isinstance(model, SentenceClassifier):
            raise TypeError(f"model must be a SentenceClassifier, got {type(model).__name__}")
        self.layer = model._layer("layer", layer)
        checks.positive_number("batch_size", batch_size, integer=True)
        self.model, self.tokenizer = model, tokenizer
        self.max_length, self.batch_size = max_length, batch_size
        self.store: dict[str, torch.Tensor] = {}

    @torch.no_grad()
    def _fill(self, texts: list[str]) -> None:
        missing = sorted({t for t in texts if t not in self.store}, key=len)
        device = next(self.model.parameters()).device
        was_training = self.model.training
        self.model.eval()
        try:
            for start in range(0, len(missing), self.batch_size):
                chunk = missing[start:start + self.batch_size]
                ids, mask = encoders.tokenize(self.tokenizer, chunk, self.max_length)
                hidden = self.model.hidden_states(ids.to(device), mask.to(device), self.layer)
                for text, h, n in zip(chunk, hidden.float().cpu(), mask.sum(1).tolist()):
                    self.store[text] = h[:n].clone()
        finally:
            self.model.train(was_training)

    def __call__(self, texts: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        texts = encoders._texts(texts)
        self._fill(texts)
        rows = [self.store[t] for t in texts]
        width = max(len(r) for r in rows)
        hidden = torch.zeros(len(rows), width, rows[0].shape[1])
        mask = torch.zeros(len(rows), width, dtype=torch.int64)
        for i, r in enumerate(rows):
            hidden[i, :len(r)], mask[i, :len(r)] = r, 1
        return hidden, mask


@torch.no_grad()
def predict_logits(model: torch.nn.Module, ids: torch.Tensor, mask: torch.Tensor,
                   batch_size: int = 128) -> torch.Tensor:
    """Logits ``(N, C)`` of ``model`` on tokenized messages, in eval mode and without building
    an autograd graph (inference only), on the CPU. The messages are read in batches of similar
    length (sorted by length, then put back in order), so that little compute goes to padding;
    the result equals one unsorted pass up to float rounding."""
    checks.tensor("ids", ids, ndim=2)
    checks.tensor("mask", mask, ndim=2)
    if ids.shape != mask.shape:
        raise ValueError(f"ids and mask must have the same shape, got {tuple(ids.shape)} and "
                         f"{tuple(mask.shape)}")
    checks.positive_number("batch_size", batch_size, integer=True)
    if len(ids) == 0:
        raise ValueError("ids holds no message: nothing to predict")
    device = next(model.parameters()).device
    order = torch.argsort(mask.sum(1), stable=True)
    with runtime.eval_mode(model):
        out = [model(ids[rows].to(device), mask[rows].to(device)).float().cpu()
               for rows in torch.split(order, batch_size)]
    logits = torch.empty(len(ids), out[0].shape[1])
    logits[order] = torch.cat(out)
    return logits


def save_trainable(model: torch.nn.Module, path: str | os.PathLike) -> Path:
    """Save only the trainable parameters of ``model`` (all of them after full fine-tuning;
    the adapters and the head after :func:`add_lora`) as one safetensors file, atomically."""
    names = {id(p): n for n, p in model.named_parameters() if p.requires_grad}
    if not names:
        raise ValueError("model has no trainable parameters to save")
    tensors = {n: p.detach().cpu().contiguous() for n, p in model.named_parameters()
               if id(p) in names and names[id(p)] == n}
    return checkpoint.save_tensors(tensors, path)
