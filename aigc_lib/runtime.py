"""Run-time settings: seeding, device, the run profile and the cache folder (all chapters).

The *profile* sets each chapter's budget: ``cpu`` (the whole book executes in about ten minutes
on a 2-core machine) or ``gpu`` (bigger models, longer training, bf16). It comes from the
``AIGC_PROFILE`` environment variable, else from whether CUDA is present.
"""

from __future__ import annotations

import os
import random
from pathlib import Path
from typing import TypeVar

import numpy as np
import torch

PROFILES = ("cpu", "gpu")
T = TypeVar("T")


def profile(name: str | None = None) -> str:
    """The run profile: ``name`` if given, else ``$AIGC_PROFILE``, else ``gpu`` iff CUDA is present.

    >>> profile("cpu")
    'cpu'
    """
    source = "name"
    if name is None:
        name, source = os.environ.get("AIGC_PROFILE") or None, "AIGC_PROFILE"
    if name is None:
        return "gpu" if torch.cuda.is_available() else "cpu"
    if not isinstance(name, str):
        raise TypeError(f"{source} must be a string, got {type(name).__name__}")
    if name.strip().lower() not in PROFILES:
        raise ValueError(f"{source} must be one of {PROFILES}, got {name!r}")
    return name.strip().lower()


def by_profile(cpu: T, gpu: T, name: str | None = None) -> T:
    """Pick the value for the current profile, e.g. ``steps = by_profile(cpu=300, gpu=5000)``."""
    return cpu if profile(name) == "cpu" else gpu


def device(name: str | None = None) -> torch.device:
    """``cuda`` if available (or ``name`` when given and valid), else ``cpu``."""
    if name is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if not isinstance(name, (str, torch.device)):
        raise TypeError(f"name must be a string or torch.device, got {type(name).__name__}")
    try:
        chosen = torch.device(name)
    except RuntimeError as err:
        raise ValueError(f"name must name a torch device such as 'cpu' or 'cuda', got {name!r}") from err
    if chosen.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"name={name!r} asks for CUDA, but torch.cuda.is_available() is False")
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
