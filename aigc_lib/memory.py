r"""Memory arithmetic: the bytes it takes to train and to serve a model (chapter 11).

Training with Adam holds, for each of the :math:`N` parameters, the weight, its gradient and
Adam's two moving averages: :math:`4N` numbers, 16 bytes per parameter in float32 — and the
*activations* that the forward pass saves for the backward pass, which grow with the batch
size and the sequence length and often dominate. Serving holds the weights and, for a language
model that generates, its KV cache (:func:`aigc_lib.models.gpt.kv_cache_bytes`).

:func:`gpt_activation_bytes` counts a GPT's saved activations by formula;
:func:`saved_activation_bytes` measures them (the tensors autograd keeps, each storage once),
and :func:`measure_training` measures all four parts of a real training step, so the chapter
can check every formula against a measurement.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from aigc_lib import checks
from aigc_lib.models import gpt


@dataclass(frozen=True)
class Memory:
    """Bytes held, by what holds them."""
    weights: int
    gradients: int = 0
    optimizer: int = 0
    activations: int = 0
    kv_cache: int = 0

    @property
    def total(self) -> int:
        return (self.weights + self.gradients + self.optimizer + self.activations
                + self.kv_cache)


def _count(name: str, value: object) -> int:
    checks.positive_number(name, value, integer=True, allow_zero=True)
    return int(value)


def training_bytes(n_params: int, activations: int, bytes_per_number: int = 4,
                   optimizer_bytes: int = 8) -> Memory:
    r"""Memory of a training step by formula: weights and gradients of :math:`bN` bytes each,
    ``optimizer_bytes`` per parameter for the optimizer (Adam in float32: 8, its two moving
    averages; mixed precision, :math:`b = 2`, keeps a float32 master copy besides: 12), and the
    given ``activations`` bytes."""
    n = _count("n_params", n_params)
    b = _count("bytes_per_number", bytes_per_number)
    return Memory(weights=n * b, gradients=n * b,
                  optimizer=n * _count("optimizer_bytes", optimizer_bytes),
                  activations=_count("activations", activations))


def inference_bytes(n_params: int, kv_cache: int = 0, bytes_per_number: int = 4) -> Memory:
    """Memory of serving by formula: the weights, :math:`bN` bytes, and a KV cache."""
    return Memory(weights=_count("n_params", n_params) * _count("bytes_per_number",
                                                                bytes_per_number),
                  kv_cache=_count("kv_cache", kv_cache))


def gpt_activation_bytes(config: gpt.GPTConfig, batch_size: int, seq_len: int,
                         bytes_per_number: int = 4) -> int:
    r"""Bytes of the activations a training step of :class:`~aigc_lib.models.gpt.GPT` saves for
    its backward pass (fused attention, no dropout), for ``batch_size`` windows of ``seq_len``
    tokens: per token

    .. math:: L\,(16d + h + 4) + 2d + V + 2

    numbers. Per block, the inputs of the two LayerNorms and of the four linear layers
    (:math:`d, d, d, d`; the feed-forward output layer's input is :math:`4d`), the queries,
    keys and values (:math:`3d`), the GELU's input (:math:`4d`), the attention's log-sum-exp per
    head (:math:`h`) and each LayerNorm's mean and inverse deviation (4); then the final
    LayerNorm's input, mean and deviation and the output layer's input (:math:`2d + 2`), and
    the log-softmax of the logits (:math:`V`). The token ids (int64) are left out.
    """
    if not isinstance(config, gpt.GPTConfig):
        raise TypeError(f"config must be a GPTConfig, got {type(config).__name__}")
    B = checks.positive_number("batch_size", batch_size, integer=True)
    T = checks.positive_number("seq_len", seq_len, integer=True)
    b = checks.positive_number("bytes_per_number", bytes_per_number, integer=True)
    d, L, h, V = config.n_embd, config.n_layer, config.n_head, config.vocab_size
    return B * T * b * (L * (16 * d + h + 4) + 2 * d + V + 2)


def _storage_key(t: torch.Tensor) -> tuple[str, int]:
    return str(t.device), t.untyped_storage().data_ptr()


def saved_activation_bytes(model: torch.nn.Module, step: Callable[[], torch.Tensor]) -> int:
    """Bytes of the tensors autograd saves for the backward pass while ``step()`` runs the
    forward pass (``torch.autograd.graph.saved_tensors_hooks``): each storage counted once, the
    model's own parameters and buffers left out. ``step`` returns the loss; no backward pass
    is run."""
    if not isinstance(model, torch.nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if not callable(step):
        raise TypeError(f"step must be callable, got {type(step).__name__}")
    own = {_storage_key(t) for t in list(model.parameters()) + list(model.buffers())}
    saved: dict[tuple[str, int], int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        key = _storage_key(t)
        if key not in own:
            saved[key] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        loss = step()
    del loss
    return sum(saved.values())


def storage_bytes(tensors) -> int:
    """Bytes of the storages under ``tensors``, each counted once (views and tied weights
    share one); entries that are not tensors are skipped."""
    seen = {}
    for t in tensors:
        if isinstance(t, torch.Tensor):
            seen[_storage_key(t)] = t.untyped_storage().nbytes()
    return sum(seen.values())


def measure_training(model: torch.nn.Module, step: Callable[[], torch.Tensor],
                     optimizer: torch.optim.Optimizer) -> Memory:
    """Measured memory of one training step of ``model``: the bytes of its parameters, of
    their gradients after ``step().backward()``, of the optimizer's state after
    ``optimizer.step()``, and the activations saved during the forward pass
    (:func:`saved_activation_bytes`). The step changes ``model``'s weights."""
    if not isinstance(optimizer, torch.optim.Optimizer):
        raise TypeError(f"optimizer must be a torch.optim.Optimizer, got "
                        f"{type(optimizer).__name__}")
    optimizer.zero_grad(set_to_none=True)
    holder = {}
    activations = saved_activation_bytes(model, lambda: holder.setdefault("loss", step()))
    holder.pop("loss").backward()
    optimizer.step()
    params = list(model.parameters())
    state = [v for s in optimizer.state.values() for k, v in s.items()
             if k != "step"]                     # Adam's step counters are bookkeeping
    return Memory(weights=storage_bytes(params),
                  gradients=storage_bytes(p.grad for p in params if p.grad is not None),
                  optimizer=storage_bytes(state), activations=activations)
