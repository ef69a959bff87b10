"""PNG figures of a run (matplotlib, no display needed).

- ``training.png``: reconstruction loss, SNNL per hidden layer and T per epoch
  (first seed).
- ``projection.png``: a 2-D projection of the raw test inputs next to the same
  projection of what was clustered (the test codes; for N2D the manifold
  embedding), coloured by true label (the paper's Fig. 2).
  PCA by default, on a seeded sample of at most 3,000 points, drawn small
  and translucent with each class's median numbered (``--projection
  tsne``: t-SNE, 40 s or more per panel on 2 CPU cores, most of a short run).
- ``confusion.png``: clusters (ordered by their matched label) against
  labels, with the clustering accuracy in the title.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402
from sklearn.decomposition import PCA  # noqa: E402
from sklearn.manifold import TSNE  # noqa: E402

from ..atomic import atomic_path
from ..metrics import cluster_to_label, clustering_accuracy, contingency
from ..train.config import uses_labels

PROJECTION_SAMPLE = 3000
PROJECTION_NAMES = {"tsne": "t-SNE", "pca": "PCA"}
LAYER_NAMES = ("h1 (500)", "h2 (500)", "h3 (2000)", "code", "h5 (2000)", "h6 (500)", "h7 (500)")


def _save(fig, path: Path) -> None:
    try:
        with atomic_path(path) as temporary:
            fig.savefig(temporary, dpi=120, bbox_inches="tight")
    finally:
        plt.close(fig)


LOSS_NAMES = {"bce": "binary cross-entropy", "mse": "mean squared error"}
# the mirrored layers (h1 and h7, h2 and h6, ...) often have near-equal curves:
# each layer gets its own dash pattern and marker so that none hides another
LAYER_STYLES = [
    ("-", "o"),
    ("--", "s"),
    (":", "^"),
    ("-.", "D"),
    ((0, (5, 1, 1, 1)), "v"),
    ((0, (1, 3)), "x"),
    ((0, (8, 3)), "+"),
]


def training_curves(
    history: list[dict], path: Path, title: str, reconstruction_loss: str = "bce", layers: str = "all"
) -> None:
    """``layers``: which hidden layers the SNNL term was on (``TrainConfig.layers``), to name the curves."""
    if not history:
        return
    epochs = [h["epoch"] + 1 for h in history]
    with_snnl = bool(history[0]["snnl_per_layer"])
    fig, axes = plt.subplots(
        1, 3 if with_snnl else 1, figsize=(14 if with_snnl else 5, 4.2), squeeze=False, layout="constrained"
    )  # keeps the figure title clear of the panel titles
    axes = axes[0]
    axes[0].plot(epochs, [h["reconstruction"] for h in history], marker="o" if len(epochs) < 20 else None)
    axes[0].set(
        title="reconstruction loss", xlabel="epoch", ylabel=f"{LOSS_NAMES[reconstruction_loss]}, mean per input value"
    )
    if with_snnl:
        per_layer = np.array([h["snnl_per_layer"] for h in history])
        names = LAYER_NAMES if layers == "all" else ("code",)
        for i in range(per_layer.shape[1]):
            line, marker = LAYER_STYLES[i % len(LAYER_STYLES)]
            axes[1].plot(
                epochs,
                per_layer[:, i],
                linestyle=line,
                marker=marker,
                markersize=4,
                alpha=0.85,
                markevery=max(1, len(epochs) // 10),
                label=names[i] if i < len(names) else f"layer {i + 1}",
            )
        axes[1].legend(fontsize=7)
        axes[1].set(
            title="SNNL per hidden layer (epoch mean)" if layers == "all" else "SNNL on the code (epoch mean)",
            xlabel="epoch",
            ylabel="soft nearest neighbor loss",
        )
        axes[2].plot(epochs, [h["temperature"] for h in history])
        axes[2].set(title="temperature T", xlabel="epoch", ylabel="T")
    for ax in axes:
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # whole epochs, also for short runs
        ax.grid(alpha=0.3)
        ax.set_title(ax.get_title(), pad=14)  # clear of a y-axis multiplier such as 1e-5 (unsupervised SNNL)
    fig.suptitle(title)
    _save(fig, path)


def _project(x: np.ndarray, method: str, seed: int) -> np.ndarray:
    if method == "pca":
        return PCA(n_components=2, random_state=seed).fit_transform(x)
    return TSNE(n_components=2, init="pca", random_state=seed, perplexity=min(30.0, (len(x) - 1) / 3)).fit_transform(x)


def projections(
    raw: np.ndarray,
    codes: np.ndarray,
    labels: np.ndarray,
    classes,
    path: Path,
    method: str,
    title: str,
    seed: int = 0,
    points_name: str = "codes",
) -> None:
    if method == "none":
        return
    rng = np.random.default_rng(seed)
    index = np.sort(rng.choice(len(labels), size=min(PROJECTION_SAMPLE, len(labels)), replace=False))
    fig, axes = plt.subplots(1, 2, figsize=(12, 5.8), layout="constrained")  # the two-line title clear of the panels
    cmap = plt.get_cmap("tab10" if len(classes) <= 10 else "nipy_spectral")
    for ax, data, name in ((axes[0], raw, "raw inputs"), (axes[1], codes, points_name)):
        points = _project(np.asarray(data[index], dtype=np.float32), method, seed)
        # the more points, the smaller and more translucent: thousands of them on top
        # of each other still show where each class is dense (opaque ones showed the last drawn)
        ax.scatter(
            points[:, 0],
            points[:, 1],
            c=labels[index],
            cmap=cmap,
            s=min(10.0, max(2.0, 4000 / len(index))),
            alpha=min(0.9, max(0.25, 600 / len(index))),
            linewidths=0,
            rasterized=True,
            vmin=0,
            vmax=max(len(classes) - 1, 1),
        )
        if len(classes) <= 20:  # each class's median point, numbered as in the legend
            for k in np.unique(labels[index]):
                x_k, y_k = np.median(points[labels[index] == k], axis=0)
                ax.annotate(str(k), (x_k, y_k), fontsize=8, weight="bold", ha="center", va="center")
        ax.set(title=f"{PROJECTION_NAMES[method]} of the {name}, {len(index)} points", xticks=[], yticks=[])
    if len(classes) <= 20:
        handles = [
            plt.Line2D(
                [],
                [],
                marker="o",
                ls="",
                color=cmap(i / max(len(classes) - 1, 1)),
                label=c if c == str(i) else f"{i} {c}",
            )
            for i, c in enumerate(classes)
        ]
        axes[1].legend(handles=handles, fontsize=7, loc="center left", bbox_to_anchor=(1.0, 0.5))
    fig.suptitle(f"{title}\ncolour: the true label of each point")
    _save(fig, path)


def confusion(labels: np.ndarray, clusters: np.ndarray, classes, path: Path, title: str) -> None:
    counts, cluster_ids, class_ids = contingency(labels, clusters)
    title = f"{title}\nACC {clustering_accuracy(labels, clusters):.3f}"
    mapping = cluster_to_label(labels, clusters)
    # clusters matched to a label first, in label order; unmatched ones last
    order = sorted(range(len(cluster_ids)), key=lambda r: (mapping.get(int(cluster_ids[r]), 1 << 30), r))
    counts = counts[order]
    fig, ax = plt.subplots(figsize=(0.6 * len(class_ids) + 4, 0.5 * len(order) + 2))
    image = ax.imshow(counts, cmap="Blues")
    fig.colorbar(image, ax=ax, label="points", shrink=0.8)
    ax.set_xticks(
        range(len(class_ids)),
        [classes[c] if c < len(classes) else str(c) for c in class_ids],
        rotation=60,
        ha="right",
        fontsize=7,
    )
    ax.set_yticks(range(len(order)), [f"cluster {cluster_ids[r]}" for r in order], fontsize=7)
    if counts.size <= 400:
        for (i, j), v in np.ndenumerate(counts):
            if v:
                ax.text(
                    j,
                    i,
                    str(v),
                    ha="center",
                    va="center",
                    fontsize=8 if v < 1000 else 7,
                    color="white" if v > counts.max() / 2 else "black",
                )
    ax.set(xlabel="true label", ylabel="cluster", title=title)
    _save(fig, path)


def points_name(config) -> str:
    """What a run clustered (the right panel of projection.png): the codes, or
    N2D's manifold embedding of the codes or of the inputs."""
    manifold = getattr(config, "manifold", None)
    if manifold is None or manifold.method == "none":
        return "raw inputs" if getattr(config, "raw", False) else "codes"
    source = "inputs" if config.raw else "codes"
    return f"{manifold.method} embedding of the {source}"


