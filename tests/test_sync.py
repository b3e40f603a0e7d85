"""A training step reads nothing back from the device, except every ``sync_interval`` steps.

On a GPU, every host read of a tensor's value (``.item()``, ``float(t)``, ``bool(t)``,
``.tolist()``, ``.cpu()``, ...) waits until every kernel queued before it has run, so one per
step takes away the asynchrony that keeps a GPU busy. On the CPU nothing waits, but the calls
are the same Python calls, so we count them here by patching them on ``torch.Tensor``: every
call made from outside torch's own code (ours, the test's loss functions) is counted and
assigned to the step during which it happened. (Calls inside torch are torch's business: e.g.
``torch.optim.AdamW`` reads its CPU step counter, which is not on the device.)
"""
import math
import sys
from contextlib import contextmanager
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from aigc_lib import losses
from aigc_lib.gan_training import discriminator_loss, fit_gan
from aigc_lib.models.gan import Discriminator, Generator
from aigc_lib.models.vae import VAE, VAEConfig, reparameterize
from aigc_lib.training import fit

READS = ("item", "tolist", "cpu", "numpy", "__bool__", "__float__", "__int__", "__index__",
         "__format__")
TORCH = str(Path(torch.__file__).parent)


@contextmanager
def counting_reads(events):
    """Append the name of every host read of a tensor, made outside torch, to ``events``."""
    originals = {name: getattr(torch.Tensor, name) for name in READS}

    def counted(name, original):
        def read(self, *args, **kwargs):
            if not sys._getframe(1).f_code.co_filename.startswith(TORCH):
                events.append(name)
            return original(self, *args, **kwargs)
        return read

    try:
        for name, original in originals.items():
            setattr(torch.Tensor, name, counted(name, original))
        yield events
    finally:
        for name, original in originals.items():
            setattr(torch.Tensor, name, original)


def reads_per_step(events):
    """{step: number of reads} from events where ("step", n) marks the start of step n."""
    counts, step = {}, 0
    for event in events:
        if isinstance(event, tuple):
            step = event[1]
            counts.setdefault(step, 0)
        else:
            counts[step] = counts.get(step, 0) + 1
    return counts


def steps_with_reads(events):
    return sorted(s for s, n in reads_per_step(events).items() if n and s > 0)


def marked(loss_fn, events, every=1):
    """``loss_fn`` that marks the start of a step every ``every`` calls."""
    calls = {"n": 0}

    def wrapped(*args):
        if calls["n"] % every == 0:
            events.append(("step", calls["n"] // every + 1))
        calls["n"] += 1
        return loss_fn(*args)
    return wrapped


def mlp_run(events, sync_interval, steps=20, eval_every=10):
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 16), torch.nn.ReLU(), torch.nn.Dropout(0.1),
                                torch.nn.Linear(16, 3))
    x, y = torch.randn(64, 4), torch.randint(0, 3, (64,))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)

    def loss_fn(m, xb, yb):
        logits = m(xb)
        return F.cross_entropy(logits, yb), {"acc": (logits.argmax(1) == yb).float().mean()}

    with counting_reads(events):
        fit(model, (x, y), loss_fn=marked(loss_fn, events), optimizer=opt, steps=steps,
            batch_size=16, eval_every=eval_every, clip_grad_norm=1.0, progress=False,
            scheduler=torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 0.99 ** s),
            sync_interval=sync_interval)


def test_fit_reads_the_device_only_every_sync_interval_steps():
    events = []
    mlp_run(events, sync_interval=4)
    # reads: the losses every 4 steps; the record (means, lr) at the evaluation points 10, 20
    assert steps_with_reads(events) == [4, 8, 10, 12, 16, 20]
    counts = reads_per_step(events)
    assert all(counts[s] == 1 for s in (4, 8, 12, 16))     # one .tolist() for 4 losses
    assert all(counts[s] == 0 for s in range(1, 21) if s not in (4, 8, 10, 12, 16, 20))


