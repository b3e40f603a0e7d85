"""The shared argument checks of :mod:`aigc_lib.checks`."""
import pytest
import torch

from aigc_lib import checks


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16, torch.bfloat16])
def test_all_finite_agrees_with_isfinite(dtype):
    gen = torch.Generator().manual_seed(0)
    for trial in range(60):
        value = torch.randn(7, 5, generator=gen).to(dtype)
        if trial % 3:
            bad = (float("nan"), float("inf"), float("-inf"))[trial % 3 if trial % 2 else 0]
            flat = value.view(-1)
            flat[int(torch.randint(0, flat.numel(), (1,), generator=gen))] = bad
        assert checks.all_finite(value) == bool(torch.isfinite(value).all()), trial


def test_all_finite_edge_cases():
    assert checks.all_finite(torch.empty(0))
    assert checks.all_finite(torch.tensor(3.0, requires_grad=True))
    assert not checks.all_finite(torch.tensor([float("nan")] * 4))
    big = torch.full((3,), torch.finfo(torch.float32).max)
    assert checks.all_finite(big)               # the largest floats are finite; their sum is not
    assert not checks.all_finite(torch.tensor([1.0, float("-inf"), float("inf")]))


def test_tensor_check_names_the_argument():
    with pytest.raises(ValueError, match="weights contains NaN or infinite"):
        checks.tensor("weights", torch.tensor([0.0, float("inf")]))
    with pytest.raises(TypeError, match="weights must be a torch.Tensor"):
        checks.tensor("weights", [1.0])
    assert checks.tensor("weights", torch.tensor([float("nan")]), finite=False).isnan().all()


def test_require_raises_the_given_error_on_the_cpu_and_reads_nothing_when_true():
    from test_sync import counting_reads
    events = []
    with counting_reads(events):
        checks.require(torch.tensor([1, 2]).gt(0).all(), lambda: ValueError("never"))
    assert events == []
    with pytest.raises(ValueError, match="x must be positive, got -1"):
        checks.require(torch.tensor(-1) > 0, lambda: ValueError("x must be positive, got -1"))


@pytest.mark.parametrize("bad", [0, 1, 1.5, -0.1, float("nan")])
def test_confidence_must_lie_strictly_between_0_and_1(bad):
    with pytest.raises(ValueError, match="confidence must be"):
        checks.confidence(bad)
    assert checks.confidence(0.95) == 0.95


def test_require_reads_on_the_host_on_devices_without_an_asynchronous_assert():
    from types import SimpleNamespace

    class OnOtherDevice:            # what require sees of a tensor on, say, an Apple GPU
        device = SimpleNamespace(type="mps")

        def __init__(self, value):
            self.value = value

        def __bool__(self):
            return self.value

    checks.require(OnOtherDevice(True), lambda: ValueError("never"))
    with pytest.raises(ValueError, match="read on the host"):
        checks.require(OnOtherDevice(False), lambda: ValueError("read on the host"))
