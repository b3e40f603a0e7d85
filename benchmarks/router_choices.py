"""How chapter 10's choices were made, on the validation split only.

1. The adversarial-training budget: plain fine-tuning and adversarial training with
   epsilon in {0.05, 0.1, 0.2} (a fraction of each message's word-vector norm), three seeds,
   16 labelled messages per class, the top layer trained; scored by validation macro-F1 and
   accuracy under the embedding attack at 0.05 on 12 validation messages per class. The
   chapter takes the largest epsilon that costs less than 0.03 of clean macro-F1.
2. Continual learning: EWC's strength in {1e3, 1e4, 1e5, 1e6} and the replay buffer in
   {4, 8, 16} messages per old intent, scored by the average validation accuracy over the
   three batches of intents.

Prints one line per setting (means over seeds) and the choices:

    adversarial  eps=0.2   val F1 0.730  accuracy under attack ...
    ...
    choices: {'TRAIN_EPS': ..., 'EWC_STRENGTH': ..., 'REPLAY': ...}

Usage: python benchmarks/router_choices.py [--seeds 3]   (several minutes on one CPU thread)
"""
from __future__ import annotations

import argparse
import copy
import functools
import os

import numpy as np
import torch
import torch.nn.functional as F

from aigc_lib import classifier, continual, data, encoders, metrics, robust, runtime

LAYER, LR, HEAD_LR, EPOCHS = 5, 3e-4, 1e-2, 2
BATCHES = (("trivia", "other"), ("coding", "ai"), ("emotion", "psychology"))


def setup():
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    train, val = data.chatterbot_intents("train"), data.chatterbot_intents("val")
    tokenizer, encoder = encoders.load_tokenizer(), encoders.load_encoder()
    base = classifier.SentenceClassifier(encoder, len(train.names)).freeze_below(LAYER).eval()
    cache = classifier.LayerCache(base, tokenizer, LAYER)
    return train, val, tokenizer, base, cache


def adversarial_choice(train, val, tokenizer, base, cache, seeds):
    from sklearn.linear_model import LogisticRegression

    (h, m), (hv, mv) = cache(train.texts), cache(val.texts)
    with torch.no_grad():
        emb = base.eval()
        feats = F.normalize(encoders.mean_pool(classifier.run_layers(
            emb.bert.encoder.layer[LAYER:], h, m, emb.bert.config), m), dim=-1)
    ids, mask = encoders.tokenize(tokenizer, train.texts)
    att = data.per_class_subset(val.labels, 12, 0)
    ids_a, mask_a = encoders.tokenize(tokenizer, [val.texts[i] for i in att])
    loss = lambda mod, hs, k, y: F.cross_entropy(mod.forward_from(hs, k, LAYER), y)
    scores = {}
    for eps in (None, 0.05, 0.1, 0.2):
        rows = []
        for seed in range(seeds):
            idx = data.per_class_subset(train.labels, 16, seed)
            probe = LogisticRegression(C=10.0, max_iter=2000).fit(feats[idx],
                                                                  train.labels[idx])
            runtime.seed_everything(seed)
            model = copy.deepcopy(base).init_head(probe.coef_, probe.intercept_)
            tensors, fn = (((h[idx], m[idx], train.labels[idx]), loss) if eps is None else
                           ((ids[idx], mask[idx], train.labels[idx]),
                            functools.partial(robust.adversarial_loss, epsilon=eps)))
            classifier.train_with_loss(model, tensors, loss_fn=fn, epochs=EPOCHS, lr=LR,
                                       lengths=tensors[1].sum(1), seed=seed)
            with torch.no_grad():
                f1 = metrics.macro_f1(val.labels, model.forward_from(hv, mv, LAYER).argmax(1))
            attacked = robust.embedding_attack(model, ids_a, mask_a, val.labels[att], [0.05])
            rows.append((f1, float((attacked[0] == val.labels[att]).float().mean())))
        scores[eps] = np.mean(rows, 0)
        print(f"adversarial  eps={eps!s:<5} val F1 {scores[eps][0]:.3f}  accuracy under "
              f"attack {scores[eps][1]:.3f}", flush=True)
    allowed = [e for e in scores if e is not None and scores[e][0] > scores[None][0] - 0.03]
    return max(allowed) if allowed else None


def continual_choice(train, val, base, cache, seeds):
    (h, m), (hv, mv) = cache(train.texts), cache(val.texts)
    names, y, yv = train.names, train.labels, val.labels
    groups = [[names.index(n) for n in b] for b in BATCHES]

    def stage(model, idx, active, seed, ewc=None):
        def loss(mod, hs, k, lab):
            value = continual.masked_cross_entropy(mod.forward_from(hs, k, LAYER), lab, active)
            return value + ewc.penalty(mod) if ewc is not None else value
        classifier.train_with_loss(model, (h[idx], m[idx], y[idx]), loss_fn=loss,
                                   epochs=EPOCHS, lr=LR, head_lr=HEAD_LR,
                                   lengths=m[idx].sum(1), seed=seed)

    def average(model):
        with torch.no_grad():
            answer = model.eval().forward_from(hv, mv, LAYER).argmax(1)
        return np.mean([float((answer == yv)[torch.isin(yv, torch.tensor(g))].float().mean())
                        for g in groups])

    def run(seed, strength=None, replay=None):
        runtime.seed_everything(seed)
        model = copy.deepcopy(base)
        with torch.no_grad():
            model.head.weight.zero_(), model.head.bias.zero_()
        capped = data.per_class_subset(y, 48, seed)
        part = [capped[torch.isin(y[capped], torch.tensor(g))] for g in groups]
        ewc = continual.EWC(strength) if strength else None
        active, seen = list(groups[0]), part[0]
        stage(model, part[0], active, seed)
        for g, new, last in zip(groups[1:], part[1:], part[:-1]):
            idx = new
            if ewc is not None:
                pick = last[:16]
                log_probs = lambda mod, hs, k, a=list(active): F.log_softmax(
                    continual.masked_logits(mod.forward_from(hs, k, LAYER), a), -1)
                ewc.consolidate(model, continual.diagonal_fisher(model, log_probs,
                                                                 (h[pick], m[pick])))
            if replay:
                idx = torch.cat([idx, seen[continual.replay_indices(y[seen], active, replay,
                                                                    seed)]])
            active = active + g
            stage(model, idx, active, seed, ewc)
            seen = torch.cat([seen, new])
        return average(model)

    ewc = {s: np.mean([run(seed, strength=s) for seed in range(seeds)])
           for s in (1e3, 1e4, 1e5, 1e6)}
    replay = {k: np.mean([run(seed, replay=k) for seed in range(seeds)]) for k in (4, 8, 16)}
    for s, v in ewc.items():
        print(f"EWC          strength={s:g}  val average accuracy {v:.3f}", flush=True)
    for k, v in replay.items():
        print(f"rehearsal    per class={k:<3} val average accuracy {v:.3f}", flush=True)
    return max(ewc, key=ewc.get), replay


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(1)
    parts = setup()
    eps = adversarial_choice(*parts, args.seeds)
    strength, replay = continual_choice(parts[0], parts[1], parts[3], parts[4], args.seeds)
    print("choices:", {"TRAIN_EPS": eps, "EWC_STRENGTH": strength,
                       "REPLAY (average by size)": {k: round(v, 3) for k, v in replay.items()}})


if __name__ == "__main__":
    main()
