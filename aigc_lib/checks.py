"""Argument checks shared by every public function of :mod:`aigc_lib`.

Each check raises a :class:`TypeError` or :class:`ValueError` whose message names the argument
and says what was expected, so that bad input fails at the call site and not deep inside torch.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

REDUCTIONS = ("mean", "sum", "none")


def all_finite(value: torch.Tensor) -> bool:
    """True when the floating-point tensor ``value`` holds no NaN and no ±inf. Reads its minimum
    and maximum (NaN propagates through both, an infinity is one of them): one pass without the
    boolean copy that ``torch.isfinite(value).all()`` allocates, about ten times faster."""
    if value.numel() == 0:
        return True
    low, high = torch.aminmax(value.detach())
    return bool(torch.isfinite(low) & torch.isfinite(high))


def tensor(name: str, value: object, *, floating: bool = False, finite: bool = True,
           ndim: int | Sequence[int] | None = None) -> torch.Tensor:
    """Return ``value`` if it is a tensor of the expected kind, else raise naming ``name``."""
    if not isinstance(value, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(value).__name__}")
    if floating and not value.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor, got dtype {value.dtype}")
    if ndim is not None:
        allowed = (ndim,) if isinstance(ndim, int) else tuple(ndim)
        if value.ndim not in allowed:
            raise ValueError(f"{name} must have {' or '.join(map(str, allowed))} dimensions, "
                             f"got shape {tuple(value.shape)}")
    if finite and value.is_floating_point() and not all_finite(value):
        raise ValueError(f"{name} contains NaN or infinite values")
    return value


def class_indices(name: str, value: torch.Tensor, classes: int | None = None, *,
                  on_device: bool = False) -> torch.Tensor:
    """Return ``value`` if it holds integer class indices in ``[0, classes)`` (``>= 0`` when
    ``classes`` is None), else raise naming ``name``: float or bool labels, or indices out of
    range, would otherwise give silent wrong answers or fail deep in torch. The range is read
    on the host, so a GPU raises the same error at once; ``on_device=True`` (forward passes,
    per-step losses) checks it with :func:`require` instead, without waiting for the device."""
    tensor(name, value, finite=False)
    if value.is_floating_point() or value.is_complex() or value.dtype == torch.bool:
        raise TypeError(f"{name} must hold integer class indices, got dtype {value.dtype}")
    if value.numel():
        ok = value >= 0 if classes is None else (value >= 0) & (value < classes)
        where = ">= 0" if classes is None else f"in [0, {classes})"

        def error() -> ValueError:
            return ValueError(f"{name} must be class indices {where}, got values in "
                              f"[{int(value.min())}, {int(value.max())}]")
        if on_device:
            require(ok.all(), error)
        elif not bool(ok.all()):
            raise error()
    return value


def require(ok: torch.Tensor, error: Callable[[], Exception]) -> None:
    """Raise ``error()`` unless the one-element boolean tensor ``ok`` is true, without reading
    ``ok`` on the host: ``torch._assert_async`` checks it where it lies. On the CPU that is at
    once, and its RuntimeError becomes ``error()`` (which may read values for its message: it
    runs only on failure). On a CUDA GPU the check is one more kernel, and a failure surfaces
    as a device-side assertion at the next synchronisation, instead of every call waiting for
    the device (chapter 2: the checks inside ``forward`` passes and per-step losses use this).
    Other devices read ``ok`` on the host."""
    kind = ok.device.type
    if kind == "cuda":
        torch._assert_async(ok)
    elif kind != "cpu":
        if not bool(ok):
            raise error()
    else:
        try:
            torch._assert_async(ok)
        except RuntimeError:
            raise error() from None


def finite_on_device(name: str, value: torch.Tensor) -> torch.Tensor:
    """Return ``value`` if it holds no NaN and no ±inf, else raise naming ``name``; checked with
    :func:`require`, so a forward pass can call it without reading on the host."""
    require(torch.isfinite(value).all(), lambda: ValueError(
        f"{name} contains NaN or infinite values"))
    return value


def token_ids(name: str, value: object, vocab_size: int) -> torch.Tensor:
    """Return ``value`` if it is a 2-D int64 tensor of ids in ``[0, vocab_size)``, else raise
    naming ``name`` and the ids outside (an embedding lookup would fail deep in torch). The
    range is checked with :func:`require`: no read on the host, so a forward pass can use it."""
    tensor(name, value, ndim=2, finite=False)
    if value.dtype != torch.long:
        raise TypeError(f"{name} must hold int64 token ids, got dtype {value.dtype}")

    def error() -> ValueError:
        outside = (value < 0) | (value >= vocab_size)
        return ValueError(f"{name} must hold token ids in [0, {vocab_size}) (the model's "
                          f"vocab_size), got {sorted(set(value[outside].tolist()))[:8]}")
    if value.numel():
        low, high = torch.aminmax(value)
        require((low >= 0) & (high < vocab_size), error)
    return value


def same_shape(name_a: str, a: torch.Tensor, name_b: str, b: torch.Tensor) -> None:
    """Raise unless ``a`` and ``b`` have the same shape."""
    if a.shape != b.shape:
        raise ValueError(f"{name_a} and {name_b} must have the same shape, "
                         f"got {tuple(a.shape)} and {tuple(b.shape)}")


def in_unit_interval(name: str, value: torch.Tensor) -> None:
    """Raise unless every entry of ``value`` lies in [0, 1] (probabilities, binary targets)."""
    if bool(((value < 0) | (value > 1)).any()):
        raise ValueError(f"{name} must lie in [0, 1], got values in "
                         f"[{value.min().item():.4g}, {value.max().item():.4g}]")


def positive(name: str, value: torch.Tensor) -> None:
    """Raise unless every entry of ``value`` is > 0 (variances, scales)."""
    if bool((value <= 0).any()):
        raise ValueError(f"{name} must be > 0 everywhere, got minimum {value.min().item():.4g}")


def probability_vector(name: str, p: torch.Tensor, atol: float = 1e-5) -> None:
    """Raise unless the last dimension of ``p`` is a probability distribution."""
    in_unit_interval(name, p)
    sums = p.sum(-1)
    if not torch.allclose(sums, torch.ones_like(sums), atol=atol):
        raise ValueError(f"{name} must sum to 1 along its last dimension, got sums in "
                         f"[{sums.min().item():.6g}, {sums.max().item():.6g}]")


def reduction(value: str, allowed: tuple[str, ...] = REDUCTIONS) -> str:
    """Raise unless ``value`` is one of ``allowed`` (by default ``'mean'``, ``'sum'``,
    ``'none'``)."""
    if value not in allowed:
        raise ValueError(f"reduction must be one of {allowed}, got {value!r}")
    return value


def positive_number(name: str, value: object, *, integer: bool = False,
                    allow_zero: bool = False) -> float | int:
    """Raise unless ``value`` is a (strictly, unless ``allow_zero``) positive number."""
    kinds = (int,) if integer else (int, float)
    if isinstance(value, bool) or not isinstance(value, kinds):
        what = "an int" if integer else "a number"
        raise TypeError(f"{name} must be {what}, got {type(value).__name__}")
    if value < 0 or (value == 0 and not allow_zero) or value != value:
        bound = ">= 0" if allow_zero else "> 0"
        raise ValueError(f"{name} must be {bound}, got {value!r}")
    return value


def confidence(value: object) -> float:
    """Return ``value`` if it is a confidence level in (0, 1) (an interval's coverage)."""
    positive_number("confidence", value)
    if not value < 1:
        raise ValueError(f"confidence must be in (0, 1), got {value}")
    return value


def apply_reduction(values: torch.Tensor, how: str) -> torch.Tensor:
    """Reduce per-element losses: mean over all elements, sum, or none."""
    if how == "mean":
        return values.mean()
    if how == "sum":
        return values.sum()
    return values
