"""What a run leaves behind, and the tables made from it.

An output directory holds:

    metrics.json      configuration, per-seed metrics and stage times, mean /
                      std / best, versions, device, wall time
    embeddings.npz    z (the points clustered for the first seed: test codes,
                      or N2D's manifold embedding), y (true labels), clusters
                      (the assignment); N2D adds codes (autoencoder codes)
    seeds/seedN.json  each finished seed (what --resume reads back)
    checkpoints/      seedN.pt: the last epoch's model, optimizer and RNG state
    figures/          training curves, 2-D projections, confusion matrix (PNG)

Every file is written to a temporary name and renamed into place.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import numpy as np

from .atomic import atomic_path, write_text
from .config import uses_labels
from .metrics import METRIC_TABLE


def write_config(out_dir: Path, config) -> None:
    write_text(out_dir / "config.json", json.dumps(config.to_dict(), indent=2))


def write_seed(path: Path, result, config) -> None:
    """A finished seed, with what it depends on: the evaluation options and the
    epochs trained (``--resume`` reuses it only while both are unchanged)."""
    write_text(
        path,
        json.dumps(
            {**result.to_record(), "evaluation": config.evaluation(), "trained_epochs": config.trained_epochs}, indent=2
        ),
    )


def read_seed_record(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except ValueError as error:
        raise ValueError(f"{path} is not valid JSON ({error}): delete it to evaluate that seed again") from None


def _write_npz(path: Path, **arrays) -> None:
    with atomic_path(path) as temporary:
        np.savez_compressed(temporary, **arrays)


def write_experiment(out_dir: Path, experiment, data, *, progress: bool = False) -> None:
    """metrics.json, embeddings.npz and the figures (``progress``: say on
    stderr when the figures start and how long they took: a t-SNE of a few
    thousand points can outlast a short training)."""
    from . import figures

    first = experiment.seeds[0]
    metrics = {
        "config": experiment.config.to_dict(),
        "seeds": [
            {"seed": s.seed, "metrics": s.metrics, "backends": s.backends, "seconds": s.seconds}
            for s in experiment.seeds
        ],
        "summary": experiment.summary,
        "environment": experiment.environment,
        "data_files": list(experiment.data_files),
    }
    if first.codes is not None:
        _write_npz(out_dir / "embeddings.npz", z=first.codes, y=data.y, clusters=first.clusters, **first.arrays)
        started = time.perf_counter()
        projection = experiment.config.projection
        if progress:
            how = (
                "without projections"
                if projection == "none"
                else f"with {figures.PROJECTION_NAMES[projection]} projections"
                + (" (--projection pca is quicker)" if projection == "tsne" else "")
            )
            print(f"figures: {out_dir / 'figures'}, {how} ...", file=sys.stderr, flush=True)
        figures.write_all(out_dir / "figures", experiment, data)
        metrics["seeds"][0]["seconds"]["figures"] = time.perf_counter() - started
        if progress:
            print(f"figures: done in {metrics['seeds'][0]['seconds']['figures']:.1f} s", file=sys.stderr, flush=True)
        metrics["environment"]["finished"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")  # after the last stage
    write_text(out_dir / "metrics.json", json.dumps(metrics, indent=2))


def summary_rows(label: list[str], summary: dict, n_seeds: int) -> list[list[str]]:
    mean = [
        m.format(summary["mean"][m.name])
        + (f" ± {m.format(summary['std'][m.name])}" if n_seeds > 1 and summary["std"][m.name] is not None else "")
        for m in METRIC_TABLE
    ]
    best = [m.format(summary["best"][m.name]) for m in METRIC_TABLE]
    return [[*label, f"average ({n_seeds} seed{'s' if n_seeds > 1 else ''})", *mean], [*label, "best", *best]]


def markdown_table(rows: list[list[str]], label_columns=("run",)) -> str:
    header = [*label_columns, "", *(m.title for m in METRIC_TABLE)]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(["---"] * len(header)) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def experiment_table(metrics: dict, label: str) -> str:
    return markdown_table(summary_rows([label], metrics["summary"], len(metrics["seeds"])))


def method_of(config: dict) -> str:
    """What produced a run, from its stored configuration: the preset and how
    many labels it used (none for the label-free presets, whose ``labelled``
    is only the size of their training subset) or the N2D pipeline."""
    if config.get("method") == "n2d":
        steps = f"{config.get('manifold', {}).get('method', 'umap')} + {config.get('cluster', 'gmm')}"
        if config.get("codes_from"):
            return f"{Path(config['codes_from']).name} codes + {steps}"
        return f"raw inputs + {steps}" if config.get("raw") else f"n2d ({steps}), no labels"
    train = config.get("train", {})
    labelled = config.get("labelled")
    if not uses_labels(train):
        return f"{train.get('name', '?')}, no labels"
    return f"{train.get('name', '?')}, " + ("all labels" if labelled in (None, "all") else f"{labelled} labels")


def epochs_of(config: dict) -> str:
    """The epochs a run's autoencoder was configured to train ("-": none trained)."""
    if config.get("method") == "n2d":
        trained = not (config.get("raw") or config.get("codes_from"))
        return str(config.get("autoencoder", {}).get("epochs", "?")) if trained else "-"
    train = config.get("train", {})
    return str(train.get("epochs", "?")) if train.get("method", "autoencoder") == "autoencoder" else "-"


def collect_runs(run_dirs) -> tuple[list[tuple[str, dict]], list[tuple[str, str]]]:
    """(directory, metrics) of each finished run, and (directory, reason) of
    each one left out (unfinished: no metrics.json yet).  A metrics.json that
    cannot be read is an error naming the file."""
    runs, skipped = [], []
    for run_dir in run_dirs:
        path = Path(run_dir) / "metrics.json"
        if not path.is_file():
            skipped.append((str(run_dir), "no metrics.json (not a run directory, or the run has not finished)"))
            continue
        try:
            metrics = json.loads(path.read_text())
            readable = isinstance(metrics.get("seeds"), list) and all(
                isinstance(metrics.get("summary", {}).get(key), dict) for key in ("mean", "std", "best")
            )
        except (ValueError, AttributeError) as error:
            raise ValueError(f"{path} is not a readable snnl metrics file ({error})") from None
        if not readable:
            raise ValueError(f"{path} is not a readable snnl metrics file (no per-seed metrics or summary)")
        runs.append((str(run_dir), metrics))
    return runs, skipped


def runs_table(run_metrics: list[tuple[str, dict]]) -> str:
    """One table, two rows (average, best) per run: the layout of the paper's
    Tables III-V, with the dataset and the method beside each run's directory."""
    rows = []
    for run_dir, metrics in run_metrics:
        config = metrics.get("config", {})
        label = [Path(run_dir).name, str(config.get("dataset", "?")), method_of(config), epochs_of(config)]
        rows += summary_rows(label, metrics["summary"], len(metrics["seeds"]))
    return markdown_table(rows, ("run", "dataset", "method", "epochs"))
