"""Money, energy and break-even arithmetic, the escalation policy, distinct n-grams and
speculative decoding (chapter 11)."""
import math
import time

import pytest
import torch
from scipy.stats import chisquare

from aigc_lib import costs, decoding
from aigc_lib.models import gpt

pytestmark = pytest.mark.usefixtures("one_thread")

DEVICE = costs.Device("test machine", price_per_hour=3.6, watts=3600.0, source="test",
                      as_of="today")


def test_per_thousand_requests_by_hand():
    one = costs.per_thousand_requests(1.0, DEVICE)      # 1,000 s at $3.6/h and 3.6 kW
    assert (one.dollars, one.kwh, one.seconds) == pytest.approx((1.0, 1.0, 1000.0))
    half = costs.per_thousand_requests(1.0, DEVICE, utilisation=0.5)
    assert (half.dollars, half.kwh) == pytest.approx((2.0, 1.0))  # idle hours paid, not drawn
    assert costs.per_thousand_requests(0.0).dollars == 0.0
    assert costs.CPU_VM.watts == pytest.approx(2 * 3.5 * 1.135)


def test_median_seconds_takes_the_median_of_repeats():
    calls, pauses = [], iter([0.0, 0.05, 0.0, 0.2, 0.0])

    def fn():
        calls.append(1)
        time.sleep(next(pauses))

    seconds = costs.median_seconds(fn, repeats=3, warmup=2)
    assert len(calls) == 5 and 0.0 <= seconds < 0.05      # the repeats slept 0.2, 0, 0
    pauses = iter([0.0, 0.3])
    assert costs.median_seconds(fn, 1, 1, clock=time.process_time) < 0.1   # sleep uses no CPU
    with pytest.raises(TypeError, match="fn"):
        costs.median_seconds(42)
    with pytest.raises(TypeError, match="clock"):
        costs.median_seconds(fn, clock=1.0)


def test_interleaved_seconds_take_turns():
    order = []
    times = costs.interleaved_seconds({"a": lambda: order.append("a"),
                                       "b": lambda: order.append("b")}, repeats=3, warmup=1)
    assert order == ["a", "b"] * 4 and [len(v) for v in times.values()] == [3, 3]
    with pytest.raises(TypeError, match="fns"):
        costs.interleaved_seconds({})


def test_escalation_policy_by_hand_and_as_chapter_12_computes_it():
    val_conf = torch.tensor([0.9, 0.8, 0.7, 0.6, 0.5, 0.95, 0.3])
    val_ok = torch.tensor([1, 1, 1, 1, 1, 0, 0])
    test_conf = torch.tensor([0.99, 0.75, 0.55, 0.4, 0.85])
    test_ok = torch.tensor([1, 0, 1, 1, 0])
    policy = costs.escalation_policy(val_conf, val_ok, test_conf, test_ok, keep=0.75)
    # correct validation confidences 0.5..0.9: the 25 % quantile is 0.6
    assert policy.threshold == pytest.approx(0.6)
    assert (policy.automated, policy.wrong_automated) == pytest.approx((3 / 5, 2 / 5))
    assert (policy.wrong_passed, policy.wrong, policy.n) == (2, 2, 5)
    inline = val_conf[val_ok.bool()].quantile(0.25).item()       # chapter 12's way
    assert policy.threshold == pytest.approx(inline)
    everything = costs.escalation_policy(val_conf, val_ok, test_conf, test_ok, keep=1.0)
    assert everything.threshold == pytest.approx(0.5) and everything.automated == 0.8


def test_escalation_keeps_more_as_keep_grows():
    torch.manual_seed(0)
    conf, ok = torch.rand(200), torch.rand(200) < 0.8
    shares = [costs.escalation_policy(conf, ok, conf, ok, keep=k).automated
              for k in (0.5, 0.7, 0.9, 1.0)]
    assert shares == sorted(shares) and shares[0] < shares[-1]


