import csv

from labquake_tf.evaluation.transfer import write_tables


def test_write_tables_places_each_cell(tmp_path, monkeypatch):
    from labquake_tf.evaluation import figures

    saved, save = [], figures._save
    monkeypatch.setattr(figures, "_save", lambda fig, path: (
        saved.append([[(t.get_position(), t.get_text()) for t in ax.texts] for ax in fig.axes]),
        save(fig, path)))
    rows = [{"source": s, "target": t, "mode": m, "rmse": v, "r2": 0.5, "units": "MPa"}
            for s, t, m, v in [("a", "x", "zero-shot", 1.0), ("a", "y", "zero-shot", 2.0),
                               ("b", "x", "zero-shot", 3.0), ("b", "x", "fine-tuned", 0.25)]]
    write_tables(rows, tmp_path)
    md = (tmp_path / "transfer.md").read_text()
    assert "| a | 1 | 2 |" in md and "| b | 3 | — |" in md
    assert "| a | — | — |" in md and "| b | 0.25 | — |" in md
    with open(tmp_path / "transfer.csv") as f:
        assert [float(r["rmse"]) for r in csv.DictReader(f)] == [1.0, 2.0, 3.0, 0.25]
    for mode in ("zero-shot", "fine-tuned"):
        assert (tmp_path / f"transfer_{mode}.png").stat().st_size > 5000
    # Each heat map writes each cell's value at (target column, source row), none for gaps.
    zero, tuned = ([(tuple(map(round, pos)), text) for pos, text in fig[0] if isinstance(text, str)]
                   for fig in saved)
    assert sorted(zero) == [((0, 0), "1"), ((0, 1), "3"), ((1, 0), "2")]
    assert tuned == [((0, 1), "0.25")]


