"""Our GPT equals Hugging Face's GPT-2 on tiny random configs, loads and exports its weights,
counts its parameters and FLOPs correctly, passes gradient checks, and samples as documented."""
import math

import pytest
import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode
from transformers import GPT2Config, GPT2LMHeadModel

from aigc_lib import losses
from aigc_lib.gradcheck import check_gradients
from aigc_lib.models import gpt

CONFIGS = [dict(vocab_size=61, n_positions=16, n_embd=16, n_layer=2, n_head=4),
           dict(vocab_size=37, n_positions=9, n_embd=12, n_layer=3, n_head=1),
           dict(vocab_size=100, n_positions=32, n_embd=24, n_layer=1, n_head=6,
                layer_norm_epsilon=1e-6)]


def tiny_hf(seed=0, **kwargs):
    torch.manual_seed(seed)
    config = GPT2Config(resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, bos_token_id=0,
                        eos_token_id=0, **kwargs)
    model = GPT2LMHeadModel(config).eval()
    with torch.no_grad():   # random biases and LayerNorm gains too, so every weight matters
        for name, p in model.named_parameters():
            if name.endswith("bias") or ".ln_" in name:
                p.normal_(0, 0.5)
    return model


@pytest.mark.parametrize("kwargs", CONFIGS)
@pytest.mark.parametrize("path", gpt.ATTENTION_PATHS)
def test_logits_equal_transformers_gpt2(kwargs, path):
    hf = tiny_hf(**kwargs)
    ours = gpt.from_hf(hf, attention=path).eval()
    idx = torch.randint(0, kwargs["vocab_size"], (3, kwargs["n_positions"]))
    with torch.no_grad():
        torch.testing.assert_close(ours(idx), hf(idx).logits, atol=1e-5, rtol=0)
        torch.testing.assert_close(ours(idx[:, :5]), hf(idx[:, :5]).logits, atol=1e-5, rtol=0)


def test_loads_a_saved_checkpoint_folder_and_exports_back(tmp_path):
    """The code path that loads `gpt2` from the Hub, run on a local folder."""
    hf = tiny_hf(**CONFIGS[0])
    hf.save_pretrained(tmp_path)
    ours = gpt.from_hf(str(tmp_path))
    idx = torch.randint(0, 61, (2, 16))
    back = gpt.to_hf(ours, bos_token_id=0, eos_token_id=0)
    assert back.lm_head.weight.data_ptr() == back.transformer.wte.weight.data_ptr()  # tied
    with torch.no_grad():
        torch.testing.assert_close(ours(idx), hf(idx).logits, atol=1e-5, rtol=0)
        torch.testing.assert_close(back(idx).logits, hf(idx).logits, atol=0, rtol=0)
    assert gpt.config_from_hf(back.config) == ours.config


@pytest.mark.parametrize("option", [dict(activation_function="relu"), dict(n_inner=20),
                                    dict(scale_attn_by_inverse_layer_idx=True),
                                    dict(scale_attn_weights=False)])
def test_unsupported_gpt2_variants_are_refused(option):
    with pytest.raises(ValueError, match=next(iter(option))):
        gpt.config_from_hf(GPT2Config(n_embd=16, n_head=2, **option))


def test_lm_loss_equals_our_causal_loss_and_transformers_loss():
    hf = tiny_hf(**CONFIGS[0])
    ours = gpt.from_hf(hf)
    idx = torch.randint(0, 61, (4, 16))
    with torch.no_grad():
        hf_loss = hf(idx, labels=idx).loss
        torch.testing.assert_close(losses.causal_lm_loss(ours(idx), idx), hf_loss)
        torch.testing.assert_close(gpt.lm_loss(ours, idx), hf_loss)
        labels = idx.clone()
        labels[:, :6] = -100                                    # e.g. a prompt, not scored
        torch.testing.assert_close(losses.causal_lm_loss(ours(idx), labels),
                                   hf(idx, labels=labels).loss)


