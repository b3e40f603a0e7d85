"""Offline datasets (no network): scikit-learn's 8×8 digits, with a fixed split (chapters 2–4).

Further loaders (the Python-documentation corpus, the chatterbot dialogues) live here as well.
"""

from __future__ import annotations

import functools

import numpy as np
import torch

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
