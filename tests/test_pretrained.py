"""The pretrained-model cache: trained once (deterministically), loaded afterwards, exported in
Hugging Face format, safe under parallel calls. Uses a tiny recipe so it runs in seconds."""
import json
import threading

import pytest
import torch

from aigc_lib import pretrained, training
from aigc_lib.models import gpt

TINY = pretrained.Recipe(vocab_size=300, n_layer=1, n_head=2, n_embd=16, block_size=64,
                         dropout=0.0, steps=6, batch_size=4, lr=3e-3, warmup_steps=1,
                         min_lr_ratio=0.1, weight_decay=0.1, clip_grad_norm=1.0, eval_every=3)


@pytest.fixture
def tiny_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("AIGC_CACHE", str(tmp_path))
    monkeypatch.setitem(pretrained.RECIPES, ("bpe", "cpu"), TINY)
    return tmp_path


def test_trained_on_first_use_then_loaded(tiny_cache, monkeypatch):
    first = pretrained.load("bpe", "cpu", progress=False)
    assert first.trained_now and first.folder.parent.parent == tiny_cache
    assert not first.model.training
    assert [r["step"] for r in first.history.records] == [3, 6]
    assert all(0 < r["test_bpb"] < 9 for r in first.history.records)
    assert not list(tiny_cache.rglob("*.partial")) and not list(tiny_cache.rglob("train.safetensors"))

    def no_training(*args, **kwargs):
        raise AssertionError("a cached model must not be trained again")

    monkeypatch.setattr(pretrained, "train", no_training)
    second = pretrained.load("bpe", "cpu", progress=False)
    assert not second.trained_now and second.folder == first.folder
    for a, b in zip(first.model.state_dict().values(), second.model.state_dict().values()):
        assert torch.equal(a, b)
    assert second.history.to_dict() == first.history.to_dict()
    assert pretrained.small_gpt("bpe", "cpu") == first.folder


def test_training_is_deterministic(tmp_path):
    (a, _, ha), (b, _, hb) = (pretrained.train(TINY, progress=False) for _ in range(2))
    assert ha.step_losses == hb.step_losses
    for x, y in zip(a.state_dict().values(), b.state_dict().values()):
        assert torch.equal(x, y)


HF_FILES = {"config.json", "generation_config.json", "model.safetensors", "tokenizer.json",
            "tokenizer_config.json"}


def test_hugging_face_export_loads_with_auto_classes(tiny_cache):
    from transformers import AutoModelForCausalLM, AutoTokenizer, GPT2LMHeadModel

    path = pretrained.small_gpt("bpe", "cpu", progress=False)
    names = {p.name for p in path.iterdir()}
    assert HF_FILES | {"gpt.safetensors", "gpt_config.json", "recipe.json",
                       "history.json"} <= names
    assert not [n for n in names if n.endswith((".bin", ".pt", ".pth", ".pkl"))]
    ours = pretrained.load("bpe", "cpu").model
    # local_files_only: the folder alone suffices, no network is consulted
    hf = AutoModelForCausalLM.from_pretrained(path, local_files_only=True).eval()
    tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
    assert isinstance(hf, GPT2LMHeadModel)
    text = "def f(x): x"
    ids = tokenizer(text, return_tensors="pt")["input_ids"]
    assert tokenizer.decode(ids[0]) == text and tokenizer.eos_token == "<|endoftext|>"
    assert hf.config.eos_token_id == tokenizer.eos_token_id == 0
    with torch.no_grad():
        torch.testing.assert_close(hf(ids).logits, ours(ids), atol=1e-5, rtol=0)
    # greedy decoding agrees too (transformers stops early if it emits end-of-text)
    hf_out = hf.generate(ids, max_new_tokens=8, do_sample=False, pad_token_id=0)
    ours_out = ours.generate(ids, 8, temperature=0.0)
    assert torch.equal(hf_out, ours_out[:, :hf_out.shape[1]])
    assert gpt.from_hf(path).config == ours.config
    assert json.loads((path / "recipe.json").read_text())["steps"] == TINY.steps
    # the same tokenizer as the one pretrained.load returns
    assert tokenizer(text)["input_ids"] == pretrained.load("bpe", "cpu").tokenizer.encode(text).ids


def test_parallel_callers_share_one_training(tiny_cache, monkeypatch):
    calls = []
    real_train = pretrained.train

    def counting_train(*args, **kwargs):
        calls.append(1)
        return real_train(*args, **kwargs)

    monkeypatch.setattr(pretrained, "train", counting_train)
    results = []
    threads = [threading.Thread(target=lambda: results.append(
        pretrained.load("bpe", "cpu", progress=False))) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(calls) == 1 and sorted(r.trained_now for r in results) == [False, True]


def test_the_cache_key_follows_the_recipe(tiny_cache, monkeypatch):
    before = pretrained.folder("bpe", "cpu")
    monkeypatch.setitem(pretrained.RECIPES, ("bpe", "cpu"),
                        pretrained.Recipe(**{**TINY.__dict__, "steps": 7}))
    assert pretrained.folder("bpe", "cpu") != before


def test_the_cache_key_follows_device_and_precision(tiny_cache, monkeypatch):
    """A bf16 model trained on a GPU is not the float32 CPU model, whatever the profile."""
    assert pretrained.trained_on("cpu") == {"device": "cpu", "precision": "float32"}
    cpu_folder = pretrained.folder("bpe", "cpu")
    monkeypatch.setattr(pretrained, "trained_on",
                        lambda device=None: {"device": "cuda", "precision": "bf16-autocast"})
    gpu_folder = pretrained.folder("bpe", "cpu")
    assert gpu_folder != cpu_folder and gpu_folder.parent == cpu_folder.parent
    monkeypatch.setattr(pretrained, "trained_on",
                        lambda device=None: {"device": "cuda", "precision": "float32"})
    assert pretrained.folder("bpe", "cpu") not in (cpu_folder, gpu_folder)


def test_bad_input():
    with pytest.raises(ValueError, match="tokenizer must be one of"):
        pretrained.recipe("chars")
    with pytest.raises(ValueError, match="must be one of"):
        pretrained.recipe("bpe", "tpu")
    with pytest.raises(TypeError, match="r must be a Recipe"):
        pretrained.train({"steps": 3})
    assert isinstance(pretrained.recipe("byte", "gpu"), pretrained.Recipe)
    assert isinstance(training.History(), training.History)


def test_heldout_bits_per_byte_is_the_sequence_nll_per_byte():
    import math

    from aigc_lib import data

    tok = data.train_bpe("the cat sat on the mat. " * 20, 300)
    torch.manual_seed(0)
    model = gpt.GPT(gpt.GPTConfig(vocab_size=tok.get_vocab_size(), block_size=16, n_layer=1,
                                  n_head=2, n_embd=8)).eval()
    text = "the mat sat on the cat, the cat sat on the mat"
    nll, scored = gpt.sequence_nll(model, data.encode(tok, text))
    assert scored == len(tok.encode(text).ids)            # every token of the text is scored
    assert pretrained.heldout_bits_per_byte(model, tok, text) == pytest.approx(
        nll / (math.log(2) * len(text.encode())), rel=1e-12)
    with pytest.raises(ValueError, match="text must be a non-empty str"):
        pretrained.heldout_bits_per_byte(model, tok, "")
