"""The conceptual diagrams of chapters 4–7 and 9–12 (aigc_lib.diagrams, round 2 of issue 19).

Each diagram is drawn from the objects its chapter uses (a model, a config, a schedule, a
tokenizer, measured values), so its numbers and shapes are checked here against those objects;
every figure is also checked to export as self-contained SVG (no font, no external resource)."""
import re
import sys
from pathlib import Path

import pytest
import torch
from matplotlib.figure import Figure

from aigc_lib import classifier, costs, data
from aigc_lib.diagrams import attention, core, diffusion, gan, pretraining, router, \
    token_costs, verdict
from aigc_lib.models import diffusion as dm
from aigc_lib.models.gan import Discriminator, Generator
from aigc_lib.models.gpt import GPTConfig, CausalSelfAttention, kv_cache_bytes
from aigc_lib.results import Comparison

sys.path.insert(0, str(Path(__file__).parent))
from test_diagrams import texts  # noqa: E402

CONFIG = GPTConfig(vocab_size=300, block_size=32, n_layer=3, n_head=4, n_embd=48)


def bert_config():
    from transformers import BertConfig
    return BertConfig(vocab_size=100, hidden_size=32, num_hidden_layers=2,
                      num_attention_heads=2, intermediate_size=64, max_position_embeddings=64)


@pytest.fixture(scope="module")
def tokenizer():
    return data.train_bpe(data.python_docs("train")[:60_000], 400)


def all_figures(tokenizer) -> list[Figure]:
    c = Comparison("a", "b", "acc", 0.9, 0.8, kind="score")
    return [gan.game_loop(Generator(2, 2), Discriminator(2)), gan.generator_losses(),
            diffusion.chains(dm.noise_schedule("cosine", 50), torch.zeros(4, 4), [0, 10, 50]),
            diffusion.parameterisations(dm.noise_schedule("cosine", 50), 20),
            diffusion.nfe_ladder(50, [1, 4]), attention.scaled_dot_product(CONFIG, 8),
            attention.multi_head(CONFIG, 8), attention.causal_mask(["a", "b"]),
            attention.transformer_block(CONFIG, 8), pretraining.bpe_merges(tokenizer, " the"),
            pretraining.bits_per_byte_scale({"x": 2.0}),
            router.pipeline(bert_config(), ["a", "b"], "hello", 16),
            router.adversarial_step(0.1), router.continual([["a"], ["b"]], 2, 1.0),
            token_costs.kv_cache(CONFIG, 8), token_costs.request_cost(0.1, costs.CPU_VM),
            verdict.decision_flow({"ch": [c]}), verdict.verdict_questions()]


def test_every_diagram_is_self_contained_svg(tokenizer):
    for fig in all_figures(tokenizer):
        svg = core.to_svg(fig)
        assert "<text" not in svg and "@font-face" not in svg, "text must be drawn as paths"
        assert not re.search(r"(href|src)=\"https?://", svg), "no external resource"


def test_gan_game_loop_reads_the_networks():
    drawn = texts(gan.game_loop(Generator(3, 5, hidden=16, layers=1),
                                Discriminator(5, hidden=24, layers=2, pack=2)))
    assert "MLP 3→16→5" in drawn and "MLP 10→24→24→1" in drawn and "(packs of 2)" in drawn
    assert r"I_{3}" in drawn and "5 numbers" in drawn
    with pytest.raises(ValueError, match="discriminator reads 4"):
        gan.game_loop(Generator(3, 5), Discriminator(4))
    with pytest.raises(TypeError, match="generator"):
        gan.game_loop(torch.nn.Linear(3, 5), Discriminator(5))


def test_generator_losses_show_the_saturation():
    ax = gan.generator_losses().axes[0]
    saturating, non_saturating = (line.get_ydata() for line in ax.lines)
    d = ax.lines[0].get_xdata()
    # near D = 0 the saturating loss is flat, the non-saturating one steep
    flat = abs(saturating[1] - saturating[0]) / (d[1] - d[0])
    steep = abs(non_saturating[1] - non_saturating[0]) / (d[1] - d[0])
    assert flat < 1.5 and steep > 50
    with pytest.raises(ValueError, match="logits"):
        gan.generator_losses(torch.zeros(2, 2))


