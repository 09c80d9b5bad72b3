"""``jobs.reproduce``'s results -> claims (HOLDS / DOES NOT HOLD), ``docs/reproduce.md``,
its figures, ``OUT/results.csv`` and the README's "What the paper claims" table.

Every criterion is fixed here, in code, before a result is seen; a claim that does not
hold is printed as not holding.
"""

import csv
import pathlib
import re

import numpy as np

from labquake_tf.jobs import reproduce_runs as plan_lib

THRESHOLD = 1.5
"""Ablation convergence: epochs until member 0's validation loss is at most THRESHOLD x
the lowest validation loss any mode reached on that dataset (any seed); a run that never
gets there counts as its epochs + 1."""
FIG5_R2 = 0.5
"""Fig. 5 "works": mean test R² above this AND mean RMSE below predicting the training mean."""
TARGETS = {("p4581", "shear_stress"): ("RMSE <= 0.048 MPa and R² >= 0.95", 0.048, 0.95),
           ("p5198", "ttsf"): ("RMSE <= 0.45 s", 0.45, None),
           ("p4581", "ttsf"): ("RMSE <= 1.5 s", 1.5, None),
           ("p4581", "ttef"): ("RMSE <= 0.9 s", 0.9, None)}
"""The issue's accuracy targets. p4581's TTsF/TTeF had none: these were set from their
first measurement (1.571 ± 0.069 s and 0.965 ± 0.022 s over seeds 0/1/2), a few percent
past it, before the channel search existed."""
COVERAGE = (0.87, 0.93)
README_MARKERS = ("<!-- reproduce-claims:start -->", "<!-- reproduce-claims:end -->")


def ms(values):
    """``(mean, sd)`` over seeds (sd 0 for one value; NaN when there are none)."""
    v = np.asarray([x for x in values if x is not None], float)
    if len(v) == 0:
        return float("nan"), float("nan")
    return float(v.mean()), float(v.std(ddof=1)) if len(v) > 1 else 0.0


def pm(values, digits=4):
    mean, sd = ms(values)
    if np.isnan(mean):
        return "—"
    one = len([v for v in values if v is not None]) == 1
    return f"{mean:.{digits}g} ± {'–' if one else f'{sd:.2g}'}"  # no spread from one seed


def _pick(results, prefix):
    return [r for name, r in sorted(results.items()) if re.fullmatch(prefix + r"-s\d+", name)]


