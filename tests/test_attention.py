"""Attention parts (chapter 6): equal to PyTorch, gradient-checked, causal, and strict on input."""
import math

import pytest
import torch
import torch.nn.functional as F

from aigc_lib import attention
from aigc_lib.gradcheck import check_gradients

torch.manual_seed(0)


def test_softmax_equals_torch_and_survives_huge_logits():
    z = torch.randn(4, 7) * 3
    torch.testing.assert_close(attention.softmax(z), torch.softmax(z, -1))
    big = torch.tensor([[1000.0, 999.0, -1000.0]])
    out = attention.softmax(big)
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out, torch.softmax(big.double(), -1).float())
    masked = attention.softmax(torch.tensor([[0.0, float("-inf"), 1.0]]))
    assert masked[0, 1] == 0 and torch.isclose(masked.sum(), torch.tensor(1.0))


def test_softmax_jacobian_equals_autograd_and_finite_differences():
    z = torch.randn(3, 5, dtype=torch.float64)
    s = attention.softmax(z)
    ours = attention.softmax_jacobian(s)
    for b in range(3):
        auto = torch.autograd.functional.jacobian(lambda t: torch.softmax(t, -1), z[b])
        torch.testing.assert_close(ours[b], auto)
    check_gradients(attention.softmax, z, names=["z"]).raise_if_failed()
    # rows of J sum to zero: the outputs always sum to one
    torch.testing.assert_close(ours.sum(-1), torch.zeros(3, 5, dtype=torch.float64))


@pytest.mark.parametrize("causal", [False, True])
def test_attention_equals_torch_sdpa(causal):
    q, k, v = torch.randn(2, 3, 6, 4), torch.randn(2, 3, 6, 4), torch.randn(2, 3, 6, 5)
    ours = attention.scaled_dot_product_attention(q, k, v, is_causal=causal)
    ref = F.scaled_dot_product_attention(q, k, v, is_causal=causal)
    torch.testing.assert_close(ours, ref, atol=1e-6, rtol=1e-5)
    mask = torch.rand(6, 6) > 0.3
    mask[:, 0] = True                                  # every query may see at least one key
    torch.testing.assert_close(attention.scaled_dot_product_attention(q, k, v, mask=mask),
                               F.scaled_dot_product_attention(q, k, v, attn_mask=mask),
                               atol=1e-6, rtol=1e-5)


def test_attention_gradients_pass_gradcheck():
    q, k, v = (torch.randn(1, 4, 3, dtype=torch.float64) for _ in range(3))
    report = check_gradients(
        lambda q, k, v: attention.scaled_dot_product_attention(q, k, v, is_causal=True),
        q, k, v, names=["q", "k", "v"])
    assert report.passed, report.message()


def test_causal_attention_ignores_the_future():
    q, k, v = torch.randn(1, 8, 4), torch.randn(1, 8, 4), torch.randn(1, 8, 4)
    out = attention.scaled_dot_product_attention(q, k, v, is_causal=True)
    k2, v2 = k.clone(), v.clone()
    k2[:, 5:], v2[:, 5:] = torch.randn(1, 3, 4) * 10, torch.randn(1, 3, 4) * 10
    out2 = attention.scaled_dot_product_attention(q, k2, v2, is_causal=True)
    torch.testing.assert_close(out[:, :5], out2[:, :5])
    assert not torch.allclose(out[:, 5:], out2[:, 5:])
    # the mask helper: lower triangle, diagonal included
    assert torch.equal(attention.causal_mask(3), torch.tensor([[1, 0, 0], [1, 1, 0], [1, 1, 1]]).bool())


def test_multi_head_attention_equals_torch_multihead_attention():
    d, h = 12, 3
    mha = torch.nn.MultiheadAttention(d, h, batch_first=True)
    x = torch.randn(2, 5, d)
    for causal in (False, True):
        mask = ~attention.causal_mask(5) if causal else None   # torch: True = *not* allowed
        ref, _ = mha(x, x, x, attn_mask=mask, need_weights=False)
        ours = attention.multi_head_attention(x, mha.in_proj_weight, mha.in_proj_bias,
                                              mha.out_proj.weight, mha.out_proj.bias, h,
                                              is_causal=causal)
        torch.testing.assert_close(ours, ref, atol=1e-6, rtol=1e-5)


def test_split_and_merge_heads_are_inverse():
    x = torch.randn(2, 5, 12)
    heads = attention.split_heads(x, 3)
    assert heads.shape == (2, 3, 5, 4)
    torch.testing.assert_close(heads[:, 1], x[..., 4:8])
    torch.testing.assert_close(attention.merge_heads(heads), x)


