r"""What each chapter measured, kept for the verdict chapter (chapter 12).

Every chapter that compares a technique with a plain baseline ends by calling :func:`record`
with one :class:`Comparison` per technique. The values are the ones its cells just measured and
asserted; nothing is typed in. They are written as JSON to ``cache_dir("results")/<chapter>.json``
(atomically, so a reader never sees half a file), together with the profile, the library version
and the time of the run. Chapter 12 reads them back with :func:`ensure`, which
first executes any chapter whose record is missing or was made under another profile, and
builds its gold-or-bubble table from them.

Metrics differ in kind, so the *improvement* of a technique over its baseline is expressed in
the form that is commensurable within each kind (:attr:`Comparison.kind`):

- ``"log-loss"`` (NLL, bits per byte, log-perplexity): what the technique saves, in the metric's
  own unit, :math:`b - v` (a ratio of two log-losses has no meaning);
- ``"error"`` (error rate, Fréchet distance, calibration error: :math:`\ge 0`, lower is better):
  the relative reduction :math:`(b - v)/b`;
- ``"score"`` (accuracy, F1, precision, recall in :math:`[0, 1]`, higher is better): the relative
  reduction of the error :math:`1 - s`, :math:`((1-b) - (1-v))/(1-b) = (v - b)/(1 - b)`.

Improvements > 0 mean the technique wins; improvements of different kinds are never put on one
axis as if they were the same quantity.
"""
from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

from tqdm.auto import tqdm

from aigc_lib import __version__, runtime

_NUMBER_FIELDS = ("value", "baseline_value")
_OPTIONAL_COSTS = ("trainable_params", "train_seconds", "train_flops", "baseline_train_seconds",
                   "inference_seconds", "baseline_inference_seconds")
KINDS = ("log-loss", "error", "score")


