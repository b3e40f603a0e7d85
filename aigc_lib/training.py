"""One training engine (chapter 2): :func:`fit` for a model and a loss, and the GAN routine of
chapter 4 (:mod:`aigc_lib.gan_training`), each a *step function* run by the same loop.

The loop, :func:`run`, knows nothing about models or losses. At each step it takes the step's
batch (its share of it when ``torchrun`` starts several processes), calls
``step(batch, state)``, which runs the forward and backward passes and the optimizer steps and
returns what to log, and at every evaluation point appends a record to the history and writes a
checkpoint. A :class:`TrainState` holds everything a run is made of (modules, optimizers,
schedulers, random generators, history, step), so a checkpoint saves and restores it in one
round trip, and a resumed run is the uninterrupted one, bit for bit: the data order of epoch
``e`` is a function of ``e`` and the seed alone, and every random generator is saved.

Losses stay on the device: they are read (and checked for NaN) every ``sync_interval`` steps,
every step on the CPU where reading is free, every 25 on a GPU where it would stall the device.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable, Mapping
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any, ClassVar

import torch
from torch.utils.data import Dataset, TensorDataset
from torch.utils.data._utils.collate import default_collate
from tqdm.auto import tqdm

from aigc_lib import checkpoint as ckpt
from aigc_lib import checks, runtime

LossOutput = torch.Tensor | tuple[torch.Tensor, dict[str, torch.Tensor]]
Order = Callable[[int], torch.Tensor]
FORMAT = 2   # version of the checkpoint layout, part of every run's settings


@dataclass
class History:
    """What ``fit`` measured.

    ``step_losses`` holds the training loss of every step; ``records`` one dict per evaluation
    point with ``step``, ``epoch`` (fractional), ``train_loss`` (mean since the last record), any
    extra terms returned by the loss, ``grad_norm`` (mean pre-clipping norm, when clipping),
    ``val_loss``, ``evaluate`` metrics, ``lr`` and ``seconds`` (training time so far).
    """
    step_losses: list[float] = field(default_factory=list)
    records: list[dict[str, float]] = field(default_factory=list)
    seconds: float = 0.0
    # the losses a step watches: name -> (list of per-step values, key of their mean in a record)
    LOSSES: ClassVar[dict[str, tuple[str, str]]] = {"loss": ("step_losses", "train_loss")}

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


# --- the data: examples, their order, and the batch of each step ---------------------------------

class Examples:
    """Index-based access to tensors (fast path) or to any map-style ``Dataset``."""

    def __init__(self, data: Any, name: str):
        if isinstance(data, torch.Tensor):
            data = (data,)
        if isinstance(data, TensorDataset):
            data = tuple(data.tensors)
        if isinstance(data, (tuple, list)):
            if not data or not all(isinstance(t, torch.Tensor) for t in data):
                raise TypeError(f"{name} must be a Dataset, a tensor, or a tuple of tensors")
            if len({len(t) for t in data}) != 1:
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
        for i, t in enumerate(self.tensors or ()):   # once, here: never inside a step
            if t.is_floating_point() and not checks.all_finite(t):
                raise ValueError(f"{name} contains NaN or infinite values (tensor {i})")

    def take(self, index: torch.Tensor) -> tuple[torch.Tensor, ...]:
        if self.tensors is not None:
            return tuple([t[index] for t in self.tensors])
        batch = default_collate([self.dataset[i] for i in index.tolist()])
        return tuple(batch) if isinstance(batch, (tuple, list)) else (batch,)


class _Replay:
    """``order(epoch)``: epoch ``e`` gets the ``(e+1)``-th result of ``draw(generator)`` from one
    generator seeded with ``seed`` (the order of a loop that shuffles once per epoch), replayed
    from the seed when an earlier epoch is asked for, as after resuming."""

    def __init__(self, draw: Callable[[torch.Generator], torch.Tensor], seed: int):
        self.draw, self.seed = draw, seed
        self.generator, self.next_epoch, self.last = torch.Generator(), 0, None

    def __call__(self, epoch: int) -> torch.Tensor:
        if epoch < self.next_epoch - 1 or self.last is None:
            self.generator.manual_seed(self.seed)
            self.next_epoch = 0
        while self.next_epoch <= epoch:
            self.last, self.next_epoch = self.draw(self.generator), self.next_epoch + 1
        return self.last


def seeded_order(draw: Callable[[torch.Generator], torch.Tensor], seed: int) -> Order:
    """The data-order hook of :func:`fit` for orders drawn from one seeded generator, epoch after
    epoch: ``seeded_order(lambda g: torch.randperm(n, generator=g), seed)`` is ``fit``'s shuffle.
    A function of the epoch alone, so resuming (or another process) gets the same order."""
    if not callable(draw):
        raise TypeError(f"draw must be callable, got {type(draw).__name__}")
    checks.positive_number("seed", seed, integer=True, allow_zero=True)
    return _Replay(draw, seed)


def shuffled(n: int, seed: int) -> Order:
    """``fit``'s default order: a fresh random permutation of ``n`` examples every epoch."""
    return seeded_order(lambda generator: torch.randperm(n, generator=generator), seed)


