r"""Scaling laws, measured and extrapolated (chapter 7).

How big would the book's GPT have to be to beat counting and copying? This module answers by
measurement, then by extrapolation, and keeps the two apart:

1. **A sweep** (:func:`plan`, :func:`run_sweep`): small GPTs of several sizes, each trained at
   several token budgets with the pretrained model's recipe (:mod:`aigc_lib.pretrained`), scored
   in held-out bits per byte. Every run is cached like the pretrained model (its key holds the
   recipe, the code version, the corpus and how it was trained) under a file lock, so parallel
   notebooks compute each run once.
2. **A fit** (:func:`fit_law`) of Hoffmann et al.'s (2022) form

   .. math:: L(N, D) = E + \frac{A}{N^\alpha} + \frac{B}{D^\beta}

   by least squares on :math:`\log L` (their objective, squared instead of Huber-weighted).
3. **The compute-optimal frontier** (:meth:`ScalingLaw.optimal`): with training compute
   :math:`C \approx 6ND`, minimising :math:`L` at fixed :math:`C` gives
   :math:`N_\text{opt} = G\,(C/6)^{\beta/(\alpha+\beta)}`,
   :math:`D_\text{opt} = G^{-1}(C/6)^{\alpha/(\alpha+\beta)}` with
   :math:`G = (\alpha A / \beta B)^{1/(\alpha+\beta)}`.
4. **A forecast** (:meth:`ScalingLaw.crossover`): the smallest compute whose compute-optimal
   model reaches a target bits per byte (a rival's score), and the model size and tokens it
   takes; with a **bootstrap** over the sweep's runs (:func:`bootstrap`) for its uncertainty.
5. **Repeated data** (:func:`effective_tokens`): the corpus is small, so large budgets repeat
   it. Following Muennighoff et al. (2023), :math:`D` tokens drawn from :math:`U` unique ones
   are worth :math:`D' = U + U R^*(1 - e^{-R/R^*})` fresh tokens, :math:`R = D/U - 1` repeats,
   which can never exceed :math:`U(1 + R^*)`.
6. **Utilisation on a CPU** (:func:`matmul_peak_flops`, :func:`training_flops_per_second`):
   the peak of this machine measured with one large matrix product, so that MFU means
   something without a data-sheet figure.
"""

from __future__ import annotations

import dataclasses
import json
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from aigc_lib import checks, pretrained, runtime
from aigc_lib.models import gpt, llama

SWEEP_VERSION = 1               # bump when a change here changes what a run produces
REPEAT_HALF_LIFE = 15.4         # R*_D of Muennighoff et al. (2023), fitted on C4 at 10M-9B
H100_BF16_PEAK = 989e12         # FLOP/s, dense bf16, H100 SXM data sheet (NVIDIA, 2022)
ASSUMED_GPU_MFU = 0.4           # an assumption (PaLM reached 46 %; small models reach less)


# ------------------------------------------------------------------------------ the sweep


@dataclass(frozen=True)
class Run:
    """One training run of the sweep: a shape, a number of optimizer steps, a seed and a block
    (``"gpt2"`` or ``"llama"``, see :func:`aigc_lib.pretrained.build_model`)."""
    n_layer: int
    n_embd: int
    n_head: int
    steps: int
    seed: int = 0
    block: str = "gpt2"

    def __post_init__(self) -> None:
        for name in ("n_layer", "n_embd", "n_head", "steps"):
            checks.positive_number(name, getattr(self, name), integer=True)
        checks.positive_number("seed", self.seed, integer=True, allow_zero=True)
        if self.block not in pretrained.BLOCKS:
            raise ValueError(f"block must be one of {pretrained.BLOCKS}, got {self.block!r}")

    def recipe(self, base: pretrained.Recipe) -> pretrained.Recipe:
        """``base`` with this run's shape, steps and seed; warm-up stays the same fraction of
        the steps, and the only evaluation is at the end."""
        warmup = max(1, round(self.steps * base.warmup_steps / base.steps))
        return dataclasses.replace(base, n_layer=self.n_layer, n_embd=self.n_embd,
                                   n_head=self.n_head, steps=self.steps, warmup_steps=warmup,
                                   eval_every=self.steps, seed=self.seed)


@dataclass(frozen=True)
class Plan:
    """A sweep: the shared recipe (``base``: tokenizer, context, batch, optimiser) and the runs."""
    base: pretrained.Recipe
    runs: tuple[Run, ...]