def test_sinusoidal_positions_formula_and_relative_rotation():
    pe = attention.sinusoidal_positions(50, 16)
    p, i = 7, 3
    assert pe[p, 2 * i].item() == pytest.approx(math.sin(p / 10000 ** (2 * i / 16)), abs=1e-6)
    assert pe[p, 2 * i + 1].item() == pytest.approx(math.cos(p / 10000 ** (2 * i / 16)), abs=1e-6)
    for k in (1, 5, -3):
        R = attention.sinusoidal_rotation(k, 16)
        lo, hi = max(0, -k), min(50, 50 - k)
        torch.testing.assert_close((pe[lo:hi].double() @ R.T), pe[lo + k:hi + k].double(),
                                   atol=1e-6, rtol=0)
        torch.testing.assert_close(R @ R.T, torch.eye(16, dtype=torch.float64))  # a rotation


def test_layer_norm_equals_torch_and_uses_the_biased_variance():
    x = torch.randn(4, 6, 10) * 3 + 1
    ln = torch.nn.LayerNorm(10, eps=1e-5)
    torch.nn.init.normal_(ln.weight)
    torch.nn.init.normal_(ln.bias)
    torch.testing.assert_close(attention.layer_norm(x, ln.weight, ln.bias, 1e-5), ln(x))
    unbiased = (x - x.mean(-1, keepdim=True)) / torch.sqrt(x.var(-1, keepdim=True) + 1e-5)
    assert not torch.allclose(attention.layer_norm(x), unbiased, atol=1e-3)
    w, b = torch.randn(10, dtype=torch.float64), torch.randn(10, dtype=torch.float64)
    check_gradients(lambda x, w, b: attention.layer_norm(x, w, b), x[0, :3].double(), w, b,
                    names=["x", "weight", "bias"]).raise_if_failed()


@pytest.mark.parametrize("call, error, words", [
    (lambda: attention.softmax([1.0, 2.0]), TypeError, "z must be a torch.Tensor"),
    (lambda: attention.softmax(torch.tensor([[float("-inf")] * 3])), ValueError, "-inf everywhere"),
    (lambda: attention.softmax(torch.tensor([float("nan")])), ValueError, "NaN"),
    (lambda: attention.softmax_jacobian(torch.tensor([0.5, 0.6])), ValueError, "sum to 1"),
    (lambda: attention.scaled_dot_product_attention(torch.randn(2, 3), torch.randn(2, 4),
                                                    torch.randn(2, 3)), ValueError, "d_k"),
    (lambda: attention.scaled_dot_product_attention(torch.randn(2, 3), torch.randn(2, 3),
                                                    torch.randn(4, 3)), ValueError, "positions"),
    (lambda: attention.scaled_dot_product_attention(torch.randn(2, 3), torch.randn(2, 3),
                                                    torch.randn(2, 3), mask=torch.ones(2, 2)),
     TypeError, "mask must be a boolean"),
    (lambda: attention.scaled_dot_product_attention(torch.randn(2, 3), torch.randn(2, 3),
                                                    torch.randn(2, 3),
                                                    mask=torch.ones(3, 3, dtype=torch.bool)),
     ValueError, "mask must broadcast"),
    (lambda: attention.scaled_dot_product_attention(torch.randn(2, 3), torch.randn(2, 3),
                                                    torch.randn(2, 3),
                                                    mask=torch.ones(4, 2, 2, dtype=torch.bool)),
     ValueError, "mask must broadcast"),
    (lambda: attention.scaled_dot_product_attention(torch.randn(2, 3), torch.randn(2, 3),
                                                    torch.randn(2, 3), dropout_p=1.0),
     ValueError, "dropout_p"),
    (lambda: attention.split_heads(torch.randn(1, 2, 10), 3), ValueError, "divisible by n_head"),
    (lambda: attention.multi_head_attention(torch.randn(1, 2, 4), torch.randn(4, 4), None,
                                            torch.randn(4, 4), None, 2), ValueError, "w_qkv"),
    (lambda: attention.sinusoidal_positions(10, 7), ValueError, "d_model must be even"),
    (lambda: attention.causal_mask(0), ValueError, "T must be > 0"),
    (lambda: attention.layer_norm(torch.randn(2, 4), torch.randn(3)), ValueError, "weight"),
    (lambda: attention.layer_norm(torch.randn(2, 4), eps=0.0), ValueError, "eps"),
])
def test_bad_input_is_rejected(call, error, words):
    with pytest.raises(error, match=words):
        call()


@pytest.mark.parametrize("kwargs", [{}, {"is_causal": True},
                                    {"mask": torch.rand(2, 1, 5, 5) > 0.3}])
def test_attend_gives_the_same_attention_on_both_paths(kwargs):
    torch.manual_seed(0)
    q, k, v = (torch.randn(2, 3, 5, 4) for _ in range(3))
    if "mask" in kwargs:
        kwargs = {"mask": kwargs["mask"] | torch.eye(5, dtype=torch.bool)}  # no empty row
    fused, written = (attention.attend(q, k, v, path, **kwargs) for path in attention.PATHS)
    torch.testing.assert_close(fused, written, atol=1e-5, rtol=1e-5)
