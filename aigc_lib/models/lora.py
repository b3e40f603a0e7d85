r"""LoRA: low-rank adaptation of a frozen linear layer, written out for teaching (chapter 8).

Hu et al. (2022) freeze a pretrained weight :math:`W_0 \in \mathbb R^{d_\text{out}\times
d_\text{in}}` and learn a low-rank update :math:`\Delta W = \frac{\alpha}{r} B A` with
:math:`A \in \mathbb R^{r\times d_\text{in}}`, :math:`B \in \mathbb R^{d_\text{out}\times r}` and
:math:`r \ll \min(d_\text{in}, d_\text{out})`:

.. math:: h = W_0 x + b + \frac{\alpha}{r}\, B A\, x .

:math:`A` starts random and :math:`B` at zero, so the wrapped model starts as the pretrained
one; only :math:`r(d_\text{in} + d_\text{out})` numbers per layer are trained instead of
:math:`d_\text{in} d_\text{out}`. After training, :math:`\Delta W` can be added into
:math:`W_0` ("merged"), and the adapted model costs nothing extra at inference.

:class:`LoRALinear` wraps an ``nn.Linear`` (this library's GPT) or a ``transformers`` ``Conv1D``
(Hugging Face's GPT-2, which stores its weight transposed, ``(d_in, d_out)``);
:func:`add_lora` wraps a model's layers by name. The initialisation, scaling, merge and
parameter names follow ``peft``'s ``LoraConfig(r, lora_alpha, target_modules,
lora_dropout)`` with its defaults, and ``tests/test_lora.py`` checks that the two give the same
outputs, gradients and merged weights.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch
import torch.nn as nn

from aigc_lib import checks

# GPT-2's attention projections: the (d, 3d) query-key-value map and the output map. Matching is
# by the end of a module's dotted name, as peft's target_modules does.
GPT2_ATTENTION = ("attn.c_attn", "attn.c_proj")
# Llama-family attention projections (Llama, Qwen, Mistral in transformers), nn.Linear layers.
LLAMA_ATTENTION = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj")


def _is_conv1d(layer: nn.Module) -> bool:
    """``transformers.pytorch_utils.Conv1D``, recognised without importing transformers."""
    return (type(layer).__name__ == "Conv1D" and hasattr(layer, "nf") and hasattr(layer, "nx")
            and getattr(layer, "weight", None) is not None
            and tuple(layer.weight.shape) == (layer.nx, layer.nf))


def check_hyperparameters(r: object, alpha: object, dropout: object) -> None:
    """Refuse a rank ``r`` that is not a positive int, a non-positive ``alpha`` and a
    ``dropout`` outside [0, 1), naming the argument (every way of adding LoRA checks these)."""
    checks.positive_number("r", r, integer=True)
    checks.positive_number("alpha", alpha)
    checks.positive_number("dropout", dropout, allow_zero=True)
    if dropout >= 1:
        raise ValueError(f"dropout must be in [0, 1), got {dropout}")


class LoRALinear(nn.Module):
    r"""A frozen linear layer plus a trainable low-rank update:
    :math:`h = \text{base}(x) + \frac{\alpha}{r}\,B\,A\,\text{dropout}(x)`.

    Args:
        base: an ``nn.Linear`` or a ``transformers`` ``Conv1D``; its parameters are frozen.
        r: the rank of the update (> 0).
        alpha: the scale numerator; the update is multiplied by ``alpha / r``.
        dropout: dropout on the input of the low-rank path only (0 = none).
        rank_stabilised: scale by :math:`\alpha/\sqrt r` (rsLoRA) instead of :math:`\alpha/r`.

    ``lora_A`` ``(r, d_in)`` is drawn as ``nn.Linear`` draws its weights (Kaiming-uniform with
    :math:`a=\sqrt5`, i.e. uniform on :math:`\pm 1/\sqrt{d_\text{in}}`); ``lora_B``
    ``(d_out, r)`` starts at zero.
    """

    def __init__(self, base: nn.Module, r: int, alpha: float, dropout: float = 0.0,
                 rank_stabilised: bool = False):
        super().__init__()
        if isinstance(base, nn.Linear):
            d_in, d_out, self.transposed = base.in_features, base.out_features, False
        elif _is_conv1d(base):
            d_in, d_out, self.transposed = base.nx, base.nf, True
        else:
            raise TypeError(f"base must be an nn.Linear or a transformers Conv1D, "
                            f"got {type(base).__name__}")
        check_hyperparameters(r, alpha, dropout)
        self.base, self.r, self.alpha = base, r, alpha
        self.scaling = alpha / math.sqrt(r) if rank_stabilised else alpha / r
        for p in base.parameters():
            p.requires_grad_(False)
        weight = base.weight
        self.lora_A = nn.Parameter(torch.empty(r, d_in, dtype=weight.dtype, device=weight.device))
        self.lora_B = nn.Parameter(torch.zeros(d_out, r, dtype=weight.dtype, device=weight.device))
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.merged = False

    @property
    def in_features(self) -> int:
        return self.lora_A.shape[1]

    @property
    def out_features(self) -> int:
        return self.lora_B.shape[0]

    def delta_weight(self) -> torch.Tensor:
        r""":math:`\Delta W = \frac{\alpha}{r}BA`, shaped like ``base.weight`` (transposed for
        ``Conv1D``)."""
        delta = self.scaling * (self.lora_B @ self.lora_A)
        return delta.T if self.transposed else delta

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.base(x)
        if self.merged:
            return out
        return out + (self.dropout(x) @ self.lora_A.T @ self.lora_B.T) * self.scaling

    @torch.no_grad()
    def merge(self) -> None:
        """Add :math:`\\Delta W` into the base weight; the forward pass then skips the low-rank
        path (same outputs up to rounding, no extra cost)."""
        if not self.merged:
            self.base.weight += self.delta_weight()
            self.merged = True

    @torch.no_grad()
    def unmerge(self) -> None:
        """Undo :meth:`merge` (subtract :math:`\\Delta W` again)."""
        if self.merged:
            self.base.weight -= self.delta_weight()
            self.merged = False

    def extra_repr(self) -> str:
        return (f"r={self.r}, alpha={self.alpha}, in={self.in_features}, "
                f"out={self.out_features}, merged={self.merged}")


def _matches(name: str, targets: Iterable[str]) -> bool:
    return any(name == t or name.endswith("." + t) for t in targets)


def attention_targets(model: nn.Module) -> tuple[str, ...]:
    """The attention projections of ``model`` as LoRA targets: :data:`GPT2_ATTENTION` for
    GPT-2-style models (``transformers``' ``GPT2LMHeadModel``, this library's GPT), else
    :data:`LLAMA_ATTENTION` for Llama-, Qwen- and Mistral-style models (chapter 8)."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    names = [name for name, _ in model.named_modules()]
    for targets in (GPT2_ATTENTION, LLAMA_ATTENTION):
        if any(_matches(name, targets) for name in names):
            return targets
    raise ValueError(f"model {type(model).__name__} has neither GPT-2's {GPT2_ATTENTION} nor "
                     f"Llama's {LLAMA_ATTENTION} attention layers; pass targets=... explicitly")


