r"""Fine-tuning a causal language model on prompt → answer pairs (chapter 8).

The pieces the source articles' script got wrong, each small and tested:

- :func:`collate_masked` builds ``input_ids``, ``attention_mask`` and ``labels`` from prompt and
  answer token lists, with label ``-100`` (ignored by the loss) on the prompt and the padding;
- :func:`encode_dialogues` formats and tokenises pairs with :data:`PROMPT_TEMPLATE`;
- :func:`answer_loss` is the training loss for :func:`aigc_lib.training.fit`;
- :func:`answer_nll` and :func:`answer_perplexity` score held-out answers token by token;
- :func:`load_causal_lm` loads a base model and its tokenizer through the ``transformers`` Auto
  classes, from a local folder (the book's pretrained GPT) or, online, a Hub name such as
  ``"gpt2"`` — one code path, and never a silent substitute;
- :func:`freeze_all_but` for partial fine-tuning (count what it leaves trainable with
  :func:`aigc_lib.costs.count_parameters`).

Any Hugging Face causal LM that accepts ``input_ids``, ``attention_mask`` and ``labels`` and
returns ``.logits`` and ``.loss`` works, including one wrapped by :mod:`aigc_lib.models.lora`
or by ``peft``.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from aigc_lib import checks, encoders, runtime

IGNORE_INDEX = -100        # the label value that cross-entropy (torch and transformers) skips
PROMPT_TEMPLATE = "Question: {question}\nAnswer:"
ANSWER_TEMPLATE = " {answer}"           # followed by the tokenizer's end-of-text token


@dataclass
class Encoded:
    """Padded examples: ``input_ids`` and ``labels`` (int64) and ``attention_mask`` (1 on real
    tokens, 0 on padding), each ``(N, T)``, right-padded. ``labels`` equals ``input_ids`` on
    answer tokens and :data:`IGNORE_INDEX` elsewhere."""
    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    labels: torch.Tensor

    def tensors(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The three tensors, in the order :func:`answer_loss` takes them (for ``fit``)."""
        return self.input_ids, self.attention_mask, self.labels

    def __len__(self) -> int:
        return len(self.input_ids)

    @property
    def answer_tokens(self) -> int:
        """How many tokens are scored (labels other than :data:`IGNORE_INDEX`, less each row's
        first position, which nothing predicts)."""
        return int((self.labels[:, 1:] != IGNORE_INDEX).sum())


def collate_masked(examples: Sequence[tuple[Sequence[int], Sequence[int]]],
                   pad_id: int) -> Encoded:
    r"""Pad ``(prompt_ids, answer_ids)`` pairs into an :class:`Encoded` batch (chapter 8).

    Row :math:`i` is ``prompt_ids + answer_ids`` followed by ``pad_id`` up to the longest row;
    ``attention_mask`` is 1 on its real tokens; ``labels`` copies the answer tokens and puts
    :data:`IGNORE_INDEX` on the prompt and on the padding, so the loss is the answer's
    negative log-likelihood given the prompt, and padding is never learned.
    """
    if not isinstance(examples, Sequence) or not examples:
        raise ValueError("examples must be a non-empty sequence of (prompt_ids, answer_ids)")
    if isinstance(pad_id, bool) or not isinstance(pad_id, int) or pad_id < 0:
        raise TypeError(f"pad_id must be a non-negative int, got {pad_id!r}")
    rows = []
    for i, example in enumerate(examples):
        if not (isinstance(example, (tuple, list)) and len(example) == 2):
            raise TypeError(f"examples[{i}] must be a (prompt_ids, answer_ids) pair")
        prompt, answer = (list(map(int, part)) for part in example)
        if not prompt or not answer:
            raise ValueError(f"examples[{i}] has an empty prompt or answer; a scored answer "
                             f"token needs at least one token before it")
        rows.append((prompt, answer))
    width = max(len(p) + len(a) for p, a in rows)
    input_ids = torch.full((len(rows), width), pad_id, dtype=torch.int64)
    labels = torch.full((len(rows), width), IGNORE_INDEX, dtype=torch.int64)
    mask = torch.zeros((len(rows), width), dtype=torch.int64)
    for i, (prompt, answer) in enumerate(rows):
        n, m = len(prompt), len(answer)
        input_ids[i, :n + m] = torch.tensor(prompt + answer)
        labels[i, n:n + m] = torch.tensor(answer)
        mask[i, :n + m] = 1
    return Encoded(input_ids, mask, labels)


def _token_ids(tokenizer, text: str) -> list[int]:
    return list(tokenizer(text, add_special_tokens=False, verbose=False)["input_ids"])


def pad_token_id(tokenizer) -> int:
    """The tokenizer's padding id, or its end-of-text id when it has none (GPT-2 has none).
    Which id pads does not matter: padding is masked out of attention and labels."""
    for name in ("pad_token_id", "eos_token_id"):
        value = getattr(tokenizer, name, None)
        if isinstance(value, int):
            return value
    raise ValueError("tokenizer has neither a pad_token_id nor an eos_token_id")


