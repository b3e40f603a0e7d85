r"""The book's own pretrained GPT: trained on first use, cached, shared (chapters 7 and 8).

No causal language model ships offline, so chapter 7 pretrains one on Python's documentation
(:func:`aigc_lib.data.python_docs`) and this module caches it. The first call of :func:`load` or
:func:`small_gpt` trains it (fixed seeds and a fixed data order: bit for bit reproducible on the
CPU; on a GPU fused kernels may round differently from run to run), later calls load it. A file lock makes parallel notebook runs wait for one training instead of racing.

The cache folder (under :func:`aigc_lib.runtime.cache_dir`) is a Hugging Face model folder, so
the fine-tuning chapter starts from it exactly as it would start from ``gpt2``::

    from transformers import AutoModelForCausalLM, AutoTokenizer
    from aigc_lib import pretrained

    path = pretrained.small_gpt()                      # trains on first use (cpu profile: ~1 min)
    model = AutoModelForCausalLM.from_pretrained(path)  # a GPT2LMHeadModel
    tokenizer = AutoTokenizer.from_pretrained(path)     # byte-level BPE, eos = "<|endoftext|>"

It also holds this library's own files: ``gpt.safetensors`` and ``gpt_config.json`` (the same
weights for :class:`aigc_lib.models.gpt.GPT`), ``recipe.json`` and ``history.json``. The folder
name contains a hash of the recipe, the corpus, the tokenizer kind and how the model was trained
(device and precision, :func:`trained_on`): changing any of them trains a new model instead of
loading a stale one, and a bf16 model trained on a GPU never stands in for the float32 CPU model.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from aigc_lib import checkpoint, data, metrics, optim, runtime, training
from aigc_lib.models import gpt, llama

CACHE_VERSION = 1          # bump when the training code changes what a recipe produces
TOKENIZERS = ("bpe", "byte")
BLOCKS = ("gpt2", "llama")    # GPT-2's block, or the Llama-style one (chapter 7)


@dataclass(frozen=True)
class Recipe:
    """Everything that determines the pretrained model: tokenizer, architecture, optimisation."""
    vocab_size: int            # 257 = byte level (no merges); more = byte-level BPE
    n_layer: int
    n_head: int
    n_embd: int
    block_size: int
    dropout: float
    steps: int
    batch_size: int            # windows of block_size + 1 tokens per step
    lr: float                  # peak learning rate of AdamW
    warmup_steps: int
    min_lr_ratio: float        # the cosine decays to lr * min_lr_ratio
    weight_decay: float        # on matrices and embeddings; not on biases and LayerNorm gains
    clip_grad_norm: float
    eval_every: int
    seed: int = 0

    def gpt_config(self, attention: str = "sdpa") -> gpt.GPTConfig:
        return gpt.GPTConfig(vocab_size=self.vocab_size, block_size=self.block_size,
                             n_layer=self.n_layer, n_head=self.n_head, n_embd=self.n_embd,
                             dropout=self.dropout, attention=attention)

    @property
    def tokens_per_step(self) -> int:
        return self.batch_size * self.block_size


# The cpu recipes fit the book's budget on one CPU thread (about a minute in all) and were
# chosen on the "fit"/"val" split of the training text, never on the test text: at a fixed
# compute budget, 3 layers beat 4 and 6 (in our sweep, validation bits per byte 1.86 vs 1.94), a
# 2048-token vocabulary trains faster per second than 4096 for the same quality, and batches
# of 8 windows beat 16 and 32.
RECIPES: dict[tuple[str, str], Recipe] = {
    ("bpe", "cpu"): Recipe(vocab_size=2048, n_layer=3, n_head=4, n_embd=128, block_size=128,
                           dropout=0.0, steps=640, batch_size=8, lr=3e-3, warmup_steps=32,
                           min_lr_ratio=0.1, weight_decay=0.1, clip_grad_norm=1.0, eval_every=128),
    # the byte-level model is the same network with a 257-symbol vocabulary, trained for fewer
    # steps: chapter 7 compares the two at equal training compute (170 byte-level steps cost a
    # little more than the BPE model's first 128)
    ("byte", "cpu"): Recipe(vocab_size=257, n_layer=3, n_head=4, n_embd=128, block_size=128,
                            dropout=0.0, steps=170, batch_size=8, lr=3e-3, warmup_steps=8,
                            min_lr_ratio=0.1, weight_decay=0.1, clip_grad_norm=1.0, eval_every=85),
    # gpu: ~12M parameters with dropout, bf16 autocast, torch.compile and fused AdamW (see
    # train); the corpus is small (about 110k BPE tokens), so this is already ~45 epochs.
    ("bpe", "gpu"): Recipe(vocab_size=4096, n_layer=6, n_head=6, n_embd=384, block_size=256,
                           dropout=0.2, steps=600, batch_size=32, lr=1e-3, warmup_steps=50,
                           min_lr_ratio=0.1, weight_decay=0.1, clip_grad_norm=1.0, eval_every=50),
    ("byte", "gpu"): Recipe(vocab_size=257, n_layer=6, n_head=6, n_embd=384, block_size=256,
                            dropout=0.2, steps=300, batch_size=32, lr=1e-3, warmup_steps=25,
                            min_lr_ratio=0.1, weight_decay=0.1, clip_grad_norm=1.0, eval_every=50),
}


def recipe(tokenizer: str = "bpe", profile: str | None = None) -> Recipe:
    """The recipe for ``tokenizer`` (``"bpe"`` or ``"byte"``) on the run profile (cpu/gpu)."""
    if tokenizer not in TOKENIZERS:
        raise ValueError(f"tokenizer must be one of {TOKENIZERS}, got {tokenizer!r}")
    return RECIPES[(tokenizer, runtime.profile(profile))]


@dataclass
class Pretrained:
    """What :func:`load` returns."""
    model: gpt.GPT
    tokenizer: object          # a tokenizers.Tokenizer
    history: training.History
    recipe: Recipe
    folder: Path               # the Hugging Face model folder
    trained_now: bool          # True when this call trained the model, False when it loaded it


def heldout_bits_per_byte(model: gpt.GPT, tokenizer, text: str, stride: int | None = None) -> float:
    r"""Bits per byte of ``text`` under ``model``: the text is tokenised with an end-of-text token
    in front, every token is scored (:func:`aigc_lib.models.gpt.sequence_nll`, windows advancing
    by ``stride``), and the total is divided by :math:`\ln 2` times the text's UTF-8 length
    (:func:`aigc_lib.metrics.bits_per_byte`; chapter 7)."""
    if not isinstance(text, str) or not text:
        raise ValueError("text must be a non-empty str")
    nll, _ = gpt.sequence_nll(model, data.encode(tokenizer, text), stride=stride)
    return metrics.bits_per_byte(nll, len(text.encode()))


def _param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    decay = [p for p in model.parameters() if p.ndim >= 2]
    no_decay = [p for p in model.parameters() if p.ndim < 2]
    return [{"params": decay, "weight_decay": weight_decay},
            {"params": no_decay, "weight_decay": 0.0}]


@functools.lru_cache(maxsize=2)
def corpus(vocab_size: int) -> tuple[object, torch.Tensor, torch.Tensor]:
    """The BPE tokenizer with ``vocab_size`` tokens trained on the training split of
    :func:`aigc_lib.data.python_docs`, and the token ids of the training and held-out text (each
    with an end-of-text token in front); computed once per process and vocabulary size."""
    train_text, test_text = data.python_docs("train"), data.python_docs("test")
    tokenizer = data.train_bpe(train_text, vocab_size)
    return tokenizer, data.encode(tokenizer, train_text), data.encode(tokenizer, test_text)


def build_model(r: Recipe, vocab_size: int, block: str = "gpt2") -> torch.nn.Module:
    """The untrained network of recipe ``r``: GPT-2's block (:class:`aigc_lib.models.gpt.GPT`) or
    the Llama-style block (:class:`aigc_lib.models.llama.Llama`, SwiGLU of width round(8d/3))
    with the same width, depth, heads and context, seeded by ``r.seed``."""
    if block not in BLOCKS:
        raise ValueError(f"block must be one of {BLOCKS}, got {block!r}")
    runtime.seed_everything(r.seed)
    if block == "gpt2":
        config = r.gpt_config()
        config.vocab_size = vocab_size
        return gpt.GPT(config)
    return llama.Llama(llama.LlamaConfig(vocab_size=vocab_size, block_size=r.block_size,
                                         n_layer=r.n_layer, n_head=r.n_head, n_embd=r.n_embd,
                                         dropout=r.dropout))


def trained_on(device: str | torch.device | None = None) -> dict[str, str]:
    """How :func:`train` would train on ``device`` (default :func:`aigc_lib.runtime.device`):
    the device type and the precision (bf16 autocast on a CUDA GPU that supports it, float32
    otherwise). Part of every cache key: a model trained in bf16 on a GPU is not the float32
    CPU model, whatever the profile."""
    dev = runtime.device(device)
    bf16 = dev.type == "cuda" and torch.cuda.is_bf16_supported()
    return {"device": dev.type, "precision": "bf16-autocast" if bf16 else "float32"}


def train(r: Recipe, checkpoint_path: str | os.PathLike | None = None, progress: bool = True,
          device: str | None = None, block: str = "gpt2", compile_model: bool | None = None,
          eval_stride: int | None = None) -> tuple[torch.nn.Module, object, training.History]:
    """Pretrain a GPT by recipe ``r`` on the training split of :func:`aigc_lib.data.python_docs`:
    a tokenizer, random windows of ``block_size + 1`` tokens, AdamW with warm-up and cosine decay,
    gradient clipping, :func:`aigc_lib.training.fit` (bf16 autocast and ``torch.compile`` on CUDA,
    unless ``compile_model=False``). ``block`` picks GPT-2's block or the Llama-style one
    (:func:`build_model`). The held-out bits per byte is recorded at every evaluation point as
    ``test_bpb``, scored in windows that advance by ``eval_stride`` tokens (default
    ``block_size``: separate windows, quick; ``block_size // 2`` scores as
    :func:`heldout_bits_per_byte` does)."""
    if not isinstance(r, Recipe):
        raise TypeError(f"r must be a Recipe, got {type(r).__name__}")
    dev = runtime.device(device)
    tokenizer, train_ids, test_ids = corpus(r.vocab_size)
    windows = data.token_windows(train_ids, r.block_size + 1)
    test_bytes = len(data.python_docs("test").encode())

    # BPE may stop early if no pair is left to merge, so the vocabulary is the tokenizer's
    model = build_model(r, tokenizer.get_vocab_size(), block).to(dev)
    fused = {"fused": True} if dev.type == "cuda" else {}
    opt = torch.optim.AdamW(_param_groups(model, r.weight_decay), lr=r.lr, betas=(0.9, 0.95),
                            **fused)
    sched = optim.warmup_cosine_scheduler(opt, r.warmup_steps, r.steps, r.min_lr_ratio)
    if dev.type == "cuda" and compile_model is not False:
        torch.set_float32_matmul_precision("high")
        model.compile()                 # compiles forward in place; state_dict names unchanged

    def test_bpb(m: torch.nn.Module) -> dict[str, float]:
        nll, _ = gpt.sequence_nll(m, test_ids, stride=eval_stride or r.block_size)
        return {"test_bpb": metrics.bits_per_byte(nll, test_bytes)}

    history = training.fit(model, windows, loss_fn=gpt.lm_loss, optimizer=opt, scheduler=sched,
                           steps=r.steps, batch_size=r.batch_size, eval_every=r.eval_every,
                           evaluate=test_bpb, clip_grad_norm=r.clip_grad_norm, device=dev,
                           checkpoint=checkpoint_path, seed=r.seed, progress=progress,
                           desc=f"pretrain {block} ({tokenizer.get_vocab_size()} tokens)")
    return model.eval(), tokenizer, history


def cache_key(**spec: object) -> str:
    """A short hash of ``spec`` (JSON-serialisable), the corpus, :data:`CACHE_VERSION` and how
    training runs here (:func:`trained_on`): the name of a cached result that changes whenever
    anything that determines it changes."""
    corpus_hash = hashlib.sha256(data.python_docs("all").encode()).hexdigest()
    full = dict(spec, version=CACHE_VERSION, corpus=corpus_hash, trained_on=trained_on())
    return hashlib.sha256(json.dumps(full, sort_keys=True).encode()).hexdigest()[:12]


def _key(tokenizer: str, r: Recipe) -> str:
    return cache_key(tokenizer=tokenizer, recipe=asdict(r))


def folder(tokenizer: str = "bpe", profile: str | None = None,
           custom: Recipe | None = None) -> Path:
    """Where the model for ``tokenizer`` and ``profile`` (or the ``custom`` recipe) is, or will
    be, cached."""
    name = runtime.profile(profile)
    r = recipe(tokenizer, name) if custom is None else _custom(custom)
    return runtime.cache_dir("pretrained") / f"gpt-{tokenizer}-{name}-{_key(tokenizer, r)}"


def _custom(r: object) -> Recipe:
    if not isinstance(r, Recipe):
        raise TypeError(f"custom must be a pretrained.Recipe or None, got {type(r).__name__}")
    return r


def _export(path: Path, model: gpt.GPT, tokenizer, r: Recipe, history: training.History) -> None:
    from transformers import PreTrainedTokenizerFast
    from transformers.utils import logging as hf_logging

    path.mkdir(parents=True)
    eot = tokenizer.token_to_id(data.END_OF_TEXT)
    model = model.float().cpu()
    hf_logging.disable_progress_bar()
    gpt.to_hf(model, bos_token_id=eot, eos_token_id=eot).save_pretrained(path)
    PreTrainedTokenizerFast(tokenizer_object=tokenizer, bos_token=data.END_OF_TEXT,
                            eos_token=data.END_OF_TEXT, unk_token=data.END_OF_TEXT,
                            model_max_length=model.config.block_size).save_pretrained(path)
    checkpoint.save_weights(model, path / "gpt.safetensors")
    config = dict(model.config.to_dict(), attention="sdpa")
    (path / "gpt_config.json").write_text(json.dumps(config, indent=1))
    (path / "recipe.json").write_text(json.dumps(asdict(r), indent=1))
    (path / "history.json").write_text(json.dumps(history.to_dict()))


def _read(path: Path, r: Recipe, trained_now: bool, device: str | None) -> Pretrained:
    from tokenizers import Tokenizer

    config = gpt.GPTConfig(**json.loads((path / "gpt_config.json").read_text()))
    model = checkpoint.load_weights(gpt.GPT(config), path / "gpt.safetensors")
    history = training.History.from_dict(json.loads((path / "history.json").read_text()))
    return Pretrained(model=model.to(runtime.device(device)).eval(),
                      tokenizer=Tokenizer.from_file(str(path / "tokenizer.json")),
                      history=history, recipe=r, folder=path, trained_now=trained_now)


def load(tokenizer: str = "bpe", profile: str | None = None, progress: bool = True,
         device: str | None = None, custom: Recipe | None = None) -> Pretrained:
    """The pretrained GPT for ``tokenizer`` (``"bpe"`` or ``"byte"``) and the run profile: loaded
    from the cache, or trained by :func:`train` on first use and cached (chapter 7).

    Training runs on :func:`aigc_lib.runtime.device` (the GPU when there is one) under a file
    lock, so parallel callers wait for one training; an interrupted training resumes from its
    checkpoint. The returned model is in eval mode on ``device`` (default: the same device).
    ``custom`` trains and caches another recipe instead (chapter 11's draft model for
    speculative decoding); its folder name hashes the recipe, so each recipe is its own model.
    """
    r = recipe(tokenizer, profile) if custom is None else _custom(custom)
    path = folder(tokenizer, profile, custom)
    from filelock import FileLock

    with FileLock(str(path) + ".lock"):
        if (path / "history.json").exists():
            return _read(path, r, trained_now=False, device=device)
        staging = path.with_name(path.name + ".partial")   # the resumable training checkpoint
        model, tok, history = train(r, staging / "train.safetensors", progress=progress)
        with runtime.atomic_path(path) as complete:
            _export(complete, model, tok, r, history)
        shutil.rmtree(staging)                              # optimizer state: not needed any more
        return _read(path, r, trained_now=True, device=device)


def small_gpt(tokenizer: str = "bpe", profile: str | None = None, progress: bool = True) -> Path:
    """The folder of the book's pretrained GPT in Hugging Face format, for
    ``AutoModelForCausalLM.from_pretrained`` and ``AutoTokenizer.from_pretrained`` (chapters 7–8);
    trains and caches the model on first use (see :func:`load`).

    The folder holds ``config.json``, ``generation_config.json`` and ``model.safetensors`` (a
    ``GPT2LMHeadModel``), ``tokenizer.json`` and ``tokenizer_config.json`` (a fast byte-level BPE
    tokenizer whose bos, eos and unk token is ``"<|endoftext|>"``, id 0; like ``gpt2`` it has no
    padding token), and this library's
    ``gpt.safetensors``, ``gpt_config.json``, ``recipe.json`` and ``history.json``.
    """
    path = folder(tokenizer, profile)
    if (path / "history.json").exists():
        return path
    return load(tokenizer, profile, progress=progress, device="cpu").folder
