"""The book's conceptual diagrams (aigc_lib.diagrams) and how chapters mark them.

Each diagram function is drawn from the objects the chapter uses, so its numbers and shapes are
checked here against those objects; the chapter cells that show a diagram must mark its output
as a figure with the `diagram` class, a caption and alt text, and fold their code. The browser
test (tests/test_browser.py) then checks that the marked figures render and load."""
import inspect
import re
import sys
from pathlib import Path

import jupytext
import pytest
import torch
from matplotlib.figure import Figure

from aigc_lib import finetune, training
from aigc_lib.diagrams import core, finetuning, optimisation, probability, vae
from aigc_lib.models import lora
from aigc_lib.models.vae import VAEConfig

sys.path.insert(0, str(Path(__file__).parent))
from test_browser import DIAGRAM_CHAPTERS  # noqa: E402
import tiny_lms  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def texts(fig: Figure) -> str:
    """All text drawn on a figure, joined (titles, labels, notes, box contents)."""
    drawn = [t for ax in fig.axes for t in [*ax.texts, ax.title]] + list(fig.texts)
    return "\n".join(t.get_text() for t in drawn)


def test_svg_needs_no_font_and_is_reproducible():
    fig = vae.graphical_model()
    svg = core.to_svg(fig)
    assert svg.lstrip().startswith("<?xml") and "<svg" in svg
    assert "<text" not in svg and "@font-face" not in svg, "text must be drawn as paths"
    assert not re.search(r"(href|src)=\"https?://", svg), "no external resource"
    assert svg == core.to_svg(vae.graphical_model()), "same input, same SVG"


def test_canvas_and_box_reject_bad_input():
    with pytest.raises(ValueError, match="width"):
        core.canvas(0, 2)
    fig, ax = core.canvas(3, 2)
    with pytest.raises(ValueError, match="kind"):
        core.box(ax, 0, 0, 1, 1, "x", kind="purple")
    with pytest.raises(TypeError, match="fig"):
        core.to_svg("not a figure")


def test_likelihood_titles_are_the_gaussian_nll():
    data = torch.tensor([0.2, 1.1, 1.9, 0.7])
    fig = probability.likelihood(data, [0.0, float(data.mean())])
    for mean in (0.0, float(data.mean())):
        nll = -torch.distributions.Normal(mean, 1.0).log_prob(data.double()).sum()
        assert f"NLL = {nll:.1f} nats" in texts(fig)
    with pytest.raises(ValueError, match="means"):
        probability.likelihood(data, [])


def test_entropy_decomposition_adds_up():
    p, q = torch.tensor([0.7, 0.2, 0.1]), torch.tensor([0.2, 0.3, 0.5])
    fig = probability.entropy_decomposition(p, q)
    h, kl = -(p * p.log()).sum(), (p * (p / q).log()).sum()
    drawn = texts(fig)
    assert f"H(p) = {h:.2f}" in drawn and f"KL = {kl:.2f}" in drawn
    assert f"H(p, q) = {h + kl:.2f}" in drawn
    with pytest.raises(ValueError, match="q"):
        probability.entropy_decomposition(p, torch.tensor([0.5, 0.6, 0.1]))


def test_optimiser_paths_checks_shapes():
    path = torch.zeros(5, 2, dtype=torch.float64)
    path[0] = torch.tensor([1.0, 1.0])
    assert isinstance(optimisation.optimiser_paths({"gd": path}, [1.0, 10.0]), Figure)
    with pytest.raises(ValueError, match=r"\(n, 2\)"):
        optimisation.optimiser_paths({"gd": torch.zeros(5, 3)}, [1.0, 10.0])
    with pytest.raises(ValueError, match="curvatures"):
        optimisation.optimiser_paths({"gd": path}, [1.0])


def test_training_loop_diagram_names_the_calls_of_run():
    source = inspect.getsource(training.run)
    missing = [call for call in optimisation.LOOP_CALLS if call not in source]
    assert not missing, f"training.run no longer makes {missing}: redraw the loop diagram"
    drawn = texts(optimisation.training_loop())
    for call in optimisation.LOOP_CALLS:
        name = call.split("(")[0].replace("state.", "")
        assert name in drawn, f"the loop diagram does not show {name}"


