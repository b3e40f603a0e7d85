"""Diagrams of chapter 11: what the KV cache stores (per layer, per token, with shapes from a
:class:`~aigc_lib.models.gpt.GPTConfig`), and how a request's machine time becomes money and
energy (:func:`aigc_lib.costs.per_thousand_requests`)."""

from __future__ import annotations

from matplotlib.figure import Figure
from matplotlib.patches import Rectangle

from aigc_lib import costs
from aigc_lib.diagrams.core import ACCENT, EDGE, MUTED, PALETTE, arrow, box, canvas, note
from aigc_lib.models import gpt


def _bytes(n: float) -> str:
    for unit, size in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= size:
            return f"{n / size:.3g} {unit}"
    return f"{n:.0f} B"


def kv_cache(config: gpt.GPTConfig, tokens: int, batch_size: int = 1,
             bytes_per_number: int = 4) -> Figure:
    r"""The KV cache of :class:`aigc_lib.models.gpt.KVCache` for ``tokens`` tokens: in each of
    the ``n_layer`` layers a key and a value tensor of shape ``(B, h, T, d_h)``; a new token
    appends one column to each and its query reads all of them. The total is
    :func:`aigc_lib.models.gpt.kv_cache_bytes`, :math:`2 L h d_h T B b` (chapter 11)."""
    if not isinstance(config, gpt.GPTConfig):
        raise TypeError(f"config must be a GPTConfig, got {type(config).__name__}")
    total = gpt.kv_cache_bytes(config, tokens, batch_size, bytes_per_number)
    L, H, dh, B = config.n_layer, config.n_head, config.head_dim, batch_size
    fig, ax = canvas(8.4, 3.4)
    shown = min(L, 3)
    cols = 10
    for i in range(shown):
        y = 2.35 - 0.95 * i
        layer = i + 1 if i < shown - 1 or L == shown else L
        note(ax, 0.05, y + 0.3, f"layer {layer}", ha="left", fontsize=8, color="black")
        for j, (name, kind) in enumerate((("K", "data"), ("V", "learned"))):
            x0 = 0.9 + j * 2.6
            for c in range(cols):
                last = c == cols - 1
                ax.add_patch(Rectangle((x0 + c * 0.2, y), 0.18, 0.6,
                                       facecolor=PALETTE["model" if last else kind],
                                       edgecolor=ACCENT if last else EDGE, lw=0.6))
            note(ax, x0 + cols * 0.1, y - 0.12, f"{name}: ({B}, {H}, {tokens}, {dh})",
                 fontsize=7.5, mono=True, color="black")
    if L > shown:
        more = L - shown
        note(ax, 0.05, 1.1, f"⋮ {more} more layer{'s' if more > 1 else ''}", ha="left",
             fontsize=7.5)
    q = box(ax, 6.2, 2.35, 1.9, 0.6, "new token's query\nreads all T keys, values",
            kind="model", fontsize=7.5)
    arrow(ax, q.left, (0.9 + 2.6 + cols * 0.2 + 0.05, 2.65), color=ACCENT)
    note(ax, 7.15, 1.75, "orange column: the token\njust generated, appended;\nnothing "
         "else is recomputed", fontsize=7.5, color=ACCENT)
    note(ax, 4.2, 0.1, f"2 (K, V) × {L} layers × {H} heads × {dh} × {tokens} tokens × "
         f"{B} × {bytes_per_number} bytes = {total:,} bytes ({_bytes(total)})",
         fontsize=8, color="black")
    return fig


def request_cost(seconds_per_request: float, device: costs.Device,
                 utilisation: float = 1.0) -> Figure:
    r"""From the machine time of one request to the money and energy of 1,000 requests on
    ``device``, with the numbers of :func:`aigc_lib.costs.per_thousand_requests`: seconds ×
    1,000 → device-hours (divided by ``utilisation``: idle hours are paid too) × price per
    hour → dollars; busy seconds × watts → kWh (chapter 11)."""
    cost = costs.per_thousand_requests(seconds_per_request, device, utilisation)
    fig, ax = canvas(9.2, 2.6)
    req = box(ax, 0.05, 1.0, 1.35, 0.8, f"one request\n{1000 * seconds_per_request:.3g} ms "
              "of\nmachine time", kind="data", fontsize=7.5)
    thousand = box(ax, 1.8, 1.0, 1.35, 0.8, f"× 1,000\n= {cost.seconds:.3g} s",
                   kind="plain", fontsize=8)
    hours = box(ax, 3.55, 1.55, 1.75, 0.8, f"÷ 3,600 ÷ utilisation {utilisation:g}\n"
                f"= {cost.seconds / 3600 / utilisation:.3g} device-hours", kind="plain",
                fontsize=7.5)
    dollars = box(ax, 5.75, 1.55, 1.75, 0.8, f"× ${device.price_per_hour:g} per hour",
                  kind="plain", fontsize=7.5)
    money = box(ax, 7.9, 1.55, 1.25, 0.8, f"${cost.dollars:.3g}\nper 1,000", kind="loss",
                fontsize=8.5)
    energy = box(ax, 3.55, 0.35, 3.95, 0.8, f"busy seconds × {device.watts:.3g} W ÷ 3.6 M "
                 "(idle power left out)", kind="plain", fontsize=7.5)
    kwh = box(ax, 7.9, 0.35, 1.25, 0.8, f"{1000 * cost.kwh:.3g} Wh\nper 1,000", kind="loss",
              fontsize=8.5)
    arrow(ax, req.right, thousand.left)
    arrow(ax, thousand.right, hours.left)
    arrow(ax, thousand.right, energy.left)
    arrow(ax, hours.right, dollars.left)
    arrow(ax, dollars.right, money.left)
    arrow(ax, energy.right, kwh.left)
    short = device.name if len(device.name) <= 70 else device.name[:69] + "…"
    note(ax, 4.6, 2.5, f"{short}; prices as of {device.as_of}", fontsize=7.5, color=EDGE)
    note(ax, 4.6, 0.1, "what the reader should change: the price, the utilisation, the "
         "device", fontsize=7.5, color=MUTED)
    return fig
