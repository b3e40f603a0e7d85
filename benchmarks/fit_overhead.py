"""How much does `aigc_lib.training.fit` cost over a minimal hand-written PyTorch loop?

Both train the same MLP (from the same initial weights) on scikit-learn's digits for the same
number of steps, with the same optimiser and the same shuffled batch order, so they do the same
arithmetic: the script checks that their final weights are identical. The two are timed in
`--repeats` pairs of short runs, in the order hand/fit, fit/hand, hand/fit, ... (so that neither
always runs second, on a cache the other warmed), and the script prints the median of the
per-pair ratios with a bootstrap 95 % interval over the pairs:

    ratio fit/hand-written: X.XX (95% interval A.AA-B.BB over N pairs)

Many short pairs rather than a few long ones: on a shared machine the speed of the CPU drifts by
tens of percent within seconds, and a pair measured within a fraction of a second sees one speed.

Usage: python benchmarks/fit_overhead.py [--epochs 10] [--repeats 41] [--hidden 128] [--threads 1]

By default PyTorch uses one CPU thread here, as the book's chapters do for their small models:
with several threads, timings on a busy machine are dominated by threads waiting for each other.
`--threads 0` keeps PyTorch's default.
"""
from __future__ import annotations

import argparse
import random
import statistics
import time

import torch
import torch.nn.functional as F

from aigc_lib import data, runtime
from aigc_lib.training import fit


def make_model(hidden: int) -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(64, hidden), torch.nn.ReLU(),
                               torch.nn.Linear(hidden, 10))


def loss_fn(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(model(x), y)


def hand_written(model, x, y, epochs, batch_size, seed, dev):
    """The loop everyone writes: shuffle, slice a batch, forward, backward, step."""
    model.to(dev).train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    order_rng = torch.Generator().manual_seed(seed)
    losses = []
    for _ in range(epochs):
        order = torch.randperm(len(x), generator=order_rng)
        for start in range(0, len(x), batch_size):
            index = order[start:start + batch_size]
            loss = loss_fn(model, x[index].to(dev), y[index].to(dev))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            losses.append(loss.detach())
    return torch.stack(losses).tolist()


def with_fit(model, x, y, epochs, batch_size, seed, dev):
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    history = fit(model, (x, y), loss_fn=loss_fn, optimizer=opt, epochs=epochs,
                  batch_size=batch_size, seed=seed, device=dev)
    return history.step_losses


def timed(run, hidden, x, y, args, dev):
    """Wall-clock and process CPU seconds of one training run, the model, and its losses."""
    model = make_model(hidden)
    start, start_cpu = time.perf_counter(), time.process_time()
    losses = run(model, x, y, args.epochs, args.batch_size, 0, dev)
    if dev.type == "cuda":
        torch.cuda.synchronize()
    return (time.perf_counter() - start, time.process_time() - start_cpu), model, losses


def median_interval(values: list[float], resamples: int = 2000,
                    seed: int = 0) -> tuple[float, float]:
    """A percentile-bootstrap 95 % interval of the median of ``values``."""
    rng = random.Random(seed)
    medians = sorted(statistics.median(rng.choices(values, k=len(values)))
                     for _ in range(resamples))
    return medians[int(0.025 * resamples)], medians[int(0.975 * resamples) - 1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--hidden", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=41)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    dev = runtime.device()
    x, y = data.digits("train")
    print(runtime.describe())
    timed(hand_written, args.hidden, x, y, args, dev)  # warm-up: allocator, kernels, caches
    ratios, cpu_ratios = [], []
    for i in range(args.repeats):
        first, second = (hand_written, with_fit) if i % 2 == 0 else (with_fit, hand_written)
        runs = {first: timed(first, args.hidden, x, y, args, dev),
                second: timed(second, args.hidden, x, y, args, dev)}
        (t_hand, c_hand), m_hand, l_hand = runs[hand_written]
        (t_fit, c_fit), m_fit, l_fit = runs[with_fit]
        same = all(torch.equal(a, b) for a, b in zip(m_hand.state_dict().values(),
                                                     m_fit.state_dict().values()))
        assert same and l_hand == l_fit, "fit and the hand-written loop did different work"
        ratios.append(t_fit / t_hand)
        cpu_ratios.append(c_fit / c_hand)
        print(f"pair {i + 1}: hand-written {t_hand:.3f} s, fit {t_fit:.3f} s, "
              f"ratio {ratios[-1]:.3f} (process CPU time: {cpu_ratios[-1]:.3f})")
    steps = args.epochs * -(-len(x) // args.batch_size)
    print(f"{steps} steps per run, identical weights and losses in every pair")
    if dev.type == "cpu":  # CPU time is robust to other programs' load; meaningless with a GPU
        print(f"median process-CPU-time ratio: {statistics.median(cpu_ratios):.2f}")
    low, high = median_interval(ratios)
    print(f"ratio fit/hand-written: {statistics.median(ratios):.2f} "
          f"(95% interval {low:.2f}-{high:.2f} over {len(ratios)} pairs)")


if __name__ == "__main__":
    main()
