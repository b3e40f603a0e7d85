"""fit: learns, logs, resumes bit-identically after an interruption, guards against NaN."""
import math

import pytest
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from aigc_lib import checkpoint as ckpt
from aigc_lib.training import evaluate_loss, fit, seeded_order


def make_data(n=96, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 4, generator=g)
    y = (x[:, 0] + 0.5 * x[:, 1] > 0).long()
    return x, y


def make_model(seed=0):
    torch.manual_seed(seed)
    # dropout makes the run consume the global RNG, so resuming must restore it
    return torch.nn.Sequential(torch.nn.Linear(4, 16), torch.nn.ReLU(), torch.nn.Dropout(0.2),
                               torch.nn.Linear(16, 2))


def classify(model, x, y):
    logits = model(x)
    return F.cross_entropy(logits, y), {"accuracy": (logits.argmax(-1) == y).float().mean()}


def run(checkpoint=None, interrupt_at=None, epochs=4, eval_every=None):
    model = make_model()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1 / (1 + 0.01 * s))
    calls = {"n": 0}

    def loss_fn(m, x, y):
        calls["n"] += 1
        if interrupt_at is not None and calls["n"] == interrupt_at:
            raise KeyboardInterrupt
        return classify(m, x, y)

    history = fit(model, make_data(), loss_fn=loss_fn, optimizer=opt, scheduler=sched,
                  epochs=epochs, batch_size=16, val=make_data(40, seed=1), clip_grad_norm=1.0,
                  checkpoint=checkpoint, eval_every=eval_every, progress=False, seed=3)
    return model, history


def test_fit_learns_and_records_history():
    model, history = run()
    assert len(history.step_losses) == 4 * 6 and len(history.records) == 4
    first, last = history.records[0], history.records[-1]
    assert last["step"] == 24 and last["epoch"] == 4.0
    assert last["val_loss"] < first["val_loss"]
    assert last["val_accuracy"] > 0.8
    assert {"train_loss", "accuracy", "grad_norm", "lr", "seconds"} <= set(last)
    assert history.column("step") == [6, 12, 18, 24]
    assert history.last("train_loss") == pytest.approx(sum(history.step_losses[-6:]) / 6)


@pytest.mark.parametrize("interrupt_at, eval_every", [(15, None), (11, 4)])
def test_interrupted_run_resumes_bit_identically(tmp_path, interrupt_at, eval_every):
    reference, ref_history = run(eval_every=eval_every)
    path = tmp_path / "run.safetensors"
    with pytest.raises(KeyboardInterrupt):
        run(path, interrupt_at=interrupt_at, eval_every=eval_every)
    saved_step = ckpt.load_state(path)["step"]
    assert 0 < saved_step < interrupt_at
    torch.manual_seed(12345)  # a different global RNG state: resuming must not depend on it
    resumed, history = run(path, eval_every=eval_every)
    for a, b in zip(reference.state_dict().values(), resumed.state_dict().values()):
        assert torch.equal(a, b)
    assert history.step_losses == ref_history.step_losses
    assert history.column("val_loss") == ref_history.column("val_loss")


def test_finished_checkpoint_loads_without_training(tmp_path):
    path = tmp_path / "done.safetensors"
    trained, _ = run(path)
    model, history = run(path, interrupt_at=1)  # would raise if loss_fn were called
    for a, b in zip(trained.state_dict().values(), model.state_dict().values()):
        assert torch.equal(a, b)
    assert len(history.records) == 4


def test_changed_settings_or_resume_false_do_not_overwrite(tmp_path):
    path = tmp_path / "run.safetensors"
    run(path, epochs=2)
    before = path.read_bytes()
    with pytest.raises(ValueError, match="different run.*total_steps"):
        run(path, epochs=3)
    model = make_model()
    with pytest.raises(FileExistsError, match="resume=True"):
        fit(model, make_data(), loss_fn=classify, optimizer=torch.optim.SGD(model.parameters(), 0.1),
            epochs=2, batch_size=16, checkpoint=path, resume=False, progress=False, seed=3)
    assert path.read_bytes() == before