@dataclass(frozen=True)
class Processes:
    """This process's ``rank`` among ``world`` processes (1 unless started by ``torchrun``)."""
    rank: int = 0
    world: int = 1

    def mean(self, values: torch.Tensor) -> torch.Tensor:
        """The mean of ``values`` over the processes (``values`` itself for one process)."""
        if self.world == 1:
            return values
        values = values.clone()
        torch.distributed.all_reduce(values)           # a sum: gloo has no average
        return values / self.world

    def gather(self, obj: Any) -> list[Any]:
        """``obj`` of every process, by rank."""
        if self.world == 1:
            return [obj]
        out: list[Any] = [None] * self.world
        torch.distributed.all_gather_object(out, obj)
        return out


def processes() -> Processes:
    """The processes training together. Under ``torchrun`` (``WORLD_SIZE`` > 1) this sets up
    ``torch.distributed`` on first use (gloo on the CPU, NCCL for CUDA tensors, each process on
    the GPU numbered by its ``LOCAL_RANK``); otherwise one process."""
    dist = torch.distributed
    if not dist.is_available() or int(os.environ.get("WORLD_SIZE", "1")) == 1:
        return Processes()
    if not dist.is_initialized():
        if torch.cuda.is_available():
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        dist.init_process_group("cpu:gloo,cuda:nccl" if torch.cuda.is_available() else "gloo")
    return Processes(dist.get_rank(), dist.get_world_size())


CUT_AT_ONCE = 1024    # batches cut from an epoch's order at a time: one split, bounded memory


