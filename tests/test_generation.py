"""Generation with a KV cache, batched with left padding, and the sampling rules (chapter 11):
equal to the uncached path and to Hugging Face, the cache's bytes equal to its formula, top-p
keeping the smallest nucleus, and FLOPs equal to PyTorch's counter."""
import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode
from transformers import GPT2Config, GPT2LMHeadModel

from aigc_lib.models import gpt

pytestmark = pytest.mark.usefixtures("one_thread")


def tiny(seed=0, attention="sdpa", block_size=24, **kwargs):
    """A small GPT with random biases and LayerNorm gains, so every weight matters."""
    torch.manual_seed(seed)
    config = dict(vocab_size=41, block_size=block_size, n_layer=2, n_head=4, n_embd=16)
    model = gpt.GPT(gpt.GPTConfig(**{**config, **kwargs}, attention=attention)).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("bias") or ".ln_" in name:
                p.normal_(0, 0.5)
    return model


@pytest.mark.parametrize("attention", gpt.ATTENTION_PATHS)
def test_cached_logits_equal_the_full_forward_pass(attention):
    model = tiny(attention=attention)
    ids = torch.randint(0, 41, (3, 20))
    with torch.no_grad():
        full = model(ids)
        cache = gpt.KVCache(model.config, batch_size=3, capacity=20)
        pieces = [model(ids[:, :5], cache=cache)]          # a prompt of 5, then 2, then 1s
        pieces.append(model(ids[:, 5:7], cache=cache))
        pieces += [model(ids[:, t:t + 1], cache=cache) for t in range(7, 20)]
    torch.testing.assert_close(torch.cat(pieces, dim=1), full, atol=1e-5, rtol=0)
    assert cache.length == 20


@pytest.mark.parametrize("attention", gpt.ATTENTION_PATHS)
def test_generate_with_cache_equals_without_token_for_token(attention):
    model = tiny(attention=attention, block_size=12)
    prompt = torch.randint(0, 41, (2, 4))
    for n in (1, 8, 20):          # 20 new tokens run past block_size: the window slides
        cached = model.generate(prompt, n, temperature=0.0, use_cache=True)
        plain = model.generate(prompt, n, temperature=0.0, use_cache=False)
        assert torch.equal(cached, plain) and cached.shape == (2, 4 + n)
    g1, g2 = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    sampled = model.generate(prompt, 10, temperature=1.0, top_p=0.9, generator=g1)
    assert torch.equal(sampled, model.generate(prompt, 10, temperature=1.0, top_p=0.9,
                                               generator=g2, use_cache=False))


def test_generate_with_cache_equals_hugging_face_greedy():
    model = tiny(block_size=32)
    hf = gpt.to_hf(model, bos_token_id=0, eos_token_id=0)
    prompt = torch.randint(1, 41, (1, 5))
    ours = model.generate(prompt, 12, temperature=0.0)
    theirs = hf.generate(prompt, max_new_tokens=12, do_sample=False, pad_token_id=0,
                         eos_token_id=None, attention_mask=torch.ones_like(prompt))
    assert torch.equal(ours, theirs)


@pytest.mark.parametrize("dtype, size", [(torch.float32, 4), (torch.bfloat16, 2)])
def test_cache_bytes_equal_the_formula(dtype, size):
    model = tiny().to(dtype)
    cache = gpt.KVCache(model.config, batch_size=3, capacity=17)
    assert cache.nbytes == 0                              # allocated at the first update
    with torch.no_grad():
        model(torch.randint(0, 41, (3, 6)), cache=cache)
    config = model.config
    expected = 2 * config.n_layer * config.n_head * config.head_dim * 17 * 3 * size
    assert cache.nbytes == expected == gpt.kv_cache_bytes(config, 17, 3, size)
    assert all(k.dtype == dtype for k in cache.keys)


