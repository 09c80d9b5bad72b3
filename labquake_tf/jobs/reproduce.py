"""``scripts/reproduce.py``: the paper's claims on the public records, with the spread
over seeds, each checked against a criterion fixed here before any result is seen.

The pieces (``jobs.reproduce_runs``) run in ``jobs`` worker processes; each one's
result is kept in ``OUT/pieces/NAME.json``, so a rerun into the same ``OUT`` does
only what is missing. ``jobs.reproduce_report`` turns the results into
``docs/reproduce.md``, its figures, ``OUT/results.csv`` and the README's table.
"""

import concurrent.futures
import json
import multiprocessing
import os
import pathlib
import platform
import time

from labquake_tf.files import write_json
from labquake_tf.jobs import reproduce_report as report
from labquake_tf.jobs import reproduce_runs as runs
from labquake_tf.jobs.reproduce_runs import (ABLATION, ABLATION_WINDOW, DEFAULTS, FRACTIONS,
                                              HEADLINE, LAB_SOURCES, SWEEP, WANG)

SIZES = {
    # epochs of the lab pretrainings, and of the ablation / sweep / Wang / transfer fine-tunes
    "small": dict(preset="small", pretrain_epochs=8, epochs=30, transfer_epochs=20),
    "paper": dict(preset="paper", pretrain_epochs=100, epochs=100, transfer_epochs=60),
}
QUICK = dict(preset="small", pretrain_epochs=2, epochs=3, transfer_epochs=2, default_epochs=3)
"""A smoke run: every piece, a few epochs each (the default fine-tunes too: not default)."""


def plan(seeds, size, quick=False):
    """``[(name, function name, kwargs, after)]``: every piece, in the order to start
    them (``after``: the pieces whose results its kwargs need)."""
    s = QUICK if quick else SIZES[size]
    pieces = []
    for dataset in LAB_SOURCES:  # first: others wait on them
        pieces.append((f"source-{dataset}", "lab_source",
                       dict(dataset=dataset, epochs=s["pretrain_epochs"], preset=s["preset"]), ()))
    for seed in seeds:
        for dataset, target in DEFAULTS:
            pieces.append((f"default-{dataset}-{target}-s{seed}", "default_finetune",
                           dict(dataset=dataset, target=target, seed=seed,
                                epochs=s.get("default_epochs")), ()))
    pieces.append(("zero-shot-p4581", "zero_shot",
                   dict(source=runs.DEFAULT_SOURCE, dataset="p4581"), ()))
    for seed in seeds:
        for dataset, target in ABLATION:
            for decoder in ("pretrained-frozen", "random-frozen", "trainable"):
                pieces.append((f"ablation-{dataset}-{target}-{decoder}-s{seed}", "ablation",
                               dict(dataset=dataset, target=target, decoder=decoder, seed=seed,
                                    epochs=s["epochs"], **ABLATION_WINDOW), ()))
        for fraction in FRACTIONS:
            for mode in ("pretrained-frozen", "from-scratch"):
                pieces.append((f"sweep-{mode}-{fraction:g}-s{seed}", "limited",
                               dict(dataset=SWEEP[0], target=SWEEP[1], mode=mode,
                                    fraction=fraction, seed=seed, epochs=s["epochs"],
                                    **ABLATION_WINDOW), ()))
        for mode in ("pretrained-frozen", "from-scratch"):  # simulator-pretrained, lab-only
            pieces.append((f"wang-{'simulator' if mode != 'from-scratch' else 'lab-only'}-s{seed}",
                           "limited", dict(dataset=WANG, target="shear_stress", mode=mode,
                                           fraction=1.0, seed=seed, epochs=s["epochs"],
                                           **ABLATION_WINDOW), ()))
        other = [d for d in LAB_SOURCES if d != WANG][0]
        pieces.append((f"wang-lab-pretrained-s{seed}", "limited",
                       dict(dataset=WANG, target="shear_stress", mode="pretrained-frozen",
                            fraction=1.0, seed=seed, epochs=s["epochs"],
                            source=("run", f"source-{other}"), **ABLATION_WINDOW),
                       (f"source-{other}",)))
        pieces.append((f"transfer-s{seed}", "transfer",
                       dict(seed=seed, epochs=s["transfer_epochs"],
                            runs={runs.DEFAULT_SOURCE: runs.DEFAULT_SOURCE,
                                  **{d: ("run", f"source-{d}") for d in LAB_SOURCES}}),
                       tuple(f"source-{d}" for d in LAB_SOURCES)))
    return pieces


