import pytest
import torch

from aigc_lib import checkpoint as ckpt
from aigc_lib.training import fit


def test_state_round_trip_keeps_types_and_tensors(tmp_path):
    model = torch.nn.Linear(3, 2)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, betas=(0.8, 0.9))
    model(torch.randn(4, 3)).sum().backward()
    opt.step()
    state = {"model": model.state_dict(), "optimizer": opt.state_dict(), "step": 3,
             "nested": {"t": (1, "a", None)}, "rng": ckpt.rng_state()}
    path = ckpt.save_state(tmp_path / "run.safetensors", state)
    back = ckpt.load_state(path)
    assert back["step"] == 3 and back["nested"] == {"t": (1, "a", None)}
    for key, value in state["model"].items():
        assert torch.equal(back["model"][key], value)
    assert list(back["optimizer"]["state"]) == [0, 1]  # int keys survive
    assert back["optimizer"]["param_groups"][0]["betas"] == (0.8, 0.9)
    fresh = torch.optim.AdamW(model.parameters(), lr=1e-3)
    fresh.load_state_dict(back["optimizer"])


def test_rng_state_round_trip():
    saved = ckpt.rng_state()
    first = (torch.rand(3), __import__("numpy").random.rand(), __import__("random").random())
    ckpt.set_rng_state(saved)
    again = (torch.rand(3), __import__("numpy").random.rand(), __import__("random").random())
    assert torch.equal(first[0], again[0]) and first[1:] == again[1:]


def test_weights_round_trip_with_tied_parameters(tmp_path):
    emb = torch.nn.Embedding(5, 4)
    head = torch.nn.Linear(4, 5, bias=False)
    head.weight = emb.weight
    model = torch.nn.ModuleDict({"emb": emb, "head": head})
    path = ckpt.save_weights(model, tmp_path / "w.safetensors")
    other = torch.nn.ModuleDict({"emb": torch.nn.Embedding(5, 4),
                                 "head": torch.nn.Linear(4, 5, bias=False)})
    ckpt.load_weights(other, path)
    assert torch.equal(other["emb"].weight, emb.weight)


def test_failed_save_keeps_the_previous_file(tmp_path):
    path = ckpt.save_state(tmp_path / "s.safetensors", {"x": torch.ones(2)})
    with pytest.raises(TypeError, match="cannot store a object"):
        ckpt.save_state(path, {"x": object()})
    assert torch.equal(ckpt.load_state(path)["x"], torch.ones(2))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s.safetensors"]


def test_bad_paths_and_files(tmp_path):
    with pytest.raises(ValueError, match="path must end in .safetensors"):
        ckpt.save_state(tmp_path / "x.pt", {})
    with pytest.raises(FileNotFoundError):
        ckpt.load_state(tmp_path / "missing.safetensors")
    ckpt.save_weights(torch.nn.Linear(1, 1), tmp_path / "w.safetensors")
    with pytest.raises(ValueError, match="not an aigc_lib training checkpoint"):
        ckpt.load_state(tmp_path / "w.safetensors")
    with pytest.raises(TypeError, match="model must be a torch.nn.Module"):
        ckpt.save_weights("model", tmp_path / "w.safetensors")


def unreadable_files(folder):
    good = ckpt.save_weights(torch.nn.Linear(4, 3), folder / "good.safetensors").read_bytes()
    torch.save({"w": torch.ones(3)}, folder / "torch_save.safetensors")
    return {"random bytes": bytes(range(256)) * 4, "empty": b"",
            "truncated": good[:len(good) // 2],
            "torch.save file": (folder / "torch_save.safetensors").read_bytes()}


@pytest.mark.parametrize("kind", ["random bytes", "empty", "truncated", "torch.save file"])
def test_a_file_that_is_not_safetensors_is_refused_naming_it(tmp_path, kind):
    path = tmp_path / "bad.safetensors"
    path.write_bytes(unreadable_files(tmp_path)[kind])
    pattern = "bad.safetensors is not a readable safetensors checkpoint"
    with pytest.raises(ValueError, match=pattern):
        ckpt.load_weights(torch.nn.Linear(4, 3), path)
    with pytest.raises(ValueError, match=pattern):
        ckpt.load_state(path)
    model = torch.nn.Linear(4, 3)
    with pytest.raises(ValueError, match=pattern):   # fit's resume reads it the same way
        fit(model, torch.randn(8, 4), loss_fn=lambda m, x: m(x).square().mean(), steps=2,
            optimizer=torch.optim.SGD(model.parameters(), 0.1), checkpoint=path,
            progress=False)
