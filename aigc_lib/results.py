"""What each chapter measured, kept for the verdict chapter (chapter 12).

Every chapter that compares a technique with a plain baseline ends by calling :func:`record`
with one :class:`Comparison` per technique. The values are the ones its cells just measured and
asserted; nothing is typed in. They are written as JSON to ``cache_dir("results")/<chapter>.json``
(atomically, so a reader never sees half a file), together with the profile, the library version
and the time of the run. Chapter 12 reads them back with :func:`ensure`, which
first executes any chapter whose record is missing or was made under another profile, and
builds its gold-or-bubble table from them.

The *gain* of a technique is how much better than its baseline it is, as a ratio > 1 when it
wins: ``baseline_value / value`` when lower is better (losses, NLL, distances), and
``value / baseline_value`` when higher is better (accuracy, F1).
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, fields
from pathlib import Path

from tqdm.auto import tqdm

from aigc_lib import __version__, runtime

_NUMBER_FIELDS = ("value", "baseline_value")
_OPTIONAL_COSTS = ("trainable_params", "train_seconds", "train_flops")


@dataclass(frozen=True)
class Comparison:
    """One technique against its plain baseline, as measured in one chapter.

    ``metric`` names the quantity and its unit (e.g. ``"test NLL (nats/image)"``);
    ``lower_is_better`` says which way it points. Costs are optional: ``trainable_params``,
    ``train_seconds`` (wall clock on the machine that ran the chapter) and ``train_flops``.
    """

    technique: str
    baseline: str
    metric: str
    value: float
    baseline_value: float
    lower_is_better: bool
    trainable_params: int | None = None
    train_seconds: float | None = None
    train_flops: float | None = None

    def __post_init__(self) -> None:
        for name in ("technique", "baseline", "metric"):
            text = getattr(self, name)
            if not isinstance(text, str) or not text.strip():
                raise ValueError(f"{name} must be a non-empty string, got {text!r}")
        for name in _NUMBER_FIELDS:
            number = getattr(self, name)
            if isinstance(number, bool) or not isinstance(number, (int, float)):
                raise TypeError(f"{name} must be a number, got {type(number).__name__}")
            if not math.isfinite(number):
                raise ValueError(f"{name} must be finite, got {number}")
            object.__setattr__(self, name, float(number))
        if not isinstance(self.lower_is_better, bool):
            raise TypeError("lower_is_better must be a bool, "
                            f"got {type(self.lower_is_better).__name__}")
        for name in _OPTIONAL_COSTS:
            cost = getattr(self, name)
            if cost is None:
                continue
            if isinstance(cost, bool) or not isinstance(cost, (int, float)):
                raise TypeError(f"{name} must be a number or None, got {type(cost).__name__}")
            if not math.isfinite(cost) or cost < 0:
                raise ValueError(f"{name} must be finite and >= 0, got {cost}")
        if self.trainable_params is not None:
            object.__setattr__(self, "trainable_params", int(self.trainable_params))

    @property
    def gain(self) -> float:
        """How many times better than the baseline (> 1 means the technique wins).

        ``baseline_value / value`` if lower is better, else ``value / baseline_value``; ``inf``
        when the denominator is 0 and the numerator is not.
        """
        num, den = ((self.baseline_value, self.value) if self.lower_is_better
                    else (self.value, self.baseline_value))
        if den == 0:
            return math.inf if num > 0 else 1.0
        return num / den

    @property
    def beats_baseline(self) -> bool:
        """True when the technique is strictly better than its baseline."""
        if self.lower_is_better:
            return self.value < self.baseline_value
        return self.value > self.baseline_value


@dataclass(frozen=True)
class Record:
    """A chapter's comparisons with where and when they were measured."""

    chapter: str
    comparisons: tuple[Comparison, ...]
    profile: str
    library_version: str
    created: float

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


def record(chapter: str, comparisons: list[Comparison]) -> Path:
    """Save ``comparisons`` measured by ``chapter`` (e.g. ``"03_vae"``); returns the file.

    Replaces what an earlier run of the same chapter saved. The write is atomic.
    """
    path = _path(chapter)
    if not isinstance(comparisons, (list, tuple)) or not comparisons:
        raise ValueError("comparisons must be a non-empty list of Comparison")
    for i, item in enumerate(comparisons):
        if not isinstance(item, Comparison):
            raise TypeError(f"comparisons[{i}] must be a Comparison, got {type(item).__name__}")
    payload = {"chapter": chapter, "profile": runtime.profile(),
               "library_version": __version__, "created": time.time(),
               "comparisons": [asdict(c) for c in comparisons]}
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
        comparisons = tuple(Comparison(**{k: v for k, v in c.items() if k in names})
                            for c in payload["comparisons"])
        return Record(chapter=payload["chapter"], comparisons=comparisons,
                      profile=payload["profile"], library_version=payload["library_version"],
                      created=float(payload["created"]))
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


def ensure(chapters: list[str], book_dir: str | os.PathLike,
           timeout: int = 900) -> dict[str, Record]:
    """Every chapter's record, executing ``book_dir/<chapter>.ipynb`` first where it is missing.

    A record made under another profile counts as missing. The notebooks run one after the other
    in a separate process (as ``pytest --nbmake`` would run them); a failing notebook raises
    ``RuntimeError`` with the end of its error output.
    """
    records = load_all(chapters)
    book = Path(book_dir)
    if not book.is_dir():
        raise ValueError(f"book_dir must be an existing folder, got {str(book)!r}")
    todo = [c for c, r in records.items() if r is None or r.profile != runtime.profile()]
    for chapter in tqdm(todo, desc="running chapters without a record", disable=not todo):
        notebook = book / f"{chapter}.ipynb"
        if not notebook.exists():
            raise FileNotFoundError(f"chapter {chapter} has recorded nothing under profile "
                                    f"{runtime.profile()!r} and {notebook} does not exist; "
                                    "run that chapter first")
        done = subprocess.run([sys.executable, "-c", _RUN_NOTEBOOK, str(notebook), str(book),
                               str(timeout)], capture_output=True, text=True)
        if done.returncode != 0:
            raise RuntimeError(f"executing {notebook} failed:\n{done.stderr[-3000:]}")
        records[chapter] = load(chapter)
        if records[chapter] is None:
            raise RuntimeError(f"{notebook} ran but recorded nothing: it must call "
                               f"aigc_lib.results.record({chapter!r}, ...)")
    return records