def _pair(item, i: int) -> tuple[str, str]:
    if hasattr(item, "question") and hasattr(item, "answer"):
        item = (item.question, item.answer)
    if not (isinstance(item, (tuple, list)) and len(item) == 2
            and all(isinstance(s, str) for s in item)):
        raise TypeError(f"dialogues[{i}] must be a Dialogue or a (question, answer) pair of str")
    return item[0], item[1]


def encode_dialogues(tokenizer, dialogues: Iterable, max_length: int,
                     max_answer_tokens: int | None = None, context: str = "") -> Encoded:
    r"""Tokenise prompt → answer pairs for training or scoring (chapter 8).

    Each pair becomes the prompt ``context + PROMPT_TEMPLATE.format(question=...)`` and the
    answer ``ANSWER_TEMPLATE.format(answer=...)`` plus the end-of-text token, which teaches the
    model where an answer stops. The answer keeps at most ``max_answer_tokens`` tokens
    (default: ``max_length // 2``), the prompt loses tokens *from the left* until the row fits
    in ``max_length`` (the model's context). Fixing ``max_answer_tokens`` fixes which tokens
    are scored, so evaluations with different contexts (zero-shot, few-shot) score exactly the
    same answer tokens. ``dialogues`` holds :class:`aigc_lib.data.Dialogue` or
    ``(question, answer)`` pairs.
    """
    checks.positive_number("max_length", max_length, integer=True)
    if max_length < 2:
        raise ValueError(f"max_length must be >= 2, got {max_length}")
    if max_answer_tokens is None:
        max_answer_tokens = max_length // 2
    checks.positive_number("max_answer_tokens", max_answer_tokens, integer=True)
    if max_answer_tokens >= max_length:
        raise ValueError(f"max_answer_tokens ({max_answer_tokens}) must be < max_length "
                         f"({max_length}): the prompt needs at least one token")
    if not isinstance(context, str):
        raise TypeError(f"context must be a str, got {type(context).__name__}")
    eos = getattr(tokenizer, "eos_token_id", None)
    if not isinstance(eos, int):
        raise ValueError("tokenizer has no eos_token_id to end the answers with")
    pairs = [_pair(item, i) for i, item in enumerate(dialogues)]
    if not pairs:
        raise ValueError("dialogues is empty")
    examples = []
    for question, answer in pairs:
        prompt = _token_ids(tokenizer, context + PROMPT_TEMPLATE.format(question=question))
        reply = (_token_ids(tokenizer, ANSWER_TEMPLATE.format(answer=answer)) + [eos])
        reply = reply[:max_answer_tokens]
        examples.append((prompt[-(max_length - len(reply)):], reply))
    return collate_masked(examples, pad_token_id(tokenizer))


def few_shot_context(dialogues: Iterable) -> str:
    r"""Worked examples to put in front of a prompt (few-shot prompting, chapter 8): each pair
    formatted exactly as in training, ``PROMPT_TEMPLATE + ANSWER_TEMPLATE``, followed by a blank
    line. Pass the result as ``context`` to :func:`encode_dialogues`."""
    pairs = [_pair(item, i) for i, item in enumerate(dialogues)]
    if not pairs:
        raise ValueError("dialogues is empty")
    return "".join(PROMPT_TEMPLATE.format(question=q) + ANSWER_TEMPLATE.format(answer=a) + "\n\n"
                   for q, a in pairs)


def _trim(input_ids, attention_mask, labels):
    width = int(attention_mask.sum(1).max())         # rows are right-padded
    return input_ids[:, :width], attention_mask[:, :width], labels[:, :width]


def answer_loss(model: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                labels: torch.Tensor) -> torch.Tensor:
    r"""Mean negative log-likelihood (nats) of the answer tokens of a batch: the loss
    ``transformers`` computes when given ``labels`` (shifted by one inside the model,
    :data:`IGNORE_INDEX` skipped). Columns that are padding in every row are cut first.
    Use it as ``fit(model, encoded.tensors(), loss_fn=answer_loss, ...)``."""
    checks.tensor("input_ids", input_ids, ndim=2)
    checks.same_shape("input_ids", input_ids, "attention_mask", attention_mask)
    checks.same_shape("input_ids", input_ids, "labels", labels)
    input_ids, attention_mask, labels = _trim(input_ids, attention_mask, labels)
    return model(input_ids=input_ids, attention_mask=attention_mask, labels=labels).loss


