"""The Llama-style block equals Hugging Face's LlamaForCausalLM on tiny random configs (grouped
keys and values, tied and untied output layers, both attention paths), loads and exports its
weights, counts its parameters and FLOPs correctly, and RoPE is a rotation whose scores depend on
the offset only."""
import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode
from transformers import LlamaConfig as HFLlamaConfig
from transformers import LlamaForCausalLM

from aigc_lib import pretrained
from aigc_lib.gradcheck import check_gradients
from aigc_lib.models import gpt, llama

CONFIGS = [dict(vocab_size=61, hidden_size=16, intermediate_size=40, num_hidden_layers=2,
                num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=16),
           dict(vocab_size=37, hidden_size=24, intermediate_size=20, num_hidden_layers=3,
                num_attention_heads=6, num_key_value_heads=2, max_position_embeddings=9,
                tie_word_embeddings=False, rms_norm_eps=1e-6),
           dict(vocab_size=100, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                num_attention_heads=4, num_key_value_heads=1, max_position_embeddings=32,
                rope_parameters={"rope_type": "default", "rope_theta": 500.0})]


def tiny_hf(seed=0, **kwargs):
    torch.manual_seed(seed)
    model = LlamaForCausalLM(HFLlamaConfig(**{"tie_word_embeddings": True, **kwargs})).eval()
    with torch.no_grad():   # random RMSNorm gains too, so every weight matters
        for name, p in model.named_parameters():
            if "norm" in name:
                p.normal_(1.0, 0.5)
    return model


@pytest.mark.parametrize("kwargs", CONFIGS)
@pytest.mark.parametrize("path", llama.ATTENTION_PATHS)
def test_logits_equal_transformers_llama(kwargs, path):
    hf = tiny_hf(**kwargs)
    ours = llama.from_hf(hf, attention=path).eval()
    T = kwargs["max_position_embeddings"]
    idx = torch.randint(0, kwargs["vocab_size"], (3, T))
    with torch.no_grad():
        torch.testing.assert_close(ours(idx), hf(idx).logits, atol=1e-5, rtol=0)
        torch.testing.assert_close(ours(idx[:, :5]), hf(idx[:, :5]).logits, atol=1e-5, rtol=0)


def test_loads_a_saved_folder_and_exports_back(tmp_path):
    hf = tiny_hf(**CONFIGS[1])
    hf.save_pretrained(tmp_path)
    ours = llama.from_hf(str(tmp_path))
    back = llama.to_hf(ours)
    idx = torch.randint(0, 37, (2, 9))
    with torch.no_grad():
        torch.testing.assert_close(back(idx).logits, hf(idx).logits, atol=0, rtol=0)
    assert llama.config_from_hf(back.config) == ours.config
    tied = llama.to_hf(llama.from_hf(tiny_hf(**CONFIGS[0])))
    assert tied.lm_head.weight.data_ptr() == tied.model.embed_tokens.weight.data_ptr()


@pytest.mark.parametrize("option", [dict(attention_bias=True), dict(mlp_bias=True),
                                    dict(hidden_act="gelu"),
                                    dict(rope_parameters={"rope_type": "linear", "factor": 2.0,
                                                          "rope_theta": 10000.0})])
def test_unsupported_llama_variants_are_refused(option):
    with pytest.raises(ValueError, match=next(iter(option))):
        llama.config_from_hf(HFLlamaConfig(hidden_size=16, num_attention_heads=2,
                                           intermediate_size=8, num_hidden_layers=1, **option))


def test_lm_loss_equals_transformers_loss_and_the_model_is_causal():
    hf = tiny_hf(**CONFIGS[0])
    ours = llama.from_hf(hf)
    idx = torch.randint(0, 61, (4, 16))
    with torch.no_grad():
        torch.testing.assert_close(gpt.lm_loss(ours, idx), hf(idx, labels=idx).loss)
        changed = idx.clone()
        changed[:, 10:] = torch.randint(0, 61, (4, 6))
        assert torch.equal(ours(changed)[:, :10], ours(idx)[:, :10])


def test_rope_is_a_rotation_and_scores_depend_on_the_offset_only():
    torch.manual_seed(0)
    cos, sin = llama.rope_angles(40, 8, theta=100.0, dtype=torch.float64)
    x = torch.randn(40, 8, dtype=torch.float64)
    rotated = llama.apply_rope(x, cos, sin)
    torch.testing.assert_close(rotated.norm(dim=-1), x.norm(dim=-1))        # lengths kept
    q, k = torch.randn(8, dtype=torch.float64), torch.randn(8, dtype=torch.float64)
    scores = {}
    for p in range(30):
        for offset in (0, 3, 7):
            qr = llama.apply_rope(q.expand(40, 8), cos, sin)[p + offset]
            kr = llama.apply_rope(k.expand(40, 8), cos, sin)[p]
            scores.setdefault(offset, []).append(float(qr @ kr))
    for offset, values in scores.items():
        assert max(values) - min(values) < 1e-10, offset
    assert abs(scores[0][0] - float(q @ k)) < 1e-12                      # offset 0: no change
    assert len({round(v[0], 6) for v in scores.values()}) == 3          # offsets do matter