def test_nan_guard_names_the_step_and_keeps_the_checkpoint(tmp_path):
    path = tmp_path / "run.safetensors"
    model = make_model()
    calls = {"n": 0}

    def loss_fn(m, x, y):
        calls["n"] += 1
        loss, _ = classify(m, x, y)
        return loss * math.nan if calls["n"] == 9 else loss

    with pytest.raises(FloatingPointError, match=r"loss is nan at step 9 \(epoch 2\).*kept"):
        fit(model, make_data(), loss_fn=loss_fn, optimizer=torch.optim.SGD(model.parameters(), 0.1),
            epochs=3, batch_size=16, checkpoint=path, progress=False)
    state = ckpt.load_state(path)
    assert state["step"] == 6
    assert all(torch.isfinite(v).all() for v in state["model"].values())
    assert all(torch.isfinite(p).all() for p in model.parameters())  # no NaN step was taken


def test_steps_mode_and_generic_datasets():
    class Pairs(Dataset):
        def __init__(self):
            self.x, self.y = make_data(50)

        def __len__(self):
            return len(self.y)

        def __getitem__(self, i):
            return self.x[i], self.y[i]

    model = make_model()
    history = fit(model, Pairs(), loss_fn=classify, optimizer=torch.optim.Adam(model.parameters()),
                  steps=10, batch_size=8, eval_every=3, progress=False)
    assert history.column("step") == [3, 6, 9, 10]
    assert len(history.step_losses) == 10
    scores = evaluate_loss(model, make_data(50), classify, batch_size=7)
    whole = classify(model.eval(), *make_data(50))
    assert scores["loss"] == pytest.approx(float(whole[0].detach()), rel=1e-5)


@pytest.mark.parametrize("kwargs, error, words", [
    (dict(model="m"), TypeError, "model must be a torch.nn.Module"),
    (dict(optimizer=None), TypeError, "optimizer must be a torch.optim.Optimizer"),
    (dict(loss_fn=3), TypeError, "loss_fn must be callable"),
    (dict(epochs=None), ValueError, "exactly one of epochs and steps"),
    (dict(steps=5), ValueError, "exactly one of epochs and steps"),
    (dict(epochs=0), ValueError, "epochs must be > 0"),
    (dict(batch_size=2.5), TypeError, "batch_size must be an int"),
    (dict(train=(torch.ones(3, 2), torch.ones(4))), ValueError, "train: tensors must share"),
    (dict(train=[1, 2]), TypeError, "train must be a Dataset"),
    (dict(train=torch.ones(0, 4)), ValueError, "train is empty"),
    (dict(clip_grad_norm=-1.0), ValueError, "clip_grad_norm must be > 0"),
    (dict(amp="bf16"), ValueError, "amp must be"),
    (dict(checkpoint="run.pt"), ValueError, "checkpoint must end in .safetensors"),
    (dict(loss_fn=lambda m, x, y: m(x)), TypeError, "loss_fn must return a scalar"),
    (dict(loss_fn=lambda m, x, y: (classify(m, x, y)[0], {"acc": 0.5})), TypeError,
     "extra term 'acc' of type float"),
    (dict(loss_fn=lambda m, x, y: (classify(m, x, y)[0], {"logits": m(x)})), TypeError,
     "extra term 'logits'.*must be scalar tensors"),
    (dict(loss_fn=lambda m, x, y: (classify(m, x, y)[0], [1.0])), TypeError,
     "extras of type list"),
    (dict(scheduler="cosine"), TypeError, "scheduler must be a learning-rate scheduler"),
    (dict(evaluate=lambda m: [0.5]), TypeError, "evaluate must return a mapping"),
    (dict(val=[1, 2]), TypeError, "val must be a Dataset"),
    (dict(val=(torch.ones(3, 4), torch.ones(2))), ValueError, "val: tensors must share"),
    (dict(train=torch.full((8, 4), math.nan)), ValueError, "train contains NaN"),
    (dict(order=lambda epoch: torch.arange(5)), TypeError, r"order\(0\) must return an int64"),
    (dict(order=[1, 2]), TypeError, "order must be callable"),
    (dict(sync_interval=0), ValueError, "sync_interval must be > 0"),
])
def test_bad_input(kwargs, error, words):
    model = make_model()
    args = dict(model=model, train=make_data(), loss_fn=classify,
                optimizer=torch.optim.SGD(model.parameters(), 0.1), epochs=1, progress=False)
    args.update(kwargs)
    with pytest.raises(error, match=words):
        fit(**args)


