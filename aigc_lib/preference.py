r"""Preference tuning with DPO (chapter 8): pairs, sequence log-probabilities, the training loss
and what to measure on held-out pairs.

Direct preference optimisation (Rafailov et al. 2023) trains a policy :math:`\pi_\theta`
directly on pairs (prompt :math:`x`, preferred answer :math:`y_w`, rejected answer :math:`y_l`)
with :func:`aigc_lib.losses.dpo_loss`, against a frozen reference :math:`\pi_\text{ref}` (the
supervised fine-tuned model). Here:

- :func:`encode_pairs` tokenises pairs in the chat format (:mod:`aigc_lib.finetune`) and
  pre-computes the reference's sequence log-probabilities once, as TRL's
  ``precompute_ref_log_probs`` does;
- :func:`dpo_step` is the ``loss_fn`` for :func:`aigc_lib.training.fit`: one forward pass over
  chosen and rejected answers together;
- :func:`evaluate_pairs` measures held-out pairs: the implicit reward margin, preference
  accuracy, and whether the policy itself now ranks the chosen answer higher;
- :func:`token_kl` is the mean per-token KL divergence from the reference along given answers.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn as nn

from aigc_lib import checks, finetune, losses, runtime


@dataclass
class PreferencePairs:
    """Tokenised preference pairs: ``chosen`` and ``rejected`` are :class:`finetune.Encoded`
    batches with the same prompts (labels on the answer only), and ``ref_chosen`` /
    ``ref_rejected`` the reference model's sequence log-probabilities of each answer, ``(N,)``.
    """
    chosen: finetune.Encoded
    rejected: finetune.Encoded
    ref_chosen: torch.Tensor
    ref_rejected: torch.Tensor

    def __len__(self) -> int:
        return len(self.chosen)

    def tensors(self) -> tuple[torch.Tensor, ...]:
        """The eight tensors :func:`dpo_step` takes, one row per pair (for ``fit``)."""
        return (*self.chosen.tensors(), *self.rejected.tensors(), self.ref_chosen,
                self.ref_rejected)

    def reference_report(self) -> PairReport:
        r""":func:`evaluate_pairs` of the reference model itself, from the stored
        log-probabilities: reward margins 0, policy margins :math:`\log\pi_\text{ref}(y_w)
        - \log\pi_\text{ref}(y_l)`."""
        margin = (self.ref_chosen - self.ref_rejected).double()
        return PairReport(torch.zeros_like(margin), margin)


def sequence_logps(model: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                   labels: torch.Tensor) -> torch.Tensor:
    r""":math:`\log\pi(y\mid x) = \sum_{t:\,y_t\ne-100}\log\pi(y_t\mid x, y_{<t})` per row,
    ``(B,)``: minus the summed :func:`aigc_lib.losses.causal_lm_loss` of the labelled tokens.
    Gradients flow (wrap in ``no_grad`` for a reference model)."""
    logits = model(input_ids=input_ids, attention_mask=attention_mask).logits
    per_token = losses.causal_lm_loss(logits, labels, finetune.IGNORE_INDEX, reduction="none")
    return -per_token.sum(1)


@torch.no_grad()
def _logps(model: nn.Module, encoded: finetune.Encoded, batch_size: int) -> torch.Tensor:
    nll, _ = finetune.answer_nll_rows(model, encoded, batch_size)
    return (-nll).float()


def encode_pairs(tokenizer, prompts: Sequence[Sequence[dict]], chosen: Sequence[str],
                 rejected: Sequence[str], reference: nn.Module, max_length: int,
                 max_reply_tokens: int | None = None, batch_size: int = 32) -> PreferencePairs:
    """Tokenise preference pairs and score them under the ``reference`` model (chapter 8).

    ``prompts`` are conversations ending with a user turn; ``chosen[i]`` and ``rejected[i]``
    are two answers to ``prompts[i]``. Each answer becomes an assistant turn, encoded as by
    :func:`aigc_lib.finetune.encode_replies` (reply capped at ``max_reply_tokens``, prompt
    cut from the left)."""
    if not (len(prompts) == len(chosen) == len(rejected)) or not prompts:
        raise ValueError(f"prompts, chosen and rejected must be non-empty and equally long, "
                         f"got {len(prompts)}, {len(chosen)} and {len(rejected)}")
    for name, answers in (("chosen", chosen), ("rejected", rejected)):
        bad = next((i for i, a in enumerate(answers) if not isinstance(a, str)), None)
        if bad is not None:
            raise TypeError(f"{name}[{bad}] must be a str")
    encode = lambda answers: finetune.encode_replies(  # noqa: E731
        tokenizer, [list(p) + [{"role": "assistant", "content": a}]
                    for p, a in zip(prompts, answers)], max_length, max_reply_tokens)
    good, bad = encode(chosen), encode(rejected)
    return PreferencePairs(good, bad, _logps(reference, good, batch_size),
                           _logps(reference, bad, batch_size))


def _stack(a: Sequence[torch.Tensor], b: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    """Concatenate two right-padded batches row-wise, padding the narrower one."""
    width = max(a[0].shape[1], b[0].shape[1])
    fills = (0, 0, finetune.IGNORE_INDEX)
    pad = lambda t, fill: torch.nn.functional.pad(t, (0, width - t.shape[1]), value=fill)  # noqa: E731
    return [torch.cat([pad(x, f), pad(y, f)]) for x, y, f in zip(a, b, fills)]


def dpo_step(beta: float = 0.1):
    """The ``loss_fn`` for ``fit(policy, pairs.tensors(), loss_fn=dpo_step(beta), ...)``: one
    forward pass over the chosen and rejected answers of a batch, then
    :func:`aigc_lib.losses.dpo_loss` against the pre-computed reference log-probabilities.
    Also logs the mean implicit reward margin."""
    checks.positive_number("beta", beta)

    def loss_fn(model, c_ids, c_mask, c_labels, r_ids, r_mask, r_labels, ref_c, ref_r):
        ids, mask, labels = _stack((c_ids, c_mask, c_labels), (r_ids, r_mask, r_labels))
        ids, mask, labels = finetune._trim(ids, mask, labels)
        logps = sequence_logps(model, ids, mask, labels)
        chosen, rejected = logps[:len(c_ids)], logps[len(c_ids):]
        loss = losses.dpo_loss(chosen, rejected, ref_c, ref_r, beta=beta)
        margin = beta * ((chosen - ref_c) - (rejected - ref_r))
        return loss, {"reward_margin": margin.detach().mean()}

    return loss_fn


def train_dpo(policy: nn.Module, pairs: PreferencePairs, *, lr: float, steps: int,
              beta: float = 0.1, batch_size: int = 8, seed: int = 0, device=None):
    """DPO of ``policy``'s trainable parameters on ``pairs`` (chapter 8): AdamW at rate ``lr``
    for ``steps`` steps of :func:`dpo_step`. Trains in place; returns ``fit``'s history."""
    if not isinstance(pairs, PreferencePairs):
        raise TypeError(f"pairs must be PreferencePairs, got {type(pairs).__name__}")
    return finetune.train_with_adamw(policy, pairs.tensors(), dpo_step(beta), lr=lr,
                                     steps=steps, batch_size=batch_size, seed=seed,
                                     device=device, desc="DPO")


