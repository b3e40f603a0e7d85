import random

import numpy as np
import pytest
import torch

from aigc_lib import runtime


def test_profile_from_argument_environment_and_detection(monkeypatch):
    assert runtime.profile("cpu") == "cpu" and runtime.profile("GPU") == "gpu"
    monkeypatch.setenv("AIGC_PROFILE", "gpu")
    assert runtime.profile() == "gpu"
    assert runtime.by_profile(cpu=1, gpu=2) == 2
    monkeypatch.delenv("AIGC_PROFILE")
    assert runtime.profile() == ("gpu" if torch.cuda.is_available() else "cpu")


def test_unknown_profile_names_its_source(monkeypatch):
    with pytest.raises(ValueError, match="profile must be one of"):
        runtime.profile("tpu")
    monkeypatch.setenv("AIGC_PROFILE", "fast")
    with pytest.raises(ValueError, match="AIGC_PROFILE must be one of .*'fast'"):
        runtime.profile()
    with pytest.raises(TypeError, match="profile must be a string"):
        runtime.profile(3)


def test_seed_everything_makes_all_generators_repeat():
    def draw():
        return random.random(), np.random.rand(), torch.rand(1).item()
    runtime.seed_everything(7)
    first = draw()
    runtime.seed_everything(7)
    assert draw() == first


@pytest.mark.parametrize("seed, error", [(-1, ValueError), (2**32, ValueError), (1.5, TypeError),
                                         (True, TypeError)])
def test_seed_bad_input(seed, error):
    with pytest.raises(error, match="seed"):
        runtime.seed_everything(seed)


def test_device():
    assert runtime.device("cpu") == torch.device("cpu")
    assert runtime.device().type in ("cpu", "cuda")
    with pytest.raises(ValueError, match="device must name a torch device"):
        runtime.device("quantum")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="asks for CUDA"):
            runtime.device("cuda")


def test_cache_dir(monkeypatch, tmp_path):
    monkeypatch.setenv("AIGC_CACHE", str(tmp_path / "c"))
    assert runtime.cache_dir() == tmp_path / "c"
    assert runtime.cache_dir("models").is_dir()
    monkeypatch.delenv("AIGC_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert runtime.cache_dir() == tmp_path / "xdg" / "aigc_lib"
    with pytest.raises(ValueError, match="parts must be plain folder names"):
        runtime.cache_dir("../escape")
    assert "profile=" in runtime.describe()