def test_cache_crop_rolls_back_and_overflow_is_refused():
    model = tiny()
    ids = torch.randint(0, 41, (1, 10))
    cache = gpt.KVCache(model.config, 1, 10)
    with torch.no_grad():
        model(ids[:, :8], cache=cache)
        cache.crop(5)                                    # forget tokens 5..7
        again = model(ids[:, 5:10], cache=cache)[:, -1]
        torch.testing.assert_close(again, model(ids)[:, -1], atol=1e-5, rtol=0)
        with pytest.raises(ValueError, match="do not fit"):
            model(ids[:, :1], cache=cache)
    with pytest.raises(ValueError, match="length"):
        cache.crop(11)
    with pytest.raises(ValueError, match="capacity"):
        gpt.KVCache(model.config, 1, model.config.block_size + 1)
    with pytest.raises(TypeError, match="cache must be a KVCache"):
        model(ids, cache={})


def test_left_padded_batch_equals_each_row_alone():
    model = tiny(block_size=30)
    rows = [torch.randint(1, 41, (n,)) for n in (3, 7, 5)]
    ids, mask = gpt.left_pad(rows, pad_id=0)
    assert ids.shape == (3, 7) and mask.tolist()[0] == [0, 0, 0, 0, 1, 1, 1]
    with torch.no_grad():
        batched = model(ids, attention_mask=mask)
        for b, row in enumerate(rows):
            alone = model(row[None])
            torch.testing.assert_close(batched[b, -len(row):], alone[0], atol=1e-5, rtol=0)
    for use_cache in (True, False):
        out = model.generate(ids, 10, temperature=0.0, attention_mask=mask, use_cache=use_cache)
        for b, row in enumerate(rows):
            alone = model.generate(row[None], 10, temperature=0.0)
            assert torch.equal(out[b, ids.shape[1]:], alone[0, len(row):])


def test_left_padding_equals_hugging_face_with_an_attention_mask():
    model = tiny(block_size=32)
    hf = gpt.to_hf(model, bos_token_id=0, eos_token_id=0)
    ids, mask = gpt.left_pad([[5, 6, 7, 8, 9], [11, 12]], pad_id=0)
    theirs = hf.generate(ids, attention_mask=mask, max_new_tokens=8, do_sample=False,
                         pad_token_id=0, eos_token_id=None)
    assert torch.equal(model.generate(ids, 8, temperature=0.0, attention_mask=mask), theirs)


def brute_force_nucleus(p, top_p):
    """The smallest set of tokens whose mass reaches top_p, by trying every set size."""
    order = p.argsort(descending=True)
    for size in range(1, len(p) + 1):
        if p[order[:size]].sum() >= top_p:
            return set(order[:size].tolist())


def test_top_p_keeps_the_smallest_set_reaching_p():
    torch.manual_seed(0)
    for _ in range(50):
        logits = torch.randn(1, 12) * 2
        p = torch.softmax(logits.double(), -1)[0]
        for top_p in (0.3, 0.5, 0.77, 0.95):
            kept = gpt.next_token_probs(logits.double(), 1.0, top_p=top_p)[0]
            assert set(torch.nonzero(kept).flatten().tolist()) == brute_force_nucleus(p, top_p)
            torch.testing.assert_close(kept[kept > 0], p[kept > 0] / p[kept > 0].sum())
    probs = torch.tensor([[0.5, 0.3, 0.15, 0.05]]).log()
    assert (gpt.next_token_probs(probs, 1.0, top_p=0.79) > 0).sum() == 2
    assert (gpt.next_token_probs(probs, 1.0, top_p=0.81) > 0).sum() == 3


