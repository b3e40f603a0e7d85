"""Simple text augmentation: new training messages made by editing old ones (chapter 9).

In the spirit of EDA (easy data augmentation, Wei and Zou 2019), with the edits that need no
external resource: **random deletion** of words, **random swap** of two words, and **typos**
(two neighbouring letters exchanged inside a word). Synonym replacement, EDA's fourth edit, needs
a thesaurus, which does not ship offline; it is left out. Everything is deterministic under a
seed.

Chapter 10's black-box attack enumerates the same edits (:func:`single_edits`), and chapters 10
and 12 ask whether a model keeps its answer when a message is reworded without changing what it
asks for (:func:`reword`).
"""

from __future__ import annotations

import random
from collections.abc import Sequence

import torch

from aigc_lib import checks


def _probability(name: str, value: object) -> float:
    checks.positive_number(name, value, allow_zero=True)
    if value > 1:
        raise ValueError(f"{name} must be a probability in [0, 1], got {value!r}")
    return float(value)


def _rng(seed: int | random.Random) -> random.Random:
    if isinstance(seed, random.Random):
        return seed
    checks.positive_number("seed", seed, integer=True, allow_zero=True)
    return random.Random(seed)


def augment_text(text: str, seed: int | random.Random, p_delete: float = 0.1,
                 n_swap: int = 1, p_typo: float = 0.05) -> str:
    """One edited copy of ``text``: each word is deleted with probability ``p_delete`` (at
    least one word is kept), then ``n_swap`` random pairs of words are exchanged, then each
    word of four or more characters gets, with probability ``p_typo``, two neighbouring
    inner characters exchanged. Words are separated by whitespace, which is normalised to
    single spaces. ``seed`` is an int or a ``random.Random`` (which is advanced).
    """
    if not isinstance(text, str):
        raise TypeError(f"text must be a str, got {type(text).__name__}")
    p_delete, p_typo = _probability("p_delete", p_delete), _probability("p_typo", p_typo)
    checks.positive_number("n_swap", n_swap, integer=True, allow_zero=True)
    rng = _rng(seed)
    words = text.split()
    if not words:
        return text
    kept = [w for w in words if rng.random() >= p_delete]
    words = kept or [rng.choice(words)]
    for _ in range(n_swap if len(words) > 1 else 0):
        i, j = rng.sample(range(len(words)), 2)
        words[i], words[j] = words[j], words[i]
    for k, word in enumerate(words):
        if len(word) >= 4 and rng.random() < p_typo:
            i = rng.randrange(1, len(word) - 2)
            words[k] = word[:i] + word[i + 1] + word[i] + word[i + 2:]
    return " ".join(words)


def augment_dataset(texts: Sequence[str], labels: torch.Tensor | Sequence[int], copies: int = 4,
                    seed: int = 0, **edits: float) -> tuple[list[str], torch.Tensor]:
    """The messages followed by ``copies`` edited copies of each (:func:`augment_text`, with
    ``edits`` passed on), and their labels (an edited copy keeps its message's label).

    Returns ``(texts, labels)`` with ``len(texts) * (1 + copies)`` entries: the originals in
    order, then the first copy of every message, then the second, and so on.
    """
    if isinstance(texts, str) or not isinstance(texts, Sequence):
        raise TypeError(f"texts must be a list of str, got {type(texts).__name__}")
    if not all(isinstance(t, str) for t in texts):
        raise TypeError("texts must hold only str")
    labels = torch.as_tensor(labels)
    if labels.ndim != 1 or len(labels) != len(texts):
        raise ValueError(f"labels must be 1-D with one entry per text ({len(texts)}), got shape "
                         f"{tuple(labels.shape)}")
    if labels.is_floating_point():
        raise TypeError(f"labels must be integer class indices, got {labels.dtype}")
    checks.positive_number("copies", copies, integer=True, allow_zero=True)
    unknown = set(edits) - {"p_delete", "n_swap", "p_typo"}
    if unknown:
        raise TypeError(f"unknown edits {sorted(unknown)}; use p_delete, n_swap, p_typo")
    rng = _rng(seed)
    out = list(texts)
    for _ in range(copies):
        out += [augment_text(t, rng, **edits) for t in texts]
    return out, labels.to(torch.int64).repeat(1 + copies)


def _typo(word: str, i: int) -> str:
    return word[:i] + word[i + 1] + word[i] + word[i + 2:]


def single_edits(text: str) -> list[str]:
    """Every distinct message one edit of :func:`augment_text` away from ``text`` (chapter 10):
    one word deleted (when there are two or more), two words swapped, or two neighbouring inner
    letters exchanged in a word of four or more characters. Words are split on whitespace and
    joined by single spaces; ``text`` itself is never among them."""
    if not isinstance(text, str):
        raise TypeError(f"text must be a str, got {type(text).__name__}")
    words = text.split()
    out: list[list[str]] = []
    if len(words) > 1:
        out += [words[:i] + words[i + 1:] for i in range(len(words))]
    out += [[*words[:i], words[j], *words[i + 1:j], words[i], *words[j + 1:]]
            for i in range(len(words)) for j in range(i + 1, len(words))]
    out += [[*words[:k], _typo(w, i), *words[k + 1:]] for k, w in enumerate(words)
            if len(w) >= 4 for i in range(1, len(w) - 2)]
    same = " ".join(words)
    return [e for e in dict.fromkeys(" ".join(w) for w in out) if e != same]


# Frames that a ticketing system might wrap around a message: none of their words occurs in the
# training messages of any class (chapter 12 checks it), so they carry no information about the
# label and a router's answer should not move.
NEUTRAL_FRAMES = {"forwarded": "Forwarded message: {}",
                  "helpdesk": "{} (received via helpdesk portal)"}
REWORDINGS = ("lower case", "no final punctuation", *NEUTRAL_FRAMES, "small edits")


def reword(text: str, how: str, seed: int = 0) -> str:
    """``text`` reworded without changing what it asks for (chapters 10 and 12): ``"lower
    case"``; ``"no final punctuation"`` (a final ``?``, ``!`` or ``.`` removed); a
    :data:`NEUTRAL_FRAMES` frame around it; or ``"small edits"`` (:func:`augment_text` with
    ``seed``: a dropped word, two swapped, a typo; these can change the meaning)."""
    if not isinstance(text, str):
        raise TypeError(f"text must be a str, got {type(text).__name__}")
    if how == "lower case":
        return text.lower()
    if how == "no final punctuation":
        return text.rstrip().rstrip("?!.").rstrip() or text
    if how in NEUTRAL_FRAMES:
        return NEUTRAL_FRAMES[how].format(text)
    if how == "small edits":
        return augment_text(text, seed)
    raise ValueError(f"how must be one of {REWORDINGS}, got {how!r}")
