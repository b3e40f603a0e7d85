"""Runs under ``torchrun --standalone --nproc_per_node=2`` for tests/test_distributed.py.

Each process runs the same ``fit`` calls; process 0 saves what the test compares with a single
process: the weights after training at the same global batch, an interrupted run resumed, and
the error for a batch that 2 processes cannot split.
"""
import sys

import torch
import torch.nn.functional as F

from aigc_lib import checkpoint as ckpt
from aigc_lib.training import fit, processes

N, BATCH, STEPS = 96, 16, 12


def data():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(N, 4, generator=g)
    return x, (x[:, 0] + 0.5 * x[:, 1] > 0).long()


def model(dropout=0.0):
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(4, 16), torch.nn.Tanh(),
                               torch.nn.Dropout(dropout), torch.nn.Linear(16, 2))


def train(checkpoint=None, dropout=0.0, interrupt_at=None, batch_size=BATCH):
    """Train the small classifier for STEPS steps; returns (model, history)."""
    net = model(dropout)
    torch.manual_seed(100 + processes().rank)      # each process its own dropout stream
    opt = torch.optim.AdamW(net.parameters(), lr=1e-2)
    calls = {"n": 0}

    def loss_fn(m, x, y):
        calls["n"] += 1
        if calls["n"] == interrupt_at:
            raise KeyboardInterrupt("simulated crash")
        return F.cross_entropy(m(x), y)

    history = fit(net, data(), loss_fn=loss_fn, optimizer=opt, steps=STEPS,
                  batch_size=batch_size, eval_every=4, checkpoint=checkpoint, seed=3,
                  scheduler=torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 0.95 ** s),
                  progress=False)
    return net, history


def main(folder: str) -> None:
    procs = processes()
    out = {"world": procs.world}
    net, history = train()
    out["equal"], out["equal_losses"] = net.state_dict(), history.step_losses
    reference, _ = train(dropout=0.2)
    out["reference"] = reference.state_dict()
    path = f"{folder}/resume.safetensors"
    try:
        train(path, dropout=0.2, interrupt_at=7)
    except KeyboardInterrupt:
        out["saved_step"] = ckpt.load_state(path)["step"]
    torch.manual_seed(12345)                        # resuming must not depend on this
    resumed, _ = train(path, dropout=0.2)
    out["resumed"] = resumed.state_dict()
    try:
        train(batch_size=15)
    except ValueError as err:
        out["error"] = str(err)
    if procs.rank == 0:
        ckpt.save_state(f"{folder}/out.safetensors", out)


if __name__ == "__main__":
    main(sys.argv[1])