def test_a_model_that_would_never_change_is_refused():
    frozen = make_model().requires_grad_(False)
    with pytest.raises(ValueError, match="model has no trainable parameters"):
        fit(frozen, make_data(), loss_fn=classify, epochs=1, progress=False,
            optimizer=torch.optim.SGD(frozen.parameters(), 0.1))
    model, other = make_model(), make_model(1)
    with pytest.raises(ValueError, match="optimizer holds none of model's trainable"):
        fit(model, make_data(), loss_fn=classify, epochs=1, progress=False,
            optimizer=torch.optim.SGD(other.parameters(), 0.1))


def test_an_unreadable_checkpoint_is_refused_by_resume_naming_the_file(tmp_path):
    path = tmp_path / "run.safetensors"
    path.write_bytes(b"not a checkpoint at all")
    with pytest.raises(ValueError, match="run.safetensors is not a readable safetensors"):
        run(path)
    assert path.read_bytes() == b"not a checkpoint at all"     # and it is left as it was


def test_custom_order_hook_and_seeded_order():
    seen = []

    def reversed_order(epoch):
        seen.append(epoch)
        return torch.arange(96).flip(0)

    model = make_model()
    history = fit(model, make_data(), loss_fn=classify, order=reversed_order, epochs=2,
                  batch_size=16, optimizer=torch.optim.SGD(model.parameters(), 0.1),
                  progress=False)
    assert seen == [0, 1] and len(history.step_losses) == 12
    draws = seeded_order(lambda g: torch.randperm(10, generator=g), seed=4)
    g = torch.Generator().manual_seed(4)
    expected = [torch.randperm(10, generator=g) for _ in range(3)]
    assert torch.equal(draws(2), expected[2]) and torch.equal(draws(0), expected[0])
    assert torch.equal(draws(1), expected[1])          # replayed from the seed


@pytest.mark.parametrize("drop_last", [False, True])
def test_batches_cut_a_stretch_at_a_time_are_the_orders_consecutive_slices(monkeypatch,
                                                                           drop_last):
    """Stream cuts an epoch's order into batches CUT_AT_ONCE at a time; across the cuts and the
    epochs, the batches must be the order's consecutive slices."""
    from aigc_lib import training

    monkeypatch.setattr(training, "CUT_AT_ONCE", 3)
    n, size = 43, 4                                      # 11 batches, the last one short
    order = training.shuffled(n, seed=5)
    stream = training.Stream(training.Examples(torch.arange(n), "train"), size, drop_last,
                             order, torch.device("cpu"), training.Processes())
    per_epoch = n // size if drop_last else -(-n // size)
    assert stream.per_epoch == per_epoch
    steps = list(range(3 * per_epoch))
    jumps = torch.randperm(len(steps), generator=torch.Generator().manual_seed(0)).tolist()
    for step in steps + jumps:                           # in order, then as after resuming
        epoch, position = divmod(step, per_epoch)
        expected = order(epoch)[position * size:(position + 1) * size]
        assert torch.equal(stream.for_step(step)[0], expected), step
