"""Quantisation (torchao's int8 layers equal to dequantise-then-multiply by hand; sizes in
memory and on disk; save and load) and memory arithmetic (formulas equal to measured bytes),
chapter 11."""
import pytest
import torch

from aigc_lib import memory, quantize
from aigc_lib.models import gpt

pytestmark = pytest.mark.usefixtures("one_thread")


def tiny_gpt(seed=0, **kwargs):
    torch.manual_seed(seed)
    config = dict(vocab_size=50, block_size=16, n_layer=2, n_head=2, n_embd=32)
    return gpt.GPT(gpt.GPTConfig(**{**config, **kwargs})).eval()


@pytest.mark.parametrize("scheme, dynamic", [("int8 weights", False), ("int8 dynamic", True)])
def test_torchao_int8_linear_equals_dequantise_then_multiply(scheme, dynamic):
    torch.manual_seed(0)
    layer = torch.nn.Linear(64, 48)
    x = torch.randn(5, 7, 64) * 3
    quantised = quantize.quantize(torch.nn.Sequential(layer), scheme, skip=())[0]
    weight = quantised.weight
    q, s = quantize.absmax_int8(layer.weight.detach())       # our formula, torchao's tensors
    assert torch.equal(weight.qdata, q) and torch.equal(weight.scale, s)
    assert torch.equal(weight.zero_point, torch.zeros_like(q[:, :1]))
    with torch.no_grad():
        ours = quantize.int8_reference(x, q, s, layer.bias, dynamic=dynamic)
        theirs = quantised(x)
        exact = layer(x)
    torch.testing.assert_close(theirs, ours, atol=1e-5, rtol=1e-5)
    # the int8 layer approximates the float layer, it does not reproduce it
    error = (ours - exact).abs().max().item()
    assert 1e-4 < error < 0.05 * exact.abs().max().item()


def test_absmax_int8_rounds_to_a_grid_within_half_a_step():
    torch.manual_seed(1)
    w = torch.randn(6, 40)
    q, s = quantize.absmax_int8(w)
    # each row's largest magnitude sits at the end of the range: ±127.5 rounds to 127 or -128
    assert set(q.long().abs().amax(1).tolist()) <= {127, 128}
    assert bool(((q.float() * s - w).abs() <= s / 2 + 1e-6).all())
    x = torch.tensor([[1.0, 2.0, 3.0]])
    q2, s2 = quantize.absmax_int8(torch.tensor([[2.0, 0.0, -2.0]]))
    assert q2.tolist() == [[127, 0, -127]]
    y = quantize.int8_reference(x, q2, s2)
    assert y.item() == pytest.approx(127 * (2 / 127.5) * (1 - 3), rel=1e-6)


def test_bf16_and_int8_copies_leave_the_model_alone():
    model = tiny_gpt()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    for scheme in quantize.SCHEMES:
        copy = quantize.quantize(model, scheme)
        assert copy is not model
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert quantize.quantize(model, "bf16").lm_head.weight.dtype == torch.bfloat16


def test_memory_bytes_count_tied_weights_once_and_int8_as_integers_plus_scales():
    model = tiny_gpt()
    n = sum(p.numel() for p in model.parameters())       # the tied matrix once
    assert quantize.memory_bytes(model) == 4 * n
    assert quantize.memory_bytes(quantize.quantize(model, "bf16")) == 2 * n
    int8 = quantize.quantize(model, "int8 weights")
    linear = [m for name, m in model.named_modules()
              if isinstance(m, torch.nn.Linear) and name != "lm_head"]
    weights = sum(m.weight.numel() for m in linear)
    rows = sum(m.weight.shape[0] for m in linear)
    # int8 integers, a float32 scale and an int8 zero point per row, the rest in float32
    assert quantize.memory_bytes(int8) == 4 * (n - weights) + weights + rows * (4 + 1)


