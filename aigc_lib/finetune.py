r"""Fine-tuning a causal language model on chat conversations (chapter 8).

The pieces the source articles' script got wrong, and the ones a practitioner uses now, each
small and tested (``tests/test_finetune.py``, ``tests/test_real_models.py``):

- **chat format**: :func:`use_chat_template` keeps a model's own chat template (Llama, Qwen,
  ... instruct models ship one) or installs the book's, :data:`BOOK_CHAT_TEMPLATE`, for models
  that have none (GPT-2, the book's GPT); every assistant turn ends with an end-of-turn token;
- **multi-turn masking**: :func:`tokenize_chat` renders a conversation with the tokenizer's
  ``apply_chat_template`` and marks the tokens of *every* assistant turn; :func:`encode_chats`
  pads a batch with label ``-100`` (ignored by the loss) everywhere else — the same batch, loss
  and truncation as TRL's ``SFTTrainer(assistant_only_loss=True)``;
- :func:`encode_replies` scores only the last assistant turn, with the prompt cut from the
  left, so that different prompts (zero-shot, few-shot, retrieval-augmented) score exactly the
  same answer tokens; :func:`collate_masked` is the padding both use;
- :func:`answer_loss` (training), :func:`answer_nll_rows`, :func:`answer_nll` and
  :func:`answer_perplexity` (evaluation) all call :func:`aigc_lib.losses.causal_lm_loss`;
- :func:`load_causal_lm` loads any Hugging Face causal LM by Hub id or local folder, never a
  silent substitute, and fails clearly (no network call) when offline;
- :func:`generate_replies` answers a batch of conversations greedily; :func:`freeze_all_but`
  is partial fine-tuning.
"""

from __future__ import annotations

import math
import os
import random
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn as nn

from aigc_lib import checks, encoders, losses, runtime
from aigc_lib.models import gpt

IGNORE_INDEX = -100        # the label value that cross-entropy (torch and transformers) skips
ROLES = ("system", "user", "assistant")
SYSTEM_PROMPT = "You answer questions about computers, code and AI."
# The book's chat template (Jinja, as Hugging Face tokenizers store them), for models without
# one. An assistant turn is " <content><eos>": the end-of-text token ends the turn, so the model
# learns to stop, and generation stops there. {% generation %} marks what the assistant says,
# which is what transformers' return_assistant_tokens_mask (and TRL's assistant_only_loss) use.
BOOK_CHAT_TEMPLATE = (
    "{%- for message in messages -%}"
    "{%- if message['role'] == 'system' -%}{{ message['content'] + '\n' }}"
    "{%- elif message['role'] == 'user' -%}{{ 'User: ' + message['content'] + '\n' }}"
    "{%- elif message['role'] == 'assistant' -%}{{ 'Assistant:' }}"
    "{% generation %}{{ ' ' + message['content'] + eos_token }}{% endgeneration %}"
    "{%- endif -%}{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{ 'Assistant:' }}{%- endif -%}")


@dataclass
class Encoded:
    """Padded examples: ``input_ids`` and ``labels`` (int64) and ``attention_mask`` (1 on real
    tokens, 0 on padding), each ``(N, T)``, right-padded. ``labels`` equals ``input_ids`` on
    the tokens to learn or score and :data:`IGNORE_INDEX` elsewhere."""
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
    rows = []
    for i, example in enumerate(examples):
        if not (isinstance(example, (tuple, list)) and len(example) == 2):
            raise TypeError(f"examples[{i}] must be a (prompt_ids, answer_ids) pair")
        prompt, answer = (list(map(int, part)) for part in example)
        if not prompt or not answer:
            raise ValueError(f"examples[{i}] has an empty prompt or answer; a scored answer "
                             f"token needs at least one token before it")
        rows.append((prompt + answer, [0] * len(prompt) + [1] * len(answer)))
    return _pad(rows, pad_id)


