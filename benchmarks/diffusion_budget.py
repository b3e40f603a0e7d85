"""Which learning rate should each family get at chapter 5's equal training budget?

Chapter 5 trains a VAE, a GAN (with the R1 penalty) and a diffusion model on the 8x8 digits with
the same number of training FLOPs (the FLOPs of `--budget-steps` steps of the diffusion model,
counted with `aigc_lib.costs.count_flops`), batches of 128, and compares their Fréchet distances
to held-out digits (`aigc_lib.judge`). A short budget favours large learning rates, so each
family gets the same courtesy: three or four learning rates (a grid widened until its best
value was inside it), trained at seed 0, scored by the Fréchet
distance of 180 samples (32 DDIM or Heun evaluations for the diffusion and flow models). The script
prints one line per run and the best rate of each family:

    family      lr       steps  seconds   FD
    ...
    best: diffusion 0.01, flow ..., vae ..., gan ...

Usage: python benchmarks/diffusion_budget.py [--budget-steps 400] [--threads 1]
       [--families diffusion flow vae gan]

The chapter uses the rates this prints (on the cpu profile's budget); rerun it when the budget
or the architectures change.
"""
from __future__ import annotations

import argparse

import torch

from aigc_lib import costs, data, judge, losses, optim, runtime
from aigc_lib.models import diffusion as dm
from aigc_lib.models.gan import Discriminator, Generator
from aigc_lib.models.vae import VAE, VAEConfig
from aigc_lib.training import fit, fit_gan

RATES = {"diffusion": (1e-2, 2e-2, 4e-2, 8e-2), "flow": (5e-3, 1e-2, 2e-2, 4e-2),
         "vae": (5e-3, 1e-2, 2e-2, 4e-2), "gan": (1e-3, 2e-3, 4e-3, 8e-3, 1.6e-2)}
BATCH = 128


def adam(model, lr, steps, betas=(0.9, 0.999)):
    opt = torch.optim.Adam(model.parameters(), lr=lr, betas=betas)
    return opt, optim.warmup_cosine_scheduler(opt, min(100, steps // 10), steps, 0.02)


def train(family, lr, steps, x01, schedule):
    """Train one model of `family`; return a function that draws n images in [0, 1]."""
    runtime.seed_everything(0)
    if family == "gan":
        gen, disc = Generator(16, 64, hidden=256, output="sigmoid"), Discriminator(64, 256)
        (g_opt, g_sched), (d_opt, d_sched) = (adam(n, lr, steps, (0.5, 0.999))
                                              for n in (gen, disc))

        def d_loss(d, real, fake):
            real = real.detach().requires_grad_(True)
            logits = d(torch.cat([real, fake]))
            real_logits, fake_logits = logits[:len(real)], logits[len(real):]
            return (losses.gan_discriminator_loss(real_logits, fake_logits)
                    + 0.5 * losses.r1_penalty(real_logits, real))
        fit_gan(gen, disc, x01, g_optimizer=g_opt, d_optimizer=d_opt, g_scheduler=g_sched,
                d_scheduler=d_sched, d_loss_fn=d_loss, steps=steps, batch_size=BATCH,
                progress=False)
        return gen.eval().sample
    if family == "vae":
        model = VAE(VAEConfig(64, 8, 256))

        def loss_fn(m, xb):
            logits, mu, logvar = m(xb)
            return losses.vae_loss(logits, xb, mu, logvar, beta=1 / 16)[0]
        batches = x01
    else:
        net = dm.MLPDenoiser(64, 128, 2)
        model = dm.FlowModel(net) if family == "flow" else dm.DiffusionModel(net, schedule)
        loss_fn, batches = (lambda m, xb: m.loss(xb)), 2 * x01 - 1
    opt, sched = adam(model, lr, steps)
    fit(model, batches, loss_fn=loss_fn, optimizer=opt, scheduler=sched, steps=steps,
        batch_size=BATCH, progress=False)
    model.eval()
    if family == "vae":
        return model.sample
    noise = torch.randn(180, 64, generator=torch.Generator().manual_seed(1))
    if family == "flow":
        return lambda n: (model.sample(noise[:n], 32, method="heun").clamp(-1, 1) + 1) / 2
    return lambda n: (model.sample_ddim(noise[:n], 32, clip=True) + 1) / 2


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--budget-steps", type=int, default=400)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--families", nargs="+", default=list(RATES), choices=list(RATES))
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    x01, _ = data.digits("train")
    schedule = dm.noise_schedule("cosine", 250, first_std=1 / 16)
    referee = judge.train_judge()
    step_flops = {family: costs.count_flops(train, family, 1e-3, 1, x01, schedule)[1]
                  for family in {"diffusion", *args.families}}
    budget = args.budget_steps * step_flops["diffusion"]
    print(f"budget {budget:.3g} FLOPs; {'family':10s} {'lr':>7s} {'steps':>6s} {'FD':>7s}")
    best = {}
    for family in args.families:
        steps = round(budget / step_flops[family])
        for lr in RATES[family]:
            try:
                sample = train(family, lr, steps, x01, schedule)
                with torch.no_grad():
                    fd = judge.frechet_to_heldout(referee, sample(180))
            except FloatingPointError:      # diverged: the rate is too large
                fd = float("inf")
            print(f"{family:10s} {lr:7.0e} {steps:6d} {fd:7.2f}", flush=True)
            if family not in best or fd < best[family][1]:
                best[family] = (lr, fd)
    print("best:", ", ".join(f"{f} {lr:g}" for f, (lr, _) in best.items()))


if __name__ == "__main__":
    main()
