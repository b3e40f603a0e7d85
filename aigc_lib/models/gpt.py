r"""A GPT in one readable file (chapter 6 builds it, chapter 7 pretrains it).

The architecture is GPT-2's (Radford et al., 2019): token and learned position embeddings, ``L``
pre-LayerNorm blocks ``x + attn(ln_1(x))`` then ``x + mlp(ln_2(x))``, a final LayerNorm, and an
output projection tied to the token embedding. Parameter names follow Hugging Face's
``GPT2LMHeadModel``, so :func:`from_hf` and :func:`to_hf` only transpose the four matrices that
GPT-2 stores as ``Conv1D`` (``(in, out)`` instead of ``nn.Linear``'s ``(out, in)``);
``tests/test_gpt.py`` shows the logits agree with ``transformers`` to 1e-5.

Two attention paths compute the same thing: ``"sdpa"`` calls PyTorch's fused
``scaled_dot_product_attention`` (FlashAttention on recent GPUs), ``"math"`` calls the
written-out :func:`aigc_lib.attention.scaled_dot_product_attention` of chapter 6.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from aigc_lib import attention, checks, losses, runtime

ATTENTION_PATHS = attention.PATHS
# GPT-2 keeps these as Conv1D weights of shape (in, out); nn.Linear stores (out, in).
_CONV1D = ("attn.c_attn.weight", "attn.c_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight")


@dataclass
class GPTConfig:
    """Hyper-parameters of a GPT. The defaults are GPT-2 small's (124M parameters)."""
    vocab_size: int = 50257
    block_size: int = 1024     # the longest context, in tokens (GPT-2's n_positions)
    n_layer: int = 12
    n_head: int = 12
    n_embd: int = 768
    dropout: float = 0.0
    layer_norm_eps: float = 1e-5
    attention: str = "sdpa"    # "sdpa" (fused kernel) or "math" (aigc_lib.attention)

    def __post_init__(self) -> None:
        for name in ("vocab_size", "block_size", "n_layer", "n_head", "n_embd"):
            checks.positive_number(name, getattr(self, name), integer=True)
        if self.n_embd % self.n_head:
            raise ValueError(f"n_embd ({self.n_embd}) must be divisible by n_head ({self.n_head})")
        checks.positive_number("dropout", self.dropout, allow_zero=True)
        if self.dropout >= 1:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")
        checks.positive_number("layer_norm_eps", self.layer_norm_eps)
        if self.attention not in ATTENTION_PATHS:
            raise ValueError(f"attention must be one of {ATTENTION_PATHS}, got {self.attention!r}")

    @property
    def head_dim(self) -> int:
        return self.n_embd // self.n_head

    def to_dict(self) -> dict:
        return asdict(self)


class CausalSelfAttention(nn.Module):
    r"""Multi-head causal self-attention: one ``(d, 3d)`` projection to queries, keys and values,
    :math:`h` heads of size :math:`d/h` scaled by :math:`1/\sqrt{d/h}`, an output projection."""

    def __init__(self, config: GPTConfig):
        super().__init__()
        self.n_head, self.dropout, self.path = config.n_head, config.dropout, config.attention
        self.c_attn = nn.Linear(config.n_embd, 3 * config.n_embd)
        self.c_proj = nn.Linear(config.n_embd, config.n_embd)
        self.resid_dropout = nn.Dropout(config.dropout)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None,
                cache: KVCache | None = None, layer: int = 0) -> torch.Tensor:
        """``mask``: ``None`` for plain causal attention over ``x`` (or, with a ``cache`` and
        one new token, attention to everything cached), else a boolean ``(B, 1, T, T_past + T)``
        tensor, True where a query may see a key. ``cache``: keys and values of the earlier
        tokens; this call appends the new ones to the slot of ``layer``."""
        B, T, C = x.shape
        q, k, v = self.c_attn(x).split(C, dim=2)
        q, k, v = (t.view(B, T, self.n_head, C // self.n_head).transpose(1, 2) for t in (q, k, v))
        if cache is not None:
            k, v = cache.update(layer, k, v)
        causal = mask is None and k.shape[2] == T
        p = self.dropout if self.training else 0.0
        y = attention.attend(q, k, v, self.path, mask=mask, is_causal=causal, dropout_p=p)
        y = y.transpose(1, 2).contiguous().view(B, T, C)   # concatenate the heads
        return self.resid_dropout(self.c_proj(y))


class MLP(nn.Module):
    """Position-wise feed-forward network: ``d -> 4d -> GELU (tanh form, as GPT-2) -> d``."""

    def __init__(self, config: GPTConfig):
        super().__init__()
        self.c_fc = nn.Linear(config.n_embd, 4 * config.n_embd)
        self.gelu = nn.GELU(approximate="tanh")
        self.c_proj = nn.Linear(4 * config.n_embd, config.n_embd)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.c_proj(self.gelu(self.c_fc(x))))


class Block(nn.Module):
    """A pre-LayerNorm Transformer block: ``x + attn(ln_1(x))``, then ``x + mlp(ln_2(x))``."""

    def __init__(self, config: GPTConfig):
        super().__init__()
        self.ln_1 = nn.LayerNorm(config.n_embd, eps=config.layer_norm_eps)
        self.attn = CausalSelfAttention(config)
        self.ln_2 = nn.LayerNorm(config.n_embd, eps=config.layer_norm_eps)
        self.mlp = MLP(config)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None,
                cache: KVCache | None = None, layer: int = 0) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x), mask, cache, layer)
        return x + self.mlp(self.ln_2(x))