def _pad(rows: Sequence[tuple[list[int], list[int]]], pad_id: int) -> Encoded:
    """Right-pad ``(ids, learn_mask)`` rows; labels are the ids where the mask is 1."""
    if isinstance(pad_id, bool) or not isinstance(pad_id, int) or pad_id < 0:
        raise TypeError(f"pad_id must be a non-negative int, got {pad_id!r}")
    width = max(len(ids) for ids, _ in rows)
    input_ids = torch.full((len(rows), width), pad_id, dtype=torch.int64)
    labels = torch.full((len(rows), width), IGNORE_INDEX, dtype=torch.int64)
    mask = torch.zeros((len(rows), width), dtype=torch.int64)
    for i, (ids, learn) in enumerate(rows):
        row = torch.tensor(ids, dtype=torch.int64)
        input_ids[i, :len(ids)] = row
        labels[i, :len(ids)] = torch.where(torch.tensor(learn, dtype=torch.bool), row,
                                           IGNORE_INDEX)
        mask[i, :len(ids)] = 1
    return Encoded(input_ids, mask, labels)


def pad_token_id(tokenizer) -> int:
    """The tokenizer's padding id, or its end-of-text id when it has none (GPT-2 has none).
    Which id pads does not matter: padding is masked out of attention and labels."""
    for name in ("pad_token_id", "eos_token_id"):
        value = getattr(tokenizer, name, None)
        if isinstance(value, int):
            return value
    raise ValueError("tokenizer has neither a pad_token_id nor an eos_token_id")


# ------------------------------------------------------------------------------ chat format

def check_conversation(messages: object, name: str = "conversation") -> list[dict]:
    """Return ``messages`` if it is a conversation: a non-empty list of ``{"role", "content"}``
    dicts with roles in :data:`ROLES` and string contents; else raise naming ``name``."""
    if isinstance(messages, (str, bytes)) or not isinstance(messages, Sequence) or not messages:
        raise TypeError(f"{name} must be a non-empty list of {{'role', 'content'}} dicts, "
                        f"got {type(messages).__name__}")
    for i, message in enumerate(messages):
        if not isinstance(message, dict) or set(message) != {"role", "content"}:
            raise TypeError(f"{name}[{i}] must be a dict with exactly the keys 'role' and "
                            f"'content', got {message!r}")
        if message["role"] not in ROLES:
            raise ValueError(f"{name}[{i}]['role'] must be one of {ROLES}, got "
                             f"{message['role']!r}")
        if not isinstance(message["content"], str):
            raise TypeError(f"{name}[{i}]['content'] must be a str, got "
                            f"{type(message['content']).__name__}")
    return list(messages)


def conversation(question: str, answer: str | None = None,
                 history: Sequence[tuple[str, str]] = (),
                 system: str | None = SYSTEM_PROMPT) -> list[dict]:
    """A conversation in the chat format: an optional system turn, earlier ``(user, assistant)``
    exchanges from ``history``, the user's ``question`` and, when given, the ``answer``.
    Without an answer it is a prompt, for :func:`generate_replies`."""
    messages = [{"role": "system", "content": system}] if system else []
    for user, assistant in history:
        messages += [{"role": "user", "content": user},
                     {"role": "assistant", "content": assistant}]
    messages.append({"role": "user", "content": question})
    if answer is not None:
        messages.append({"role": "assistant", "content": answer})
    return check_conversation(messages)


