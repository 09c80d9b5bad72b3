"""Trial summary of a finished search: Markdown + CSV table and a score-vs-trial plot."""

import csv
import io
import pathlib

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from labquake_tf.files import atomic_path, write_text  # noqa: E402


def trial_rows(oracle):
    """One dict per trial, in start order: id, status, score, best epoch, values."""
    rows = []
    for trial_id in oracle.start_order:
        trial = oracle.trials[trial_id]
        rows.append({
            "trial": trial_id,
            "status": trial.status,
            "score": trial.score,
            "best_step": trial.best_step,
            **trial.hyperparameters.values,
        })
    return rows


def write_summary(oracle, out_dir):
    """Writes ``trials.csv``, ``trials.md`` and ``score_vs_trial.png`` into ``out_dir``."""
    rows = trial_rows(oracle)
    out_dir = pathlib.Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    columns = list(dict.fromkeys(key for row in rows for key in row))
    write_text(out_dir / "trials.csv", _csv(rows, columns))
    write_text(out_dir / "trials.md", markdown_table(rows, columns))
    _plot(rows, oracle.objective.name, out_dir / "score_vs_trial.png")
    return rows


def markdown_table(rows, columns):
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(_fmt(row.get(c)) for c in columns) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def _csv(rows, columns):
    buf = io.StringIO()
    writer = csv.DictWriter(buf, columns, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return buf.getvalue()


def _plot(rows, objective, path):
    done = [(i, row["score"]) for i, row in enumerate(rows) if row["score"] is not None]
    fig, ax = plt.subplots(figsize=(6, 3.5))
    if done:
        x, y = zip(*done)
        best = [min(y[: i + 1]) for i in range(len(y))]
        ax.plot(x, y, "o", label="trial")
        ax.step(x, best, where="post", label="best so far")
        ax.legend()
    ax.set_xlabel("trial (start order)")
    ax.set_ylabel(objective)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=100)
    plt.close(fig)


def _fmt(value):
    if isinstance(value, float):
        return f"{value:.4g}"
    return "" if value is None else str(value)
