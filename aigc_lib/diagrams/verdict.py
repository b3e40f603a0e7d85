"""Diagrams of chapter 12: how the chapters' measurements flow into the verdict (quality and
cost measured, priced, compared with the alternative), and the questions a technique must
pass before it is called gold."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from matplotlib.figure import Figure

from aigc_lib.diagrams.core import ACCENT, EDGE, MUTED, arrow, box, canvas, note
from aigc_lib.results import Comparison


def decision_flow(records: Mapping[str, Sequence[Comparison]]) -> Figure:
    r"""The cost–benefit flow of the verdict, with the counts of ``records`` (chapter name →
    its :class:`aigc_lib.results.Comparison` list, as :func:`aigc_lib.results.load_all` gives
    them): measured quality (how many comparisons, how many with an interval whose lower end
    is a gain) and measured cost (how many carry training, how many inference seconds) are priced
    (people, machine time, mistakes), compared with the alternative at a monthly volume
    (break-even), and only then decided (chapter 12)."""
    if not isinstance(records, Mapping) or not records:
        raise ValueError("records must map at least one chapter to its comparisons")
    comparisons = [c for cs in records.values() for c in cs]
    if not all(isinstance(c, Comparison) for c in comparisons):
        raise TypeError("records must hold results.Comparison objects")
    n = len(comparisons)
    supported = sum(bool(c.beats_baseline_surely) for c in comparisons)
    with_interval = sum(c.difference_interval is not None for c in comparisons)
    trained = sum(c.train_seconds is not None for c in comparisons)
    served = sum(c.inference_seconds is not None for c in comparisons)
    fig, ax = canvas(9.4, 3.3)
    quality = box(ax, 0.05, 1.85, 2.2, 1.05, f"measured quality\n{n} comparisons from "
                  f"{len(records)} chapters\n{with_interval} with an interval, "
                  f"{supported} whose\nwhole interval is a gain", kind="data", fontsize=7.5)
    cost = box(ax, 0.05, 0.45, 2.2, 1.05, f"measured cost\n{trained} of {n} with training "
               f"seconds,\n{served} with inference seconds;\nlabels, FLOPs, memory",
               kind="data", fontsize=7.5)
    price = box(ax, 2.7, 1.1, 1.75, 1.15, "priced\nmachine hours × price\npeople's time × "
                "wage\nmistakes × their cost", kind="plain", fontsize=7.5)
    compare = box(ax, 4.9, 1.1, 1.9, 1.15, "against the\nalternative\n(by hand, or the "
                  "baseline)\nat a monthly volume", kind="plain", fontsize=7.5)
    breakeven = box(ax, 7.2, 1.3, 1.0, 0.75, "break-even\nvolume", kind="loss",
                    fontsize=8)
    decision = box(ax, 8.45, 1.15, 0.9, 1.05, "decision\ngold /\nbubble /\nnot shown",
                   kind="learned", fontsize=7.5)
    arrow(ax, quality.right, (price.x, price.y + 0.85))
    arrow(ax, cost.right, (price.x, price.y + 0.3))
    for a, b in ((price, compare), (compare, breakeven), (breakeven, decision)):
        arrow(ax, a.right, b.left)
    note(ax, 5.8, 2.75, "a gain whose interval includes 0 is not a gain: it enters as "
         "'not shown'", fontsize=7.5, color=ACCENT)
    note(ax, 5.8, 0.55, "every number comes from a chapter's record; the prices are the "
         "reader's to change", fontsize=7.5, color=MUTED)
    return fig


def verdict_questions() -> Figure:
    """The questions a technique must pass, in order, before the book calls it gold: is the gain
    measured against a plain baseline, is its interval clear of zero, does it matter at the
    task's scale, and does it pay at the volume the use case has (chapter 12)."""
    fig, ax = canvas(9.0, 2.5)
    questions = ["measured against\na plain baseline?", "interval of the\ngain clear of 0?",
                 "large enough to\nmatter for the task?", "pays at the use\ncase's volume?"]
    fails = ["not measured", "not shown", "real but small", "bubble here"]
    x = 0.05
    boxes = []
    for q, fail in zip(questions, fails):
        b = box(ax, x, 1.3, 1.65, 0.8, q, kind="plain", fontsize=8)
        arrow(ax, b.bottom, (b.center[0], 0.65), "no", color=MUTED,
              text_at=(b.center[0] + 0.15, 0.9))
        box(ax, x + 0.15, 0.2, 1.35, 0.45, fail, kind="frozen", fontsize=7.5)
        boxes.append(b)
        x += 2.0
    for a, b in zip(boxes[:-1], boxes[1:]):
        arrow(ax, a.right, b.left, "yes", color=EDGE)
    gold = box(ax, x, 1.35, 0.9, 0.7, "gold\n(here)", kind="learned", fontsize=8.5)
    arrow(ax, boxes[-1].right, gold.left, "yes", color=EDGE)
    note(ax, 4.5, 2.35, "a verdict is always about one use case, one scale and one "
         "price list", fontsize=8, color=ACCENT)
    return fig
