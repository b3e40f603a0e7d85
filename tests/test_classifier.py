"""Fine-tuning wrapper: the classifier, LoRA through peft, training with fit, saving."""
import copy

import pytest
import torch
from safetensors.torch import load_file
from transformers import BertConfig, BertModel

from aigc_lib import costs, encoders, classifier, optim, runtime
from aigc_lib.training import fit


pytestmark = pytest.mark.usefixtures("one_thread")



def tiny_bert(seed=0):
    torch.manual_seed(seed)
    config = BertConfig(vocab_size=40, hidden_size=16, num_hidden_layers=2,
                        num_attention_heads=2, intermediate_size=32,
                        max_position_embeddings=16, hidden_dropout_prob=0.0,
                        attention_probs_dropout_prob=0.0)
    return BertModel(config).eval()


def toy_batch(n=24, seed=0):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(5, 40, (n, 6), generator=g)
    mask = torch.ones_like(ids)
    mask[::3, 4:] = 0
    labels = (ids[:, 1] % 3).to(torch.int64)  # learnable from the second token
    return ids, mask, labels


def test_classifier_is_a_linear_head_on_the_mean_pooled_embedding():
    encoder = tiny_bert()
    model = classifier.SentenceClassifier(encoder, 3).eval()
    ids, mask, _ = toy_batch()
    with torch.no_grad():
        hidden = encoder(input_ids=ids, attention_mask=mask).last_hidden_state
        pooled = torch.nn.functional.normalize(encoders.mean_pool(hidden, mask), dim=-1)
        manual = pooled @ model.head.weight.T + model.head.bias
        assert torch.allclose(model(ids, mask), manual, atol=1e-6)


def test_padding_beyond_the_longest_message_changes_nothing():
    model = classifier.SentenceClassifier(tiny_bert(), 3).eval()
    ids, mask, _ = toy_batch()
    padded_ids = torch.cat([ids, torch.zeros(len(ids), 5, dtype=ids.dtype)], 1)
    padded_mask = torch.cat([mask, torch.zeros_like(mask[:, :5])], 1)
    with torch.no_grad():
        assert torch.allclose(model(ids, mask), model(padded_ids, padded_mask), atol=1e-6)


def test_init_head_copies_a_probe_and_checks_shapes():
    model = classifier.SentenceClassifier(tiny_bert(), 3)
    weight, bias = torch.randn(3, 16).numpy(), [0.1, 0.2, 0.3]
    model.init_head(weight, bias)
    assert torch.allclose(model.head.weight, torch.as_tensor(weight))
    with pytest.raises(ValueError, match="weight and bias must have shapes"):
        model.init_head(weight[:2], bias)


def test_lora_starts_equal_to_the_base_model_and_trains_only_adapters_and_head():
    model = classifier.SentenceClassifier(tiny_bert(), 3).eval()
    ids, mask, _ = toy_batch()
    with torch.no_grad():
        before = model(ids, mask)
    classifier.add_lora(model, r=4, alpha=8, targets=("query", "value"))
    with torch.no_grad():
        assert torch.allclose(model(ids, mask), before, atol=1e-6)  # B = 0 at the start
    names = [n for n, p in model.named_parameters() if p.requires_grad]
    assert all("lora_" in n or n.startswith("head.") for n in names)
    expected = 2 * 2 * 4 * (16 + 16) + (16 * 3 + 3)  # layers x modules x r(d_in+d_out) + head
    assert costs.count_parameters(model, trainable_only=True) == expected


def test_lora_layer_computes_w_plus_scaled_b_a():
    model = classifier.add_lora(classifier.SentenceClassifier(tiny_bert(), 3), r=4, alpha=8)
    layer = model.encoder.base_model.model.encoder.layer[0].attention.self.query
    torch.manual_seed(1)
    with torch.no_grad():
        layer.lora_B["default"].weight.normal_()
        x = torch.randn(5, 16)
        a, b = layer.lora_A["default"].weight, layer.lora_B["default"].weight
        manual = x @ (layer.base_layer.weight + (8 / 4) * b @ a).T + layer.base_layer.bias
        assert torch.allclose(layer(x), manual, atol=1e-5)


