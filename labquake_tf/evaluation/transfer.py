"""The transfer matrix's tables: one row per (source, target, mode) cell → CSV,
Markdown and a heat map per mode (``jobs.transfer_matrix`` fills the rows)."""

import csv
import pathlib

import numpy as np

from labquake_tf.evaluation import figures

MODES = ("zero-shot", "fine-tuned")


def row(source, dataset, mode, metrics, target):
    """One cell from ``evaluate_model``'s metrics: ``{"source", "target", "mode", "rmse",
    "r2", "units"}``."""
    m = metrics["targets"][target]
    return {"source": source, "target": dataset, "mode": mode, "rmse": m["rmse"], "r2": m["r2"],
            "units": m["units"]}


def write_tables(rows, out_dir):
    """``transfer.csv``, ``transfer.md`` and a heat map per mode from result rows."""
    out_dir = pathlib.Path(out_dir)
    with open(out_dir / "transfer.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["source", "target", "mode", "rmse", "r2", "units"])
        writer.writeheader()
        writer.writerows(rows)
    sources = list(dict.fromkeys(r["source"] for r in rows))
    targets = list(dict.fromkeys(r["target"] for r in rows))
    units = rows[0]["units"] if rows else ""
    lines = []
    for mode in MODES:
        grid = np.full((len(sources), len(targets)), np.nan)
        for r in rows:
            if r["mode"] == mode:
                grid[sources.index(r["source"]), targets.index(r["target"])] = r["rmse"]
        lines += [f"### {mode} test RMSE ({units})", "",
                  "| source \\ target | " + " | ".join(targets) + " |",
                  "|---|" + "---|" * len(targets)]
        lines += [f"| {s} | " + " | ".join("—" if np.isnan(v) else f"{v:.4g}" for v in grid[i]) + " |"
                  for i, s in enumerate(sources)]
        lines.append("")
        figures.plot_matrix(out_dir / f"transfer_{mode}.png", grid, sources, targets,
                            f"{mode} test RMSE ({units})")
    (out_dir / "transfer.md").write_text("\n".join(lines))
