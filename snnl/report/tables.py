"""The Markdown tables made from finished runs (``snnl table``, the closing
line of ``snnl run``): two rows (average over seeds, best) per run, one
column per metric of ``snnl.metrics.METRIC_TABLE``."""

from __future__ import annotations

import json
from pathlib import Path

from ..metrics import METRIC_TABLE
from ..train.config import uses_labels


def summary_rows(label: list[str], summary: dict, n_seeds: int) -> list[list[str]]:
    mean = [
        m.format(summary["mean"][m.name])
        + (f" ± {m.format(summary['std'][m.name])}" if n_seeds > 1 and summary["std"][m.name] is not None else "")
        for m in METRIC_TABLE
    ]
    if n_seeds == 1:  # its average is its best: one row
        return [[*label, "1 seed", *mean]]
    best = [m.format(summary["best"][m.name]) for m in METRIC_TABLE]
    return [[*label, f"average ({n_seeds} seeds)", *mean], [*label, "best", *best]]


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
        every = ", trained and clustered on all images" if config.get("protocol") == "all" else ""
        return f"{train.get('name', '?')}, no labels{every}"
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
    each one left out (unfinished: no metrics.json yet, or one being resumed).  A metrics.json that
    cannot be read is an error naming the file."""
    from ..runs.outdir import user_of

    runs, skipped = [], []
    for run_dir in run_dirs:
        path = Path(run_dir) / "metrics.json"
        if not path.is_file():
            skipped.append((str(run_dir), "no metrics.json (not a run directory, or the run has not finished)"))
            continue
        holder = user_of(run_dir)
        if holder is not None:  # a resumed run: its metrics.json is the one before, not its result
            skipped.append((str(run_dir), f"a run is writing there now ({holder}): its metrics.json is not final"))
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