def test_lora_targets_may_name_the_end_of_a_dotted_module_name():
    model = classifier.add_lora(classifier.SentenceClassifier(tiny_bert(), 3), r=2,
                                targets=("intermediate.dense", "output.dense"))
    adapted = {n.rsplit(".lora_A", 1)[0] for n, _ in model.named_parameters() if "lora_A" in n}
    assert len(adapted) == 2 * 3  # per layer: intermediate, attention output, output
    assert not any("pooler" in n for n in adapted)


@pytest.mark.parametrize("kwargs, error, words", [
    ({"r": 0}, ValueError, "r must be > 0"),
    ({"dropout": 1.0}, ValueError, "dropout must be in"),
    ({"r": 2.5}, TypeError, "r must be"),
    ({"alpha": -1.0}, ValueError, "alpha must be > 0"),
    ({"targets": "query"}, TypeError, "targets must be a non-empty sequence"),
    ({"targets": ()}, TypeError, "targets must be a non-empty sequence"),
    ({"targets": ("nope",)}, ValueError, r"\['nope'\] are not modules"),
])
def test_add_lora_bad_input_raises_before_anything_is_frozen(kwargs, error, words):
    model = classifier.SentenceClassifier(tiny_bert(), 3)
    with pytest.raises(error, match=words):
        classifier.add_lora(model, **kwargs)
    assert all(p.requires_grad for p in model.parameters())  # nothing frozen, nothing wrapped
    assert not hasattr(model.encoder, "peft_config")
    with pytest.raises(TypeError, match="model must be a SentenceClassifier"):
        classifier.add_lora(tiny_bert())
    with pytest.raises(TypeError):
        classifier.add_lora(model, 4)  # keyword-only
    classifier.add_lora(model, r=2)
    with pytest.raises(ValueError, match="already has LoRA adapters"):
        classifier.add_lora(model, r=2)


def test_train_classifier_learns_a_toy_task_and_is_seeded():
    ids, mask, labels = toy_batch(48)
    runs = []
    for _ in range(2):
        model = classifier.SentenceClassifier(tiny_bert(), 3, normalize=False)
        history = classifier.train_classifier(model, ids, mask, labels, epochs=30,
                                            batch_size=16, lr=3e-3, seed=3, device="cpu")
        runs.append(history.step_losses)
    assert runs[0] == runs[1]
    assert history.last("train_loss") < 0.5 * history.records[0]["train_loss"]
    logits = classifier.predict_logits(model, ids, mask, batch_size=7)
    assert logits.shape == (48, 3) and not model.training
    assert not logits.requires_grad   # inference only: no autograd graph is built
    assert (logits.argmax(1) == labels).float().mean() > 0.8


def test_length_bucketed_order_is_a_permutation_with_less_padding():
    g = torch.Generator().manual_seed(0)
    lengths = torch.randint(1, 30, (203,), generator=g)
    order = classifier.length_bucketed_order(lengths, 16, torch.Generator().manual_seed(1))
    assert sorted(order.tolist()) == list(range(203))
    again = classifier.length_bucketed_order(lengths, 16, torch.Generator().manual_seed(1))
    assert torch.equal(order, again)

    def padded(o):
        return sum(int(lengths[b].max()) * len(b) for b in torch.split(o, 16))
    assert padded(order) < 0.8 * padded(torch.randperm(203, generator=g))
    assert len(torch.split(order, 16)[-1]) == 203 % 16  # the partial batch is last
    with pytest.raises(TypeError, match="generator must be a torch.Generator"):
        classifier.length_bucketed_order(lengths, 16, 0)