class Stream:
    """The batch of every step: ``per_step`` consecutive batches of ``batch_size`` examples cut
    from each epoch's order, this process's share of each, moved to the device."""

    def __init__(self, examples: Examples, batch_size: int, drop_last: bool, order: Order,
                 dev: torch.device, procs: Processes, per_step: int = 1):
        self.examples, self.batch_size, self.order, self.dev = examples, batch_size, order, dev
        self.per_step, self.rank, self.world = per_step, procs.rank, procs.world
        size = examples.size
        self.per_epoch = size // batch_size if drop_last else math.ceil(size / batch_size)
        if self.per_epoch == 0:
            raise ValueError(f"batch_size={batch_size} exceeds the {size} training examples "
                             f"with drop_last=True: no full batch")
        last = size - (self.per_epoch - 1) * batch_size
        if batch_size % procs.world or (last < batch_size and last % procs.world):
            raise ValueError(f"under {procs.world} processes every batch must split evenly: "
                             f"batch_size={batch_size} (the global batch) and the last batch of an "
                             f"epoch ({last} examples) must be multiples of {procs.world}; change "
                             f"batch_size or pass drop_last=True")
        self.move = examples.tensors is None or any(t.device != dev for t in examples.tensors)
        # an order indexes the tensors where they are: no copy of indices per step
        self.home = examples.tensors[0].device if examples.tensors else torch.device("cpu")
        self.epoch, self.current = -1, torch.empty(0, dtype=torch.long)   # epoch's order
        self.block, self.batches = -1, []              # the stretch of it cut into batches

    def rows(self, number: int) -> torch.Tensor:
        """The indices of batch ``number`` (counted from the start of training) that this
        process reads. The epoch's order is cut into batches ``CUT_AT_ONCE`` at a time."""
        epoch, position = divmod(number, self.per_epoch)
        if epoch != self.epoch:
            self.epoch, self.block = epoch, -1
            self.current = self._checked(self.order(epoch), epoch).to(self.home)
        block, within = divmod(position, CUT_AT_ONCE)
        if block != self.block:
            self.block, size = block, self.batch_size
            stretch = self.current[block * CUT_AT_ONCE * size:(block + 1) * CUT_AT_ONCE * size]
            self.batches = [self._share(b) for b in stretch.split(size)]
        return self.batches[within]

    def _share(self, rows: torch.Tensor) -> torch.Tensor:
        """This process's part of a batch's ``rows``."""
        if self.world == 1:
            return rows
        share = len(rows) // self.world
        return rows[self.rank * share:(self.rank + 1) * share]

    def for_step(self, step: int) -> tuple[torch.Tensor, ...]:
        index = self.rows(step) if self.per_step == 1 else torch.cat(
            [self.rows(step * self.per_step + i) for i in range(self.per_step)])
        batch = self.examples.take(index)
        return tuple(t.to(self.dev, non_blocking=True) for t in batch) if self.move else batch

    def _checked(self, order: Any, epoch: int) -> torch.Tensor:
        n = self.examples.size
        if not isinstance(order, torch.Tensor) or order.dtype != torch.long or order.shape != (n,):
            what = (f"{order.dtype} tensor of shape {tuple(order.shape)}"
                    if isinstance(order, torch.Tensor) else type(order).__name__)
            raise TypeError(f"order({epoch}) must return an int64 tensor of shape ({n},) (an "
                            f"order of the training examples), got {what}")
        return order


# --- the state of a run, and the losses of its steps -----------------------------------------------

class _LossLog:
    """The losses a step watches and the terms it returns, kept on the device and read every
    ``interval`` steps (at once, before the update, when ``interval`` is 1)."""

    def __init__(self, history: History, interval: int, procs: Processes,
                 stop: Callable[[str, float, int], None], step: int):
        self.history, self.interval, self.procs, self.stop = history, interval, procs, stop
        self.pending: list[tuple[int, str, torch.Tensor]] = []
        self.sums: dict[str, torch.Tensor] = {}
        self.since, self.started = step, time.perf_counter()
        self.last: tuple[int, str] | None = None       # the step and name kept last
        self.count = 0                                  # how many values that mean holds
        self.columns = {name: getattr(history, attr) for name, (attr, _) in
                        history.LOSSES.items()}

    def watch(self, step: int, name: str, loss: torch.Tensor) -> None:
        if self.interval > 1:
            self.pending.append((step, name, loss.detach()))
            return
        value = loss.item() if self.procs.world == 1 else self._read([loss.detach()])[0]
        if not math.isfinite(value):
            self.stop(name, value, step)
        self._keep(step, name, value)

    def end_step(self, step: int, terms: Mapping[str, torch.Tensor]) -> None:
        """Add the step's extra ``terms``; every ``interval`` steps, read the losses of the
        last ``interval`` steps."""
        for key, value in terms.items():
            self.sums[key] = self.sums.get(key, 0.0) + value.detach().float()
        if self.interval > 1 and step % self.interval == 0:
            self.flush()

    def flush(self) -> None:
        """Read the pending losses (one device synchronisation), check them, keep them."""
        if not self.pending:
            return
        values = self._read([v for _, _, v in self.pending])
        for (step, name, _), value in zip(self.pending, values):
            if not math.isfinite(value):
                self.stop(name, value, step)
            self._keep(step, name, value)
        self.pending.clear()

    def _keep(self, step: int, name: str, value: float) -> None:
        """Append ``value`` to the history's list for ``name``; a second value of the same
        step and name (``d_steps > 1``) joins the first in their mean."""
        column, key = self.columns[name], (step, name)
        if key == self.last:
            self.count += 1
            column[-1] += (value - column[-1]) / self.count
        else:
            self.last, self.count = key, 1
            column.append(value)

    def means(self, step: int) -> dict[str, float]:
        """Mean of every loss and term since the last record; starts the next period."""
        self.flush()
        count, row = step - self.since, {}
        for attr, key in self.history.LOSSES.values():
            row[key] = sum(getattr(self.history, attr)[-count:]) / count
        if self.sums:
            values = self._read(list(self.sums.values()))
            row.update({key: value / count for key, value in zip(self.sums, values)})
        self.sums.clear()
        self.since = step
        return row

    def seconds(self) -> float:
        """Training time since the last call (evaluation included)."""
        now = time.perf_counter()
        elapsed, self.started = now - self.started, now
        return elapsed

    def _read(self, tensors: list[torch.Tensor]) -> list[float]:
        return self.procs.mean(torch.stack(tensors).float()).tolist()


