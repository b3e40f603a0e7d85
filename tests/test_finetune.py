"""Chat-format fine-tuning (chapter 8): the chat template, multi-turn masks equal to
transformers' assistant masks, the batch and loss equal to TRL's SFTTrainer, answer scores
equal to a hand count, batched generation, loading any model offline, and clear errors."""
import itertools
import math
import os
import socket

import pytest
import torch
import torch.nn.functional as F
from transformers import GPT2LMHeadModel

from aigc_lib import costs, finetune
from tiny_lms import CHATML, CHATML_MARKED, PAIRS, save_tiny

os.environ.setdefault("HF_HUB_OFFLINE", "1")
pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def gpt2_folder(tmp_path_factory):
    return save_tiny(tmp_path_factory.mktemp("tiny-gpt2"), "gpt2")


@pytest.fixture(scope="module")
def llama_folder(tmp_path_factory):
    return save_tiny(tmp_path_factory.mktemp("tiny-llama"), "llama")


def load(folder):
    model, tok = finetune.load_causal_lm(folder)
    finetune.use_chat_template(tok)
    return model, tok


def multi_turn():
    """Three conversations: one and two exchanges, with and without a system turn."""
    return [finetune.conversation(PAIRS[0][0], PAIRS[0][1]),
            finetune.conversation(PAIRS[2][0], PAIRS[2][1], history=[PAIRS[1]]),
            finetune.conversation(PAIRS[3][0], PAIRS[3][1], history=PAIRS[:2], system=None)]


def test_collate_masks_prompt_and_padding():
    batch = finetune.collate_masked([([5, 6], [7, 8, 9]), ([1], [2])], pad_id=0)
    assert batch.input_ids.tolist() == [[5, 6, 7, 8, 9], [1, 2, 0, 0, 0]]
    assert batch.attention_mask.tolist() == [[1, 1, 1, 1, 1], [1, 1, 0, 0, 0]]
    assert batch.labels.tolist() == [[-100, -100, 7, 8, 9], [-100, 2, -100, -100, -100]]
    assert batch.answer_tokens == 4 and len(batch) == 2


def test_the_book_template_renders_turns_with_an_end_of_turn_token(gpt2_folder):
    model, tok = finetune.load_causal_lm(gpt2_folder)
    assert isinstance(model, GPT2LMHeadModel) and not model.training
    assert tok.chat_template is None and finetune.use_chat_template(tok) == "book"
    text = tok.apply_chat_template(multi_turn()[1], tokenize=False)
    eos = tok.eos_token
    assert text == (f"{finetune.SYSTEM_PROMPT}\nUser: {PAIRS[1][0]}\nAssistant: {PAIRS[1][1]}"
                    f"{eos}User: {PAIRS[2][0]}\nAssistant: {PAIRS[2][1]}{eos}")


@pytest.mark.parametrize("kind", ["gpt2", "llama"])
def test_multi_turn_mask_marks_every_assistant_turn(kind, gpt2_folder, llama_folder):
    """Our prefix-difference masks equal transformers' masks from {% generation %} markers."""
    _, tok = load(gpt2_folder if kind == "gpt2" else llama_folder)
    assert tok.chat_template == (finetune.BOOK_CHAT_TEMPLATE if kind == "gpt2" else CHATML)
    assert (tok.chat_template == finetune.BOOK_CHAT_TEMPLATE) == (kind == "gpt2")
    marked = finetune.BOOK_CHAT_TEMPLATE if kind == "gpt2" else CHATML_MARKED
    for messages in multi_turn():
        ids, mask = finetune.tokenize_chat(tok, messages)
        ref = tok.apply_chat_template(messages, tokenize=True, return_dict=True,
                                      chat_template=marked, return_assistant_tokens_mask=True)
        assert ids == list(ref["input_ids"]) and mask == list(ref["assistant_masks"])
        spans = "".join(map(str, mask)).replace("0", " ").split()
        assert len(spans) == sum(m["role"] == "assistant" for m in messages)
        learned = tok.decode([i for i, m in zip(ids, mask) if m])
        for m in messages:
            assert (m["content"] in learned) == (m["role"] == "assistant")
        learned_ids = [i if m else None for i, m in zip(ids, mask)]
        turns = [list(g) for k, g in itertools.groupby(learned_ids, lambda i: i is None) if not k]
        assert all(tok.eos_token_id in turn for turn in turns)   # every turn ends explicitly


