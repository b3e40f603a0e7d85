"""How chapter 8's learning rates were chosen, and what LoRA's rank and targets change.

Every method of the chapter is trained as the chapter trains it (same data, steps, batch size,
seed, AdamW) for each learning rate of a small grid, and scored on the *validation* split; the
test split is never looked at. Then LoRA is tried with a larger rank and on every linear layer
at its best learning rate. The script prints one line per run and the best rate per method:

    method        lr       val ppl  trainable  seconds
    ...
    best: {'full': ..., 'lora': ..., 'last': ..., 'scratch': ...}

Usage: python benchmarks/finetune_choices.py [--steps 80] [--threads 1]
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
from aigc_lib.training import fit

GRID = {"full": (3e-4, 1e-3, 3e-3), "lora": (3e-3, 1e-2, 3e-2), "last": (1e-3, 3e-3, 1e-2),
        "scratch": (3e-4, 1e-3, 3e-3)}
ALL_LINEAR = ("attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=80)
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
    length = min(base.config.n_positions, 256)
    enc = {s: finetune.encode_dialogues(tok, data.support_dialogues(s), length, length // 2)
           for s in ("train", "val")}

    def model_for(method: str, r: int = 8, targets=lora.GPT2_ATTENTION):
        runtime.seed_everything(0)
        if method == "scratch":
            return AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(source))
        model = copy.deepcopy(base)
        if method == "lora":
            lora.add_lora(model, r=r, alpha=2 * r, targets=targets)
        elif method == "last":
            finetune.freeze_all_but(model, [f"transformer.h.{base.config.n_layer - 1}.",
                                            "transformer.ln_f", "lm_head"])
        return model

    def score(name: str, model, lr: float) -> float:
        runtime.seed_everything(0)
        params = [p for p in model.parameters() if p.requires_grad]
        history = fit(model, enc["train"].tensors(), loss_fn=finetune.answer_loss,
                      optimizer=torch.optim.AdamW(params, lr=lr), steps=args.steps,
                      batch_size=8, seed=0, progress=False)
        val = finetune.answer_perplexity(model, enc["val"])
        trainable = costs.count_parameters(model, trainable_only=True)
        print(f"{name:<22} {lr:<8.0e} {val:8.1f} {trainable:>10,} "
              f"{history.seconds:7.1f}", flush=True)
        return val

    print(f"{'method':<22} {'lr':<8} {'val ppl':>8} {'trainable':>10} {'seconds':>7}")
    best = {}
    for method, rates in GRID.items():
        scores = {lr: score(method, model_for(method), lr) for lr in rates}
        best[method] = min(scores, key=scores.get)
    print("best:", best)
    lr = best["lora"]
    score("lora r=16", model_for("lora", r=16), lr)
    score("lora r=32, all linear", model_for("lora", r=32, targets=ALL_LINEAR), lr)


if __name__ == "__main__":
    main()