@torch.no_grad()
def answer_nll(model: nn.Module, encoded: Encoded, batch_size: int = 32) -> tuple[float, int]:
    r"""Total negative log-likelihood (nats) of every answer token of ``encoded`` under
    ``model``, and how many tokens that is (chapter 8):
    :math:`\big(-\sum_{(i,t):\,y_{i,t}\ne-100}\log p(y_{i,t}\mid x_{i,<t}),\ \#\{\ldots\}\big)`.
    Summing over tokens before dividing weights every answer token equally, whatever batch or
    answer it sits in. The model is put in eval mode and restored afterwards."""
    if not isinstance(encoded, Encoded):
        raise TypeError(f"encoded must be an Encoded batch, got {type(encoded).__name__}")
    checks.positive_number("batch_size", batch_size, integer=True)
    device = next(model.parameters()).device
    total, count = 0.0, 0
    with runtime.eval_mode(model):
        for start in range(0, len(encoded), batch_size):
            rows = slice(start, start + batch_size)
            batch = _trim(*(t[rows] for t in encoded.tensors()))
            ids, mask, labels = (t.to(device) for t in batch)
            logits = model(input_ids=ids, attention_mask=mask).logits[:, :-1].float()
            targets = labels[:, 1:]
            total += F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1),
                                     ignore_index=IGNORE_INDEX, reduction="sum").item()
            count += int((targets != IGNORE_INDEX).sum())
    if count == 0:
        raise ValueError("encoded has no answer tokens to score")
    return total, count


def answer_perplexity(model: nn.Module, encoded: Encoded, batch_size: int = 32) -> float:
    r"""Answer-token perplexity :math:`\exp(\text{NLL}/n)` of :func:`answer_nll`: the number of
    equally likely tokens the model is, on average, choosing among at each answer token."""
    total, count = answer_nll(model, encoded, batch_size)
    return math.exp(total / count)


def freeze_all_but(model: nn.Module, prefixes: Sequence[str]) -> list[str]:
    """Make only the parameters whose dotted name starts with one of ``prefixes`` trainable.

    A tied parameter answers to all its names: with GPT-2's output layer tied to the token
    embedding, ``"lm_head"`` unfreezes ``transformer.wte.weight`` too. Returns the names
    (first name of each tensor) now trainable; raises ``ValueError`` if none matched."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if isinstance(prefixes, str) or not prefixes or not all(
            isinstance(p, str) and p for p in prefixes):
        raise TypeError("prefixes must be a non-empty sequence of parameter-name prefixes")
    chosen = {id(p) for name, p in model.named_parameters(remove_duplicate=False)
              if any(name.startswith(prefix) for prefix in prefixes)}
    if not chosen:
        raise ValueError(f"prefixes {list(prefixes)} match no parameter of "
                         f"{type(model).__name__}")
    trainable = []
    for name, p in model.named_parameters():
        p.requires_grad_(id(p) in chosen)
        if id(p) in chosen:
            trainable.append(name)
    return trainable


def load_causal_lm(source: str | os.PathLike, dtype: torch.dtype = torch.float32):
    """``(model, tokenizer)`` of a causal language model through ``transformers``'
    ``AutoModelForCausalLM`` and ``AutoTokenizer`` (chapter 8).

    ``source`` is a local model folder (e.g. :func:`aigc_lib.pretrained.small_gpt`) or a Hub
    name (``"gpt2"``). A Hub name needs the network or the local Hugging Face cache; when it
    cannot be loaded this raises, it never falls back to another model. Weights are read from
    safetensors only, and no remote code is run."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if not isinstance(source, (str, os.PathLike)) or not str(source):
        raise TypeError(f"source must be a model folder or a Hub name, got {source!r}")
    if isinstance(source, os.PathLike) or Path(str(source)).exists():
        folder = Path(source)
        if not (folder / "config.json").exists():
            raise ValueError(f"source {str(folder)!r} is a folder without config.json: not a "
                             f"Hugging Face model folder")
        source = str(folder)
    with encoders.quiet_transformers(messages=False):  # no "Loading weights" bar in the book
        model = AutoModelForCausalLM.from_pretrained(source, dtype=dtype, use_safetensors=True,
                                                     trust_remote_code=False)
        tokenizer = AutoTokenizer.from_pretrained(source, trust_remote_code=False)
    return model.eval(), tokenizer


@torch.no_grad()
def generate_answer(model: nn.Module, tokenizer, question: str, max_new_tokens: int = 48,
                    context: str = "") -> str:
    """The model's greedy answer to ``question`` in the fine-tuning format (chapter 8): the
    prompt ``context + PROMPT_TEMPLATE``, then the most likely token at each step until the
    end-of-text token or ``max_new_tokens``; returned without the prompt, stripped."""
    if not isinstance(question, str):
        raise TypeError(f"question must be a str, got {type(question).__name__}")
    checks.positive_number("max_new_tokens", max_new_tokens, integer=True)
    device = next(model.parameters()).device
    limit = model.config.n_positions if hasattr(model.config, "n_positions") else None
    prompt = _token_ids(tokenizer, context + PROMPT_TEMPLATE.format(question=question))
    if limit is not None:
        if max_new_tokens >= limit:
            raise ValueError(f"max_new_tokens must be < the model's context ({limit})")
        prompt = prompt[-(limit - max_new_tokens):]
    ids = torch.tensor([prompt], device=device)
    with runtime.eval_mode(model):
        out = model.generate(ids, attention_mask=torch.ones_like(ids), do_sample=False,
                             max_new_tokens=max_new_tokens, eos_token_id=tokenizer.eos_token_id,
                             pad_token_id=pad_token_id(tokenizer))
    return tokenizer.decode(out[0, len(prompt):], skip_special_tokens=True).strip()
