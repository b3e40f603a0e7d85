r"""Numerical gradient checks: central finite differences in float64 (every chapter).

For a function :math:`f` and an input :math:`x`, the central difference

.. math:: \frac{\partial f_k}{\partial x_i} \approx \frac{f_k(x + \varepsilon e_i) - f_k(x - \varepsilon e_i)}{2\varepsilon}

has error :math:`O(\varepsilon^2)`; in float64 with :math:`\varepsilon = 10^{-6}` it agrees with a
correct analytic gradient to about :math:`10^{-8}`, so a wrong backward pass stands out by
orders of magnitude. :func:`check_gradients` compares the whole Jacobian that autograd computes
with the finite-difference one, input by input, and reports the largest errors.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from aigc_lib import checks


@dataclass(frozen=True)
class InputReport:
    """Errors for one input: worst absolute and relative error and where it occurred."""
    name: str
    shape: tuple[int, ...]
    max_abs_error: float
    max_rel_error: float
    worst_index: tuple[int, ...]
    analytic: float
    numerical: float
    passed: bool
    note: str = ""


@dataclass(frozen=True)
class GradcheckReport:
    """The result of :func:`check_gradients`; ``passed`` is True iff every input passed."""
    inputs: tuple[InputReport, ...]
    eps: float
    atol: float
    rtol: float

    @property
    def passed(self) -> bool:
        return all(r.passed for r in self.inputs)

    def message(self) -> str:
        lines = [f"gradient check {'passed' if self.passed else 'FAILED'} "
                 f"(eps={self.eps:g}, pass if |analytic - numerical| <= {self.atol:g} + "
                 f"{self.rtol:g}*|numerical|)"]
        for r in self.inputs:
            verdict = "ok" if r.passed else "WRONG"
            lines.append(f"  {r.name} {r.shape}: max abs err {r.max_abs_error:.2e}, max rel err "
                         f"{r.max_rel_error:.2e} at {r.worst_index} (analytic {r.analytic:.6g}, "
                         f"numerical {r.numerical:.6g}) {verdict}")
            if r.note:
                lines.append(f"    {r.note}")
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.message()

    def __repr__(self) -> str:
        return self.message()

    def _repr_html_(self) -> str:
        head = ("<tr><th>input</th><th>shape</th><th>max abs error</th><th>max rel error</th>"
                "<th>verdict</th></tr>")
        rows = "".join(f"<tr><td>{r.name}</td><td>{r.shape}</td><td>{r.max_abs_error:.2e}</td>"
                       f"<td>{r.max_rel_error:.2e}</td><td>{'ok' if r.passed else 'WRONG'}</td></tr>"
                       for r in self.inputs)
        return f"<table>{head}{rows}</table>"

    def raise_if_failed(self) -> None:
        """Raise ``AssertionError`` with the full report unless the check passed."""
        if not self.passed:
            raise AssertionError(self.message())


def _as_float64_inputs(inputs: Sequence[torch.Tensor], names: Sequence[str]) -> list[torch.Tensor]:
    out = []
    for name, x in zip(names, inputs):
        checks.tensor(name, x, floating=True)
        out.append(x.detach().to(torch.float64).clone())
    return out


def _flat_output(f: Callable[..., torch.Tensor], xs: Sequence[torch.Tensor]) -> torch.Tensor:
    out = f(*xs)
    if not isinstance(out, torch.Tensor) or not out.is_floating_point():
        raise TypeError(f"f must return a floating-point tensor, got {type(out).__name__}")
    return out.reshape(-1)


def numerical_jacobian(f: Callable[..., torch.Tensor], inputs: Sequence[torch.Tensor],
                       eps: float = 1e-6) -> list[torch.Tensor]:
    """Central-difference Jacobians of ``f`` (outputs flattened) w.r.t. each input, in float64.

    Returns one matrix per input, of shape ``(f(...).numel(), input.numel())``.
    """
    checks.positive_number("eps", eps)
    xs = _as_float64_inputs(inputs, [f"inputs[{i}]" for i in range(len(inputs))])
    jacobians = []
    with torch.no_grad():
        n_out = _flat_output(f, xs).numel()
        for x in xs:
            jac = torch.empty(n_out, x.numel(), dtype=torch.float64)
            flat = x.view(-1)
            for i in range(flat.numel()):
                keep = flat[i].item()
                flat[i] = keep + eps
                plus = _flat_output(f, xs)
                flat[i] = keep - eps
                minus = _flat_output(f, xs)
                flat[i] = keep
                jac[:, i] = (plus - minus) / (2 * eps)
            jacobians.append(jac)
    return jacobians


def _autograd_jacobians(f: Callable[..., torch.Tensor], inputs: Sequence[torch.Tensor]
                        ) -> tuple[list[torch.Tensor], list[bool]]:
    """Autograd's Jacobians, and for each input whether autograd reaches it from the output."""
    xs = [x.requires_grad_(True) for x in
          _as_float64_inputs(inputs, [f"inputs[{i}]" for i in range(len(inputs))])]
    out = _flat_output(f, xs)
    jacobians = [torch.zeros(out.numel(), x.numel(), dtype=torch.float64) for x in xs]
    reached = [False] * len(xs)
    if out.requires_grad:            # else f's output has no gradient path to any input
        for k in range(out.numel()):
            grads = torch.autograd.grad(out[k], xs, retain_graph=True, allow_unused=True)
            for i, g in enumerate(grads):
                if g is not None:
                    jacobians[i][k], reached[i] = g.reshape(-1), True
    return jacobians, reached