def test_encode_chats_and_loss_equal_trl_sft_trainer(gpt2_folder, tmp_path):
    """The batch TRL's SFTTrainer builds with assistant_only_loss and its loss on it equal ours,
    multi-turn and with truncation (keep_start) biting on one row."""
    trl = pytest.importorskip("trl")
    from datasets import Dataset

    model, tok = load(gpt2_folder)
    conversations = multi_turn()
    max_length = len(finetune.tokenize_chat(tok, conversations[2])[0]) - 3
    args = trl.SFTConfig(output_dir=str(tmp_path), assistant_only_loss=True,
                         max_length=max_length, report_to="none", use_cpu=True, bf16=False,
                         shuffle_dataset=False)
    trainer = trl.SFTTrainer(model=model, args=args, processing_class=tok,
                             train_dataset=Dataset.from_list([{"messages": c}
                                                              for c in conversations]))
    batch = trainer.data_collator(list(trainer.train_dataset))
    ours = finetune.encode_chats(tok, conversations, max_length)
    assert torch.equal(ours.input_ids[ours.attention_mask == 1],
                       batch["input_ids"][batch["attention_mask"] == 1])
    assert torch.equal(ours.labels, batch["labels"])
    assert ours.input_ids.shape[1] == max_length
    model.eval()                                          # no dropout: the same function
    theirs = trainer.compute_loss(model, dict(batch))
    assert abs(finetune.answer_loss(model, *ours.tensors()).item() - theirs.item()) < 1e-6


def test_answer_scores_equal_a_hand_count_and_transformers_loss(gpt2_folder):
    model, tok = load(gpt2_folder)
    enc = finetune.encode_replies(tok, multi_turn(), max_length=256)
    nll, count = finetune.answer_nll_rows(model, enc, batch_size=2)
    by_hand, n = torch.zeros(len(enc), dtype=torch.float64), torch.zeros(len(enc))
    with torch.no_grad():
        for r, (ids, labels) in enumerate(zip(enc.input_ids, enc.labels)):
            logp = F.log_softmax(model(ids[None]).logits[0].double(), -1)
            for t in range(1, len(ids)):
                if labels[t] != -100:
                    by_hand[r] -= logp[t - 1, labels[t]]
                    n[r] += 1
    torch.testing.assert_close(nll, by_hand, rtol=1e-5, atol=1e-5)
    assert count.tolist() == n.tolist() and int(count.sum()) == enc.answer_tokens
    total, tokens = finetune.answer_nll(model, enc)
    assert math.isclose(finetune.answer_perplexity(model, enc), math.exp(total / tokens))
    hf_loss = model(input_ids=enc.input_ids, attention_mask=enc.attention_mask,
                    labels=enc.labels).loss
    assert math.isclose(finetune.answer_loss(model, *enc.tensors()).item(), hf_loss.item(),
                        rel_tol=1e-6)


def test_replies_score_the_same_tokens_whatever_the_prompt(gpt2_folder):
    _, tok = load(gpt2_folder)
    bare = [finetune.conversation(q, a) for q, a in PAIRS]
    shots = [finetune.conversation(q, a, history=[PAIRS[3], PAIRS[0]]) for q, a in PAIRS]
    plain, few = (finetune.encode_replies(tok, c, 256, 100) for c in (bare, shots))
    assert [r[r != -100].tolist() for r in plain.labels] == \
        [r[r != -100].tolist() for r in few.labels]
    assert few.input_ids.shape[1] > plain.input_ids.shape[1]
    for row, (_, a) in enumerate(PAIRS):
        scored = plain.labels[row][plain.labels[row] != -100].tolist()
        assert scored[-1] == tok.eos_token_id and tok.decode(scored[:-1]) == " " + a
    short = finetune.encode_replies(tok, shots, max_length=16, max_reply_tokens=5)
    assert short.input_ids.shape[1] <= 16 and (short.labels != -100).sum(1).max() <= 5


@pytest.mark.parametrize("kind", ["gpt2", "llama"])
def test_batched_generation_equals_one_by_one(kind, gpt2_folder, llama_folder):
    model, tok = load(gpt2_folder if kind == "gpt2" else llama_folder)
    prompts = [finetune.conversation(q) for q, _ in PAIRS]
    together = finetune.generate_replies(model, tok, prompts, max_new_tokens=10)
    alone = [finetune.generate_replies(model, tok, [p], max_new_tokens=10)[0] for p in prompts]
    assert together == alone and all(isinstance(r, str) for r in together)


def test_chat_sessions_use_every_pair_once():
    dialogues = PAIRS * 3
    sessions = finetune.chat_sessions(dialogues, exchanges=2, seed=1)
    users = [m["content"] for s in sessions for m in s if m["role"] == "user"]
    assert sorted(users) == sorted(q for q, _ in dialogues)
    assert all(sum(m["role"] == "user" for m in s) <= 2 for s in sessions)
    short = finetune.chat_sessions(dialogues, exchanges=3, fits=lambda s: len(s) <= 4)
    assert all(len(s) <= 4 for s in short) and len(short) == len(dialogues)


