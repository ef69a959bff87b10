"""What the figures say: their axes and titles name what is drawn."""

from pathlib import Path

import numpy as np
import pytest

from snnl.report import figures


@pytest.fixture
def drawn(monkeypatch):
    """The figures as drawn, instead of written."""
    kept = []
    monkeypatch.setattr(figures, "_save", lambda fig, path: kept.append(fig))
    return kept


def history(epochs=3, layers=7):
    return [
        {
            "epoch": e,
            "reconstruction": 0.1 / (e + 1),
            "snnl_per_layer": [1.0 / (e + 1)] * layers,
            "temperature": 1.0 / (1 + e) ** 0.55,
        }
        for e in range(epochs)
    ]


@pytest.mark.parametrize("loss,name", [("bce", "binary cross-entropy"), ("mse", "mean squared error")])
def test_the_loss_axis_names_the_loss_used(drawn, loss, name):
    figures.training_curves(history(), Path("unused.png"), "t", reconstruction_loss=loss)
    assert drawn[0].axes[0].get_ylabel().startswith(name)


def test_layers_with_equal_curves_stay_apart(drawn):
    figures.training_curves(history(), Path("unused.png"), "t")
    lines = drawn[0].axes[1].get_lines()
    assert len(lines) == 7
    assert len({(str(line.get_linestyle()), line.get_marker()) for line in lines}) == 7


def test_an_snnl_on_the_code_alone_is_named_so(drawn):
    figures.training_curves(history(layers=1), Path("unused.png"), "t", layers="code")
    axis = drawn[0].axes[1]
    assert [line.get_label() for line in axis.get_lines()] == ["code"]
    assert axis.get_title() == "SNNL on the code (epoch mean)"


def test_the_projection_says_what_it_projects_and_what_the_colours_are(drawn):
    rng = np.random.default_rng(0)
    x, labels = rng.normal(size=(60, 5)), np.arange(60) % 3
    figures.projections(
        x,
        x[:, :3],
        labels,
        ["a", "b", "c"],
        Path("unused.png"),
        "pca",
        "run",
        points_name="umap embedding of the codes",
    )
    titles = [ax.get_title() for ax in drawn[0].axes[:2]]
    assert titles == ["PCA of the raw inputs, 60 points", "PCA of the umap embedding of the codes, 60 points"]
    assert "colour: the true label of each point" in drawn[0].texts[0].get_text()


def test_the_confusion_matrix_has_a_colour_bar(drawn):
    labels = np.arange(40) % 4
    figures.confusion(labels, labels[::-1].copy(), ["a", "b", "c", "d"], Path("unused.png"), "run")
    assert len(drawn[0].axes) == 2 and drawn[0].axes[1].get_ylabel() == "points"
