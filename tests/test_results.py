"""aigc_lib.results: what chapters record for the verdict chapter."""

import json
import math
from pathlib import Path

import pytest

from aigc_lib import results
from aigc_lib.results import Comparison


@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("AIGC_CACHE", str(tmp_path))
    monkeypatch.setenv("AIGC_PROFILE", "cpu")


def vae_row(**changes):
    row = dict(technique="VAE", baseline="independent pixels", metric="NLL (nats)",
               value=17.0, baseline_value=24.5, lower_is_better=True,
               trainable_params=1234, train_seconds=3.5)
    row.update(changes)
    return Comparison(**row)


def test_gain_points_the_right_way():
    assert vae_row().gain == pytest.approx(24.5 / 17.0)
    assert vae_row().beats_baseline
    acc = Comparison("MLP", "majority", "accuracy", 0.9, 0.1, lower_is_better=False)
    assert acc.gain == pytest.approx(9.0) and acc.beats_baseline
    worse = Comparison("x", "y", "loss", 2.0, 1.0, lower_is_better=True)
    assert worse.gain == pytest.approx(0.5) and not worse.beats_baseline
    assert vae_row(value=0.0).gain == math.inf


def test_record_then_load_round_trips(tmp_path):
    rows = [vae_row(), vae_row(technique="VAE, beta=4", value=20.0)]
    path = results.record("03_vae", rows)
    assert path.parent == tmp_path / "results"
    loaded = results.load("03_vae")
    assert loaded.comparisons == tuple(rows)
    assert loaded.profile == "cpu" and loaded.chapter == "03_vae"
    assert 0 <= loaded.age_seconds < 60
    assert not list(path.parent.glob("*.tmp"))


def test_a_new_record_replaces_the_old_one():
    results.record("03_vae", [vae_row(value=30.0)])
    results.record("03_vae", [vae_row(value=17.0)])
    assert results.load("03_vae").comparisons[0].value == 17.0


def test_missing_chapter_loads_as_none():
    assert results.load_all(["02_optimisation", "03_vae"]) == {
        "02_optimisation": None, "03_vae": None}


def test_corrupt_file_gets_a_clear_error(tmp_path):
    results.record("03_vae", [vae_row()])
    path = tmp_path / "results" / "03_vae.json"
    payload = json.loads(path.read_text())
    payload["comparisons"][0]["value"] = "seventeen"
    path.write_text(json.dumps(payload))
    with pytest.raises(ValueError, match="re-run chapter 03_vae"):
        results.load("03_vae")


@pytest.mark.parametrize("changes, error, match", [
    (dict(technique=""), ValueError, "technique"),
    (dict(metric=3), ValueError, "metric"),
    (dict(value="1"), TypeError, "value"),
    (dict(baseline_value=math.nan), ValueError, "baseline_value"),
    (dict(lower_is_better=1), TypeError, "lower_is_better"),
    (dict(train_seconds=-1.0), ValueError, "train_seconds"),
    (dict(trainable_params="many"), TypeError, "trainable_params"),
])
def test_bad_comparison_names_the_field(changes, error, match):
    with pytest.raises(error, match=match):
        vae_row(**changes)


def test_bad_record_arguments():
    with pytest.raises(ValueError, match="chapter"):
        results.record("../evil", [vae_row()])
    with pytest.raises(TypeError, match="chapter"):
        results.load(3)
    with pytest.raises(ValueError, match="comparisons"):
        results.record("03_vae", [])
    with pytest.raises(TypeError, match=r"comparisons\[0\]"):
        results.record("03_vae", [{"technique": "VAE"}])
    with pytest.raises(TypeError, match="chapters"):
        results.load_all("03_vae")


def tiny_chapter(folder, name, body):
    import nbformat
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(body)])
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3",
                                 "language": "python"}
    nbformat.write(nb, folder / f"{name}.ipynb")