def chat_sessions(dialogues: Sequence, exchanges: int = 2, seed: int = 0,
                  system: str | None = SYSTEM_PROMPT, fits=None) -> list[list[dict]]:
    """Multi-turn training conversations from question → answer pairs (chapter 8): the pairs
    of each category are shuffled by ``random.Random(seed)`` and put up to ``exchanges`` at a
    time into one chat session, as a user asking several questions in one chat. A pair joins
    the current session only if ``fits(session)`` (e.g. "its tokens fit the context") holds
    for the longer session; otherwise it starts a new one. Every pair is used exactly once."""
    checks.positive_number("exchanges", exchanges, integer=True)
    if fits is not None and not callable(fits):
        raise TypeError(f"fits must be None or callable, got {type(fits).__name__}")
    pairs = [_pair(item, i) + (getattr(item, "category", ""),)
             for i, item in enumerate(dialogues)]
    if not pairs:
        raise ValueError("dialogues is empty")
    rng = random.Random(seed)
    sessions: list[list[tuple[str, str]]] = []
    for category in dict.fromkeys(c for _, _, c in pairs):
        mine = [(q, a) for q, a, c in pairs if c == category]
        rng.shuffle(mine)
        current: list[tuple[str, str]] = []
        for pair in mine:
            longer = current + [pair]
            if current and (len(longer) > exchanges or (
                    fits is not None and not fits(_session(longer, system)))):
                sessions.append(current)
                longer = [pair]
            current = longer
        sessions.append(current)
    return [_session(chunk, system) for chunk in sessions]


def _session(chunk: list[tuple[str, str]], system: str | None) -> list[dict]:
    return conversation(chunk[-1][0], chunk[-1][1], chunk[:-1], system)


def _pair(item, i: int) -> tuple[str, str]:
    if hasattr(item, "question") and hasattr(item, "answer"):
        item = (item.question, item.answer)
    if not (isinstance(item, (tuple, list)) and len(item) == 2
            and all(isinstance(s, str) for s in item)):
        raise TypeError(f"dialogues[{i}] must be a Dialogue or a (question, answer) pair of str")
    return item[0], item[1]


def use_chat_template(tokenizer) -> str:
    """Make sure ``tokenizer`` can render conversations: keep its own chat template (returns
    ``"model"``) or install :data:`BOOK_CHAT_TEMPLATE` (returns ``"book"``). The book's
    template needs an end-of-text token to end assistant turns."""
    if getattr(tokenizer, "chat_template", None):
        return "model"
    if not isinstance(getattr(tokenizer, "eos_token", None), str):
        raise ValueError("tokenizer has neither a chat template nor an eos_token to end "
                         "assistant turns with")
    tokenizer.chat_template = BOOK_CHAT_TEMPLATE
    return "book"


def end_of_turn_id(tokenizer, end_of_turn: int | None = None) -> int:
    """The token that ends an assistant turn: ``end_of_turn`` when given, else the tokenizer's
    ``eos_token_id`` (GPT-2 and the book's template; Qwen's ``<|im_end|>`` and Llama 3's
    ``<|eot_id|>``, which their instruct tokenizers declare as eos)."""
    value = tokenizer.eos_token_id if end_of_turn is None else end_of_turn
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"end_of_turn must be a token id (int >= 0), or None with a tokenizer "
                         f"that has an eos_token_id; got {value!r}")
    return value


def _render(tokenizer, messages: list[dict], add_generation_prompt: bool) -> list[int]:
    out = tokenizer.apply_chat_template(messages, tokenize=True, return_dict=True,
                                        add_generation_prompt=add_generation_prompt)
    return list(out["input_ids"])


def tokenize_chat(tokenizer, messages: Sequence[dict],
                  end_of_turn: int | None = None) -> tuple[list[int], list[int]]:
    r"""Token ids of a conversation rendered by the tokenizer's chat template, and a mask that
    is 1 on the tokens of **every** assistant turn (chapter 8).

    Assistant turn :math:`k` spans the tokens between the rendering of the turns before it
    followed by the generation prompt (``"Assistant:"`` in the book's template) and the
    rendering that includes it; this works with any template, with or without
    ``{% generation %}`` markers. Raises ``ValueError`` when the conversation has no assistant
    turn, when an assistant turn does not contain the end-of-turn token (the model would never
    learn to stop), or when the template renders a prefix inconsistently.
    """
    messages = check_conversation(messages)
    if not any(m["role"] == "assistant" for m in messages):
        raise ValueError("conversation has no assistant turn: nothing to learn")
    eot = end_of_turn_id(tokenizer, end_of_turn)
    ids = _render(tokenizer, messages, add_generation_prompt=False)
    mask = [0] * len(ids)
    for k, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        start = len(_render(tokenizer, messages[:k], add_generation_prompt=True)) if k else 0
        upto = (ids if k == len(messages) - 1      # the last turn: the whole, rendered above
                else _render(tokenizer, messages[:k + 1], add_generation_prompt=False))
        if ids[:len(upto)] != upto or start >= len(upto):
            raise ValueError(f"the chat template renders turn {k} inconsistently: the "
                             f"conversation up to it is not a prefix of the whole")
        if eot not in upto[start:]:
            name = tokenizer.convert_ids_to_tokens(eot)
            raise ValueError(f"the chat template renders assistant turn {k} without the "
                             f"end-of-turn token {name!r} (id {eot}): the model would never "
                             f"learn to stop; use a template that ends each assistant turn "
                             f"with it, or pass end_of_turn")
        mask[start:len(upto)] = [1] * (len(upto) - start)
    return ids, mask


