r"""Training a GAN (chapter 4): a step function for two players on the engine of
:mod:`aigc_lib.training`.

:func:`gan_step` is one step of the game: ``d_steps`` updates of the discriminator, each on a
batch of real examples and as many generated ones, then one update of the generator against the
updated discriminator. :func:`fit_gan` runs it with
:func:`aigc_lib.training.resume_and_run`, so batching, the NaN guard, records, checkpoints and
bit-identical resume are the ones ``fit`` has.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from contextlib import nullcontext
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch

from aigc_lib import checks, losses, runtime
from aigc_lib import training as engine
from aigc_lib.training import History, LossOutput, Step, TrainState, split_loss


@dataclass
class GANHistory(History):
    """What :func:`fit_gan` measured: ``d_losses`` and ``g_losses`` hold the discriminator's and
    the generator's loss at every step (the discriminator's averaged over its ``d_steps``
    updates); ``records`` hold, per evaluation point, ``step``, ``epoch``, ``d_loss`` and
    ``g_loss`` (means since the last record), the extra terms the loss functions return (by
    default ``d_real`` and ``d_fake``, the mean of :math:`D(x)` on real and generated batches),
    ``d_grad_norm`` and ``g_grad_norm`` (mean gradient norms), any ``evaluate`` metrics and
    ``seconds``. ``step_losses`` stays empty."""
    d_losses: list[float] = field(default_factory=list)
    g_losses: list[float] = field(default_factory=list)
    LOSSES: ClassVar[dict[str, tuple[str, str]]] = {
        "discriminator loss": ("d_losses", "d_loss"), "generator loss": ("g_losses", "g_loss")}

    def to_dict(self) -> dict[str, Any]:
        return {**super().to_dict(), "d_losses": self.d_losses, "g_losses": self.g_losses}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> GANHistory:
        return cls([], [dict(r) for r in data["records"]], float(data["seconds"]),
                   list(data["d_losses"]), list(data["g_losses"]))


def grad_norm(params: Sequence[torch.nn.Parameter]) -> torch.Tensor:
    r""":math:`\|g\|_2` over every parameter that has a gradient (0 when none has)."""
    norms = [p.grad.detach().norm() for p in params if p.grad is not None]
    if not norms:
        return torch.zeros((), device=params[0].device if params else None)
    return torch.stack(norms).norm()


def discriminator_loss(discriminator: torch.nn.Module, real: torch.Tensor,
                       fake: torch.Tensor) -> LossOutput:
    """The default ``d_loss_fn``: :func:`aigc_lib.losses.gan_discriminator_loss` on one forward
    pass over real and generated examples, logging ``d_real`` and ``d_fake``, the mean of
    :math:`D(x)` on each."""
    logits = discriminator(torch.cat([real, fake]))
    real_logits, fake_logits = logits[:len(logits) // 2], logits[len(logits) // 2:]
    loss = losses.gan_discriminator_loss(real_logits, fake_logits)
    return loss, {"d_real": torch.sigmoid(real_logits.detach()).mean(),
                  "d_fake": torch.sigmoid(fake_logits.detach()).mean()}


def generator_loss(saturating: bool = False) -> Callable[..., LossOutput]:
    """The default ``g_loss_fn``: :func:`aigc_lib.losses.gan_generator_loss` of :math:`D(G(z))`."""
    def g_loss(discriminator: torch.nn.Module, fake: torch.Tensor) -> torch.Tensor:
        return losses.gan_generator_loss(discriminator(fake), saturating=saturating)
    return g_loss


def _update(loss: torch.Tensor, optimizer: torch.optim.Optimizer,
            params: Sequence[torch.nn.Parameter]) -> torch.Tensor:
    """One optimizer step on ``loss``; returns the gradient norm it stepped with."""
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    norm = grad_norm(params)
    optimizer.step()
    return norm


def gan_step(generator: torch.nn.Module, discriminator: torch.nn.Module, *,
             g_optimizer: torch.optim.Optimizer, d_optimizer: torch.optim.Optimizer,
             noise: Callable[[int], torch.Tensor], d_steps: int = 1,
             d_loss_fn: Callable[..., LossOutput] = discriminator_loss,
             g_loss_fn: Callable[..., LossOutput] = generator_loss(),
             g_scheduler: Any = None, d_scheduler: Any = None,
             autocast: Callable = nullcontext) -> Step:
    r"""One step of the GAN game for :func:`aigc_lib.training.run`: the step's batch holds
    ``d_steps`` batches of real examples; for each, a discriminator update on it and on as many
    :math:`G(z)`, :math:`z` = ``noise(n)``; then a generator update on the last fakes, against the
    updated discriminator (whose parameters are frozen meanwhile: G's step needs no D gradients).
    Each scheduler steps once per step. Returns the averaged extra terms and gradient norms."""
    g_params = [p for group in g_optimizer.param_groups for p in group["params"]]
    d_params = [p for group in d_optimizer.param_groups for p in group["params"]]

    def step(batch: tuple[torch.Tensor, ...], state: TrainState) -> Mapping[str, torch.Tensor]:
        terms: dict[str, torch.Tensor] = {}
        for i, real in enumerate(batch[0].chunk(d_steps)):
            last = i == d_steps - 1                    # only the last fakes serve G's step
            with autocast():
                with nullcontext() if last else torch.no_grad():
                    fake = generator(noise(len(real)))
                d_loss, d_extras = split_loss(d_loss_fn(discriminator, real, fake.detach()),
                                              "d_loss_fn")
            state.watch("discriminator loss", d_loss)
            d_extras = {**d_extras, "d_grad_norm": _update(d_loss, d_optimizer, d_params)}
            for key, value in d_extras.items():
                terms[key] = terms.get(key, 0.0) + value.detach() / d_steps
        trainable = [p for p in discriminator.parameters() if p.requires_grad]
        for p in trainable:
            p.requires_grad_(False)
        try:
            with autocast():
                g_loss, g_extras = split_loss(g_loss_fn(discriminator, fake), "g_loss_fn")
            state.watch("generator loss", g_loss)
            terms.update(g_extras, g_grad_norm=_update(g_loss, g_optimizer, g_params))
        finally:
            for p in trainable:
                p.requires_grad_(True)
        for scheduler in (g_scheduler, d_scheduler):
            if scheduler is not None:
                scheduler.step()
        return terms
    return step


def _check_gan(generator: Any, discriminator: Any, g_optimizer: Any, d_optimizer: Any,
               d_loss_fn: Any, g_loss_fn: Any, evaluate: Any, saturating: Any,
               g_scheduler: Any, d_scheduler: Any, steps: Any, batch_size: Any, d_steps: Any,
               seed: Any) -> int:
    """Argument checks of :func:`fit_gan`; returns the generator's ``latent_dim``."""
    for name, value in (("generator", generator), ("discriminator", discriminator)):
        if not isinstance(value, torch.nn.Module):
            raise TypeError(f"{name} must be a torch.nn.Module, got {type(value).__name__}")
    latent_dim = getattr(generator, "latent_dim", None)
    if isinstance(latent_dim, bool) or not isinstance(latent_dim, int) or latent_dim < 1:
        raise TypeError("generator must have an int attribute latent_dim (the size of z), e.g. "
                        "aigc_lib.models.gan.Generator")
    if g_optimizer is d_optimizer and isinstance(g_optimizer, torch.optim.Optimizer):
        raise ValueError("g_optimizer and d_optimizer must be two different optimizers")
    engine.check_trainable(generator, g_optimizer, ("generator", "g_optimizer"))
    engine.check_trainable(discriminator, d_optimizer, ("discriminator", "d_optimizer"))
    for name, value in (("d_loss_fn", d_loss_fn), ("g_loss_fn", g_loss_fn),
                        ("evaluate", evaluate)):
        if value is not None and not callable(value):
            raise TypeError(f"{name} must be callable, got {type(value).__name__}")
    if not isinstance(saturating, bool):
        raise TypeError(f"saturating must be a bool, got {type(saturating).__name__}")
    if saturating and g_loss_fn is not None:
        raise ValueError("give either saturating=True or g_loss_fn, not both")
    engine.check_scheduler("g_scheduler", g_scheduler)
    engine.check_scheduler("d_scheduler", d_scheduler)
    checks.positive_number("steps", steps, integer=True)
    checks.positive_number("batch_size", batch_size, integer=True)
    checks.positive_number("d_steps", d_steps, integer=True)
    checks.positive_number("seed", seed, integer=True, allow_zero=True)
    return latent_dim


def _real_batches(train: Any, batch_size: int, d_steps: int, seed: int, device: Any):
    """The device, the (single) process, the real examples and their stream of batches: each
    step draws ``d_steps`` batches of ``batch_size``, in a new seeded order each epoch."""
    procs = engine.processes()
    if procs.world > 1:
        raise NotImplementedError("fit_gan trains in one process; under torchrun use fit, or "
                                  "start one process")
    dev = runtime.device(device) if device is not None else runtime.device()
    examples = engine.Examples(train, "train")
    if examples.size < batch_size:
        raise ValueError(f"batch_size={batch_size} exceeds the {examples.size} training examples")
    stream = engine.Stream(examples, batch_size, True, engine.shuffled(examples.size, seed), dev,
                           procs, per_step=d_steps)
    return dev, procs, examples, stream


def fit_gan(generator: torch.nn.Module, discriminator: torch.nn.Module, train: Any, *,
            g_optimizer: torch.optim.Optimizer, d_optimizer: torch.optim.Optimizer, steps: int,
            batch_size: int = 64, d_steps: int = 1, saturating: bool = False,
            d_loss_fn: Callable[..., LossOutput] | None = None,
            g_loss_fn: Callable[..., LossOutput] | None = None,
            evaluate: Callable[[torch.nn.Module, torch.nn.Module], dict[str, float]] | None = None,
            eval_every: int | None = None, g_scheduler: Any = None, d_scheduler: Any = None,
            device: torch.device | str | None = None, amp: bool | str = "auto",
            checkpoint: str | os.PathLike | None = None, resume: bool = True, seed: int = 0,
            progress: bool = True, desc: str = "GAN",
            sync_interval: int | None = None) -> GANHistory:
    r"""Train a GAN by alternating gradient steps on its two players (chapter 4).

    One step (:func:`gan_step`): ``d_steps`` discriminator updates, each on ``batch_size`` real
    examples and as many :math:`G(z)`, :math:`z \sim \mathcal N(0, I_k)`, :math:`k` =
    ``generator.latent_dim`` (loss: by default :func:`aigc_lib.losses.gan_discriminator_loss`);
    then a generator update on the last fakes against the *updated* discriminator (by default
    :func:`aigc_lib.losses.gan_generator_loss`, non-saturating unless ``saturating``). ``train``
    is a tensor of real examples, or a tuple/``Dataset`` whose first element is the example.
    Everything else is :func:`aigc_lib.training.fit`'s loop: bf16 autocast on CUDA, the NaN
    guard, checkpoints and the bit-identical resume (the noise generator is saved too).

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
        checkpoint, resume, seed, device, amp, progress, desc, sync_interval: as in
            :func:`aigc_lib.training.fit`; ``seed`` seeds the data order and the noise.
    Returns:
        the :class:`GANHistory`; both networks are trained in place.
    Raises:
        FloatingPointError: when either loss becomes NaN or infinite, naming it and the step.
            On a GPU, as in ``fit``, losses are read every 25 steps, so the error can come up
            to 24 steps late (always before the next checkpoint is written).
    """
    latent_dim = _check_gan(generator, discriminator, g_optimizer, d_optimizer, d_loss_fn,
                            g_loss_fn, evaluate, saturating, g_scheduler, d_scheduler, steps,
                            batch_size, d_steps, seed)
    dev, procs, examples, stream = _real_batches(train, batch_size, d_steps, seed, device)
    autocast = engine.autocast_for(dev, amp)
    eval_every = max(1, stream.per_epoch // d_steps) if eval_every is None else \
        checks.positive_number("eval_every", eval_every, integer=True)
    generator.to(dev).train()
    discriminator.to(dev).train()
    noise_rng = torch.Generator().manual_seed(seed)
    step = gan_step(generator, discriminator, g_optimizer=g_optimizer, d_optimizer=d_optimizer,
                    noise=lambda rows: torch.randn(rows, latent_dim, generator=noise_rng).to(
                        dev, non_blocking=True),
                    d_steps=d_steps, d_loss_fn=d_loss_fn or discriminator_loss,
                    g_loss_fn=g_loss_fn or generator_loss(saturating), g_scheduler=g_scheduler,
                    d_scheduler=d_scheduler, autocast=autocast)
    state = TrainState({"generator": generator, "discriminator": discriminator},
                       {"g_optimizer": g_optimizer, "d_optimizer": d_optimizer},
                       {"g_scheduler": g_scheduler, "d_scheduler": d_scheduler},
                       {"noise_rng": noise_rng}, GANHistory())
    config = {"train_size": examples.size, "batch_size": batch_size, "total_steps": steps,
              "d_steps": d_steps, "saturating": saturating, "seed": seed,
              "eval_every": eval_every}
    evaluation = (lambda: engine.metrics(evaluate, generator, discriminator)) if evaluate \
        else dict
    interval = engine.sync_interval_for(dev, sync_interval)
    return engine.resume_and_run(state, step, stream, total=steps, eval_every=eval_every,
                                 evaluation=evaluation, config=config, checkpoint=checkpoint,
                                 resume=resume, interval=interval, procs=procs,
                                 progress=progress, desc=desc)