@dataclass
class TrainState:
    """Everything a run is made of, by name: ``modules``, ``optimizers``, ``schedulers``, random
    ``generators`` of the step (the GAN's noise), the ``history`` and the ``step`` count.
    :meth:`state_dict` and :meth:`load_state_dict` give the checkpoint's content and take it
    back, in one round trip. A step function calls :meth:`watch` on each loss before its update.
    """
    modules: dict[str, torch.nn.Module]
    optimizers: dict[str, torch.optim.Optimizer]
    schedulers: dict[str, Any] = field(default_factory=dict)
    generators: dict[str, torch.Generator] = field(default_factory=dict)
    history: History = field(default_factory=History)
    step: int = 0
    log: _LossLog | None = field(default=None, repr=False)

    def watch(self, name: str, loss: torch.Tensor) -> None:
        """Log ``loss`` as this step's ``name`` (a key of ``history.LOSSES``); when losses are
        read every step, stop here, before the update, if it is not finite."""
        self.log.watch(self.step + 1, name, loss)

    def _parts(self) -> dict[str, Any]:
        return {**self.modules, **self.optimizers,
                **{k: s for k, s in self.schedulers.items() if s is not None}}

    def state_dict(self) -> dict[str, Any]:
        return {**{k: part.state_dict() for k, part in self._parts().items()},
                **{k: g.get_state() for k, g in self.generators.items()},
                "history": self.history.to_dict(), "step": self.step}

    def load_state_dict(self, saved: Mapping[str, Any]) -> None:
        for key, part in self._parts().items():
            part.load_state_dict(saved[key])
        for key, generator in self.generators.items():
            generator.set_state(saved[key])
        self.history = type(self.history).from_dict(saved["history"])
        self.step = saved["step"]

    def names(self) -> list[str]:
        """The names of the parts that a checkpoint holds (part of a run's settings)."""
        return sorted([*self._parts(), *self.generators])


# --- the loop -----------------------------------------------------------------------------------

Step = Callable[[tuple[torch.Tensor, ...], TrainState], Mapping[str, torch.Tensor]]


def run(state: TrainState, step: Step, stream: Stream, total: int, eval_every: int,
        record: Callable[[TrainState], Mapping[str, str]], save: Callable[[TrainState], None],
        progress: bool = True, desc: str = "train") -> None:
    """The training loop that :func:`fit` and :func:`aigc_lib.gan_training.fit_gan` share
    (chapter 2): steps until ``total``; a record and a checkpoint every ``eval_every`` steps and
    after the last. ``step(batch, state)`` does one update and returns the terms to average.
    The progress bar shows once training has run half a second (shorter runs draw nothing)."""
    bar = tqdm(total=total, initial=state.step, desc=desc, disable=not progress,
               delay=0.5, mininterval=0.5, dynamic_ncols=True)
    try:
        while state.step < total:
            batch = stream.for_step(state.step)        # this process's share, on the device
            terms = step(batch, state)                 # forward, backward, optimizer steps
            state.step += 1
            state.log.end_step(state.step, terms)      # every sync_interval steps: NaN guard
            bar.update()
            if state.step % eval_every == 0 or state.step == total:
                bar.set_postfix(record(state), refresh=False)
                save(state)                            # process 0 writes the checkpoint
    finally:
        bar.close()