def encode_chats(tokenizer, conversations: Iterable[Sequence[dict]], max_length: int,
                 end_of_turn: int | None = None) -> Encoded:
    """Tokenise conversations for supervised fine-tuning (chapter 8): labels on every assistant
    turn (:func:`tokenize_chat`), ``-100`` elsewhere, rows cut to their first ``max_length``
    tokens and right-padded. This is the batch that TRL's ``SFTTrainer`` builds with
    ``assistant_only_loss=True`` and ``max_length`` (``truncation_mode="keep_start"``)."""
    checks.positive_number("max_length", max_length, integer=True)
    rows = []
    for i, messages in enumerate(conversations):
        ids, mask = tokenize_chat(tokenizer, check_conversation(messages, f"conversations[{i}]"),
                                  end_of_turn)
        ids, mask = ids[:max_length], mask[:max_length]
        if not any(mask[1:]):
            raise ValueError(f"conversations[{i}] has no assistant token within the first "
                             f"max_length={max_length} tokens")
        rows.append((ids, mask))
    if not rows:
        raise ValueError("conversations is empty")
    return _pad(rows, pad_token_id(tokenizer))


def prompt_and_reply(tokenizer, messages: Sequence[dict],
                     end_of_turn: int | None = None) -> tuple[list[int], list[int]]:
    """``(prompt_ids, reply_ids)`` of a conversation that ends with an assistant turn: the
    reply is that last turn's tokens (end-of-turn token included), the prompt all before."""
    messages = check_conversation(messages)
    if messages[-1]["role"] != "assistant":
        raise ValueError("conversation must end with an assistant turn (the reply to score)")
    ids, mask = tokenize_chat(tokenizer, messages, end_of_turn)
    start = len(_render(tokenizer, messages[:-1], add_generation_prompt=True))
    return ids[:start], ids[start:len(ids) - _trailing(mask)]


def _trailing(mask: list[int]) -> int:
    """How many tokens after the last assistant token (a template's closing text)."""
    n = 0
    while n < len(mask) and mask[len(mask) - 1 - n] == 0:
        n += 1
    return n


def encode_replies(tokenizer, conversations: Iterable[Sequence[dict]], max_length: int,
                   max_reply_tokens: int | None = None,
                   end_of_turn: int | None = None) -> Encoded:
    r"""Tokenise conversations for *scoring* their last assistant turn (chapter 8).

    The reply keeps at most ``max_reply_tokens`` tokens (default ``max_length // 2``); the
    prompt loses tokens *from the left* until the row fits in ``max_length`` (the model's
    context). Fixing ``max_reply_tokens`` fixes which tokens are scored, so evaluations with
    different prompts (zero-shot, few-shot, retrieval-augmented) score the same tokens."""
    checks.positive_number("max_length", max_length, integer=True)
    if max_reply_tokens is None:
        max_reply_tokens = max_length // 2
    checks.positive_number("max_reply_tokens", max_reply_tokens, integer=True)
    if max_reply_tokens >= max_length:
        raise ValueError(f"max_reply_tokens ({max_reply_tokens}) must be < max_length "
                         f"({max_length}): the prompt needs at least one token")
    examples = []
    for i, messages in enumerate(conversations):
        prompt, reply = prompt_and_reply(
            tokenizer, check_conversation(messages, f"conversations[{i}]"), end_of_turn)
        reply = reply[:max_reply_tokens]
        examples.append((prompt[-(max_length - len(reply)):], reply))
    if not examples:
        raise ValueError("conversations is empty")
    return collate_masked(examples, pad_token_id(tokenizer))


