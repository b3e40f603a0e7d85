"""Chapter 7's text pieces: the corpus split, tokenizers, token windows, the Kneser–Ney n-gram
model, bits per byte and the compression baselines."""
import bz2
import lzma
import math
import zlib

import pytest
import torch

from aigc_lib import data, metrics
from aigc_lib.models.ngram import KneserNey


def test_python_docs_split_is_fixed_and_disjoint():
    train, test, everything = data.python_docs("train"), data.python_docs("test"), data.python_docs("all")
    assert train + test == everything
    assert len(test) == len(everything) - int(0.9 * len(everything))
    assert data.python_docs("fit") + data.python_docs("val") == train
    assert abs(len(data.python_docs("val")) - len(test)) <= 1
    with pytest.raises(ValueError, match="split must be one of"):
        data.python_docs("dev")


def test_bpe_is_lossless_deterministic_and_byte_level_at_257():
    text = data.python_docs("train")[:60_000]
    tok = data.train_bpe(text, 400)
    assert tok.get_vocab_size() == 400 and tok.token_to_id(data.END_OF_TEXT) == 0
    sample = "déjà vu — naïve “quotes” and 🐍 bytes never seen in training\n\tdef f(): pass"
    assert tok.decode(tok.encode(sample).ids) == sample
    assert tok.encode(text[:5000]).ids == data.train_bpe(text, 400).encode(text[:5000]).ids
    byte = data.train_bpe(text, 257)
    ids = byte.encode(sample).ids
    assert len(ids) == len(sample.encode()) and byte.decode(ids) == sample
    assert len(tok.encode(text).ids) < 0.6 * len(text.encode())       # merges shorten the text
    encoded = data.encode(tok, "def f")
    assert encoded.dtype == torch.int64 and encoded[0].item() == 0
    assert data.encode(tok, "def f", add_end_of_text=False).tolist() == encoded[1:].tolist()


@pytest.mark.parametrize("call, error, words", [
    (lambda: data.train_bpe("abc", 100), ValueError, "vocab_size must be >= 257"),
    (lambda: data.train_bpe([1, 2], 300), TypeError, "texts must be"),
    (lambda: data.train_bpe("abc", 300.0), TypeError, "vocab_size must be an int"),
    (lambda: data.token_windows(torch.arange(5), 6), ValueError, "fewer than one window"),
    (lambda: data.token_windows(torch.arange(5).view(1, 5), 2), ValueError, "ids must have 1"),
    (lambda: data.encode(data.train_bpe("abc", 257), b"abc"), TypeError, "text must be a str"),
])
def test_text_data_bad_input(call, error, words):
    with pytest.raises(error, match=words):
        call()


def test_token_windows_are_a_view_of_every_offset():
    ids = torch.arange(10)
    w = data.token_windows(ids, 4)
    assert w.shape == (7, 4) and w.data_ptr() == ids.data_ptr()
    assert w[3].tolist() == [3, 4, 5, 6]
    assert data.token_windows(ids, 4, stride=3).tolist() == [[0, 1, 2, 3], [3, 4, 5, 6], [6, 7, 8, 9]]


def brute_force_kn(train, order, V, history, w):
    """Interpolated Kneser–Ney written from the definition, on tuples (slow, for the test)."""
    grams = [dict() for _ in range(order + 1)]
    for k in range(1, order + 1):
        for i in range(len(train) - k + 1):
            g = tuple(train[i:i + k])
            grams[k][g] = grams[k].get(g, 0) + 1

    def count(g, top):
        if top:
            return grams[len(g)].get(g, 0)
        return len({v for (v, *rest) in grams[len(g) + 1] if tuple(rest) == g})

    def p(h, top):
        if h is None:
            return 1 / V
        lower = p(h[1:] if h else None, False)
        c_h = sum(count(h + (x,), top) for x in range(V))
        if c_h == 0:
            return lower
        seen = sum(1 for x in range(V) if count(h + (x,), top) > 0)
        table = [count(g, top) for g in grams[len(h) + 1]] if top else \
            [count(g, False) for g in grams[len(h) + 1]]
        n1, n2 = table.count(1), table.count(2)
        D = min(max(n1 / (n1 + 2 * n2), 1e-3), 0.999) if n1 + n2 else 0.5   # as documented
        return (max(count(h + (w,), top) - D, 0) + D * seen * lower) / c_h

    return p(tuple(history[-(order - 1):]) if order > 1 else (), True)