class GPT(nn.Module):
    """The GPT language model: ``forward(idx)`` maps token ids ``(B, T)`` to logits ``(B, T, V)``."""

    def __init__(self, config: GPTConfig):
        super().__init__()
        if not isinstance(config, GPTConfig):
            raise TypeError(f"config must be a GPTConfig, got {type(config).__name__}")
        self.config = config
        self.transformer = nn.ModuleDict(dict(
            wte=nn.Embedding(config.vocab_size, config.n_embd),
            wpe=nn.Embedding(config.block_size, config.n_embd),
            drop=nn.Dropout(config.dropout),
            h=nn.ModuleList(Block(config) for _ in range(config.n_layer)),
            ln_f=nn.LayerNorm(config.n_embd, eps=config.layer_norm_eps),
        ))
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)
        self.lm_head.weight = self.transformer.wte.weight   # weight tying, as GPT-2
        self.apply(self._init_weights)
        # GPT-2's scaled initialisation: each residual branch's output projection gets std
        # 0.02 / sqrt(2 L), so the residual stream's variance does not grow with depth.
        for name, p in self.named_parameters():
            if name.endswith("c_proj.weight"):
                nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * config.n_layer))

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
        if isinstance(module, nn.Linear) and module.bias is not None:
            nn.init.zeros_(module.bias)

    def forward(self, idx: torch.Tensor, attention_mask: torch.Tensor | None = None,
                cache: KVCache | None = None) -> torch.Tensor:
        """Logits ``(B, T, V)`` of the token ids ``idx`` ``(B, T)``.

        ``cache`` (chapter 11): a :class:`KVCache` holding the keys and values of the
        ``T_past = cache.length`` tokens read before; ``idx`` then holds only the new tokens,
        which sit at positions ``T_past, T_past + 1, ...`` and see every earlier token, and the
        cache gains their keys and values. ``attention_mask`` ``(B, T_past + T)``: 1 for a real
        token, 0 for left padding; positions then count real tokens only, and no real token
        sees a padding token, so a padded row computes what it would compute alone.
        """
        checks.token_ids("idx", idx, self.config.vocab_size)
        B, T = idx.shape
        past = 0
        if cache is not None:
            if not isinstance(cache, KVCache):
                raise TypeError(f"cache must be a KVCache, got {type(cache).__name__}")
            past = cache.length
        if past + T > self.config.block_size:
            raise ValueError(f"idx has {T} positions (after {past} cached ones) but the "
                             f"model's block_size is {self.config.block_size}")
        pos, mask = _positions_and_mask(attention_mask, B, T, past, idx.device)
        x = self.transformer.drop(self.transformer.wte(idx) + self.transformer.wpe(pos))
        for layer, block in enumerate(self.transformer.h):
            x = block(x, mask, cache, layer)
        if cache is not None:
            cache.length = past + T
        return self.lm_head(self.transformer.ln_f(x))

    @torch.no_grad()
    def generate(self, idx: torch.Tensor, max_new_tokens: int, temperature: float = 1.0,
                 top_k: int | None = None, generator: torch.Generator | None = None,
                 top_p: float | None = None, attention_mask: torch.Tensor | None = None,
                 use_cache: bool = True) -> torch.Tensor:
        """Append ``max_new_tokens`` tokens to ``idx`` ``(B, T)``, one at a time, each drawn by
        :func:`sample_next_token` (greedy when ``temperature=0``; ``top_k``, ``top_p``) from the
        logits of the last position (chapters 7 and 11).

        ``use_cache=True`` keeps every layer's keys and values in a :class:`KVCache`, so each
        step reads one new token instead of the whole sequence; the tokens are the same as
        without it. Once the sequence is longer than ``block_size`` the context is cropped to
        its last ``block_size`` tokens; every position then shifts at each step, the cached
        keys no longer apply, and the remaining steps run without the cache.
        ``attention_mask`` ``(B, T)`` marks left padding with 0 (see :func:`left_pad`): each row
        then generates what it would generate alone.
        """
        checks.tensor("idx", idx, ndim=2)
        if idx.shape[1] == 0:
            raise ValueError("idx must hold at least one token per row")
        checks.positive_number("max_new_tokens", max_new_tokens, integer=True, allow_zero=True)
        if not isinstance(use_cache, bool):
            raise TypeError(f"use_cache must be a bool, got {type(use_cache).__name__}")
        mask = _left_padding_mask(attention_mask, idx)
        B, T0 = idx.shape
        n = self.config.block_size
        capacity = min(T0 + max_new_tokens - 1, n)
        cache = KVCache(self.config, B, capacity) if use_cache and T0 <= capacity else None
        with runtime.eval_mode(self):
            for _ in range(max_new_tokens):
                if cache is not None and idx.shape[1] <= capacity:
                    logits = self(idx[:, cache.length:], mask, cache)[:, -1, :]
                else:
                    logits = self(idx[:, -n:], None if mask is None else mask[:, -n:])[:, -1, :]
                nxt = sample_next_token(logits.float(), temperature, top_k, generator, top_p)
                idx = torch.cat([idx, nxt], dim=1)
                if mask is not None:
                    mask = torch.cat([mask, torch.ones_like(nxt)], dim=1)
        return idx


