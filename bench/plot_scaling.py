"""Plot a scaling benchmark JSON and print it as a Markdown table: wall time
and extra peak memory of each pipeline stage against the number of points.

    python bench/plot_scaling.py bench/results/scaling-cpu-xeon-2core.json
    # writes bench/results/scaling-cpu-xeon-2core.png, prints the table
"""

from __future__ import annotations

import argparse
import json
from collections import defaultdict
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def load_rows(path: Path) -> tuple[dict, list, dict]:
    data = json.loads(path.read_text())
    rows = defaultdict(dict)  # stage -> n -> (seconds, MiB)
    for bench in data["benchmarks"]:
        info = bench["extra_info"]
        if "stage" in info:
            rows[info["stage"]][info["n"]] = (info["seconds"], info["peak_extra_bytes"] / 2**20)
    return rows, data.get("not_run", []), data.get("snnl", {})


def markdown(rows: dict, not_run: list) -> str:
    sizes = sorted({n for series in rows.values() for n in series})
    skipped = {(entry["params"].get("stage"), entry["params"].get("n")) for entry in not_run}
    lines = ["| stage | " + " | ".join(f"n = {n:,}" for n in sizes) + " |", "|---|" + "---|" * len(sizes)]
    for stage, series in rows.items():
        cells = []
        for n in sizes:
            if n in series:
                seconds, mib = series[n]
                cells.append(f"{seconds:.2f} s ({seconds / n * 1e6:.1f} s/M), {mib:.0f} MiB")
            else:
                cells.append("not run" if (stage, n) in skipped else "—")
        lines.append(f"| {stage} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot(rows: dict, meta: dict, out: Path) -> None:
    fig, (ax_time, ax_mem) = plt.subplots(1, 2, figsize=(11, 4.2))
    for stage, series in rows.items():
        sizes = sorted(series)
        ax_time.plot(sizes, [series[n][0] for n in sizes], marker="o", label=stage)
        ax_mem.plot(sizes, [max(series[n][1], 1e-1) for n in sizes], marker="o", label=stage)
    ax_time.set(xlabel="points n", ylabel="wall time (s)")
    ax_mem.set(xlabel="points n", ylabel="extra peak memory (MiB)")
    for ax in (ax_time, ax_mem):
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.grid(alpha=0.3)
    ax_time.legend(fontsize=8)
    fig.suptitle(f"pipeline stages on blobs (32 features, 10 clusters) — {meta.get('device', '?')}")
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("json", type=Path)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    rows, not_run, meta = load_rows(args.json)
    plot(rows, meta, args.out or args.json.with_suffix(".png"))
    print(markdown(rows, not_run))


if __name__ == "__main__":
    main()
