"""Tokens per second and model FLOPs utilisation (MFU) of the GPT training step (chapter 7).

    python benchmarks/gpt_mfu.py                    # GPT-2 small on CUDA (bf16, compile, SDPA)
    python benchmarks/gpt_mfu.py --preset cpu-tiny  # chapter 7's cpu model: tokens/s only
    python benchmarks/gpt_mfu.py --preset chapter-gpu  # chapter 7's gpu model

On the CPU it uses one thread unless ``--threads`` says otherwise.

One training step is what ``aigc_lib.training.fit`` does for chapter 7: forward and loss under
bf16 autocast, backward, gradient clipping, a fused AdamW step. FLOPs per token come from
``aigc_lib.models.gpt.flops_per_token`` (6 N_mm + 12 L T d, checked against PyTorch's FLOP
counter in tests/test_gpt.py); MFU = achieved FLOP/s / the device's peak dense bf16 FLOP/s.
The peak is looked up by device name on a GPU; on the CPU it is measured (the best rate of
512 x 512 float32 matrix products on the same threads, ``aigc_lib.scaling.matmul_peak_flops``,
as chapter 7 does); on an unknown GPU without ``--peak-tflops`` only tokens/s and FLOP/s are
printed.
"""
from __future__ import annotations

import argparse
import json
import time

import torch

from aigc_lib import pretrained, runtime, scaling
from aigc_lib.models import gpt

# Dense bf16 tensor-core peaks from the vendors' data sheets, FLOP/s (no structured sparsity).
PEAK_BF16_FLOPS = {
    "H100 SXM": 989e12, "H100 80GB HBM3": 989e12, "H200": 989e12, "GH200": 989e12,
    "H100 PCIe": 756e12, "H100 NVL": 835e12,
    "A100": 312e12, "L4": 121e12, "A10G": 70e12, "T4": 65e12,
}

def _chapter_preset(profile: str) -> dict:
    r = pretrained.recipe("bpe", profile)
    return dict(config=dict(vocab_size=r.vocab_size, block_size=r.block_size, n_layer=r.n_layer,
                            n_head=r.n_head, n_embd=r.n_embd), batch_size=r.batch_size)


PRESETS = {
    # GPT-2 small at its full context (vocabulary padded to a multiple of 64): big enough for
    # the GPU's tensor cores to be busy
    "gpt2-small": dict(config=dict(vocab_size=50304, block_size=1024, n_layer=12, n_head=12,
                                   n_embd=768), batch_size=32),
    # chapter 7's models (aigc_lib.pretrained recipes; dropout left out)
    "cpu-tiny": _chapter_preset("cpu"),
    "chapter-gpu": _chapter_preset("gpu"),
}


def peak_flops(device: torch.device, override_tflops: float | None) -> float | None:
    if override_tflops is not None:
        return override_tflops * 1e12
    if device.type != "cuda":
        return scaling.matmul_peak_flops()
    name = torch.cuda.get_device_name(device)
    for key in sorted(PEAK_BF16_FLOPS, key=len, reverse=True):   # most specific name first
        if key in name or key.replace(" ", "") in name.replace(" ", ""):
            return PEAK_BF16_FLOPS[key]
    if "H100" in name:          # an H100 variant not listed: assume the SXM figure, say so
        print(f"note: {name!r} not in the table; using the H100 SXM peak")
        return PEAK_BF16_FLOPS["H100 SXM"]
    return None


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--preset", choices=sorted(PRESETS), default=None)
    parser.add_argument("--batch-size", type=int, default=None)
    parser.add_argument("--steps", type=int, default=30, help="timed steps")
    parser.add_argument("--warmup", type=int, default=10, help="untimed steps (compilation)")
    parser.add_argument("--no-compile", action="store_true")
    parser.add_argument("--attention", choices=gpt.ATTENTION_PATHS, default="sdpa")
    parser.add_argument("--threads", type=int, default=1,
                        help="CPU threads for torch (0 keeps PyTorch's default); on a busy "
                             "machine several threads mostly wait for each other")
    parser.add_argument("--peak-tflops", type=float, default=None,
                        help="the device's peak FLOP/s in TFLOP/s, if not in the table")
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    dev = runtime.device()
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    preset = PRESETS[args.preset or ("gpt2-small" if dev.type == "cuda" else "cpu-tiny")]
    config = gpt.GPTConfig(**preset["config"], attention=args.attention)
    batch_size = args.batch_size or preset["batch_size"]
    runtime.seed_everything(0)
    model = gpt.GPT(config).to(dev)
    cuda = dev.type == "cuda"
    if cuda:
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-4, betas=(0.9, 0.95),
                                  weight_decay=0.1, fused=cuda)
    if cuda and not args.no_compile:
        model.compile()
    tokens = torch.randint(0, config.vocab_size, (batch_size, config.block_size + 1), device=dev)
    bf16 = cuda and torch.cuda.is_bf16_supported()
    if cuda and not bf16:
        print("note: this GPU has no bf16 support; timing in float32 (TF32 matmuls)")
    autocast = torch.autocast("cuda", dtype=torch.bfloat16, enabled=bf16) if cuda else \
        torch.autocast("cpu", enabled=False)

    def step() -> torch.Tensor:
        with autocast:
            loss = gpt.lm_loss(model, tokens)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        return loss

    for _ in range(args.warmup):
        step()
    if cuda:
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(args.steps):
        loss = step()
    loss.item()
    if cuda:
        torch.cuda.synchronize()
    seconds = (time.perf_counter() - start) / args.steps

    tokens_per_step = batch_size * config.block_size
    flops_per_token = gpt.flops_per_token(config)
    achieved = flops_per_token * tokens_per_step / seconds
    peak = peak_flops(dev, args.peak_tflops)
    report = {
        "device": torch.cuda.get_device_name(dev) if cuda else f"cpu ({torch.get_num_threads()} threads)",
        "preset": args.preset or ("gpt2-small" if cuda else "cpu-tiny"),
        "parameters": gpt.count_parameters(config), "batch_size": batch_size,
        "block_size": config.block_size, "compile": cuda and not args.no_compile,
        "bf16_autocast": bf16, "attention": args.attention,
        "ms_per_step": round(1e3 * seconds, 2),
        "tokens_per_s": round(tokens_per_step / seconds),
        "flops_per_token": flops_per_token,
        "achieved_tflops": round(achieved / 1e12, 3),
    }
    if peak is not None:
        report["peak_tflops"] = round(peak / 1e12, 4)
        report["peak_source"] = "measured matmul" if not cuda and args.peak_tflops is None \
            else "data sheet or --peak-tflops"
        report["mfu"] = round(achieved / peak, 4)
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
