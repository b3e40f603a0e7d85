"""Checkpoints in safetensors: model weights alone, or a whole training state (chapter 2).

A training checkpoint is one ``.safetensors`` file holding the model's tensors (``model.*``),
the optimizer's and scheduler's tensors, and the random-number-generator states, plus a JSON
header for everything that is not a tensor (step, history, hyper-parameters). Files are written
to a temporary name and renamed (:func:`aigc_lib.runtime.atomic_path`), so an interrupted save
never destroys the previous checkpoint. Nothing here unpickles: no ``torch.load``, so loading a
checkpoint cannot run code; a file that is not safetensors is refused with an error naming it.
"""

from __future__ import annotations

import json
import os
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from aigc_lib import runtime

_TENSOR, _DICT, _TUPLE = "__tensor__", "__dict__", "__tuple__"


def _path(path: str | os.PathLike, name: str = "path") -> Path:
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"{name} must be a str or os.PathLike, got {type(path).__name__}")
    path = Path(path)
    if path.suffix != ".safetensors":
        raise ValueError(f"{name} must end in .safetensors, got {str(path)!r}")
    return path


def flatten(obj: Any, prefix: str, tensors: dict[str, torch.Tensor]) -> Any:
    """Replace every tensor in a nested dict/list/tuple by a reference, collecting the tensors.

    The result is JSON-serialisable; dict keys keep their type (optimizer states use int keys).
    """
    if isinstance(obj, torch.Tensor):
        tensors[prefix] = obj.detach().to("cpu", copy=True).contiguous()
        return {_TENSOR: prefix}
    if isinstance(obj, dict):
        return {_DICT: [[k, flatten(v, f"{prefix}.{k}", tensors)] for k, v in obj.items()]}
    if isinstance(obj, tuple):
        return {_TUPLE: [flatten(v, f"{prefix}.{i}", tensors) for i, v in enumerate(obj)]}
    if isinstance(obj, list):
        return [flatten(v, f"{prefix}.{i}", tensors) for i, v in enumerate(obj)]
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    raise TypeError(f"cannot store a {type(obj).__name__} at {prefix!r} in a checkpoint")


def unflatten(obj: Any, tensors: dict[str, torch.Tensor]) -> Any:
    """Inverse of :func:`flatten`."""
    if isinstance(obj, dict):
        if _TENSOR in obj:
            return tensors[obj[_TENSOR]]
        if _DICT in obj:
            return {k: unflatten(v, tensors) for k, v in obj[_DICT]}
        if _TUPLE in obj:
            return tuple(unflatten(v, tensors) for v in obj[_TUPLE])
    if isinstance(obj, list):
        return [unflatten(v, tensors) for v in obj]
    return obj


def rng_state() -> dict[str, Any]:
    """The states of Python's, NumPy's and PyTorch's (CPU and CUDA) random generators."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    state: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": (kind, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, gauss),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore generator states saved by :func:`rng_state`."""
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_tensors(tensors: dict[str, torch.Tensor], path: str | os.PathLike,
                 metadata: dict[str, str] | None = None) -> Path:
    """Write named tensors (and string ``metadata``) to one safetensors file, atomically."""
    path = _path(path)
    with runtime.atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata=dict(metadata or {}))
    return path


def _read(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """The tensors and metadata of a safetensors file, or an error that names the file."""
    if not path.exists():
        raise FileNotFoundError(f"no checkpoint at {path}")
    try:
        with safe_open(str(path), framework="pt") as handle:
            metadata = handle.metadata() or {}
            tensors = {key: handle.get_tensor(key) for key in handle.keys()}
    except SafetensorError as err:
        raise ValueError(f"{path} is not a readable safetensors checkpoint ({err}); it may be "
                         f"truncated, empty, or another format such as a torch.save file") from err
    return tensors, metadata


def save_state(path: str | os.PathLike, state: dict[str, Any]) -> Path:
    """Save a nested dict of tensors and plain values to one safetensors file, atomically."""
    tensors: dict[str, torch.Tensor] = {}
    header = flatten(state, "s", tensors)
    return save_tensors(tensors, path, {"aigc_lib_state": json.dumps(header)})


def load_state(path: str | os.PathLike) -> dict[str, Any]:
    """Load what :func:`save_state` saved (tensors on the CPU)."""
    path = _path(path)
    tensors, metadata = _read(path)
    if "aigc_lib_state" not in metadata:
        raise ValueError(f"{path} is a safetensors file but not an aigc_lib training checkpoint")
    try:
        return unflatten(json.loads(metadata["aigc_lib_state"]), tensors)
    except (ValueError, KeyError) as err:
        raise ValueError(f"{path} is not a readable safetensors checkpoint: its training state "
                         f"is damaged ({err!r})") from err


def save_weights(model: torch.nn.Module, path: str | os.PathLike,
                 metadata: dict[str, str] | None = None) -> Path:
    """Save a model's ``state_dict`` as safetensors (tied weights are stored once per name)."""
    if not isinstance(model, torch.nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    tensors = {k: v.detach().to("cpu", copy=True).contiguous() for k, v in model.state_dict().items()}
    return save_tensors(tensors, path, metadata)


def load_weights(model: torch.nn.Module, path: str | os.PathLike, strict: bool = True) -> torch.nn.Module:
    """Load safetensors weights saved by :func:`save_weights` into ``model`` (in place)."""
    if not isinstance(model, torch.nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    state, _ = _read(_path(path))
    model.load_state_dict(state, strict=strict)
    return model
