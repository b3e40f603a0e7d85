"""Diagrams of chapter 8: a conversation through the chat template to tokens and labels (with the
``-100`` positions), and LoRA's frozen :math:`W_0` beside the trained :math:`BA`, with shapes."""

from __future__ import annotations

from collections.abc import Sequence

from matplotlib.figure import Figure
from matplotlib.patches import Circle

from aigc_lib import finetune
from aigc_lib.diagrams.core import ACCENT, EDGE, MUTED, arrow, box, canvas, note
from aigc_lib.models.lora import LoRALinear

WIDTH = 7.6          # inches: the book's content column, so the text is not scaled down
CHAR = 0.062         # inches per character of 7-point monospace text


def _piece(tokenizer, token_id: int, visible_space: bool = False) -> str:
    text = tokenizer.decode([token_id]).replace("\n", "⏎")
    return text.replace(" ", "␣") if visible_space else text


def _messages(ax, messages: Sequence[dict], top: float) -> None:
    """One small box per message: role and the start of its content."""
    x, width = 0.0, (WIDTH - 0.1 * (len(messages) - 1)) / len(messages)
    for message in messages:
        content = message["content"]
        limit = int(width / CHAR) - 2
        short = content if len(content) <= limit else content[:limit - 1] + "…"
        kind = "learned" if message["role"] == "assistant" else "frozen"
        box(ax, x, top - 0.55, width, 0.55, f"{message['role']}\n{short}", kind=kind,
            fontsize=7, mono=True)
        x += width + 0.1


def _tile_positions(pieces: list[str]) -> list[tuple[float, int, float]]:
    """``(x, row, width)`` of each token's tile, the tiles wrapping at the diagram's width."""
    x, row, positions = 0.0, 0, []
    for piece in pieces:
        width = (len(piece) + 0.8) * CHAR
        if x + width > WIDTH:
            x, row = 0.0, row + 1
        positions.append((x, row, width))
        x += width
    return positions


def _tiles(ax, pieces: list[str], learned: list[bool], top: float) -> float:
    """All real tokens as tiles, wrapped; green when the labels keep them. Returns the bottom."""
    y = top - 0.22
    for piece, learn, (x, row, width) in zip(pieces, learned, _tile_positions(pieces)):
        y = top - 0.22 - 0.27 * row
        box(ax, x, y, width - 0.03, 0.22, piece, kind="learned" if learn else "frozen",
            fontsize=7, mono=True, rounded=False)
    return y


def _column_width(column: dict) -> float:
    return max(0.42, 0.056 * max(len(str(v)) for v in column.values()) + 0.1)


def _zoom(ax, columns: list[dict], left: float, top: float, name: str,
          row_names: bool) -> tuple[float, float]:
    """A table of token / input_ids / attention_mask / labels for a few positions; returns its
    right edge and its bottom."""
    rows = ("token", "input_ids", "attention_mask", "labels")
    height = 0.25
    widths = [_column_width(c) for c in columns]
    note(ax, left, top + 0.12, name, color=EDGE, ha="left")
    for r, row in enumerate(rows):
        y = top - (r + 1) * height
        if row_names:
            note(ax, left - 0.08, y + height / 2, row, ha="right", fontsize=7, mono=True)
        x = left
        for column, width in zip(columns, widths):
            value = column[row]
            ignored = row == "labels" and value == finetune.IGNORE_INDEX
            kind = ("frozen" if ignored else "learned") if row == "labels" else (
                "frozen" if row == "attention_mask" and value == 0 else "plain")
            box(ax, x, y, width - 0.02, height - 0.02, str(value), kind=kind, fontsize=6.5,
                mono=True, rounded=False, color=ACCENT if ignored else "black")
            x += width
    return x, top - len(rows) * height