def supervised_step(model: torch.nn.Module, loss_fn: Callable[..., LossOutput],
                    optimizer: torch.optim.Optimizer, scheduler: Any = None,
                    clip_grad_norm: float | None = None, autocast: Callable = nullcontext) -> Step:
    r"""The step of :func:`fit`: the loss of the batch, its gradient, the clipped update
    :math:`g \leftarrow g\,\min(1, c/\|g\|_2)` (with ``clip_grad_norm`` :math:`= c`), and one step
    of the optimizer and the scheduler. Returns the extra terms of the loss (and ``grad_norm``)."""
    params = [p for group in optimizer.param_groups for p in group["params"]]

    def step(batch: tuple[torch.Tensor, ...], state: TrainState) -> Mapping[str, torch.Tensor]:
        if autocast is nullcontext:                   # no autocast: no context to enter
            output = loss_fn(model, *batch)
        else:
            with autocast():
                output = loss_fn(model, *batch)
        loss, extras = split_loss(output, "loss_fn")
        state.watch("loss", loss)                     # checked before the update on the CPU
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if clip_grad_norm is not None:
            norm = torch.nn.utils.clip_grad_norm_(params, clip_grad_norm)
            extras = {**extras, "grad_norm": norm}
        optimizer.step()
        if scheduler is not None:
            scheduler.step()
        return extras
    return step


# --- helpers the two routines share -----------------------------------------------------------------

_NO_EXTRAS: Mapping[str, torch.Tensor] = MappingProxyType({})


def split_loss(output: LossOutput, name: str) -> tuple[torch.Tensor, Mapping[str, torch.Tensor]]:
    """``(loss, extras)`` from what a loss function returned, checked by shape and type only."""
    if isinstance(output, torch.Tensor) and output.ndim == 0:
        return output, _NO_EXTRAS                      # the common case, checked cheaply
    loss, extras = (output if isinstance(output, tuple) and len(output) == 2 else (output, {}))
    if not isinstance(loss, torch.Tensor) or loss.ndim != 0:
        raise TypeError(f"{name} must return a scalar tensor, or (scalar tensor, dict of scalar "
                        f"tensors); got {type(loss).__name__} "
                        f"{tuple(loss.shape) if isinstance(loss, torch.Tensor) else ''}")
    if not isinstance(extras, Mapping):
        raise TypeError(f"{name} returned extras of type {type(extras).__name__}; expected a dict "
                        f"of scalar tensors")
    for key, value in extras.items():
        if not isinstance(value, torch.Tensor) or value.ndim != 0:
            raise TypeError(f"{name} returned extra term {key!r} of type {type(value).__name__}"
                            f"{tuple(value.shape) if isinstance(value, torch.Tensor) else ''}; "
                            f"extra terms must be scalar tensors (use .mean(), not .item())")
    return loss, extras


def metrics(evaluate: Callable[..., Any], *modules: torch.nn.Module) -> dict[str, float]:
    """``evaluate(*modules)`` in eval mode without gradients, checked to be ``{name: number}``."""
    with runtime.eval_mode(*modules), torch.no_grad():
        result = evaluate(*modules)
    if not isinstance(result, Mapping):
        raise TypeError(f"evaluate must return a mapping {{metric name: number}}, got "
                        f"{type(result).__name__}")
    return {key: float(value) for key, value in result.items()}


def default_device(procs: Processes) -> torch.device:
    """The GPU of this process under torchrun (by ``LOCAL_RANK``), else :func:`runtime.device`."""
    if procs.world > 1 and torch.cuda.is_available():
        return torch.device("cuda", torch.cuda.current_device())
    return runtime.device()


def parallel(module: torch.nn.Module, procs: Processes, dev: torch.device) -> torch.nn.Module:
    """``module`` wrapped in ``DistributedDataParallel`` under several processes (its backward
    pass then averages the gradients over them), else ``module`` itself."""
    if procs.world == 1:
        return module
    from torch.nn.parallel import DistributedDataParallel
    if dev.type != "cuda":
        return DistributedDataParallel(module)
    index = dev.index if dev.index is not None else torch.cuda.current_device()
    return DistributedDataParallel(module, device_ids=[index])


