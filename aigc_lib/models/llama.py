r"""The block that replaced GPT-2's: a Llama-style GPT in one file (chapter 7).

Four changes to :mod:`aigc_lib.models.gpt`, each a few lines, as in Llama (Touvron et al., 2023)
and most open models since:

- **RMSNorm** (Zhang and Sennrich, 2019) instead of LayerNorm: no centring and no bias,
  :math:`y = g \odot x / \sqrt{\overline{x^2} + \varepsilon}`;
- **rotary position embeddings**, RoPE (Su et al., 2021), instead of a learned table: queries
  and keys are rotated by an angle proportional to their position, so that their dot product
  depends on the *offset* between the two positions only;
- **SwiGLU** (Shazeer, 2020) instead of the GELU MLP: :math:`W_2(\operatorname{silu}(W_g x)
  \odot W_u x)`, with a hidden width of :math:`8d/3` so that its three matrices hold as many
  weights as GPT-2's two of width :math:`4d`;
- **no biases** in any linear layer;

and, optionally, **grouped-query attention** (Ainslie et al., 2023): ``n_kv_head < n_head`` heads
of keys and values, each shared by ``n_head // n_kv_head`` query heads.

Parameter names follow Hugging Face's ``LlamaForCausalLM``, so :func:`from_hf` copies a state
dict unchanged; ``tests/test_llama.py`` shows the logits agree with ``transformers`` to 1e-5.
The initialisation is GPT-2's (:class:`aigc_lib.models.gpt.GPT`), so that chapter 7 compares
the two blocks with everything else equal.
"""

from __future__ import annotations

import math
import os
from dataclasses import asdict, dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from aigc_lib import attention, checks

ATTENTION_PATHS = attention.PATHS


