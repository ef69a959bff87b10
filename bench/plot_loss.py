"""Plot a loss benchmark JSON: time and extra peak memory against batch size,
one line per backend, one column per latent dimension.

    python bench/plot_loss.py bench/results/loss-cpu-xeon-2core.json
    # writes bench/results/loss-cpu-xeon-2core.png
"""

from __future__ import annotations

import argparse
import json
from collections import defaultdict
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def load_rows(path: Path) -> tuple[dict, dict]:
    data = json.loads(path.read_text())
    rows = defaultdict(dict)  # (backend, dim) -> batch -> (ms, MiB)
    for bench in data["benchmarks"]:
        info = bench["extra_info"]
        if "mean_ms" in info:
            rows[(info["backend"], info["dim"])][info["batch"]] = (info["mean_ms"], info["peak_extra_bytes"] / 2**20)
    return rows, data.get("snnl", {})


def plot(path: Path, out: Path) -> None:
    rows, meta = load_rows(path)
    dims = sorted({dim for _, dim in rows})
    backends = sorted({backend for backend, _ in rows})
    fig, axes = plt.subplots(2, len(dims), figsize=(4.2 * len(dims), 7), squeeze=False)
    for col, dim in enumerate(dims):
        for backend in backends:
            series = rows.get((backend, dim))
            if not series:
                continue
            batches = sorted(series)
            axes[0][col].plot(batches, [series[b][0] for b in batches], marker="o", label=backend)
            axes[1][col].plot(batches, [series[b][1] for b in batches], marker="o", label=backend)
        axes[0][col].set(title=f"d = {dim}", ylabel="forward + backward (ms)")
        axes[1][col].set(xlabel="batch size b", ylabel="extra peak memory (MiB)")
        for ax in (axes[0][col], axes[1][col]):
            ax.set_xscale("log", base=2)
            ax.set_yscale("log")
            ax.grid(alpha=0.3)
    axes[0][0].legend()
    fig.suptitle(f"soft nearest neighbor loss, cosine, fp32 — {meta.get('device', '?')}")
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("json", type=Path)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    plot(args.json, args.out or args.json.with_suffix(".png"))


if __name__ == "__main__":
    main()
