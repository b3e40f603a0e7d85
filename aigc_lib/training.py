"""The training loop ``fit`` (chapter 2 walks through it part by part).

One step is: take a batch, run ``loss_fn(model, *batch)`` (forward and loss, under bf16 autocast
on CUDA), check the loss is finite, backpropagate, clip the gradient norm, take an optimizer step
and a scheduler step. At each evaluation point (every epoch by default) ``fit`` measures the
validation loss and any ``evaluate`` metrics, appends a record to the :class:`History`, and
writes a checkpoint. Running ``fit`` again with the same checkpoint path resumes where the last
run stopped, bit for bit: the data order and every random generator are part of the checkpoint.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable, Mapping, Sequence
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any

import torch
from torch.utils.data import Dataset, TensorDataset
from torch.utils.data._utils.collate import default_collate
from tqdm.auto import tqdm

from aigc_lib import checkpoint as ckpt
from aigc_lib import checks, losses
from aigc_lib import runtime

LossOutput = torch.Tensor | tuple[torch.Tensor, dict[str, torch.Tensor]]


@dataclass
class History:
    """What ``fit`` measured.

    ``step_losses`` holds the training loss of every step; ``records`` one dict per evaluation
    point with ``step``, ``epoch`` (fractional), ``train_loss`` (mean since the last record), any
    extra terms returned by the loss, ``val_loss``, ``evaluate`` metrics, ``lr``, ``grad_norm``
    (mean pre-clipping norm, when clipping) and ``seconds`` (training time so far).
    """
    step_losses: list[float] = field(default_factory=list)
    records: list[dict[str, float]] = field(default_factory=list)
    seconds: float = 0.0

    def column(self, key: str) -> list[float]:
        """Values of ``key`` over the records (``nan`` where a record lacks it)."""
        return [r.get(key, math.nan) for r in self.records]

    def last(self, key: str) -> float:
        """The latest value of ``key``."""
        if not self.records or key not in self.records[-1]:
            raise KeyError(f"no {key!r} in the last record; keys: "
                           f"{sorted(self.records[-1]) if self.records else []}")
        return self.records[-1][key]

    def to_dict(self) -> dict[str, Any]:
        return {"step_losses": self.step_losses, "records": self.records, "seconds": self.seconds}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> History:
        return cls(list(data["step_losses"]), [dict(r) for r in data["records"]], float(data["seconds"]))

    def _repr_html_(self) -> str:
        if not self.records:
            return "<p>History: no records</p>"
        keys = list(self.records[-1])
        head = "".join(f"<th>{k}</th>" for k in keys)
        rows = "".join("<tr>" + "".join(f"<td>{r.get(k, math.nan):.4g}</td>" for k in keys) + "</tr>"
                       for r in self.records)
        return f"<table><tr>{head}</tr>{rows}</table>"


class _Batches:
    """Index-based batching over tensors (fast path) or any map-style ``Dataset``."""

    def __init__(self, data: Any, name: str):
        if isinstance(data, torch.Tensor):
            data = (data,)
        if isinstance(data, TensorDataset):
            data = tuple(data.tensors)
        if isinstance(data, (tuple, list)):
            if not data or not all(isinstance(t, torch.Tensor) for t in data):
                raise TypeError(f"{name} must be a Dataset, a tensor, or a tuple of tensors")
            sizes = {len(t) for t in data}
            if len(sizes) != 1:
                raise ValueError(f"{name}: tensors must share their first dimension, got sizes "
                                 f"{[len(t) for t in data]}")
            self.tensors, self.dataset = tuple(data), None
        elif isinstance(data, Dataset) and hasattr(data, "__len__"):
            self.tensors, self.dataset = None, data
        else:
            raise TypeError(f"{name} must be a Dataset with __len__, a tensor, or a tuple of "
                            f"tensors, got {type(data).__name__}")
        self.size = len(self.tensors[0]) if self.tensors is not None else len(self.dataset)
        if self.size == 0:
            raise ValueError(f"{name} is empty")

    def take(self, index: torch.Tensor) -> tuple[torch.Tensor, ...]:
        if self.tensors is not None:
            return tuple(t[index] for t in self.tensors)
        batch = default_collate([self.dataset[int(i)] for i in index])
        return tuple(batch) if isinstance(batch, (tuple, list)) else (batch,)


def _to(batch: Sequence[torch.Tensor], dev: torch.device) -> tuple[torch.Tensor, ...]:
    return tuple(t.to(dev, non_blocking=True) for t in batch)


_NO_EXTRAS: Mapping[str, torch.Tensor] = MappingProxyType({})


def _split_loss(output: LossOutput) -> tuple[torch.Tensor, Mapping[str, torch.Tensor]]:
    if isinstance(output, torch.Tensor) and output.ndim == 0:
        return output, _NO_EXTRAS                      # the common case, checked cheaply
    loss, extras = (output if isinstance(output, tuple) else (output, {}))
    if not isinstance(loss, torch.Tensor) or loss.ndim != 0:
        raise TypeError("loss_fn must return a scalar tensor, or (scalar tensor, dict of scalar "
                        f"tensors); got {type(loss).__name__} "
                        f"{tuple(loss.shape) if isinstance(loss, torch.Tensor) else ''}")
    return loss, extras


def _sync_interval(dev: torch.device) -> int:
    """Steps between reads of the loss: every step on the CPU (free), every 25 on a GPU (a
    read synchronises the device)."""
    return 1 if dev.type == "cpu" else 25


def _autocast(dev: torch.device, amp: bool | str):
    if amp not in ("auto", True, False):
        raise ValueError(f"amp must be 'auto', True or False, got {amp!r}")
    if amp is True and dev.type != "cuda":
        raise ValueError("amp=True needs a CUDA device (bf16 autocast); use amp='auto' or False")
    use = dev.type == "cuda" and amp in ("auto", True) and torch.cuda.is_bf16_supported()
    return (lambda: torch.autocast("cuda", dtype=torch.bfloat16)) if use else nullcontext


def _stop(value: float, step: int, per_epoch: int, path: Path | None, name: str = "loss") -> None:
    """The NaN guard's error: name the step and epoch, and say what happened to the checkpoint."""
    kept = f"the last checkpoint ({path}) is kept" if path else "no checkpoint was set"
    epoch = (step - 1) // per_epoch + 1
    raise FloatingPointError(f"{name} is {value} at step {step} (epoch {epoch}); training stopped "
                             f"and {kept}")


