"""Fine-tuning a pretrained encoder as a text classifier, fully or with LoRA (chapter 9).

:class:`SentenceClassifier` is the encoder, mean pooling (:func:`aigc_lib.encoders.mean_pool`),
optional unit-length scaling and one linear layer, the head. Its head can start from a linear
probe fitted on frozen embeddings (*linear probing, then fine-tuning*), so that fine-tuning
begins from a working classifier instead of a random one. :func:`add_lora` freezes the encoder
and adds low-rank adapters with ``peft``; :func:`train_classifier` trains either kind with
:func:`aigc_lib.training.fit` (AdamW, warm-up and cosine decay, cross-entropy).
"""

from __future__ import annotations

import math
import os
import warnings
from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn.functional as F

from aigc_lib import checkpoint, checks, encoders, optim, runtime
from aigc_lib.training import History, fit, seeded_order


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

    def forward(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return self.head(encoders.encode(self.encoder, ids, mask, normalize=self.normalize))

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


def add_lora(model: SentenceClassifier, r: int = 8, alpha: float = 16.0, dropout: float = 0.0,
             target_modules: Sequence[str] = ("query", "value")) -> SentenceClassifier:
    r"""Freeze ``model``'s encoder and add LoRA adapters to its ``target_modules`` (``peft``).

    Each adapted linear layer :math:`y = W x` becomes :math:`y = W x + \frac{\alpha}{r} B A x`
    with :math:`A \in \mathbb R^{r\times d_\text{in}}` (random) and
    :math:`B \in \mathbb R^{d_\text{out}\times r}` (zeros), so the model is unchanged until
    training moves :math:`A` and :math:`B`; only they and the head train, which is
    :math:`r\,(d_\text{in} + d_\text{out})` parameters per adapted layer. Modifies ``model`` in
    place and returns it.
    """
    from peft import LoraConfig, get_peft_model

    if not isinstance(model, SentenceClassifier):
        raise TypeError(f"model must be a SentenceClassifier, got {type(model).__name__}")
    checks.positive_number("r", r, integer=True)
    checks.positive_number("alpha", alpha)
    checks.positive_number("dropout", dropout, allow_zero=True)
    if dropout >= 1:
        raise ValueError(f"dropout must be in [0, 1), got {dropout}")
    if isinstance(target_modules, str) or not target_modules:
        raise TypeError("target_modules must be a non-empty list of module names")
    names = [name for name, _ in model.encoder.named_modules()]
    unknown = [t for t in target_modules
               if not any(n == t or n.endswith("." + t) for n in names)]
    if unknown:
        raise ValueError(f"target_modules {unknown} are not modules of the encoder (a "
                         f"target names a module or the end of its dotted name)")
    config = LoraConfig(r=r, lora_alpha=alpha, lora_dropout=dropout,
                        target_modules=list(target_modules), bias="none")
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


@torch.no_grad()
def predict_logits(model: torch.nn.Module, ids: torch.Tensor, mask: torch.Tensor,
                   batch_size: int = 128) -> torch.Tensor:
    """Logits ``(N, C)`` of ``model`` on tokenized messages, in eval mode, on the CPU."""
    checks.tensor("ids", ids, ndim=2)
    checks.tensor("mask", mask, ndim=2)
    if ids.shape != mask.shape:
        raise ValueError(f"ids and mask must have the same shape, got {tuple(ids.shape)} and "
                         f"{tuple(mask.shape)}")
    checks.positive_number("batch_size", batch_size, integer=True)
    device = next(model.parameters()).device
    with runtime.eval_mode(model):
        out = [model(ids[s:s + batch_size].to(device), mask[s:s + batch_size].to(device))
               .float().cpu() for s in range(0, len(ids), batch_size)]
    return torch.cat(out)


def save_trainable(model: torch.nn.Module, path: str | os.PathLike) -> Path:
    """Save only the trainable parameters of ``model`` (all of them after full fine-tuning;
    the adapters and the head after :func:`add_lora`) as one safetensors file, atomically."""
    names = {id(p): n for n, p in model.named_parameters() if p.requires_grad}
    if not names:
        raise ValueError("model has no trainable parameters to save")
    tensors = {n: p.detach().cpu().contiguous() for n, p in model.named_parameters()
               if id(p) in names and names[id(p)] == n}
    return checkpoint.save_tensors(tensors, path)