def analytic_jacobian(f: Callable[..., torch.Tensor],
                      inputs: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    """Jacobians of ``f`` (outputs flattened) w.r.t. each input from autograd, row by row; an
    input that autograd cannot reach from the output gets zeros."""
    return _autograd_jacobians(f, inputs)[0]


def check_gradients(f: Callable[..., torch.Tensor], *inputs: torch.Tensor,
                    names: Sequence[str] | None = None, eps: float = 1e-6,
                    atol: float = 1e-7, rtol: float = 1e-5) -> GradcheckReport:
    r"""Compare autograd's Jacobian of ``f`` with central finite differences, input by input.

    ``f`` takes the inputs (converted to float64 copies) and returns a tensor of any shape. An
    entry passes if :math:`|J_{\text{analytic}} - J_{\text{numerical}}| \le \text{atol} +
    \text{rtol}\,|J_{\text{numerical}}|`. Returns a :class:`GradcheckReport`; call
    ``report.raise_if_failed()`` (or ``assert report.passed``) to turn it into a test. When ``f``
    depends on an input that autograd cannot reach (its output computed outside torch, detached
    or under ``no_grad``), that input fails with a note saying so.
    """
    if not callable(f):
        raise TypeError(f"f must be callable, got {type(f).__name__}")
    if not inputs:
        raise ValueError("inputs must contain at least one tensor")
    if names is None:
        names = [f"input {i}" for i in range(len(inputs))]
    if len(names) != len(inputs):
        raise ValueError(f"names must have one entry per input ({len(inputs)}), got {len(names)}")
    checks.positive_number("atol", atol, allow_zero=True)
    checks.positive_number("rtol", rtol, allow_zero=True)
    _as_float64_inputs(inputs, names)  # type and NaN checks with the caller's names
    numerical = numerical_jacobian(f, inputs, eps)
    analytic, reached = _autograd_jacobians(f, inputs)
    reports = []
    for name, x, a, n, linked in zip(names, inputs, analytic, numerical, reached):
        diff = (a - n).abs()
        rel = diff / torch.maximum(a.abs(), n.abs()).clamp_min(1e-12)
        worst = int(diff.argmax()) if diff.numel() else 0
        row, col = divmod(worst, max(n.shape[1], 1))
        index = tuple(int(i) for i in torch.unravel_index(torch.tensor(col), x.shape)) if x.ndim else ()
        reports.append(InputReport(
            name=name, shape=tuple(x.shape),
            max_abs_error=float(diff.max()) if diff.numel() else 0.0,
            max_rel_error=float(rel.max()) if rel.numel() else 0.0,
            worst_index=index,
            analytic=float(a.reshape(-1)[worst]) if a.numel() else 0.0,
            numerical=float(n.reshape(-1)[worst]) if n.numel() else 0.0,
            passed=bool((diff <= atol + rtol * n.abs()).all()),
            note="" if linked else (f"autograd does not reach {name} from f's output (no "
                                    f"gradient path: computed outside torch, detached, or "
                                    f"under no_grad)")))
    return GradcheckReport(tuple(reports), eps=eps, atol=atol, rtol=rtol)


def torch_gradcheck(f: Callable[..., torch.Tensor], *inputs: torch.Tensor, eps: float = 1e-6,
                    atol: float = 1e-7, rtol: float = 1e-5) -> bool:
    """A thin layer over :func:`torch.autograd.gradcheck`, run on float64 copies of ``inputs``.

    Returns True on success and raises ``GradcheckError`` (from ``torch.autograd.gradcheck``) otherwise.
    """
    xs = [x.requires_grad_(True) for x in
          _as_float64_inputs(inputs, [f"inputs[{i}]" for i in range(len(inputs))])]
    return torch.autograd.gradcheck(f, tuple(xs), eps=eps, atol=atol, rtol=rtol)