def test_freeze_all_but_follows_tied_weights(gpt2_folder):
    model, _ = finetune.load_causal_lm(gpt2_folder)
    names = finetune.freeze_all_but(model, ["transformer.h.1.", "lm_head"])
    assert "transformer.wte.weight" in names                  # lm_head is tied to it
    assert not model.transformer.h[0].attn.c_attn.weight.requires_grad
    expected = (sum(p.numel() for p in model.transformer.h[1].parameters())
                + model.transformer.wte.weight.numel())
    assert costs.count_parameters(model, trainable_only=True) == expected


def test_train_sft_lowers_the_loss(gpt2_folder):
    model, tok = load(gpt2_folder)
    enc = finetune.encode_chats(tok, multi_turn(), 256)
    before = finetune.answer_perplexity(model, enc)
    history = finetune.train_sft(model, enc, lr=1e-2, steps=15, batch_size=3)
    assert history.step_losses[-1] < history.step_losses[0]
    assert finetune.answer_perplexity(model, enc) < 0.7 * before


def test_a_template_without_end_of_turn_and_a_conversation_without_assistant(gpt2_folder):
    _, tok = load(gpt2_folder)
    with pytest.raises(ValueError, match="no assistant turn"):
        finetune.tokenize_chat(tok, finetune.conversation("Hi?"))
    tok.chat_template = finetune.BOOK_CHAT_TEMPLATE.replace(" + eos_token", "")
    with pytest.raises(ValueError, match="without the end-of-turn token"):
        finetune.encode_chats(tok, multi_turn(), 64)


def test_unknown_models_fail_clearly_without_the_network(monkeypatch, tmp_path):
    """Offline, an id that is not cached fails at once, naming it, and opens no connection."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")

    def no_network(*args, **kwargs):
        raise AssertionError("a network connection was attempted")

    monkeypatch.setattr(socket.socket, "connect", no_network)
    monkeypatch.setattr(socket, "create_connection", no_network)
    with pytest.raises(OSError, match="aigc-book/no-such-model.*HF_HUB_OFFLINE"):
        finetune.load_causal_lm("aigc-book/no-such-model")
    with pytest.raises(FileNotFoundError, match="not a folder"):
        finetune.load_causal_lm(tmp_path / "missing")
    with pytest.raises(ValueError, match="config.json"):
        finetune.load_causal_lm(tmp_path)


@pytest.mark.parametrize("call, error, words", [
    (lambda: finetune.collate_masked([], 0), ValueError, "examples must be a non-empty"),
    (lambda: finetune.collate_masked([([1], [])], 0), ValueError, "empty prompt or answer"),
    (lambda: finetune.collate_masked([([1], [2])], -1), TypeError, "pad_id"),
    (lambda: finetune.collate_masked([[1, 2, 3]], 0), TypeError, r"examples\[0\]"),
    (lambda: finetune.freeze_all_but(torch.nn.Linear(2, 2), ["nothing"]), ValueError, "match no"),
    (lambda: finetune.freeze_all_but(torch.nn.Linear(2, 2), "weight"), TypeError, "prefixes"),
    (lambda: finetune.load_causal_lm(3), TypeError, "source must be"),
    (lambda: finetune.answer_nll(torch.nn.Linear(2, 2), ([1],)), TypeError, "encoded must be"),
    (lambda: finetune.check_conversation("hi"), TypeError, "conversation must be"),
    (lambda: finetune.check_conversation([{"role": "bot", "content": "x"}]), ValueError,
     r"conversation\[0\]\['role'\]"),
    (lambda: finetune.check_conversation([{"role": "user", "text": "x"}]), TypeError,
     "exactly the keys"),
    (lambda: finetune.check_conversation([{"role": "user", "content": 3}]), TypeError,
     "'content'\\] must be a str"),
    (lambda: finetune.chat_sessions([("q",)]), TypeError, r"dialogues\[0\]"),
    (lambda: finetune.chat_sessions([]), ValueError, "dialogues is empty"),
])
def test_bad_input(call, error, words):
    with pytest.raises(error, match=words):
        call()


def test_encode_bad_input(gpt2_folder):
    model, tok = load(gpt2_folder)
    with pytest.raises(ValueError, match="conversations is empty"):
        finetune.encode_chats(tok, [], max_length=16)
    with pytest.raises(ValueError, match="max_reply_tokens"):
        finetune.encode_replies(tok, multi_turn(), max_length=16, max_reply_tokens=16)
    with pytest.raises(ValueError, match="end with an assistant turn"):
        finetune.encode_replies(tok, [finetune.conversation("Hi?")], max_length=16)
    with pytest.raises(ValueError, match="no assistant token within"):
        finetune.encode_chats(tok, multi_turn(), max_length=4)
    with pytest.raises(ValueError, match="end with a user turn"):
        finetune.generate_replies(model, tok, multi_turn())
    with pytest.raises(ValueError, match="max_new_tokens must be <"):
        finetune.generate_replies(model, tok, [finetune.conversation("Hi")], max_new_tokens=256)