def _open_checkpoint(path: Path | None, resume: bool,
                     config: dict[str, Any]) -> dict[str, Any] | None:
    """The saved state to resume from, or None to start afresh. Refuses to overwrite an existing
    checkpoint unless ``resume``, and to resume one written with different settings."""
    if path is None or not path.exists():
        return None
    if not resume:
        raise FileExistsError(f"checkpoint {path} exists; pass resume=True to continue it, or "
                              f"delete it / choose another path to start afresh")
    state = ckpt.load_state(path)
    changed = {k: (state["config"].get(k), v) for k, v in config.items()
               if state["config"].get(k) != v}
    if changed:
        raise ValueError(f"checkpoint {path} was written by a different run; differing "
                         f"settings (saved, now): {changed}. Use another checkpoint path.")
    return state


@torch.no_grad()
def evaluate_loss(model: torch.nn.Module, data: Any, loss_fn: Callable[..., LossOutput],
                  batch_size: int = 256, device: torch.device | str | None = None,
                  amp: bool | str = "auto") -> dict[str, float]:
    """Mean of ``loss_fn`` (and of its extra terms) over ``data``, in eval mode, without gradients.

    Batches are weighted by their size, so the result is the mean over examples.
    """
    batches = _Batches(data, "data")
    checks.positive_number("batch_size", batch_size, integer=True)
    dev = runtime.device(device) if device is not None else next(model.parameters()).device
    autocast = _autocast(dev, amp)
    was_training = model.training
    model.eval()
    totals: dict[str, torch.Tensor] = {}
    for start in range(0, batches.size, batch_size):
        index = torch.arange(start, min(start + batch_size, batches.size))
        with autocast():
            loss, extras = _split_loss(loss_fn(model, *_to(batches.take(index), dev)))
        for key, value in {"loss": loss, **extras}.items():
            totals[key] = totals.get(key, 0.0) + value.detach().float() * len(index)
    model.train(was_training)
    return {k: float(v) / batches.size for k, v in totals.items()}


