"""Diagrams of chapter 7: byte-pair encoding replayed merge by merge on one word of the corpus,
and bits per byte as one scale on which the models and their baselines are placed."""

from __future__ import annotations

import json
from collections.abc import Mapping

from matplotlib.figure import Figure

from aigc_lib.diagrams.core import ACCENT, EDGE, MUTED, PALETTE, box, canvas, note

CHAR = 0.075         # inches per character of 8-point monospace text


def merge_steps(tokenizer, word: str) -> list[tuple[list[str], int | None]]:
    """Replay a byte-level BPE ``tokenizer`` (a ``tokenizers.Tokenizer`` from
    :func:`aigc_lib.data.train_bpe`) on ``word``: start from its bytes (printed as GPT-2 prints
    them, a space as ``Ġ``) and apply, at each step, the learned merge of lowest rank among the
    adjacent pairs. Returns every state with the rank of the merge that produced it (``None``
    for the bytes). The last state is the tokenizer's own encoding (chapter 7)."""
    if not isinstance(word, str) or not word or any(c.isspace() for c in word.strip()):
        raise ValueError(f"word must be one non-empty word (a leading space allowed), "
                         f"got {word!r}")
    spec = json.loads(tokenizer.to_str())["model"]
    if spec.get("type") != "BPE":
        raise TypeError("tokenizer must be a byte-level BPE tokenizers.Tokenizer")
    merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in spec["merges"]]
    rank = {pair: i for i, pair in enumerate(merges)}
    pieces = [piece for piece, _ in
              tokenizer.pre_tokenizer.pre_tokenize_str(word)]
    if len(pieces) != 1:
        raise ValueError(f"word must pre-tokenize to one piece, got {pieces}")
    state = list(pieces[0])
    steps: list[tuple[list[str], int | None]] = [(state, None)]
    while len(state) > 1:
        ranked = [(rank[p], i) for i, p in enumerate(zip(state[:-1], state[1:])) if p in rank]
        if not ranked:
            break
        r, i = min(ranked)
        state = state[:i] + [state[i] + state[i + 1]] + state[i + 2:]
        steps.append((state, r))
    return steps


def bpe_merges(tokenizer, word: str) -> Figure:
    """The merges a BPE ``tokenizer`` applies to ``word``, one row per merge (see
    :func:`merge_steps`): the pieces as tiles, the pair just merged in orange, and the rank of
    that merge (the order in which training learned it: lower = more frequent); the last row
    is what the tokenizer outputs, with its ids. The byte-level space, ``Ġ`` in the
    vocabulary, is drawn as ``␣`` (chapter 7)."""
    steps = merge_steps(tokenizer, word)
    longest = max(sum(len(p) + 1.2 for p in s) for s, _ in steps) * CHAR
    row = 0.34
    fig, ax = canvas(max(longest + 2.6, 5.0), row * len(steps) + 0.75)
    top = row * len(steps) + 0.45
    note(ax, 0.05, top + 0.1, "rank of the merge", ha="left", fontsize=7.5)
    previous: list[str] = []
    for k, (state, r) in enumerate(steps):
        y = top - (k + 1) * row
        note(ax, 0.05, y + 0.13, "bytes" if r is None else f"#{r}", ha="left", fontsize=8,
             mono=True, color=EDGE)
        x = 1.2
        for piece in state:
            new = r is not None and piece not in previous and len(piece) > 1
            width = (len(piece) + 1.2) * CHAR
            box(ax, x, y, width - 0.04, 0.26, piece.replace("Ġ", "␣"),
                kind="model" if new else "plain",
                fontsize=8, mono=True, rounded=False)
            x += width
        previous = state
    final = steps[-1][0]
    ids = [tokenizer.token_to_id(p) for p in final]
    tokens = f"{len(final)} token{'s' if len(final) > 1 else ''}"
    note(ax, 0.05, 0.12, f"{len(steps[0][0])} bytes → {tokens}, ids {ids}; orange: the "
         "piece a merge just made; ␣: the space (Ġ in the vocabulary)", ha="left",
         fontsize=7.5, color=ACCENT)
    return fig


def bits_per_byte_scale(values: Mapping[str, float], highlight: str | None = None) -> Figure:
    """Bits per byte as one scale from 0 to 8 (a byte stored as is), with every entry of
    ``values`` (name → bits per byte, as measured by the chapter) marked on it; ``highlight``
    names the model to look at. Lower is better; 8 bits per byte means nothing was learned
    (chapter 7)."""
    if not values:
        raise ValueError("values must map at least one name to bits per byte")
    bad = {k: v for k, v in values.items() if not isinstance(v, (int, float)) or not 0 <= v}
    if bad:
        raise ValueError(f"values must be non-negative numbers, got {bad}")
    if highlight is not None and highlight not in values:
        raise ValueError(f"highlight must be one of {sorted(values)}, got {highlight!r}")
    top_value = max(8.0, max(values.values()))
    left, right = 0.4, 7.2
    to_x = lambda v: left + (right - left) * v / top_value  # noqa: E731
    ordered = sorted(values.items(), key=lambda kv: kv[1])
    fig, ax = canvas(7.6, 1.2 + 0.28 * len(ordered))
    y = 0.55
    ax.plot([left, right], [y, y], color=EDGE, lw=1.2)
    for v in range(0, int(top_value) + 1):
        ax.plot([to_x(v)] * 2, [y - 0.05, y + 0.05], color=EDGE, lw=0.8)
        note(ax, to_x(v), y - 0.18, str(v), fontsize=7.5)
    note(ax, (left + right) / 2, 0.05, "bits per byte of held-out text (lower is better; "
         "8 = raw bytes, nothing learned)", fontsize=8)
    for i, (name, v) in enumerate(ordered):
        level = y + 0.3 + 0.28 * i
        colour = ACCENT if name == highlight else EDGE
        ax.plot([to_x(v)] * 2, [y, level], color=colour, lw=0.8, ls=":")
        ax.plot(to_x(v), y, "o", ms=5, color=PALETTE["model" if name == highlight
                                                      else "data"], markeredgecolor=colour)
        flip = v > 0.6 * top_value                 # labels on the right end read leftwards
        note(ax, to_x(v) + (-0.06 if flip else 0.06), level, f"{name}: {v:.2f}",
             ha="right" if flip else "left", fontsize=8,
             color=colour if name == highlight else "black")
    note(ax, to_x(8), y - 0.32, "a byte as is", fontsize=7, color=MUTED)
    return fig