class KVCache:
    r"""The keys and values of every layer for the tokens a :class:`GPT` has read (chapter 11).

    A new token's query must meet the keys and values of every earlier token in every layer;
    they do not change once computed (causal attention), so the cache keeps them instead of
    recomputing them at every step. They live in tensors allocated once, at the first
    :meth:`update` of each layer, of shape ``(B, h, capacity, d/h)`` for the keys and for the
    values, in the dtype and on the device of the model; the cache then holds
    :func:`kv_cache_bytes` ``(config, capacity, B)`` bytes (:attr:`nbytes`). The first
    ``length`` positions are filled; :meth:`crop` forgets the last ones (speculative decoding
    rolls back rejected draft tokens so).
    """

    def __init__(self, config: GPTConfig, batch_size: int, capacity: int):
        if not isinstance(config, GPTConfig):
            raise TypeError(f"config must be a GPTConfig, got {type(config).__name__}")
        self.batch_size = checks.positive_number("batch_size", batch_size, integer=True)
        self.capacity = checks.positive_number("capacity", capacity, integer=True)
        if capacity > config.block_size:
            raise ValueError(f"capacity must be <= block_size ({config.block_size}), "
                             f"got {capacity}")
        self.keys: list[torch.Tensor | None] = [None] * config.n_layer
        self.values: list[torch.Tensor | None] = [None] * config.n_layer
        self.length = 0

    def update(self, layer: int, k: torch.Tensor,
               v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Store the keys and values ``(B, h, T, d/h)`` of ``T`` new tokens after the ``length``
        cached ones in ``layer``; return all ``length + T`` keys and values of that layer."""
        B, H, T, D = k.shape
        end = self.length + T
        if B != self.batch_size:
            raise ValueError(f"the cache holds batches of {self.batch_size}, got {B} rows")
        if end > self.capacity:
            raise ValueError(f"the cache holds {self.capacity} tokens; {self.length} are "
                             f"cached and {T} more do not fit")
        if self.keys[layer] is None:
            self.keys[layer] = k.new_empty(B, H, self.capacity, D)
            self.values[layer] = v.new_empty(B, H, self.capacity, D)
        self.keys[layer][:, :, self.length:end] = k
        self.values[layer][:, :, self.length:end] = v
        return self.keys[layer][:, :, :end], self.values[layer][:, :, :end]

    def crop(self, length: int) -> None:
        """Forget every cached token after the first ``length``."""
        checks.positive_number("length", length, integer=True, allow_zero=True)
        if length > self.length:
            raise ValueError(f"length must be <= the {self.length} cached tokens, got {length}")
        self.length = length

    @property
    def nbytes(self) -> int:
        """Bytes of the tensors allocated so far (keys and values of every layer)."""
        return sum(t.untyped_storage().nbytes() for t in self.keys + self.values
                   if t is not None)


def kv_cache_bytes(config: GPTConfig, tokens: int, batch_size: int = 1,
                   bytes_per_number: int = 4) -> int:
    r"""Bytes of the keys and values of ``tokens`` tokens in every layer (chapter 11):

    .. math:: 2 \cdot L \cdot h \cdot d_h \cdot T \cdot B \cdot b,

    one key and one value vector of :math:`h` heads of size :math:`d_h = d/h` per layer and
    token, :math:`b` bytes per number (4 in float32, 2 in bfloat16)."""
    if not isinstance(config, GPTConfig):
        raise TypeError(f"config must be a GPTConfig, got {type(config).__name__}")
    checks.positive_number("tokens", tokens, integer=True, allow_zero=True)
    checks.positive_number("batch_size", batch_size, integer=True)
    checks.positive_number("bytes_per_number", bytes_per_number, integer=True)
    return (2 * config.n_layer * config.n_head * config.head_dim * tokens * batch_size
            * bytes_per_number)


def _positions_and_mask(attention_mask: torch.Tensor | None, B: int, T: int, past: int,
                        device: torch.device) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Position ids of ``T`` new tokens after ``past`` cached ones, and the boolean attention
    mask (``None`` when plain causal attention does)."""
    total = past + T
    if attention_mask is None:
        pos = torch.arange(past, total, device=device)
        if past == 0 or T == 1:
            return pos, None
        return pos, torch.ones(T, total, dtype=torch.bool, device=device).tril(past)
    checks.tensor("attention_mask", attention_mask, ndim=2)
    if tuple(attention_mask.shape) != (B, total):
        raise ValueError(f"attention_mask must have shape (B, T_past + T) = {(B, total)}, got "
                         f"{tuple(attention_mask.shape)}")
    real = attention_mask.bool()
    pos = (real.long().cumsum(1) - 1).clamp(min=0)[:, past:]
    query = torch.arange(past, total, device=device)[:, None]
    key = torch.arange(total, device=device)[None, :]
    # a query sees earlier real tokens; a padding query sees itself, so no row is empty
    allowed = ((key <= query) & real[:, None, :]) | (key == query)
    return pos, allowed[:, None]


def _left_padding_mask(attention_mask: torch.Tensor | None,
                       idx: torch.Tensor) -> torch.Tensor | None:
    if attention_mask is None:
        return None
    checks.tensor("attention_mask", attention_mask, ndim=2)
    if attention_mask.shape != idx.shape:
        raise ValueError(f"attention_mask must have the shape of idx {tuple(idx.shape)}, got "
                         f"{tuple(attention_mask.shape)}")
    if not bool(((attention_mask == 0) | (attention_mask == 1)).all()):
        raise ValueError("attention_mask must hold only 0 (padding) and 1 (token)")
    mask = attention_mask.long()
    if not bool((mask[:, 1:] >= mask[:, :-1]).all()) or not bool(mask[:, -1].all()):
        raise ValueError("attention_mask must describe left padding: zeros, then ones, and "
                         "at least one token per row")
    return mask


def left_pad(sequences: Sequence[Sequence[int] | torch.Tensor],
             pad_id: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Token ids ``(B, T)`` and attention mask of sequences of different lengths, padded on
    the left with ``pad_id`` to the longest (chapter 11): generation appends on the right, so
    every row's last real token sits in the last column."""
    if isinstance(sequences, (str, torch.Tensor)) or not isinstance(sequences, Sequence) \
            or not sequences:
        raise TypeError("sequences must be a non-empty list of token-id sequences")
    checks.positive_number("pad_id", pad_id, integer=True, allow_zero=True)
    rows = [torch.as_tensor(s, dtype=torch.long).flatten() for s in sequences]
    if any(len(r) == 0 for r in rows):
        raise ValueError("every sequence must hold at least one token")
    T = max(len(r) for r in rows)
    ids = torch.full((len(rows), T), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), T), dtype=torch.long)
    for b, r in enumerate(rows):
        ids[b, T - len(r):], mask[b, T - len(r):] = r, 1
    return ids, mask