def chat_labels(tokenizer, messages: Sequence[dict], encoded: finetune.Encoded,
                row: int = 0, context: int = 3, answer: int = 3, padding: int = 2) -> Figure:
    """A conversation (``messages``), the tokens the chat template renders it into, and row
    ``row`` of the padded training batch ``encoded`` (from :func:`aigc_lib.finetune.encode_chats`):
    every token green where its label is kept, grey where it is ``-100``; then two close-ups of
    the tensors, where the first assistant turn starts and where the row ends in padding
    (chapter 8). The loss scores the logits at position ``t`` against ``labels[t + 1]``."""
    if not isinstance(encoded, finetune.Encoded):
        raise TypeError(f"encoded must be a finetune.Encoded, got {type(encoded).__name__}")
    if not 0 <= row < len(encoded):
        raise ValueError(f"row must be in [0, {len(encoded)}), got {row}")
    ids, mask, labels = (t[row].tolist() for t in encoded.tensors())
    n_real = sum(mask)
    learned = [label != finetune.IGNORE_INDEX for label in labels[:n_real]]
    if not any(learned):
        raise ValueError(f"row {row} has no learned token to show")
    pieces = [_piece(tokenizer, i) for i in ids[:n_real]]
    rows_of_tiles = _tile_positions(pieces)[-1][1] + 1
    # title 0.2, messages 0.95, tiles 0.37 + 0.27 per extra row, close-ups 1.65, note 0.35
    height = 0.2 + 0.95 + 0.37 + 0.27 * (rows_of_tiles - 1) + 1.65 + 0.35
    fig, ax = canvas(WIDTH, height)
    top = height - 0.2
    note(ax, 0, top, "1. the conversation: a list of messages", ha="left", color="black")
    _messages(ax, messages, top - 0.15)
    top -= 0.95
    note(ax, 0, top, f"2. rendered by the chat template and tokenised: {n_real} tokens, "
         f"{sum(learned)} learned (green), then {len(ids) - n_real} padding", ha="left",
         color="black")
    bottom = _tiles(ax, pieces, learned, top - 0.15)
    top = bottom - 0.35
    note(ax, 0, top, "3. the tensors the loss reads (close-ups of the row)", ha="left",
         color="black")
    first = learned.index(True)
    start = [dict(token=_piece(tokenizer, ids[t], True), input_ids=ids[t],
                  attention_mask=mask[t], labels=labels[t])
             for t in range(max(first - context, 0), min(first + answer, n_real))]
    end = [dict(token=_piece(tokenizer, ids[t], True) if mask[t] else "(pad)",
                input_ids=ids[t], attention_mask=mask[t], labels=labels[t])
           for t in range(max(n_real - answer, 0), min(n_real + padding, len(ids)))]
    right, _ = _zoom(ax, start, 1.25, top - 0.3, "where the first answer starts", True)
    _, bottom = _zoom(ax, end, right + 0.3, top - 0.3,
                      "the row's end: end-of-turn kept, padding masked", False)
    note(ax, 0, bottom - 0.2, "−100 (red): ignored by cross-entropy. The logits at position "
         "t are scored against labels[t + 1].", ha="left", fontsize=7.5)
    return fig


def lora(layer: LoRALinear, name: str = "") -> Figure:
    r""":math:`h = W_0 x + \frac{\alpha}{r} B A x` for one :class:`~aigc_lib.models.lora.LoRALinear`
    ``layer``: the frozen :math:`W_0` (grey) and the trained :math:`A` and :math:`B` (orange),
    drawn to scale (the rank at least a hairline), their shapes and parameter counts read from
    the layer itself (chapter 8)."""
    if not isinstance(layer, LoRALinear):
        raise TypeError(f"layer must be a LoRALinear, got {type(layer).__name__}")
    d_in, d_out, r = layer.in_features, layer.out_features, layer.r
    s = 1.3 / max(d_in, d_out)                     # inches per row or column
    thin = max(r * s, 0.05)
    height = 2 * d_out * s + 1.35
    width = 1.3 + d_in * s + 1.0 + thin + 1.8 + 1.0
    fig, ax = canvas(max(width, 6.4), height)
    mid, left = height / 2, 1.3
    x = box(ax, 0.3, mid - d_in * s / 2, 0.14, d_in * s, kind="data", rounded=False)
    note(ax, x.center[0], x.y - 0.15, f"x: {d_in}", color=EDGE)
    w0 = box(ax, left, height - 0.45 - d_out * s, d_in * s, d_out * s, kind="frozen",
             rounded=False)
    note(ax, w0.center[0], w0.center[1], "$W_0$", fontsize=11, color="black")
    note(ax, w0.x + w0.w + 0.1, w0.y + w0.h - 0.1, f"frozen: {d_out} × {d_in}\n"
         f"= {d_out * d_in:,} numbers", ha="left", va="top", color=EDGE)
    low = 0.3 + d_out * s / 2                     # the centre line of the low-rank path
    a = box(ax, left, low - thin / 2, d_in * s, thin, kind="model", rounded=False)
    note(ax, a.center[0], a.y - 0.15, f"A: {r} × {d_in} (random)", color="black")
    b = box(ax, a.x + a.w + 1.0, 0.3, thin, d_out * s, kind="model", rounded=False)
    note(ax, b.x + b.w + 0.08, b.y + 0.12, f"B: {d_out} × {r} (zeros)", ha="left",
         color="black")
    plus = (b.x + thin + 1.8, mid)
    ax.add_patch(Circle(plus, 0.15, facecolor="white", edgecolor=EDGE))
    note(ax, *plus, "+", fontsize=12, color="black")
    h = box(ax, plus[0] + 0.55, mid - d_out * s / 2, 0.14, d_out * s, kind="data",
            rounded=False)
    note(ax, h.center[0], h.y - 0.15, f"h: {d_out}", color=EDGE)
    arrow(ax, x.right, w0.left)
    arrow(ax, x.right, a.left)
    arrow(ax, w0.right, (plus[0] - 0.12, plus[1] + 0.1), "$W_0x$", text_at=(plus[0] - 0.9,
          (w0.center[1] + mid) / 2 + 0.1))
    arrow(ax, a.right, (b.x, low), "$Ax$: r numbers")
    arrow(ax, b.right, (plus[0] - 0.12, plus[1] - 0.1), f"× α/r = {layer.scaling:g}",
          text_at=(plus[0] - 0.75, (low + mid) / 2 - 0.3))
    arrow(ax, (plus[0] + 0.15, plus[1]), h.left)
    trained = r * (d_in + d_out)
    note(ax, max(width, 6.4) - 0.05, 0.08, f"trained: r(d_in + d_out) = {trained:,} numbers, "
         f"{trained / (d_in * d_out):.1%} of W₀", ha="right", fontsize=8.5, color=ACCENT)
    if name:
        note(ax, 0.05, height - 0.15, f"layer {name}", ha="left", fontsize=8, mono=True,
             color=EDGE)
    return fig