def test_the_counter_sees_reads_made_every_step():
    """The control: with sync_interval=1 each loss is read before its update, every step."""
    events = []
    mlp_run(events, sync_interval=1)
    assert steps_with_reads(events) == list(range(1, 21))


def test_vae_training_with_the_librarys_losses_reads_only_every_sync_interval():
    torch.manual_seed(0)
    model = VAE(VAEConfig(x_dim=16, latent_dim=2, hidden=8, layers=1))
    x = (torch.rand(48, 16) > 0.5).float()
    events = []

    def loss_fn(m, xb):
        logits, mu, logvar = m(xb)
        return losses.vae_loss(logits, xb, mu, logvar)

    with counting_reads(events):
        fit(model, x, loss_fn=marked(loss_fn, events), optimizer=torch.optim.Adam(
            model.parameters(), 1e-3), steps=12, batch_size=16, eval_every=12,
            progress=False, sync_interval=6)
    assert steps_with_reads(events) == [6, 12]


def test_gan_training_reads_only_every_sync_interval():
    torch.manual_seed(0)
    generator, discriminator = Generator(2, 3, hidden=8), Discriminator(3, hidden=8)
    events = []
    with counting_reads(events):
        fit_gan(generator, discriminator, torch.randn(64, 3),
                g_optimizer=torch.optim.Adam(generator.parameters(), 1e-3),
                d_optimizer=torch.optim.Adam(discriminator.parameters(), 1e-3),
                d_loss_fn=marked(discriminator_loss, events, every=2), d_steps=2, steps=10,
                batch_size=8, eval_every=10, progress=False, sync_interval=5)
    assert steps_with_reads(events) == [5, 10]
    assert reads_per_step(events)[5] == 1


NAN = torch.tensor([[math.nan, 0.0, 1.0]])


@pytest.mark.parametrize("name, call", [
    ("bce_with_logits", lambda: losses.bce_with_logits(NAN, torch.ones(1, 3))),
    ("gaussian_nll", lambda: losses.gaussian_nll(NAN, torch.zeros(1, 3), torch.ones(1, 3))),
    ("kl_diag_gaussians", lambda: losses.kl_diag_gaussians(NAN, torch.zeros(1, 3))),
    ("vae_loss", lambda: losses.vae_loss(NAN, torch.ones(1, 3), NAN, torch.zeros(1, 3))[0]),
    ("gan_discriminator_loss", lambda: losses.gan_discriminator_loss(NAN, torch.zeros(2))),
    ("gan_generator_loss", lambda: losses.gan_generator_loss(NAN)),
    ("reparameterize", lambda: reparameterize(NAN, torch.zeros(1, 3), eps=torch.ones(1, 3))),
    ("Generator.forward", lambda: Generator(3, 2, hidden=4)(NAN)),
    ("Discriminator.forward", lambda: Discriminator(3, hidden=4)(NAN)),
    ("VAE.forward", lambda: VAE(VAEConfig(x_dim=3, latent_dim=2, hidden=4))(NAN)[0]),
])
def test_per_step_losses_and_forward_passes_read_no_values(name, call):
    """They check types and shapes only: a NaN goes through (fit's guard names its step)."""
    events = []
    with counting_reads(events):
        out = call()
    assert events == [], f"{name} read values from its tensors: {events}"
    assert not bool(torch.isfinite(out).all())


def test_entry_points_still_check_values():
    with pytest.raises(ValueError, match="train contains NaN"):
        model = torch.nn.Linear(3, 1)
        fit(model, NAN, loss_fn=lambda m, x: m(x).mean(), steps=1,
            optimizer=torch.optim.SGD(model.parameters(), 0.1), progress=False)
    with pytest.raises(ValueError, match="x contains NaN"):
        VAE(VAEConfig(x_dim=3, latent_dim=2, hidden=4)).reconstruct(NAN)