def sync_interval_for(dev: torch.device, sync_interval: int | None) -> int:
    """Steps between reads of the losses: every step on the CPU (free), every 25 on a GPU (a
    read synchronises the device), or ``sync_interval`` when given."""
    if sync_interval is not None:
        return checks.positive_number("sync_interval", sync_interval, integer=True)
    return 1 if dev.type == "cpu" else 25


def autocast_for(dev: torch.device, amp: bool | str) -> Callable:
    """A context-manager factory: bf16 autocast on CUDA when ``amp`` allows, else a no-op."""
    if amp not in ("auto", True, False):
        raise ValueError(f"amp must be 'auto', True or False, got {amp!r}")
    if amp is True and dev.type != "cuda":
        raise ValueError("amp=True needs a CUDA device (bf16 autocast); use amp='auto' or False")
    use = dev.type == "cuda" and amp in ("auto", True) and torch.cuda.is_bf16_supported()
    return (lambda: torch.autocast("cuda", dtype=torch.bfloat16)) if use else nullcontext


def check_trainable(model: torch.nn.Module, optimizer: torch.optim.Optimizer,
                    names: tuple[str, str] = ("model", "optimizer")) -> None:
    """Refuse a model with nothing to train and an optimizer that would not train it."""
    for name, value, kind, spelled in (
            (names[0], model, torch.nn.Module, "torch.nn.Module"),
            (names[1], optimizer, torch.optim.Optimizer, "torch.optim.Optimizer")):
        if not isinstance(value, kind):
            raise TypeError(f"{name} must be a {spelled}, got {type(value).__name__}")
    trainable = {id(p) for p in model.parameters() if p.requires_grad}
    if not trainable:
        raise ValueError(f"{names[0]} has no trainable parameters (every parameter has "
                         f"requires_grad=False)")
    held = {id(p) for group in optimizer.param_groups for p in group["params"]}
    if not trainable & held:
        raise ValueError(f"{names[1]} holds none of {names[0]}'s trainable parameters, so "
                         f"training would never change {names[0]}; build it from "
                         f"{names[0]}.parameters()")


def check_scheduler(name: str, scheduler: Any) -> None:
    if scheduler is not None and not all(callable(getattr(scheduler, attr, None)) for attr in
                                         ("step", "state_dict", "load_state_dict")):
        raise TypeError(f"{name} must be a learning-rate scheduler (with step(), state_dict() and "
                        f"load_state_dict(), e.g. torch.optim.lr_scheduler.LambdaLR), got "
                        f"{type(scheduler).__name__}")


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
    saved = state.get("config", {})
    changed = {k: (saved.get(k), v) for k, v in config.items() if saved.get(k) != v}
    if changed:
        raise ValueError(f"checkpoint {path} was written by a different run; differing "
                         f"settings (saved, now): {changed}. Use another checkpoint path.")
    return state