def run_all(out, seeds=(0, 1, 2), size="small", jobs=2, quick=False, log=print):
    """Run every piece not yet done in ``out``; returns ``{name: result}``."""
    out = pathlib.Path(out)
    (out / "pieces").mkdir(parents=True, exist_ok=True)
    results = {}
    todo = []
    for piece in plan(seeds, size, quick):
        done = out / "pieces" / f"{piece[0]}.json"
        kept = json.loads(done.read_text()) if done.is_file() else {}
        if kept.get("request") == _jsonable(piece[2]):  # same piece, same settings
            results[piece[0]] = kept
        else:
            todo.append(piece)
    # Fresh interpreters ("spawn"): TensorFlow's threads do not survive a fork.
    with concurrent.futures.ProcessPoolExecutor(
            max_workers=jobs, mp_context=multiprocessing.get_context("spawn")) as pool:
        running, running_kwargs = {}, {}
        while todo or running:
            for piece in [p for p in todo if all(a in results for a in p[3])]:
                todo.remove(piece)
                kwargs = _resolve(piece[2], results)
                running_kwargs[piece[0]] = piece[2]
                running[pool.submit(run_piece, piece[1], out / "runs" / piece[0], kwargs)] = piece
            if not running:
                raise RuntimeError(f"pieces wait on results never made: {[p[0] for p in todo]}")
            done, _ = concurrent.futures.wait(running, return_when="FIRST_COMPLETED")
            for future in done:
                name = running.pop(future)[0]
                try:
                    result = future.result()
                except Exception as e:  # the finished pieces stay kept for a rerun
                    raise RuntimeError(f"reproduce: piece {name} failed: {e}") from e
                results[name] = {**result, "request": _jsonable(running_kwargs[name])}
                write_json(out / "pieces" / f"{name}.json", results[name])
                log(f"done {name} ({results[name]['wall_s']:.0f} s)")
    return results


def run_piece(kind, run_dir, kwargs):
    """One piece in a worker process: ``reproduce_runs.KIND(run_dir, **kwargs)`` timed."""
    start = time.perf_counter()
    if kind == "zero_shot":
        result = runs.zero_shot(**kwargs)
    elif kind == "transfer":
        result = runs.transfer(run_dir, **kwargs)
    else:
        result = getattr(runs, kind)(run_dir, **kwargs)
    return {**result, "wall_s": round(time.perf_counter() - start, 1)}


def _resolve(kwargs, results):
    """``("run", PIECE)`` values -> that piece's run dir (a source it pretrained)."""
    def one(v):
        return results[v[1]]["run"] if isinstance(v, tuple) and v and v[0] == "run" else v
    return {k: ({kk: one(vv) for kk, vv in v.items()} if isinstance(v, dict) else one(v))
            for k, v in kwargs.items()}


def _jsonable(kwargs):
    """The settings as they read back from JSON (tuples as lists)."""
    return json.loads(json.dumps(kwargs))


def machine():
    """A one-line description of where the run ran."""
    return (f"{platform.machine()}, {os.cpu_count()} CPU cores, {platform.system()} "
            f"{platform.release()}, Python {platform.python_version()}")


def reproduce(out="runs/reproduce", seeds=(0, 1, 2), size="small", jobs=2, quick=False,
              doc="docs/reproduce.md", readme="README.md", command="", log=print):
    """The whole job: run the pieces, check the claims, write the doc, its figures,
    ``OUT/results.csv`` and the README's table; returns the claims' summary line."""
    start = time.perf_counter()
    results = run_all(out, seeds, size, jobs, quick, log)
    summary = report.summarise(results, seeds)
    wall = time.perf_counter() - start
    header = []
    if quick:
        header += ["> **Smoke run** (`--quick`: 1 seed, a few epochs per fit, the default "
                   "fine-tunes cut to 3 epochs): it shows the job works, not what the method "
                   "reaches; the full run's figures replace it.", ""]
    header += [f"Command: `{command}`  ", f"Size: {size}; seeds: {', '.join(map(str, seeds))}; "
               f"{jobs} worker processes  ",
               f"Wall time: {wall / 60:.1f} min (pieces already in `{out}/pieces` are reused); "
               f"the pieces' own times add up to "
               f"{sum(r.get('wall_s', 0) for r in results.values()) / 60:.1f} min  ",
               f"Machine: {machine()}  ",
               "Full run (CPU, < 1 h quiet): `LABQUAKE_DATA_DIR=... python scripts/reproduce.py "
               "--seeds 3`; paper size (GPU): `python scripts/reproduce.py --size paper "
               "--seeds 3 --jobs 1 --out runs/reproduce-paper`.  ",
               "Sources: the simulator-pretrained source is the shipped preset "
               f"`{runs.DEFAULT_SOURCE}`; the lab sources (p4581, p5198 shear stress, "
               f"preset `{(QUICK if quick else SIZES[size])['preset']}`) are one pretraining "
               "each (seed 0); the spread is over the fine-tuning seeds. Criteria: "
               "`labquake_tf/jobs/reproduce_report.py`, fixed before the first run.  ",
               "Scores: each run's own test metrics (`metrics.json`), every labelled test "
               "step; on the default fine-tunes they equal `benchmarks/bench_accuracy.py`'s "
               "independent scoring (same steps, RMSE, R² and coverage to every digit, "
               "checked on p4581 shear stress and p5198 TTsF)."]
    doc = pathlib.Path(doc)
    figures = doc.parent / doc.stem
    report.plot(summary, figures)
    report.write_doc(summary, doc, header, figures)
    report.write_csv(results, pathlib.Path(out) / "results.csv")
    if readme:
        report.update_readme(readme, doc)
    for c in summary["claims"]:
        log(f"{'HOLDS' if c['holds'] else 'DOES NOT HOLD':>13}  {c['claim']}: {c['measured']}")
    default = summary["tables"]["default"]
    return {"claims": len(summary["claims"]), "hold": sum(c["holds"] for c in summary["claims"]),
            **{f"{d}_{'shear' if t == 'shear_stress' else t}_rmse":
               _finite(report.ms([r["rmse"] for r in default[(d, t)]])[0]) for d, t in HEADLINE}}


def _finite(value):
    """Rounded, or None where there is no run (NaN is not JSON)."""
    return round(value, 5) if value == value else None
