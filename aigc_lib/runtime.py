"""Run-time settings: seeding, device, the run profile and the cache folder (all chapters), and
two habits every module shares: :func:`eval_mode` (evaluate in eval mode, then restore the mode)
and :func:`atomic_path` (write a file or folder under a temporary name, then rename it).

The *profile* sets each chapter's budget: ``cpu`` (the whole book executes in about ten minutes
on a 2-core machine) or ``gpu`` (bigger models, longer training, bf16). It comes from the
``AIGC_PROFILE`` environment variable, else from whether CUDA is present.
"""

from __future__ import annotations

import os
import random
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TypeVar

import numpy as np
import torch

PROFILES = ("cpu", "gpu")
T = TypeVar("T")


def profile(profile: str | None = None) -> str:
    """The run profile: ``profile`` if given, else ``$AIGC_PROFILE``, else ``gpu`` iff CUDA is
    present.

    >>> profile("cpu")
    'cpu'
    """
    name, source = profile, "profile"
    if name is None:
        name, source = os.environ.get("AIGC_PROFILE") or None, "AIGC_PROFILE"
    if name is None:
        return "gpu" if torch.cuda.is_available() else "cpu"
    if not isinstance(name, str):
        raise TypeError(f"{source} must be a string, got {type(name).__name__}")
    if name.strip().lower() not in PROFILES:
        raise ValueError(f"{source} must be one of {PROFILES}, got {name!r}")
    return name.strip().lower()


_profile = profile   # by_profile's argument of the same name shadows the function


def by_profile(cpu: T, gpu: T, profile: str | None = None) -> T:
    """Pick the value for the current profile, e.g. ``steps = by_profile(cpu=300, gpu=5000)``."""
    return cpu if _profile(profile) == "cpu" else gpu


def device(device: str | torch.device | None = None) -> torch.device:
    """``cuda`` if available (or ``device`` when given and valid), else ``cpu``."""
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if not isinstance(device, (str, torch.device)):
        raise TypeError(f"device must be a string or torch.device, got {type(device).__name__}")
    try:
        chosen = torch.device(device)
    except RuntimeError as err:
        raise ValueError(f"device must name a torch device such as 'cpu' or 'cuda', got "
                         f"{device!r}") from err
    if chosen.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device={device!r} asks for CUDA, but torch.cuda.is_available() is False")
    return chosen


def seed_everything(seed: int) -> None:
    """Seed Python's ``random``, NumPy and PyTorch (CPU and CUDA) for reproducible runs."""
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise TypeError(f"seed must be an int, got {type(seed).__name__}")
    if not 0 <= seed < 2**32:
        raise ValueError(f"seed must be in [0, 2**32), got {seed}")
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)  # also seeds every CUDA device


def cache_dir(*parts: str) -> Path:
    """The cache folder (``$AIGC_CACHE``, else ``$XDG_CACHE_HOME/aigc_lib`` or ``~/.cache/aigc_lib``),
    optionally a sub-folder of it; created if missing."""
    for part in parts:
        if not isinstance(part, str) or not part or os.sep in part or part in (".", ".."):
            raise ValueError(f"parts must be plain folder names, got {part!r}")
    root = os.environ.get("AIGC_CACHE")
    if root:
        base = Path(root).expanduser()
    else:
        xdg = os.environ.get("XDG_CACHE_HOME")
        base = (Path(xdg) if xdg else Path.home() / ".cache") / "aigc_lib"
    path = base.joinpath(*parts)
    path.mkdir(parents=True, exist_ok=True)
    return path


def describe() -> str:
    """One line for the top of a chapter: profile, device, torch version and thread count."""
    dev = device()
    gpu = f" ({torch.cuda.get_device_name(dev)})" if dev.type == "cuda" else ""
    return (f"profile={profile()}  device={dev}{gpu}  torch={torch.__version__}  "
            f"threads={torch.get_num_threads()}")


@contextmanager
def eval_mode(*modules: torch.nn.Module) -> Iterator[None]:
    """Put ``modules`` in eval mode (dropout off, batch-norm statistics frozen) for the ``with``
    block, and give each back the mode it had, also when the block raises."""
    for module in modules:
        if not isinstance(module, torch.nn.Module):
            raise TypeError(f"modules must be torch.nn.Module, got {type(module).__name__}")
    modes = [module.training for module in modules]
    try:
        for module in modules:
            module.eval()
        yield
    finally:
        for module, mode in zip(modules, modes):
            module.train(mode)


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """A temporary path beside ``path`` for the ``with`` block to write (a file or a folder);
    renamed to ``path`` when the block succeeds, removed when it raises. So a reader sees the
    old ``path`` or the complete new one, never half a file. Every module that writes uses it.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        yield tmp
        if tmp.is_dir() and path.is_dir():   # a folder cannot replace a folder in one rename
            shutil.rmtree(path)
        os.replace(tmp, path)
    finally:
        if tmp.is_dir():
            shutil.rmtree(tmp)
        else:
            tmp.unlink(missing_ok=True)
