r"""Quantisation: bf16 weights and int8 linear layers, their size, and a reference (chapter 11).

A linear layer :math:`y = W x + b` stored in int8 keeps, for each output row :math:`i` of
:math:`W`, one scale :math:`s_i = \max_j |W_{ij}| / 127.5` and the integers
:math:`q_{ij} = \operatorname{clamp}(\operatorname{round}(W_{ij}/s_i), -128, 127)`, so
:math:`W_{ij} \approx s_i q_{ij}` to within :math:`s_i/2` (symmetric, per-row "absmax"
quantisation, the scheme of LLM.int8 without its outlier columns, Dettmers et al., 2022). Two
ways to use it:

- **int8 weights** (weight-only): the activations stay in floating point and the weights are
  dequantised for the product, :math:`y = (s \odot q)\,x + b`; it saves memory and, where the
  weights' transfer from memory is the bottleneck (decoding on a GPU), time;
- **int8 dynamic**: each activation row :math:`x` is quantised on the fly the same way
  (:math:`x \approx t\,r`) and the product is taken in integers,
  :math:`y_i = s_i\,t \sum_j q_{ij} r_j + b_i`.

The quantised layers come from ``torchao`` (the maintained PyTorch quantisation library;
:func:`quantize`); :func:`absmax_int8` and :func:`int8_reference` recompute both by hand, so a test can
check ``torchao`` against the formulas above. :func:`memory_bytes` counts what a model holds in
memory, :func:`save` writes it as safetensors (each shared tensor once) and :func:`load` reads
it back.
"""

from __future__ import annotations

import copy
import json
import os
from pathlib import Path

import torch

from aigc_lib import checkpoint, checks, memory

SCHEMES = ("fp32", "bf16", "int8 weights", "int8 dynamic")
_QUANT_MAX = 127.5          # (127 - (-128)) / 2: the symmetric int8 range's half width


def _torchao():
    """Import ``torchao`` (its import-time messages are filtered in ``aigc_lib/__init__``)."""
    try:
        import torchao.quantization as tq
        from torchao.prototype.safetensors import safetensors_support
    except ImportError as err:    # pragma: no cover - torchao is a dependency
        raise ImportError("int8 quantisation needs torchao: pip install torchao") from err
    return tq, safetensors_support


