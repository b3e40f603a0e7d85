"""The drawing kit of the book's diagrams: a canvas measured in inches, boxes, arrows, tensors.

All diagrams share one palette, so a colour means the same thing everywhere: blue for data, orange
for what training changes, grey for what it does not (frozen weights, context tokens), red for
losses, purple for noise, green for what a loss learns from. :func:`show` displays a figure as
SVG with its text drawn as paths: the page needs no font, and the picture stays sharp at any zoom.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from dataclasses import dataclass

from matplotlib import rc_context
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.patches import FancyArrowPatch, FancyBboxPatch

PALETTE = {
    "data": "#d6e6f5",      # inputs and observed variables
    "model": "#fbd9b0",     # trained weights and networks
    "frozen": "#e2e2e2",    # weights or tokens training leaves alone
    "loss": "#f4c2c2",      # loss terms
    "noise": "#e3d7f2",     # random draws
    "learned": "#bfe3bf",   # targets a loss learns from
    "plain": "#ffffff",
}
EDGE = "#4d4d4d"     # outlines and arrows
MUTED = "#8c8c8c"    # secondary text
ACCENT = "#c0392b"   # what the reader should look at first


@dataclass(frozen=True)
class Box:
    """A rectangle on a canvas (inches): lower-left corner ``(x, y)``, width ``w``, height ``h``."""
    x: float
    y: float
    w: float
    h: float

    @property
    def center(self) -> tuple[float, float]:
        return self.x + self.w / 2, self.y + self.h / 2

    @property
    def left(self) -> tuple[float, float]:
        return self.x, self.y + self.h / 2

    @property
    def right(self) -> tuple[float, float]:
        return self.x + self.w, self.y + self.h / 2

    @property
    def top(self) -> tuple[float, float]:
        return self.x + self.w / 2, self.y + self.h

    @property
    def bottom(self) -> tuple[float, float]:
        return self.x + self.w / 2, self.y


def canvas(width: float, height: float) -> tuple[Figure, Axes]:
    """A figure of ``width`` × ``height`` inches whose data coordinates are inches, axes hidden."""
    for name, value in (("width", width), ("height", height)):
        if not isinstance(value, (int, float)) or not 0 < value <= 20:
            raise ValueError(f"{name} must be a number of inches in (0, 20], got {value!r}")
    fig = Figure(figsize=(width, height))
    ax = fig.add_axes((0, 0, 1, 1))
    ax.set_xlim(0, width)
    ax.set_ylim(0, height)
    ax.set_aspect("equal")
    ax.axis("off")
    return fig, ax


def _fill(kind: str) -> str:
    if kind not in PALETTE:
        raise ValueError(f"kind must be one of {sorted(PALETTE)}, got {kind!r}")
    return PALETTE[kind]


def box(ax: Axes, x: float, y: float, w: float, h: float, text: str = "", kind: str = "model",
        *, fontsize: float = 9, mono: bool = False, rounded: bool = True,
        dashed: bool = False, color: str = "black") -> Box:
    """Draw a filled box with centred ``text`` (matplotlib mathtext allowed) and return it."""
    style = "round,pad=0,rounding_size=0.06" if rounded else "square,pad=0"
    ax.add_patch(FancyBboxPatch((x, y), w, h, boxstyle=style, facecolor=_fill(kind),
                                edgecolor=EDGE, linewidth=0.9,
                                linestyle="--" if dashed else "-"))
    if text:
        ax.text(x + w / 2, y + h / 2, text, ha="center", va="center", fontsize=fontsize,
                family="monospace" if mono else "sans-serif", color=color)
    return Box(x, y, w, h)


def arrow(ax: Axes, start: Sequence[float], end: Sequence[float], text: str = "", *,
          bend: float = 0.0, dashed: bool = False, color: str = EDGE, fontsize: float = 8,
          text_at: Sequence[float] | None = None, width: float = 1.0) -> None:
    """An arrow from ``start`` to ``end`` (inches), curved by ``bend`` (0 = straight), with an
    optional label at ``text_at`` (default: just above the arrow's midpoint)."""
    ax.add_patch(FancyArrowPatch(tuple(start), tuple(end), arrowstyle="-|>", mutation_scale=10,
                                 connectionstyle=f"arc3,rad={bend}", color=color,
                                 linewidth=width, linestyle="--" if dashed else "-",
                                 shrinkA=1, shrinkB=1))
    if text:
        if text_at is None:
            text_at = ((start[0] + end[0]) / 2, (start[1] + end[1]) / 2 + 0.12)
        ax.text(*text_at, text, ha="center", va="bottom", fontsize=fontsize, color=color)


def note(ax: Axes, x: float, y: float, text: str, *, fontsize: float = 8, color: str = MUTED,
         ha: str = "center", va: str = "center", mono: bool = False, **kwargs) -> None:
    """Free text on the canvas (secondary by default: grey)."""
    ax.text(x, y, text, fontsize=fontsize, color=color, ha=ha, va=va,
            family="monospace" if mono else "sans-serif", **kwargs)


def to_svg(fig: Figure) -> str:
    """The figure as SVG text: glyphs as paths (no fonts needed), no date, stable ids."""
    if not isinstance(fig, Figure):
        raise TypeError(f"fig must be a matplotlib Figure, got {type(fig).__name__}")
    buffer = io.StringIO()
    with rc_context({"svg.fonttype": "path", "svg.hashsalt": "aigc-diagram"}):
        fig.savefig(buffer, format="svg", metadata={"Date": None}, bbox_inches="tight",
                    pad_inches=0.05)
    return buffer.getvalue()


def show(fig: Figure) -> None:
    """Display ``fig`` as an SVG cell output (the book marks that output as a diagram)."""
    from IPython.display import SVG, display

    display(SVG(to_svg(fig)))