def write_all(directory: Path, experiment, data) -> None:
    first = experiment.seeds[0]
    config = experiment.config
    title = f"{config.dataset}, {config.label}, seed {first.seed}"
    training_curves(
        first.history, directory / "training.png", title, config.training.reconstruction_loss, config.training.layers
    )
    projections(
        data.x,
        first.codes,
        data.y,
        data.classes,
        directory / "projection.png",
        config.projection,
        title,
        seed=first.seed,
        points_name=points_name(config),
    )
    confusion(data.y, first.clusters, data.classes, directory / "confusion.png", title)


def labels_study(run_metrics: list[tuple[str, dict]], path: Path) -> None:
    """ACC and NMI against the number of labelled training images (the
    paper's Figures 3 and 4): one line per supervised method, mean and
    standard deviation over seeds as error bars; methods that use no labels
    (PCA, the plain autoencoder, the unsupervised presets) as horizontal
    bands (mean +- std) for comparison."""
    supervised: dict = {}
    label_free: dict = {}
    for _, metrics in run_metrics:
        train = metrics["config"].get("train", {})
        name = train.get("name", "?")
        values = {key: [seed["metrics"][key] for seed in metrics["seeds"]] for key in ("acc", "nmi")}
        if uses_labels(train):
            supervised.setdefault(name, {})[int(metrics["config"]["labelled"])] = values
        else:
            label_free[name] = values
    if not supervised:
        raise ValueError("no supervised SNNL run among the runs: nothing to plot against the number of labels")
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for ax, key, title in zip(axes, ("acc", "nmi"), ("clustering accuracy", "normalised mutual information")):
        for name, by_labels in sorted(supervised.items()):
            counts = sorted(by_labels)
            ax.errorbar(
                counts,
                [np.mean(by_labels[n][key]) for n in counts],
                yerr=[np.std(by_labels[n][key]) for n in counts],
                marker="o",
                capsize=3,
                label=name,
            )
        for (name, values), color in zip(sorted(label_free.items()), ("0.2", "tab:purple", "tab:brown", "0.6")):
            mean, std = np.mean(values[key]), np.std(values[key])
            ax.axhline(mean, color=color, linestyle="--", linewidth=1, label=f"{name} (no labels)")
            ax.axhspan(mean - std, mean + std, color=color, alpha=0.12)
        ax.set_xlabel("labelled training images")
        ax.set_ylabel(key.upper())
        ax.set_title(title)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    counts = sorted({n for by_labels in supervised.values() for n in by_labels})
    for ax in axes:
        ax.set_xticks(counts)
    seeds = sorted({len(m["seeds"]) for _, m in run_metrics})
    fig.suptitle(
        f"k-means on the codes against the number of labels (error bars: std over {'/'.join(map(str, seeds))} seeds)",
        y=1.02,
    )
    _save(fig, path)