def next_token_probs(logits: torch.Tensor, temperature: float = 1.0, top_k: int | None = None,
                     top_p: float | None = None) -> torch.Tensor:
    r"""The distribution ``(B, V)`` that :func:`sample_next_token` draws from (chapters 7, 11).

    With temperature :math:`\tau > 0`: :math:`p_i \propto \exp(z_i/\tau)`, restricted to the
    ``top_k`` largest logits (ties at the ``top_k``-th all kept), then to the **nucleus**: the
    smallest set of most likely tokens whose probability reaches ``top_p``, token :math:`i`
    (in decreasing order of probability) kept iff the tokens before it hold less than
    ``top_p`` (Holtzman et al., 2020); renormalised. ``top_p=1`` keeps every token.
    :math:`\tau = 0` is greedy decoding: all the mass on :math:`\arg\max_i z_i`.
    """
    checks.tensor("logits", logits, floating=True, finite=False, ndim=2)
    checks.positive_number("temperature", temperature, allow_zero=True)
    if top_p is not None:
        checks.positive_number("top_p", top_p)
        if top_p > 1:
            raise ValueError(f"top_p must be in (0, 1], got {top_p}")
    if temperature == 0:
        return F.one_hot(logits.argmax(dim=-1), logits.shape[-1]).to(logits.dtype)
    if top_k is not None:
        checks.positive_number("top_k", top_k, integer=True)
        kth = torch.topk(logits, min(top_k, logits.shape[-1]), dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    probs = torch.softmax(logits / temperature, dim=-1)
    if top_p is None or top_p == 1:
        return probs
    ranked, order = probs.sort(dim=-1, descending=True)
    keep_ranked = ranked.cumsum(dim=-1) - ranked < top_p      # mass before each token < p
    keep = torch.zeros_like(keep_ranked).scatter(-1, order, keep_ranked)
    probs = probs * keep
    return probs / probs.sum(dim=-1, keepdim=True)


def sample_next_token(logits: torch.Tensor, temperature: float = 1.0, top_k: int | None = None,
                      generator: torch.Generator | None = None,
                      top_p: float | None = None) -> torch.Tensor:
    r"""Draw one token per row of ``logits`` ``(B, V)``; returns ``(B, 1)`` ids (chapters 7, 11).

    The token is drawn from :func:`next_token_probs`: :math:`p_i \propto \exp(z_i/\tau)`
    restricted to the ``top_k`` largest logits and the ``top_p`` nucleus (all tokens when
    ``None``): :math:`\tau < 1` sharpens the distribution, :math:`\tau > 1` flattens it.
    :math:`\tau = 0` is greedy decoding, :math:`\arg\max_i z_i`, the limit :math:`\tau \to 0`.
    """
    probs = next_token_probs(logits, temperature, top_k, top_p)
    if temperature == 0:
        return probs.argmax(dim=-1, keepdim=True)
    return torch.multinomial(probs, 1, generator=generator)


def lm_loss(model: nn.Module, tokens: torch.Tensor) -> torch.Tensor:
    r"""Next-token cross-entropy of a window of ``tokens`` ``(B, T+1)``: the model reads positions
    :math:`0..T-1` and is scored on predicting :math:`1..T`,
    :math:`\frac{1}{BT}\sum_{b,t} -\log p_\theta(x_{b,t+1} \mid x_{b,\le t})` in nats. This is the
    ``loss_fn`` that chapter 7 passes to ``aigc_lib.training.fit``:
    ``aigc_lib.losses.causal_lm_loss`` on the logits of ``tokens[:, :-1]``."""
    checks.tensor("tokens", tokens, ndim=2)
    if tokens.shape[1] < 2:
        raise ValueError(f"tokens must have at least 2 positions (inputs and targets), got "
                         f"shape {tuple(tokens.shape)}")
    return losses.causal_lm_loss(model(tokens[:, :-1]), tokens)


@torch.no_grad()
def sequence_nll(model: nn.Module, ids: torch.Tensor, stride: int | None = None,
                 batch_size: int = 16) -> tuple[float, int]:
    r"""Total negative log-likelihood (nats) of ``ids[1:]`` given what precedes, and the number of
    tokens scored: :math:`-\sum_{t\ge1}\log p_\theta(x_t \mid x_{<t})`, the code length of the
    sequence after its first token (chapter 7 puts an end-of-text token first, so every token of
    the text is scored).

    Sequences longer than the context are scored in windows of ``block_size`` tokens that advance
    by ``stride`` (default ``block_size // 2``): every token is scored exactly once, with at least
    ``block_size - stride`` tokens of context except near the start.
    """
    if not isinstance(model, nn.Module) or not hasattr(getattr(model, "config", None),
                                                       "block_size"):
        raise TypeError(f"model must be a language model with a config.block_size (a GPT or a "
                        f"models.llama.Llama), got {type(model).__name__}")
    checks.tensor("ids", ids, ndim=1)
    if len(ids) < 2:
        raise ValueError(f"ids must hold at least 2 tokens, got {len(ids)}")
    n = model.config.block_size
    stride = n // 2 if stride is None else stride
    checks.positive_number("stride", stride, integer=True)
    if stride > n:
        raise ValueError(f"stride must be <= block_size ({n}), got {stride}")
    checks.positive_number("batch_size", batch_size, integer=True)
    dev = next(model.parameters()).device
    # Window (s, e) reads ids[s:e] and predicts targets ids[s+1:e+1]; `skip` of those targets
    # were scored by the previous window.
    windows, s, done = [], 0, 0
    while done < len(ids) - 1:
        e = min(s + n, len(ids) - 1)
        windows.append((s, e, max(0, done - s)))
        done, s = e, s + stride
    total, scored = 0.0, 0
    i = 0
    with runtime.eval_mode(model):
        while i < len(windows):  # batch consecutive windows of equal length
            j = i
            while j < len(windows) and j - i < batch_size and \
                    windows[j][1] - windows[j][0] == windows[i][1] - windows[i][0]:
                j += 1
            batch = torch.stack([ids[s:e + 1] for s, e, _ in windows[i:j]]).to(dev)
            nll = F.cross_entropy(model(batch[:, :-1]).float().transpose(1, 2), batch[:, 1:],
                                  reduction="none")
            for row, (s, e, skip) in zip(nll, windows[i:j]):
                total += float(row[skip:].sum())
                scored += e - s - skip
            i = j
    return total, scored


def count_parameters(config: GPTConfig, embeddings: bool = True) -> int:
    r"""Parameters of a GPT with tied input/output embeddings, by formula (chapter 6):

    .. math:: N = \underbrace{Vd + T_{max}d}_{\text{embeddings}} + L\,(12d^2 + 13d) + 2d,

    per block :math:`3d^2+3d` (q, k, v), :math:`d^2+d` (output projection), :math:`8d^2+5d` (MLP)
    and :math:`4d` (two LayerNorms). ``embeddings=False`` leaves out :math:`Vd + T_{max}d`
    (Kaplan et al.'s non-embedding count).
    """
    if not isinstance(config, GPTConfig):
        raise TypeError(f"config must be a GPTConfig, got {type(config).__name__}")
    d, L = config.n_embd, config.n_layer
    body = L * (12 * d * d + 13 * d) + 2 * d
    return body + (config.vocab_size * d + config.block_size * d if embeddings else 0)


def flops_per_token(config: GPTConfig, seq_len: int | None = None, training: bool = True) -> int:
    r"""Matrix-multiply FLOPs per token of a forward (and backward) pass (chapter 6):

    .. math:: C_\text{forward} = 2N_\text{mm} + 4 L T d, \qquad C_\text{train} = 3\,C_\text{forward}
              = 6N_\text{mm} + 12 L T d,

    where :math:`N_\text{mm} = 12 L d^2 + V d` counts the weights that take part in a matrix
    multiply (the tied output projection once; embeddings lookups, biases and LayerNorms are
    left out) and :math:`4LTd` is :math:`QK^\top` and the weighted sum of values over a context of
    :math:`T` = ``seq_len`` (default ``block_size``) tokens, counted in full although the causal
    mask makes half of it zero. The backward pass costs twice the forward (a gradient for the
    input and one for the weights of every product). This is Kaplan et al.'s :math:`6N`
    convention with the attention term and the output projection made explicit.
    """
    if not isinstance(config, GPTConfig):
        raise TypeError(f"config must be a GPTConfig, got {type(config).__name__}")
    T = config.block_size if seq_len is None else checks.positive_number("seq_len", seq_len,
                                                                          integer=True)
    d, L = config.n_embd, config.n_layer
    forward = 2 * (12 * L * d * d + config.vocab_size * d) + 4 * L * T * d
    return 3 * forward if training else forward


def forward_flops(config: GPTConfig, tokens: int, past: int = 0) -> int:
    r"""Matrix-multiply FLOPs of one forward pass over ``tokens`` new tokens that attend to
    ``past`` cached ones and to each other (chapter 11):

    .. math:: C = 2 N_\text{mm} T + 4 L d\, T (T_\text{past} + T),

    the weights :math:`N_\text{mm} = 12Ld^2 + Vd` once per token, and :math:`QK^\top` and the
    weighted sum of values over all :math:`T_\text{past} + T` keys, counted in full (as a
    matrix multiply computes them; the causal mask zeroes part of the :math:`T \times T`
    block). ``forward_flops(config, 1, T - 1)`` is :func:`flops_per_token` at context
    :math:`T`; a step of cached generation reads one token, an uncached one all of them."""
    if not isinstance(config, GPTConfig):
        raise TypeError(f"config must be a GPTConfig, got {type(config).__name__}")
    checks.positive_number("tokens", tokens, integer=True)
    checks.positive_number("past", past, integer=True, allow_zero=True)
    d, L = config.n_embd, config.n_layer
    return 2 * (12 * L * d * d + config.vocab_size * d) * tokens + 4 * L * d * tokens * (
        past + tokens)


def generation_flops(config: GPTConfig, prompt_tokens: int, new_tokens: int,
                     use_cache: bool = True) -> int:
    r"""Forward FLOPs (:func:`forward_flops`) of :meth:`GPT.generate` appending ``new_tokens`` to
    a prompt of ``prompt_tokens``, within the context (chapter 11). With the cache: one pass
    over the prompt, then one token per step, :math:`\approx 2N_\text{mm}` per token plus
    attention growing linearly; without: step :math:`s` re-reads all
    :math:`P + s` tokens, so the total grows with the square of the length."""
    checks.positive_number("prompt_tokens", prompt_tokens, integer=True)
    checks.positive_number("new_tokens", new_tokens, integer=True)
    if prompt_tokens + new_tokens - 1 > config.block_size:
        raise ValueError(f"prompt_tokens + new_tokens - 1 must fit in block_size "
                         f"({config.block_size}), got {prompt_tokens + new_tokens - 1}")
    if not use_cache:
        return sum(forward_flops(config, prompt_tokens + s) for s in range(new_tokens))
    return forward_flops(config, prompt_tokens) + sum(
        forward_flops(config, 1, prompt_tokens + s - 1) for s in range(1, new_tokens))


# ---------------------------------------------------------------- Hugging Face GPT-2 weights


def config_from_hf(hf_config, attention: str = "sdpa") -> GPTConfig:
    """A :class:`GPTConfig` equal to a ``transformers.GPT2Config``; raises ``ValueError`` for GPT-2
    variants this module does not implement (other activations, MLP widths, attention scalings)."""
    from transformers import GPT2Config

    if not isinstance(hf_config, GPT2Config):
        raise TypeError(f"hf_config must be a transformers.GPT2Config, got {type(hf_config).__name__}")
    unsupported = {
        "activation_function": hf_config.activation_function not in ("gelu_new", "gelu_pytorch_tanh"),
        "n_inner": hf_config.n_inner not in (None, 4 * hf_config.n_embd),
        "scale_attn_weights": not hf_config.scale_attn_weights,
        "scale_attn_by_inverse_layer_idx": hf_config.scale_attn_by_inverse_layer_idx,
        "add_cross_attention": hf_config.add_cross_attention,
        "tie_word_embeddings": not getattr(hf_config, "tie_word_embeddings", True),
    }
    bad = [k for k, v in unsupported.items() if v]
    if bad:
        raise ValueError(f"hf_config uses GPT-2 options this GPT does not implement: "
                         f"{ {k: getattr(hf_config, k) for k in bad} }")
    dropouts = {hf_config.resid_pdrop, hf_config.embd_pdrop, hf_config.attn_pdrop}
    return GPTConfig(vocab_size=hf_config.vocab_size, block_size=hf_config.n_positions,
                     n_layer=hf_config.n_layer, n_head=hf_config.n_head, n_embd=hf_config.n_embd,
                     dropout=max(dropouts), layer_norm_eps=hf_config.layer_norm_epsilon,
                     attention=attention)


def hf_config(config: GPTConfig, bos_token_id: int | None = None,
              eos_token_id: int | None = None):
    """The ``transformers.GPT2Config`` of a :class:`GPTConfig` (inverse of :func:`config_from_hf`)."""
    from transformers import GPT2Config

    if not isinstance(config, GPTConfig):
        raise TypeError(f"config must be a GPTConfig, got {type(config).__name__}")
    for name, value in (("bos_token_id", bos_token_id), ("eos_token_id", eos_token_id)):
        if value is not None and not (isinstance(value, int) and 0 <= value < config.vocab_size):
            raise ValueError(f"{name} must be None or a token id in [0, {config.vocab_size}), "
                             f"got {value!r}")
    return GPT2Config(vocab_size=config.vocab_size, n_positions=config.block_size,
                      n_embd=config.n_embd, n_layer=config.n_layer, n_head=config.n_head,
                      activation_function="gelu_new", resid_pdrop=config.dropout,
                      embd_pdrop=config.dropout, attn_pdrop=config.dropout,
                      layer_norm_epsilon=config.layer_norm_eps, bos_token_id=bos_token_id,
                      eos_token_id=eos_token_id, tie_word_embeddings=True)


def _convert(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Transpose GPT-2's Conv1D weights (between ``(in, out)`` and ``(out, in)``; its own inverse)
    and drop buffers that older ``transformers`` versions stored (``attn.bias``, ``masked_bias``)."""
    out = {}
    for key, value in state.items():
        if key.endswith((".attn.bias", ".attn.masked_bias")):
            continue
        out[key] = value.t().contiguous() if key.endswith(_CONV1D) else value
    return out


def from_hf(source, attention: str = "sdpa") -> GPT:
    """Our :class:`GPT` with the weights of a Hugging Face GPT-2.

    ``source`` is a ``transformers.GPT2LMHeadModel``, a folder saved by ``save_pretrained`` (such
    as :func:`aigc_lib.pretrained.small_gpt`'s), or a Hub name like ``"gpt2"`` (needs the network
    the first time; ``transformers`` caches it). No remote code is ever run.
    """
    from transformers import GPT2LMHeadModel

    if isinstance(source, (str, os.PathLike)):
        source = GPT2LMHeadModel.from_pretrained(source, trust_remote_code=False)
    if not isinstance(source, GPT2LMHeadModel):
        raise TypeError(f"source must be a GPT2LMHeadModel, a folder or a Hub name, got "
                        f"{type(source).__name__}")
    model = GPT(config_from_hf(source.config, attention=attention))
    model.load_state_dict(_convert(source.state_dict()), strict=True)
    return model.to(next(source.parameters()).device)


def to_hf(model: GPT, bos_token_id: int | None = None, eos_token_id: int | None = None):
    """A ``transformers.GPT2LMHeadModel`` with our model's weights (the inverse of :func:`from_hf`)."""
    from transformers import GPT2LMHeadModel

    if not isinstance(model, GPT):
        raise TypeError(f"model must be an aigc_lib.models.gpt.GPT, got {type(model).__name__}")
    hf = GPT2LMHeadModel(hf_config(model.config, bos_token_id, eos_token_id))
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    missing, unexpected = hf.load_state_dict(_convert(state), strict=False)
    if unexpected or [k for k in missing if not k.endswith((".attn.bias", ".attn.masked_bias"))]:
        raise RuntimeError(f"weight names do not match GPT2LMHeadModel: missing {missing}, "
                           f"unexpected {unexpected}")
    hf.tie_weights()
    return hf.eval()