def _config(batches: _Batches, batch_size: int, total: int, shuffle: bool, drop_last: bool,
            seed: int, eval_every: int) -> dict[str, Any]:
    return {"train_size": batches.size, "batch_size": batch_size, "total_steps": total,
            "shuffle": shuffle, "drop_last": drop_last, "seed": seed, "eval_every": eval_every}


def fit(model: torch.nn.Module, train: Any, *, loss_fn: Callable[..., LossOutput],
        optimizer: torch.optim.Optimizer, epochs: int | None = None, steps: int | None = None,
        batch_size: int = 64, shuffle: bool = True, drop_last: bool = False, val: Any = None,
        evaluate: Callable[[torch.nn.Module], dict[str, float]] | None = None,
        eval_every: int | None = None, scheduler: Any = None, clip_grad_norm: float | None = None,
        device: torch.device | str | None = None, amp: bool | str = "auto",
        checkpoint: str | os.PathLike | None = None, resume: bool = True, seed: int = 0,
        progress: bool = True, desc: str = "train") -> History:
    r"""Train ``model`` by minimising ``loss_fn(model, *batch)`` with ``optimizer``.

    Args:
        train: a map-style ``Dataset``, a tensor, or a tuple of tensors sharing their first dim.
        loss_fn: returns a scalar loss, or ``(loss, {name: scalar})`` to log extra terms.
        epochs, steps: how long to train; give exactly one (``steps`` may span partial epochs).
        val: optional validation data, scored with ``loss_fn`` at each evaluation point.
        evaluate: optional ``evaluate(model) -> {metric: value}`` called at evaluation points.
        eval_every: steps between evaluation points (default: one epoch); the last step always
            is one. Checkpoints are written at evaluation points.
        scheduler: stepped once per optimizer step (e.g. ``LambdaLR``).
        clip_grad_norm: rescale gradients so that :math:`\|g\|_2 \le` this value.
        amp: bf16 autocast on CUDA when ``'auto'`` or True; no effect on the CPU.
        checkpoint: a ``.safetensors`` path. If it exists and ``resume``, training continues from
            it (returning at once if it already finished); with ``resume=False`` an existing file
            is an error rather than being overwritten.
        seed: seeds the data order (the model's initialisation is the caller's business).
    Returns:
        the :class:`History`; the model is trained in place.
    Raises:
        FloatingPointError: when the loss becomes NaN or infinite, naming the step; the last
            checkpoint is left intact.
    """
    if not isinstance(model, torch.nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if not isinstance(optimizer, torch.optim.Optimizer):
        raise TypeError(f"optimizer must be a torch.optim.Optimizer, got {type(optimizer).__name__}")
    if not callable(loss_fn):
        raise TypeError(f"loss_fn must be callable, got {type(loss_fn).__name__}")
    if evaluate is not None and not callable(evaluate):
        raise TypeError(f"evaluate must be callable, got {type(evaluate).__name__}")
    if (epochs is None) == (steps is None):
        raise ValueError("give exactly one of epochs and steps")
    checks.positive_number("batch_size", batch_size, integer=True)
    checks.positive_number("seed", seed, integer=True, allow_zero=True)
    if clip_grad_norm is not None:
        checks.positive_number("clip_grad_norm", clip_grad_norm)
    batches = _Batches(train, "train")
    per_epoch = batches.size // batch_size if drop_last else math.ceil(batches.size / batch_size)
    if per_epoch == 0:
        raise ValueError(f"batch_size={batch_size} exceeds the {batches.size} training examples "
                         f"with drop_last=True: no full batch")
    if epochs is not None:
        total = per_epoch * checks.positive_number("epochs", epochs, integer=True)
    else:
        total = checks.positive_number("steps", steps, integer=True)
    eval_every = per_epoch if eval_every is None else checks.positive_number(
        "eval_every", eval_every, integer=True)
    dev = runtime.device(device) if device is not None else runtime.device()
    autocast = _autocast(dev, amp)
    model.to(dev)
    config = _config(batches, batch_size, total, shuffle, drop_last, seed, eval_every)

    path = ckpt._path(checkpoint, "checkpoint") if checkpoint is not None else None
    history, step = History(), 0
    order_rng = torch.Generator().manual_seed(seed)
    epoch_rng_state = order_rng.get_state()
    state = _open_checkpoint(path, resume, config)
    if state is not None:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        if scheduler is not None and state.get("scheduler") is not None:
            scheduler.load_state_dict(state["scheduler"])
        history, step = History.from_dict(state["history"]), state["step"]
        epoch_rng_state = state["epoch_rng_state"]
        ckpt.set_rng_state(state["rng"])
        message = "training had finished; loaded" if step >= total else "resuming"
        tqdm.write(f"fit: {message} {path.name} at step {step}/{total}")
    if step >= total:
        return history

    params = [p for group in optimizer.param_groups for p in group["params"]]
    # Per-step costs matter for small models (benchmarks/fit_overhead.py), so the loop decides
    # once: whether batches must be moved to the device, whether to autocast, and how often to
    # read the loss. On the CPU reading it is free, so every loss is checked before its step;
    # on a GPU that would synchronise each step, so losses are read every 25 steps.
    move = batches.tensors is None or any(t.device != dev for t in batches.tensors)
    use_autocast = autocast is not nullcontext
    sync_every = _sync_interval(dev)
    pending: list[torch.Tensor] = []
    sums: dict[str, torch.Tensor] = {}
    grad_norms: list[torch.Tensor] = []
    since_record = 0
    started = time.perf_counter()

    def flush() -> None:
        if not pending:
            return
        values = torch.stack(pending).float().cpu().tolist()
        first = step - len(values) + 1
        for offset, value in enumerate(values):
            if not math.isfinite(value):
                _stop(value, first + offset, per_epoch, path)
        history.step_losses.extend(values)
        pending.clear()

    def record() -> None:
        nonlocal since_record, started
        flush()
        row: dict[str, float] = {"step": step, "epoch": step / per_epoch}
        row["train_loss"] = sum(history.step_losses[-since_record:]) / since_record
        for key, value in sums.items():
            row[key] = float(value) / since_record
        if grad_norms:
            row["grad_norm"] = float(torch.stack(grad_norms).mean())
        if val is not None:
            val_terms = evaluate_loss(model, val, loss_fn, batch_size=max(batch_size, 256),
                                      device=dev, amp=amp)
            row.update({f"val_{k}": v for k, v in val_terms.items()})
        if evaluate is not None:
            model.eval()
            with torch.no_grad():
                row.update({k: float(v) for k, v in evaluate(model).items()})
            model.train()
        row["lr"] = optimizer.param_groups[0]["lr"]
        history.seconds += time.perf_counter() - started
        row["seconds"] = history.seconds
        history.records.append(row)
        sums.clear()
        grad_norms.clear()
        since_record = 0
        started = time.perf_counter()

    model.train()
    bar = tqdm(total=total, initial=step, desc=desc, disable=not progress, mininterval=0.5,
               dynamic_ncols=True)
    try:
        while step < total:
            position = step % per_epoch
            order_rng.set_state(epoch_rng_state)
            order = (torch.randperm(batches.size, generator=order_rng) if shuffle
                     else torch.arange(batches.size))
            for start in range(position * batch_size, per_epoch * batch_size, batch_size):
                batch = batches.take(order[start:start + batch_size])
                if move:
                    batch = _to(batch, dev)
                if use_autocast:
                    with autocast():
                        output = loss_fn(model, *batch)
                else:
                    output = loss_fn(model, *batch)
                loss, extras = _split_loss(output)
                step += 1
                since_record += 1
                if sync_every == 1:
                    value = loss.item()
                    if not math.isfinite(value):
                        _stop(value, step, per_epoch, path)
                    history.step_losses.append(value)
                else:
                    pending.append(loss.detach())
                    if len(pending) >= sync_every:
                        flush()
                for key, value in extras.items():
                    sums[key] = sums.get(key, 0.0) + value.detach().float()
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                if clip_grad_norm is not None:
                    grad_norms.append(torch.nn.utils.clip_grad_norm_(params, clip_grad_norm))
                optimizer.step()
                if scheduler is not None:
                    scheduler.step()
                bar.update()
                if step % eval_every == 0 or step == total:
                    if step % per_epoch == 0:
                        epoch_rng_state = order_rng.get_state()
                    record()
                    bar.set_postfix(loss=f"{history.records[-1]['train_loss']:.4f}", refresh=False)
                    if path is not None:
                        _save(path, model, optimizer, scheduler, history, step, config,
                              epoch_rng_state)
                if step >= total:
                    break
            else:
                epoch_rng_state = order_rng.get_state()
    finally:
        bar.close()
    return history


def _save(path: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer, scheduler: Any,
          history: History, step: int, config: dict[str, Any], epoch_rng_state: torch.Tensor) -> None:
    ckpt.save_state(path, {
        "model": model.state_dict(), "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict() if scheduler is not None else None,
        "history": history.to_dict(), "step": step, "config": config,
        "epoch_rng_state": epoch_rng_state, "rng": ckpt.rng_state()})


# --- Chapter 4: training a GAN -------------------------------------------------------------------

@dataclass
class GANHistory(History):
    """What :func:`fit_gan` measured: ``d_losses`` and ``g_losses`` hold the discriminator's and
    the generator's loss at every step; ``records`` hold, per evaluation point, ``step``,
    ``epoch``, ``d_loss`` and ``g_loss`` (means since the last record), the extra terms the loss
    functions return (by default ``d_real`` and ``d_fake``, the mean of :math:`D(x)` on real and
    generated batches), ``d_grad_norm`` and ``g_grad_norm`` (mean gradient norms), any
    ``evaluate`` metrics and ``seconds``. ``step_losses`` stays empty."""
    d_losses: list[float] = field(default_factory=list)
    g_losses: list[float] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {**super().to_dict(), "d_losses": self.d_losses, "g_losses": self.g_losses}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> GANHistory:
        return cls([], [dict(r) for r in data["records"]], float(data["seconds"]),
                   list(data["d_losses"]), list(data["g_losses"]))


def _grad_norm(params: Sequence[torch.nn.Parameter]) -> torch.Tensor:
    r""":math:`\|g\|_2` over every parameter that has a gradient (0 when none has)."""
    norms = [p.grad.detach().norm() for p in params if p.grad is not None]
    return torch.stack(norms).norm() if norms else torch.zeros(())


def _d_loss_default(discriminator: torch.nn.Module, real: torch.Tensor,
                    fake: torch.Tensor) -> LossOutput:
    logits = discriminator(torch.cat([real, fake]))   # one forward pass for both batches
    real_logits, fake_logits = logits[:len(logits) // 2], logits[len(logits) // 2:]
    loss = losses.gan_discriminator_loss(real_logits, fake_logits)
    return loss, {"d_real": torch.sigmoid(real_logits.detach()).mean(),
                  "d_fake": torch.sigmoid(fake_logits.detach()).mean()}


def _g_loss_default(saturating: bool) -> Callable[..., LossOutput]:
    def g_loss(discriminator: torch.nn.Module, fake: torch.Tensor) -> torch.Tensor:
        return losses.gan_generator_loss(discriminator(fake), saturating=saturating)
    return g_loss


def fit_gan(generator: torch.nn.Module, discriminator: torch.nn.Module, train: Any, *,
            g_optimizer: torch.optim.Optimizer, d_optimizer: torch.optim.Optimizer, steps: int,
            batch_size: int = 64, d_steps: int = 1, saturating: bool = False,
            d_loss_fn: Callable[..., LossOutput] | None = None,
            g_loss_fn: Callable[..., LossOutput] | None = None,
            evaluate: Callable[[torch.nn.Module, torch.nn.Module], dict[str, float]] | None = None,
            eval_every: int | None = None, g_scheduler: Any = None, d_scheduler: Any = None,
            device: torch.device | str | None = None, amp: bool | str = "auto",
            checkpoint: str | os.PathLike | None = None, resume: bool = True, seed: int = 0,
            progress: bool = True, desc: str = "GAN") -> GANHistory:
    r"""Train a GAN by alternating gradient steps on its two players (chapter 4).

    One step: ``d_steps`` times, take a batch of ``batch_size`` real examples and as many
    generated ones :math:`G(z)`, :math:`z \sim \mathcal N(0, I_k)` with
    :math:`k` = ``generator.latent_dim``, and take a ``d_optimizer`` step on the discriminator's
    loss (by default :func:`aigc_lib.losses.gan_discriminator_loss`); then take a
    ``g_optimizer`` step on the generator's loss, computed on the last batch of generated
    examples against the *updated* discriminator (by default
    :func:`aigc_lib.losses.gan_generator_loss`, non-saturating unless ``saturating``).

    It shares its parts with :func:`fit`: the batching of ``train`` (a tensor of real examples,
    or a tuple/``Dataset`` whose first element is the example; labels are ignored), bf16 autocast
    on CUDA, the NaN guard (both losses are checked before their optimizer steps), the
    safetensors checkpoint written at each evaluation point and the bit-identical resume (the
    noise generator, the data order and every random generator are part of the checkpoint).

    Args:
        steps: generator steps to take in all. Real batches are drawn without replacement, in a
            new order each epoch; the last incomplete batch of an epoch is dropped.
        d_loss_fn: ``d_loss_fn(discriminator, real, fake) -> loss`` or ``(loss, {name: scalar})``.
        g_loss_fn: ``g_loss_fn(discriminator, fake) -> loss`` or ``(loss, {name: scalar})``;
            cannot be combined with ``saturating=True``.
        evaluate: ``evaluate(generator, discriminator) -> {metric: value}``, called at each
            evaluation point in eval mode and without gradients (use ``torch.enable_grad()``
            inside it to measure gradients).
        eval_every: steps between evaluation points (default: one epoch of real batches); the
            last step always is one.
        g_scheduler, d_scheduler: learning-rate schedulers (e.g. ``LambdaLR``), each stepped once
            per step, after its optimizer's last update.
        checkpoint, resume, seed, device, amp, progress, desc: as in :func:`fit`; ``seed`` seeds
            the data order and the noise (initialisations are the caller's business).
    Returns:
        the :class:`GANHistory`; both networks are trained in place.
    Raises:
        FloatingPointError: when either loss becomes NaN or infinite, naming it and the step.
            On the CPU both are checked before their optimizer steps; on a GPU, as in
            :func:`fit`, they are read every 25 steps, so the error can come up to 24 steps
            late (always before the next checkpoint is written).
    """
    for name, value in (("generator", generator), ("discriminator", discriminator)):
        if not isinstance(value, torch.nn.Module):
            raise TypeError(f"{name} must be a torch.nn.Module, got {type(value).__name__}")
    latent_dim = getattr(generator, "latent_dim", None)
    if isinstance(latent_dim, bool) or not isinstance(latent_dim, int) or latent_dim < 1:
        raise TypeError("generator must have an int attribute latent_dim (the size of z), e.g. "
                        "aigc_lib.models.gan.Generator")
    for name, value in (("g_optimizer", g_optimizer), ("d_optimizer", d_optimizer)):
        if not isinstance(value, torch.optim.Optimizer):
            raise TypeError(f"{name} must be a torch.optim.Optimizer, got {type(value).__name__}")
    if g_optimizer is d_optimizer:
        raise ValueError("g_optimizer and d_optimizer must be two different optimizers")
    for name, value in (("d_loss_fn", d_loss_fn), ("g_loss_fn", g_loss_fn),
                        ("evaluate", evaluate)):
        if value is not None and not callable(value):
            raise TypeError(f"{name} must be callable, got {type(value).__name__}")
    if not isinstance(saturating, bool):
        raise TypeError(f"saturating must be a bool, got {type(saturating).__name__}")
    if saturating and g_loss_fn is not None:
        raise ValueError("give either saturating=True or g_loss_fn, not both")
    total = checks.positive_number("steps", steps, integer=True)
    checks.positive_number("batch_size", batch_size, integer=True)
    checks.positive_number("d_steps", d_steps, integer=True)
    checks.positive_number("seed", seed, integer=True, allow_zero=True)
    batches = _Batches(train, "train")
    per_epoch = batches.size // batch_size
    if per_epoch == 0:
        raise ValueError(f"batch_size={batch_size} exceeds the {batches.size} training examples")
    steps_per_epoch = max(1, per_epoch // d_steps)
    eval_every = steps_per_epoch if eval_every is None else checks.positive_number(
        "eval_every", eval_every, integer=True)
    d_loss_fn = d_loss_fn or _d_loss_default
    g_loss_fn = g_loss_fn or _g_loss_default(saturating)
    dev = runtime.device(device) if device is not None else runtime.device()
    autocast = _autocast(dev, amp)
    generator.to(dev)
    discriminator.to(dev)
    config = {"train_size": batches.size, "batch_size": batch_size, "total_steps": total,
              "d_steps": d_steps, "saturating": saturating, "seed": seed,
              "eval_every": eval_every}
    path = ckpt._path(checkpoint, "checkpoint") if checkpoint is not None else None
    noise_rng = torch.Generator().manual_seed(seed)
    history, step = GANHistory(), 0
    state = _open_checkpoint(path, resume, config)
    if state is not None:
        for module, key in ((generator, "generator"), (discriminator, "discriminator"),
                            (g_optimizer, "g_optimizer"), (d_optimizer, "d_optimizer"),
                            (g_scheduler, "g_scheduler"), (d_scheduler, "d_scheduler")):
            if module is not None and state.get(key) is not None:
                module.load_state_dict(state[key])
        history, step = GANHistory.from_dict(state["history"]), state["step"]
        noise_rng.set_state(state["noise_rng"])
        ckpt.set_rng_state(state["rng"])
        message = "training had finished; loaded" if step >= total else "resuming"
        tqdm.write(f"fit_gan: {message} {path.name} at step {step}/{total}")
    if step >= total:
        return history

    g_params = [p for group in g_optimizer.param_groups for p in group["params"]]
    d_params = [p for group in d_optimizer.param_groups for p in group["params"]]
    sync_every = _sync_interval(dev)   # as in fit: never synchronise a GPU at each step
    pending: list[tuple[int, torch.Tensor, torch.Tensor]] = []
    sums: dict[str, torch.Tensor] = {}
    since_record, started = 0, time.perf_counter()
    order_epoch, order = -1, torch.empty(0, dtype=torch.long)

    def real_batch(index: int) -> torch.Tensor:
        """Real batch number ``index`` (counted from the start of training)."""
        nonlocal order_epoch, order
        epoch, position = divmod(index, per_epoch)
        if epoch != order_epoch:   # the order of each epoch depends on (seed, epoch) only
            rng = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
            order_epoch, order = epoch, torch.randperm(batches.size, generator=rng)
        batch = batches.take(order[position * batch_size:(position + 1) * batch_size])
        return batch[0].to(dev, non_blocking=True)

    def check(values: Sequence[tuple[int, float, float]]) -> None:
        for at, d_value, g_value in values:
            for name, value in (("discriminator loss", d_value), ("generator loss", g_value)):
                if not math.isfinite(value):
                    _stop(value, at, steps_per_epoch, path, name)
            history.d_losses.append(d_value)
            history.g_losses.append(g_value)

    def flush() -> None:
        if pending:
            values = torch.stack([torch.stack([d, g]) for _, d, g in pending]).float().tolist()
            check([(at, d, g) for (at, _, _), (d, g) in zip(pending, values)])
            pending.clear()

    def add(terms: Mapping[str, torch.Tensor]) -> None:
        for key, value in terms.items():
            sums[key] = sums.get(key, 0.0) + value.detach().float()

    def record() -> None:
        nonlocal since_record, started
        flush()
        row: dict[str, float] = {"step": step, "epoch": step * d_steps / per_epoch}
        row["d_loss"] = sum(history.d_losses[-since_record:]) / since_record
        row["g_loss"] = sum(history.g_losses[-since_record:]) / since_record
        row.update({key: float(value) / since_record for key, value in sums.items()})
        if evaluate is not None:
            generator.eval()
            discriminator.eval()
            with torch.no_grad():
                row.update({k: float(v) for k, v in evaluate(generator, discriminator).items()})
            generator.train()
            discriminator.train()
        history.seconds += time.perf_counter() - started
        row["seconds"] = history.seconds
        history.records.append(row)
        sums.clear()
        since_record, started = 0, time.perf_counter()

    def backward_step(loss: torch.Tensor, optimizer: torch.optim.Optimizer,
                      params: list[torch.nn.Parameter], name: str) -> None:
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        add({f"{name}_grad_norm": _grad_norm(params)})
        optimizer.step()

    generator.train()
    discriminator.train()
    bar = tqdm(total=total, initial=step, desc=desc, disable=not progress, mininterval=0.5,
               dynamic_ncols=True)
    try:
        while step < total:
            for i in range(d_steps):
                real = real_batch(step * d_steps + i)
                z = torch.randn(len(real), latent_dim, generator=noise_rng).to(dev)
                last = i == d_steps - 1   # only the last batch of fakes is kept for G's step
                with autocast():
                    with nullcontext() if last else torch.no_grad():
                        fake = generator(z)
                    d_loss, d_extras = _split_loss(d_loss_fn(discriminator, real, fake.detach()))
                if sync_every == 1:   # on the CPU, check before the step is taken
                    d_value = d_loss.item()
                    if not math.isfinite(d_value):
                        _stop(d_value, step + 1, steps_per_epoch, path, "discriminator loss")
                backward_step(d_loss, d_optimizer, d_params, "d")
                add(d_extras)
            discriminator.requires_grad_(False)   # the generator's step needs no D gradients
            try:
                with autocast():
                    g_loss, g_extras = _split_loss(g_loss_fn(discriminator, fake))
                step += 1
                since_record += 1
                if sync_every == 1:
                    check([(step, d_value, g_loss.item())])
                else:
                    pending.append((step, d_loss.detach(), g_loss.detach()))
                    if len(pending) >= sync_every:
                        flush()
                backward_step(g_loss, g_optimizer, g_params, "g")
            finally:
                discriminator.requires_grad_(True)
            add(g_extras)
            for scheduler in (g_scheduler, d_scheduler):
                if scheduler is not None:
                    scheduler.step()
            bar.update()
            if step % eval_every == 0 or step == total:
                record()
                last_row = history.records[-1]
                bar.set_postfix(d=f"{last_row['d_loss']:.3f}", g=f"{last_row['g_loss']:.3f}",
                                refresh=False)
                if path is not None:
                    ckpt.save_state(path, {
                        "generator": generator.state_dict(),
                        "discriminator": discriminator.state_dict(),
                        "g_optimizer": g_optimizer.state_dict(),
                        "d_optimizer": d_optimizer.state_dict(),
                        "g_scheduler": g_scheduler.state_dict() if g_scheduler else None,
                        "d_scheduler": d_scheduler.state_dict() if d_scheduler else None,
                        "history": history.to_dict(), "step": step, "config": config,
                        "noise_rng": noise_rng.get_state(), "rng": ckpt.rng_state()})
    finally:
        bar.close()
    return history
