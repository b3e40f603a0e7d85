"""Evaluation metrics used across chapters (accuracy here; likelihoods, compression baselines,
Fréchet distance and mode coverage are added by the chapters that derive them)."""

from __future__ import annotations

import math

import torch

from aigc_lib import checks


def accuracy(logits: torch.Tensor, targets: torch.Tensor) -> float:
    """Fraction of rows whose arg-max logit equals the target class."""
    checks.tensor("logits", logits, floating=True, ndim=2)
    checks.tensor("targets", targets, ndim=1)
    if len(logits) != len(targets):
        raise ValueError(f"logits and targets must have the same length, got {len(logits)} and "
                         f"{len(targets)}")
    return (logits.argmax(dim=1) == targets).float().mean().item()


# ------------------------------------------------- bits per byte and compression (chapter 6)

COMPRESSORS = ("gzip", "bz2", "xz")


def bits_per_byte(total_nll_nats: float, n_bytes: int) -> float:
    r"""Code length per byte of text: :math:`\text{bpb} = \frac{-\sum_t \ln p(x_t \mid x_{<t})}
    {\ln 2 \cdot n_\text{bytes}}` (chapter 6).

    A model that assigns the text probability :math:`p` can encode it in
    :math:`-\log_2 p` bits (arithmetic coding), whatever its tokens are; dividing by the text's
    UTF-8 length makes models with different vocabularies, and compressors, comparable.
    Perplexity per token is not (chapter 1).
    """
    if isinstance(total_nll_nats, bool) or not isinstance(total_nll_nats, (int, float)):
        raise TypeError(f"total_nll_nats must be a number, got {type(total_nll_nats).__name__}")
    if not math.isfinite(total_nll_nats) or total_nll_nats < 0:
        raise ValueError(f"total_nll_nats must be finite and >= 0, got {total_nll_nats!r}")
    checks.positive_number("n_bytes", n_bytes, integer=True)
    return total_nll_nats / (math.log(2) * n_bytes)


def _compress(data: bytes, method: str) -> int:
    import bz2
    import lzma
    import zlib

    if method == "gzip":
        return len(zlib.compress(data, 9))   # DEFLATE, as gzip -9 (without gzip's 18-byte header)
    if method == "bz2":
        return len(bz2.compress(data, 9))
    return len(lzma.compress(data, preset=9 | lzma.PRESET_EXTREME))


def compression_bits_per_byte(test: str | bytes, method: str, context: str | bytes = b"") -> float:
    r"""Bits per byte that a standard compressor needs for ``test`` after having seen ``context``:

    .. math:: \text{bpb} = 8\,\frac{|C(\text{context} + \text{test})| - |C(\text{context})|}
              {|\text{test}|}

    with :math:`|C(\cdot)|` the compressed size in bytes (chapter 6). With the training text as
    ``context`` this is the compressor's counterpart of a model's held-out bits per byte. How much
    of the context a compressor can use is its own limit: gzip's window is 32 KB, bz2 works in
    blocks of 900 KB, xz (LZMA, preset ``9e``) has a 64 MB dictionary. ``method`` is ``"gzip"``,
    ``"bz2"`` or ``"xz"``.
    """
    if method not in COMPRESSORS:
        raise ValueError(f"method must be one of {COMPRESSORS}, got {method!r}")
    test_bytes = test.encode() if isinstance(test, str) else test
    context_bytes = context.encode() if isinstance(context, str) else context
    if not isinstance(test_bytes, bytes) or not isinstance(context_bytes, bytes):
        raise TypeError("test and context must be str or bytes")
    if not test_bytes:
        raise ValueError("test must not be empty")
    base = _compress(context_bytes, method) if context_bytes else 0
    return 8 * (_compress(context_bytes + test_bytes, method) - base) / len(test_bytes)