# ------------------------------------------------------------------------- loss and scores

def _trim(input_ids, attention_mask, labels):
    # rows are right-padded; reading the width is one host read per batch (on a GPU a wait),
    # kept: every column it cuts is padding in every row, compute saved in every layer
    width = int(attention_mask.sum(1).max())
    return input_ids[:, :width], attention_mask[:, :width], labels[:, :width]


def answer_loss(model: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                labels: torch.Tensor) -> torch.Tensor:
    r"""Mean negative log-likelihood (nats) of the labelled tokens of a batch,
    :func:`aigc_lib.losses.causal_lm_loss` on the model's logits: what ``transformers``
    reports as ``.loss`` when given ``labels``, and what TRL's ``SFTTrainer`` minimises.
    Columns that are padding in every row are cut first. Use it as
    ``fit(model, encoded.tensors(), loss_fn=answer_loss, ...)``."""
    checks.tensor("input_ids", input_ids, ndim=2)
    checks.same_shape("input_ids", input_ids, "attention_mask", attention_mask)
    checks.same_shape("input_ids", input_ids, "labels", labels)
    input_ids, attention_mask, labels = _trim(input_ids, attention_mask, labels)
    logits = model(input_ids=input_ids, attention_mask=attention_mask).logits
    return losses.causal_lm_loss(logits, labels, ignore_index=IGNORE_INDEX)


@torch.no_grad()
def answer_nll_rows(model: nn.Module, encoded: Encoded,
                    batch_size: int = 32) -> tuple[torch.Tensor, torch.Tensor]:
    r"""Per row of ``encoded``: the total negative log-likelihood (nats) of its labelled tokens,
    :math:`-\sum_{t:\,y_t\ne-100}\log p(y_t\mid x, y_{<t})`, and how many tokens that is,
    as two ``(N,)`` tensors (float64, int64) — the per-conversation data that a bootstrap over
    test conversations resamples (chapter 8). The model is put in eval mode and restored."""
    if not isinstance(encoded, Encoded):
        raise TypeError(f"encoded must be an Encoded batch, got {type(encoded).__name__}")
    checks.positive_number("batch_size", batch_size, integer=True)
    device = next(model.parameters()).device
    nll, count = [], []
    with runtime.eval_mode(model):
        for start in range(0, len(encoded), batch_size):
            rows = slice(start, start + batch_size)
            ids, mask, labels = (t.to(device) for t in _trim(*(t[rows] for t in
                                                                encoded.tensors())))
            logits = model(input_ids=ids, attention_mask=mask).logits
            per_token = losses.causal_lm_loss(logits, labels, IGNORE_INDEX, reduction="none")
            nll.append(per_token.double().sum(1).cpu())
            count.append((labels[:, 1:] != IGNORE_INDEX).sum(1).cpu())
    return torch.cat(nll), torch.cat(count)


def answer_nll(model: nn.Module, encoded: Encoded, batch_size: int = 32) -> tuple[float, int]:
    r"""Total negative log-likelihood (nats) of every labelled token of ``encoded`` and how many
    tokens that is (chapter 8). Summing over tokens before dividing weights every answer token
    equally, whatever batch or answer it sits in."""
    nll, count = answer_nll_rows(model, encoded, batch_size)
    total, n = float(nll.sum()), int(count.sum())
    if n == 0:
        raise ValueError("encoded has no answer tokens to score")
    return total, n


