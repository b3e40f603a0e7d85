"""Fine-tuning helpers: masked labels, the answer loss and perplexity (equal to transformers'
own loss and to a hand count), partial freezing, and the loading path that chapter 8 uses for
both the book's GPT and gpt2 — here on a tiny random GPT-2 checkpoint saved to a local folder."""
import math
import os

import pytest
import torch
import torch.nn.functional as F
from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast

from aigc_lib import costs, data, finetune, training
from aigc_lib.models import lora

os.environ.setdefault("HF_HUB_OFFLINE", "1")
PAIRS = [("My mouse is not responding.", "Try another USB port."),
         ("can you write a loop in Python?", "for i in range(3):\n    print(i)"),
         ("I forgot my password.", "Use the password reset option.")]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """A tiny random GPT-2 and a byte-level BPE tokenizer, saved as a Hugging Face folder."""
    folder = tmp_path_factory.mktemp("tiny-gpt2")
    text = " ".join(q + " " + a for q, a in PAIRS) * 5 + data.python_docs("train")[:20_000]
    tok = data.train_bpe(text, 320)
    PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=data.END_OF_TEXT,
                            eos_token=data.END_OF_TEXT, unk_token=data.END_OF_TEXT,
                            model_max_length=64).save_pretrained(folder)
    torch.manual_seed(0)
    config = GPT2Config(vocab_size=tok.get_vocab_size(), n_positions=64, n_embd=32, n_layer=2,
                        n_head=2, bos_token_id=0, eos_token_id=0)
    GPT2LMHeadModel(config).save_pretrained(folder)
    return folder


def test_collate_masks_prompt_and_padding():
    batch = finetune.collate_masked([([5, 6], [7, 8, 9]), ([1], [2])], pad_id=0)
    assert batch.input_ids.tolist() == [[5, 6, 7, 8, 9], [1, 2, 0, 0, 0]]
    assert batch.attention_mask.tolist() == [[1, 1, 1, 1, 1], [1, 1, 0, 0, 0]]
    assert batch.labels.tolist() == [[-100, -100, 7, 8, 9], [-100, 2, -100, -100, -100]]
    assert batch.answer_tokens == 4 and len(batch) == 2


def test_loading_from_a_local_folder_and_encoding(checkpoint):
    model, tok = finetune.load_causal_lm(checkpoint)
    assert isinstance(model, GPT2LMHeadModel) and not model.training
    enc = finetune.encode_dialogues(tok, PAIRS, max_length=64)
    for row, (q, a) in enumerate(PAIRS):
        scored = enc.labels[row][enc.labels[row] != -100].tolist()
        assert scored[-1] == tok.eos_token_id
        assert tok.decode(scored[:-1]) == " " + a
        n = int(enc.attention_mask[row].sum())
        assert tok.decode(enc.input_ids[row, :n]) == f"Question: {q}\nAnswer: {a}{tok.eos_token}"
    # a context in front changes the prompt but not the scored tokens
    context = finetune.few_shot_context([("Hi", "Hello.")])
    assert context == "Question: Hi\nAnswer: Hello.\n\n"
    few = finetune.encode_dialogues(tok, PAIRS, max_length=64, context=context)
    assert [r[r != -100].tolist() for r in few.labels] == \
        [r[r != -100].tolist() for r in enc.labels]
    # truncation: answers to max_answer_tokens, prompts from the left, rows within max_length
    short = finetune.encode_dialogues(tok, PAIRS, max_length=12, max_answer_tokens=5)
    assert short.input_ids.shape[1] <= 12 and (short.labels != -100).sum(1).max() <= 5
    with pytest.raises(ValueError, match="config.json"):
        finetune.load_causal_lm(checkpoint.parent)


def test_answer_loss_and_nll_equal_a_hand_count(checkpoint):
    model, tok = finetune.load_causal_lm(checkpoint)
    enc = finetune.encode_dialogues(tok, PAIRS, max_length=64)
    total, count = finetune.answer_nll(model, enc, batch_size=2)
    by_hand, n = 0.0, 0
    with torch.no_grad():
        for ids, labels in zip(enc.input_ids, enc.labels):
            logp = F.log_softmax(model(ids[None]).logits[0], -1)
            for t in range(1, len(ids)):
                if labels[t] != -100:
                    by_hand -= logp[t - 1, labels[t]].item()
                    n += 1
    assert count == n == enc.answer_tokens
    assert math.isclose(total, by_hand, rel_tol=1e-5)
    assert math.isclose(finetune.answer_perplexity(model, enc), math.exp(total / count),
                        rel_tol=1e-9)
    loss = finetune.answer_loss(model, *enc.tensors())        # transformers' own loss
    assert math.isclose(loss.item(), total / count, rel_tol=1e-5)
    # padding is masked: the same row padded wider scores the same
    wide = finetune.collate_masked([(r[:1].tolist(), r[1:int(m.sum())].tolist())
                                    for r, m in zip(enc.input_ids, enc.attention_mask)], 0)
    assert wide.input_ids.shape == enc.input_ids.shape


