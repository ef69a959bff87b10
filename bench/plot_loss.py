"""Plot a loss benchmark JSON and print it as a Markdown table: time and extra
peak memory against batch size, one line per backend, one column per latent
dimension; the table adds the blocked path's speed relative to the eager reference and to
``torch.compile(reference)`` and, from a CPU run, the time as a multiple of
the machine's bounds (``bench.measure.loss_bounds``).

    python bench/plot_loss.py bench/results/loss-cpu-epyc-2core.json
    # writes bench/results/loss-cpu-epyc-2core.png, prints the table
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


def load_bounds(path: Path) -> dict:
    """(dim, batch) -> bound name -> ms, from any case of that size."""
    bounds = {}
    for bench in json.loads(path.read_text())["benchmarks"]:
        info = bench["extra_info"]
        for key, value in info.items():
            if key.startswith("bound_") and key.endswith("_ms"):
                bounds.setdefault((info["dim"], info["batch"]), {})[key[6:-3]] = value
    return bounds


def _time(ms: float) -> str:
    return f"{ms / 1e3:.2f} s" if ms >= 1000 else f"{ms:.1f} ms"


def markdown(rows: dict, bounds: dict) -> str:
    # (older result files also hold the since-removed chunked backend)
    backends = [b for b in ("reference", "compiled", "chunked", "blocked", "triton") if any(k[0] == b for k in rows)]
    lines = [
        "| d | b | "
        + " | ".join(backends)
        + " | blocked vs eager | vs compiled | blocked / bound (naive, symmetric) |",
        "|---|---|" + "---|" * (len(backends) + 3),
    ]
    for dim in sorted({d for _, d in rows}):
        for batch in sorted({b for (_, d), series in rows.items() if d == dim for b in series}):
            cells = []
            for backend in backends:
                entry = rows.get((backend, dim), {}).get(batch)
                cells.append(f"{_time(entry[0])}, {entry[1]:,.0f} MiB" if entry else "not run")
            blocked = rows.get(("blocked", dim), {}).get(batch)
            ratio = lambda other: f"{other[0] / blocked[0]:.1f}x" if other and blocked else "—"  # noqa: E731
            bound = bounds.get((dim, batch), {})
            multiple = (
                f"{blocked[0] / bound['naive']:.2f}, {blocked[0] / bound['symmetric']:.2f}"
                if blocked and "naive" in bound
                else "—"
            )
            lines.append(
                f"| {dim} | {batch:,} | "
                + " | ".join(cells)
                + f" | {ratio(rows.get(('reference', dim), {}).get(batch))} | "
                f"{ratio(rows.get(('compiled', dim), {}).get(batch))} | {multiple} |"
            )
    return "\n".join(lines)


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
    rows, meta = load_rows(args.json)
    machine = meta.get("machine")
    if machine:
        print(
            f"machine: {meta.get('device')}, {machine['gemm_flops'] / 1e9:.0f} GFLOP/s fp32 GEMM, "
            f"{machine['exp_per_s'] / 1e9:.2f} G exp/s, {machine['threads']} threads"
        )
    print(markdown(rows, load_bounds(args.json)))


if __name__ == "__main__":
    main()