def test_kneser_ney_equals_the_definition_and_normalises():
    g = torch.Generator().manual_seed(0)
    train = torch.randint(0, 5, (300,), generator=g).tolist()
    lm = KneserNey(order=3, vocab_size=5).fit(train)
    for history in ([1, 2], [4, 4], [0, 3]):
        probs = [lm.prob(history, w) for w in range(5)]
        assert sum(probs) == pytest.approx(1.0, abs=1e-12)
        for w in range(5):
            assert probs[w] == pytest.approx(brute_force_kn(train, 3, 5, history, w), rel=1e-12)
    for order in (1, 2):
        assert sum(lm.prob([2, 1], w, order=order) for w in range(5)) == pytest.approx(1.0)


def test_kneser_ney_nll_is_a_sum_of_conditionals_and_improves_with_order():
    text = data.python_docs("train")[:40_000].encode()
    lm = KneserNey(order=4, vocab_size=256).fit(text)
    held = data.python_docs("test")[:3000].encode()
    nlls = [lm.nll(held, order=n) for n in (1, 2, 3, 4)]
    assert nlls[0] > nlls[1] > nlls[2] > nlls[3]
    direct = -sum(math.log(lm.prob(held[max(0, t - 3):t], held[t])) for t in range(200))
    assert lm.nll(held[:200]) == pytest.approx(direct, rel=1e-12)
    assert lm.nll_by_order(held) == pytest.approx({n: lm.nll(held, order=n) for n in range(1, 5)},
                                                  rel=1e-12)
    assert list(lm.nll_by_order(held[:50], orders=[3])) == [3]
    # two bytes per symbol for token ids above 255
    tokens = KneserNey(order=2, vocab_size=1000).fit([999, 3, 999, 3, 512])
    assert tokens.prob([999], 3) > 0.5 and sum(tokens.prob([3], w) for w in range(1000)) == \
        pytest.approx(1.0)
    seq = [999, 3, 512, 7, 3, 999]
    assert tokens.nll_by_order(seq) == pytest.approx({n: tokens.nll(seq, order=n) for n in (1, 2)})


@pytest.mark.parametrize("call, error, words", [
    (lambda: KneserNey(0, 256), ValueError, "order must be > 0"),
    (lambda: KneserNey(2, 70000), ValueError, "vocab_size must be <= 65536"),
    (lambda: KneserNey(2, 10).fit([1, 2, 30]), ValueError, r"ids must hold symbols in \[0, 10\)"),
    (lambda: KneserNey(2, 10).fit("abc"), TypeError, "ids must be a sequence of ints"),
    (lambda: KneserNey(5, 10).fit([1, 2]), ValueError, "at least order=5"),
    (lambda: KneserNey(2, 10).nll([1, 2]), RuntimeError, "call fit"),
    (lambda: KneserNey(2, 10).fit([1, 2, 3]).nll([1], order=3), ValueError, "order must be"),
    (lambda: KneserNey(2, 10).fit([1, 2, 3]).nll_by_order([1], [1, 3]), ValueError, "order must"),
    (lambda: KneserNey(2, 10).fit([1, 2, 3]).nll_by_order([1], []), ValueError, "orders must"),
])
def test_kneser_ney_bad_input(call, error, words):
    with pytest.raises(error, match=words):
        call()


def test_bits_per_byte():
    assert metrics.bits_per_byte(8 * math.log(2), 8) == pytest.approx(1.0)
    for bad, error in ((-1.0, ValueError), (float("nan"), ValueError), ("1", TypeError)):
        with pytest.raises(error, match="total_nll_nats"):
            metrics.bits_per_byte(bad, 10)
    with pytest.raises(ValueError, match="n_bytes must be > 0"):
        metrics.bits_per_byte(1.0, 0)


def test_compression_bits_per_byte_uses_the_context():
    train, test = data.python_docs("train")[-200_000:], data.python_docs("test")[:20_000]
    for method, compress in (("gzip", lambda b: zlib.compress(b, 9)),
                             ("bz2", lambda b: bz2.compress(b, 9)),
                             ("xz", lambda b: lzma.compress(b, preset=9 | lzma.PRESET_EXTREME))):
        alone = metrics.compression_bits_per_byte(test, method)
        assert alone == pytest.approx(8 * len(compress(test.encode())) / len(test.encode()))
        given = metrics.compression_bits_per_byte(test, method, context=train)
        assert given < alone
    # a repeat of the context costs almost nothing to an LZ77 compressor
    assert metrics.compression_bits_per_byte(test[:5000], "xz", context=test[:5000]) < 0.2
    with pytest.raises(ValueError, match="method must be one of"):
        metrics.compression_bits_per_byte(test, "zip")
    with pytest.raises(ValueError, match="test must not be empty"):
        metrics.compression_bits_per_byte("", "gzip")
