"""DPO (chapter 8): the loss by its formula, its gradient by finite differences, equality with
TRL's DPOTrainer on a batch, sequence log-probabilities and the KL to the reference."""
import copy
import math
import os

import pytest
import torch
import torch.nn.functional as F

from aigc_lib import finetune, losses, preference
from aigc_lib.gradcheck import check_gradients
from tiny_lms import PAIRS, save_tiny

os.environ.setdefault("HF_HUB_OFFLINE", "1")
pytestmark = pytest.mark.usefixtures("one_thread")
LOGPS = [torch.tensor(v, dtype=torch.float64) for v in
         ([-3.0, -10.0, -7.5], [-4.0, -9.0, -2.0], [-3.5, -9.5, -7.0], [-3.8, -9.2, -3.0])]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    model, tok = finetune.load_causal_lm(save_tiny(tmp_path_factory.mktemp("tiny"), "gpt2"))
    finetune.use_chat_template(tok)
    return model, tok


def pairs_of(model, tok):
    prompts = [finetune.conversation(q) for q, _ in PAIRS]
    chosen = [a for _, a in PAIRS]
    rejected = [PAIRS[(i + 1) % len(PAIRS)][1] for i in range(len(PAIRS))]
    return prompts, chosen, rejected


def test_dpo_loss_is_the_bradley_terry_likelihood_of_the_implicit_rewards():
    beta = 0.3
    pc, pr, rc, rr = LOGPS
    by_hand = [-math.log(1 / (1 + math.exp(-beta * ((a - c) - (b - d)))))
               for a, b, c, d in zip(pc.tolist(), pr.tolist(), rc.tolist(), rr.tolist())]
    torch.testing.assert_close(losses.dpo_loss(pc, pr, rc, rr, beta, reduction="none"),
                               torch.tensor(by_hand, dtype=torch.float64))
    assert math.isclose(losses.dpo_loss(pc, pr, rc, rr, beta).item(), sum(by_hand) / 3)
    # at the reference (policy = reference) every pair costs log 2
    torch.testing.assert_close(losses.dpo_loss(rc, rr, rc, rr, reduction="none"),
                               torch.full((3,), math.log(2), dtype=torch.float64))
    # stable for huge margins
    big = losses.dpo_loss(torch.tensor([1e4]), torch.tensor([-1e4]), torch.zeros(1),
                          torch.zeros(1), reduction="none")
    assert torch.isfinite(big).all() and big.item() < 1e-30 + 1e-300


def test_dpo_loss_gradient_passes_finite_differences():
    report = check_gradients(lambda a, b, c, d: losses.dpo_loss(a, b, c, d, beta=0.7),
                             *LOGPS, names=["policy_chosen", "policy_rejected", "ref_chosen",
                                            "ref_rejected"])
    assert report.passed, report.message()
    assert torch.autograd.gradcheck(lambda a, b: losses.dpo_loss(a, b, LOGPS[2], LOGPS[3]),
                                    (LOGPS[0].clone().requires_grad_(),
                                     LOGPS[1].clone().requires_grad_()))


@pytest.mark.parametrize("call, error, words", [
    (lambda: losses.dpo_loss(LOGPS[0], LOGPS[1][:2], LOGPS[2], LOGPS[3]), ValueError,
     "same shape"),
    (lambda: losses.dpo_loss(LOGPS[0].long(), *LOGPS[1:]), TypeError, "policy_chosen_logps"),
    (lambda: losses.dpo_loss(*LOGPS, beta=0), ValueError, "beta must be > 0"),
    (lambda: losses.dpo_loss(*LOGPS, reduction="max"), ValueError, "reduction"),
    (lambda: losses.dpo_loss(LOGPS[0][None], *LOGPS[1:]), ValueError, "1 dimensions"),
])
def test_dpo_loss_bad_input(call, error, words):
    with pytest.raises(error, match=words):
        call()