def test_bucketed_training_records_every_epoch_and_step():
    ids, mask, labels = toy_batch(40)
    model = classifier.SentenceClassifier(tiny_bert(), 3, normalize=False)
    history = classifier.train_classifier(model, ids, mask, labels, epochs=3, batch_size=16,
                                        lr=3e-3, device="cpu")
    assert len(history.step_losses) == 3 * 3 and len(history.records) == 3
    assert [r["step"] for r in history.records] == [3, 6, 9]
    assert [r["epoch"] for r in history.records] == [1, 2, 3]
    assert history.records[-1]["seconds"] == pytest.approx(history.seconds)
    plain = classifier.train_classifier(classifier.SentenceClassifier(tiny_bert(), 3), ids, mask,
                                      labels, epochs=2, bucket=False, device="cpu")
    assert len(plain.step_losses) == 2 * 3


def test_bucketed_order_hook_equals_one_fit_per_bucketed_epoch():
    """The order hook reproduces what stitching one ``fit`` per epoch over reordered data did."""
    ids, mask, labels = toy_batch(40)
    model = classifier.SentenceClassifier(tiny_bert(), 3, normalize=False)
    reference = copy.deepcopy(model)
    history = classifier.train_classifier(model, ids, mask, labels, epochs=3, batch_size=16,
                                          lr=3e-3, seed=5, device="cpu")
    runtime.seed_everything(5)
    opt = torch.optim.AdamW(classifier.trainable_parameters(reference), lr=3e-3,
                            weight_decay=0.01, fused=True)
    schedule = optim.warmup_cosine_scheduler(opt, 1, 9)
    generator, losses = torch.Generator().manual_seed(5), []
    for _ in range(3):
        order = classifier.length_bucketed_order(mask.sum(1), 16, generator)
        part = fit(reference, (ids[order], mask[order], labels[order]), epochs=1,
                   shuffle=False, loss_fn=classifier.cross_entropy_loss, optimizer=opt,
                   batch_size=16, scheduler=schedule, device="cpu", progress=False)
        losses += part.step_losses
    assert history.step_losses == losses
    for a, b in zip(model.state_dict().values(), reference.state_dict().values()):
        assert torch.equal(a, b)


def test_train_classifier_bad_input():
    ids, mask, labels = toy_batch()
    model = classifier.SentenceClassifier(tiny_bert(), 3)
    with pytest.raises(ValueError, match="same messages"):
        classifier.train_classifier(model, ids, mask, labels[:-1], epochs=1)
    with pytest.raises(TypeError, match="labels must be int64"):
        classifier.train_classifier(model, ids, mask, labels.int(), epochs=1)
    with pytest.raises(ValueError, match="warmup must be a fraction"):
        classifier.train_classifier(model, ids, mask, labels, epochs=1, warmup=1.0)
    for p in model.parameters():
        p.requires_grad_(False)
    with pytest.raises(ValueError, match="no trainable parameters"):
        classifier.train_classifier(model, ids, mask, labels, epochs=1)


def test_save_trainable_keeps_adapters_and_head_only(tmp_path):
    full = classifier.SentenceClassifier(tiny_bert(), 3)
    lora = classifier.add_lora(classifier.SentenceClassifier(tiny_bert(), 3), r=2)
    full_file = classifier.save_trainable(full, tmp_path / "full.safetensors")
    lora_file = classifier.save_trainable(lora, tmp_path / "lora.safetensors")
    assert sum(t.numel() for t in load_file(full_file).values()) == costs.count_parameters(full)
    assert sum(t.numel() for t in load_file(lora_file).values()) == \
        costs.count_parameters(lora, trainable_only=True)
    assert costs.size_on_disk(lora_file) < costs.size_on_disk(full_file) / 5
    with pytest.raises(ValueError, match="must end in .safetensors"):
        classifier.save_trainable(full, tmp_path / "model.bin")


def test_classifier_bad_input():
    with pytest.raises(ValueError, match="num_labels must be >= 2"):
        classifier.SentenceClassifier(tiny_bert(), 1)
    with pytest.raises(TypeError, match="config.hidden_size"):
        classifier.SentenceClassifier(torch.nn.Linear(2, 2), 3)


