"""Diagrams of chapters 9 and 10: the router as a pipeline (text → tokens → encoder → pooled
vector → head → class) with where LoRA sits, and, for the router in production, the
attack-and-retrain loop of adversarial training and continual learning with old and new
classes (replay and EWC)."""

from __future__ import annotations

from collections.abc import Sequence

from matplotlib.figure import Figure

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


def adversarial_loop(attacks: Sequence[str], rounds: int) -> Figure:
    r"""Adversarial training as a loop run ``rounds`` times: the ``attacks`` (perturbations that
    keep a message's meaning, such as typos or paraphrases) rewrite training messages, the
    current router is run on them, the ones it gets wrong are kept with their *original*
    labels and added to the training set, and the router is retrained; the clean test set and
    a held-out attacked test set measure the result (chapter 10)."""
    attacks = list(attacks)
    if not attacks or not all(isinstance(a, str) and a for a in attacks):
        raise ValueError("attacks must be a non-empty list of attack names")
    if isinstance(rounds, bool) or not isinstance(rounds, int) or rounds < 1:
        raise ValueError(f"rounds must be a positive int, got {rounds!r}")
    fig, ax = canvas(9.0, 3.4)
    train = box(ax, 0.05, 1.35, 1.45, 0.8, "training\nmessages\n+ labels", kind="data",
                fontsize=8)
    attack = box(ax, 1.9, 1.25, 1.7, 1.0, "attack\n" + "\n".join(attacks[:4]), kind="noise",
                 fontsize=7.5)
    router = box(ax, 4.0, 1.35, 1.3, 0.8, "current\nrouter", kind="model", fontsize=8.5)
    wrong = box(ax, 5.7, 1.35, 1.5, 0.8, "keep what it\ngets wrong,\nwith true labels",
                kind="loss", fontsize=7.5)
    retrain = box(ax, 7.6, 1.35, 1.3, 0.8, "retrain on\nclean +\nadversarial", kind="model",
                  fontsize=7.5)
    for a, b in ((train, attack), (attack, router), (router, wrong), (wrong, retrain)):
        arrow(ax, a.right, b.left)
    arrow(ax, retrain.top, router.top, bend=0.35, color=ACCENT)
    note(ax, 6.1, 3.05, f"repeat: {rounds} round{'s' if rounds > 1 else ''}",
         color=ACCENT, fontsize=8.5)
    test = box(ax, 3.3, 0.1, 3.3, 0.55, "measure: clean test set  and  attacked test set\n"
               "(attacks applied to held-out messages only)", kind="learned", fontsize=7.5)
    arrow(ax, retrain.bottom, (test.x + test.w, test.center[1]), bend=-0.3)
    note(ax, 1.7, 0.35, "the attack changes the wording,\nnot the meaning: the label stays",
         fontsize=7.5, color=EDGE)
    return fig


def continual(old: Sequence[str], new: Sequence[str], replay_per_class: int,
              ewc_lambda: float) -> Figure:
    r"""Continual learning: a router trained on the ``old`` classes must learn the ``new`` ones.
    Trained on the new messages alone it forgets the old classes; three remedies in one
    picture: *replay* keeps ``replay_per_class`` old messages per class in the new training
    set, *EWC* adds :math:`\frac{\lambda}{2}\sum_i F_i(\theta_i - \theta_i^{old})^2`
    (``ewc_lambda``) so that weights important for the old classes (large Fisher information
    :math:`F_i`) stay put; the joint model trained on everything is the upper reference
    (chapter 10)."""
    old, new = list(old), list(new)
    if not old or not new or set(old) & set(new):
        raise ValueError("old and new must be non-empty, disjoint lists of class names")
    if isinstance(replay_per_class, bool) or not isinstance(replay_per_class, int) \
            or replay_per_class < 0:
        raise ValueError(f"replay_per_class must be an int >= 0, got {replay_per_class!r}")
    if not isinstance(ewc_lambda, (int, float)) or ewc_lambda < 0:
        raise ValueError(f"ewc_lambda must be a number >= 0, got {ewc_lambda!r}")
    fig, ax = canvas(9.2, 3.6)
    names = lambda xs: "\n".join(xs if len(xs) <= 4 else xs[:3] + [f"… {len(xs) - 3} more"])  # noqa: E731,E501
    phase1 = box(ax, 0.05, 1.4, 1.6, 1.3, f"phase 1: {len(old)} old classes\n" + names(old),
                 kind="data", fontsize=7.5)
    model1 = box(ax, 2.0, 1.75, 1.1, 0.6, r"router $\theta^{old}$", kind="model",
                 fontsize=8)
    phase2 = box(ax, 3.45, 1.4, 1.6, 1.3, f"phase 2: {len(new)} new classes\n" + names(new),
                 kind="learned", fontsize=7.5)
    arrow(ax, phase1.right, model1.left)
    arrow(ax, model1.right, phase2.left)
    rows = [("new data only", "forgets the old classes", "loss"),
            (f"+ replay: {replay_per_class} old messages per class", "a small memory of the "
             "past", "data"),
            (f"+ EWC: λ = {ewc_lambda:g}", r"$\frac{\lambda}{2}\sum_i F_i(\theta_i - "
             r"\theta_i^{old})^2$", "model"),
            ("joint: all classes at once", "the upper reference", "frozen")]
    for i, (name, effect, kind) in enumerate(rows):
        y = 2.85 - 0.78 * i
        b = box(ax, 5.5, y, 2.0, 0.6, name, kind=kind, fontsize=7.5)
        arrow(ax, phase2.right, b.left, color=MUTED)
        note(ax, 7.6, y + 0.3, effect, ha="left", fontsize=7.5, color=EDGE)
    note(ax, 2.6, 0.55, "measured on a test set of old and new classes:\naccuracy on the old "
         "ones (forgetting) and on the new ones", fontsize=7.5, color=ACCENT)
    return fig
