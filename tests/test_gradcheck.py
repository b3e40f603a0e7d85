"""The gradient checker passes correct gradients and catches a deliberately wrong backward."""
import pytest
import torch

from torch.autograd.gradcheck import GradcheckError

from aigc_lib.gradcheck import (analytic_jacobian, check_gradients, numerical_jacobian,
                                torch_gradcheck)


def test_known_gradient_of_a_polynomial():
    x = torch.tensor([0.5, -1.0, 2.0])
    (jac,) = numerical_jacobian(lambda t: (t ** 3).sum(), [x])
    torch.testing.assert_close(jac.reshape(-1), 3 * x.double() ** 2, atol=1e-8, rtol=1e-8)


def test_jacobian_of_a_vector_function_matches_the_closed_form():
    x = torch.randn(4)
    expected = torch.diag(torch.cos(x.double()))
    for jac in (numerical_jacobian(torch.sin, [x])[0], analytic_jacobian(torch.sin, [x])[0]):
        torch.testing.assert_close(jac, expected, atol=1e-8, rtol=1e-7)


def test_correct_gradients_pass_with_tiny_errors():
    report = check_gradients(lambda a, b: (a @ b).tanh(), torch.randn(3, 4), torch.randn(4, 2),
                             names=["a", "b"])
    assert report.passed, report.message()
    assert all(r.max_abs_error < 1e-8 for r in report.inputs)
    assert [r.name for r in report.inputs] == ["a", "b"]
    assert torch_gradcheck(lambda a, b: (a @ b).tanh(), torch.randn(3, 4), torch.randn(4, 2))


class WrongSquare(torch.autograd.Function):
    """x**2 with a wrong backward pass (x instead of 2x)."""

    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return x ** 2

    @staticmethod
    def backward(ctx, grad):
        (x,) = ctx.saved_tensors
        return grad * x


def test_a_wrong_backward_is_caught_and_named():
    x = torch.tensor([1.0, 2.0, 3.0])
    report = check_gradients(lambda t: WrongSquare.apply(t).sum(), x, names=["x"])
    assert not report.passed
    row = report.inputs[0]
    assert row.worst_index == (2,) and row.analytic == pytest.approx(3.0)
    assert row.numerical == pytest.approx(6.0)
    with pytest.raises(AssertionError, match=r"x \(3,\): max abs err 3\.00e\+00.*WRONG"):
        report.raise_if_failed()
    with pytest.raises(GradcheckError):
        torch_gradcheck(lambda t: WrongSquare.apply(t), x)


def test_only_one_input_wrong_is_reported_as_such():
    report = check_gradients(lambda a, b: WrongSquare.apply(a).sum() + (b ** 2).sum(),
                             torch.tensor([1.0, 2.0]), torch.tensor([3.0]), names=["a", "b"])
    assert [r.passed for r in report.inputs] == [False, True]


@pytest.mark.parametrize("call, error, words", [
    (lambda: check_gradients("sin", torch.ones(2)), TypeError, "f must be callable"),
    (lambda: check_gradients(torch.sin), ValueError, "at least one tensor"),
    (lambda: check_gradients(torch.sin, torch.ones(2), names=["a", "b"]), ValueError, "names"),
    (lambda: check_gradients(torch.sin, torch.ones(2, dtype=torch.long), names=["w"]), TypeError, "w must be a floating"),
    (lambda: check_gradients(torch.sin, torch.tensor([float("nan")]), names=["w"]), ValueError, "w contains NaN"),
    (lambda: check_gradients(lambda t: 3, torch.ones(2)), TypeError, "f must return"),
    (lambda: check_gradients(torch.sin, torch.ones(2), eps=0.0), ValueError, "eps must be > 0"),
])
def test_bad_input(call, error, words):
    with pytest.raises(error, match=words):
        call()


def test_a_function_autograd_cannot_see_through_fails_with_a_reason():
    """Computed outside torch (through NumPy): autograd has no path, finite differences do."""
    x = torch.tensor([0.5, -1.0])
    report = check_gradients(lambda t: torch.from_numpy(t.detach().numpy() ** 2).sum(), x,
                             names=["x"])
    assert not report.passed
    assert "autograd does not reach x" in report.inputs[0].note
    with pytest.raises(AssertionError, match="no gradient path"):
        report.raise_if_failed()
    constant = check_gradients(lambda t: torch.ones(2, dtype=torch.float64), x, names=["x"])
    assert constant.passed            # no path and no dependence: zero is the right answer
    partly = check_gradients(lambda a, b: a.sum() + b.detach().sum(), x, x, names=["a", "b"])
    assert [r.passed for r in partly.inputs] == [True, False]
    assert partly.inputs[0].note == "" and "reach b" in partly.inputs[1].note