@dataclass(frozen=True)
class Comparison:
    """One technique against its plain baseline, as measured in one chapter.

    ``metric`` names the quantity and its unit (e.g. ``"test NLL (nats/image)"``); ``kind`` is
    one of :data:`KINDS` (see the module docstring) and fixes which way the metric points. The
    older ``lower_is_better`` may be given instead of ``kind`` (``True`` means ``"error"``,
    ``False`` means ``"score"``) or beside it, when it must agree.

    Optional fields:

    - ``difference_interval``: a ``(low, high)`` interval for ``value - baseline_value``, with
      ``interval_method`` saying how it was obtained (e.g. ``"paired bootstrap 95 %"``,
      ``"min–max over 3 seeds"``); ``seeds``: how many training seeds ``value`` averages;
    - costs: ``trainable_params``, ``train_seconds`` and ``baseline_train_seconds`` (wall clock
      on the machine that ran the chapter), ``train_flops``, and ``inference_seconds`` /
      ``baseline_inference_seconds`` (seconds to answer one request or make one sample);
    - ``extrapolated``: the value is a forecast from a fit, not a measurement.
    """

    technique: str
    baseline: str
    metric: str
    value: float
    baseline_value: float
    lower_is_better: bool | None = None
    trainable_params: int | None = None
    train_seconds: float | None = None
    train_flops: float | None = None
    kind: str | None = None
    difference_interval: tuple[float, float] | None = None
    interval_method: str | None = None
    seeds: int | None = None
    baseline_train_seconds: float | None = None
    inference_seconds: float | None = None
    baseline_inference_seconds: float | None = None
    extrapolated: bool = False

    def __post_init__(self) -> None:
        for name in ("technique", "baseline", "metric"):
            text = getattr(self, name)
            if not isinstance(text, str) or not text.strip():
                raise ValueError(f"{name} must be a non-empty string, got {text!r}")
        for name in _NUMBER_FIELDS:
            object.__setattr__(self, name, _finite(name, getattr(self, name)))
        object.__setattr__(self, "kind", self._resolve_kind())
        object.__setattr__(self, "lower_is_better", self.kind != "score")
        self._check_values()
        for name in _OPTIONAL_COSTS:
            cost = getattr(self, name)
            if cost is not None and _finite(name, cost) < 0:
                raise ValueError(f"{name} must be >= 0, got {cost}")
        if self.trainable_params is not None:
            object.__setattr__(self, "trainable_params", int(self.trainable_params))
        self._check_interval()
        if self.seeds is not None:
            if isinstance(self.seeds, bool) or not isinstance(self.seeds, int) or self.seeds < 1:
                raise ValueError(f"seeds must be a positive int or None, got {self.seeds!r}")
        if not isinstance(self.extrapolated, bool):
            raise TypeError(f"extrapolated must be a bool, got {type(self.extrapolated).__name__}")

    def _resolve_kind(self) -> str:
        lib = self.lower_is_better
        if lib is not None and not isinstance(lib, bool):
            raise TypeError(f"lower_is_better must be a bool or None, got {type(lib).__name__}")
        if self.kind is None:
            if lib is None:
                raise ValueError("give kind (one of 'log-loss', 'error', 'score') or "
                                 "lower_is_better")
            return "error" if lib else "score"
        if self.kind not in KINDS:
            raise ValueError(f"kind must be one of {KINDS}, got {self.kind!r}")
        if lib is not None and lib != (self.kind != "score"):
            raise ValueError(f"kind={self.kind!r} contradicts lower_is_better={lib}")
        return self.kind

    def _check_values(self) -> None:
        for name in _NUMBER_FIELDS:
            number = getattr(self, name)
            if self.kind == "error" and number < 0:
                raise ValueError(f"{name} must be >= 0 for kind 'error' (an error rate or a "
                                 f"distance), got {number}; use kind='log-loss' for a "
                                 "log-likelihood")
            if self.kind == "score" and not 0 <= number <= 1:
                raise ValueError(f"{name} must lie in [0, 1] for kind 'score', got {number}")

    def _check_interval(self) -> None:
        interval = self.difference_interval
        if interval is None:
            if self.interval_method is not None:
                raise ValueError("interval_method given without difference_interval")
            return
        if not isinstance(interval, (tuple, list)) or len(interval) != 2:
            raise TypeError("difference_interval must be a (low, high) pair, got "
                            f"{interval!r}")
        low, high = (_finite("difference_interval", v) for v in interval)
        if low > high:
            raise ValueError(f"difference_interval must have low <= high, got {interval!r}")
        if not isinstance(self.interval_method, str) or not self.interval_method.strip():
            raise ValueError("interval_method must say how difference_interval was obtained")
        object.__setattr__(self, "difference_interval", (low, high))

    @property
    def improvement(self) -> float:
        """How much better than the baseline, in the form that suits :attr:`kind`: the
        baseline minus the value for a log-loss (in the metric's unit), the relative reduction
        of the error for ``"error"`` and ``"score"``. Positive when the technique wins; ``nan``
        when a relative reduction has a zero baseline error."""
        b, v = self.baseline_value, self.value
        if self.kind == "log-loss":
            return b - v
        base_error, error = (b, v) if self.kind == "error" else (1 - b, 1 - v)
        if base_error == 0:
            return math.nan if error == 0 else -math.inf
        return (base_error - error) / base_error

    @property
    def improvement_interval(self) -> tuple[float, float] | None:
        """:attr:`improvement` at the two ends of :attr:`difference_interval` (ordered low,
        high), or ``None`` when no interval was recorded. The map from the difference
        :math:`v - b` to the improvement is linear for a fixed baseline value, so the interval
        carries over exactly."""
        if self.difference_interval is None:
            return None
        b = self.baseline_value
        ends = []
        for diff in self.difference_interval:
            if self.kind == "log-loss":
                ends.append(-diff)
            elif self.kind == "error":
                ends.append(-diff / b if b else math.nan)
            else:
                ends.append(diff / (1 - b) if b != 1 else math.nan)
        return (min(ends), max(ends))

    @property
    def improvement_unit(self) -> str:
        """What :attr:`improvement` is measured in, for a table header or an axis label."""
        if self.kind == "log-loss":
            return f"saved ({self.metric})"
        return "relative error reduction" if self.kind == "score" else "relative reduction"

    @property
    def gain(self) -> float:
        """How many times better than the baseline (> 1 means the technique wins):
        ``baseline_value / value`` if lower is better, else ``value / baseline_value``.

        Only meaningful within one metric; across metrics use :attr:`improvement`. ``inf`` when
        the denominator is 0 and the numerator is not; ``nan`` when the ratio is undefined
        (a log-loss of either sign)."""
        num, den = ((self.baseline_value, self.value) if self.lower_is_better
                    else (self.value, self.baseline_value))
        if num < 0 or den < 0:
            return math.nan
        if den == 0:
            return math.inf if num > 0 else 1.0
        return num / den

    @property
    def beats_baseline(self) -> bool:
        """True when the technique is strictly better than its baseline."""
        if self.lower_is_better:
            return self.value < self.baseline_value
        return self.value > self.baseline_value

    @property
    def beats_baseline_surely(self) -> bool | None:
        """Whether the interval of the difference lies entirely on the winning side of 0;
        ``None`` when no interval was recorded."""
        if self.difference_interval is None:
            return None
        low, high = self.difference_interval
        return high < 0 if self.lower_is_better else low > 0

    @property
    def loses_to_baseline_surely(self) -> bool | None:
        """Whether the interval of the difference lies entirely on the losing side of 0;
        ``None`` when no interval was recorded."""
        if self.difference_interval is None:
            return None
        low, high = self.difference_interval
        return low > 0 if self.lower_is_better else high < 0


