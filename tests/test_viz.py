import matplotlib

matplotlib.use("Agg")
import numpy as np
import pytest
import torch

from aigc_lib.training import History
from aigc_lib.viz import plot_history, show_images


def test_plot_history_draws_each_key():
    h = History([3.0, 2.0, 1.5, 1.0], [{"step": 2, "train_loss": 2.5, "val_loss": 2.6},
                                       {"step": 4, "train_loss": 1.25, "val_loss": 1.4}])
    ax = plot_history(h)
    labels = [line.get_label() for line in ax.get_lines()]
    assert labels == ["train loss per step", "train loss", "val loss"]
    assert list(ax.get_lines()[2].get_ydata()) == [2.6, 1.4]
    with pytest.raises(ValueError, match=r"keys \['accuracy'\] are not in the history"):
        plot_history(h, keys=["accuracy"])
    with pytest.raises(TypeError, match="history must be"):
        plot_history({"train_loss": [1]})


@pytest.mark.parametrize("shape", [(5, 8, 8), (5, 1, 8, 8), (5, 3, 8, 8), (5, 8, 8, 3)])
def test_show_images_accepts_common_layouts(shape):
    fig = show_images(torch.rand(shape), ncols=3, titles=list("abcde"))
    drawn = [ax for ax in fig.axes if ax.images]
    assert len(drawn) == 5 and len(fig.axes) == 6


@pytest.mark.parametrize("images, kwargs, error, words", [
    (np.zeros((2, 8)), {}, ValueError, "images must have shape"),
    ([[0.0]], {}, TypeError, "images must be a tensor"),
    (np.zeros((2, 8, 8)), {"ncols": 0}, ValueError, "ncols"),
    (np.zeros((2, 8, 8)), {"titles": ["a"]}, ValueError, "titles must have one entry"),
    (np.zeros((0, 8, 8)), {}, ValueError, "images is empty"),
])
def test_show_images_bad_input(images, kwargs, error, words):
    with pytest.raises(error, match=words):
        show_images(images, **kwargs)


def test_results_table_renders_and_checks_rows():
    from aigc_lib.viz import results_table
    table = results_table([("loss", 0.123456, True), ("ppl", torch.tensor(3.0), "ok")])
    html = table._repr_html_()
    assert "<td>0.1235</td>" in html and "<td>yes</td>" in html and "<td>3</td>" in html
    assert repr(table).splitlines()[0].split() == ["quantity", "measured", "check"]
    with pytest.raises(ValueError, match=r"rows\[1\] must have 3 entries"):
        results_table([("a", 1, True), ("b", 2)])
    with pytest.raises(ValueError, match="rows must not be empty"):
        results_table([])


def test_results_table_escapes_html():
    from aigc_lib.viz import results_table
    html = results_table([("x < y & <b>", "<script>", "ok")])._repr_html_()
    assert "<script>" not in html and "&lt;script&gt;" in html and "&lt;b&gt;" in html