def test_causal_lm_loss_gradient_and_bad_input():
    logits, ids = torch.randn(2, 4, 5, dtype=torch.float64), torch.randint(0, 5, (2, 4))
    check_gradients(lambda z: losses.causal_lm_loss(z, ids), logits,
                    names=["logits"]).raise_if_failed()
    with pytest.raises(ValueError, match="input_ids must have shape"):
        losses.causal_lm_loss(logits, ids[:, :3])
    with pytest.raises(ValueError, match="at least 2 positions"):
        losses.causal_lm_loss(logits[:, :1], ids[:, :1])


def test_gradients_of_a_block_and_of_the_loss_pass_gradcheck():
    torch.manual_seed(0)
    model = gpt.GPT(gpt.GPTConfig(vocab_size=11, block_size=6, n_layer=1, n_head=2, n_embd=4,
                                  attention="math")).double()
    block = model.transformer.h[0]
    check_gradients(block, torch.randn(1, 3, 4, dtype=torch.float64),
                    names=["x"]).raise_if_failed()
    idx = torch.randint(0, 11, (2, 5))
    name = "transformer.h.0.attn.c_attn.weight"
    weight = dict(model.named_parameters())[name].detach()

    def loss_of(w):
        return gpt.lm_loss(lambda i: torch.func.functional_call(model, {name: w}, (i,)), idx)

    check_gradients(loss_of, weight, names=[name]).raise_if_failed()


def test_parameter_count_formula_equals_counting():
    for kwargs in CONFIGS:
        config = gpt.config_from_hf(tiny_hf(**kwargs).config)
        model = gpt.GPT(config)
        assert gpt.count_parameters(config) == sum(p.numel() for p in model.parameters())
        embeddings = model.transformer.wte.weight.numel() + model.transformer.wpe.weight.numel()
        assert gpt.count_parameters(config, embeddings=False) == \
            sum(p.numel() for p in model.parameters()) - embeddings
    assert gpt.count_parameters(gpt.GPTConfig()) == 124_439_808   # GPT-2 small, as published


def test_flops_per_token_formula_equals_torch_flop_counter():
    config = gpt.GPTConfig(vocab_size=50, block_size=12, n_layer=2, n_head=2, n_embd=16,
                           attention="math")
    model = gpt.GPT(config)
    idx = torch.randint(0, 50, (3, 13))
    with FlopCounterMode(display=False) as counter:
        gpt.lm_loss(model, idx).backward()
    assert counter.get_total_flops() == gpt.flops_per_token(config, 12) * 3 * 12
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(idx[:, :12])
    assert counter.get_total_flops() == gpt.flops_per_token(config, 12, training=False) * 3 * 12


def test_sequence_nll_scores_every_token_once_with_the_documented_context():
    torch.manual_seed(0)
    model = gpt.GPT(gpt.GPTConfig(vocab_size=20, block_size=8, n_layer=1, n_head=2, n_embd=8))
    ids = torch.randint(0, 20, (30,))
    with torch.no_grad():
        logp = [F.log_softmax(model(ids[None, max(0, t - 8):t])[0, -1], -1)[ids[t]]
                for t in range(1, 30)]
    total, n = gpt.sequence_nll(model, ids, stride=1)     # stride 1: always the full context
    assert n == 29 and total == pytest.approx(-sum(logp).item(), rel=1e-5)
    for stride in (3, 4, 8):
        assert gpt.sequence_nll(model, ids, stride=stride)[1] == 29
    short_total, short_n = gpt.sequence_nll(model, ids[:6])
    assert short_n == 5 and short_total == pytest.approx(-sum(logp[:5]).item(), rel=1e-5)


def test_sampling_greedy_top_k_and_temperature():
    logits = torch.tensor([[2.0, 1.0, 0.5, -1.0, 0.0]])
    assert gpt.sample_next_token(logits, temperature=0).item() == 0
    g = torch.Generator().manual_seed(0)
    draws = torch.cat([gpt.sample_next_token(logits.expand(2000, 5), 1.0, 2, g)])
    assert set(draws.flatten().tolist()) == {0, 1}                   # only the two largest
    freq = torch.bincount(draws.flatten(), minlength=5)[:2].float() / 2000
    torch.testing.assert_close(freq, torch.softmax(logits[0, :2], -1), atol=0.04, rtol=0)
    hot = gpt.sample_next_token(logits.expand(4000, 5), 3.0, None, g).flatten()
    freq = torch.bincount(hot, minlength=5).float() / 4000
    torch.testing.assert_close(freq, torch.softmax(logits[0] / 3, -1), atol=0.03, rtol=0)