RECORDING = """
from aigc_lib.results import Comparison, record
record("90_tiny", [Comparison("t", "b", "loss", 1.0, 2.0, lower_is_better=True)])
"""


def test_ensure_runs_only_chapters_without_a_record(tmp_path):
    book = tmp_path / "book"
    book.mkdir()
    tiny_chapter(book, "90_tiny", RECORDING)
    results.record("91_done", [vae_row()])
    tiny_chapter(book, "91_done", "raise SystemExit('must not run')")
    got = results.ensure(["90_tiny", "91_done"], book)
    assert got["90_tiny"].comparisons[0].gain == 2.0
    assert got["91_done"].comparisons == (vae_row(),)


def test_ensure_reruns_a_record_from_another_profile(tmp_path, monkeypatch):
    book = tmp_path / "book"
    book.mkdir()
    monkeypatch.setenv("AIGC_PROFILE", "gpu")
    results.record("90_tiny", [vae_row()])
    monkeypatch.setenv("AIGC_PROFILE", "cpu")
    tiny_chapter(book, "90_tiny", RECORDING)
    assert results.ensure(["90_tiny"], book)["90_tiny"].profile == "cpu"


def test_ensure_errors_name_the_chapter(tmp_path):
    book = tmp_path / "book"
    book.mkdir()
    with pytest.raises(FileNotFoundError, match="92_absent"):
        results.ensure(["92_absent"], book)
    tiny_chapter(book, "93_silent", "x = 1")
    with pytest.raises(RuntimeError, match="recorded nothing"):
        results.ensure(["93_silent"], book)
    tiny_chapter(book, "94_broken", "1 / 0")
    with pytest.raises(RuntimeError, match="ZeroDivisionError"):
        results.ensure(["94_broken"], book)
    with pytest.raises(ValueError, match="book_dir"):
        results.ensure(["92_absent"], tmp_path / "nowhere")


def test_improvement_is_commensurable_within_each_kind():
    bpb = Comparison("GPT", "xz", "bits per byte", 1.9, 1.6, kind="log-loss")
    assert bpb.improvement == pytest.approx(-0.3) and not bpb.beats_baseline
    assert bpb.lower_is_better is True and bpb.improvement_unit.startswith("saved")
    fd = Comparison("GAN", "pixels", "Fréchet distance", 3.0, 30.0, kind="error")
    assert fd.improvement == pytest.approx(0.9)
    f1 = Comparison("MiniLM", "TF-IDF", "macro-F1", 0.9, 0.8, kind="score")
    assert f1.improvement == pytest.approx(0.5)          # error 0.2 -> 0.1: half the errors
    assert f1.lower_is_better is False
    # the old flag maps onto the kinds, and the two must agree when both are given
    assert Comparison("a", "b", "err", 0.1, 0.2, lower_is_better=True).kind == "error"
    with pytest.raises(ValueError, match="contradicts"):
        Comparison("a", "b", "acc", 0.9, 0.8, kind="score", lower_is_better=True)


@pytest.mark.parametrize("row, message", [
    (dict(kind="error", value=-1.0), "must be >= 0 for kind 'error'"),
    (dict(kind="score", lower_is_better=None, value=1.5, baseline_value=0.5),
     r"must lie in \[0, 1\]"),
    (dict(kind="entropy"), "kind must be one of"),
    (dict(kind=None, lower_is_better=None), "give kind"),
    (dict(difference_interval=(1.0, -1.0), interval_method="bootstrap"), "low <= high"),
    (dict(difference_interval=(-1.0, 1.0)), "interval_method"),
    (dict(interval_method="bootstrap"), "without difference_interval"),
    (dict(seeds=0), "seeds must be"),
    (dict(inference_seconds=-1.0), "inference_seconds must be >= 0"),
])
def test_values_whose_improvement_is_undefined_are_refused(row, message):
    with pytest.raises((ValueError, TypeError), match=message):
        vae_row(**row)