def answer_perplexity(model: nn.Module, encoded: Encoded, batch_size: int = 32) -> float:
    r"""Answer-token perplexity :math:`\exp(\text{NLL}/n)` of :func:`answer_nll`: the number of
    equally likely tokens the model is, on average, choosing among at each answer token."""
    total, count = answer_nll(model, encoded, batch_size)
    return math.exp(total / count)


def train_sft(model: nn.Module, encoded: Encoded, *, lr: float, steps: int, batch_size: int = 8,
              seed: int = 0, evaluate=None, eval_every: int | None = None, device=None,
              desc: str = "SFT"):
    """Supervised fine-tuning of ``model``'s trainable parameters on ``encoded`` (chapter 8):
    AdamW at rate ``lr`` for ``steps`` steps of :func:`answer_loss`, with ``fit``'s data order
    drawn from ``seed``. The model trains in place; returns ``fit``'s history."""
    if not isinstance(encoded, Encoded):
        raise TypeError(f"encoded must be an Encoded batch, got {type(encoded).__name__}")
    return train_with_adamw(model, encoded.tensors(), answer_loss, lr=lr, steps=steps,
                            batch_size=batch_size, seed=seed, evaluate=evaluate,
                            eval_every=eval_every, device=device, desc=desc)


def train_with_adamw(model: nn.Module, tensors: tuple[torch.Tensor, ...], loss_fn, *,
                     lr: float, steps: int, batch_size: int, seed: int, device=None,
                     desc: str, evaluate=None, eval_every: int | None = None):
    """``fit`` of ``model``'s trainable parameters with AdamW at rate ``lr`` for ``steps``
    steps of ``loss_fn`` on ``tensors``, without a progress bar: the recipe of
    :func:`train_sft` and of :func:`aigc_lib.preference.train_dpo` (chapter 8)."""
    from aigc_lib.training import fit

    checks.positive_number("lr", lr)
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise ValueError("model has no trainable parameter")
    return fit(model, tensors, loss_fn=loss_fn, optimizer=torch.optim.AdamW(params, lr=lr),
               steps=steps, batch_size=batch_size, seed=seed, evaluate=evaluate,
               eval_every=eval_every, device=device, progress=False, desc=desc)


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


def last_block_prefixes(model: nn.Module) -> list[str]:
    """Parameter-name prefixes of the last Transformer block, the final norm and the output
    layer, for :func:`freeze_all_but`: GPT-2 (``transformer.h``) or Llama-style
    (``model.layers``) models (chapter 8)."""
    for blocks, norm in (("transformer.h", "transformer.ln_f"), ("model.layers", "model.norm")):
        try:
            layers = model.get_submodule(blocks)
        except AttributeError:
            continue
        return [f"{blocks}.{len(layers) - 1}.", norm, "lm_head"]
    raise ValueError(f"model {type(model).__name__} has neither GPT-2's transformer.h nor "
                     f"Llama's model.layers; choose the prefixes yourself")


# ---------------------------------------------------------------------- loading and answering

def _offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")


def _resolve(source: str | os.PathLike) -> str:
    """A local folder (checked) or a Hub id (checked against the local cache when offline)."""
    if not isinstance(source, (str, os.PathLike)) or not str(source).strip():
        raise TypeError(f"source must be a model folder or a Hugging Face model id, got "
                        f"{source!r}")
    text = str(source)
    looks_local = (isinstance(source, os.PathLike) or text.startswith((".", "~", os.sep))
                   or Path(text).exists())
    if looks_local:
        folder = Path(text).expanduser()
        if not folder.is_dir():
            raise FileNotFoundError(f"source {text!r} is not a folder")
        if not (folder / "config.json").exists():
            raise ValueError(f"source {text!r} is a folder without config.json: not a "
                             f"Hugging Face model folder")
        return str(folder)
    if _offline():
        from huggingface_hub import try_to_load_from_cache

        cached = try_to_load_from_cache(text, "config.json")
        if not isinstance(cached, str):
            raise OSError(f"source {text!r} is neither a local model folder nor in the local "
                          f"Hugging Face cache, and HF_HUB_OFFLINE=1 forbids downloading it; "
                          f"download it once online, or pass a folder")
    return text