@dataclass(frozen=True)
class RunResult:
    """What one run measured. ``params`` counts every weight (tied embedding once),
    ``params_nonembedding`` leaves out the token and position embeddings; ``flops`` is the
    training compute by formula (``flops_per_token`` × ``tokens``); ``test_bpb`` the held-out
    bits per byte scored as the chapter scores its final model (overlapping windows,
    :func:`aigc_lib.pretrained.heldout_bits_per_byte`); ``seconds`` the training wall clock."""
    run: Run
    params: int
    params_nonembedding: int
    tokens: int
    flops: float
    test_bpb: float
    seconds: float

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> RunResult:
        return cls(**dict(d, run=Run(**d["run"])))


# The cpu sweep: five shapes from 0.9k to 57k non-embedding parameters, three budgets each (a
# factor 2 apart), a second seed of the smallest and of the largest shape (at the smallest
# budget), and, for chapter 7's comparison of the two blocks, the middle shape at the largest
# budget with three seeds of GPT-2's block and three of the Llama-style block (on the second
# shape, width 16, the two blocks could not be told apart at this budget). Its recipe is the pretrained
# model's with batches of 2 windows and a peak learning rate of 2e-3: at these budgets smaller
# batches learn more per token (on the validation split, (2, 64) after 98k tokens: 2.38 bits
# per byte with 8 windows, 2.29 with 2, 2.27 with 1, at 1.3 to 1.6 times the cost per token),
# and 2e-3 was the best of 5e-4, 1e-3, 2e-3 and 3e-3 there. The budgets are small because the
# whole sweep must cost about as much as the pretrained model's own training on a CPU.
_CPU_SHAPES = ((1, 8, 2), (1, 16, 2), (1, 32, 2), (2, 32, 2), (2, 48, 2))
_CPU_STEPS = (128, 256, 512)
_GPU_SHAPES = ((2, 128, 2), (3, 192, 3), (4, 256, 4), (6, 384, 6), (8, 512, 8))
_GPU_STEPS = (150, 300, 600)


