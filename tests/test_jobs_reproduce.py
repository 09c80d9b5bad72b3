"""scripts/reproduce.py's job: the plan, the claims' verdicts, the doc, README table and
last JSON line, and one real piece run the way the worker runs it."""

import json
import re

import numpy as np
import pytest

from labquake_tf.jobs import reproduce as job
from labquake_tf.jobs import reproduce_report as report


def fake_results(seeds, good=True):
    """Results shaped as the pieces return them: ``good`` makes every claim hold."""
    rng = np.random.default_rng(0)
    out = {}
    for name, kind, kwargs, _ in job.plan(seeds, "small"):
        jitter = float(rng.normal(0, 0.001))
        if kind == "lab_source":
            out[name] = {"run": f"/x/{name}", "rmse": 0.02, "r2": 0.9, "epochs_run": 8}
        elif kind == "default_finetune":
            shear = kwargs["target"] == "shear_stress"
            rmse = (0.045 if shear else 0.40) * (1 if good else 4) + jitter
            out[name] = {"rmse": rmse, "r2": 0.96 if good else 0.3, "rmse_scaled": rmse / 1.5,
                         "coverage": 0.9 + jitter, "width": 0.17, "n_labelled": 100,
                         "n_labelled_test_steps": 100, "units": "MPa" if shear else "s",
                         "baseline_rmse": 0.2 if shear else 2.0,
                         "coverage_by_phase": {"loading": {"coverage": 0.92, "n": 80},
                                               "near_failure": {"coverage": 0.8, "n": 20}}}
        elif kind == "zero_shot":
            out[name] = {"rmse": 2.6, "r2": -50.0, "units": "MPa", "rmse_target_scaled": 0.3,
                         "r2_target_scaled": 0.1, "n_labelled": 100}
        elif kind == "ablation":
            fast = kwargs["decoder"] == "pretrained-frozen"
            curve = [0.1 / (e + 1) ** (2 if fast == good else 1) for e in range(10)]
            out[name] = {"rmse": 0.05 if fast == good else 0.07, "r2": 0.9, "val_loss": curve,
                         "epochs_run": 10, "units": "MPa"}
        elif kind == "limited":
            pretrained = kwargs["mode"] == "pretrained-frozen"
            out[name] = {"rmse": (0.05 if pretrained == good else 0.08) + jitter, "r2": 0.9,
                         "epochs_run": 10, "fraction": kwargs["fraction"],
                         "n_train_windows": {"events": 3, "of": 12, "calibration": "val"}}
        if kind == "transfer":
            out[name] = {"rows": [
                {"source": s, "target": t, "mode": m, "units": "MPa", "r2": 0.5,
                 "rmse": (0.05 if (m == "fine-tuned") == good else 0.5) + jitter}
                for s in ("synthetic-biaxial-small", "p4581", "p5198")
                for t in ("p4581", "p5198") for m in ("zero-shot", "fine-tuned")
                if not (s == t and m == "fine-tuned")]}
        out[name]["wall_s"] = 1.0
    return out


def test_the_plan_runs_every_claims_piece_for_every_seed():
    pieces = job.plan((0, 1, 2), "small")
    names = [p[0] for p in pieces]
    assert len(names) == len(set(names))
    # the lab sources first (others wait on them), one each, whatever the seeds
    assert names[:2] == ["source-p4581", "source-p5198"]
    for seed in (0, 1, 2):
        assert f"default-p4581-shear_stress-s{seed}" in names
        assert f"default-p5198-ttsf-s{seed}" in names
        assert sum(n.endswith(f"-s{seed}") and n.startswith("sweep-") for n in names) == 8
        assert f"transfer-s{seed}" in names
    # the default fine-tunes change nothing but the seed
    default = [p for p in pieces if p[1] == "default_finetune"]
    assert len(default) == 12 and all(p[2]["epochs"] is None for p in default)
    assert all(p[2]["epochs"] == 3 for p in job.plan((0,), "small", quick=True)
               if p[1] == "default_finetune")
    waits = {p[0]: p[3] for p in pieces}
    assert waits["wang-lab-pretrained-s0"] == ("source-p5198",)  # the other experiment


@pytest.mark.parametrize("good", [True, False])
def test_claims_hold_or_not_by_their_fixed_criteria(good):
    summary = report.summarise(fake_results((0, 1, 2), good), (0, 1, 2))
    claims = summary["claims"]
    assert len(claims) == 19
    verdicts = {c["claim"]: c["holds"] for c in claims}
    # Fig. 4 compares scaled units: it holds either way here (0.03/0.06 vs 0.3)
    assert verdicts["Fig. 4: fine-tuned beats zero-shot (p4581 shear stress)"]
    for name, holds in verdicts.items():
        if name.startswith(("Ablation", "Data-limited", "Wang", "Transfer", "Accuracy target",
                            "Fig. 5")):
            assert holds == good, name
    shear = [c for c in claims if c["claim"] == "Accuracy target: p4581 shear_stress"][0]
    assert re.search(r"RMSE 0\.04\d+ ± 0\.00\d+", shear["measured"]) if good else True


