"""Diagrams of chapter 6: scaled dot-product attention and multi-head attention with the tensor
shapes of a :class:`~aigc_lib.models.gpt.GPTConfig`, the causal mask, and a transformer block
(pre-LayerNorm, as :class:`aigc_lib.models.gpt.Block` computes it)."""

from __future__ import annotations

from matplotlib.figure import Figure
from matplotlib.patches import Rectangle

from aigc_lib.diagrams.core import ACCENT, EDGE, MUTED, PALETTE, arrow, box, canvas, note
from aigc_lib.models.gpt import GPTConfig


def _config(config: GPTConfig, T: int) -> None:
    if not isinstance(config, GPTConfig):
        raise TypeError(f"config must be a GPTConfig, got {type(config).__name__}")
    if isinstance(T, bool) or not isinstance(T, int) or not 1 <= T <= config.block_size:
        raise ValueError(f"T must be an int in [1, block_size={config.block_size}], got {T!r}")


def scaled_dot_product(config: GPTConfig, T: int) -> Figure:
    r""":math:`\mathrm{softmax}(QK^\top/\sqrt{d_h} + M)\,V` for one head of ``config`` on ``T``
    tokens, each tensor labelled with its shape: :math:`Q, K, V` are :math:`T\times d_h`, the
    scores and weights :math:`T\times T` (causal mask :math:`M`: :math:`-\infty` above the
    diagonal), the output :math:`T\times d_h` (chapter 6)."""
    _config(config, T)
    dh = config.head_dim
    fig, ax = canvas(9.0, 2.7)
    y, h = 1.0, 0.9
    q = box(ax, 0.05, 1.55, 0.8, 0.6, f"$Q$\n{T} × {dh}", kind="data", fontsize=8.5)
    k = box(ax, 0.05, 0.55, 0.8, 0.6, f"$K$\n{T} × {dh}", kind="data", fontsize=8.5)
    mm = box(ax, 1.25, y, 1.25, h, f"$QK^\\top / \\sqrt{{{dh}}}$\nscores\n{T} × {T}",
             kind="plain", fontsize=8.5)
    mask = box(ax, 2.9, y, 1.2, h, f"+ causal mask\n$-\\infty$ above\nthe diagonal",
               kind="frozen", fontsize=8)
    soft = box(ax, 4.5, y, 1.3, h, f"softmax\nper row\nweights {T} × {T}", kind="plain",
               fontsize=8.5)
    v = box(ax, 4.75, 2.1, 0.8, 0.5, f"$V$  {T} × {dh}", kind="data", fontsize=8.5)
    out = box(ax, 6.2, y, 1.25, h, f"weights · $V$\noutput\n{T} × {dh}", kind="model",
              fontsize=8.5)
    arrow(ax, q.right, (mm.x, mm.y + 0.65))
    arrow(ax, k.right, (mm.x, mm.y + 0.25))
    for a, b in ((mm, mask), (mask, soft), (soft, out)):
        arrow(ax, a.right, b.left)
    arrow(ax, v.right, (out.x + 0.3, out.y + out.h), bend=-0.3)
    note(ax, 7.6, 1.75, "each row: a weighted\naverage of the values\nof earlier tokens",
         ha="left", fontsize=8, color=EDGE)
    note(ax, 3.4, 0.45, f"one head: d_h = n_embd / n_head = {config.n_embd} / "
         f"{config.n_head} = {dh};  1/√d_h keeps the scores' variance near 1",
         fontsize=8)
    return fig


def multi_head(config: GPTConfig, T: int, batch: int = 1) -> Figure:
    r"""Multi-head attention as :class:`aigc_lib.models.gpt.CausalSelfAttention` computes it,
    with the shapes of ``config`` for ``batch`` sequences of ``T`` tokens: one linear layer
    ``c_attn`` makes :math:`Q, K, V` (:math:`d \to 3d`), each is split into :math:`h` heads of
    :math:`d_h = d/h`, the heads attend independently, are concatenated back to :math:`d` and
    mixed by ``c_proj`` (chapter 6)."""
    _config(config, T)
    B, d, H, dh = batch, config.n_embd, config.n_head, config.head_dim
    fig, ax = canvas(9.4, 3.0)
    x = box(ax, 0.05, 1.1, 1.0, 0.8, f"$x$\n({B}, {T}, {d})", kind="data", fontsize=8.5)
    qkv = box(ax, 1.4, 1.1, 1.35, 0.8, f"c_attn\n{d} → {3 * d}\n$Q, K, V$", kind="model",
              fontsize=8.5)
    heads = []
    shown = min(H, 3)
    for i in range(shown):
        label = f"head {i + 1}" if i < shown - 1 or H == shown else f"head {H}"
        heads.append(box(ax, 3.35, (2.1, 1.35, 0.35)[i], 1.9, 0.6, f"{label}: attention\n"
                         f"({B}, {T}, {dh}) each", kind="plain", fontsize=8))
    if H > shown:
        more = H - shown
        note(ax, 4.3, 1.15, f"⋮  {more} more head{'s' if more > 1 else ''}", fontsize=8)
    cat = box(ax, 5.85, 1.1, 1.3, 0.8, f"concatenate\n{H} × {dh}\n= {d}", kind="plain",
              fontsize=8.5)
    proj = box(ax, 7.5, 1.1, 1.1, 0.8, f"c_proj\n{d} → {d}", kind="model", fontsize=8.5)
    arrow(ax, x.right, qkv.left)
    for head in heads:
        arrow(ax, qkv.right, head.left)
        arrow(ax, head.right, cat.left)
    arrow(ax, cat.right, proj.left)
    note(ax, 9.05, 1.5, f"({B}, {T},\n{d})", fontsize=8.5, color="black")
    note(ax, 4.3, 2.85, f"reshaped to (B, h, T, d_h) = ({B}, {H}, {T}, {dh}): "
         "all heads in one batched product", fontsize=8, color=EDGE)
    note(ax, 4.7, 0.12, f"parameters: c_attn {d * 3 * d + 3 * d:,} + c_proj {d * d + d:,}; "
         "the heads add none", fontsize=8)
    return fig