@dataclass
class LlamaConfig:
    """Hyper-parameters of a Llama-style GPT. ``n_kv_head`` defaults to ``n_head`` (no grouping),
    ``intermediate_size`` to :math:`\\mathrm{round}(8d/3)`."""
    vocab_size: int = 32000
    block_size: int = 2048          # longest context; RoPE has no table, this is a checked limit
    n_layer: int = 12
    n_head: int = 12
    n_embd: int = 768
    n_kv_head: int | None = None
    intermediate_size: int | None = None
    rope_theta: float = 10000.0
    rms_norm_eps: float = 1e-5
    dropout: float = 0.0            # on the attention weights only, as Hugging Face's Llama
    tie_word_embeddings: bool = True
    attention: str = "sdpa"         # "sdpa" (fused kernel) or "math" (aigc_lib.attention)

    def __post_init__(self) -> None:
        if self.n_kv_head is None:
            self.n_kv_head = self.n_head
        if self.intermediate_size is None:
            self.intermediate_size = round(8 * self.n_embd / 3)
        for name in ("vocab_size", "block_size", "n_layer", "n_head", "n_embd", "n_kv_head",
                     "intermediate_size"):
            checks.positive_number(name, getattr(self, name), integer=True)
        if self.n_embd % self.n_head or (self.n_embd // self.n_head) % 2:
            raise ValueError(f"n_embd ({self.n_embd}) must be divisible by n_head "
                             f"({self.n_head}) into heads of even size (RoPE rotates pairs)")
        if self.n_head % self.n_kv_head:
            raise ValueError(f"n_head ({self.n_head}) must be a multiple of n_kv_head "
                             f"({self.n_kv_head})")
        checks.positive_number("rope_theta", self.rope_theta)
        checks.positive_number("rms_norm_eps", self.rms_norm_eps)
        checks.positive_number("dropout", self.dropout, allow_zero=True)
        if self.dropout >= 1:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")
        if self.attention not in ATTENTION_PATHS:
            raise ValueError(f"attention must be one of {ATTENTION_PATHS}, got {self.attention!r}")

    @property
    def head_dim(self) -> int:
        return self.n_embd // self.n_head

    def to_dict(self) -> dict:
        return asdict(self)


class RMSNorm(nn.Module):
    r""":math:`y = g \odot x / \sqrt{\frac1d\sum_j x_j^2 + \varepsilon}`, computed in at least
    float32 precision (half-precision inputs are upcast, as Hugging Face does)."""

    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x32 = x.float() if x.dtype in (torch.float16, torch.bfloat16) else x
        normed = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * normed.to(x.dtype)


def rope_angles(n_positions: int, head_dim: int, theta: float = 10000.0,
                device: torch.device | str | None = None, dtype: torch.dtype = torch.float32
                ) -> tuple[torch.Tensor, torch.Tensor]:
    r"""``cos`` and ``sin`` of the rotary angles, each ``(n_positions, head_dim)``, computed in
    ``dtype`` (float32, as Hugging Face does, unless asked otherwise).

    Pair :math:`i < d/2` of a head (coordinates :math:`i` and :math:`i + d/2`, Hugging Face's
    layout) turns at frequency :math:`\omega_i = \theta^{-2i/d}`, so position :math:`p` is
    rotated by :math:`p\,\omega_i`; both halves of the last dimension repeat the same angles.
    """
    checks.positive_number("n_positions", n_positions, integer=True)
    checks.positive_number("head_dim", head_dim, integer=True)
    if head_dim % 2:
        raise ValueError(f"head_dim must be even (RoPE rotates pairs), got {head_dim}")
    inv_freq = 1.0 / theta ** (torch.arange(0, head_dim, 2, device=device, dtype=dtype)
                               / head_dim)
    angles = torch.arange(n_positions, device=device, dtype=dtype)[:, None] * inv_freq
    angles = torch.cat([angles, angles], dim=-1)
    return angles.cos(), angles.sin()


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    r"""Rotate each pair :math:`(x_i, x_{i+d/2})` of the last dimension of ``x`` ``(..., T, d)``
    by the angles whose ``cos``/``sin`` are ``(T, d)``:
    :math:`(x_i\cos\phi - x_{i+d/2}\sin\phi,\; x_{i+d/2}\cos\phi + x_i\sin\phi)`."""
    half = x.shape[-1] // 2
    rotated_half = torch.cat([-x[..., half:], x[..., :half]], dim=-1)
    return x * cos.to(x.dtype) + rotated_half * sin.to(x.dtype)


class Attention(nn.Module):
    """Causal self-attention with RoPE on queries and keys, optional grouped keys and values,
    and no biases."""

    def __init__(self, config: LlamaConfig):
        super().__init__()
        d, hd = config.n_embd, config.head_dim
        self.n_head, self.n_kv_head, self.head_dim = config.n_head, config.n_kv_head, hd
        self.dropout, self.path = config.dropout, config.attention
        self.q_proj = nn.Linear(d, config.n_head * hd, bias=False)
        self.k_proj = nn.Linear(d, config.n_kv_head * hd, bias=False)
        self.v_proj = nn.Linear(d, config.n_kv_head * hd, bias=False)
        self.o_proj = nn.Linear(config.n_head * hd, d, bias=False)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        B, T, _ = x.shape
        q = self.q_proj(x).view(B, T, self.n_head, self.head_dim).transpose(1, 2)
        k = self.k_proj(x).view(B, T, self.n_kv_head, self.head_dim).transpose(1, 2)
        v = self.v_proj(x).view(B, T, self.n_kv_head, self.head_dim).transpose(1, 2)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        group = self.n_head // self.n_kv_head       # query heads per key/value head
        k, v = k.repeat_interleave(group, dim=1), v.repeat_interleave(group, dim=1)
        p = self.dropout if self.training else 0.0
        y = attention.attend(q, k, v, self.path, is_causal=True, dropout_p=p)
        return self.o_proj(y.transpose(1, 2).reshape(B, T, -1))


class SwiGLU(nn.Module):
    r"""The gated MLP :math:`W_\text{down}(\operatorname{silu}(W_\text{gate}x) \odot W_\text{up}x)`."""

    def __init__(self, config: LlamaConfig):
        super().__init__()
        d, h = config.n_embd, config.intermediate_size
        self.gate_proj = nn.Linear(d, h, bias=False)
        self.up_proj = nn.Linear(d, h, bias=False)
        self.down_proj = nn.Linear(h, d, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class Block(nn.Module):
    """A pre-norm block, as GPT-2's but with RMSNorm: ``x + attn(norm(x))``, ``x + mlp(norm(x))``."""

    def __init__(self, config: LlamaConfig):
        super().__init__()
        self.input_layernorm = RMSNorm(config.n_embd, config.rms_norm_eps)
        self.self_attn = Attention(config)
        self.post_attention_layernorm = RMSNorm(config.n_embd, config.rms_norm_eps)
        self.mlp = SwiGLU(config)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        x = x + self.self_attn(self.input_layernorm(x), cos, sin)
        return x + self.mlp(self.post_attention_layernorm(x))


class Llama(nn.Module):
    """The Llama-style language model: ``forward(idx)`` maps ids ``(B, T)`` to logits ``(B, T, V)``."""

    def __init__(self, config: LlamaConfig):
        super().__init__()
        if not isinstance(config, LlamaConfig):
            raise TypeError(f"config must be a LlamaConfig, got {type(config).__name__}")
        self.config = config
        self.model = nn.ModuleDict(dict(
            embed_tokens=nn.Embedding(config.vocab_size, config.n_embd),
            layers=nn.ModuleList(Block(config) for _ in range(config.n_layer)),
            norm=RMSNorm(config.n_embd, config.rms_norm_eps),
        ))
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)
        if config.tie_word_embeddings:
            self.lm_head.weight = self.model.embed_tokens.weight
        for name, p in self.named_parameters():        # GPT-2's initialisation (see gpt.GPT)
            if p.ndim == 2:
                std = 0.02 / math.sqrt(2 * config.n_layer) if name.endswith(
                    ("o_proj.weight", "down_proj.weight")) else 0.02
                nn.init.normal_(p, mean=0.0, std=std)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        checks.token_ids("idx", idx, self.config.vocab_size)
        T = idx.shape[1]
        if T > self.config.block_size:
            raise ValueError(f"idx has {T} positions but the model's block_size is "
                             f"{self.config.block_size}")
        cos, sin = rope_angles(T, self.config.head_dim, self.config.rope_theta, idx.device)
        x = self.model.embed_tokens(idx)
        for block in self.model.layers:
            x = block(x, cos, sin)
        return self.lm_head(self.model.norm(x))


def count_parameters(config: LlamaConfig, embeddings: bool = True) -> int:
    r"""Parameters by formula: :math:`Vd` (embedding; another :math:`Vd` if the output layer is
    not tied) :math:`+\,L\,(2d^2 + 2d\,d_{kv} + 3dh + 2d) + d` with :math:`d_{kv}` = ``n_kv_head``
    × head size and :math:`h` the SwiGLU width. ``embeddings=False`` leaves out the embedding
    and an untied output layer (Kaplan et al.'s non-embedding count)."""
    if not isinstance(config, LlamaConfig):
        raise TypeError(f"config must be a LlamaConfig, got {type(config).__name__}")
    d, L, h = config.n_embd, config.n_layer, config.intermediate_size
    d_kv = config.n_kv_head * config.head_dim
    body = L * (2 * d * d + 2 * d * d_kv + 3 * d * h + 2 * d) + d
    head = config.vocab_size * d * (1 if config.tie_word_embeddings else 2)
    return body + (head if embeddings else 0)


def flops_per_token(config: LlamaConfig, seq_len: int | None = None, training: bool = True) -> int:
    r"""Matrix-multiply FLOPs per token, by the convention of
    :func:`aigc_lib.models.gpt.flops_per_token`: :math:`C_\text{forward} = 2N_\text{mm} + 4LTd`
    with :math:`N_\text{mm} = L(2d^2 + 2d\,d_{kv} + 3dh) + Vd`, and three times that to train.
    RoPE, RMSNorm and the SwiGLU product are elementwise and left out."""
    if not isinstance(config, LlamaConfig):
        raise TypeError(f"config must be a LlamaConfig, got {type(config).__name__}")
    T = config.block_size if seq_len is None else checks.positive_number("seq_len", seq_len,
                                                                          integer=True)
    d, L, h = config.n_embd, config.n_layer, config.intermediate_size
    d_kv = config.n_kv_head * config.head_dim
    n_mm = L * (2 * d * d + 2 * d * d_kv + 3 * d * h) + config.vocab_size * d
    forward = 2 * n_mm + 4 * L * T * d
    return 3 * forward if training else forward


# ------------------------------------------------------------- Hugging Face Llama weights


def config_from_hf(hf_config, attention: str = "sdpa") -> LlamaConfig:
    """A :class:`LlamaConfig` equal to a ``transformers.LlamaConfig``; raises ``ValueError`` for
    variants this module does not implement (biases, other activations or RoPE scalings)."""
    from transformers import LlamaConfig as HFLlamaConfig

    if not isinstance(hf_config, HFLlamaConfig):
        raise TypeError(f"hf_config must be a transformers.LlamaConfig, got "
                        f"{type(hf_config).__name__}")
    rope = dict(hf_config.rope_parameters or {})
    head_dim = getattr(hf_config, "head_dim", None)
    unsupported = {
        "attention_bias": hf_config.attention_bias, "mlp_bias": hf_config.mlp_bias,
        "hidden_act": hf_config.hidden_act != "silu",
        "rope_parameters": rope.get("rope_type", "default") != "default",
        "head_dim": head_dim not in (None, hf_config.hidden_size // hf_config.num_attention_heads),
    }
    bad = [k for k, v in unsupported.items() if v]
    if bad:
        raise ValueError(f"hf_config uses Llama options this model does not implement: "
                         f"{ {k: getattr(hf_config, k) for k in bad} }")
    return LlamaConfig(vocab_size=hf_config.vocab_size,
                       block_size=hf_config.max_position_embeddings,
                       n_layer=hf_config.num_hidden_layers, n_head=hf_config.num_attention_heads,
                       n_embd=hf_config.hidden_size, n_kv_head=hf_config.num_key_value_heads,
                       intermediate_size=hf_config.intermediate_size,
                       rope_theta=float(rope.get("rope_theta", 10000.0)),
                       rms_norm_eps=hf_config.rms_norm_eps, dropout=hf_config.attention_dropout,
                       tie_word_embeddings=bool(hf_config.tie_word_embeddings),
                       attention=attention)


def hf_config(config: LlamaConfig):
    """The ``transformers.LlamaConfig`` of a :class:`LlamaConfig` (inverse of :func:`config_from_hf`)."""
    from transformers import LlamaConfig as HFLlamaConfig

    if not isinstance(config, LlamaConfig):
        raise TypeError(f"config must be a LlamaConfig, got {type(config).__name__}")
    return HFLlamaConfig(vocab_size=config.vocab_size, hidden_size=config.n_embd,
                         intermediate_size=config.intermediate_size,
                         num_hidden_layers=config.n_layer, num_attention_heads=config.n_head,
                         num_key_value_heads=config.n_kv_head,
                         max_position_embeddings=config.block_size,
                         rms_norm_eps=config.rms_norm_eps,
                         rope_parameters={"rope_type": "default", "rope_theta": config.rope_theta},
                         attention_dropout=config.dropout,
                         tie_word_embeddings=config.tie_word_embeddings)


def from_hf(source, attention: str = "sdpa") -> Llama:
    """Our :class:`Llama` with the weights of a ``transformers.LlamaForCausalLM`` (or of a folder
    saved by its ``save_pretrained``; no remote code is ever run)."""
    from transformers import LlamaForCausalLM

    if isinstance(source, (str, os.PathLike)):
        source = LlamaForCausalLM.from_pretrained(source, trust_remote_code=False)
    if not isinstance(source, LlamaForCausalLM):
        raise TypeError(f"source must be a LlamaForCausalLM or a folder, got "
                        f"{type(source).__name__}")
    model = Llama(config_from_hf(source.config, attention=attention))
    state = {k: v for k, v in source.state_dict().items() if not k.endswith("rotary_emb.inv_freq")}
    model.load_state_dict(state, strict=True)
    return model.to(next(source.parameters()).device)


def to_hf(model: Llama):
    """A ``transformers.LlamaForCausalLM`` with our model's weights (inverse of :func:`from_hf`)."""
    from transformers import LlamaForCausalLM

    if not isinstance(model, Llama):
        raise TypeError(f"model must be an aigc_lib.models.llama.Llama, got {type(model).__name__}")
    hf = LlamaForCausalLM(hf_config(model.config))
    hf.load_state_dict({k: v.detach().cpu() for k, v in model.state_dict().items()}, strict=True)
    return hf.eval()