def _finite(name: str, number: object) -> float:
    if isinstance(number, bool) or not isinstance(number, (int, float)):
        raise TypeError(f"{name} must be a number, got {type(number).__name__}")
    if not math.isfinite(number):
        raise ValueError(f"{name} must be finite, got {number}")
    return float(number)


@dataclass(frozen=True)
class Record:
    """A chapter's comparisons with where and when they were measured."""

    chapter: str
    comparisons: tuple[Comparison, ...]
    profile: str
    library_version: str
    created: float
    extras: dict = field(default_factory=dict)

    @property
    def age_seconds(self) -> float:
        return time.time() - self.created


def _chapter_name(chapter: object) -> str:
    if not isinstance(chapter, str):
        raise TypeError(f"chapter must be a string, got {type(chapter).__name__}")
    if not chapter or not all(c.isalnum() or c in "_-" for c in chapter):
        raise ValueError("chapter must be a file-name-safe name such as '03_vae', "
                         f"got {chapter!r}")
    return chapter


def _path(chapter: str) -> Path:
    return runtime.cache_dir("results") / f"{_chapter_name(chapter)}.json"


def record(chapter: str, comparisons: list[Comparison], extras: dict | None = None) -> Path:
    """Save ``comparisons`` measured by ``chapter`` (e.g. ``"03_vae"``); returns the file.

    ``extras`` holds further measurements that later chapters read (curves, per-example
    confidences): a dict of JSON values (numbers, strings, lists, dicts with string keys).
    Replaces what an earlier run of the same chapter saved. The write is atomic.
    """
    path = _path(chapter)
    extras = {} if extras is None else extras
    if not isinstance(extras, dict) or not all(isinstance(k, str) for k in extras):
        raise TypeError("extras must be a dict with string keys")
    try:
        json.dumps(extras, allow_nan=False)
    except (TypeError, ValueError) as err:
        raise ValueError(f"extras must hold finite JSON values only ({err})") from err
    if not isinstance(comparisons, (list, tuple)) or not comparisons:
        raise ValueError("comparisons must be a non-empty list of Comparison")
    for i, item in enumerate(comparisons):
        if not isinstance(item, Comparison):
            raise TypeError(f"comparisons[{i}] must be a Comparison, got {type(item).__name__}")
    payload = {"chapter": chapter, "profile": runtime.profile(),
               "library_version": __version__, "created": time.time(),
               "comparisons": [asdict(c) for c in comparisons], "extras": extras}
    with runtime.atomic_path(path) as tmp:
        tmp.write_text(json.dumps(payload, indent=1), encoding="utf-8")
    return path


def load(chapter: str) -> Record | None:
    """What ``chapter`` last recorded, or ``None`` if it has not run on this machine yet."""
    path = _path(chapter)
    if not path.exists():
        return None
    try:
        payload = json.loads(path.read_text(encoding="utf-8"))
        names = {f.name for f in fields(Comparison)}
        comparisons = tuple(Comparison(**{k: (tuple(v) if isinstance(v, list) else v)
                                          for k, v in c.items() if k in names})
                            for c in payload["comparisons"])
        return Record(chapter=payload["chapter"], comparisons=comparisons,
                      profile=payload["profile"], library_version=payload["library_version"],
                      created=float(payload["created"]),
                      extras=dict(payload.get("extras", {})))
    except (ValueError, TypeError, KeyError) as err:
        raise ValueError(f"{path} is not a results record written by aigc_lib.results.record "
                         f"({err}); delete it and re-run chapter {chapter}") from err


