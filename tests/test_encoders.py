"""Sentence embeddings: mean pooling, tokenizing, offline loading of all-MiniLM-L6-v2."""
import numpy as np
import pytest
import torch

from aigc_lib import data, encoders

MESSAGES = ["My computer won't turn on.", "hi", "Who wrote Hamlet, and when was it written?"]


pytestmark = pytest.mark.usefixtures("one_thread")



@pytest.fixture(scope="module")
def minilm():
    return encoders.load_tokenizer(), encoders.load_encoder()


def test_mean_pool_equals_a_loop_over_real_tokens():
    hidden = torch.randn(3, 5, 4, dtype=torch.float64)
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 0, 0, 0, 0], [1, 1, 1, 1, 1]])
    manual = torch.stack([hidden[n, : int(mask[n].sum())].mean(0) for n in range(3)])
    assert torch.allclose(encoders.mean_pool(hidden, mask), manual)


@pytest.mark.parametrize("hidden, mask, error, words", [
    (torch.zeros(2, 3, 4), torch.ones(2, 4), ValueError, "mask must have shape"),
    (torch.zeros(2, 3), torch.ones(2, 3), ValueError, "hidden must have 3 dimensions"),
    (torch.zeros(2, 3, 4, dtype=torch.int64), torch.ones(2, 3), TypeError, "hidden must be a float"),
    (torch.zeros(2, 3, 4), torch.full((2, 3), 2), ValueError, "only 0 and 1"),
    (torch.zeros(2, 3, 4), torch.tensor([[1, 1, 0], [0, 0, 0]]), ValueError, "row of zeros"),
    (torch.full((1, 1, 2), float("nan")), torch.ones(1, 1), ValueError, "hidden contains NaN"),
])
def test_mean_pool_bad_input(hidden, mask, error, words):
    with pytest.raises(error, match=words):
        encoders.mean_pool(hidden, mask)


def test_minilm_loads_offline_with_the_published_size(minilm, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    tokenizer, encoder = minilm
    n = sum(p.numel() for p in encoder.parameters())
    assert 22_000_000 < n < 23_500_000 and encoder.config.hidden_size == 384
    assert not encoder.training
    ids, mask = encoders.tokenize(tokenizer, MESSAGES, max_length=8)
    assert ids.shape == mask.shape and ids.shape[1] <= 8 and ids.dtype == torch.int64
    assert mask[1].sum() == 3  # [CLS] hi [SEP]


def test_embed_equals_sentence_transformers(minilm):
    st = pytest.importorskip("sentence_transformers")
    tokenizer, encoder = minilm
    ours = encoders.embed(encoder, tokenizer, MESSAGES, max_length=256, normalize=True,
                          batch_size=2)
    theirs = st.SentenceTransformer(str(data.minilm_folder()), device="cpu",
                                    local_files_only=True).encode(MESSAGES)
    assert np.allclose(ours.numpy(), theirs, atol=1e-5)


def test_embed_does_not_depend_on_batching_or_order(minilm):
    tokenizer, encoder = minilm
    whole = encoders.embed(encoder, tokenizer, MESSAGES)
    one_by_one = torch.cat([encoders.embed(encoder, tokenizer, [m]) for m in MESSAGES])
    assert torch.allclose(whole, one_by_one, atol=1e-5)
    assert torch.allclose(encoders.embed(encoder, tokenizer, MESSAGES[::-1]), whole.flip(0),
                          atol=1e-5)


def test_truncation_cuts_long_messages(minilm):
    tokenizer, _ = minilm
    ids, mask = encoders.tokenize(tokenizer, ["word " * 100], max_length=16)
    assert ids.shape == (1, 16) and mask.all()


@pytest.mark.parametrize("texts, kwargs, error, words", [
    ("just one string", {}, TypeError, "texts must be a list of str"),
    ([], {}, ValueError, "texts is empty"),
    (["ok", 3], {}, TypeError, r"texts\[1\] must be a str"),
    (["ok"], {"max_length": 2}, ValueError, "max_length must be >= 3"),
    (["ok"], {"max_length": 0}, ValueError, "max_length must be > 0"),
])
def test_tokenize_bad_input(minilm, texts, kwargs, error, words):
    with pytest.raises(error, match=words):
        encoders.tokenize(minilm[0], texts, **kwargs)


def test_loading_from_a_folder_that_is_not_a_model(tmp_path):
    with pytest.raises(FileNotFoundError, match="no config.json"):
        encoders.load_encoder(tmp_path)
    with pytest.raises(TypeError, match="folder must be"):
        encoders.load_tokenizer(42)


def test_quiet_transformers_restores_the_verbosity():
    from transformers.utils import logging as hf_logging

    before = hf_logging.get_verbosity()
    with encoders.quiet_transformers():
        assert hf_logging.get_verbosity() == hf_logging.ERROR
        assert not hf_logging.is_progress_bar_enabled()
    assert hf_logging.get_verbosity() == before


def test_quiet_transformers_can_hide_only_the_bars():
    from transformers.utils import logging as hf_logging

    before, bars = hf_logging.get_verbosity(), hf_logging.is_progress_bar_enabled()
    with encoders.quiet_transformers(messages=False):
        assert hf_logging.get_verbosity() == before
        assert not hf_logging.is_progress_bar_enabled()
    assert hf_logging.is_progress_bar_enabled() == bars
