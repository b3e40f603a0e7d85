"""Training throughput of `aigc_lib.training.fit` on 1 process and on 2 processes (torchrun).

The same MLP trains on scikit-learn's digits at the same global batch, for the same steps,
three ways, each on at most two CPU cores:

    1 process, 1 thread | 1 process, 2 threads | 2 processes (torchrun, gloo), 1 thread each

Each run is repeated (`--repeats`) and the median of its training time (`History.seconds`, so
without process start-up) is turned into examples per second. The script prints one line per
way and the speed-ups, ending with

    speed-up of 2 processes over 1 process: X.XX

Usage: python benchmarks/ddp_throughput.py [--steps 200] [--batch-size 256] [--hidden 512]
       [--repeats 3]
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys

WAYS = (("1 process, 1 thread", 1, 1), ("1 process, 2 threads", 1, 2),
        ("2 processes, 1 thread each", 2, 1))


def worker(args: argparse.Namespace) -> None:
    """One training run (in each process under torchrun); process 0 prints its time."""
    import torch
    import torch.nn.functional as F

    from aigc_lib import data
    from aigc_lib.training import fit, processes

    torch.set_num_threads(args.threads)
    x, y = data.digits("train")
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(64, args.hidden), torch.nn.ReLU(),
                                torch.nn.Linear(args.hidden, args.hidden), torch.nn.ReLU(),
                                torch.nn.Linear(args.hidden, 10))
    history = fit(model, (x, y), loss_fn=lambda m, a, b: F.cross_entropy(m(a), b),
                  optimizer=torch.optim.AdamW(model.parameters(), lr=1e-3), steps=args.steps,
                  batch_size=args.batch_size, drop_last=True, eval_every=args.steps,
                  device="cpu", progress=False)
    if processes().rank == 0:
        print("RESULT " + json.dumps({"seconds": history.seconds,
                                      "final_loss": history.step_losses[-1]}))


def run_way(processes: int, threads: int, args: argparse.Namespace) -> float:
    """Training seconds of one run with ``processes`` processes of ``threads`` threads."""
    command = [sys.executable, os.path.abspath(__file__), "--worker", "--threads", str(threads),
               "--steps", str(args.steps), "--batch-size", str(args.batch_size),
               "--hidden", str(args.hidden)]
    if processes > 1:
        command = [sys.executable, "-m", "torch.distributed.run", "--standalone",
                   f"--nproc_per_node={processes}", *command[1:]]
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    done = subprocess.run(command, env=env, capture_output=True, text=True, check=True)
    line = next(ln for ln in done.stdout.splitlines() if ln.startswith("RESULT "))
    return json.loads(line[len("RESULT "):])["seconds"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--hidden", type=int, default=512)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args)
        return
    print(f"{os.cpu_count()} CPU cores; {args.steps} steps of a global batch of "
          f"{args.batch_size}; MLP hidden width {args.hidden}")
    rates = {}
    for name, processes, threads in WAYS:
        seconds = [run_way(processes, threads, args) for _ in range(args.repeats)]
        rates[name] = args.steps * args.batch_size / statistics.median(seconds)
        print(f"{name:27s} {rates[name]:9.0f} examples/s (median of "
              f"{args.repeats}: {', '.join(f'{s:.2f}' for s in seconds)} s)")
    one, threads2, two = (rates[name] for name, _, _ in WAYS)
    print(f"speed-up of 2 threads in 1 process over 1 thread: {threads2 / one:.2f}")
    print(f"speed-up of 2 processes over 1 process: {two / one:.2f}")


if __name__ == "__main__":
    main()
