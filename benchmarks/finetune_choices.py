"""How chapter 8's learning rates and LoRA rank were chosen: on the validation split only.

Every method of the chapter is trained as the chapter trains it (the same chat sessions, steps,
batch size, seed and AdamW) for each learning rate of a small grid, and scored by the answer
perplexity of the *validation* conversations; the test split is never looked at. LoRA is tuned
separately for each rank (its rate is searched again for every rank, so no rank inherits
another's rate). The script prints one line per run, then the best rate per method and the
best LoRA rank:

    method        lr       val ppl  trainable  seconds
    ...
    best: {'full': ..., 'lora r=4': ..., ..., 'last': ..., 'scratch': ...}

Usage: python benchmarks/finetune_choices.py [--steps 15] [--threads 1]
It uses the book's pretrained GPT (trained and cached on first use) and runs for a few minutes
on a CPU.
"""
from __future__ import annotations

import argparse
import copy
import os

import torch

from aigc_lib import costs, data, finetune, pretrained, runtime
from aigc_lib.models import lora

GRID = {"full": (3e-4, 1e-3, 3e-3), "lora": (3e-3, 1e-2, 3e-2), "last": (1e-3, 3e-3, 1e-2),
        "scratch": (1e-3, 3e-3, 1e-2)}
RANKS = (4, 8, 32)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=15)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from transformers import AutoConfig, AutoModelForCausalLM
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    source = pretrained.small_gpt(progress=False)
    base, tok = finetune.load_causal_lm(source)
    finetune.use_chat_template(tok)
    length = min(finetune.context_length(base), 256)
    fits = lambda c: len(finetune.tokenize_chat(tok, c)[0]) <= length  # noqa: E731
    train = finetune.encode_chats(tok, finetune.chat_sessions(
        data.support_dialogues("train"), fits=fits), length)
    val = finetune.encode_replies(tok, [finetune.conversation(d.question, d.answer)
                                        for d in data.support_dialogues("val")],
                                  length, 3 * length // 8)

    def model_for(method: str, r: int = 8):
        runtime.seed_everything(0)
        if method == "scratch":
            return AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(source))
        model = copy.deepcopy(base)
        if method == "lora":
            lora.add_lora(model, r=r, alpha=2 * r, targets=lora.attention_targets(model))
        elif method == "last":
            finetune.freeze_all_but(model, [f"transformer.h.{base.config.n_layer - 1}.",
                                            "transformer.ln_f", "lm_head"])
        return model

    def score(name: str, model, lr: float) -> float:
        history = finetune.train_sft(model, train, lr=lr, steps=args.steps, batch_size=8)
        ppl = finetune.answer_perplexity(model, val)
        trainable = costs.count_parameters(model, trainable_only=True)
        print(f"{name:<14} {lr:<8.0e} {ppl:8.1f} {trainable:>10,} {history.seconds:7.1f}",
              flush=True)
        return ppl

    print(f"{'method':<14} {'lr':<8} {'val ppl':>8} {'trainable':>10} {'seconds':>7}")
    best, best_ppl = {}, {}
    for method, rates in GRID.items():
        for r in (RANKS if method == "lora" else (None,)):
            name = f"lora r={r}" if r else method
            scores = {lr: score(name, model_for(method, r or 8), lr) for lr in rates}
            best[name] = min(scores, key=scores.get)
            best_ppl[name] = scores[best[name]]
    print("best:", best)
    ranks = {name: ppl for name, ppl in best_ppl.items() if name.startswith("lora")}
    print("best LoRA:", min(ranks, key=ranks.get), "validation perplexity by rank:",
          {name: round(ppl, 1) for name, ppl in ranks.items()})


if __name__ == "__main__":
    main()