def test_fit_lowers_the_answer_loss_with_full_lora_and_partial_training(checkpoint):
    for kind in ("full", "lora", "last block"):
        model, tok = finetune.load_causal_lm(checkpoint)
        enc = finetune.encode_dialogues(tok, PAIRS, max_length=64)
        if kind == "lora":
            lora.add_lora(model, r=4, alpha=8)
        elif kind == "last block":
            finetune.freeze_all_but(model, ["transformer.h.1.", "transformer.ln_f", "lm_head"])
        before = finetune.answer_perplexity(model, enc)
        params = [p for p in model.parameters() if p.requires_grad]
        lr = 5e-2 if kind == "lora" else 1e-2
        history = training.fit(model, enc.tensors(), loss_fn=finetune.answer_loss,
                               optimizer=torch.optim.AdamW(params, lr=lr), steps=15,
                               batch_size=3, progress=False)
        assert history.step_losses[-1] < history.step_losses[0]
        # a random model's attention barely matters, so LoRA on it can only nudge the output
        assert finetune.answer_perplexity(model, enc) < (0.97 if kind == "lora" else 0.7) * before
        answer = finetune.generate_answer(model, tok, PAIRS[0][0], max_new_tokens=8)
        assert isinstance(answer, str)


def test_freeze_all_but_follows_tied_weights(checkpoint):
    model, _ = finetune.load_causal_lm(checkpoint)
    names = finetune.freeze_all_but(model, ["transformer.h.1.", "lm_head"])
    assert "transformer.wte.weight" in names                  # lm_head is tied to it
    assert not model.transformer.h[0].attn.c_attn.weight.requires_grad
    assert model.lm_head.weight.requires_grad
    expected = sum(p.numel() for p in model.transformer.h[1].parameters()) + 320 * 32
    assert costs.count_parameters(model, trainable_only=True) == expected
    assert costs.count_parameters(model) > expected


@pytest.mark.parametrize("call, error, words", [
    (lambda: finetune.collate_masked([], 0), ValueError, "examples must be a non-empty"),
    (lambda: finetune.collate_masked([([1], [])], 0), ValueError, "empty prompt or answer"),
    (lambda: finetune.collate_masked([([1], [2])], -1), TypeError, "pad_id"),
    (lambda: finetune.collate_masked([[1, 2, 3]], 0), TypeError, r"examples\[0\]"),
    (lambda: finetune.freeze_all_but(torch.nn.Linear(2, 2), ["nothing"]), ValueError, "match no"),
    (lambda: finetune.freeze_all_but(torch.nn.Linear(2, 2), "weight"), TypeError, "prefixes"),
    (lambda: finetune.load_causal_lm(3), TypeError, "source must be"),
    (lambda: finetune.answer_nll(torch.nn.Linear(2, 2), ([1],)), TypeError, "encoded must be"),
])
def test_bad_input(call, error, words):
    with pytest.raises(error, match=words):
        call()


def test_encode_bad_input(checkpoint):
    _, tok = finetune.load_causal_lm(checkpoint)
    with pytest.raises(TypeError, match=r"dialogues\[0\]"):
        finetune.encode_dialogues(tok, [("q",)], max_length=16)
    with pytest.raises(ValueError, match="dialogues is empty"):
        finetune.encode_dialogues(tok, [], max_length=16)
    with pytest.raises(ValueError, match="dialogues is empty"):
        finetune.few_shot_context([])
    with pytest.raises(ValueError, match="max_answer_tokens"):
        finetune.encode_dialogues(tok, PAIRS, max_length=16, max_answer_tokens=16)
    with pytest.raises(TypeError, match="max_length must be an int"):
        finetune.encode_dialogues(tok, PAIRS, max_length=16.0)
    with pytest.raises(TypeError, match="context must be a str"):
        finetune.encode_dialogues(tok, PAIRS, max_length=16, context=None)


def test_a_hub_name_is_never_substituted(monkeypatch):
    """Offline, 'gpt2' (not in the local cache) fails loudly instead of loading something else."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(OSError):
        finetune.load_causal_lm("aigc-book/no-such-model")