def test_dpo_loss_equals_trl_dpo_trainer(tiny, tmp_path):
    """TRL tokenises the same conversations, scores them with its own forward pass and
    reduces them with its sigmoid loss; the result equals ours on the same batch."""
    trl = pytest.importorskip("trl")
    from datasets import Dataset

    reference, tok = tiny
    reference = copy.deepcopy(reference)      # TRL patches the forward of the models it gets
    policy = copy.deepcopy(reference).eval()
    with torch.no_grad():
        for p in policy.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=torch.Generator().manual_seed(0)))
    prompts, chosen, rejected = pairs_of(reference, tok)
    data = Dataset.from_list([{"prompt": p, "chosen": [{"role": "assistant", "content": c}],
                               "rejected": [{"role": "assistant", "content": r}]}
                              for p, c, r in zip(prompts, chosen, rejected)])
    args = trl.DPOConfig(output_dir=str(tmp_path), beta=0.2, report_to="none", use_cpu=True,
                         max_length=None, bf16=False)       # TRL defaults to bf16 autocast
    trainer = trl.DPOTrainer(model=policy, ref_model=reference, args=args, train_dataset=data,
                             processing_class=tok)
    theirs = trainer.compute_loss(policy, dict(trainer.data_collator(list(trainer.train_dataset))))
    pairs = preference.encode_pairs(tok, prompts, chosen, rejected, reference, max_length=256,
                                    max_reply_tokens=200)
    ours, extras = preference.dpo_step(0.2)(policy, *pairs.tensors())
    assert abs(ours.item() - theirs.item()) < 1e-6
    assert set(extras) == {"reward_margin"}


def test_sequence_logps_and_token_kl_by_hand(tiny):
    reference, tok = tiny
    prompts, chosen, rejected = pairs_of(reference, tok)
    pairs = preference.encode_pairs(tok, prompts, chosen, rejected, reference, max_length=256,
                                    max_reply_tokens=200)
    enc = pairs.chosen
    with torch.no_grad():
        logps = preference.sequence_logps(reference, *enc.tensors())
    torch.testing.assert_close(logps, pairs.ref_chosen, rtol=1e-5, atol=1e-4)
    assert torch.all(preference.token_kl(reference, reference, enc) == 0)
    policy = copy.deepcopy(reference)
    with torch.no_grad():
        policy.lm_head.weight.mul_(20.0)         # sharper next-token distributions
    kl = preference.token_kl(policy, reference, enc)
    row = 1
    ids, mask, labels = (t[row:row + 1] for t in enc.tensors())
    with torch.no_grad():
        p = F.log_softmax(policy(ids).logits[0, :-1].double(), -1)
        q = F.log_softmax(reference(ids).logits[0, :-1].double(), -1)
    scored = labels[0, 1:] != -100
    by_hand = (p.exp() * (p - q)).sum(-1)[scored].mean()
    assert kl[row].item() == pytest.approx(by_hand.item(), rel=1e-3)
    assert torch.all(kl > 0)


def test_train_dpo_moves_the_policy_toward_the_chosen_answers(tiny):
    reference, tok = tiny
    prompts, chosen, rejected = pairs_of(reference, tok)
    pairs = preference.encode_pairs(tok, prompts, chosen, rejected, reference, max_length=256)
    policy = copy.deepcopy(reference)
    before = preference.evaluate_pairs(policy, pairs, beta=0.1)
    stored = pairs.reference_report()
    torch.testing.assert_close(stored.policy_margin, before.policy_margin, atol=1e-4, rtol=0)
    assert stored.reward_accuracy == 0.0
    assert before.reward_accuracy == 0.0 and torch.allclose(before.reward_margin,
                                                            torch.zeros(4, dtype=torch.float64),
                                                            atol=1e-4)
    history = preference.train_dpo(policy, pairs, lr=1e-2, steps=10, beta=0.1, batch_size=4)
    after = preference.evaluate_pairs(policy, pairs, beta=0.1)
    assert history.step_losses[-1] < history.step_losses[0] and \
        history.step_losses[0] == pytest.approx(math.log(2), abs=1e-3)
    assert after.reward_accuracy == 1.0 and after.policy_accuracy >= before.policy_accuracy
    with pytest.raises(TypeError, match="pairs must be"):
        preference.evaluate_pairs(policy, [1])
    frozen = copy.deepcopy(reference).requires_grad_(False)
    with pytest.raises(ValueError, match="no trainable parameter"):
        preference.train_dpo(frozen, pairs, lr=1e-2, steps=1)
    with pytest.raises(ValueError, match="equally long"):
        preference.encode_pairs(tok, prompts, chosen[:2], rejected, reference, 64)
    with pytest.raises(TypeError, match=r"rejected\[0\]"):
        preference.encode_pairs(tok, prompts, chosen, [1] * 4, reference, 64)
