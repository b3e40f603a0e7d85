"""How much does `aigc_lib.training.fit` cost over a minimal hand-written PyTorch loop?

Both train the same MLP (from the same initial weights) on scikit-learn's digits for the same
number of steps, with the same optimiser and the same shuffled batch order, so they do the same
arithmetic: the script checks that their final weights are identical. The two are timed in
`--repeats` pairs of short runs, in the order hand/fit, fit/hand, hand/fit, ... (so that neither
always runs second, on a cache the other warmed), in each of `--processes` fresh Python
processes run one after the other, and the script prints the median of all the per-pair ratios
with a bootstrap 95 % interval (processes resampled, then pairs within them):

    ratio fit/hand-written: X.XX (95% interval A.AA-B.BB over N pairs in P processes)

Many short pairs rather than a few long ones: on a shared machine the speed of the CPU drifts by
tens of percent within seconds, and a pair measured within a fraction of a second sees one speed.
Several processes: the median of one process moves by a few per cent from one process to the
next (each lays out its memory differently), more than its pairs' spread suggests.

Usage: python benchmarks/fit_overhead.py [--epochs 10] [--repeats 21] [--processes 4]
       [--hidden 128] [--threads 1] [--instructions]

`--instructions` counts instead of timing: each loop runs once in a fresh process under
valgrind's callgrind, which counts the machine instructions it executes, a figure that does not
drift with the machine's speed (both without a progress bar, whose redraws follow the clock,
which valgrind slows fifty-fold). It prints the instructions per step of each loop and

    instructions fit/hand-written: X.XXX

By default PyTorch uses one CPU thread here, as the book's chapters do for their small models:
with several threads, timings on a busy machine are dominated by threads waiting for each other.
`--threads 0` keeps PyTorch's default.
"""
from __future__ import annotations

import argparse
import functools
import json
import os
import random
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
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


def with_fit(model, x, y, epochs, batch_size, seed, dev, progress=True):
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    history = fit(model, (x, y), loss_fn=loss_fn, optimizer=opt, epochs=epochs,
                  batch_size=batch_size, seed=seed, device=dev, progress=progress)
    return history.step_losses


def timed(run, hidden, x, y, args, dev):
    """Wall-clock and process CPU seconds of one training run, the model, and its losses."""
    model = make_model(hidden)
    start, start_cpu = time.perf_counter(), time.process_time()
    losses = run(model, x, y, args.epochs, args.batch_size, 0, dev)
    if dev.type == "cuda":
        torch.cuda.synchronize()
    return (time.perf_counter() - start, time.process_time() - start_cpu), model, losses


def median_interval(groups: list[list[float]], resamples: int = 2000,
                    seed: int = 0) -> tuple[float, float]:
    """A percentile-bootstrap 95 % interval of the median of the pooled ``groups`` (the pairs
    of each process): resample the processes, then the pairs within each, so that what varies
    between processes counts as well as what varies between pairs."""
    rng = random.Random(seed)
    medians = sorted(
        statistics.median([r for g in rng.choices(groups, k=len(groups))
                           for r in rng.choices(g, k=len(g))])
        for _ in range(resamples))
    return medians[int(0.025 * resamples)], medians[int(0.975 * resamples) - 1]


def pairs(args: argparse.Namespace) -> list[tuple[float, float]]:
    """``args.repeats`` pairs in this process: (wall-clock ratio, process-CPU ratio) each."""
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    dev = runtime.device()
    x, y = data.digits("train")
    timed(hand_written, args.hidden, x, y, args, dev)  # warm-up: allocator, kernels, caches
    out = []
    for i in range(args.repeats):
        first, second = (hand_written, with_fit) if i % 2 == 0 else (with_fit, hand_written)
        runs = {first: timed(first, args.hidden, x, y, args, dev),
                second: timed(second, args.hidden, x, y, args, dev)}
        (t_hand, c_hand), m_hand, l_hand = runs[hand_written]
        (t_fit, c_fit), m_fit, l_fit = runs[with_fit]
        same = all(torch.equal(a, b) for a, b in zip(m_hand.state_dict().values(),
                                                     m_fit.state_dict().values()))
        assert same and l_hand == l_fit, "fit and the hand-written loop did different work"
        out.append((t_fit / t_hand, c_fit / c_hand))
    return out


RUN_SETTINGS = ("epochs", "batch_size", "hidden", "threads")   # what a child process needs


def options(args: argparse.Namespace, names: tuple[str, ...]) -> list[str]:
    """The command-line options that pass ``args``' settings ``names`` on to a child process."""
    return [f"--{name.replace('_', '-')}={getattr(args, name)}" for name in names]