def test_interval_round_trips_and_says_whether_the_win_is_sure():
    sure = vae_row(difference_interval=(-8.0, -6.0), interval_method="min–max over 3 seeds",
                   seeds=3, inference_seconds=0.01, extrapolated=True)
    unsure = vae_row(technique="VAE, beta=4", difference_interval=(-1.0, 0.5),
                     interval_method="paired bootstrap 95 %")
    assert sure.beats_baseline_surely is True and unsure.beats_baseline_surely is False
    assert sure.loses_to_baseline_surely is False and unsure.loses_to_baseline_surely is False
    assert vae_row(difference_interval=(1.0, 2.0), interval_method="min–max over 3 seeds"
                   ).loses_to_baseline_surely is True
    assert vae_row().beats_baseline_surely is None
    assert vae_row().loses_to_baseline_surely is None
    results.record("03_vae", [sure, unsure])
    assert results.load("03_vae").comparisons == (sure, unsure)


def test_extras_round_trip_and_must_be_json():
    curve = {"labels_per_class": [4, 8], "f1": {"TF-IDF": [0.5, 0.6]}}
    results.record("09_finetuning_classifier", [vae_row()], extras={"learning_curve": curve})
    assert results.load("09_finetuning_classifier").extras == {"learning_curve": curve}
    assert results.load("09_finetuning_classifier").extras is not None
    results.record("03_vae", [vae_row()])
    assert results.load("03_vae").extras == {}
    with pytest.raises(ValueError, match="finite JSON"):
        results.record("03_vae", [vae_row()], extras={"x": float("nan")})
    with pytest.raises(TypeError, match="string keys"):
        results.record("03_vae", [vae_row()], extras={1: 2})


def test_ensure_falls_back_to_the_notebooks_shipped_with_the_library(tmp_path, monkeypatch):
    shipped = tmp_path / "shipped"
    shipped.mkdir()
    tiny_chapter(shipped, "90_tiny", RECORDING)
    tiny_chapter(shipped, "89_neighbour", "x = 1")
    monkeypatch.setattr(results, "packaged_notebooks", lambda: shipped)
    alone = tmp_path / "colab"          # a folder with nothing but the chapter that asks
    alone.mkdir()
    got = results.ensure(["90_tiny"], alone)
    assert got["90_tiny"].comparisons[0].value == 1.0
    copies = tmp_path / "notebooks"      # run from a copy, neighbours included
    assert sorted(p.name for p in copies.glob("*.ipynb")) == ["89_neighbour.ipynb",
                                                             "90_tiny.ipynb"]


def test_the_library_ships_every_chapter_notebook():
    folder = results.packaged_notebooks()
    assert folder is not None
    book = Path(__file__).resolve().parents[1] / "book"
    assert sorted(p.name for p in folder.glob("[0-9][0-9]_*.ipynb")) == \
        sorted(p.name for p in book.glob("[0-9][0-9]_*.ipynb"))


@pytest.mark.parametrize("kind, value, base, diff, expected", [
    ("log-loss", 1.9, 1.6, (0.2, 0.4), (-0.4, -0.2)),        # bits saved: b - v
    ("error", 3.0, 30.0, (-28.0, -24.0), (0.8, 28 / 30)),    # relative reduction (b - v)/b
    ("score", 0.9, 0.8, (0.05, 0.15), (0.25, 0.75)),         # (v - b)/(1 - b)
])
def test_improvement_interval_maps_the_difference_interval(kind, value, base, diff, expected):
    row = Comparison("t", "b", "m", value, base, kind=kind, difference_interval=diff,
                     interval_method="min–max over 3 seeds")
    low, high = row.improvement_interval
    assert (low, high) == pytest.approx(expected)
    assert low <= row.improvement <= high
    assert Comparison("t", "b", "m", value, base, kind=kind).improvement_interval is None