def plan(profile: str | None = None) -> Plan:
    """The sweep of the run profile (chapter 7): the shapes above at three budgets each,
    extra seeds, and the comparison of the two blocks, with the pretrained model's recipe
    (:func:`aigc_lib.pretrained.recipe`; on the cpu profile with smaller batches, see above;
    no dropout)."""
    name = runtime.profile(profile)
    base = dataclasses.replace(pretrained.recipe("bpe", name), dropout=0.0)
    if name == "cpu":
        base = dataclasses.replace(base, batch_size=2, lr=2e-3)
    shapes, budgets = (_CPU_SHAPES, _CPU_STEPS) if name == "cpu" else (_GPU_SHAPES, _GPU_STEPS)
    runs = [Run(L, d, h, steps) for L, d, h in shapes for steps in budgets]
    runs += [Run(*shapes[0], budgets[0], seed=1), Run(*shapes[-1], budgets[0], seed=1)]
    compared = shapes[len(shapes) // 2]
    runs += [Run(*compared, budgets[-1], seed=seed) for seed in (1, 2)]
    runs += [Run(*compared, budgets[-1], seed=seed, block="llama") for seed in (0, 1, 2)]
    return Plan(base=base, runs=tuple(runs))


def _count(r: pretrained.Recipe, block: str, vocab_size: int) -> tuple[int, int, int]:
    """(parameters, non-embedding parameters, training FLOPs per token) of a recipe's network."""
    if block == "gpt2":
        config = dataclasses.replace(r.gpt_config(), vocab_size=vocab_size)
        return (gpt.count_parameters(config), gpt.count_parameters(config, embeddings=False),
                gpt.flops_per_token(config))
    config = llama.LlamaConfig(vocab_size=vocab_size, block_size=r.block_size,
                               n_layer=r.n_layer, n_head=r.n_head, n_embd=r.n_embd)
    return (llama.count_parameters(config), llama.count_parameters(config, embeddings=False),
            llama.flops_per_token(config))


def train_run(run: Run, base: pretrained.Recipe, device: str | None = None,
              compile_model: bool = False) -> RunResult:
    """Train ``run`` by ``base`` (:func:`aigc_lib.pretrained.train`; on a GPU without
    ``torch.compile`` unless asked, since a sweep's runs are short) and score it on the
    held-out text."""
    if not isinstance(run, Run):
        raise TypeError(f"run must be a scaling.Run, got {type(run).__name__}")
    if not isinstance(base, pretrained.Recipe):
        raise TypeError(f"base must be a pretrained.Recipe, got {type(base).__name__}")
    r = run.recipe(base)
    model, tokenizer, history = pretrained.train(r, progress=False, device=device,
                                                 block=run.block, compile_model=compile_model,
                                                 eval_stride=r.block_size // 2)
    bpb = history.last("test_bpb")
    params, nonembedding, per_token = _count(r, run.block, tokenizer.get_vocab_size())
    tokens = r.steps * r.tokens_per_step
    return RunResult(run=run, params=params, params_nonembedding=nonembedding, tokens=tokens,
                     flops=float(per_token * tokens), test_bpb=bpb, seconds=history.seconds)


def run_path(run: Run, base: pretrained.Recipe) -> Path:
    """The cache file of one run: its key holds the run's recipe, its block,
    :data:`SWEEP_VERSION`, the corpus and how training runs here (device and precision)."""
    key = pretrained.cache_key(kind="scaling-run", recipe=asdict(run.recipe(base)),
                               block=run.block, sweep_version=SWEEP_VERSION)
    return runtime.cache_dir("scaling") / f"run-{key}.json"


def run_sweep(sweep: Plan, progress: bool = True) -> list[RunResult]:
    """The results of every run of ``sweep``: read from the cache, or trained and cached (each
    run under its own file lock, so parallel callers train each run once)."""
    from filelock import FileLock
    from tqdm.auto import tqdm

    if not isinstance(sweep, Plan):
        raise TypeError(f"sweep must be a scaling.Plan, got {type(sweep).__name__}")
    results = []
    for run in tqdm(sweep.runs, desc="scaling sweep", disable=not progress):
        path = run_path(run, sweep.base)
        with FileLock(str(path) + ".lock"):
            if not path.exists():
                result = train_run(run, sweep.base)
                with runtime.atomic_path(path) as tmp:
                    tmp.write_text(json.dumps(result.to_dict(), indent=1))
            results.append(RunResult.from_dict(json.loads(path.read_text())))
    return results


# ------------------------------------------------------------------------- repeated data


def effective_tokens(tokens, unique: float, half_life: float = REPEAT_HALF_LIFE):
    r"""Fresh-token equivalent of ``tokens`` drawn from ``unique`` distinct ones (Muennighoff et
    al., 2023): :math:`D' = D` while :math:`D \le U`, else
    :math:`D' = U + U R^*\,(1 - e^{-R/R^*})` with :math:`R = D/U - 1` repeats and
    :math:`R^*` = ``half_life``. Works on floats and numpy arrays."""
    checks.positive_number("unique", unique)
    checks.positive_number("half_life", half_life)
    d = np.asarray(tokens, dtype=float)
    if not np.all(np.isfinite(d)) or np.any(d <= 0):
        raise ValueError("tokens must be positive and finite")
    repeats = np.maximum(d / unique - 1.0, 0.0)
    out = np.where(d <= unique, d, unique + unique * half_life * (1 - np.exp(-repeats / half_life)))
    return float(out) if out.ndim == 0 else out


def tokens_for_effective(effective: float, unique: float,
                         half_life: float = REPEAT_HALF_LIFE) -> float:
    """The raw tokens whose :func:`effective_tokens` is ``effective``; ``inf`` when even endless
    repetition of ``unique`` tokens is worth less (the ceiling :math:`U(1 + R^*)`)."""
    checks.positive_number("effective", effective)
    checks.positive_number("unique", unique)
    if effective <= unique:
        return float(effective)
    share = (effective / unique - 1.0) / half_life
    if share >= 1.0:
        return math.inf
    return unique * (1.0 - half_life * math.log1p(-share))


# ------------------------------------------------------------------------------- the law


@dataclass(frozen=True)
class ScalingLaw:
    r""":math:`L(N, D) = E + A N^{-\alpha} + B D^{-\beta}` (Hoffmann et al., 2022), in the unit
    of the losses it was fitted to (here bits per byte); :math:`D` counts fresh tokens (see
    :func:`effective_tokens` for repeated ones)."""
    E: float
    A: float
    alpha: float
    B: float
    beta: float

    def loss(self, n_params, tokens):
        """The law at ``n_params`` and ``tokens`` (floats or numpy arrays)."""
        n, d = np.asarray(n_params, dtype=float), np.asarray(tokens, dtype=float)
        out = self.E + self.A * n ** -self.alpha + self.B * d ** -self.beta
        return float(out) if out.ndim == 0 else out

    @property
    def size_exponent(self) -> float:
        r"""The exponent :math:`a = \beta/(\alpha+\beta)` of :math:`N_\text{opt} \propto C^a`."""
        return self.beta / (self.alpha + self.beta)

    def optimal(self, compute, unique: float | None = None):
        r"""The best ``(N, D, L)`` at training compute ``compute`` FLOPs, with :math:`C = 6ND`.

        With fresh data (``unique=None``) in closed form (module docstring). On a corpus of
        ``unique`` tokens, where :math:`D` tokens are worth :func:`effective_tokens` fresh ones,
        by a search over :math:`N` on a fine logarithmic grid (:math:`10^2` to :math:`10^{16}`).
        """
        c = np.asarray(compute, dtype=float)
        if np.any(~np.isfinite(c)) or np.any(c <= 0):
            raise ValueError("compute must be positive and finite")
        if unique is None:
            s = self.alpha + self.beta
            g = (self.alpha * self.A / (self.beta * self.B)) ** (1.0 / s)
            n, d = g * (c / 6) ** (self.beta / s), (c / 6) ** (self.alpha / s) / g
            out = n, d, self.loss(n, d)
        else:
            grid = np.geomspace(1e2, 1e16, 2801)
            d = c.reshape(-1, 1) / (6 * grid)
            losses = self.loss(grid, effective_tokens(d, unique))
            best = losses.argmin(axis=1)
            rows = np.arange(len(best))
            out = (grid[best].reshape(c.shape), d[rows, best].reshape(c.shape),
                   losses[rows, best].reshape(c.shape))
        return tuple(float(v) for v in out) if c.ndim == 0 else out

    def floor(self, unique: float | None = None) -> float:
        r"""The lowest loss any scale reaches: :math:`E` with fresh data; on ``unique`` tokens
        repeated without end, :math:`E + B\,(U(1+R^*))^{-\beta}` (infinitely many parameters
        and the effective-data ceiling)."""
        if unique is None:
            return self.E
        return self.E + self.B * (unique * (1 + REPEAT_HALF_LIFE)) ** -self.beta

    def crossover(self, target: float, unique: float | None = None) -> Forecast:
        r"""The smallest training compute whose best model (:meth:`optimal`, with fresh data or
        on ``unique`` tokens) reaches ``target`` (same unit as the law), found by bisection on
        :math:`\log C`; a :class:`Forecast` with infinite values when ``target`` is at or below
        :meth:`floor`, which no scale reaches."""
        if not isinstance(target, (int, float)) or not math.isfinite(target) or target <= 0:
            raise ValueError(f"target must be a positive finite number, got {target!r}")
        if target <= self.floor(unique):
            return Forecast(float(target), math.inf, math.inf, math.inf)
        lo, hi = 1.0, 1e60
        if self.optimal(hi, unique)[2] > target:    # beyond the grid's reach
            return Forecast(float(target), math.inf, math.inf, math.inf)
        while hi / lo > 1 + 1e-6:
            mid = math.sqrt(lo * hi)
            lo, hi = (lo, mid) if self.optimal(mid, unique)[2] <= target else (mid, hi)
        n, d, _ = self.optimal(hi, unique)
        return Forecast(float(target), hi, n, d)


@dataclass(frozen=True)
class Forecast:
    """Where a law's best model reaches ``target``: training compute (FLOPs), parameters and
    training tokens; all ``inf`` when no scale does."""
    target: float
    flops: float
    params: float
    tokens: float

    @property
    def reachable(self) -> bool:
        return math.isfinite(self.flops)

    @property
    def tokens_per_param(self) -> float:
        return self.tokens / self.params if self.reachable else math.inf


def _validate(n_params, tokens, losses) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    arrays = []
    for name, values in (("n_params", n_params), ("tokens", tokens), ("losses", losses)):
        a = np.asarray(values, dtype=float)
        if a.ndim != 1:
            raise ValueError(f"{name} must be a 1-D sequence, got shape {a.shape}")
        if not np.all(np.isfinite(a)) or np.any(a <= 0):
            raise ValueError(f"{name} must hold positive finite numbers")
        arrays.append(a)
    if len({len(a) for a in arrays}) != 1:
        raise ValueError(f"n_params, tokens and losses must have the same length, got "
                         f"{[len(a) for a in arrays]}")
    if len(arrays[0]) < 5:
        raise ValueError(f"need at least 5 runs to fit 5 parameters, got {len(arrays[0])}")
    if len(np.unique(arrays[0])) < 2 or len(np.unique(arrays[1])) < 2:
        raise ValueError("n_params and tokens must each take at least 2 distinct values")
    return tuple(arrays)


_EXPONENTS = np.geomspace(0.02, 2.0, 48)


def _grid_start(n: np.ndarray, d: np.ndarray, l: np.ndarray) -> np.ndarray:
    """For fixed exponents the law is linear in (E, A, B): solve that least-squares problem for
    every pair of exponents on a grid at once and return the best pair whose coefficients are
    all positive, as (log E, log A, alpha, log B, beta)."""
    alpha, beta = np.meshgrid(_EXPONENTS, _EXPONENTS, indexing="ij")
    alpha, beta = alpha.ravel(), beta.ravel()
    x = np.stack([np.ones((len(alpha), len(n))), n[None, :] ** -alpha[:, None],
                  d[None, :] ** -beta[:, None]], axis=2)                  # (pairs, runs, 3)
    scale = x.max(axis=1, keepdims=True)                   # columns scaled to a maximum of 1
    xs = x / scale
    gram = xs.transpose(0, 2, 1) @ xs + 1e-12 * np.eye(3)
    coef = np.linalg.solve(gram, (xs.transpose(0, 2, 1) @ l)[..., None])[..., 0]
    sse = (((xs @ coef[..., None])[..., 0] - l) ** 2).sum(axis=1)
    sse = np.where((coef > 0).all(axis=1), sse, np.inf)
    if not np.isfinite(sse).any():             # no positive solution: start from a flat law
        return np.array([math.log(l.min() / 2), math.log(l.min() / 4), 0.3,
                         math.log(l.min() / 4), 0.3])
    i = int(np.argmin(sse))
    E, A, B = coef[i] / scale[i, 0]
    return np.array([math.log(E), math.log(A), alpha[i], math.log(B), beta[i]])


def _residuals(theta: np.ndarray, log_n: np.ndarray, log_d: np.ndarray,
               log_l: np.ndarray) -> np.ndarray:
    log_e, log_a, alpha, log_b, beta = theta
    terms = np.stack([np.full_like(log_n, log_e), log_a - alpha * log_n, log_b - beta * log_d])
    return np.logaddexp.reduce(terms, axis=0) - log_l


def _jacobian(theta: np.ndarray, log_n: np.ndarray, log_d: np.ndarray,
              log_l: np.ndarray) -> np.ndarray:
    """d residual / d theta: the softmax weights of the three terms (times -log N, -log D for
    the exponents)."""
    log_e, log_a, alpha, log_b, beta = theta
    terms = np.stack([np.full_like(log_n, log_e), log_a - alpha * log_n, log_b - beta * log_d])
    w = np.exp(terms - np.logaddexp.reduce(terms, axis=0))
    return np.stack([w[0], w[1], -w[1] * log_n, w[2], -w[2] * log_d], axis=1)


def _theta(law: ScalingLaw) -> np.ndarray:
    return np.array([math.log(law.E), math.log(law.A), law.alpha, math.log(law.B), law.beta])


def fit_law(n_params, tokens, losses, start: ScalingLaw | None = None,
            grid: bool = True) -> ScalingLaw:
    r"""Fit :class:`ScalingLaw` to runs (``n_params``, ``tokens``, ``losses``).

    The objective is Hoffmann et al.'s (2022, approach 3): the residuals of :math:`\log L`,
    with the law written as :math:`\log(e^{\log E} + e^{\log A - \alpha\log N} +
    e^{\log B - \beta\log D})`, but squared rather than Huber-weighted (the Huber loss's limit
    for a large threshold; it keeps the objective smooth, so each fit takes milliseconds and
    the bootstrap can refit hundreds of times). Starting points: a grid over the exponents,
    on which the law is linear in :math:`E, A, B` and solved exactly (unless ``grid=False``),
    and ``start`` if given; then a bounded trust-region least-squares polish (exponents in
    [0, 4]) from each, keeping the best.
    """
    from scipy.optimize import least_squares

    n, d, l = _validate(n_params, tokens, losses)
    if start is not None and not isinstance(start, ScalingLaw):
        raise TypeError(f"start must be a ScalingLaw or None, got {type(start).__name__}")
    if not grid and start is None:
        raise ValueError("grid=False needs a start")
    log_n, log_d, log_l = np.log(n), np.log(d), np.log(l)
    lower, upper = [-30, -30, 0.0, -30, 0.0], [10, 80, 4.0, 80, 4.0]
    starts = ([_grid_start(n, d, l)] if grid else []) + ([_theta(start)] if start else [])
    best = None
    for theta in starts:
        theta = np.clip(theta, np.array(lower) + 1e-9, np.array(upper) - 1e-9)
        found = least_squares(_residuals, theta, jac=_jacobian, args=(log_n, log_d, log_l),
                              bounds=(lower, upper), method="trf", x_scale="jac")
        if best is None or found.cost < best.cost:
            best = found
    log_e, log_a, alpha, log_b, beta = best.x
    return ScalingLaw(E=math.exp(log_e), A=math.exp(log_a), alpha=float(alpha),
                      B=math.exp(log_b), beta=float(beta))


def fit_coefficients(n_params, tokens, losses, alpha: float, beta: float) -> ScalingLaw:
    r"""The law with the exponents fixed at ``alpha`` and ``beta`` (for example another study's)
    and :math:`E, A, B \ge 0` fitted by non-negative least squares on the losses, which for
    fixed exponents are linear in them: a sensitivity check of a fit's exponents."""
    from scipy.optimize import nnls

    n, d, l = _validate(n_params, tokens, losses)
    checks.positive_number("alpha", alpha)
    checks.positive_number("beta", beta)
    x = np.stack([np.ones_like(n), n ** -alpha, d ** -beta], axis=1)
    scale = x.max(axis=0)
    (E, A, B), _ = nnls(x / scale, l)
    E, A, B = E / scale[0], A / scale[1], B / scale[2]
    return ScalingLaw(E=float(E), A=float(A), alpha=float(alpha), B=float(B), beta=float(beta))


def bootstrap(n_params, tokens, losses, n_resamples: int = 400, seed: int = 0,
              law: ScalingLaw | None = None) -> list[ScalingLaw]:
    """Refit the law to ``n_resamples`` resamples of the runs drawn with replacement (the
    bootstrap over the sweep's points), each polished from the full fit ``law`` (fitted here if
    not given). Resamples with fewer than 2 distinct sizes or budgets cannot identify the law
    and are drawn again."""
    n_params, tokens, losses = _validate(n_params, tokens, losses)
    checks.positive_number("n_resamples", n_resamples, integer=True)
    checks.positive_number("seed", seed, integer=True, allow_zero=True)
    law = law if law is not None else fit_law(n_params, tokens, losses)
    rng = np.random.default_rng(seed)
    laws = []
    while len(laws) < n_resamples:
        idx = rng.integers(0, len(losses), len(losses))
        if len(np.unique(n_params[idx])) < 2 or len(np.unique(tokens[idx])) < 2:
            continue
        laws.append(fit_law(n_params[idx], tokens[idx], losses[idx], start=law, grid=False))
    return laws


def percentile_interval(values, confidence: float = 0.95) -> tuple[float, float]:
    """The central ``confidence`` interval of ``values`` (``inf`` counts as larger than all)."""
    checks.confidence(confidence)
    v = np.asarray(values, dtype=float)
    if v.ndim != 1 or len(v) == 0 or np.any(np.isnan(v)):
        raise ValueError("values must be a non-empty 1-D sequence without NaN")
    tail = (1 - confidence) / 2
    low, high = np.quantile(v, [tail, 1 - tail], method="inverted_cdf")
    return float(low), float(high)


# ------------------------------------------------------------------ compute on this machine


def matmul_peak_flops(size: int = 512, seconds: float = 1.0, dtype=torch.float32) -> float:
    """The best FLOP/s of ``size`` × ``size`` matrix products on the CPU with torch's current
    thread count, over repeated timings for about ``seconds``: the peak that MFU on a CPU is
    measured against (a large product is the most favourable operation a model can run)."""
    checks.positive_number("size", size, integer=True)
    checks.positive_number("seconds", seconds)
    a, b = torch.randn(size, size, dtype=dtype), torch.randn(size, size, dtype=dtype)
    best, deadline = 0.0, time.perf_counter() + seconds
    while time.perf_counter() < deadline or best == 0.0:
        started = time.perf_counter()
        for _ in range(4):
            a @ b
        best = max(best, 4 * 2 * size ** 3 / (time.perf_counter() - started))
    return best


def training_flops_per_second(model: torch.nn.Module, flops_per_token: float, batch_size: int,
                              steps: int = 5) -> float:
    """Training FLOP/s of ``model`` on the CPU: the time of ``steps`` AdamW steps on random
    windows of ``batch_size`` × ``block_size`` tokens after one untimed step (a copy of the
    model is trained, not ``model``), and ``flops_per_token`` (e.g.
    :func:`aigc_lib.models.gpt.flops_per_token`) per token. The best of the steps is kept."""
    import copy

    if not isinstance(model, torch.nn.Module) or not hasattr(getattr(model, "config", None),
                                                              "block_size"):
        raise TypeError("model must be a language model with a config.block_size")
    checks.positive_number("flops_per_token", flops_per_token)
    checks.positive_number("batch_size", batch_size, integer=True)
    checks.positive_number("steps", steps, integer=True)
    trained = copy.deepcopy(model).cpu().train()
    opt = torch.optim.AdamW(trained.parameters(), lr=1e-4)
    config = trained.config
    tokens = torch.randint(0, config.vocab_size, (batch_size, config.block_size + 1))
    best = math.inf
    for step in range(steps + 1):
        started = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        gpt.lm_loss(trained, tokens).backward()
        opt.step()
        if step:
            best = min(best, time.perf_counter() - started)
    return flops_per_token * batch_size * config.block_size / best


# ----------------------------------------------------------- testing a forecast (gpu profile)


def shape_for(n_params: float, base: pretrained.Recipe) -> Run:
    """A GPT-2 shape with about ``n_params`` parameters (embeddings included) in ``base``'s
    vocabulary and context: heads of 64 dimensions, width 64 × depth (GPT-2 small's ratio)."""
    checks.positive_number("n_params", n_params)
    candidates = [Run(L, 64 * L, L, 1) for L in range(1, 49)]

    def size(run: Run) -> int:
        return _count(run.recipe(base), "gpt2", base.vocab_size)[0]

    return min(candidates, key=lambda run: abs(math.log(size(run) / n_params)))


@dataclass(frozen=True)
class Verification:
    """A run beyond the sweep, trained where a forecast points, and whether the forecast held:
    ``measured`` inside ``interval`` (the bootstrap's 95 % range of the law's prediction)."""
    result: RunResult
    predicted: float
    interval: tuple[float, float]
    effective_tokens: float

    @property
    def held(self) -> bool:
        return self.interval[0] <= self.result.test_bpb <= self.interval[1]


def verify(law: ScalingLaw, laws: list[ScalingLaw], compute: float, base: pretrained.Recipe,
           unique: float, device: str | None = None) -> Verification:
    """Train the best model the law predicts for ``compute`` FLOPs on this corpus of ``unique``
    tokens (:meth:`ScalingLaw.optimal`; the nearest :func:`shape_for` and a whole number of
    steps), score it, and compare with the law's prediction at the size and tokens actually
    trained, and with the spread of ``laws`` (the bootstrap) there (chapter 7, gpu profile)."""
    if not isinstance(law, ScalingLaw) or not laws or not all(
            isinstance(x, ScalingLaw) for x in laws):
        raise TypeError("law must be a ScalingLaw and laws a non-empty list of them")
    checks.positive_number("compute", compute)
    n_params, tokens, _ = law.optimal(compute, unique)
    shape = shape_for(n_params, base)
    steps = max(1, round(tokens / base.tokens_per_step))
    run = dataclasses.replace(shape, steps=steps)
    result = train_run(run, base, device=device, compile_model=True)
    d_eff = effective_tokens(result.tokens, unique)
    spread = [x.loss(result.params, d_eff) for x in laws]
    return Verification(result=result, predicted=law.loss(result.params, d_eff),
                        interval=percentile_interval(spread), effective_tokens=d_eff)