def dropout_bert(seed=0, layers=3):
    torch.manual_seed(seed)
    config = BertConfig(vocab_size=40, hidden_size=16, num_hidden_layers=layers,
                        num_attention_heads=2, intermediate_size=32,
                        max_position_embeddings=16, hidden_dropout_prob=0.1,
                        attention_probs_dropout_prob=0.1)
    return BertModel(config).eval()


def test_forward_from_any_layer_and_from_word_vectors_equal_forward():
    model = classifier.SentenceClassifier(dropout_bert(), 3).eval()
    ids, mask, _ = toy_batch()
    with torch.no_grad():
        expected = model(ids, mask)
        for layer in range(model.num_layers + 1):
            hidden = model.hidden_states(ids, mask, layer)
            got = model.forward_from(hidden, mask[:, :hidden.shape[1]], layer)
            assert torch.allclose(got, expected, atol=1e-5), layer
        vectors = model.word_vectors(ids)
        assert torch.allclose(model.forward_embeddings(vectors, mask), expected, atol=1e-6)
        assert torch.equal(vectors, model.encoder.embeddings.word_embeddings(ids))


def test_forward_from_works_through_lora():
    model = classifier.add_lora(classifier.SentenceClassifier(dropout_bert(), 3), r=2).eval()
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_(0.1 * torch.randn_like(p))
        ids, mask, _ = toy_batch()
        hidden = model.hidden_states(ids, mask, 1)
        assert torch.allclose(model.forward_from(hidden, mask[:, :hidden.shape[1]], 1),
                              model(ids, mask), atol=1e-5)


def test_freeze_below_freezes_the_bottom_and_keeps_it_in_eval_mode():
    model = classifier.SentenceClassifier(dropout_bert(), 3).freeze_below(2)
    frozen = [n for n, p in model.named_parameters() if not p.requires_grad]
    assert frozen and all(n.startswith(("encoder.embeddings.", "encoder.encoder.layer.0.",
                                        "encoder.encoder.layer.1.", "encoder.pooler."))
                          for n in frozen)
    assert {n for n, p in model.named_parameters() if p.requires_grad} == {
        n for n, _ in model.named_parameters()
        if n.startswith(("encoder.encoder.layer.2.", "head."))}
    assert all(p.requires_grad for n, p in model.named_parameters()
               if n.startswith(("encoder.encoder.layer.2.", "head.")))
    model.train()
    assert not model.encoder.embeddings.training
    assert not any(m.training for layer in model.encoder.encoder.layer[:2]
                   for m in layer.modules())
    assert model.encoder.encoder.layer[2].training and model.head.training
    ids, mask, _ = toy_batch()
    with torch.no_grad():
        h1, h2 = model.hidden_states(ids, mask, 2), model.hidden_states(ids, mask, 2)
    assert torch.equal(h1, h2)  # no dropout below the frozen line, even in train mode
    with pytest.raises(ValueError, match=r"layer must be in \[0, 3\]"):
        model.freeze_below(4)


def test_layer_cache_pads_per_call_and_computes_each_text_once():
    class Tok:
        def __call__(self, texts, **kwargs):
            ids = [[1] + [5 + len(w) for w in t.split()] + [2] for t in texts]
            width = max(map(len, ids))
            return {"input_ids": torch.tensor([i + [0] * (width - len(i)) for i in ids]),
                    "attention_mask": torch.tensor([[1] * len(i) + [0] * (width - len(i))
                                                    for i in ids])}
    model = classifier.SentenceClassifier(dropout_bert(), 3).freeze_below(2).eval()
    cache = classifier.LayerCache(model, Tok(), 2)
    texts = ["a bb ccc", "dddd", "a bb ccc ee ff"]
    hidden, mask = cache(texts)
    assert hidden.shape == (3, 7, 16) and mask.sum(1).tolist() == [5, 3, 7]
    ids, full_mask = encoders.tokenize(Tok(), texts)
    with torch.no_grad():
        direct = model.hidden_states(ids, full_mask, 2)
        assert torch.allclose(hidden * mask[..., None], direct * full_mask[..., None],
                              atol=1e-5)
        assert torch.allclose(model.forward_from(hidden, mask, 2), model(ids, full_mask),
                              atol=1e-5)
    cache(["dddd", "g"])
    assert len(cache.store) == 4