def load_causal_lm(source: str | os.PathLike, dtype: torch.dtype = torch.float32):
    """``(model, tokenizer)`` of any causal language model through ``transformers``'
    ``AutoModelForCausalLM`` and ``AutoTokenizer`` (chapter 8).

    ``source`` is a local model folder (e.g. :func:`aigc_lib.pretrained.small_gpt`, or a model
    saved with ``save_pretrained``) or a Hugging Face Hub id (``"gpt2"``,
    ``"Qwen/Qwen2.5-0.5B-Instruct"``, ...). A Hub id needs the network or the local cache;
    with ``HF_HUB_OFFLINE=1`` an id that is not cached fails at once, naming it, without a
    network call. It never falls back to another model. Weights are read from safetensors
    only, and no remote code is run. The model is returned in eval mode."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    name = _resolve(source)
    try:
        with encoders.quiet_transformers(messages=False):  # no "Loading weights" bar
            model = AutoModelForCausalLM.from_pretrained(name, dtype=dtype, use_safetensors=True,
                                                         trust_remote_code=False)
            tokenizer = AutoTokenizer.from_pretrained(name, trust_remote_code=False)
    except OSError as err:
        raise OSError(f"could not load the causal language model {name!r}: {err}") from err
    return model.eval(), tokenizer


def context_length(model: nn.Module) -> int | None:
    """The model's context length from its configuration (``n_positions`` for GPT-2,
    ``max_position_embeddings`` for Llama-style models), or None when it declares none."""
    config = getattr(model, "config", None)
    for name in ("n_positions", "max_position_embeddings"):
        value = getattr(config, name, None)
        if isinstance(value, int):
            return value
    return None


@torch.no_grad()
def generate_replies(model: nn.Module, tokenizer, conversations: Sequence[Sequence[dict]],
                     max_new_tokens: int = 48, batch_size: int = 32,
                     end_of_turn: int | None = None) -> list[str]:
    """The model's greedy replies to conversations that end with a user turn (chapter 8): each
    is rendered with the chat template and its generation prompt, cut from the left to fit
    the context with ``max_new_tokens`` to spare, left-padded into batches, and continued
    with the most likely token until the end-of-turn token or ``max_new_tokens``. Returns
    the replies as text, without special tokens, stripped."""
    checks.positive_number("max_new_tokens", max_new_tokens, integer=True)
    checks.positive_number("batch_size", batch_size, integer=True)
    eot, pad = end_of_turn_id(tokenizer, end_of_turn), pad_token_id(tokenizer)
    limit = context_length(model)
    if limit is not None and max_new_tokens >= limit:
        raise ValueError(f"max_new_tokens must be < the model's context ({limit})")
    prompts = []
    for i, messages in enumerate(conversations):
        messages = check_conversation(messages, f"conversations[{i}]")
        if messages[-1]["role"] != "user":
            raise ValueError(f"conversations[{i}] must end with a user turn to reply to")
        ids = _render(tokenizer, messages, add_generation_prompt=True)
        prompts.append(ids[-(limit - max_new_tokens):] if limit else ids)
    device = next(model.parameters()).device
    replies = []
    with runtime.eval_mode(model):
        for start in range(0, len(prompts), batch_size):
            ids, mask = (t.to(device) for t in gpt.left_pad(prompts[start:start + batch_size],
                                                            pad))
            width = ids.shape[1]
            out = model.generate(ids, attention_mask=mask, do_sample=False,
                                 max_new_tokens=max_new_tokens, eos_token_id=eot,
                                 pad_token_id=pad)
            for row in out[:, width:].tolist():
                row = row[:row.index(eot)] if eot in row else row
                replies.append(tokenizer.decode(row, skip_special_tokens=True).strip())
    return replies