def test_top_p_one_is_plain_sampling_and_top_k_one_is_greedy():
    torch.manual_seed(1)
    logits = torch.randn(4000, 6)
    g1, g2 = torch.Generator().manual_seed(7), torch.Generator().manual_seed(7)
    plain = gpt.sample_next_token(logits, 0.8, generator=g1)
    assert torch.equal(gpt.sample_next_token(logits, 0.8, generator=g2, top_p=1.0), plain)
    torch.testing.assert_close(gpt.next_token_probs(logits, 0.8, top_p=1.0),
                               torch.softmax(logits / 0.8, -1))
    row = torch.tensor([[1.0, 0.2, -0.5, 0.7]])
    draws = gpt.sample_next_token(row.expand(20000, 4), 1.0, generator=g1).flatten()
    freq = torch.bincount(draws, minlength=4).float() / 20000
    torch.testing.assert_close(freq, torch.softmax(row[0], -1), atol=0.015, rtol=0)
    for tau in (0.5, 1.0, 2.0):
        top1 = gpt.sample_next_token(logits, tau, top_k=1, generator=g1)
        assert torch.equal(top1, logits.argmax(-1, keepdim=True))
    assert torch.equal(gpt.sample_next_token(logits, 0.0), logits.argmax(-1, keepdim=True))


@pytest.mark.parametrize("past, tokens", [(0, 9), (9, 1), (4, 3), (15, 1)])
def test_forward_flops_equal_pytorchs_counter(past, tokens):
    model = tiny(attention="math")                     # attention by matmuls: counted too
    cache = gpt.KVCache(model.config, 1, past + tokens)
    with torch.no_grad():
        if past:
            model(torch.randint(0, 41, (1, past)), cache=cache)
        with FlopCounterMode(display=False) as counter:
            model(torch.randint(0, 41, (1, tokens)), cache=cache)
    assert counter.get_total_flops() == gpt.forward_flops(model.config, tokens, past)
    assert gpt.forward_flops(model.config, 1, past) == \
        gpt.flops_per_token(model.config, past + 1, training=False)


def test_generation_flops_match_their_closed_forms():
    # from a one-token prompt: cached, 2Nn + 2Ld n(n+1) (linear in n but for the attention);
    # uncached, N n(n+1) + 4Ld n(n+1)(2n+1)/6 (quadratic, and cubic in attention)
    config = gpt.GPTConfig(vocab_size=100, block_size=256, n_layer=2, n_head=2, n_embd=32)
    N, L, d = 12 * 2 * 32 * 32 + 100 * 32, 2, 32
    for n in (1, 2, 64, 256):
        assert gpt.generation_flops(config, 1, n) == 2 * N * n + 2 * L * d * n * (n + 1)
        assert gpt.generation_flops(config, 1, n, use_cache=False) == \
            N * n * (n + 1) + 4 * L * d * n * (n + 1) * (2 * n + 1) // 6
    assert gpt.generation_flops(config, 5, 1) == gpt.generation_flops(config, 5, 1, False)


@pytest.mark.parametrize("call, error, words", [
    (lambda m: m.generate(torch.zeros(1, 0).long(), 3), ValueError, "at least one token"),
    (lambda m: m.generate(torch.zeros(2, 3).long(), 3, attention_mask=torch.ones(2, 4)),
     ValueError, "shape of idx"),
    (lambda m: m.generate(torch.zeros(1, 3).long(), 3, attention_mask=torch.tensor([[1, 0, 1]])),
     ValueError, "left padding"),
    (lambda m: m.generate(torch.zeros(1, 3).long(), 3, attention_mask=torch.full((1, 3), 2)),
     ValueError, "only 0"),
    (lambda m: m.generate(torch.zeros(1, 3).long(), 3, use_cache="yes"), TypeError, "use_cache"),
    (lambda m: gpt.next_token_probs(torch.zeros(1, 4), top_p=1.5), ValueError, "top_p"),
    (lambda m: gpt.next_token_probs(torch.zeros(1, 4), top_p=0), ValueError, "top_p"),
    (lambda m: gpt.left_pad([]), TypeError, "non-empty"),
    (lambda m: gpt.left_pad([[1], []]), ValueError, "at least one token"),
    (lambda m: gpt.kv_cache_bytes(m.config, -1), ValueError, "tokens"),
    (lambda m: m(torch.zeros(1, 3).long(), attention_mask=torch.ones(1, 4)), ValueError,
     "attention_mask must have shape"),
    (lambda m: gpt.generation_flops(m.config, 20, 10), ValueError, "block_size"),
])
def test_bad_generation_input_is_rejected(call, error, words):
    with pytest.raises(error, match=words):
        call(tiny())