def test_parameter_and_flop_counts():
    for kwargs in CONFIGS:
        config = llama.config_from_hf(HFLlamaConfig(**{"tie_word_embeddings": True, **kwargs}),
                                      attention="math")
        model = llama.Llama(config)
        assert llama.count_parameters(config) == sum(p.numel() for p in model.parameters())
        embeddings = config.vocab_size * config.n_embd * (1 if config.tie_word_embeddings else 2)
        assert llama.count_parameters(config, embeddings=False) == \
            llama.count_parameters(config) - embeddings
        batch = torch.randint(0, config.vocab_size, (2, config.block_size + 1))
        with FlopCounterMode(display=False) as counter:
            gpt.lm_loss(model, batch).backward()
        per_token = counter.get_total_flops() / (2 * config.block_size)
        assert per_token == llama.flops_per_token(config)


def test_same_weight_budget_as_the_gpt2_block():
    """SwiGLU of width round(8d/3) and no biases: the Llama block holds as many weights as
    GPT-2's block to within 2 % (GPT-2's biases), and the two cost the same FLOPs per token
    to within 0.1 %, so they can be compared at equal compute."""
    for d, L, h in ((64, 2, 2), (128, 3, 4), (768, 12, 12)):
        g = gpt.GPTConfig(vocab_size=2048, block_size=128, n_layer=L, n_head=h, n_embd=d)
        m = llama.LlamaConfig(vocab_size=2048, block_size=128, n_layer=L, n_head=h, n_embd=d)
        assert abs(llama.flops_per_token(m) / gpt.flops_per_token(g) - 1) < 1e-3
        body_g, body_m = gpt.count_parameters(g, False), llama.count_parameters(m, False)
        assert abs(body_m / body_g - 1) < 0.02


def test_rms_norm_gradient_and_definition():
    norm = llama.RMSNorm(6, eps=1e-5).double()
    with torch.no_grad():
        norm.weight.normal_()
    x = torch.randn(3, 6, dtype=torch.float64)
    expected = norm.weight * x / torch.sqrt(x.pow(2).mean(-1, keepdim=True) + 1e-5)
    torch.testing.assert_close(norm(x), expected)
    report = check_gradients(lambda t: llama.RMSNorm(6, 1e-5).double()(t), x, names=["x"])
    assert report.passed


def test_pretrained_recipe_builds_either_block():
    r = pretrained.recipe("bpe", "cpu")
    a, b = pretrained.build_model(r, 300, "gpt2"), pretrained.build_model(r, 300, "llama")
    assert isinstance(a, gpt.GPT) and isinstance(b, llama.Llama)
    assert b.config.n_embd == a.config.n_embd and b.config.n_layer == a.config.n_layer
    with pytest.raises(ValueError, match="block must be one of"):
        pretrained.build_model(r, 300, "mamba")


def test_bad_input():
    with pytest.raises(ValueError, match="n_head"):
        llama.LlamaConfig(n_embd=16, n_head=3)
    with pytest.raises(ValueError, match="even"):
        llama.LlamaConfig(n_embd=12, n_head=4)            # heads of size 3
    with pytest.raises(ValueError, match="n_kv_head"):
        llama.LlamaConfig(n_embd=16, n_head=4, n_kv_head=3)
    with pytest.raises(ValueError, match="attention"):
        llama.LlamaConfig(n_embd=16, n_head=2, attention="flash")
    with pytest.raises(TypeError, match="config must be a LlamaConfig"):
        llama.Llama(gpt.GPTConfig())
    model = llama.Llama(llama.LlamaConfig(vocab_size=10, block_size=4, n_layer=1, n_head=2,
                                          n_embd=8))
    with pytest.raises(ValueError, match="block_size"):
        model(torch.zeros(1, 5, dtype=torch.long))
    with pytest.raises(TypeError, match="int64"):
        model(torch.zeros(1, 3))
    with pytest.raises(ValueError, match=r"token ids in \[0, 10\).*\[10, 11\]"):
        model(torch.tensor([[1, 10, 11]]))
    with pytest.raises(TypeError, match="LlamaForCausalLM"):
        llama.from_hf(gpt.GPT(gpt.GPTConfig(vocab_size=10, block_size=4, n_layer=1, n_head=1,
                                            n_embd=4)))
    with pytest.raises(ValueError, match="head_dim must be even"):
        llama.rope_angles(4, 3)
