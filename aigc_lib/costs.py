"""What a model costs: parameters, bytes on disk, latency and throughput (chapter 9; the verdict
chapter compares techniques by them); money and energy per 1,000 requests, the escalation of
unsure answers to people, and the break-even volume of a use case (chapter 11).

Timings are wall-clock (``time.perf_counter``) medians over repeats, so that one interruption by
another program on a shared machine does not decide the number; they still depend on the machine,
its load and the thread count, which is why a chapter prints them next to ``runtime.describe()``.
"""

from __future__ import annotations

import math
import os
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from aigc_lib import checks


def count_parameters(model: torch.nn.Module, trainable_only: bool = False) -> int:
    """Number of scalar parameters of ``model`` (shared tensors counted once); only those that
    require gradients when ``trainable_only``."""
    if not isinstance(model, torch.nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    # Module.parameters() yields each tensor once, however many times it is shared
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


def size_on_disk(*paths: str | os.PathLike) -> int:
    """Total bytes of the given files and of every file under the given folders."""
    if not paths:
        raise ValueError("give at least one path")
    total = 0
    for path in paths:
        if not isinstance(path, (str, os.PathLike)):
            raise TypeError(f"paths must be str or os.PathLike, got {type(path).__name__}")
        path = Path(path)
        if path.is_file():
            total += path.stat().st_size
        elif path.is_dir():
            total += sum(f.stat().st_size for f in path.rglob("*") if f.is_file())
        else:
            raise FileNotFoundError(f"no file or folder at {path}")
    return total


@dataclass(frozen=True)
class Speed:
    """Inference speed: ``latency`` seconds for one message alone (median), and ``throughput``
    messages per second when messages come in batches of ``batch_size``."""
    latency: float
    throughput: float
    batch_size: int


def measure_speed(predict: Callable[[list[str]], Any], texts: Sequence[str],
                  batch_size: int = 64, singles: int = 30, repeats: int = 3,
                  warmup: int = 2) -> Speed:
    """Time ``predict`` (a function from a list of messages to predictions, tokenization
    included) on ``texts``.

    Latency: the median over ``singles`` calls with one message each, after ``warmup`` calls.
    Throughput: ``len(texts)`` divided by the median over ``repeats`` passes through all
    ``texts`` in batches of ``batch_size``.
    """
    if not callable(predict):
        raise TypeError(f"predict must be callable, got {type(predict).__name__}")
    if isinstance(texts, str) or not isinstance(texts, Sequence) or not texts:
        raise ValueError("texts must be a non-empty list of str")
    if not all(isinstance(t, str) for t in texts):
        raise TypeError("texts must hold only str")
    for name, value in (("batch_size", batch_size), ("singles", singles), ("repeats", repeats)):
        checks.positive_number(name, value, integer=True)
    checks.positive_number("warmup", warmup, integer=True, allow_zero=True)
    texts = list(texts)
    for i in range(warmup):
        predict([texts[i % len(texts)]])
    single = []
    for i in range(singles):
        start = time.perf_counter()
        predict([texts[i % len(texts)]])
        single.append(time.perf_counter() - start)
    passes = []
    for _ in range(repeats):
        start = time.perf_counter()
        for s in range(0, len(texts), batch_size):
            predict(texts[s:s + batch_size])
        passes.append(time.perf_counter() - start)
    return Speed(statistics.median(single), len(texts) / statistics.median(passes), batch_size)


def interleaved_seconds(fns: dict[str, Callable[[], Any]], repeats: int = 3, warmup: int = 1,
                        clock: Callable[[], float] = time.perf_counter) -> dict[str, list[float]]:
    """Seconds of each call of several functions, timed in turns: every repeat calls each
    function once, in order, so that a change in the machine's load during the measurement
    affects all of them alike and their ratios, repeat by repeat, stay comparable (chapter
    11). ``clock`` is wall-clock time by default (on a GPU each timing then waits for the
    device, ``torch.cuda.synchronize``), or e.g. ``time.process_time``, the processor time
    this process used, which on a machine shared with other programs leaves out the time
    spent waiting for them. Returns ``{name: [seconds of each repeat]}``."""
    if not isinstance(fns, dict) or not fns or not all(callable(f) for f in fns.values()):
        raise TypeError("fns must be a non-empty dict of name -> callable")
    if not callable(clock):
        raise TypeError(f"clock must be callable, got {type(clock).__name__}")
    checks.positive_number("repeats", repeats, integer=True)
    checks.positive_number("warmup", warmup, integer=True, allow_zero=True)
    sync = torch.cuda.synchronize if torch.cuda.is_available() else (lambda: None)
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            sync()
            start = clock()
            fn()
            sync()
            times[name].append(clock() - start)
    return times


def median_seconds(fn: Callable[[], Any], repeats: int = 3, warmup: int = 1,
                   clock: Callable[[], float] = time.perf_counter) -> float:
    """Median seconds of ``repeats`` calls of ``fn()`` after ``warmup`` calls, read on
    ``clock`` (see :func:`interleaved_seconds`)."""
    if not callable(fn):
        raise TypeError(f"fn must be callable, got {type(fn).__name__}")
    return statistics.median(interleaved_seconds({"fn": fn}, repeats, warmup, clock)["fn"])


# ------------------------------------------------------------ money and energy (chapter 11)


@dataclass(frozen=True)
class Device:
    """A machine that serves requests: what an hour of it costs (in dollars) and the power it
    draws while busy (watts). ``source`` says where the numbers come from and ``as_of`` when;
    prices change, so a reader should put in their own."""
    name: str
    price_per_hour: float
    watts: float
    source: str
    as_of: str

    def __post_init__(self) -> None:
        for field in ("name", "source", "as_of"):
            if not isinstance(getattr(self, field), str) or not getattr(self, field):
                raise ValueError(f"{field} must be a non-empty string")
        checks.positive_number("price_per_hour", self.price_per_hour, allow_zero=True)
        checks.positive_number("watts", self.watts, allow_zero=True)


# Cloud Carbon Footprint's energy coefficients for AWS: 3.5 W per vCPU at full load, times
# AWS's average power usage effectiveness 1.135 (cloudcarbonfootprint.org, methodology,
# appendix I; read in its repository's Methodology.md).
_WATTS_PER_BUSY_VCPU = 3.5 * 1.135
CPU_VM = Device(name="2-vCPU cloud VM (AWS m7g.large, on demand, us-east-1)",
                price_per_hour=0.0816, watts=2 * _WATTS_PER_BUSY_VCPU,
                source="price: factualminds2026ec2 (a third-party summary of AWS's list "
                       "price, not checked against AWS); power: ccf2024methodology",
                as_of="2026-06")
GPU_H100 = Device(name="one NVIDIA H100 SXM GPU (cloud, on demand)", price_per_hour=2.49,
                  watts=700.0,
                  source="price: Lambda's on-demand rate as quoted by computespec2026pricing "
                         "(not checked with Lambda); power: the H100 SXM's thermal design "
                         "power, up to 700 W (third-party specification tables)",
                  as_of="2026")


@dataclass(frozen=True)
class RequestCost:
    """Cost of 1,000 requests: ``dollars`` paid for the machine, ``kwh`` it draws."""
    dollars: float
    kwh: float
    seconds: float     # machine time


def per_thousand_requests(seconds_per_request: float, device: Device = CPU_VM,
                          utilisation: float = 1.0) -> RequestCost:
    r"""Money and energy of 1,000 requests that take ``seconds_per_request`` of ``device``
    each (e.g. a :class:`aigc_lib.results.Comparison`'s ``inference_seconds``; chapter 11):

    .. math:: \$ = \frac{1000\, t}{3600\, u}\, p, \qquad
              \text{kWh} = \frac{1000\, t\, W}{3.6\times 10^6},

    with price :math:`p` per device-hour and power :math:`W`. A machine busy only a share
    :math:`u` (``utilisation``) of the hours it is paid for costs :math:`1/u` as much per
    request; energy counts only the busy time (idle power is left out)."""
    checks.positive_number("seconds_per_request", seconds_per_request, allow_zero=True)
    if not isinstance(device, Device):
        raise TypeError(f"device must be a costs.Device, got {type(device).__name__}")
    checks.positive_number("utilisation", utilisation)
    if utilisation > 1:
        raise ValueError(f"utilisation must be in (0, 1], got {utilisation}")
    busy = 1000 * seconds_per_request
    return RequestCost(dollars=busy / utilisation / 3600 * device.price_per_hour,
                       kwh=busy * device.watts / 3.6e6, seconds=busy)


# ------------------------------------------------------- the break-even of a use case (ch. 11)


@dataclass(frozen=True)
class Escalation:
    """What a confidence threshold does on the test split (:func:`escalation_policy`)."""
    threshold: float
    automated: float          # share of messages answered automatically
    wrong_automated: float    # share of messages answered automatically and wrongly
    wrong_passed: int         # how many wrong test answers pass the threshold
    wrong: int                # how many test answers are wrong in all
    n: int                    # test messages


def _confidences(name: str, confidence: object, correct: object) -> tuple:
    conf = torch.as_tensor(confidence, dtype=torch.float64).flatten()
    ok = torch.as_tensor(correct).flatten()
    if len(conf) == 0 or len(conf) != len(ok):
        raise ValueError(f"{name}_confidence and {name}_correct must be non-empty and of equal "
                         f"length, got {len(conf)} and {len(ok)}")
    if not bool(torch.isfinite(conf).all()) or bool(((conf < 0) | (conf > 1)).any()):
        raise ValueError(f"{name}_confidence must hold probabilities in [0, 1]")
    if not bool(((ok == 0) | (ok == 1)).all()):
        raise ValueError(f"{name}_correct must hold 0/1 or booleans")
    return conf, ok.bool()


def escalation_policy(val_confidence: object, val_correct: object, test_confidence: object,
                      test_correct: object, keep: float = 0.9) -> Escalation:
    r"""Send a message to a human when the model's confidence is below a threshold set on the
    validation split so that a share ``keep`` of the right validation answers still go through:
    the threshold is the :math:`(1 - \text{keep})` quantile (linear interpolation) of the
    confidences of the correct validation answers (chapters 11 and 12). On the test split,
    returns the share answered automatically, the share answered automatically and wrongly,
    and the wrong answers that pass."""
    v_conf, v_ok = _confidences("val", val_confidence, val_correct)
    t_conf, t_ok = _confidences("test", test_confidence, test_correct)
    checks.positive_number("keep", keep)
    if keep > 1:
        raise ValueError(f"keep must be in (0, 1], got {keep}")
    if not bool(v_ok.any()):
        raise ValueError("val_correct has no correct answer to set the threshold on")
    threshold = float(torch.quantile(v_conf[v_ok], 1 - keep))
    passed = t_conf >= threshold
    wrong_passed = int((passed & ~t_ok).sum())
    return Escalation(threshold=threshold, automated=float(passed.double().mean()),
                      wrong_automated=wrong_passed / len(t_conf), wrong_passed=wrong_passed,
                      wrong=int((~t_ok).sum()), n=len(t_conf))


@dataclass(frozen=True)
class Prices:
    """What a use case pays, set by the reader (chapter 11 gives the defaults' sources).

    People's time is priced at ``hourly_wage``: labelling one message takes
    ``seconds_per_label``, routing one by hand ``seconds_per_message``, and a wrong automatic
    answer that nobody caught costs ``seconds_per_wrong_answer`` (the wrong team reads it,
    sends it back, someone routes it again). Machines: ``device`` (the serving machine,
    held all month whatever the volume) and ``training_device``. One-off costs are spread over
    ``months``; ``upkeep_per_month`` is the people who keep the system running."""
    hourly_wage: float = 20.59
    seconds_per_label: float = 30.0
    seconds_per_message: float = 30.0
    seconds_per_wrong_answer: float = 90.0
    device: Device = CPU_VM
    training_device: Device = CPU_VM
    hours_per_month: float = 730.0
    months: float = 12.0
    upkeep_per_month: float = 0.0

    def __post_init__(self) -> None:
        for name in ("hourly_wage", "seconds_per_label", "seconds_per_message",
                     "seconds_per_wrong_answer", "hours_per_month", "upkeep_per_month"):
            checks.positive_number(name, getattr(self, name), allow_zero=True)
        checks.positive_number("months", self.months)
        for name in ("device", "training_device"):
            if not isinstance(getattr(self, name), Device):
                raise TypeError(f"{name} must be a costs.Device")

    def people(self, seconds: float) -> float:
        """Dollars of ``seconds`` of a person's time."""
        return seconds / 3600 * self.hourly_wage


@dataclass(frozen=True)
class Option:
    """A way to handle messages: dollars once, per month whatever the volume, per message."""
    name: str
    one_off: float
    per_month: float
    per_message: float

    def monthly_cost(self, volume: float, months: float) -> float:
        r"""Dollars per month at ``volume`` messages a month, the one-off cost spread over
        ``months``: :math:`c_1/m + c_\text{month} + v\,c_\text{message}`."""
        checks.positive_number("volume", volume, allow_zero=True)
        checks.positive_number("months", months)
        return self.one_off / months + self.per_month + volume * self.per_message


def manual_option(prices: Prices) -> Option:
    """Every message routed by hand."""
    return Option("all by hand", 0.0, 0.0, prices.people(prices.seconds_per_message))


def automated_option(name: str, labels: int, train_seconds: float, inference_seconds: float,
                     escalation: Escalation, prices: Prices) -> Option:
    r"""A model that routes what it is confident about and escalates the rest:
    one-off, ``labels`` labelled messages and ``train_seconds`` of the training device; per
    month, the serving machine and the upkeep; per message, its machine time
    (:func:`per_thousand_requests`), a person for the escalated share :math:`1 - a`, and the
    cost of a wrong answer for the share :math:`w` answered wrongly:
    :math:`c_\text{message} = c_\text{machine} + (1 - a)\,c_\text{hand} + w\,c_\text{wrong}`."""
    checks.positive_number("labels", labels, integer=True, allow_zero=True)
    checks.positive_number("train_seconds", train_seconds, allow_zero=True)
    checks.positive_number("inference_seconds", inference_seconds, allow_zero=True)
    if not isinstance(escalation, Escalation):
        raise TypeError(f"escalation must be a costs.Escalation, got "
                        f"{type(escalation).__name__}")
    one_off = (prices.people(labels * prices.seconds_per_label)
               + train_seconds / 3600 * prices.training_device.price_per_hour)
    per_month = prices.hours_per_month * prices.device.price_per_hour + prices.upkeep_per_month
    per_message = (per_thousand_requests(inference_seconds, prices.device).dollars / 1000
                   + (1 - escalation.automated) * prices.people(prices.seconds_per_message)
                   + escalation.wrong_automated * prices.people(prices.seconds_per_wrong_answer))
    return Option(name, one_off, per_month, per_message)


def break_even_volume(option: Option, versus: Option, months: float) -> float:
    r"""The monthly volume from which ``option`` costs less than ``versus`` (one-off costs
    spread over ``months``): :math:`v^* = \Delta F / (c_\text{versus} - c_\text{option})` with
    :math:`\Delta F` the difference of the fixed monthly costs; 0 when ``option`` is never
    dearer, ``inf`` when it never pays (it costs as much or more per message and has higher
    fixed costs)."""
    for name, value in (("option", option), ("versus", versus)):
        if not isinstance(value, Option):
            raise TypeError(f"{name} must be a costs.Option, got {type(value).__name__}")
    fixed = option.monthly_cost(0, months) - versus.monthly_cost(0, months)
    saving = versus.per_message - option.per_message
    if fixed <= 0 and saving >= 0:
        return 0.0
    if saving <= 0:
        return math.inf
    return max(fixed / saving, 0.0)
def count_flops(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> tuple[Any, int]:
    r"""Run ``fn(*args, **kwargs)`` once and count the floating-point operations of its matrix
    products and convolutions, forward and backward (``torch.utils.flop_counter``; chapter 5
    sets equal training budgets with it). A product of an :math:`m\times k` and a
    :math:`k\times n` matrix counts :math:`2mkn`; element-wise operations are not counted, which
    for MLPs and convolution nets leaves out a few per cent. Returns ``(result, flops)``."""
    if not callable(fn):
        raise TypeError(f"fn must be callable, got {type(fn).__name__}")
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        result = fn(*args, **kwargs)
    return result, int(counter.get_total_flops())