@dataclass
class PairReport:
    """Per held-out pair: the implicit reward margin
    :math:`\\beta[(\\log\\pi_\\theta - \\log\\pi_\\text{ref})(y_w) - (\\ldots)(y_l)]` and the
    policy's own log-probability margin :math:`\\log\\pi_\\theta(y_w) - \\log\\pi_\\theta(y_l)`."""
    reward_margin: torch.Tensor
    policy_margin: torch.Tensor

    @property
    def reward_accuracy(self) -> float:
        """Share of pairs whose implicit reward ranks the chosen answer first (TRL's
        ``rewards/accuracies``); 0 at the start, when policy = reference."""
        return float((self.reward_margin > 0).double().mean())

    @property
    def policy_accuracy(self) -> float:
        """Share of pairs in which the policy gives the chosen answer the higher probability."""
        return float((self.policy_margin > 0).double().mean())


@torch.no_grad()
def evaluate_pairs(model: nn.Module, pairs: PreferencePairs, beta: float = 0.1,
                   batch_size: int = 32) -> PairReport:
    """Score held-out :class:`PreferencePairs` under ``model`` (chapter 8)."""
    if not isinstance(pairs, PreferencePairs):
        raise TypeError(f"pairs must be PreferencePairs, got {type(pairs).__name__}")
    checks.positive_number("beta", beta)
    chosen = _logps(model, pairs.chosen, batch_size)
    rejected = _logps(model, pairs.rejected, batch_size)
    reward = beta * ((chosen - pairs.ref_chosen) - (rejected - pairs.ref_rejected))
    return PairReport(reward.double(), (chosen - rejected).double())


@torch.no_grad()
def token_kl(model: nn.Module, reference: nn.Module, encoded: finetune.Encoded,
             batch_size: int = 32) -> torch.Tensor:
    r"""Per row of ``encoded``, the mean over its labelled positions of the exact KL divergence
    of the next-token distributions,
    :math:`\frac1{|A|}\sum_{t\in A}\mathrm{KL}\big(\pi_\theta(\cdot\mid x, y_{<t})\,\|\,
    \pi_\text{ref}(\cdot\mid x, y_{<t})\big)` in nats (chapter 8): how far the policy has
    moved from the reference along these answers. ``(N,)`` float64."""
    if not isinstance(encoded, finetune.Encoded):
        raise TypeError(f"encoded must be an Encoded batch, got {type(encoded).__name__}")
    device = next(model.parameters()).device
    out = []
    with runtime.eval_mode(model, reference):
        for start in range(0, len(encoded), batch_size):
            rows = slice(start, start + batch_size)
            ids, mask, labels = (t.to(device) for t in finetune._trim(
                *(t[rows] for t in encoded.tensors())))
            logp = model(input_ids=ids, attention_mask=mask).logits[:, :-1].float().log_softmax(-1)
            logq = reference(input_ids=ids, attention_mask=mask).logits[:, :-1].float() \
                .log_softmax(-1)
            kl = (logp.exp() * (logp - logq)).sum(-1)
            scored = (labels[:, 1:] != finetune.IGNORE_INDEX).double()
            out.append(((kl.double() * scored).sum(1) / scored.sum(1).clamp(min=1)).cpu())
    return torch.cat(out)