def test_weight_decay_diagram_draws_both_rules():
    drawn = texts(optimisation.weight_decay())
    assert "Adam + L2" in drawn and "AdamW" in drawn and r"\lambda\theta" in drawn


def test_vae_pipeline_shows_the_configs_sizes():
    config = VAEConfig(x_dim=36, latent_dim=5, hidden=48, layers=1)
    drawn = texts(vae.pipeline(config))
    assert "36 pixels" in drawn and "MLP 36→48\n→10" in drawn and "MLP 5→48\n→36" in drawn
    with pytest.raises(TypeError, match="config"):
        vae.pipeline({"x_dim": 36})


def test_lora_diagram_reads_shapes_from_the_layer():
    layer = lora.LoRALinear(torch.nn.Linear(24, 72), r=4, alpha=8)
    drawn = texts(finetuning.lora(layer, "block.attn"))
    assert "frozen: 72 × 24" in drawn and "A: 4 × 24" in drawn and "B: 72 × 4" in drawn
    assert f"{4 * (24 + 72):,} numbers" in drawn and "α/r = 2" in drawn
    with pytest.raises(TypeError, match="layer"):
        finetuning.lora(torch.nn.Linear(2, 2))


def test_dpo_diagram_draws_both_models_and_the_loss():
    drawn = texts(finetuning.dpo())
    assert r"\pi_\theta" in drawn and r"\pi_{ref}" in drawn and r"-\log\sigma" in drawn


def test_chat_labels_shows_the_batch_row():
    tokenizer = tiny_lms._tokenizer(chatml=False)
    finetune.use_chat_template(tokenizer)
    short = [{"role": "user", "content": tiny_lms.PAIRS[0][0]},
             {"role": "assistant", "content": tiny_lms.PAIRS[0][1]}]
    longer = short + [{"role": "user", "content": tiny_lms.PAIRS[2][0]},
                      {"role": "assistant", "content": tiny_lms.PAIRS[2][1]}]
    batch = finetune.encode_chats(tokenizer, [longer, short], 256)
    drawn = texts(finetuning.chat_labels(tokenizer, short, batch, row=1))
    n_real = int(batch.attention_mask[1].sum())
    learned = int((batch.labels[1] != finetune.IGNORE_INDEX).sum())
    assert f"{n_real} tokens, {learned} learned" in drawn
    assert f"then {batch.input_ids.shape[1] - n_real} padding" in drawn
    assert "-100" in drawn and "(pad)" in drawn
    with pytest.raises(ValueError, match="row"):
        finetuning.chat_labels(tokenizer, short, batch, row=2)


def diagram_cells(md: Path) -> list[dict]:
    notebook = jupytext.read(md)
    return [cell for cell in notebook.cells if cell.cell_type == "code"
            and "diagram" in str(cell.metadata.get("mystnb", {}).get("figure", {})
                                 .get("classes", "")).split()]


@pytest.mark.parametrize("chapter", DIAGRAM_CHAPTERS)
def test_chapter_marks_its_diagrams(chapter):
    cells = diagram_cells(ROOT / f"{chapter}.md")
    assert len(cells) >= 2, f"{chapter}: {len(cells)} diagrams, at least 2 wanted"
    names = set()
    for cell in cells:
        figure, image = cell.metadata["mystnb"]["figure"], cell.metadata["mystnb"].get("image", {})
        where = f"{chapter}: diagram {figure.get('name')!r}"
        assert re.fullmatch(r"fig-ch\d\d-[a-z0-9-]+", str(figure.get("name"))), \
            f"{where}: name it fig-chNN-topic"
        assert len(str(figure.get("caption", "")).split()) >= 12, \
            f"{where}: the caption must say what to look at"
        assert len(str(image.get("alt", "")).split()) >= 12, f"{where}: alt text missing"
        assert "hide-input" in cell.metadata.get("tags", []), f"{where}: fold its code"
        assert "diagrams.show(" in cell.source, f"{where}: show it with diagrams.show"
        names.add(figure["name"])
    assert len(names) == len(cells), f"{chapter}: figure names must be unique"