@pytest.mark.parametrize("scheme", quantize.SCHEMES)
def test_save_and_load_round_trip(tmp_path, scheme):
    model = quantize.quantize(tiny_gpt(), scheme)
    path = quantize.save(model, tmp_path / "m.safetensors")
    fresh = quantize.load(quantize.quantize(tiny_gpt(seed=1), scheme), path)
    ids = torch.randint(0, 50, (2, 9))
    with torch.no_grad():
        assert torch.equal(fresh(ids), model(ids))
    tied = fresh.lm_head.weight.untyped_storage().data_ptr()
    assert tied == fresh.transformer.wte.weight.untyped_storage().data_ptr()
    # the file stores each tensor once: about the bytes in memory, plus a small header
    assert 0 < path.stat().st_size - quantize.memory_bytes(model) < 20_000


def test_parameters_gradients_and_adam_state_equal_the_formula():
    model = tiny_gpt().train()
    batch = torch.randint(0, 50, (3, 17))
    measured = memory.measure_training(model, lambda: gpt.lm_loss(model, batch),
                                       torch.optim.AdamW(model.parameters(), lr=1e-3))
    n = sum(p.numel() for p in model.parameters())
    expected = memory.training_bytes(n, activations=measured.activations)
    assert (measured.weights, measured.gradients, measured.optimizer) == \
        (expected.weights, expected.gradients, expected.optimizer) == (4 * n, 4 * n, 8 * n)


@pytest.mark.parametrize("shape", [(2, 16), (5, 8), (3, 2)])
def test_gpt_activation_formula_matches_the_saved_tensors(shape):
    model = tiny_gpt(n_layer=3, n_head=4).train()
    B, T = shape
    batch = torch.randint(0, 50, (B, T + 1))
    measured = memory.saved_activation_bytes(model, lambda: gpt.lm_loss(model, batch))
    formula = memory.gpt_activation_bytes(model.config, B, T)
    # besides: the int64 batch (B x (T+1)), targets (a copy, B x T, when B, T > 1) and
    # positions (T), and the cross-entropy's float32 count of scored tokens
    bookkeeping = 8 * (B * (T + 1) + B * T + T) + 4
    assert measured == formula + bookkeeping


def test_inference_memory_is_weights_plus_cache():
    model = tiny_gpt()
    n = sum(p.numel() for p in model.parameters())
    cache = gpt.KVCache(model.config, 2, 16)
    with torch.no_grad():
        model(torch.randint(0, 50, (2, 4)), cache=cache)
    formula = memory.inference_bytes(n, gpt.kv_cache_bytes(model.config, 16, 2))
    assert formula.total == quantize.memory_bytes(model) + cache.nbytes


@pytest.mark.parametrize("call, error, words", [
    (lambda: quantize.quantize(tiny_gpt(), "int4"), ValueError, "scheme"),
    (lambda: quantize.quantize("model", "bf16"), TypeError, "model"),
    (lambda: quantize.int8_reference(torch.zeros(2, 3), torch.zeros(4, 5, dtype=torch.int8),
                                     torch.ones(4, 1)), ValueError, "features"),
    (lambda: quantize.int8_reference(torch.zeros(2, 3), torch.zeros(4, 3), torch.ones(4, 1)),
     TypeError, "int8"),
    (lambda: quantize.save(tiny_gpt(), "model.pt"), ValueError, ".safetensors"),
    (lambda: quantize.load(tiny_gpt(), "/nonexistent.safetensors"), FileNotFoundError, "no file"),
    (lambda: memory.training_bytes(-1, 0), ValueError, "n_params"),
    (lambda: memory.gpt_activation_bytes(tiny_gpt().config, 0, 4), ValueError, "batch_size"),
    (lambda: memory.measure_training(tiny_gpt(), lambda: 0, "adam"), TypeError, "optimizer"),
])
def test_bad_input_is_rejected(call, error, words):
    with pytest.raises(error, match=words):
        call()
