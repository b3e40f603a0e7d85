"""Our LoRA equals peft's: same trainable parameters, initialisation, outputs, gradients and
merged weights, on tiny GPT-2s (transformers' Conv1D layers) and on our GPT (nn.Linear)."""
import copy
import math

import pytest
import torch
import torch.nn as nn
from transformers import GPT2Config, GPT2LMHeadModel

from aigc_lib.gradcheck import check_gradients
from aigc_lib.models import gpt, lora

peft = pytest.importorskip("peft")

R, ALPHA = 4, 8


def tiny_gpt2(seed=0):
    torch.manual_seed(seed)
    config = GPT2Config(vocab_size=50, n_positions=16, n_embd=16, n_layer=2, n_head=2,
                        resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
    return GPT2LMHeadModel(config).eval()


def peft_twin(model, fan_in_fan_out):
    config = peft.LoraConfig(r=R, lora_alpha=ALPHA, lora_dropout=0.0,
                             target_modules=list(lora.GPT2_ATTENTION),
                             fan_in_fan_out=fan_in_fan_out)
    return peft.get_peft_model(copy.deepcopy(model), config)


def randomise_adapters(model, seed=1):
    """Non-zero B (and a fresh A), so that the adapters change the outputs."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for layer in lora.lora_layers(model).values():
            layer.lora_A.copy_(torch.randn(layer.lora_A.shape, generator=g) * 0.3)
            layer.lora_B.copy_(torch.randn(layer.lora_B.shape, generator=g) * 0.3)


def pair(kind):
    """(ours, peft's) with identical adapters, on GPT-2 (Conv1D) or our GPT (nn.Linear)."""
    if kind == "conv1d":
        base, fan = tiny_gpt2(), True
    else:
        torch.manual_seed(0)
        base, fan = gpt.GPT(gpt.GPTConfig(vocab_size=50, block_size=16, n_layer=2, n_head=2,
                                           n_embd=16)).eval(), False
    theirs = peft_twin(base, fan)
    ours = copy.deepcopy(base)
    assert lora.add_lora(ours, r=R, alpha=ALPHA) is ours          # in place, returns the model
    wrapped = list(lora.lora_layers(ours))
    randomise_adapters(ours)
    peft.set_peft_model_state_dict(theirs, lora.peft_state_dict(ours))
    return base, ours, theirs, wrapped


def logits(model, idx):
    out = model(idx)
    return out.logits if hasattr(out, "logits") else out


@pytest.mark.parametrize("kind", ["conv1d", "linear"])
def test_same_layers_and_trainable_parameters_as_peft(kind):
    base, ours, theirs, wrapped = pair(kind)
    assert wrapped == [f"transformer.h.{i}.attn.{p}" for i in range(2)
                       for p in ("c_attn", "c_proj")]
    ours_trainable = {n: p.shape for n, p in ours.named_parameters() if p.requires_grad}
    peft_trainable = {n.removeprefix("base_model.model.").replace(".default", ""): p.shape
                      for n, p in theirs.named_parameters() if p.requires_grad}
    assert ours_trainable == {k.replace("lora_A.weight", "lora_A").replace(
        "lora_B.weight", "lora_B"): v for k, v in peft_trainable.items()}
    assert sum(math.prod(s) for s in ours_trainable.values()) == 2 * (R * (16 + 48) + R * 32)


@pytest.mark.parametrize("kind", ["conv1d", "linear"])
def test_forward_and_gradients_equal_peft(kind):
    base, ours, theirs, _ = pair(kind)
    idx = torch.randint(0, 50, (3, 16), generator=torch.Generator().manual_seed(2))
    a, b = logits(ours, idx), logits(theirs, idx)
    torch.testing.assert_close(a, b, atol=1e-6, rtol=0)
    assert (a - logits(base, idx)).abs().max() > 1e-2          # the adapters do something
    target = torch.randn(a.shape, generator=torch.Generator().manual_seed(3))
    (a * target).sum().backward()
    (b * target).sum().backward()
    peft_layers = theirs.base_model.model
    for name, layer in lora.lora_layers(ours).items():
        twin = peft_layers.get_submodule(name)
        torch.testing.assert_close(layer.lora_A.grad, twin.lora_A["default"].weight.grad,
                                   atol=1e-6, rtol=1e-5)
        torch.testing.assert_close(layer.lora_B.grad, twin.lora_B["default"].weight.grad,
                                   atol=1e-6, rtol=1e-5)
        assert layer.base.weight.grad is None                    # the base stays frozen


@pytest.mark.parametrize("kind", ["conv1d", "linear"])
def test_merged_weights_equal_peft_merge_and_unload(kind):
    base, ours, theirs, _ = pair(kind)
    idx = torch.randint(0, 50, (2, 16), generator=torch.Generator().manual_seed(4))
    before = logits(ours, idx)
    merged_ours = lora.merge_lora(ours)
    merged_peft = theirs.merge_and_unload()
    assert not lora.lora_layers(merged_ours)
    assert type(merged_ours.transformer.h[0].attn.c_attn) is type(base.transformer.h[0].attn.c_attn)
    ours_state, peft_state = merged_ours.state_dict(), merged_peft.state_dict()
    assert ours_state.keys() == peft_state.keys() == base.state_dict().keys()
    for key in ours_state:
        torch.testing.assert_close(ours_state[key], peft_state[key], atol=1e-6, rtol=0)
    torch.testing.assert_close(logits(merged_ours, idx), before, atol=1e-5, rtol=0)


def test_initialisation_equals_peft_scheme():
    """B starts at zero (the wrapped model is the base model), A is uniform on ±1/√d_in as
    peft's kaiming_uniform_(a=√5); scaling α/r."""
    big = nn.Linear(400, 300)
    ours = lora.LoRALinear(copy.deepcopy(big), r=64, alpha=16)
    theirs = peft.get_peft_model(nn.Sequential(copy.deepcopy(big)),
                                 peft.LoraConfig(r=64, lora_alpha=16, target_modules=["0"]))
    peft_layer = theirs.base_model.model[0]
    assert ours.scaling == peft_layer.scaling["default"] == 16 / 64
    a_theirs = peft_layer.lora_A["default"].weight
    assert ours.lora_A.shape == a_theirs.shape and ours.lora_B.shape == \
        peft_layer.lora_B["default"].weight.shape
    assert not ours.lora_B.any() and not peft_layer.lora_B["default"].weight.any()
    bound = 1 / math.sqrt(400)
    for a in (ours.lora_A, a_theirs):
        assert a.abs().max() <= bound and a.abs().max() > 0.99 * bound
        assert abs(a.std().item() - bound / math.sqrt(3)) < 0.02 * bound
    x = torch.randn(5, 400)
    torch.testing.assert_close(ours(x), big(x))


def test_lora_linear_gradients_are_correct():
    """Finite differences through the module itself, for x, A and B (float64)."""
    conv1d = GPT2LMHeadModel(GPT2Config(n_embd=6, n_layer=1, n_head=1,
                                        vocab_size=5)).transformer.h[0].attn.c_proj
    for base in (nn.Linear(5, 3), conv1d):
        layer = lora.LoRALinear(base.double(), r=2, alpha=3.0)

        def f(x, a, b):
            return torch.func.functional_call(layer, {"lora_A": a, "lora_B": b}, (x,))

        x = torch.randn(4, layer.in_features, dtype=torch.float64)
        a = torch.randn(layer.lora_A.shape, dtype=torch.float64)
        b = torch.randn(layer.lora_B.shape, dtype=torch.float64)
        report = check_gradients(f, x, a, b)
        assert report.passed, report.message()


def test_merge_unmerge_round_trip_and_dropout():
    layer = lora.LoRALinear(nn.Linear(6, 4), r=2, alpha=4, dropout=0.5)
    with torch.no_grad():
        layer.lora_B.normal_()
    layer.eval()
    x = torch.randn(3, 6)
    y = layer(x)
    w0 = layer.base.weight.clone()
    layer.merge()
    torch.testing.assert_close(layer(x), y)
    layer.merge()                                   # idempotent
    layer.unmerge()
    torch.testing.assert_close(layer.base.weight, w0)
    layer.train()
    assert not torch.allclose(layer(x), y)          # dropout on the low-rank path only


@pytest.mark.parametrize("call, error, words", [
    (lambda: lora.LoRALinear(nn.Conv2d(1, 1, 1), 2, 4), TypeError, "base must be"),
    (lambda: lora.LoRALinear(nn.Linear(3, 3), 0, 4), ValueError, "r must be > 0"),
    (lambda: lora.LoRALinear(nn.Linear(3, 3), 2.0, 4), TypeError, "r must be an int"),
    (lambda: lora.LoRALinear(nn.Linear(3, 3), 2, -1), ValueError, "alpha must be > 0"),
    (lambda: lora.LoRALinear(nn.Linear(3, 3), 2, 4, dropout=1.0), ValueError, "dropout"),
    (lambda: lora.add_lora(tiny_gpt2(), targets=("nothing",)), ValueError, "match no module"),
    (lambda: lora.add_lora("model"), TypeError, "model must be"),
    (lambda: lora.add_lora(tiny_gpt2(), targets=()), TypeError, "targets must be"),
    (lambda: lora.add_lora(tiny_gpt2(), targets=3), TypeError, "targets must be"),
    (lambda: lora.add_lora(tiny_gpt2(), r=2.5), TypeError, "r must be an int"),
    (lambda: lora.add_lora(tiny_gpt2(), alpha=0), ValueError, "alpha must be > 0"),
    (lambda: lora.add_lora(tiny_gpt2(), dropout=1.5), ValueError, "dropout must be in"),
    (lambda: lora.add_lora(tiny_gpt2(), rank_stabilised=1), TypeError, "rank_stabilised"),
    (lambda: lora.add_lora(tiny_gpt2(), targets=("ln_f",)), TypeError, "LoRA wraps"),
    (lambda: lora.add_lora(tiny_gpt2(), 4), TypeError, "positional"),
    (lambda: lora.attention_targets(nn.Linear(2, 2)), ValueError, "pass targets"),
    (lambda: lora.merge_lora(tiny_gpt2()), ValueError, "no LoRA layers"),
    (lambda: lora.peft_state_dict(tiny_gpt2()), ValueError, "no LoRA layers"),
])
def test_bad_input(call, error, words):
    with pytest.raises(error, match=words):
        call()


def test_peft_state_dict_round_trip():
    base, ours, theirs, _ = pair("conv1d")
    saved = peft.get_peft_model_state_dict(theirs)
    assert saved.keys() == lora.peft_state_dict(ours).keys()
    fresh = copy.deepcopy(base)
    lora.add_lora(fresh, r=R, alpha=ALPHA)
    lora.load_peft_state_dict(fresh, saved)
    idx = torch.randint(0, 50, (2, 16), generator=torch.Generator().manual_seed(5))
    torch.testing.assert_close(logits(fresh, idx), logits(theirs, idx), atol=1e-6, rtol=0)
    with pytest.raises(ValueError, match="does not match"):
        lora.load_peft_state_dict(fresh, {k: v for k, v in saved.items() if "h.0" not in k})
    bad = dict(saved)
    key = next(iter(bad))
    bad[key] = bad[key][:1]
    with pytest.raises(ValueError, match="has shape"):
        lora.load_peft_state_dict(fresh, bad)
    with pytest.raises(TypeError, match="state must be"):
        lora.load_peft_state_dict(fresh, [1])


def test_wrapping_twice_is_refused():
    model = tiny_gpt2()
    lora.add_lora(model)
    with pytest.raises(ValueError, match="already has LoRA"):
        lora.add_lora(model)


@pytest.mark.parametrize("kwargs", [dict(r=0), dict(r=-2), dict(alpha=-1.0), dict(dropout=1.0),
                                    dict(targets=("nothing",)), dict(targets=("ln_f",))])
def test_a_bad_call_leaves_the_model_untouched(kwargs):
    """Every argument is checked before anything is frozen or replaced (issue 12 §5)."""
    model = tiny_gpt2()
    before = {n: (p.requires_grad, p.clone()) for n, p in model.named_parameters()}
    modules = [type(m) for m in model.modules()]
    with pytest.raises((TypeError, ValueError)):
        lora.add_lora(model, **kwargs)
    assert [type(m) for m in model.modules()] == modules
    for name, p in model.named_parameters():
        assert p.requires_grad == before[name][0] and torch.equal(p, before[name][1])


def test_rank_stabilised_scaling_equals_peft_use_rslora():
    """rsLoRA: the update is scaled by alpha/sqrt(r), as peft's use_rslora=True."""
    base = tiny_gpt2()
    config = peft.LoraConfig(r=R, lora_alpha=ALPHA, lora_dropout=0.0, use_rslora=True,
                             target_modules=list(lora.GPT2_ATTENTION), fan_in_fan_out=True)
    theirs = peft.get_peft_model(copy.deepcopy(base), config)
    ours = lora.add_lora(copy.deepcopy(base), r=R, alpha=ALPHA, rank_stabilised=True)
    assert all(layer.scaling == ALPHA / math.sqrt(R) for layer in lora.lora_layers(ours).values())
    randomise_adapters(ours)
    peft.set_peft_model_state_dict(theirs, lora.peft_state_dict(ours))
    idx = torch.randint(0, 50, (2, 16), generator=torch.Generator().manual_seed(6))
    torch.testing.assert_close(logits(ours, idx), logits(theirs, idx), atol=1e-6, rtol=0)


def test_llama_attention_targets_equal_peft():
    """On a Llama-style model (nn.Linear q/k/v/o projections) our LoRA equals peft's too."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    base = LlamaForCausalLM(LlamaConfig(vocab_size=50, hidden_size=16, intermediate_size=32,
                                        num_hidden_layers=2, num_attention_heads=2,
                                        num_key_value_heads=1, max_position_embeddings=32)).eval()
    targets = lora.attention_targets(base)
    assert targets == lora.LLAMA_ATTENTION and lora.attention_targets(tiny_gpt2()) == \
        lora.GPT2_ATTENTION
    ours = lora.add_lora(copy.deepcopy(base), r=R, alpha=ALPHA, targets=targets)
    assert len(lora.lora_layers(ours)) == 2 * 4
    randomise_adapters(ours)
    theirs = peft.get_peft_model(copy.deepcopy(base), peft.LoraConfig(
        r=R, lora_alpha=ALPHA, lora_dropout=0.0, target_modules=list(targets)))
    peft.set_peft_model_state_dict(theirs, lora.peft_state_dict(ours))
    idx = torch.randint(0, 50, (2, 12), generator=torch.Generator().manual_seed(7))
    torch.testing.assert_close(logits(ours, idx), logits(theirs, idx), atol=1e-5, rtol=0)