def summarise(results, seeds):
    """The tables' numbers and the claims: ``{"claims": [...], "tables": {...}}``."""
    claims, tables = [], {}

    def claim(name, criterion, holds, measured):
        claims.append({"claim": name, "criterion": criterion, "measured": measured,
                       "holds": bool(holds)})

    default = {(d, t): _pick(results, f"default-{d}-{t}") for d, t in plan_lib.DEFAULTS}
    tables["default"] = default
    # Fig. 4: fine-tuned vs zero-shot, in MPa and in the target's own scaled units
    ft, zs = default[("p4581", "shear_stress")], results.get("zero-shot-p4581", {})
    ft_scaled = ms([r["rmse_scaled"] for r in ft])[0]
    claim("Fig. 4: fine-tuned beats zero-shot (p4581 shear stress)",
          "mean fine-tuned test RMSE < zero-shot RMSE, both in scaled units (min-max on "
          "p4581's training part)", ft_scaled < zs.get("rmse_target_scaled", np.nan),
          f"fine-tuned {pm([r['rmse'] for r in ft])} MPa = {pm([r['rmse_scaled'] for r in ft])} "
          f"scaled; zero-shot {zs.get('rmse', np.nan):.4g} MPa (source scalers) = "
          f"{zs.get('rmse_target_scaled', np.nan):.4g} scaled")
    for target in ("shear_stress", "ttsf", "ttef"):  # Fig. 5
        rows = default[("p4581", target)]
        r2, rmse, base = (ms([r[k] for r in rows])[0] for k in ("r2", "rmse", "baseline_rmse"))
        units = rows[0]["units"] if rows else ""
        claim(f"Fig. 5: fine-tuning works for p4581 {target}",
              f"mean R² > {FIG5_R2} and mean RMSE < training-mean RMSE", r2 > FIG5_R2 and
              rmse < base, f"R² {pm([r['r2'] for r in rows], 3)}, RMSE "
              f"{pm([r['rmse'] for r in rows])} {units} vs mean {base:.4g} {units}")
    # The ablation
    tables["ablation"] = {}
    for dataset, target in plan_lib.ABLATION:
        modes = {m: _pick(results, f"ablation-{dataset}-{target}-{m}")
                 for m in ("pretrained-frozen", "random-frozen", "trainable")}
        losses = [v for rows in modes.values() for r in rows for v in r["val_loss"]]
        level = THRESHOLD * min(losses) if losses else np.nan
        epochs = {m: [_epochs_to(r["val_loss"], level) for r in rows] for m, rows in modes.items()}
        tables["ablation"][(dataset, target)] = (modes, epochs, level)
        e = {m: ms(v)[0] for m, v in epochs.items()}
        rm = {m: ms([r["rmse"] for r in rows])[0] for m, rows in modes.items()}
        claim(f"Ablation: pretrained-frozen decoder converges faster ({dataset} {target})",
              f"mean epochs to val loss <= {THRESHOLD} x best < random-frozen's and trainable's",
              e["pretrained-frozen"] < e["random-frozen"] and
              e["pretrained-frozen"] < e["trainable"],
              ", ".join(f"{m} {pm(v, 3)}" for m, v in epochs.items()) + " epochs")
        claim(f"Ablation: pretrained-frozen decoder is more accurate ({dataset} {target})",
              "mean test RMSE < random-frozen's and trainable's",
              rm["pretrained-frozen"] < rm["random-frozen"] and
              rm["pretrained-frozen"] < rm["trainable"],
              ", ".join(f"{m} {pm([r['rmse'] for r in rows])}" for m, rows in modes.items()))
    # The data-limited sweep
    sweep = {(mode, f): _pick(results, f"sweep-{mode}-{f:g}")
             for mode in ("pretrained-frozen", "from-scratch") for f in plan_lib.FRACTIONS}
    tables["sweep"] = sweep
    wins = {f: ms([r["rmse"] for r in sweep[("pretrained-frozen", f)]])[0] <
            ms([r["rmse"] for r in sweep[("from-scratch", f)]])[0] for f in plan_lib.FRACTIONS}
    stops = next((f for f in plan_lib.FRACTIONS if not wins[f]), None)
    small = plan_lib.FRACTIONS[0]
    claim(f"Data-limited: pretrained-frozen beats from-scratch on {small:.0%} of the events "
          f"({'/'.join(plan_lib.SWEEP)})", "mean test RMSE lower", wins[small],
          f"{pm([r['rmse'] for r in sweep[('pretrained-frozen', small)]])} vs "
          f"{pm([r['rmse'] for r in sweep[('from-scratch', small)]])}; stops beating it at "
          + (f"{stops:.0%}" if stops is not None else "none (beats it at every fraction)"))
    # Wang 2021
    wang = {k: _pick(results, f"wang-{k}") for k in ("simulator", "lab-pretrained", "lab-only")}
    tables["wang"] = wang
    w = {k: ms([r["rmse"] for r in rows])[0] for k, rows in wang.items()}
    claim(f"Wang 2021: simulator-pretrained beats lab-only ({plan_lib.WANG} shear stress)",
          "mean test RMSE lower", w["simulator"] < w["lab-only"],
          ", ".join(f"{k} {pm([r['rmse'] for r in rows])}" for k, rows in wang.items()) + " MPa")
    # Transfer matrix
    cells = {}
    for r in _pick(results, "transfer"):
        for row in r["rows"]:
            cells.setdefault((row["source"], row["target"], row["mode"]), []).append(row["rmse"])
    tables["transfer"] = cells
    pairs = [(s, t) for s, t, m in cells if m == "fine-tuned"]
    better = [ms(cells[(s, t, "fine-tuned")])[0] < ms(cells[(s, t, "zero-shot")])[0]
              for s, t in pairs]
    claim("Transfer (Fig. 2): fine-tuning beats zero-shot in every off-diagonal cell",
          "mean fine-tuned RMSE < zero-shot RMSE, each cell", bool(pairs) and all(better),
          f"{sum(better)} of {len(pairs)} cells")
    # The accuracy targets on the default fine-tunes
    for (dataset, target), (text, bound, r2_bound) in TARGETS.items():
        rows = default[(dataset, target)]
        rmse, r2 = ms([r["rmse"] for r in rows])[0], ms([r["r2"] for r in rows])[0]
        claim(f"Accuracy target: {dataset} {target}", text,
              rmse <= bound and (r2_bound is None or r2 >= r2_bound),
              f"RMSE {pm([r['rmse'] for r in rows])}, R² {pm([r['r2'] for r in rows], 3)}")
    for (dataset, target), rows in default.items():
        cov = ms([r.get("coverage") for r in rows])[0]
        claim(f"90 % interval covers 87–93 %: {dataset} {target}",
              "mean test coverage in [0.87, 0.93]", COVERAGE[0] <= cov <= COVERAGE[1],
              f"coverage {pm([r.get('coverage') for r in rows], 3)}; by phase: {_phase(rows)}")
    return {"claims": claims, "tables": tables}


