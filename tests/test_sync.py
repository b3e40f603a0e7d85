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
from functools import partial
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from aigc_lib import attention, losses
from aigc_lib.gan_training import discriminator_loss, fit_gan
from aigc_lib.models import diffusion, gpt, lora
from aigc_lib.models.gan import Discriminator, Generator
from aigc_lib.models.llama import Llama, LlamaConfig
from aigc_lib.models.vae import VAE, ConditionalVAE, VAEConfig, reparameterize
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


# --- the models that train on a GPU in the gpu profile: language models and diffusion --------

def tiny_gpt(lora_rank=0, attention="sdpa"):
    torch.manual_seed(0)
    model = gpt.GPT(gpt.GPTConfig(vocab_size=11, block_size=8, n_layer=1, n_head=2, n_embd=8,
                                  attention=attention))
    if lora_rank:
        lora.add_lora(model, r=lora_rank)
    return model


def tiny_diffusion(flow=False):
    torch.manual_seed(0)
    net = diffusion.MLPDenoiser(4, hidden=8, blocks=1, num_classes=3)
    if flow:
        return diffusion.FlowModel(net, p_uncond=0.2)
    return diffusion.DiffusionModel(net, diffusion.noise_schedule("cosine", 20), p_uncond=0.2)


IDS = torch.randint(0, 11, (3, 8), generator=torch.Generator().manual_seed(0))
X4, Y3 = torch.randn(6, 4), torch.tensor([0, 1, 2, 2, 1, 0])
TARGETS = IDS[:, 1:].clone()
TARGETS[0, :2] = -100


@pytest.mark.parametrize("name, build", [
    ("GPT.forward", lambda: partial(tiny_gpt(), IDS)),
    ("gpt.lm_loss", lambda: partial(gpt.lm_loss, tiny_gpt(), IDS)),
    ("gpt.lm_loss with LoRA", lambda: partial(gpt.lm_loss, tiny_gpt(lora_rank=2), IDS)),
    ("gpt.lm_loss, written-out attention", lambda: partial(gpt.lm_loss,
                                                          tiny_gpt(attention="math"), IDS)),
    ("Llama.forward", lambda: partial(Llama(LlamaConfig(
        vocab_size=11, block_size=8, n_layer=1, n_head=2, n_embd=8)), IDS)),
    ("Llama.forward, written-out attention", lambda: partial(Llama(LlamaConfig(
        vocab_size=11, block_size=8, n_layer=1, n_head=2, n_embd=8, attention="math")), IDS)),
    ("losses.cross_entropy", lambda: partial(losses.cross_entropy, torch.randn(3, 7, 11),
                                             TARGETS)),
    ("DiffusionModel.loss", lambda: partial(tiny_diffusion().loss, X4, Y3)),
    ("FlowModel.loss", lambda: partial(tiny_diffusion(flow=True).loss, X4, Y3)),
    ("ConditionalVAE.forward", lambda: partial(ConditionalVAE(
        VAEConfig(x_dim=4, latent_dim=2, hidden=4), num_classes=3), X4, Y3)),
])
def test_range_checks_in_forward_passes_read_nothing(name, build):
    """Token ids, steps, times and labels are checked where they lie (``checks.require``), so
    a valid call reads no value: on a GPU no step waits for the device."""
    call, events = build(), []             # the model is built outside the count
    with counting_reads(events):
        call()
    assert events == [], f"{name} read values from its tensors: {events}"


@pytest.mark.parametrize("call, message", [
    (lambda: tiny_gpt()(IDS + 1), r"token ids in \[0, 11\).*\[11\]"),
    (lambda: attention.softmax(torch.tensor([[0.0, math.nan]])), "z must not contain NaN"),
    (lambda: attention.softmax(torch.full((2, 3), -math.inf)), "-inf everywhere"),
    (lambda: attention.scaled_dot_product_attention(NAN[None], NAN[None], NAN[None]),
     "q contains NaN"),
    (lambda: losses.cross_entropy(torch.randn(3, 7, 11), TARGETS + 11),
     r"targets must be in \[0, 11\)"),
    (lambda: tiny_diffusion().loss(X4, Y3 + 3), r"labels must lie in \[0, 3\]"),
    (lambda: diffusion.flow_interpolate(X4, X4, torch.full((6,), math.nan)),
     r"s must have shape \(6,\) and lie in \[0, 1\]"),
    (lambda: ConditionalVAE(VAEConfig(x_dim=4, latent_dim=2, hidden=4), num_classes=3)(
        X4, Y3 - 1), r"y must be class indices in \[0, 3\), got values in \[-1, 1\]"),
])
def test_the_checks_that_read_nothing_still_raise_clear_errors(call, message):
    with pytest.raises(ValueError, match=message):
        call()


def test_language_model_training_reads_only_every_sync_interval():
    model, events = tiny_gpt(), []
    windows = torch.randint(0, 11, (32, 9), generator=torch.Generator().manual_seed(1))
    with counting_reads(events):
        fit(model, windows, loss_fn=marked(gpt.lm_loss, events), steps=12, batch_size=4,
            optimizer=torch.optim.AdamW(model.parameters(), 1e-3), eval_every=12,
            progress=False, sync_interval=4, clip_grad_norm=1.0)
    assert steps_with_reads(events) == [4, 8, 12]


@pytest.mark.parametrize("flow", [False, True])
def test_diffusion_training_reads_only_every_sync_interval(flow):
    model, events = tiny_diffusion(flow), []
    x, y = torch.randn(40, 4), torch.randint(0, 3, (40,))
    with counting_reads(events):
        fit(model, (x, y), loss_fn=marked(lambda m, xb, yb: m.loss(xb, yb), events), steps=10,
            batch_size=8, optimizer=torch.optim.Adam(model.parameters(), 1e-3),
            eval_every=10, progress=False, sync_interval=5)
    assert steps_with_reads(events) == [5, 10]


@pytest.mark.parametrize("name, build", [
    ("GPT", lambda: (tiny_gpt(), (IDS,))),
    ("GPT, written-out attention", lambda: (tiny_gpt(attention="math"), (IDS,))),
    ("Llama", lambda: (Llama(LlamaConfig(vocab_size=11, block_size=8, n_layer=1, n_head=2,
                                         n_embd=8)), (IDS,))),
    ("DiffusionModel.loss", lambda: (tiny_diffusion().loss, (X4, Y3))),
])
def test_forward_passes_compile_as_one_graph(name, build):
    """A host read in a forward pass also splits the graph that ``torch.compile`` builds
    (the ``gpu`` profile compiles the GPT): the checks that read nothing leave it whole."""
    import torch._dynamo

    torch._dynamo.reset()
    function, args = build()
    explained = torch._dynamo.explain(function)(*args)
    assert explained.graph_break_count == 0, f"{name}: {explained.break_reasons}"