def load_all(chapters: list[str]) -> dict[str, Record | None]:
    """:func:`load` for each of ``chapters``, in order."""
    if isinstance(chapters, str) or not isinstance(chapters, (list, tuple)):
        raise TypeError("chapters must be a list of chapter names")
    return {chapter: load(chapter) for chapter in chapters}


_RUN_NOTEBOOK = """
import sys, nbformat
from nbclient import NotebookClient
path, folder, timeout = sys.argv[1], sys.argv[2], int(sys.argv[3])
nb = nbformat.read(path, as_version=4)
NotebookClient(nb, timeout=timeout, kernel_name="python3",
               resources={"metadata": {"path": folder}}).execute()
"""


def packaged_notebooks() -> Path | None:
    """The folder of the book's chapter notebooks that came with the library: ``notebooks/``
    inside the installed package (a wheel, e.g. in Colab), or ``book/`` beside it in a clone of
    the repository (an editable install); ``None`` if neither exists."""
    here = Path(__file__).resolve().parent
    for folder in (here / "notebooks", here.parent / "book"):
        if any(folder.glob("[0-9][0-9]_*.ipynb")):
            return folder
    return None


def _notebook(chapter: str, book: Path) -> tuple[Path, Path]:
    """Where to run ``chapter`` from: ``book`` if its notebook is there, else a copy of the
    packaged notebooks in ``cache_dir("notebooks")`` (so the chapter finds its neighbours and
    writes nothing into the installed package)."""
    if (book / f"{chapter}.ipynb").exists():
        return book / f"{chapter}.ipynb", book
    shipped = packaged_notebooks()
    if shipped is None or not (shipped / f"{chapter}.ipynb").exists():
        raise FileNotFoundError(f"chapter {chapter} has recorded nothing under profile "
                                f"{runtime.profile()!r}, and neither {book} nor the installed "
                                "aigc_lib holds its notebook; run that chapter first")
    copies = runtime.cache_dir("notebooks")
    for source in shipped.glob("[0-9][0-9]_*.ipynb"):
        shutil.copyfile(source, copies / source.name)
    return copies / f"{chapter}.ipynb", copies


def ensure(chapters: list[str], book_dir: str | os.PathLike,
           timeout: int = 900) -> dict[str, Record]:
    """Every chapter's record, executing the chapter's notebook first where it is missing.

    A record made under another profile counts as missing. The notebook is
    ``book_dir/<chapter>.ipynb`` when it exists; otherwise the copy that ships with the library
    (:func:`packaged_notebooks`), so a chapter opened alone — in Colab, say — can still gather
    what it needs. The notebooks run one after the other, in the book's order, each in a
    separate process (as ``pytest --nbmake`` would run them); a failing notebook raises
    ``RuntimeError`` with the end of its error output.
    """
    records = load_all(chapters)
    book = Path(book_dir)
    if not book.is_dir():
        raise ValueError(f"book_dir must be an existing folder, got {str(book)!r}")
    todo = sorted(c for c, r in records.items() if r is None or r.profile != runtime.profile())
    for chapter in tqdm(todo, desc="running chapters without a record", disable=not todo):
        notebook, folder = _notebook(chapter, book)
        tqdm.write(f"results.ensure: executing {notebook.name} (nothing recorded under profile "
                   f"{runtime.profile()!r} on this machine yet)")
        done = subprocess.run([sys.executable, "-c", _RUN_NOTEBOOK, str(notebook), str(folder),
                               str(timeout)], capture_output=True, text=True)
        if done.returncode != 0:
            raise RuntimeError(f"executing {notebook} failed:\n{done.stderr[-3000:]}")
        records[chapter] = load(chapter)
        if records[chapter] is None:
            raise RuntimeError(f"{notebook} ran but recorded nothing: it must call "
                               f"aigc_lib.results.record({chapter!r}, ...)")
    return records