def test_doc_readme_csv_and_last_line(tmp_path, monkeypatch, capsys):
    results = fake_results((0, 1))
    monkeypatch.setattr(job, "run_all", lambda *a, **k: results)
    readme = tmp_path / "README.md"
    readme.write_text("intro\n" + "\n".join(report.README_MARKERS) + "\nafter\n")
    doc = tmp_path / "docs" / "reproduce.md"
    line = job.reproduce(tmp_path / "out", (0, 1), quick=True, doc=doc, readme=readme,
                         command="python scripts/reproduce.py --quick")
    assert line["claims"] == 19 and 0 <= line["hold"] <= 19
    assert line["p4581_shear_rmse"] == pytest.approx(
        np.mean([results[f"default-p4581-shear_stress-s{s}"]["rmse"] for s in (0, 1)]), abs=1e-5)
    assert set(line) == {"claims", "hold", "p4581_shear_rmse", "p5198_ttsf_rmse"}
    json.dumps(line)
    text = doc.read_text()
    assert "Smoke run" in text and "python scripts/reproduce.py --quick" in text
    assert text.count("HOLDS") == 19  # "DOES NOT HOLD" contains it too
    assert "loading 0.92 ± 0" in text  # per-phase coverage, when the metrics carry it
    for png in ("ablation.png", "sweep.png"):
        assert (tmp_path / "docs" / "reproduce" / png).stat().st_size > 1000
    rows = (tmp_path / "out" / "results.csv").read_text().splitlines()
    assert rows[0].startswith("piece,rmse") and len(rows) == len(results) + 1
    new = readme.read_text()
    assert new.startswith("intro\n") and new.endswith("after\n") and "Smoke run" in new
    assert new.count("| ") >= 19 and new.count(report.README_MARKERS[0]) == 1
    # run again: the table is replaced, not appended
    report.update_readme(readme, doc)
    assert readme.read_text() == new
    with pytest.raises(ValueError, match="markers"):
        report.update_readme(doc, doc)


def test_a_piece_runs_as_the_worker_runs_it(sim_record, tmp_path):
    """One sweep piece on a simulated record, from scratch on 25 % of the events."""
    from labquake_tf.training import TrainConfig  # noqa: F401 -- the piece builds its own

    result = job.run_piece("limited", tmp_path / "piece",
                           dict(dataset=str(sim_record), target="shear_stress",
                                mode="from-scratch", fraction=0.25, seed=0, epochs=2,
                                blocks=1, seq_len=16))
    assert result["fraction"] == 0.25 and result["wall_s"] > 0
    assert result["n_train_windows"]["events"] < result["n_train_windows"]["of"]
    assert np.isfinite(result["rmse"]) and result["n_labelled"] == result["n_labelled_test_steps"]
    assert result["baseline_rmse"] > 0 and result["ensemble"] == 1


def test_the_job_runs_its_pieces_in_workers_quietly_and_keeps_them(sim_record, tmp_path,
                                                                   monkeypatch, capfd):
    """The real pool at a tiny size: two pieces in two spawned workers, the doc and the
    last line from what they return (claims without their pieces do not hold), nothing
    from TensorFlow on stderr (the workers' too: they write to the same fd), and a rerun
    that reuses both pieces."""
    tiny = [("zero-shot-p4581", "zero_shot",
             dict(source=job.runs.DEFAULT_SOURCE, dataset=str(sim_record)), ()),
            ("sweep-from-scratch-0.1-s0", "limited",
             dict(dataset=str(sim_record), target="shear_stress", mode="from-scratch",
                  fraction=0.1, seed=0, epochs=2, blocks=1, seq_len=8), ())]
    monkeypatch.setattr(job, "plan", lambda *a, **k: tiny)
    monkeypatch.setenv("TF_CPP_MIN_LOG_LEVEL", "3")  # what scripts/reproduce.py sets first
    readme = tmp_path / "README.md"
    readme.write_text("\n".join(report.README_MARKERS) + "\n")
    kw = dict(seeds=(0,), jobs=2, quick=True, doc=tmp_path / "reproduce.md", readme=readme)
    line = job.reproduce(tmp_path / "out", **kw)
    err = capfd.readouterr().err
    assert "retracing" not in err and "cuda" not in err.lower() and "cpu_feature_guard" not in err
    assert err.strip() == "", err  # nothing at all: no Python warning either
    assert line == {"claims": 19, "hold": 0, "p4581_shear_rmse": None, "p5198_ttsf_rmse": None}
    pieces = sorted(p.name for p in (tmp_path / "out" / "pieces").iterdir())
    assert pieces == ["sweep-from-scratch-0.1-s0.json", "zero-shot-p4581.json"]
    kept = json.loads((tmp_path / "out" / "pieces" / "zero-shot-p4581.json").read_text())
    assert kept["rmse"] > 0 and kept["rmse_target_scaled"] > 0 and kept["request"]["source"]
    text = (tmp_path / "reproduce.md").read_text()
    assert "DOES NOT HOLD" in text and re.search(r"\| 10% \| 2 of 12 \| — \| 0\.\d+ ± – \|", text)
    # a rerun does nothing again: both pieces are kept, with the same settings
    mtime = (tmp_path / "out" / "pieces" / "zero-shot-p4581.json").stat().st_mtime
    assert job.reproduce(tmp_path / "out", **kw) == line
    assert (tmp_path / "out" / "pieces" / "zero-shot-p4581.json").stat().st_mtime == mtime
