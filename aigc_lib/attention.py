r"""Attention and its parts, written out for teaching (chapter 6, *Transformer math*).

Every function here is derived in chapter 6 and tested against PyTorch in
``tests/test_attention.py``: the softmax and its Jacobian :math:`\operatorname{diag}(s) - s s^\top`,
scaled dot-product attention with an optional (causal) mask, multi-head attention, sinusoidal
positional encodings and layer normalisation. The GPT of :mod:`aigc_lib.models.gpt` uses
:func:`scaled_dot_product_attention` on its readable ("math") path and PyTorch's fused kernel on
its fast path; the tests show the two agree.

Shapes: ``(..., T, d)`` with any leading batch (and head) dimensions; ``T`` is the sequence length.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from aigc_lib import checks


def softmax(z: torch.Tensor, dim: int = -1) -> torch.Tensor:
    r"""The softmax :math:`s_i = e^{z_i - m} / \sum_j e^{z_j - m}` along ``dim``.

    Subtracting :math:`m = \max_j z_j` changes nothing mathematically (numerator and denominator
    are both multiplied by :math:`e^{-m}`) but keeps every exponent :math:`\le 0`, so nothing
    overflows. Entries equal to :math:`-\infty` (masked positions) get probability 0; a row that is
    entirely :math:`-\infty` is an error, since it has no distribution (chapter 6).
    """
    checks.tensor("z", z, floating=True, finite=False)
    checks.require(~(torch.isnan(z) | torch.isposinf(z)).any(), lambda: ValueError(
        "z must not contain NaN or +inf (use -inf to mask a position)"))
    m = z.amax(dim=dim, keepdim=True)
    checks.require(~torch.isneginf(m).any(), lambda: ValueError(
        "z has a row that is -inf everywhere: nothing to normalise"))
    e = torch.exp(z - m)
    return e / e.sum(dim=dim, keepdim=True)


def softmax_jacobian(s: torch.Tensor) -> torch.Tensor:
    r"""The Jacobian of the softmax at output :math:`s`: :math:`J = \operatorname{diag}(s) - s s^\top`.

    From :math:`s_i = e^{z_i}/\sum_k e^{z_k}`, :math:`\partial s_i/\partial z_j = s_i(\delta_{ij} -
    s_j)` (chapter 6). ``s`` has shape ``(..., n)``; the result ``(..., n, n)`` has
    ``J[..., i, j]`` :math:`= \partial s_i / \partial z_j`.
    """
    checks.tensor("s", s, floating=True, ndim=None)
    if s.ndim == 0:
        raise ValueError("s must have at least one dimension (a probability vector)")
    checks.probability_vector("s", s, atol=1e-4)
    return torch.diag_embed(s) - s.unsqueeze(-1) * s.unsqueeze(-2)


def causal_mask(T: int, device: torch.device | str | None = None) -> torch.Tensor:
    r"""A ``(T, T)`` boolean mask, True where query :math:`t` may attend to key :math:`u`, i.e.
    :math:`u \le t` (lower triangle, diagonal included). Chapter 6 applies it *before* the softmax."""
    checks.positive_number("T", T, integer=True)
    return torch.ones(T, T, dtype=torch.bool, device=device).tril()


def scaled_dot_product_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                                 mask: torch.Tensor | None = None, is_causal: bool = False,
                                 scale: float | None = None, dropout_p: float = 0.0,
                                 return_weights: bool = False
                                 ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    r"""Attention :math:`\operatorname{softmax}\!\left(QK^\top/\sqrt{d_k} + M\right) V` (chapter 6).

    ``q`` is ``(..., T_q, d_k)``, ``k`` is ``(..., T_k, d_k)``, ``v`` is ``(..., T_k, d_v)``.
    ``mask`` (boolean, broadcastable to ``(..., T_q, T_k)``) marks the allowed pairs; disallowed
    scores are set to :math:`-\infty` *before* the softmax, so each row renormalises over the
    allowed keys. ``is_causal=True`` lets query :math:`t` see keys :math:`0..t` (:func:`causal_mask`
    when :math:`T_q = T_k`). ``scale`` defaults to
    :math:`1/\sqrt{d_k}`. ``dropout_p`` drops attention weights (scaled by :math:`1/(1-p)`) as
    ``torch.nn.functional.scaled_dot_product_attention`` does. Returns the ``(..., T_q, d_v)``
    output, and the weights too when ``return_weights``.
    """
    for name, t in (("q", q), ("k", k), ("v", v)):   # no host read: forward passes call this
        checks.finite_on_device(name, checks.tensor(name, t, floating=True, finite=False))
    if q.ndim < 2 or k.ndim < 2 or v.ndim < 2:
        raise ValueError(f"q, k and v must have at least 2 dimensions (..., T, d), got shapes "
                         f"{tuple(q.shape)}, {tuple(k.shape)}, {tuple(v.shape)}")
    if q.shape[-1] != k.shape[-1]:
        raise ValueError(f"q and k must share their last dimension d_k, got {q.shape[-1]} and "
                         f"{k.shape[-1]}")
    if k.shape[-2] != v.shape[-2]:
        raise ValueError(f"k and v must have the same number of positions, got {k.shape[-2]} and "
                         f"{v.shape[-2]}")
    if scale is None:
        scale = 1.0 / math.sqrt(q.shape[-1])
    checks.positive_number("scale", scale)
    if not 0.0 <= dropout_p < 1.0:
        raise ValueError(f"dropout_p must be in [0, 1), got {dropout_p!r}")
    if is_causal:
        if mask is not None:
            raise ValueError("give mask or is_causal=True, not both")
        # as torch's kernel: query t may see keys 0..t (the mask's top-left aligned lower triangle)
        mask = torch.ones(q.shape[-2], k.shape[-2], dtype=torch.bool, device=q.device).tril()
    scores = (q @ k.transpose(-2, -1)) * scale
    if mask is not None:
        checks.tensor("mask", mask)
        if mask.dtype != torch.bool:
            raise TypeError(f"mask must be a boolean tensor (True = may attend), got {mask.dtype}")
        try:
            fits = torch.broadcast_shapes(mask.shape, scores.shape) == scores.shape
        except RuntimeError:
            fits = False
        if not fits:
            raise ValueError(f"mask must broadcast to the scores' shape (..., T_q, T_k) = "
                             f"{tuple(scores.shape)}, got shape {tuple(mask.shape)}")
        scores = scores.masked_fill(~mask, float("-inf"))
    weights = softmax(scores, dim=-1)
    if dropout_p > 0:
        weights = F.dropout(weights, p=dropout_p)
    out = weights @ v
    return (out, weights) if return_weights else out


PATHS = ("sdpa", "math")     # the two ways GPT and Llama compute their attention


def attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, path: str, *,
           mask: torch.Tensor | None = None, is_causal: bool = False,
           dropout_p: float = 0.0) -> torch.Tensor:
    """Attention by one of two :data:`PATHS` that compute the same thing: ``"sdpa"`` calls
    PyTorch's fused ``F.scaled_dot_product_attention`` (FlashAttention on recent GPUs),
    ``"math"`` the written-out :func:`scaled_dot_product_attention` of chapter 6."""
    if path == "sdpa":
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout_p,
                                              is_causal=is_causal)
    return scaled_dot_product_attention(q, k, v, mask=mask, is_causal=is_causal,
                                        dropout_p=dropout_p)


def split_heads(x: torch.Tensor, n_head: int) -> torch.Tensor:
    r"""``(B, T, d)`` to ``(B, h, T, d/h)``: head :math:`i` gets features
    :math:`i\,d/h \ldots (i+1)\,d/h - 1`."""
    checks.tensor("x", x, floating=True, ndim=3)
    checks.positive_number("n_head", n_head, integer=True)
    B, T, d = x.shape
    if d % n_head:
        raise ValueError(f"the last dimension of x ({d}) must be divisible by n_head ({n_head})")
    return x.view(B, T, n_head, d // n_head).transpose(1, 2)


def merge_heads(x: torch.Tensor) -> torch.Tensor:
    """``(B, h, T, d_h)`` back to ``(B, T, h d_h)``, the inverse of :func:`split_heads`."""
    checks.tensor("x", x, floating=True, ndim=4)
    B, h, T, dh = x.shape
    return x.transpose(1, 2).reshape(B, T, h * dh)


def multi_head_attention(x: torch.Tensor, w_qkv: torch.Tensor, b_qkv: torch.Tensor | None,
                         w_out: torch.Tensor, b_out: torch.Tensor | None, n_head: int,
                         is_causal: bool = False) -> torch.Tensor:
    r"""Multi-head self-attention (chapter 6):

    .. math:: [Q\,K\,V] = X W_{qkv}^\top + b_{qkv}, \quad
              \text{head}_i = \operatorname{softmax}\!\left(Q_i K_i^\top/\sqrt{d_h} + M\right) V_i,
              \quad Y = [\text{head}_1 \cdots \text{head}_h] W_{out}^\top + b_{out},

    with :math:`d_h = d/h`. ``x`` is ``(B, T, d)``, ``w_qkv`` is ``(3d, d)`` (rows: all queries,
    then keys, then values, as ``torch.nn.MultiheadAttention.in_proj_weight``), ``w_out`` is
    ``(d, d)``. Each head scales by :math:`1/\sqrt{d_h}`, not :math:`1/\sqrt{d}`.
    """
    checks.tensor("x", x, floating=True, ndim=3)
    d = x.shape[-1]
    checks.tensor("w_qkv", w_qkv, floating=True, ndim=2)
    checks.tensor("w_out", w_out, floating=True, ndim=2)
    if tuple(w_qkv.shape) != (3 * d, d):
        raise ValueError(f"w_qkv must have shape (3d, d) = {(3 * d, d)}, got {tuple(w_qkv.shape)}")
    if tuple(w_out.shape) != (d, d):
        raise ValueError(f"w_out must have shape (d, d) = {(d, d)}, got {tuple(w_out.shape)}")
    q, k, v = F.linear(x, w_qkv, b_qkv).split(d, dim=-1)
    q, k, v = (split_heads(t, n_head) for t in (q, k, v))
    heads = scaled_dot_product_attention(q, k, v, is_causal=is_causal)
    return F.linear(merge_heads(heads), w_out, b_out)


def sinusoidal_positions(n_positions: int, d_model: int, base: float = 10000.0) -> torch.Tensor:
    r"""The sinusoidal positional encoding of Vaswani et al. (2017), ``(n_positions, d_model)``:

    .. math:: PE_{p,2i} = \sin(p\,\omega_i), \quad PE_{p,2i+1} = \cos(p\,\omega_i), \quad
              \omega_i = \text{base}^{-2i/d_\text{model}}.

    Each pair :math:`(2i, 2i+1)` rotates by the angle :math:`k\omega_i` when the position moves by
    :math:`k`, so :math:`PE_{p+k} = R_k\,PE_p` with :math:`R_k` independent of :math:`p`
    (chapter 6 checks this). ``d_model`` must be even.
    """
    checks.positive_number("n_positions", n_positions, integer=True)
    checks.positive_number("d_model", d_model, integer=True)
    checks.positive_number("base", base)
    if d_model % 2:
        raise ValueError(f"d_model must be even (sin/cos pairs), got {d_model}")
    p = torch.arange(n_positions, dtype=torch.float64).unsqueeze(1)
    omega = base ** (-torch.arange(0, d_model, 2, dtype=torch.float64) / d_model)
    pe = torch.zeros(n_positions, d_model, dtype=torch.float64)
    pe[:, 0::2] = torch.sin(p * omega)
    pe[:, 1::2] = torch.cos(p * omega)
    return pe.float()


def sinusoidal_rotation(k: int, d_model: int, base: float = 10000.0) -> torch.Tensor:
    r"""The block-diagonal matrix :math:`R_k` with :math:`PE_{p+k} = R_k PE_p` for every :math:`p`:
    block :math:`i` is :math:`\begin{pmatrix}\cos k\omega_i & \sin k\omega_i \\ -\sin k\omega_i &
    \cos k\omega_i\end{pmatrix}` acting on :math:`(\sin p\omega_i, \cos p\omega_i)` (chapter 6)."""
    if isinstance(k, bool) or not isinstance(k, int):
        raise TypeError(f"k must be an int, got {type(k).__name__}")
    checks.positive_number("d_model", d_model, integer=True)
    checks.positive_number("base", base)
    if d_model % 2:
        raise ValueError(f"d_model must be even (sin/cos pairs), got {d_model}")
    omega = base ** (-torch.arange(0, d_model, 2, dtype=torch.float64) / d_model)
    c, s = torch.cos(k * omega), torch.sin(k * omega)
    blocks = torch.stack([torch.stack([c, s], -1), torch.stack([-s, c], -1)], -2)
    return torch.block_diag(*blocks)


def layer_norm(x: torch.Tensor, weight: torch.Tensor | None = None, bias: torch.Tensor | None = None,
               eps: float = 1e-5) -> torch.Tensor:
    r"""Layer normalisation over the last dimension (Ba et al., 2016; chapter 6):

    .. math:: \mu = \frac1d\sum_j x_j, \quad \sigma^2 = \frac1d\sum_j (x_j-\mu)^2, \quad
              y = \gamma \odot \frac{x - \mu}{\sqrt{\sigma^2 + \varepsilon}} + \beta.

    The variance is the *biased* one (divide by :math:`d`, not :math:`d-1`) and :math:`\varepsilon`
    sits inside the square root, as in ``torch.nn.LayerNorm``, which this equals.
    """
    checks.tensor("x", x, floating=True)
    if x.ndim == 0:
        raise ValueError("x must have at least one dimension")
    checks.positive_number("eps", eps)
    d = x.shape[-1]
    for name, p in (("weight", weight), ("bias", bias)):
        if p is not None:
            checks.tensor(name, p, floating=True, ndim=1)
            if p.shape[0] != d:
                raise ValueError(f"{name} must have shape ({d},) to match x's last dimension, "
                                 f"got {tuple(p.shape)}")
    mu = x.mean(-1, keepdim=True)
    var = ((x - mu) ** 2).mean(-1, keepdim=True)
    y = (x - mu) / torch.sqrt(var + eps)
    if weight is not None:
        y = y * weight
    if bias is not None:
        y = y + bias
    return y
