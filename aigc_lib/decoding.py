r"""Decoding beyond one token at a time: how repetitive samples are, and speculative decoding
(chapter 11).

**Speculative decoding** (Leviathan et al., 2023; Chen et al., 2023) lets a small *draft* model
propose :math:`\gamma` tokens, one at a time, which the large *target* model then scores in a
single forward pass. Draft token :math:`x` with draft probability :math:`q(x)` and target
probability :math:`p(x)` is accepted with probability :math:`\min(1, p(x)/q(x))`; at the first
rejection a replacement is drawn from the residual :math:`\propto \max(0, p - q)`, and when all
:math:`\gamma` are accepted the target's distribution after them gives one more token for free.
Each emitted token is then distributed exactly as :math:`p`:

.. math:: \Pr(x) = q(x)\min\!\Big(1, \tfrac{p(x)}{q(x)}\Big)
          + \Big(1 - \sum_y \min(p(y), q(y))\Big) \frac{\max(0, p(x) - q(x))}
          {\sum_y \max(0, p(y) - q(y))} = \min(p, q)(x) + \max(0, p - q)(x) = p(x),

because :math:`1 - \sum_y \min(p, q) = \sum_y \max(0, p - q)`. With greedy decoding both
distributions are one-hot, a draft token is accepted iff it is the target's arg-max, and the
output is the target's greedy output token for token.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from aigc_lib import checks, runtime
from aigc_lib.models import gpt


def distinct_n(tokens: Sequence[int] | torch.Tensor, n: int) -> float:
    r"""Share of distinct n-grams among the n-grams of one sequence,
    :math:`|\{\text{n-grams}\}| / (T - n + 1)` ("distinct-n", Li et al., 2016): 1 when no
    n-gram repeats, near 0 for a sample that loops."""
    checks.positive_number("n", n, integer=True)
    seq = torch.as_tensor(tokens).flatten().tolist()
    if len(seq) < n:
        raise ValueError(f"tokens must hold at least n = {n} tokens, got {len(seq)}")
    grams = [tuple(seq[i:i + n]) for i in range(len(seq) - n + 1)]
    return len(set(grams)) / len(grams)


def accept_or_resample(p: torch.Tensor, q: torch.Tensor, token: int,
                       generator: torch.Generator | None = None) -> tuple[bool, int]:
    r"""One step of speculative sampling: keep the draft ``token`` (drawn from ``q``) with
    probability :math:`\min(1, p/q)`, else draw a replacement from :math:`\max(0, p - q)`,
    renormalised. ``p`` and ``q`` are ``(V,)`` distributions of the target and the draft.
    Returns ``(accepted, token)``; the token is distributed as ``p`` (module docstring)."""
    checks.tensor("p", p, floating=True, ndim=1)
    checks.tensor("q", q, floating=True, ndim=1)
    checks.same_shape("p", p, "q", q)
    if not 0 <= token < len(q) or q[token] <= 0:
        raise ValueError(f"token must be a draft token with q(token) > 0, got {token}")
    return _accept_or_resample(p, q, token, generator)


def _accept_or_resample(p: torch.Tensor, q: torch.Tensor, token: int,
                        generator: torch.Generator | None) -> tuple[bool, int]:
    ratio = (p[token] / q[token]).item()
    u = torch.rand((), generator=generator, device=p.device).item()
    if u < min(1.0, ratio):
        return True, token
    residual = (p - q).clamp(min=0)
    if residual.sum() <= 0:          # only by rounding: p equals q, which never rejects
        residual = p
    return False, int(torch.multinomial(residual / residual.sum(), 1, generator=generator))


@dataclass(frozen=True)
class SpeculativeResult:
    """What :func:`speculative_generate` returns: the tokens and what it took."""
    tokens: torch.Tensor        # (1, T0 + max_new_tokens)
    drafted: int                # draft tokens proposed
    accepted: int               # draft tokens the target accepted
    target_calls: int           # forward passes of the target
    draft_calls: int            # forward passes of the draft

    @property
    def acceptance_rate(self) -> float:
        """Accepted draft tokens per proposed one."""
        return self.accepted / self.drafted if self.drafted else float("nan")


def _check_pair(target: gpt.GPT, draft: gpt.GPT, idx: torch.Tensor, max_new_tokens: int,
                draft_tokens: int) -> int:
    for name, model in (("target", target), ("draft", draft)):
        if not isinstance(model, gpt.GPT):
            raise TypeError(f"{name} must be an aigc_lib.models.gpt.GPT, got "
                            f"{type(model).__name__}")
    if target.config.vocab_size != draft.config.vocab_size:
        raise ValueError(f"target and draft must share a vocabulary, got sizes "
                         f"{target.config.vocab_size} and {draft.config.vocab_size}")
    checks.tensor("idx", idx, ndim=2)
    if idx.shape[0] != 1 or idx.shape[1] == 0 or idx.dtype != torch.long:
        raise ValueError(f"idx must be one row of int64 token ids, shape (1, T), got shape "
                         f"{tuple(idx.shape)} and dtype {idx.dtype}")
    checks.positive_number("max_new_tokens", max_new_tokens, integer=True)
    checks.positive_number("draft_tokens", draft_tokens, integer=True)
    capacity = idx.shape[1] + max_new_tokens + draft_tokens
    limit = min(target.config.block_size, draft.config.block_size)
    if capacity > limit:
        raise ValueError(f"the prompt ({idx.shape[1]}) + max_new_tokens ({max_new_tokens}) + "
                         f"draft_tokens ({draft_tokens}) must fit in block_size ({limit})")
    return capacity


def _draw(probs: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    return torch.multinomial(probs, 1, generator=generator)


@torch.no_grad()
def speculative_generate(target: gpt.GPT, draft: gpt.GPT, idx: torch.Tensor,
                         max_new_tokens: int, draft_tokens: int = 4, temperature: float = 1.0,
                         top_k: int | None = None, top_p: float | None = None,
                         generator: torch.Generator | None = None) -> SpeculativeResult:
    r"""Append ``max_new_tokens`` tokens to the prompt ``idx`` ``(1, T)`` by speculative
    decoding: ``draft`` proposes up to ``draft_tokens`` tokens, ``target`` scores them in one
    pass, :func:`accept_or_resample` keeps a prefix and adds one token (module docstring).
    The tokens follow the distribution of ``target.generate`` with the same ``temperature``,
    ``top_k`` and ``top_p`` (for ``temperature=0``, the very same tokens). Both models keep a
    :class:`~aigc_lib.models.gpt.KVCache` and roll it back over rejected tokens.
    """
    capacity = _check_pair(target, draft, idx, max_new_tokens, draft_tokens)
    with runtime.eval_mode(target, draft):
        return _speculate(target, draft, idx, capacity, max_new_tokens, draft_tokens,
                          temperature, top_k, top_p, generator)


def _speculate(target: gpt.GPT, draft: gpt.GPT, idx: torch.Tensor, capacity: int,
               max_new_tokens: int, draft_tokens: int, temperature: float, top_k: int | None,
               top_p: float | None, generator: torch.Generator | None) -> SpeculativeResult:
    """The rounds of :func:`speculative_generate` (models in eval mode, arguments checked)."""
    t_cache, d_cache = (gpt.KVCache(m.config, 1, capacity) for m in (target, draft))
    seq, produced, drafted, accepted, t_calls, d_calls = idx, 0, 0, 0, 0, 0

    def probs(model, tokens, cache):
        logits = model(tokens, cache=cache)[0].float()
        return gpt.next_token_probs(logits, temperature, top_k, top_p)

    while produced < max_new_tokens:
        gamma = min(draft_tokens, max_new_tokens - produced - 1)
        proposals, q_rows, feed = [], [], seq[:, d_cache.length:]
        for _ in range(gamma):                          # the draft proposes, one at a time
            q = probs(draft, feed, d_cache)[-1]
            feed = _draw(q[None], generator)
            proposals.append(feed)
            q_rows.append(q)
        d_calls += gamma
        block = torch.cat([seq[:, t_cache.length:], *proposals], dim=1)
        p_rows = probs(target, block, t_cache)[-(gamma + 1):]   # the target scores them all
        t_calls += 1
        kept, n_ok = [], 0
        for i, x in enumerate(proposals):
            ok, token = _accept_or_resample(p_rows[i], q_rows[i], int(x), generator)
            kept.append(token)
            if not ok:
                break
            n_ok += 1
        if n_ok == gamma:                               # all accepted: one more for free
            kept.append(int(_draw(p_rows[gamma][None], generator)))
        t_cache.crop(seq.shape[1] + n_ok)
        d_cache.crop(min(d_cache.length, seq.shape[1] + n_ok))
        seq = torch.cat([seq, torch.tensor([kept], device=seq.device)], dim=1)
        produced, drafted, accepted = produced + len(kept), drafted + gamma, accepted + n_ok
    return SpeculativeResult(seq, drafted, accepted, t_calls, d_calls)


def expected_speedup(acceptance: float, draft_tokens: int, cost_ratio: float,
                     verify_ratio: float = 1.0) -> float:
    r"""Speed-up of speculative decoding over plain decoding predicted by Leviathan et al.
    (2023) when each draft token is accepted independently with probability :math:`\alpha`:
    a round of :math:`\gamma` drafts emits :math:`(1-\alpha^{\gamma+1})/(1-\alpha)` tokens on
    average and costs :math:`\gamma c + v` target steps, :math:`c` being the cost of a draft
    step relative to a target step and :math:`v` that of the target's pass over the
    :math:`\gamma + 1` tokens (1 in the paper's analysis, where such a pass is assumed to cost
    what a single-token step does):

    .. math:: S = \frac{1 - \alpha^{\gamma+1}}{(1 - \alpha)(\gamma c + v)}.
    """
    checks.positive_number("acceptance", acceptance, allow_zero=True)
    checks.positive_number("draft_tokens", draft_tokens, integer=True)
    checks.positive_number("cost_ratio", cost_ratio, allow_zero=True)
    checks.positive_number("verify_ratio", verify_ratio)
    if acceptance > 1:
        raise ValueError(f"acceptance must be in [0, 1], got {acceptance}")
    tokens = draft_tokens + 1 if acceptance == 1 else \
        (1 - acceptance ** (draft_tokens + 1)) / (1 - acceptance)
    return tokens / (draft_tokens * cost_ratio + verify_ratio)
