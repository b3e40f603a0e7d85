"""Chapter 8's path for a real pretrained model (AIGC_BASE_MODEL), run offline on tiny random
GPT-2 and Llama checkpoints saved with their tokenizers, as a Hub download would be: loading,
the chat template, LoRA via peft, supervised fine-tuning steps, DPO steps and generation."""
import copy
import os
import time

import pytest
import torch

from aigc_lib import finetune, preference
from aigc_lib.models import lora
from tiny_lms import PAIRS, save_tiny

os.environ.setdefault("HF_HUB_OFFLINE", "1")
pytestmark = pytest.mark.usefixtures("one_thread")
peft = pytest.importorskip("peft")


@pytest.mark.parametrize("kind", ["gpt2", "llama"])
def test_the_chapter_path_runs_end_to_end(kind, tmp_path):
    start = time.perf_counter()
    model, tok = finetune.load_causal_lm(save_tiny(tmp_path, kind))      # loading
    assert finetune.use_chat_template(tok) == ("book" if kind == "gpt2" else "model")
    sessions = finetune.chat_sessions(PAIRS * 2, exchanges=2)
    train = finetune.encode_chats(tok, sessions, max_length=128)           # chat template
    test = finetune.encode_replies(tok, [finetune.conversation(q, a) for q, a in PAIRS], 128)
    targets = lora.attention_targets(model)
    config = peft.LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0, target_modules=list(targets),
                             fan_in_fan_out=kind == "gpt2")
    sft = peft.get_peft_model(copy.deepcopy(model), config)                 # LoRA via peft
    ours = lora.add_lora(copy.deepcopy(model), r=4, alpha=8, targets=targets)
    lora.load_peft_state_dict(ours, peft.get_peft_model_state_dict(sft))
    ids = test.input_ids[:2]
    with torch.no_grad():
        torch.testing.assert_close(ours(ids).logits, sft(ids).logits, atol=1e-5, rtol=0)
    before = finetune.answer_perplexity(sft, test)
    history = finetune.train_sft(sft, train, lr=3e-2, steps=20, batch_size=4)   # SFT steps
    assert history.step_losses[-1] < history.step_losses[0]
    assert finetune.answer_perplexity(sft, test) < before
    reference = copy.deepcopy(sft).eval()
    prompts = [finetune.conversation(q) for q, _ in PAIRS]
    replies = finetune.generate_replies(sft, tok, prompts, max_new_tokens=12)   # generation
    assert len(replies) == len(PAIRS) and all(isinstance(r, str) for r in replies)
    pairs = preference.encode_pairs(tok, prompts, [a for _, a in PAIRS], replies, reference,
                                    max_length=128)
    history = preference.train_dpo(sft, pairs, lr=1e-2, steps=8, beta=0.1,   # DPO steps
                                   batch_size=4)
    report = preference.evaluate_pairs(sft, pairs, beta=0.1)
    assert history.step_losses[-1] < history.step_losses[0] and report.reward_accuracy > 0.5
    assert torch.all(preference.token_kl(sft, reference, pairs.chosen) >= 0)
    last = copy.deepcopy(model)
    names = finetune.freeze_all_but(last, finetune.last_block_prefixes(last))
    assert any(".1." in n for n in names) and not any(".0." in n for n in names)
    merged = sft.merge_and_unload()
    assert type(merged) is type(model)
    assert time.perf_counter() - start < 30             # both architectures in under 60 s
