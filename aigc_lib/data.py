"""Offline datasets (no network): scikit-learn's 8×8 digits, with a fixed split (chapters 2–4),
and the ring of Gaussians of the GAN chapter (chapter 4). MNIST is an online-only option
(chapters 3 and 4), downloaded on request and checked by MD5.

Further loaders (the Python-documentation corpus, the chatterbot dialogues) live here as well.
"""

from __future__ import annotations

import functools
import gzip
import hashlib
import math
import os
import struct
from pathlib import Path

import numpy as np
import torch

from aigc_lib import checks

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
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(dest.name + f".part{os.getpid()}")
    tmp.write_bytes(payload)
    os.replace(tmp, dest)


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