def dpo() -> Figure:
    r"""Direct preference optimisation as a computation: a prompt with a chosen and a rejected
    answer, each scored by the trained policy and by the frozen reference; the difference of
    their log-ratios, times :math:`\beta`, goes through :math:`-\log\sigma` (chapter 8)."""
    fig, ax = canvas(9.0, 3.1)
    prompt = box(ax, 0.05, 1.25, 1.0, 0.6, "prompt $x$", kind="data", fontsize=9)
    chosen = box(ax, 1.4, 2.05, 1.6, 0.55, "chosen $y_w$\n(reference answer)",
                 kind="learned", fontsize=8)
    rejected = box(ax, 1.4, 0.5, 1.6, 0.55, "rejected $y_l$\n(the model's own reply)",
                   kind="frozen", fontsize=8)
    policy = box(ax, 3.4, 1.65, 1.65, 0.6, r"policy $\pi_\theta$ (trained)", kind="model",
                 fontsize=8.5)
    reference = box(ax, 3.4, 0.85, 1.65, 0.6, r"reference $\pi_{ref}$ (frozen)",
                    kind="frozen", fontsize=8.5)
    margin = box(ax, 5.55, 0.95, 2.05, 1.2, "$\\beta\\,[\\,\\rho(y_w) - \\rho(y_l)\\,]$\n\n"
                 "$\\rho(y) = \\log\\pi_\\theta(y\\mid x)$\n$- \\log\\pi_{ref}(y\\mid x)$",
                 kind="plain", fontsize=8.5)
    loss = box(ax, 7.95, 1.25, 1.0, 0.6, r"$-\log\sigma(\cdot)$", kind="loss", fontsize=9)
    arrow(ax, prompt.right, chosen.left)
    arrow(ax, prompt.right, rejected.left)
    for answer in (chosen, rejected):
        for model in (policy, reference):
            arrow(ax, answer.right, model.left, color=MUTED)
    arrow(ax, policy.right, (margin.x, 1.95))
    arrow(ax, reference.right, (margin.x, 1.15))
    note(ax, 5.3, 2.45, "log-probabilities\nof both answers", fontsize=7.5)
    arrow(ax, margin.right, loss.left)
    note(ax, 6.57, 0.75, "the implicit reward margin", fontsize=8)
    note(ax, 8.45, 1.1, "gradient: only\ninto the policy", fontsize=7.5, color=ACCENT,
         va="top")
    note(ax, 4.22, 0.65, "computed once", fontsize=7.5)
    note(ax, 4.5, 2.95, "no reward model, no sampling during training", fontsize=8,
         color=EDGE)
    return fig