def test_diffusion_chain_draws_q_sample():
    schedule = dm.noise_schedule("cosine", 100)
    image = torch.linspace(-1, 1, 16).reshape(4, 4)
    fig = diffusion.chains(schedule, image, [0, 30, 100], seed=3)
    noise = torch.randn(1, 16, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    pictures = fig.axes[0].images
    assert len(pictures) == 3
    for picture, t in zip(pictures, [0, 30, 100]):
        expected = dm.q_sample(schedule, image.double().flatten()[None], t, noise)
        assert torch.allclose(torch.as_tensor(picture.get_array()), expected.reshape(4, 4))
        assert f"ᾱ = {float(schedule.alpha_bars[t]):.3g}" in texts(fig)
    with pytest.raises(ValueError, match="steps"):
        diffusion.chains(schedule, image, [0, 200, 100])
    with pytest.raises(ValueError, match="image"):
        diffusion.chains(schedule, torch.zeros(3, 4), [0, 1, 2])


def test_parameterisation_geometry_matches_convert():
    schedule = dm.noise_schedule("linear", 200)
    t = 120
    a, s = schedule.alpha_bars[t].sqrt().item(), (1 - schedule.alpha_bars[t]).sqrt().item()
    drawn = texts(diffusion.parameterisations(schedule, t))
    assert f"cos φ = {a:.3f}" in drawn and f"sin φ = {s:.3f}" in drawn
    # the picture's claim: v is the x_t-circle's tangent, so convert gives v = a eps - s x0
    x0, eps = torch.randn(1, 3, dtype=torch.float64), torch.randn(1, 3, dtype=torch.float64)
    xt = dm.q_sample(schedule, x0, t, eps)
    assert torch.allclose(dm.convert(eps, "eps", "v", xt, schedule, t), a * eps - s * x0)
    with pytest.raises(ValueError, match="t must be"):
        diffusion.parameterisations(schedule, 0)


def test_nfe_ladder_has_one_dot_per_evaluation():
    fig = diffusion.nfe_ladder(100, [2, 5, 10])
    dots = [line for line in fig.axes[0].lines if line.get_marker() == "o"]
    assert [len(line.get_xdata()) for line in dots] == [2, 5, 10]
    with pytest.raises(ValueError, match="nfe"):
        diffusion.nfe_ladder(100, [200])


def test_attention_diagrams_show_the_configs_shapes():
    drawn = texts(attention.scaled_dot_product(CONFIG, 16))
    assert "16 × 12" in drawn and "16 × 16" in drawn and "48 / 4 = 12" in drawn
    drawn = texts(attention.multi_head(CONFIG, 16, batch=2))
    assert "(2, 16, 48)" in drawn and "48 → 144" in drawn and "(2, 4, 16, 12)" in drawn
    layer = CausalSelfAttention(CONFIG)
    assert f"c_attn {sum(p.numel() for p in layer.c_attn.parameters()):,}" in drawn
    assert f"c_proj {sum(p.numel() for p in layer.c_proj.parameters()):,}" in drawn
    drawn = texts(attention.transformer_block(CONFIG, 16))
    assert "MLP 48 → 192 → 48" in drawn and "× 3 blocks" in drawn and "48 → 300" in drawn
    with pytest.raises(ValueError, match="block_size"):
        attention.multi_head(CONFIG, 33)
    with pytest.raises(TypeError, match="config"):
        attention.transformer_block({"n_embd": 48}, 4)


def test_causal_mask_blocks_the_future_only():
    drawn = texts(attention.causal_mask(["a", "b", "c", "d"])).split("\n")
    assert drawn.count("−∞") == 4 * 3 // 2      # one per masked cell: above the diagonal
    # row by row, the masked cells are the later tokens: 3, 2, 1, 0 of them
    assert "\n".join(drawn[:10]) == "a\n−∞\n−∞\n−∞\nb\n−∞\n−∞\nc\n−∞\nd"
    with pytest.raises(ValueError, match="tokens"):
        attention.causal_mask([])


def test_bpe_replay_ends_in_the_tokenizers_encoding(tokenizer):
    for word in (" function", " the", "return", " lambda"):
        steps = pretraining.merge_steps(tokenizer, word)
        assert "".join(steps[0][0]) == "".join(steps[-1][0])
        assert steps[-1][0] == tokenizer.encode(word).tokens
        ranks = [r for _, r in steps[1:]]
        assert all(isinstance(r, int) for r in ranks)
    drawn = texts(pretraining.bpe_merges(tokenizer, " function"))
    final = tokenizer.encode(" function")
    assert f"{len(' function'.encode())} bytes → {len(final.ids)} token" in drawn
    assert f"ids {final.ids}" in drawn and "␣" in drawn
    assert drawn.count("Ġ") == 1, "tiles show the space as ␣; only the legend names Ġ"
    with pytest.raises(ValueError, match="word"):
        pretraining.merge_steps(tokenizer, "two words")


def test_bits_per_byte_scale_marks_the_values_given():
    drawn = texts(pretraining.bits_per_byte_scale({"bigram": 3.456, "GPT": 2.0}, "GPT"))
    assert "bigram: 3.46" in drawn and "GPT: 2.00" in drawn
    with pytest.raises(ValueError, match="highlight"):
        pretraining.bits_per_byte_scale({"GPT": 2.0}, "gzip")
    with pytest.raises(ValueError, match="values"):
        pretraining.bits_per_byte_scale({"GPT": -1.0})


def test_router_pipeline_counts_what_lora_trains():
    from transformers import BertModel
    config = bert_config()
    drawn = texts(router.pipeline(config, ["billing", "tech", "other"], "hello there", 16,
                                  r=4))
    assert "2 layers, 2 heads" in drawn and "32 → 3" in drawn and "≤ 16 ids" in drawn
    model = classifier.add_lora(classifier.SentenceClassifier(BertModel(config), 3), r=4)
    adapters = sum(p.numel() for n, p in model.named_parameters()
                   if p.requires_grad and "lora_" in n)
    per_matrix = int(re.search(r"= ([\d,]+) numbers per adapted", drawn)[1].replace(",", ""))
    per_layer = int(re.search(r"(\d+) per layer", drawn)[1])
    assert adapters == per_matrix * per_layer * config.num_hidden_layers
    with pytest.raises(TypeError, match="encoder_config"):
        router.pipeline({"hidden_size": 3}, ["a", "b"], "x", 8)


def test_production_diagrams_show_their_settings():
    drawn = texts(router.adversarial_step(0.2, weight=0.5))
    assert "ε = 0.2 of ‖E‖, 1 step (FGM)" in drawn and "w = 0.5" in drawn
    assert "3 steps (PGD)" in texts(router.adversarial_step(0.1, steps=3))
    drawn = texts(router.continual([("a", "b"), ("c",), ("d", "e")], 5, 1e5))
    assert "stage 3\n+ d, e" in drawn and "answers among 5" in drawn
    assert "answers among 3" in drawn and "answers among 2" in drawn
    assert "5 old messages per old intent" in drawn and "λ = 100000" in drawn
    with pytest.raises(ValueError, match="disjoint"):
        router.continual([("a",), ("a",)], 1, 1.0)
    with pytest.raises(ValueError, match="weight"):
        router.adversarial_step(0.1, weight=2.0)


def test_kv_cache_diagram_totals_kv_cache_bytes():
    drawn = texts(token_costs.kv_cache(CONFIG, 20, batch_size=2, bytes_per_number=2))
    assert f"= {kv_cache_bytes(CONFIG, 20, 2, 2):,} bytes" in drawn
    assert "(2, 4, 20, 12)" in drawn and "more layer" not in drawn
    deep = GPTConfig(vocab_size=300, block_size=32, n_layer=5, n_head=4, n_embd=48)
    drawn = texts(token_costs.kv_cache(deep, 20))
    assert "layer 5" in drawn and "2 more layers" in drawn


def test_request_cost_flow_uses_per_thousand_requests():
    cost = costs.per_thousand_requests(0.02, costs.GPU_H100, 0.5)
    drawn = texts(token_costs.request_cost(0.02, costs.GPU_H100, 0.5))
    assert f"${cost.dollars:.3g}" in drawn and f"{1000 * cost.kwh:.3g} Wh" in drawn
    with pytest.raises(ValueError, match="utilisation"):
        token_costs.request_cost(0.02, costs.GPU_H100, 2.0)


def test_decision_flow_counts_the_records():
    win = Comparison("a", "b", "acc", 0.9, 0.8, kind="score", difference_interval=(0.02, 0.1),
                     interval_method="paired bootstrap 95 %", train_seconds=1.0,
                     inference_seconds=0.01)
    tie = Comparison("c", "d", "acc", 0.8, 0.8, kind="score", difference_interval=(-0.1, 0.1),
                     interval_method="paired bootstrap 95 %")
    loss = Comparison("e", "f", "nll", 1.0, 1.2, kind="log-loss")
    drawn = texts(verdict.decision_flow({"x": [win, tie], "y": [loss]}))
    assert "3 comparisons from 2 chapters" in drawn
    assert "2 with an interval, 1 whose" in drawn
    assert "1 of 3 with training seconds,\n1 with inference seconds" in drawn
    with pytest.raises(TypeError, match="Comparison"):
        verdict.decision_flow({"x": ["not a comparison"]})


def test_router_methods_draws_the_counts_it_is_given():
    counts = {"TF-IDF + LR": 1234, "full fine-tuning": 22_700_000, "LoRA": 13_058}
    drawn = texts(router.methods(counts))
    assert all(count in drawn for count in ("1,234", "22,700,000", "13,058"))
    assert "majority class" not in drawn                       # only the methods given
    with pytest.raises(ValueError, match="unknown methods"):
        router.methods({"GPT-4": 1})
    with pytest.raises(ValueError, match="non-negative int"):
        router.methods({"LoRA": -1})
