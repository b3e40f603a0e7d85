"""Diagrams of chapters 9 and 10: the router as a pipeline (text → tokens → encoder → pooled
vector → head → class) with where LoRA sits, what each routing method trains, and, for the router in production, one step of
adversarial training on the word vectors and continual learning in stages of new intents
(rehearsal and EWC)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from matplotlib.figure import Figure

from aigc_lib import checks
from aigc_lib.diagrams.core import ACCENT, EDGE, MUTED, arrow, box, canvas, note


def _sizes(encoder_config) -> tuple[int, int, int]:
    try:
        d, layers, heads = (encoder_config.hidden_size, encoder_config.num_hidden_layers,
                            encoder_config.num_attention_heads)
    except AttributeError as error:
        raise TypeError("encoder_config must be a transformers config with hidden_size, "
                        "num_hidden_layers and num_attention_heads") from error
    return d, layers, heads


def pipeline(encoder_config, labels: Sequence[str], text: str, max_length: int,
             lora_targets: Sequence[str] = ("query", "value"), r: int = 8,
             normalize: bool = True) -> Figure:
    r"""How :class:`aigc_lib.classifier.SentenceClassifier` routes one message ``text``: the
    tokenizer cuts it to at most ``max_length`` tokens, the encoder (sizes read from
    ``encoder_config``) gives one :math:`d`-vector per token, mean pooling over the real tokens
    (and unit length when ``normalize``) gives one vector :math:`e`, the head :math:`We + b`
    gives one logit per class of ``labels``. With LoRA, rank-``r`` adapters sit beside the
    frozen ``lora_targets`` projections of every layer; the head trains either way (chapter 9)."""
    d, layers, heads = _sizes(encoder_config)
    labels = list(labels)
    if len(labels) < 2 or not all(isinstance(x, str) for x in labels):
        raise ValueError("labels must be a list of at least 2 class names")
    if not isinstance(text, str) or not text:
        raise ValueError("text must be a non-empty string")
    k = len(labels)
    fig, ax = canvas(9.6, 3.5)
    short = text if len(text) <= 18 else text[:17] + "…"
    msg = box(ax, 0.05, 1.45, 1.5, 0.7, f"message\n“{short}”", kind="data", fontsize=7.5)
    tok = box(ax, 1.85, 1.45, 1.05, 0.7, f"tokenizer\n≤ {max_length} ids\n+ mask",
              kind="frozen", fontsize=7.5)
    enc = box(ax, 3.2, 1.1, 1.9, 1.4, f"encoder\n{layers} layers, {heads} heads\nwidth {d}\n"
              f"→ (T, {d})", kind="frozen", fontsize=8)
    pool = box(ax, 5.45, 1.45, 1.15, 0.7, f"mean pool\n{'+ unit length' if normalize else ''}"
               f"\n$e$: {d}", kind="plain", fontsize=7.5)
    head = box(ax, 6.95, 1.45, 1.2, 0.7, f"head $We + b$\n{d} → {k}", kind="model",
               fontsize=7.5)
    shown = labels if k <= 5 else labels[:4] + [f"… {k - 4} more"]
    out = box(ax, 8.45, 1.1, 1.1, 1.4, "\n".join(["argmax →", *shown]), kind="learned",
              fontsize=7)
    for a, b in ((msg, tok), (tok, enc), (enc, pool), (pool, head), (head, out)):
        arrow(ax, a.right, b.left)
    lora = box(ax, 3.35, 2.85, 1.6, 0.5, f"LoRA: rank {r} on\n{', '.join(lora_targets)}",
               kind="model", fontsize=7.5, dashed=True)
    arrow(ax, lora.bottom, enc.top, color=ACCENT)
    note(ax, 5.2, 3.1, f"trains {r}·(d_in + d_out) = {r * 2 * d:,} numbers per adapted "
         f"{d}×{d} matrix, {len(lora_targets)} per layer", ha="left", fontsize=7.5,
         color=ACCENT)
    note(ax, 4.8, 0.75, "full fine-tuning: every encoder weight trains (orange);  LoRA: "
         "the encoder stays frozen (grey) and", fontsize=7.5, color=EDGE)
    note(ax, 4.8, 0.5, "only the adapters and the head train;  linear probe: only the head "
         "(fitted on frozen vectors e)", fontsize=7.5, color=EDGE)
    note(ax, 4.8, 0.15, "cross-entropy of the logits against the team's label trains "
         "whatever is orange", fontsize=7.5, color=MUTED)
    return fig


METHOD_PARTS = {   # what each of chapter 9's routers is made of, left to right
    "majority class": ("count labels", None, None),
    "TF-IDF + LR": ("word counts (TF-IDF)", None, "head"),
    "frozen MiniLM + LR": ("tokenizer", "encoder (frozen)", "head"),
    "full fine-tuning": ("tokenizer", "encoder (trained)", "head"),
    "LoRA": ("tokenizer", "frozen encoder + trained adapters", "head"),
}


def methods(trained: Mapping[str, int]) -> Figure:
    r"""The routers of chapter 9 side by side, one row each: what turns a message into features
    (word counts, or the pretrained encoder) and what trains (orange) or stays frozen (grey),
    with the number of trained parameters of each as ``trained`` gives them (method name →
    count, measured by the chapter with :func:`aigc_lib.costs.count_parameters`). The names
    are those of :data:`METHOD_PARTS`; a subset may be drawn, in that order (chapter 9)."""
    if not isinstance(trained, Mapping) or not trained:
        raise ValueError("trained must map at least one method name to its trained parameters")
    unknown = [m for m in trained if m not in METHOD_PARTS]
    if unknown:
        raise ValueError(f"trained names unknown methods {unknown}; expected some of "
                         f"{list(METHOD_PARTS)}")
    bad = {m: n for m, n in trained.items()
           if isinstance(n, bool) or not isinstance(n, int) or n < 0}
    if bad:
        raise ValueError(f"trained must give non-negative int counts, got {bad}")
    rows = [m for m in METHOD_PARTS if m in trained]
    fig, ax = canvas(9.0, 0.55 * len(rows) + 0.6)
    note(ax, 8.95, 0.55 * len(rows) + 0.35, "trained parameters", ha="right", fontsize=7.5)
    for i, name in enumerate(rows):
        y = 0.55 * (len(rows) - 1 - i) + 0.15
        features, encoder, head = METHOD_PARTS[name]
        note(ax, 0.05, y + 0.2, name, ha="left", fontsize=8, color=EDGE)
        first = box(ax, 1.75, y, 1.55, 0.4, features,
                    kind="model" if name == "majority class" else "frozen", fontsize=7)
        last = first
        if encoder is not None:
            last = box(ax, 3.6, y, 2.0, 0.4, encoder, fontsize=7,
                       kind="model" if "trained" in encoder else "frozen",
                       dashed="adapters" in encoder)
            arrow(ax, first.right, last.left)
        if head is not None:
            out = box(ax, 5.9, y, 1.1, 0.4, "head → class", kind="model", fontsize=7)
            arrow(ax, last.right, out.left)
        note(ax, 8.95, y + 0.2, f"{trained[name]:,}", ha="right", fontsize=8, color=ACCENT)
    return fig


def adversarial_step(epsilon: float, weight: float = 0.5, steps: int = 1) -> Figure:
    r"""One step of adversarial training on the word vectors, as chapter 10 trains the router
    (Miyato et al.'s fast-gradient method): the batch's word vectors :math:`E` give the clean
    loss :math:`\ell(E, y)`; its gradient :math:`g = \nabla_E \ell` gives the perturbation
    :math:`r = \epsilon\, g/\lVert g\rVert` (``epsilon``, recomputed for every batch against
    the current model, ``steps`` > 1 for PGD, held constant for the update); the loss
    :math:`(1-w)\,\ell(E, y) + w\,\ell(E + r, y)` (``weight`` :math:`w`) updates the weights.
    The label stays: the perturbation is meant not to change the meaning (chapter 10)."""
    checks.positive_number("epsilon", epsilon, allow_zero=True)
    if checks.positive_number("weight", weight, allow_zero=True) > 1:
        raise ValueError(f"weight must be in [0, 1], got {weight!r}")
    checks.positive_number("steps", steps, integer=True)
    fig, ax = canvas(9.2, 3.3)
    batch = box(ax, 0.05, 1.3, 1.35, 0.8, "batch: word\nvectors $E$,\nlabels $y$",
                kind="data", fontsize=8)
    clean = box(ax, 1.8, 2.1, 1.6, 0.7, r"router: $\ell(E, y)$", kind="model", fontsize=8.5)
    grad = box(ax, 3.8, 2.1, 2.0, 0.7, r"$g = \nabla_E\,\ell(E, y)$" "\n(through the "
               "frozen layers)", kind="plain", fontsize=8)
    method = "1 step (FGM)" if steps == 1 else f"{steps} steps (PGD)"
    pert = box(ax, 3.8, 0.55, 2.0, 0.8, f"$r = \\epsilon\\, g / \\Vert g\\Vert$\n"
               f"ε = {epsilon:g} of ‖E‖, {method}", kind="noise", fontsize=8)
    adv = box(ax, 1.8, 0.6, 1.6, 0.7, r"router: $\ell(E + r, y)$", kind="model",
              fontsize=8.5)
    loss = box(ax, 6.3, 1.3, 2.85, 0.8, f"$(1 - w)\\,\\ell(E, y) + w\\,\\ell(E + r, y)$"
               f"\nw = {weight:g}: update θ", kind="loss", fontsize=8)
    arrow(ax, (batch.x + batch.w, 1.9), clean.left)
    arrow(ax, (batch.x + batch.w, 1.5), adv.left)
    arrow(ax, clean.right, grad.left)
    arrow(ax, grad.bottom, pert.top)
    arrow(ax, pert.left, adv.right)
    ax.plot([clean.center[0]] * 2 + [loss.x + 0.5], [clean.y + clean.h, 3.1, 3.1], color=EDGE,
            lw=1)
    arrow(ax, (loss.x + 0.5, 3.1), (loss.x + 0.5, loss.y + loss.h))
    arrow(ax, (adv.center[0], adv.y), (loss.x + 0.5, loss.y), bend=0.25)
    note(ax, 9.15, 2.6, "r is held constant for the update;\nthe label y is kept: the "
         "push\nshould not change the meaning", fontsize=7.5, color=ACCENT, ha="right")
    note(ax, 7.6, 0.65, "cost: a gradient with respect to E\nand a second forward pass "
         "per step", fontsize=7.5, color=EDGE)
    return fig


def continual(stages: Sequence[Sequence[str]], replay_per_class: int,
              ewc_lambda: float) -> Figure:
    r"""Continual learning as chapter 10 stages it: the router launches knowing the intents of
    ``stages[0]`` and learns each later batch of intents in turn, always answering among the
    intents seen so far. Trained on each new batch alone (*sequential*) it forgets the old
    ones; *rehearsal* keeps a replay buffer of ``replay_per_class`` old messages per old
    intent; *EWC* adds :math:`\frac{\lambda}{2}\sum_i F_i(\theta_i - \theta^*_i)^2`
    (``ewc_lambda``), stiff along the weights the old answers depend on (large Fisher
    information :math:`F_i`); *joint* training on all batches at once is the reference no
    continual method should beat (chapter 10)."""
    stages = [list(stage) for stage in stages]
    names = [n for stage in stages for n in stage]
    if len(stages) < 2 or not all(stages) or len(set(names)) != len(names) \
            or not all(isinstance(n, str) for n in names):
        raise ValueError("stages must be >= 2 non-empty, disjoint lists of intent names")
    checks.positive_number("replay_per_class", replay_per_class, integer=True, allow_zero=True)
    checks.positive_number("ewc_lambda", ewc_lambda, allow_zero=True)
    n = len(stages)
    fig, ax = canvas(9.2, 3.7)
    width = min(1.6, 4.6 / n)
    seen: list[str] = []
    for k, stage in enumerate(stages):
        seen += stage
        x = 0.05 + k * (width + 0.35)
        b = box(ax, x, 2.3, width, 0.9, f"stage {k + 1}\n+ " + ", ".join(stage), kind="data"
                if k == 0 else "learned", fontsize=7.5)
        note(ax, b.center[0], 2.12, f"answers among {len(seen)}", fontsize=7)
        if k:
            arrow(ax, (x - 0.35, 2.75), b.left)
    right = 0.05 + n * (width + 0.35)
    rows = [("sequential: each new batch alone", "forgets the earlier intents", "loss"),
            (f"rehearsal: + {replay_per_class} old messages per old intent",
             "a small replay buffer", "data"),
            (f"EWC: + penalty, λ = {ewc_lambda:g}", r"$\frac{\lambda}{2}\sum_i F_i"
             r"(\theta_i - \theta^*_i)^2$", "model"),
            ("joint: all batches at once", "the reference", "frozen")]
    for i, (name, effect, kind) in enumerate(rows):
        y = 1.45 - 0.45 * i
        box(ax, 0.05, y, 3.9, 0.36, name, kind=kind, fontsize=7.5)
        note(ax, 4.1, y + 0.18, effect, ha="left", fontsize=7.5, color=EDGE)
    note(ax, min(right, 8.0), 2.75, "after every stage: accuracy\non each batch of "
         "intents", ha="left", fontsize=7.5, color=ACCENT)
    note(ax, 7.0, 0.35, "all methods start from the\nrouter trained on stage 1",
         fontsize=7.5, color=MUTED)
    return fig
