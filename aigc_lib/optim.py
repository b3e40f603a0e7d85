"""Optimisation (chapter 2): Adam and AdamW written out for teaching and tested equal to
``torch.optim``; the update rule the source articles print as "Adam", kept to show that it is
not; a helper that runs an optimiser on a small problem; learning-rate schedules."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch

from aigc_lib import checks


def warmup_cosine(step: int, warmup_steps: int, total_steps: int, min_ratio: float = 0.0) -> float:
    r"""Learning-rate multiplier: linear warm-up, then cosine decay to ``min_ratio``.

    .. math:: f(s) = \begin{cases} (s+1)/W & s < W \\
              r + (1-r)\,\tfrac12\left(1 + \cos\pi\,\frac{s-W}{T-W}\right) & W \le s \le T \\
              r & s > T \end{cases}

    with :math:`W` = ``warmup_steps``, :math:`T` = ``total_steps``, :math:`r` = ``min_ratio``.
    Step :math:`s` counts optimizer steps from 0, as ``LambdaLR`` does.
    """
    checks.positive_number("step", step, integer=True, allow_zero=True)
    checks.positive_number("warmup_steps", warmup_steps, integer=True, allow_zero=True)
    checks.positive_number("total_steps", total_steps, integer=True)
    if warmup_steps >= total_steps:
        raise ValueError(f"warmup_steps ({warmup_steps}) must be < total_steps ({total_steps})")
    checks.positive_number("min_ratio", min_ratio, allow_zero=True)
    if min_ratio > 1:
        raise ValueError(f"min_ratio must be in [0, 1], got {min_ratio}")
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    progress = min(1.0, (step - warmup_steps) / (total_steps - warmup_steps))
    return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


def warmup_cosine_scheduler(optimizer: torch.optim.Optimizer, warmup_steps: int, total_steps: int,
                            min_ratio: float = 0.0) -> torch.optim.lr_scheduler.LambdaLR:
    """A ``LambdaLR`` applying :func:`warmup_cosine` to every parameter group; step it once per
    optimizer step (``fit`` does)."""
    if not isinstance(optimizer, torch.optim.Optimizer):
        raise TypeError(f"optimizer must be a torch.optim.Optimizer, got {type(optimizer).__name__}")
    warmup_cosine(0, warmup_steps, total_steps, min_ratio)  # validate the arguments now
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: warmup_cosine(s, warmup_steps, total_steps, min_ratio))


def _betas(betas: object) -> tuple[float, float]:
    if (not isinstance(betas, (tuple, list)) or len(betas) != 2
            or not all(isinstance(b, (int, float)) and not isinstance(b, bool) for b in betas)):
        raise TypeError(f"betas must be a pair of numbers (beta1, beta2), got {betas!r}")
    for i, beta in enumerate(betas):
        if not 0 <= beta < 1:
            raise ValueError(f"betas[{i}] must be in [0, 1), got {beta!r}")
    return float(betas[0]), float(betas[1])


def _evaluate(closure: Callable[[], torch.Tensor] | None) -> torch.Tensor | None:
    """The loss from ``closure`` (with gradients enabled), or ``None`` without one."""
    if closure is None:
        return None
    with torch.enable_grad():
        return closure()


class Adam(torch.optim.Optimizer):
    r"""Adam written out for teaching (chapter 2), equal to ``torch.optim.Adam`` (tested).

    For each parameter :math:`\theta` with gradient :math:`g_t` at step :math:`t = 1, 2, \dots`:

    .. math::
        m_t &= \beta_1 m_{t-1} + (1-\beta_1)\, g_t, \qquad
        v_t = \beta_2 v_{t-1} + (1-\beta_2)\, g_t^2, \qquad m_0 = v_0 = 0, \\
        \hat m_t &= \frac{m_t}{1-\beta_1^t}, \qquad \hat v_t = \frac{v_t}{1-\beta_2^t}, \qquad
        \theta_t = \theta_{t-1} - \alpha\, \frac{\hat m_t}{\sqrt{\hat v_t} + \epsilon}.

    ``weight_decay`` :math:`\lambda` is an L2 penalty: :math:`g_t \leftarrow g_t + \lambda
    \theta_{t-1}` before the moments are updated, so the decay is rescaled by
    :math:`1/(\sqrt{\hat v_t}+\epsilon)` like the rest of the gradient. :class:`AdamW` decouples
    it instead.
    """

    decoupled = False

    def __init__(self, params: Any, lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-8, weight_decay: float = 0.0):
        checks.positive_number("lr", lr, allow_zero=True)
        checks.positive_number("eps", eps, allow_zero=True)
        checks.positive_number("weight_decay", weight_decay, allow_zero=True)
        defaults = {"lr": lr, "betas": _betas(betas), "eps": eps, "weight_decay": weight_decay}
        super().__init__(params, defaults)

    @torch.no_grad()
    def step(self, closure: Callable[[], torch.Tensor] | None = None) -> torch.Tensor | None:
        """Take one step; ``closure`` (optional) re-evaluates the loss and returns it."""
        loss = _evaluate(closure)
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is not None:
                    self._update(p, p.grad, group)
        return loss

    def _update(self, p: torch.Tensor, grad: torch.Tensor, group: dict[str, Any]) -> None:
        lr, (beta1, beta2) = group["lr"], group["betas"]
        eps, decay = group["eps"], group["weight_decay"]
        state = self.state[p]
        if not state:
            state["step"] = 0
            state["exp_avg"] = torch.zeros_like(p)
            state["exp_avg_sq"] = torch.zeros_like(p)
        state["step"] += 1
        t, m, v = state["step"], state["exp_avg"], state["exp_avg_sq"]
        if decay != 0 and self.decoupled:
            p.mul_(1 - lr * decay)                       # AdamW: shrink the weights directly
        elif decay != 0:
            grad = grad + decay * p                      # Adam: L2 term joins the gradient
        m.mul_(beta1).add_(grad, alpha=1 - beta1)        # m_t
        v.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)  # v_t
        m_hat = m / (1 - beta1 ** t)
        v_hat = v / (1 - beta2 ** t)
        p.sub_(lr * m_hat / (v_hat.sqrt() + eps))


class AdamW(Adam):
    r"""Adam with decoupled weight decay (chapter 2), equal to ``torch.optim.AdamW`` (tested).

    The same moments as :class:`Adam`, but the decay acts on the weights rather than the gradient
    (Loshchilov & Hutter, 2019):

    .. math:: \theta_t = (1 - \alpha\lambda)\,\theta_{t-1}
              - \alpha\, \frac{\hat m_t}{\sqrt{\hat v_t} + \epsilon},

    so every weight shrinks by the same factor :math:`1-\alpha\lambda` per step, whatever the
    size of its gradients. The default :math:`\lambda = 0.01` is ``torch.optim.AdamW``'s.
    """

    decoupled = True

    def __init__(self, params: Any, lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-8, weight_decay: float = 1e-2):
        super().__init__(params, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay)


def article_adam_multiplier(step: int, betas: tuple[float, float] = (0.9, 0.999)) -> float:
    r"""The factor by which :class:`ArticleAdam` scales :math:`\alpha\nabla L` at step ``step``:
    :math:`\beta_1^t/(1-\beta_1^t) + \beta_2^t` (chapter 2), for :math:`t \ge 1`."""
    checks.positive_number("step", step, integer=True)
    beta1, beta2 = _betas(betas)
    return beta1 ** step / (1 - beta1 ** step) + beta2 ** step


class ArticleAdam(torch.optim.Optimizer):
    r"""The update rule the source articles print under the name "Adam" — which is not Adam.

    Implemented exactly as printed, to show in chapter 2 how it behaves:

    .. math:: m_t = \beta_1^t\, \nabla L(\theta_t), \qquad
              \theta_{t+1} = \theta_t - \alpha\, \frac{m_t}{1-\beta_1^t}
              - \alpha\, \beta_2^t\, \nabla L(\theta_t), \qquad t = 1, 2, \dots

    There is no running average and no division by a second moment: the rule is plain gradient
    descent with the learning rate :math:`\alpha\,(\beta_1^t/(1-\beta_1^t) + \beta_2^t)`
    (:func:`article_adam_multiplier`), which tests check against ``torch.optim.SGD``.
    """

    def __init__(self, params: Any, lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999)):
        checks.positive_number("lr", lr, allow_zero=True)
        super().__init__(params, {"lr": lr, "betas": _betas(betas)})

    @torch.no_grad()
    def step(self, closure: Callable[[], torch.Tensor] | None = None) -> torch.Tensor | None:
        """Take one step; ``closure`` (optional) re-evaluates the loss and returns it."""
        loss = _evaluate(closure)
        for group in self.param_groups:
            lr, (beta1, beta2) = group["lr"], group["betas"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = self.state[p]
                state["step"] = state.get("step", 0) + 1
                t = state["step"]
                m = beta1 ** t * p.grad                                 # as printed: no average
                p.sub_(lr * m / (1 - beta1 ** t) + lr * beta2 ** t * p.grad)
        return loss


def descend(loss_fn: Callable[[torch.Tensor], torch.Tensor], start: torch.Tensor,
            make_optimizer: Callable[[list[torch.Tensor]], torch.optim.Optimizer],
            steps: int) -> tuple[torch.Tensor, torch.Tensor]:
    r"""Minimise ``loss_fn(x)`` from ``x = start`` with ``make_optimizer([x])`` for ``steps`` steps.

    Returns ``(points, losses)``: the iterates :math:`x_0, \dots, x_T` stacked into a tensor of
    shape ``(steps + 1, *start.shape)`` and the losses :math:`L(x_0), \dots, L(x_T)`. Chapter 2
    uses it to compare optimisers on small problems; ``start`` is not modified.
    """
    checks.tensor("start", start, floating=True)
    if not callable(loss_fn):
        raise TypeError(f"loss_fn must be callable, got {type(loss_fn).__name__}")
    if not callable(make_optimizer):
        raise TypeError(f"make_optimizer must be callable, got {type(make_optimizer).__name__}")
    checks.positive_number("steps", steps, integer=True, allow_zero=True)
    x = start.detach().clone().requires_grad_(True)
    opt = make_optimizer([x])
    if not isinstance(opt, torch.optim.Optimizer):
        raise TypeError("make_optimizer must return a torch.optim.Optimizer, got "
                        f"{type(opt).__name__}")
    points, values = [x.detach().clone()], []
    for _ in range(steps):
        opt.zero_grad(set_to_none=True)
        loss = loss_fn(x)
        if not isinstance(loss, torch.Tensor) or loss.ndim != 0:
            raise TypeError("loss_fn must return a scalar tensor")
        loss.backward()
        opt.step()
        values.append(loss.detach())
        points.append(x.detach().clone())
    with torch.no_grad():
        values.append(loss_fn(x).detach())
    return torch.stack(points), torch.stack(values)