def _epochs_to(curve, level):
    hit = [i for i, v in enumerate(curve) if v <= level]
    return hit[0] + 1 if hit else len(curve) + 1


def _phase(rows):
    phases = {}
    for r in rows:
        for phase, c in (r.get("coverage_by_phase") or {}).items():
            phases.setdefault(phase, []).append(c["coverage"])
    return "; ".join(f"{p} {pm(v, 3)}" for p, v in phases.items()) or "not in metrics"


def write_doc(summary, path, header, figures_dir=None):
    """``docs/reproduce.md``: ``header`` lines (command, wall time, machine), the claims,
    then a table per experiment, mean ± sd over seeds on every row."""
    t = summary["tables"]
    n_hold = sum(c["holds"] for c in summary["claims"])
    lines = ["# The paper's claims, reproduced", "", *header, "",
             f"## Claims: {n_hold} of {len(summary['claims'])} hold", "",
             "| # | claim | criterion (fixed before the run) | measured (mean ± sd over seeds) "
             "| verdict |", "|---|---|---|---|---|"]
    lines += [f"| {i} | {c['claim']} | {c['criterion']} | {c['measured']} | "
              f"{'HOLDS' if c['holds'] else 'DOES NOT HOLD'} |"
              for i, c in enumerate(summary["claims"], 1)]
    lines += ["", "## Default fine-tunes (from `synthetic-biaxial-small`, every labelled test "
              "step)", "", "| dataset / target | RMSE | R² | 90 % coverage | width | "
              "per-phase coverage | training-mean RMSE | steps scored / labelled | seeds |",
              "|---|---|---|---|---|---|---|---|---|"]
    for (d, tg), rows in t["default"].items():
        u = rows[0]["units"] if rows else ""
        scored = ", ".join(f"{r['n_labelled']}/{r['n_labelled_test_steps']}" for r in rows)
        lines.append(f"| {d} {tg} | {pm([r['rmse'] for r in rows])} {u} | "
                     f"{pm([r['r2'] for r in rows], 3)} | {pm([r.get('coverage') for r in rows], 3)}"
                     f" | {pm([r.get('width') for r in rows])} {u} | {_phase(rows)} | "
                     f"{pm([r['baseline_rmse'] for r in rows])} {u} | {scored} | {len(rows)} |")
    lines += ["", "## Ablation: the decoder (Supplementary Table 4)", "",
              f"One head, blocks {plan_lib.ABLATION_WINDOW['blocks']}, window "
              f"{plan_lib.ABLATION_WINDOW['seq_len']}, calibrated on validation. Epochs: until "
              f"the validation loss is at most {THRESHOLD} × the lowest any mode reached on "
              "that dataset (a run that never gets there counts as its epochs + 1).", "",
              "| dataset / target | decoder | epochs to threshold | epochs run | test RMSE | "
              "R² |", "|---|---|---|---|---|---|"]
    for (d, tg), (modes, epochs, level) in t["ablation"].items():
        for m, rows in modes.items():
            lines.append(f"| {d} {tg} (loss ≤ {level:.3g}) | {m} | {pm(epochs[m], 3)} | "
                         f"{pm([r['epochs_run'] for r in rows], 3)} | "
                         f"{pm([r['rmse'] for r in rows])} | {pm([r['r2'] for r in rows], 3)} |")
    lines += ["", f"## Data-limited sweep ({' '.join(plan_lib.SWEEP)})", "",
              "The last fraction of the training events (nearest validation); validation "
              "and test unchanged. From-scratch: the same architecture re-initialised, all "
              "of it trained.", "",
              "| fraction | events | pretrained-frozen RMSE | from-scratch RMSE |",
              "|---|---|---|---|"]
    for f in plan_lib.FRACTIONS:
        pf, sc = t["sweep"][("pretrained-frozen", f)], t["sweep"][("from-scratch", f)]
        ev = (pf or sc)[0]["n_train_windows"] if pf or sc else {"events": "?", "of": "?"}
        lines.append(f"| {f:.0%} | {ev['events']} of {ev['of']} | "
                     f"{pm([r['rmse'] for r in pf])} | {pm([r['rmse'] for r in sc])} |")
    lines += ["", f"## Wang 2021 ({plan_lib.WANG} shear stress)", "",
              "| source | test RMSE (MPa) | R² |", "|---|---|---|"]
    for k, rows in t["wang"].items():
        lines.append(f"| {k} | {pm([r['rmse'] for r in rows])} | {pm([r['r2'] for r in rows], 3)} |")
    lines += ["", "## Cross-experiment transfer (shear stress test RMSE, MPa)", "",
              "| source | target | zero-shot | fine-tuned |", "|---|---|---|---|"]
    for s, tg in dict.fromkeys((s, tg) for s, tg, _ in t["transfer"]):
        lines.append(f"| {s} | {tg} | {pm(t['transfer'].get((s, tg, 'zero-shot'), []))} | "
                     f"{pm(t['transfer'].get((s, tg, 'fine-tuned'), []))} |")
    if figures_dir is not None:
        rel = pathlib.Path(figures_dir).relative_to(pathlib.Path(path).parent)
        lines += ["", f"![ablation]({rel}/ablation.png) ![sweep]({rel}/sweep.png)"]
    pathlib.Path(path).parent.mkdir(parents=True, exist_ok=True)
    pathlib.Path(path).write_text("\n".join(lines) + "\n")