def test_train_with_loss_equals_train_classifier_with_the_same_order():
    ids, mask, labels = toy_batch(48)
    histories, models = [], []
    for use_generic in (False, True):
        model = classifier.SentenceClassifier(tiny_bert(), 3, normalize=False)
        if use_generic:
            h = classifier.train_with_loss(model, (ids, mask, labels),
                                           loss_fn=classifier.cross_entropy_loss, epochs=3,
                                           batch_size=16, lr=3e-3, seed=3, device="cpu")
        else:
            h = classifier.train_classifier(model, ids, mask, labels, epochs=3,
                                            batch_size=16, lr=3e-3, seed=3, bucket=False,
                                            device="cpu")
        histories.append(h.step_losses)
        models.append(model)
    assert histories[0] == pytest.approx(histories[1], abs=1e-6)
    for p, q in zip(models[0].parameters(), models[1].parameters()):
        assert torch.allclose(p, q, atol=1e-6)


def test_train_with_loss_buckets_lengths_and_gives_the_head_its_own_rate():
    ids, mask, labels = toy_batch(40)
    model = classifier.SentenceClassifier(tiny_bert(), 3, normalize=False)
    before = model.encoder.encoder.layer[0].output.dense.weight.detach().clone()
    head_before = model.head.weight.detach().clone()
    history = classifier.train_with_loss(
        model, (ids, mask, labels), loss_fn=classifier.cross_entropy_loss, epochs=3,
        batch_size=16, lr=1e-9, head_lr=1e-2, lengths=mask.sum(1), warmup=0.0, device="cpu")
    assert len(history.step_losses) == 3 * (40 // 16)  # the incomplete batch is dropped
    moved = (model.encoder.encoder.layer[0].output.dense.weight - before).abs().max()
    assert moved < 1e-6 and (model.head.weight - head_before).abs().max() > 1e-3
    assert not model.training


def test_train_with_loss_bad_input():
    ids, mask, labels = toy_batch()
    model = classifier.SentenceClassifier(tiny_bert(), 3)
    loss = classifier.cross_entropy_loss
    with pytest.raises(TypeError, match="data must be a non-empty tuple"):
        classifier.train_with_loss(model, [ids, mask, labels], loss_fn=loss, epochs=1)
    with pytest.raises(ValueError, match="share their first dimension"):
        classifier.train_with_loss(model, (ids, mask, labels[:-1]), loss_fn=loss, epochs=1)
    with pytest.raises(TypeError, match="loss_fn must be callable"):
        classifier.train_with_loss(model, (ids, mask, labels), loss_fn=None, epochs=1)
    with pytest.raises(ValueError, match="lengths must have one entry"):
        classifier.train_with_loss(model, (ids, mask, labels), loss_fn=loss, epochs=1,
                                   lengths=mask.sum(1)[:3])
    with pytest.raises(ValueError, match="head_lr must be > 0"):
        classifier.train_with_loss(model, (ids, mask, labels), loss_fn=loss, epochs=1,
                                   head_lr=0.0)


def test_predict_logits_sorted_by_length_equals_one_padded_pass():
    ids, mask, _ = toy_batch(40)
    mask = mask.clone()
    gen = torch.Generator().manual_seed(2)
    lengths = torch.randint(2, mask.shape[1] + 1, (40,), generator=gen)
    for row, length in enumerate(lengths.tolist()):   # messages of many lengths
        mask[row, length:] = 0
    model = classifier.SentenceClassifier(tiny_bert(), 3, normalize=False).eval()
    with torch.no_grad():
        one_pass = model(ids, mask)                   # every message padded to the widest
    sorted_pass = classifier.predict_logits(model, ids, mask, batch_size=6)
    assert torch.allclose(sorted_pass, one_pass, atol=1e-5), (sorted_pass - one_pass).abs().max()
    with pytest.raises(ValueError, match="ids holds no message"):
        classifier.predict_logits(model, ids[:0], mask[:0])