def causal_mask(tokens: list[str]) -> Figure:
    r"""The causal mask on the tokens ``tokens`` (e.g. a tokenised sentence): row :math:`i` may
    attend to columns :math:`j \le i` (green) and not to later tokens (grey, :math:`-\infty`
    before the softmax), so one forward pass trains every position to predict its next token
    (chapter 6)."""
    if not tokens or not all(isinstance(t, str) for t in tokens):
        raise ValueError("tokens must be a non-empty list of strings")
    n, cell = len(tokens), min(0.4, 3.6 / len(tokens))
    width = 1.4 + n * cell + 2.6
    fig, ax = canvas(width, n * cell + 1.2)
    top = n * cell + 0.3
    for i, row in enumerate(tokens):
        note(ax, 1.3, top - (i + 0.5) * cell, row, ha="right", fontsize=8, mono=True,
             color="black")
        for j in range(n):
            allowed = j <= i
            ax.add_patch(Rectangle((1.4 + j * cell, top - (i + 1) * cell), cell, cell,
                                   facecolor=PALETTE["learned" if allowed else "frozen"],
                                   edgecolor="white", lw=1))
            if not allowed:
                note(ax, 1.4 + (j + 0.5) * cell, top - (i + 0.5) * cell, "−∞",
                     fontsize=6, color=MUTED)
    for j, col in enumerate(tokens):
        note(ax, 1.4 + (j + 0.5) * cell, top + 0.08, col, fontsize=8, mono=True,
             color="black", rotation=60, ha="left", va="bottom")
    note(ax, 1.4 + n * cell / 2, 0.12, "keys (attended to)", fontsize=8)
    note(ax, 0.15, top - n * cell / 2, "queries", fontsize=8, rotation=90)
    note(ax, 1.6 + n * cell, top - 0.3, "green: may attend\ngrey: masked (−∞ before\n"
         "the softmax, weight 0)", ha="left", va="top", fontsize=8, color=EDGE)
    note(ax, 1.6 + n * cell, top - 1.4, "row i sees tokens 1…i:\nevery row is a next-token\n"
         "prediction, all trained\nin one pass", ha="left", va="top", fontsize=8,
         color=ACCENT)
    return fig


def transformer_block(config: GPTConfig, T: int, batch: int = 1) -> Figure:
    r"""One block of the GPT as :class:`aigc_lib.models.gpt.Block` computes it, with the shapes of
    ``config``: :math:`x + \mathrm{Attn}(\mathrm{LN}_1(x))`, then
    :math:`x + \mathrm{MLP}(\mathrm{LN}_2(x))` with the MLP :math:`d \to 4d \to d` (GELU); the
    residual stream keeps the shape :math:`(B, T, d)` throughout, and ``n_layer`` blocks are
    stacked (chapter 6)."""
    _config(config, T)
    B, d = batch, config.n_embd
    fig, ax = canvas(8.6, 2.9)
    y = 2.25
    ax.plot([0.2, 8.3], [y, y], color="#2c6fb0", lw=3, alpha=0.6)
    note(ax, 0.2, y + 0.22, f"residual stream ({B}, {T}, {d})", ha="left", fontsize=8.5,
         color="#2c6fb0")
    ln1 = box(ax, 0.7, 1.0, 0.8, 0.55, "LN₁", kind="model", fontsize=8.5)
    attn = box(ax, 1.8, 0.9, 2.0, 0.75, f"causal self-attention\n{config.n_head} heads × "
               f"{config.head_dim}", kind="model", fontsize=8)
    ln2 = box(ax, 4.4, 1.0, 0.8, 0.55, "LN₂", kind="model", fontsize=8.5)
    mlp = box(ax, 5.5, 0.9, 2.1, 0.75, f"MLP {d} → {4 * d} → {d}\nGELU", kind="model",
              fontsize=8)
    for plus_x, start, branch in ((4.05, 0.45, (ln1, attn)), (7.9, 4.15, (ln2, mlp))):
        ax.plot([start, start], [y, branch[0].center[1]], color=EDGE, lw=1)
        arrow(ax, (start, branch[0].center[1]), branch[0].left)
        arrow(ax, branch[0].right, branch[1].left)
        arrow(ax, branch[1].right, (plus_x, branch[1].center[1]))
        arrow(ax, (plus_x, branch[1].center[1]), (plus_x, y - 0.12))
        ax.add_patch(Rectangle((plus_x - 0.12, y - 0.12), 0.24, 0.24, facecolor="white",
                               edgecolor=EDGE))
        note(ax, plus_x, y, "+", fontsize=10, color="black")
    note(ax, 4.3, 0.35, f"× {config.n_layer} blocks, then a final LayerNorm and the "
         f"unembedding {d} → {config.vocab_size:,}", fontsize=8.5, color=ACCENT)
    note(ax, 4.3, 0.1, "each branch reads a normalised copy and adds its result back "
         "(pre-LN)", fontsize=7.5)
    return fig