def plot(summary, folder):
    """Two small figures: the ablation's validation curves and the sweep."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    folder = pathlib.Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    t = summary["tables"]
    fig, axes = plt.subplots(1, len(t["ablation"]), figsize=(8, 3), squeeze=False)
    for ax, ((d, tg), (modes, _, level)) in zip(axes[0], t["ablation"].items()):
        for (m, rows), color in zip(modes.items(), ("C0", "C1", "C2")):
            for i, r in enumerate(rows):
                ax.plot(range(1, len(r["val_loss"]) + 1), r["val_loss"], color=color,
                        label=m if i == 0 else None, lw=1)
        ax.axhline(level, color="k", ls=":", lw=1)
        ax.set(yscale="log", xlabel="epoch", ylabel="validation loss", title=f"{d} {tg}")
        if any(modes.values()):
            ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(folder / "ablation.png", dpi=80)
    plt.close(fig)
    fig, ax = plt.subplots(figsize=(4, 3))
    for mode in ("pretrained-frozen", "from-scratch"):
        stats = [ms([r["rmse"] for r in t["sweep"][(mode, f)]]) for f in plan_lib.FRACTIONS]
        ax.errorbar([100 * f for f in plan_lib.FRACTIONS], [s[0] for s in stats],
                    [s[1] for s in stats], marker="o", capsize=3, label=mode)
    ax.set(xscale="log", xlabel="training events (%)", ylabel="test RMSE (MPa)",
           title=" ".join(plan_lib.SWEEP))
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(folder / "sweep.png", dpi=80)
    plt.close(fig)


def write_csv(results, path):
    """``results.csv``: one row per piece and scalar score."""
    keys = ("rmse", "r2", "rmse_scaled", "coverage", "width", "baseline_rmse", "n_labelled",
            "epochs_run", "wall_s")
    pathlib.Path(path).parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["piece", *keys])
        for name, r in sorted(results.items()):
            writer.writerow([name, *(r.get(k, "") for k in keys)])


def readme_table(doc_text):
    """The README's short table from ``docs/reproduce.md``'s claims table."""
    rows = [line for line in doc_text.splitlines() if re.match(r"\| \d+ \|", line)]
    head = [line for line in doc_text.splitlines() if line.startswith("> ")]
    out = [*head, *([""] if head else []), "| claim | measured | verdict |", "|---|---|---|"]
    for line in rows:
        cells = [c.strip() for c in line.strip("|").split(" | ")]
        out.append(f"| {cells[1]} | {cells[3]} | {cells[4]} |")
    return "\n".join(out)


def update_readme(readme, doc):
    """Replace what lies between ``README_MARKERS`` in ``readme`` with ``readme_table``."""
    readme = pathlib.Path(readme)
    text = readme.read_text()
    start, end = README_MARKERS
    if start not in text or end not in text:
        raise ValueError(f"{readme}: no {start} ... {end} markers to write the table between")
    table = readme_table(pathlib.Path(doc).read_text())
    before, rest = text.split(start, 1)
    readme.write_text(f"{before}{start}\n{table}\n{end}{rest.split(end, 1)[1]}")