def quantize(model: torch.nn.Module, scheme: str,
             skip: tuple[str, ...] = ("lm_head",)) -> torch.nn.Module:
    """A copy of ``model`` in ``scheme`` (one of :data:`SCHEMES`); ``model`` is unchanged.

    ``"bf16"`` casts every floating-point weight to bfloat16 (8 bits of exponent like float32,
    7 of mantissa instead of 23). The int8 schemes replace the weight of every ``nn.Linear``
    whose name is not in ``skip`` by a ``torchao`` int8 tensor (per-row symmetric scales;
    ``"int8 dynamic"`` also quantises each activation row at run time). A GPT's output
    projection is skipped by default: it is the token embedding too (weight tying), and the
    embedding lookup needs the floating-point matrix.
    """
    if not isinstance(model, torch.nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if scheme not in SCHEMES:
        raise ValueError(f"scheme must be one of {SCHEMES}, got {scheme!r}")
    if isinstance(skip, str) or not all(isinstance(s, str) for s in skip):
        raise TypeError("skip must be a tuple of module names")
    out = copy.deepcopy(model).eval()
    if scheme == "fp32":
        return out.float()
    if scheme == "bf16":
        return out.to(torch.bfloat16)
    tq, _ = _torchao()
    config = (tq.Int8WeightOnlyConfig() if scheme == "int8 weights"
              else tq.Int8DynamicActivationInt8WeightConfig())
    tq.quantize_(out, config, filter_fn=lambda module, name: (
        isinstance(module, torch.nn.Linear) and name not in skip))
    return out


def int8_reference(x: torch.Tensor, q: torch.Tensor, scale: torch.Tensor,
                   bias: torch.Tensor | None = None, dynamic: bool = False) -> torch.Tensor:
    r"""An int8 linear layer computed by hand from its integers ``q`` ``(out, in)`` and
    per-row scales ``scale`` ``(out, 1)``: dequantise and multiply,
    :math:`y = x\,(s \odot q)^\top + b`. With ``dynamic``, each row of ``x`` ``(..., in)`` is
    first quantised by :func:`absmax_int8`, :math:`x \approx t\,r`, and the product is taken
    in integers (exactly, in float64), :math:`y_i = s_i\,t \sum_j q_{ij} r_j + b_i`."""
    checks.tensor("x", x, floating=True)
    checks.tensor("q", q, ndim=2)
    checks.tensor("scale", scale, floating=True, ndim=2)
    if q.dtype != torch.int8:
        raise TypeError(f"q must hold int8 integers, got dtype {q.dtype}")
    if x.shape[-1] != q.shape[1] or tuple(scale.shape) != (q.shape[0], 1):
        raise ValueError(f"x has {x.shape[-1]} features and scale shape {tuple(scale.shape)}; "
                         f"q {tuple(q.shape)} expects {q.shape[1]} and {(q.shape[0], 1)}")
    if bias is not None:
        checks.tensor("bias", bias, floating=True, ndim=1)
    s = scale.double().t()
    if dynamic:
        r, t = absmax_int8(x)
        y = (r.double() @ q.double().t()) * t.double() * s
    else:
        y = x.double() @ (q.double() * s.t()).t()
    if bias is not None:
        y = y + bias.double()
    return y.to(x.dtype)


def absmax_int8(a: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    r"""Per-row symmetric int8 quantisation of ``a`` along its last dimension: scales
    :math:`s = \max_j |a_j| / 127.5` and integers
    :math:`\operatorname{clamp}(\operatorname{round}(a \cdot s^{-1}), -128, 127)` (rounding half
    to even; multiplying by the reciprocal, as ``torchao`` does, so that ties round alike).
    Returns ``(integers, scales)``, the scales with a trailing dimension of 1."""
    checks.tensor("a", a, floating=True)
    scale = (a.float().abs().amax(dim=-1, keepdim=True) / _QUANT_MAX).clamp(
        min=torch.finfo(torch.float32).eps)
    q = torch.clamp(torch.round(a.float() * (1.0 / scale)), -128, 127)
    return q.to(torch.int8), scale


def _plain_tensors(t: torch.Tensor):
    """The ordinary tensors a (possibly quantised, tensor-subclass) tensor is made of."""
    if type(t) not in (torch.Tensor, torch.nn.Parameter) and hasattr(t, "__tensor_flatten__"):
        names, _ = t.__tensor_flatten__()
        for name in names:
            yield from _plain_tensors(getattr(t, name))
    else:
        yield t


def memory_bytes(model: torch.nn.Module) -> int:
    """Bytes that ``model``'s parameters and buffers occupy: every storage counted once (tied
    weights share one), quantised weights counted as their integers plus their scales."""
    if not isinstance(model, torch.nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    return memory.storage_bytes(plain for tensor in [*model.parameters(), *model.buffers()]
                                for plain in _plain_tensors(tensor))


def save(model: torch.nn.Module, path: str | os.PathLike) -> Path:
    """Write ``model``'s ``state_dict`` to a safetensors file, quantised weights as their
    integer and scale tensors (``torchao``'s layout), each shared tensor once; returns the
    path. :func:`load` reads it back."""
    if not isinstance(model, torch.nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if not isinstance(path, (str, os.PathLike)) or not str(path).endswith(".safetensors"):
        raise ValueError(f"path must be a file name ending in .safetensors, got {path!r}")
    state, tied, first = {}, {}, {}
    for name, tensor in model.state_dict().items():
        key = id(tensor) if type(tensor) is not torch.Tensor else tensor.data_ptr()
        if key in first:
            tied[name] = first[key]
            continue
        first[key] = name
        state[name] = tensor.detach().cpu()
    if any(type(t) is not torch.Tensor for t in state.values()):
        _, support = _torchao()
        tensors, metadata = support.flatten_tensor_state_dict(state)
    else:
        tensors, metadata = state, {}
    tensors = {k: v.contiguous() for k, v in tensors.items()}
    return checkpoint.save_tensors(tensors, path, {**metadata, "aigc_tied": json.dumps(tied)})


def load(model: torch.nn.Module, path: str | os.PathLike) -> torch.nn.Module:
    """Load a file written by :func:`save` into ``model`` (a model of the same architecture,
    e.g. freshly built), replacing its tensors by the stored ones; returns ``model``."""
    if not isinstance(model, torch.nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if not Path(path).is_file():
        raise FileNotFoundError(f"no file at {path}")
    tensors, metadata = checkpoint._read(Path(path))
    metadata = dict(metadata)
    tied = json.loads(metadata.pop("aigc_tied", "{}"))
    if metadata:
        _, support = _torchao()
        state, left = support.unflatten_tensor_state_dict(tensors, metadata)
        state.update(left)
    else:
        state = tensors
    state.update({alias: state[source] for alias, source in tied.items()})
    model.load_state_dict(state, strict=True, assign=True)
    return model.eval()