def test_options_and_break_even_by_hand():
    prices = costs.Prices(hourly_wage=36.0, seconds_per_label=10, seconds_per_message=100,
                          seconds_per_wrong_answer=300, device=DEVICE, training_device=DEVICE,
                          hours_per_month=10, months=5, upkeep_per_month=4.0)
    hand = costs.manual_option(prices)
    assert hand.per_message == pytest.approx(1.0)                 # 100 s at $36/h
    policy = costs.Escalation(threshold=0.5, automated=0.75, wrong_automated=0.05,
                              wrong_passed=5, wrong=10, n=100)
    auto = costs.automated_option("router", labels=100, train_seconds=1000,
                                  inference_seconds=0.5, escalation=policy, prices=prices)
    assert auto.one_off == pytest.approx(10.0 + 1.0)              # labels + training time
    assert auto.per_month == pytest.approx(36.0 + 4.0)            # machine held + upkeep
    assert auto.per_message == pytest.approx(0.0005 + 0.25 + 0.05 * 3.0)
    v = costs.break_even_volume(auto, hand, months=5)
    assert v == pytest.approx((11.0 / 5 + 40.0) / (1.0 - 0.4005))
    assert auto.monthly_cost(v, 5) == pytest.approx(hand.monthly_cost(v, 5))
    assert auto.monthly_cost(2 * v, 5) < hand.monthly_cost(2 * v, 5)
    assert auto.monthly_cost(v / 2, 5) > hand.monthly_cost(v / 2, 5)
    assert costs.break_even_volume(hand, auto, months=5) == math.inf
    assert costs.break_even_volume(hand, hand, months=5) == 0.0


def test_distinct_n():
    assert decoding.distinct_n([1, 2, 3, 4], 2) == 1.0
    assert decoding.distinct_n([7, 7, 7, 7, 7], 1) == pytest.approx(1 / 5)
    assert decoding.distinct_n(torch.tensor([1, 2, 1, 2, 1]), 2) == pytest.approx(2 / 4)


def test_accept_or_resample_draws_from_the_target_distribution():
    p = torch.tensor([0.5, 0.1, 0.3, 0.1])
    q = torch.tensor([0.1, 0.6, 0.1, 0.2])
    g = torch.Generator().manual_seed(0)
    counts = torch.zeros(4)
    for _ in range(8000):
        draft = int(torch.multinomial(q, 1, generator=g))
        _, token = decoding.accept_or_resample(p, q, draft, g)
        counts[token] += 1
    assert chisquare(counts.numpy(), 8000 * p.numpy()).pvalue > 1e-3
    assert chisquare(counts.numpy(), 8000 * q.numpy()).pvalue < 1e-6     # not the draft's


def tiny(seed, n_layer, n_embd):
    torch.manual_seed(seed)
    return gpt.GPT(gpt.GPTConfig(vocab_size=5, block_size=16, n_layer=n_layer, n_head=2,
                                 n_embd=n_embd)).eval()


def test_speculative_greedy_is_the_targets_greedy_output():
    target, draft = tiny(0, 2, 16), tiny(1, 1, 8)
    with torch.no_grad():
        for p in target.parameters():
            p.mul_(8)                                      # sharp, varied distributions
    prompt = torch.tensor([[1, 3]])
    for k in (1, 3, 5):
        out = decoding.speculative_generate(target, draft, prompt, 9, draft_tokens=k,
                                            temperature=0.0)
        assert torch.equal(out.tokens, target.generate(prompt, 9, temperature=0.0))
        assert out.drafted >= out.accepted and out.target_calls < 9 + 1
    same = decoding.speculative_generate(target, target, prompt, 9, 3, temperature=0.0)
    assert same.acceptance_rate == 1.0 and same.target_calls == math.ceil(9 / 4)


def exact_distribution(model, prompt, n):
    """Probability of every continuation of n tokens under plain sampling from model."""
    probs = {}
    with torch.no_grad():
        for seq in torch.cartesian_prod(*[torch.arange(5)] * n):
            ids = torch.cat([prompt[0], seq]).unsqueeze(0)
            logp = torch.log_softmax(model(ids[:, :-1])[0, -n:], -1)
            probs[tuple(seq.tolist())] = logp.gather(1, seq[:, None]).sum().exp().item()
    return probs


