r"""Retrieval: the baseline a support team tries before fine-tuning anything (chapter 8).

Embed the questions of the training conversations with a sentence encoder (the offline
all-MiniLM-L6-v2, :mod:`aigc_lib.encoders`), and answer a new question with the answer of the
most similar training question, by cosine similarity of unit-length embeddings:

.. math:: \hat\imath(q) = \arg\max_i\ \frac{e(q)\cdot e(q_i)}{\lVert e(q)\rVert\,\lVert e(q_i)
          \rVert}, \qquad \text{answer}(q) = a_{\hat\imath(q)}.

The same search feeds retrieval-augmented generation: the retrieved pair goes into the prompt
of a language model as an earlier exchange of the chat. :class:`Embedder` embeds each distinct
text once, so a chapter that scores many answers pays for one pass of the encoder per text.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from aigc_lib import checks, encoders


class Embedder:
    """``embedder(texts) -> (n, d)`` unit-length sentence embeddings (float32, CPU), computed
    once per distinct text and kept. The default encoder is all-MiniLM-L6-v2, loaded offline
    (:func:`aigc_lib.encoders.load_encoder`); ``max_length`` tokens per text."""

    def __init__(self, encoder: torch.nn.Module | None = None, tokenizer=None,
                 max_length: int = 128, batch_size: int = 64):
        checks.positive_number("max_length", max_length, integer=True)
        checks.positive_number("batch_size", batch_size, integer=True)
        if (encoder is None) != (tokenizer is None):
            raise ValueError("give both encoder and tokenizer, or neither (for all-MiniLM-L6-v2)")
        self.encoder = encoder if encoder is not None else encoders.load_encoder()
        self.tokenizer = tokenizer if tokenizer is not None else encoders.load_tokenizer()
        self.max_length, self.batch_size = max_length, batch_size
        self.cache: dict[str, torch.Tensor] = {}

    def __call__(self, texts: Sequence[str]) -> torch.Tensor:
        texts = encoders._texts(texts)
        new = [t for t in dict.fromkeys(texts) if t not in self.cache]
        if new:
            # an empty text has no tokens for mean pooling: embed a space instead
            vectors = encoders.embed(self.encoder, self.tokenizer, [t or " " for t in new],
                                     max_length=self.max_length, batch_size=self.batch_size,
                                     normalize=True)
            self.cache.update(zip(new, vectors))
        return torch.stack([self.cache[t] for t in texts])


class NearestAnswer:
    """Answer with the answer of the most similar known question (chapter 8's retrieval
    baseline). ``questions[i]`` and ``answers[i]`` are the training pairs; ``embed`` maps texts
    to ``(n, d)`` embeddings (an :class:`Embedder`)."""

    def __init__(self, questions: Sequence[str], answers: Sequence[str], embed):
        if not callable(embed):
            raise TypeError(f"embed must be callable, got {type(embed).__name__}")
        for name, texts in (("questions", questions), ("answers", answers)):
            if isinstance(texts, str) or not isinstance(texts, Sequence) or \
                    not all(isinstance(t, str) for t in texts):
                raise TypeError(f"{name} must be a list of str")
        if len(questions) != len(answers) or not questions:
            raise ValueError(f"questions and answers must be non-empty and equally long, got "
                             f"{len(questions)} and {len(answers)}")
        self.questions, self.answers, self.embed = list(questions), list(answers), embed
        self.keys = torch.nn.functional.normalize(embed(self.questions).float(), dim=-1)

    def search(self, queries: Sequence[str], k: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
        """The ``k`` most similar known questions of each query: ``(cosines, indices)``, both
        ``(len(queries), k)``, most similar first."""
        checks.positive_number("k", k, integer=True)
        if k > len(self.questions):
            raise ValueError(f"k must be <= the number of known questions "
                             f"({len(self.questions)}), got {k}")
        if isinstance(queries, str) or not isinstance(queries, Sequence) or not queries:
            raise TypeError("queries must be a non-empty list of str")
        found = torch.nn.functional.normalize(self.embed(list(queries)).float(), dim=-1)
        return (found @ self.keys.T).topk(k, dim=-1)

    def __call__(self, queries: Sequence[str]) -> list[str]:
        """The answer of the nearest known question, for each query."""
        _, index = self.search(queries, 1)
        return [self.answers[i] for i in index[:, 0].tolist()]

    def pairs(self, queries: Sequence[str]) -> list[tuple[str, str]]:
        """The nearest known ``(question, answer)`` pair of each query (for a prompt)."""
        _, index = self.search(queries, 1)
        return [(self.questions[i], self.answers[i]) for i in index[:, 0].tolist()]