def _check_lora_arguments(model: object, r: object, alpha: object, dropout: object,
                          targets: object) -> tuple[str, ...]:
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    check_hyperparameters(r, alpha, dropout)
    if isinstance(targets, str):
        targets = (targets,)
    if not isinstance(targets, Iterable):
        raise TypeError(f"targets must be a sequence of module names, got {type(targets).__name__}")
    targets = tuple(targets)
    if not targets or not all(isinstance(t, str) and t for t in targets):
        raise TypeError("targets must be a non-empty sequence of module names")
    return targets


def add_lora(model: nn.Module, *, r: int = 8, alpha: float = 16.0, dropout: float = 0.0,
             targets: Iterable[str] = GPT2_ATTENTION, rank_stabilised: bool = False) -> nn.Module:
    r"""Freeze every parameter of ``model`` and replace each layer whose dotted name equals, or
    ends with ``"." +`` one of ``targets``, by a :class:`LoRALinear` around it, in place
    (chapter 8). Returns ``model``; the wrapped layers are :func:`lora_layers` ``(model)``.

    The default targets are GPT-2's attention projections ``attn.c_attn`` and ``attn.c_proj``,
    named alike in ``transformers``' ``GPT2LMHeadModel`` (``Conv1D``) and in
    :class:`aigc_lib.models.gpt.GPT` (``nn.Linear``); :func:`attention_targets` picks them for
    Llama-style models too. ``rank_stabilised`` scales the update by :math:`\alpha/\sqrt r`
    instead of :math:`\alpha/r` (rsLoRA, Kalajdzievski 2023; ``peft``'s ``use_rslora``), which
    keeps the size of the update, and so a tuned learning rate, stable across ranks. Every
    argument is checked before anything is frozen or replaced: a bad call leaves ``model`` as it
    was. Raises ``ValueError`` if no layer matched or ``model`` already has LoRA layers.
    """
    targets = _check_lora_arguments(model, r, alpha, dropout, targets)
    if not isinstance(rank_stabilised, bool):
        raise TypeError(f"rank_stabilised must be a bool, got {type(rank_stabilised).__name__}")
    if any(isinstance(m, LoRALinear) for m in model.modules()):
        raise ValueError("model already has LoRA layers; merge_lora it first")
    chosen = [name for name, module in model.named_modules()
              if name and _matches(name, targets)]
    if not chosen:
        raise ValueError(f"targets {list(targets)} match no module of {type(model).__name__}")
    for name in chosen:
        layer = model.get_submodule(name)
        if not (isinstance(layer, nn.Linear) or _is_conv1d(layer)):
            raise TypeError(f"targets match {name!r}, a {type(layer).__name__}; LoRA wraps "
                            f"nn.Linear and transformers' Conv1D layers only")
    for p in model.parameters():
        p.requires_grad_(False)
    for name in chosen:
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, child, LoRALinear(getattr(parent, child), r, alpha, dropout,
                                          rank_stabilised=rank_stabilised))
    return model