def test_speculative_sampling_leaves_the_distribution_unchanged():
    target, draft = tiny(0, 2, 16), tiny(1, 1, 8)
    with torch.no_grad():
        for p in target.parameters():
            p.mul_(3)
    prompt, n, runs = torch.tensor([[2]]), 3, 1500
    exact = exact_distribution(target, prompt, n)
    keys = sorted(exact)
    g = torch.Generator().manual_seed(0)
    counts = dict.fromkeys(keys, 0)
    drafted = dict.fromkeys(keys, 0)
    for _ in range(runs):
        out = decoding.speculative_generate(target, draft, prompt, n, 2, generator=g)
        counts[tuple(out.tokens[0, 1:].tolist())] += 1
    for row in draft.generate(prompt.expand(runs, 1), n, generator=g):   # a negative control
        drafted[tuple(row[1:].tolist())] += 1
    total = sum(exact.values())
    expected = [runs * exact[k] / total for k in keys]
    assert chisquare([counts[k] for k in keys], expected).pvalue > 1e-3
    assert chisquare([drafted[k] for k in keys], expected).pvalue < 1e-6


def test_expected_speedup_formula():
    assert decoding.expected_speedup(0.0, 4, 0.5) == pytest.approx(1 / 3)
    assert decoding.expected_speedup(1.0, 4, 0.0) == pytest.approx(5.0)
    assert decoding.expected_speedup(0.5, 1, 0.0) == pytest.approx(1.5)
    assert decoding.expected_speedup(0.8, 3, 0.1) == pytest.approx(
        (1 - 0.8 ** 4) / 0.2 / 1.3)
    assert decoding.expected_speedup(0.8, 3, 0.1, verify_ratio=1.5) == pytest.approx(
        (1 - 0.8 ** 4) / 0.2 / 1.8)


@pytest.mark.parametrize("call, error, words", [
    (lambda: costs.per_thousand_requests(-1.0), ValueError, "seconds_per_request"),
    (lambda: costs.per_thousand_requests(1.0, "cpu"), TypeError, "device"),
    (lambda: costs.per_thousand_requests(1.0, utilisation=1.5), ValueError, "utilisation"),
    (lambda: costs.Device("x", -1.0, 1.0, "s", "d"), ValueError, "price_per_hour"),
    (lambda: costs.escalation_policy([0.5, 2.0], [1, 1], [0.5], [1]), ValueError,
     "val_confidence"),
    (lambda: costs.escalation_policy([0.5], [1, 0], [0.5], [1]), ValueError, "equal length"),
    (lambda: costs.escalation_policy([0.5], [0], [0.5], [1]), ValueError, "no correct"),
    (lambda: costs.escalation_policy([0.5], [1], [0.5], [1], keep=0), ValueError, "keep"),
    (lambda: costs.Prices(months=0), ValueError, "months"),
    (lambda: costs.break_even_volume("a", "b", 12), TypeError, "option"),
    (lambda: decoding.distinct_n([1, 2], 3), ValueError, "at least n"),
    (lambda: decoding.expected_speedup(1.5, 2, 0.1), ValueError, "acceptance"),
    (lambda: decoding.speculative_generate(tiny(0, 1, 8), tiny(0, 1, 8),
                                           torch.zeros(2, 3).long(), 4), ValueError, "one row"),
    (lambda: decoding.speculative_generate(tiny(0, 1, 8), tiny(0, 1, 8),
                                           torch.zeros(1, 3).long(), 12, 4), ValueError,
     "block_size"),
    (lambda: decoding.speculative_generate(tiny(0, 1, 8), "draft", torch.zeros(1, 3).long(), 4),
     TypeError, "draft"),
])
def test_bad_input_is_rejected(call, error, words):
    with pytest.raises(error, match=words):
        call()


def test_a_custom_recipe_is_trained_once_and_cached_apart(tmp_path, monkeypatch):
    from aigc_lib import pretrained

    monkeypatch.setenv("AIGC_CACHE", str(tmp_path))
    draft = pretrained.Recipe(vocab_size=300, n_layer=1, n_head=2, n_embd=8, block_size=32,
                              dropout=0.0, steps=4, batch_size=2, lr=3e-3, warmup_steps=1,
                              min_lr_ratio=0.1, weight_decay=0.1, clip_grad_norm=1.0,
                              eval_every=4)
    first = pretrained.load("bpe", "cpu", progress=False, custom=draft)
    assert first.trained_now and first.model.config.n_embd == 8 and first.recipe == draft
    assert first.folder == pretrained.folder("bpe", "cpu", custom=draft)
    assert first.folder != pretrained.folder("bpe", "cpu")
    again = pretrained.load("bpe", "cpu", progress=False, custom=draft)
    assert not again.trained_now and again.folder == first.folder
    with pytest.raises(TypeError, match="custom"):
        pretrained.folder("bpe", "cpu", custom={"n_layer": 1})