def in_fresh_processes(args: argparse.Namespace) -> list[list[tuple[float, float]]]:
    """The pairs of ``args.processes`` fresh Python processes, run one after the other (each
    process lays out its memory differently, which moves its median by a few per cent)."""
    command = [sys.executable, __file__, "--worker", *options(args, RUN_SETTINGS + ("repeats",))]
    groups = []
    for i in range(args.processes):
        out = subprocess.run(command, capture_output=True, text=True, check=True).stdout
        groups.append([tuple(p) for p in json.loads(out.splitlines()[-1])])
        ratios = [r for r, _ in groups[-1]]
        print(f"process {i + 1}: median ratio {statistics.median(ratios):.3f} over "
              f"{len(ratios)} pairs (range {min(ratios):.3f}-{max(ratios):.3f})", flush=True)
    return groups


def counted_run(args: argparse.Namespace) -> None:
    """One run of ``args.count`` (after a warm-up run), called through ``functools.reduce``:
    callgrind counts only inside that C function (``--toggle-collect``), so neither Python's
    start-up nor the imports nor the warm-up count."""
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    dev, (x, y) = runtime.device(), data.digits("train")
    run = hand_written if args.count == "hand" else functools.partial(with_fit, progress=False)
    run(make_model(args.hidden), x, y, 1, args.batch_size, 0, dev)
    model = make_model(args.hidden)
    losses = functools.reduce(lambda *_: run(model, x, y, args.epochs, args.batch_size, 0,
                                             dev), [0, 1])
    print(f"{args.count}: {len(losses)} steps, last loss {losses[-1]:.4f}")


def collected(valgrind_log: str) -> int:
    """The instruction count that callgrind reports (``Collected : N``) in its log."""
    match = re.search(r"Collected\s*:\s*([\d,]+)", valgrind_log)
    if not match:
        raise RuntimeError(f"no instruction count in valgrind's output: {valgrind_log[-500:]}")
    return int(match.group(1).replace(",", ""))


def count_instructions(args: argparse.Namespace) -> dict[str, int]:
    """Instructions of each loop, counted under callgrind; the two processes run side by
    side (a count does not depend on what else the machine does)."""
    if shutil.which("valgrind") is None:
        raise SystemExit("--instructions needs valgrind (Debian: apt install valgrind)")
    with tempfile.TemporaryDirectory() as tmp:
        jobs = {loop: subprocess.Popen(
            ["valgrind", "--tool=callgrind", "--collect-atstart=no",
             "--toggle-collect=functools_reduce", f"--callgrind-out-file={tmp}/{loop}.out",
             sys.executable, __file__, f"--count={loop}", *options(args, RUN_SETTINGS)],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
            env={**os.environ, "PYTHONHASHSEED": "0"}) for loop in ("hand", "fit")}
        logs = {loop: job.communicate()[1] for loop, job in jobs.items()}
    for loop, job in jobs.items():
        if job.returncode:
            raise RuntimeError(f"the {loop} loop failed under valgrind: {logs[loop][-2000:]}")
    return {loop: collected(log) for loop, log in logs.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--hidden", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=21, help="pairs per process")
    parser.add_argument("--processes", type=int, default=4)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--instructions", action="store_true",
                        help="count instructions under valgrind instead of timing")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--count", choices=("hand", "fit"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(pairs(args)))
        return
    if args.count:
        counted_run(args)
        return
    steps = args.epochs * -(-len(data.digits("train")[0]) // args.batch_size)
    if args.instructions:
        counts = count_instructions(args)
        for loop, count in counts.items():
            print(f"{loop}: {count / steps:,.0f} instructions per step ({steps} steps)")
        print(f"instructions fit/hand-written: {counts['fit'] / counts['hand']:.3f}")
        return
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    print(runtime.describe())
    groups = in_fresh_processes(args) if args.processes > 1 else [pairs(args)]
    print(f"{steps} steps per run, identical weights and losses in every pair")
    ratios = [[r for r, _ in g] for g in groups]
    pooled = [r for g in ratios for r in g]
    if runtime.device().type == "cpu":  # CPU time is meaningless with a GPU
        cpu = statistics.median([c for g in groups for _, c in g])
        print(f"median process-CPU-time ratio: {cpu:.2f}")
    low, high = median_interval(ratios)
    print(f"ratio fit/hand-written: {statistics.median(pooled):.2f} (95% interval "
          f"{low:.2f}-{high:.2f} over {len(pooled)} pairs in {len(groups)} processes)")


if __name__ == "__main__":
    main()