def test_generate_greedy_equals_repeated_argmax_and_top_k_1():
    torch.manual_seed(1)
    model = gpt.GPT(gpt.GPTConfig(vocab_size=30, block_size=6, n_layer=1, n_head=2, n_embd=8))
    start = torch.tensor([[3, 4]])
    out = model.generate(start, 9, temperature=0)
    expected = start
    with torch.no_grad():
        for _ in range(9):
            nxt = model(expected[:, -6:])[:, -1].argmax(-1, keepdim=True)
            expected = torch.cat([expected, nxt], 1)
    assert torch.equal(out, expected) and out.shape == (1, 11)
    g = torch.Generator().manual_seed(5)
    assert torch.equal(model.generate(start, 9, temperature=1.0, top_k=1, generator=g), out)


@pytest.mark.parametrize("call, error, words", [
    (lambda: gpt.GPTConfig(n_embd=10, n_head=3), ValueError, "divisible by n_head"),
    (lambda: gpt.GPTConfig(attention="flash"), ValueError, "attention must be one of"),
    (lambda: gpt.GPTConfig(dropout=1.0), ValueError, "dropout"),
    (lambda: gpt.GPTConfig(n_layer=0), ValueError, "n_layer must be > 0"),
    (lambda: gpt.GPT({"n_layer": 1}), TypeError, "config must be a GPTConfig"),
    (lambda: gpt.GPT(gpt.GPTConfig(10, 4, 1, 1, 4))(torch.zeros(1, 5).long()), ValueError,
     "block_size"),
    (lambda: gpt.GPT(gpt.GPTConfig(10, 4, 1, 1, 4))(torch.zeros(1, 3)), TypeError, "int64"),
    (lambda: gpt.GPT(gpt.GPTConfig(10, 4, 1, 1, 4))(torch.tensor([[1, 10]])), ValueError,
     r"token ids in \[0, 10\).*\[10\]"),
    (lambda: gpt.GPT(gpt.GPTConfig(10, 4, 1, 1, 4))(torch.tensor([[-1, 2]])), ValueError,
     r"token ids in \[0, 10\)"),
    (lambda: gpt.sample_next_token(torch.zeros(1, 4), temperature=-1), ValueError, "temperature"),
    (lambda: gpt.sample_next_token(torch.zeros(1, 4), top_k=0), ValueError, "top_k"),
    (lambda: gpt.lm_loss(gpt.GPT(gpt.GPTConfig(10, 4, 1, 1, 4)), torch.zeros(2, 1).long()),
     ValueError, "at least 2 positions"),
    (lambda: gpt.sequence_nll(gpt.GPT(gpt.GPTConfig(10, 4, 1, 1, 4)), torch.zeros(9).long(),
                              stride=5), ValueError, "stride"),
    (lambda: gpt.from_hf(42), TypeError, "source must be"),
    (lambda: gpt.hf_config(gpt.GPTConfig(10, 4, 1, 1, 4), eos_token_id=10), ValueError,
     "eos_token_id"),
    (lambda: gpt.flops_per_token(gpt.GPTConfig(), seq_len=0), ValueError, "seq_len"),
])
def test_bad_input_is_rejected(call, error, words):
    with pytest.raises(error, match=words):
        call()


def test_gpt2_small_flops_are_about_six_times_parameters():
    config = gpt.GPTConfig()
    n_mm = 12 * 12 * 768 ** 2 + 50257 * 768
    assert gpt.flops_per_token(config) == 6 * n_mm + 12 * 12 * 1024 * 768
    assert 6 * gpt.count_parameters(config) < gpt.flops_per_token(config) < 8 * gpt.count_parameters(config)
    assert math.isclose(gpt.flops_per_token(config, training=False) * 3, gpt.flops_per_token(config))