def lora_layers(model: nn.Module) -> dict[str, LoRALinear]:
    """The :class:`LoRALinear` layers of ``model`` by dotted name."""
    return {name: m for name, m in model.named_modules() if isinstance(m, LoRALinear)}


def merge_lora(model: nn.Module) -> nn.Module:
    r"""Fold every :class:`LoRALinear` of ``model`` into its base layer
    (:math:`W_0 \leftarrow W_0 + \frac{\alpha}{r}BA`) and put the plain base layer back, in place:
    the model has its original architecture again (``peft``'s ``merge_and_unload``). Returns
    ``model``. The base layers stay frozen; unfreeze them if you train on."""
    layers = lora_layers(model)
    if not layers:
        raise ValueError("model has no LoRA layers to merge")
    for name, layer in layers.items():
        layer.merge()
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, child, layer.base)
    return model


def peft_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The LoRA matrices of ``model`` under the names ``peft`` saves them with
    (``base_model.model.<layer>.lora_A.weight`` and ``…lora_B.weight``), so that
    ``peft.set_peft_model_state_dict(peft_model, peft_state_dict(model))`` gives a ``peft``
    model of the same configuration exactly these adapters (chapter 8)."""
    layers = lora_layers(model)
    if not layers:
        raise ValueError("model has no LoRA layers")
    out = {}
    for name, layer in layers.items():
        out[f"base_model.model.{name}.lora_A.weight"] = layer.lora_A.detach().clone()
        out[f"base_model.model.{name}.lora_B.weight"] = layer.lora_B.detach().clone()
    return out


@torch.no_grad()
def load_peft_state_dict(model: nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Copy LoRA matrices saved in ``peft``'s naming (:func:`peft_state_dict`, or
    ``peft.get_peft_model_state_dict``) into the :class:`LoRALinear` layers of ``model``, which
    must have the same layers and ranks. Raises ``ValueError`` naming a missing or mis-shaped
    entry."""
    if not isinstance(state, dict):
        raise TypeError(f"state must be a dict of tensors, got {type(state).__name__}")
    layers = lora_layers(model)
    if not layers:
        raise ValueError("model has no LoRA layers")
    expected = {f"base_model.model.{name}.lora_{m}.weight" for name in layers for m in "AB"}
    if set(state) != expected:
        missing, extra = sorted(expected - set(state)), sorted(set(state) - expected)
        raise ValueError(f"state does not match the model's LoRA layers: missing {missing[:3]}, "
                         f"unexpected {extra[:3]}")
    for name, layer in layers.items():
        for matrix in ("A", "B"):
            value = state[f"base_model.model.{name}.lora_{matrix}.weight"]
            target = getattr(layer, f"lora_{matrix}")
            if value.shape != target.shape:
                raise ValueError(f"state's lora_{matrix} for {name} has shape "
                                 f"{tuple(value.shape)}, the model's {tuple(target.shape)}")
            target.copy_(value)