def resume_and_run(state: TrainState, step: Step, stream: Stream, *, total: int, eval_every: int,
          evaluation: Callable[[], dict[str, float]], config: dict[str, Any],
          checkpoint: str | os.PathLike | None, resume: bool, interval: int, procs: Processes,
          progress: bool, desc: str) -> History:
    """Resume ``state`` from ``checkpoint`` when it exists, then :func:`run` the loop with a
    record (training means, then ``evaluation()`` on process 0) and a checkpoint at every
    evaluation point. Returns the history."""
    path = ckpt._path(checkpoint, "checkpoint") if checkpoint is not None else None
    config = {**config, "format": FORMAT, "processes": procs.world, "parts": state.names()}
    saved = _open_checkpoint(path, resume, config)
    if saved is not None:
        state.load_state_dict(saved)
        ckpt.set_rng_state(saved["rng"][procs.rank])
        if procs.rank == 0:
            message = "training had finished; loaded" if state.step >= total else "resuming"
            tqdm.write(f"{desc}: {message} {path.name} at step {state.step}/{total}")
    if state.step >= total:
        return state.history

    def stop(name: str, value: float, at: int) -> None:
        kept = f"the last checkpoint ({path}) is kept" if path else "no checkpoint was set"
        epoch = (at - 1) * stream.per_step // stream.per_epoch + 1
        raise FloatingPointError(f"{name} is {value} at step {at} (epoch {epoch}); training "
                                 f"stopped and {kept}")

    def record(state: TrainState) -> dict[str, str]:
        row = {"step": state.step, "epoch": state.step * stream.per_step / stream.per_epoch,
               **state.log.means(state.step), **(evaluation() if procs.rank == 0 else {})}
        state.history.seconds += state.log.seconds()
        state.history.records.append({**row, "seconds": state.history.seconds})
        return {key: f"{row[key]:.4f}" for _, key in state.history.LOSSES.values()}

    def save(state: TrainState) -> None:
        if path is not None:
            rngs = procs.gather(ckpt.rng_state())      # every process's generators
            if procs.rank == 0:
                ckpt.save_state(path, {**state.state_dict(), "rng": rngs, "config": config})

    state.log = _LossLog(state.history, interval, procs, stop, state.step)
    run(state, step, stream, total, eval_every, record, save, progress and procs.rank == 0, desc)
    return state.history


# --- fit ------------------------------------------------------------------------------------------

@torch.no_grad()
def _mean_loss(model: torch.nn.Module, examples: Examples, loss_fn: Callable[..., LossOutput],
               batch_size: int, dev: torch.device, autocast: Callable) -> dict[str, float]:
    totals: dict[str, torch.Tensor] = {}
    with runtime.eval_mode(model):
        for start in range(0, examples.size, batch_size):
            index = torch.arange(start, min(start + batch_size, examples.size))
            batch = tuple(t.to(dev, non_blocking=True) for t in examples.take(index))
            with autocast():
                loss, extras = split_loss(loss_fn(model, *batch), "loss_fn")
            for key, value in {"loss": loss, **extras}.items():
                totals[key] = totals.get(key, 0.0) + value.detach().float() * len(index)
    values = torch.stack(list(totals.values())).tolist()
    return {key: value / examples.size for key, value in zip(totals, values)}


