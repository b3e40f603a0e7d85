r"""A count-based n-gram language model with interpolated Kneser–Ney smoothing (chapter 7).

The baseline the pretrained GPT must beat. For a history :math:`h` of the last :math:`n-1`
symbols and :math:`h'` the same history without its oldest symbol,

.. math:: P_n(w \mid h) = \frac{\max(c(hw) - D_n,\,0)}{c(h\,\cdot)}
          + \frac{D_n\,N_{1+}(h\,\cdot)}{c(h\,\cdot)}\,P_{n-1}(w \mid h'),
          \qquad P_0(w) = 1/V,

where at the top order :math:`c` counts occurrences, and at every lower order it is the
*continuation count* :math:`N_{1+}(\cdot\,hw)`, the number of distinct symbols seen before
:math:`hw` (Kneser and Ney's idea: the lower order's share of the probability is largest where
the longer history is rare or followed by many different symbols, so it should model how many
contexts a symbol continues, not how often it occurs). The lower order is mixed in for every
symbol, seen after :math:`h` or not: interpolation, not backoff.
:math:`N_{1+}(h\,\cdot)` is the number of distinct symbols seen after :math:`h`, and
:math:`D_n = n_1/(n_1 + 2n_2)` from the numbers :math:`n_1, n_2` of n-grams counted once and twice
(clipped to :math:`[10^{-3}, 0.999]`; 0.5 when no n-gram is counted once or twice).
When :math:`c(h\,\cdot) = 0` the model backs off to :math:`P_{n-1}` entirely. Every
:math:`P_n(\cdot \mid h)` sums to one over the :math:`V` symbols (the tests check it), so
:math:`-\log_2 P` is an honest code length, comparable with a compressor's output.

Symbols are integers in ``[0, V)``: bytes (``V = 256``) or token ids. They are packed into byte
strings (one or two bytes per symbol) so that counting is done by Python's ``Counter`` on slices.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence
from operator import itemgetter

from aigc_lib import checks


class KneserNey:
    """Interpolated Kneser–Ney n-gram model of order up to ``order`` over ``vocab_size`` symbols.

    >>> lm = KneserNey(order=3, vocab_size=256).fit(b"abracadabra")
    >>> round(sum(lm.prob(b"ab", w) for w in range(256)), 12)
    1.0
    """

    def __init__(self, order: int, vocab_size: int):
        checks.positive_number("order", order, integer=True)
        checks.positive_number("vocab_size", vocab_size, integer=True)
        if vocab_size > 65536:
            raise ValueError(f"vocab_size must be <= 65536 (two bytes per symbol), got {vocab_size}")
        self.order, self.vocab_size = order, vocab_size
        self.width = 1 if vocab_size <= 256 else 2
        self.fitted = False

    def _pack(self, ids: Sequence[int] | bytes, name: str) -> bytes:
        if isinstance(ids, (bytes, bytearray)) and self.width == 1:
            return bytes(ids)
        if isinstance(ids, (str, bytes, bytearray)) or not isinstance(ids, Sequence):
            raise TypeError(f"{name} must be a sequence of ints (or bytes when vocab_size <= 256), "
                            f"got {type(ids).__name__}")
        ids = [int(i) for i in ids]
        if ids and (min(ids) < 0 or max(ids) >= self.vocab_size):
            raise ValueError(f"{name} must hold symbols in [0, {self.vocab_size}), got values in "
                             f"[{min(ids)}, {max(ids)}]")
        return b"".join(i.to_bytes(self.width, "big") for i in ids)

    def fit(self, ids: Sequence[int] | bytes) -> KneserNey:
        """Count the n-grams of ``ids`` (orders 1 to ``order``) and the continuation counts."""
        data, w = self._pack(ids, "ids"), self.width
        n = len(data) // w
        if n < self.order:
            raise ValueError(f"ids must hold at least order={self.order} symbols, got {n}")
        # raw[k]: counts of the (k+1)-grams (history of k symbols, then the next symbol)
        self.raw = [Counter(data[i * w:(i + k + 1) * w] for i in range(n - k))
                    for k in range(self.order)]
        # cont[k]: N1+(. h w) for (k+1)-grams hw: the distinct (k+2)-grams with that ending
        self.cont = [Counter(map(itemgetter(slice(w, None)), self.raw[k + 1]))
                     for k in range(self.order - 1)]
        # c(h .) of the raw counts: every occurrence of the k-gram h except at the very end
        raw_totals = [Counter({b"": n})]
        for k in range(1, self.order):
            totals = self.raw[k - 1].copy()
            totals[data[(n - k) * w:]] -= 1
            raw_totals.append(+totals)                   # + drops the zero entry
        # c(h .) of the continuation counts: the distinct (k+2)-grams with h in the middle
        cont_totals = [Counter(map(itemgetter(slice(w, -w)), self.raw[k + 1]))
                       for k in range(self.order - 1)]
        self._raw_stats = [self._history_stats(t, s) for t, s in zip(self.raw, raw_totals)]
        self._cont_stats = [self._history_stats(t, s) for t, s in zip(self.cont, cont_totals)]
        self.fitted = True
        return self

    def _history_stats(self, table: Counter, totals: Counter) -> tuple[Counter, Counter, float]:
        """Totals c(h .) (given), distinct followers N1+(h .) per history, and the discount D."""
        types = Counter(map(itemgetter(slice(None, -self.width)), table))
        of_counts = Counter(table.values())
        n1, n2 = of_counts[1], of_counts[2]
        discount = n1 / (n1 + 2 * n2) if n1 + n2 else 0.5
        return totals, types, min(max(discount, 1e-3), 0.999)

    def _tables(self, order: int) -> list[tuple[Counter, Counter, Counter, float]]:
        if not self.fitted:
            raise RuntimeError("call fit(ids) before scoring")
        if isinstance(order, bool) or not isinstance(order, int) or not 1 <= order <= self.order:
            raise ValueError(f"order must be an int in [1, {self.order}], got {order!r}")
        low = [(self.cont[k], *self._cont_stats[k]) for k in range(order - 1)]
        return low + [(self.raw[order - 1], *self._raw_stats[order - 1])]

    def _prob(self, tables, data: bytes, end: int, start: int) -> float:
        """P(symbol at data[end:end+w] | the symbols of data[start:end])."""
        w = self.width
        symbol = data[end:end + w]
        p = 1.0 / self.vocab_size
        for k, (table, totals, types, discount) in enumerate(tables):
            if end - k * w < start:
                break
            history = data[end - k * w:end]
            total = totals.get(history, 0)
            if total:
                p = (max(table.get(history + symbol, 0) - discount, 0.0)
                     + discount * types[history] * p) / total
        return p

    def prob(self, history: Sequence[int] | bytes, symbol: int, order: int | None = None) -> float:
        """:math:`P(\\text{symbol} \\mid \\text{history})` using the last ``order - 1`` symbols."""
        order = self.order if order is None else order
        tables = self._tables(order)
        checks.positive_number("symbol", symbol, integer=True, allow_zero=True)
        if symbol >= self.vocab_size:
            raise ValueError(f"symbol must be in [0, {self.vocab_size}), got {symbol}")
        data = self._pack(history, "history") + symbol.to_bytes(self.width, "big")
        end = len(data) - self.width
        return self._prob(tables, data, end, max(0, end - (order - 1) * self.width))

    def nll(self, ids: Sequence[int] | bytes, order: int | None = None) -> float:
        r"""Total negative log-likelihood in nats, :math:`-\sum_t \ln P(x_t \mid x_{t-n+1..t-1})`,
        of every symbol of ``ids`` (the first ones with the shorter history available)."""
        order = self.order if order is None else order
        tables = self._tables(order)
        data, w = self._pack(ids, "ids"), self.width
        total = 0.0
        for end in range(0, len(data), w):
            total -= math.log(self._prob(tables, data, end, max(0, end - (order - 1) * w)))
        return total

    def nll_by_order(self, ids: Sequence[int] | bytes,
                     orders: Sequence[int] | None = None) -> dict[int, float]:
        r""":meth:`nll` of ``ids`` for several orders at once (default: every order from 1 to
        ``order``), in one pass: the continuation-count levels below the top are shared by all
        orders, so scoring every order costs about as much as scoring the highest one. Equal to
        ``{n: self.nll(ids, order=n) for n in orders}`` (tested)."""
        orders = list(range(1, self.order + 1)) if orders is None else list(orders)
        if not orders:
            raise ValueError("orders must not be empty")
        for n in orders:
            self._tables(n)                         # validates n (and that fit was called)
        top, want = max(orders), set(orders)
        raw = [(self.raw[k], *self._raw_stats[k]) for k in range(top)]
        cont = [(self.cont[k], *self._cont_stats[k]) for k in range(top - 1)]
        data, w = self._pack(ids, "ids"), self.width
        totals = dict.fromkeys(orders, 0.0)
        for end in range(0, len(data), w):
            t, symbol = end // w, data[end:end + w]
            p = 1.0 / self.vocab_size     # the continuation-count chain below level k
            for k in range(min(t, top - 1) + 1):
                history = data[end - k * w:end]
                if k + 1 in want:         # order k + 1 ends with the raw counts of level k
                    table, count, types, discount = raw[k]
                    total = count.get(history, 0)
                    q = ((max(table.get(history + symbol, 0) - discount, 0.0)
                          + discount * types[history] * p) / total) if total else p
                    totals[k + 1] -= math.log(q)
                if k < top - 1:
                    table, count, types, discount = cont[k]
                    total = count.get(history, 0)
                    if total:
                        p = (max(table.get(history + symbol, 0) - discount, 0.0)
                             + discount * types[history] * p) / total
            for n in want:                # too short a history for order n's top level
                if n - 1 > t:
                    totals[n] -= math.log(p)
        return totals