def evaluate_loss(model: torch.nn.Module, data: Any, loss_fn: Callable[..., LossOutput],
                  batch_size: int = 256, device: torch.device | str | None = None,
                  amp: bool | str = "auto") -> dict[str, float]:
    """Mean of ``loss_fn`` (and of its extra terms) over ``data``, in eval mode, without gradients.

    Batches are weighted by their size, so the result is the mean over examples.
    """
    if not isinstance(model, torch.nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    examples = Examples(data, "data")
    checks.positive_number("batch_size", batch_size, integer=True)
    dev = runtime.device(device) if device is not None else next(model.parameters()).device
    return _mean_loss(model, examples, loss_fn, batch_size, dev, autocast_for(dev, amp))


def _check_fit(loss_fn: Any, evaluate: Any, scheduler: Any, epochs: Any, steps: Any,
               batch_size: Any, seed: Any, clip_grad_norm: Any, order: Any) -> None:
    for name, value in (("loss_fn", loss_fn), ("evaluate", evaluate), ("order", order)):
        if (value is not None or name == "loss_fn") and not callable(value):
            raise TypeError(f"{name} must be callable, got {type(value).__name__}")
    check_scheduler("scheduler", scheduler)
    if (epochs is None) == (steps is None):
        raise ValueError("give exactly one of epochs and steps")
    checks.positive_number("epochs" if epochs is not None else "steps",
                           epochs if epochs is not None else steps, integer=True)
    checks.positive_number("batch_size", batch_size, integer=True)
    checks.positive_number("seed", seed, integer=True, allow_zero=True)
    if clip_grad_norm is not None:
        checks.positive_number("clip_grad_norm", clip_grad_norm)


def fit(model: torch.nn.Module, train: Any, *, loss_fn: Callable[..., LossOutput],
        optimizer: torch.optim.Optimizer, epochs: int | None = None, steps: int | None = None,
        batch_size: int = 64, shuffle: bool = True, drop_last: bool = False, val: Any = None,
        evaluate: Callable[[torch.nn.Module], dict[str, float]] | None = None,
        eval_every: int | None = None, scheduler: Any = None, clip_grad_norm: float | None = None,
        device: torch.device | str | None = None, amp: bool | str = "auto",
        checkpoint: str | os.PathLike | None = None, resume: bool = True, seed: int = 0,
        progress: bool = True, desc: str = "train", order: Order | None = None,
        sync_interval: int | None = None) -> History:
    r"""Train ``model`` by minimising ``loss_fn(model, *batch)`` with ``optimizer`` (chapter 2).

    Args:
        train: a map-style ``Dataset``, a tensor, or a tuple of tensors sharing their first dim.
        loss_fn: returns a scalar loss, or ``(loss, {name: scalar tensor})`` to log extra terms.
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
        order: the data-order hook, ``order(epoch)`` -> an int64 permutation of the training
            examples, read in consecutive batches; a function of the epoch alone (see
            :func:`seeded_order`). Replaces ``shuffle``'s order.
        sync_interval: steps between reads of the loss (default: 1 on the CPU, 25 on a GPU).

    Under ``torchrun --nproc_per_node=N`` every process runs this same call: each takes its
    ``batch_size / N`` share of every batch, ``DistributedDataParallel`` averages the gradients,
    and process 0 alone shows progress, evaluates and writes the checkpoint. ``loss_fn`` then
    receives the wrapped model; call ``model(...)`` in it for the forward pass.

    Returns:
        the :class:`History` (complete on process 0); the model is trained in place.
    Raises:
        FloatingPointError: when the loss becomes NaN or infinite, naming the step; the last
            checkpoint is left intact.
    """
    check_trainable(model, optimizer)
    _check_fit(loss_fn, evaluate, scheduler, epochs, steps, batch_size, seed, clip_grad_norm,
               order)
    procs = processes()
    dev = runtime.device(device) if device is not None else default_device(procs)
    autocast = autocast_for(dev, amp)
    examples = Examples(train, "train")
    val_examples = Examples(val, "val") if val is not None else None
    config = {"train_size": examples.size, "batch_size": batch_size,
              "shuffle": shuffle if order is None else "order", "drop_last": drop_last,
              "seed": seed}
    if order is None:
        n = examples.size
        order = shuffled(n, seed) if shuffle else lambda epoch: torch.arange(n)
    stream = Stream(examples, batch_size, drop_last, order, dev, procs)
    total = stream.per_epoch * epochs if epochs is not None else steps
    eval_every = stream.per_epoch if eval_every is None else checks.positive_number(
        "eval_every", eval_every, integer=True)
    model.to(dev)
    state = TrainState({"model": model}, {"optimizer": optimizer}, {"scheduler": scheduler})
    step = supervised_step(parallel(model, procs, dev), loss_fn, optimizer, scheduler,
                           clip_grad_norm, autocast)

    def evaluation() -> dict[str, float]:          # process 0, at every evaluation point
        row = {f"val_{key}": value for key, value in _mean_loss(
            model, val_examples, loss_fn, max(batch_size, 256), dev, autocast).items()
        } if val_examples is not None else {}
        return {**row, **(metrics(evaluate, model) if evaluate else {}),
                "lr": optimizer.param_groups[0]["lr"]}

    model.train()
    return resume_and_run(state, step, stream, total=total, eval_every=eval_every, evaluation=evaluation,
                 config={**config, "total_steps": total, "eval_every": eval_every},
                 checkpoint=checkpoint, resume=resume,
                 interval=sync_interval_for(dev, sync_interval), procs=procs, progress=progress,
                 desc=desc)


def __getattr__(name: str) -> Any:
    """``fit_gan`` and ``GANHistory`` live in :mod:`aigc_lib.gan_training`, beside the GAN's
    losses; they stay importable from here."""
    if name in ("fit_gan", "GANHistory", "gan_step"):
        from aigc_lib import gan_training
        return getattr(gan_training, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
