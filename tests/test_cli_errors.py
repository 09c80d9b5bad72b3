"""Bad input through ``labquake``: one line on stderr, the right exit status, nothing written.

The records are built here (a 10 Hz sawtooth with 19 whole stick-slip events, in the
DDS CSV, HDF5 and NumPy forms), so these tests never wait for the DDS downloads.
"""

import json
import os
import re
import sys

import h5py
import numpy as np
import pytest

from labquake_tf import cli

RATE, PERIOD, N_ROWS = 10.0, 10.0, 2000  # 200 s of 10 Hz rows, an event every 10 s
BAD_ROW = 1500  # 0-based data row that a test spoils: CSV row 1,502 (header = row 1)
DDS_HEADER = ["", "LPDisp", "NormStress", "ShearStress", "Time", "Var_Ch1", "Var_Ch2",
              "TimeToStartFailure", "TimeToEndFailure"]


def _columns(n_rows=N_ROWS):
    t = 100.0 + np.arange(n_rows) / RATE
    phase = ((t - 100.0) % PERIOD) / PERIOD
    stress = 5.0 + 0.5 * phase  # loading ramps, each ending in a one-row drop
    rng = np.random.default_rng(0)
    var = 10 ** (3.0 + phase[:, None] + 0.05 * rng.normal(size=(n_rows, 2)))
    to_next = PERIOD * (1 - phase) - 1 / RATE
    return {"": np.arange(n_rows), "LPDisp": np.linspace(0, 1, n_rows), "NormStress": 2 + 0 * t,
            "ShearStress": stress, "Time": t, "Var_Ch1": var[:, 0], "Var_Ch2": var[:, 1],
            "TimeToStartFailure": to_next, "TimeToEndFailure": to_next + 1 / RATE}


def _write_csv(path, columns, header=DDS_HEADER, edit=None):
    rows = [[repr(float(columns[h][i])) if h else str(i) for h in header]
            for i in range(len(columns["Time"]))]
    if edit:
        edit(rows)
    path.write_text("\n".join([",".join(header)] + [",".join(r) for r in rows]) + "\n")
    return path


def _write_h5(path, columns, logvar=None, stress=None, drop=()):
    with h5py.File(path, "w") as f:
        f.attrs.update(format="labquake-hdf5", version=1, name=path.stem)
        if "logvar" not in drop:
            d = f.create_dataset("features/logvar", data=np.log10(columns["Var_Ch1"])[:, None]
                                 if logvar is None else logvar)
            d.attrs.update(hop=1 / RATE, window=1 / RATE, t0=float(columns["Time"][0]))
        if "stress" not in drop:
            d = f.create_dataset("mech/shear_stress",
                                 data=columns["ShearStress"] if stress is None else stress)
            d.attrs.update(sample_rate=RATE, t0=float(columns["Time"][0]), units="MPa")
    return path


def _write_npz(path, columns, **replace):
    arrays = {"time": columns["Time"], "logvar": np.log10(columns["Var_Ch1"])[:, None],
              "shear_stress": columns["ShearStress"]}
    arrays.update(replace)
    np.savez(path, **{k: v for k, v in arrays.items() if v is not None})
    return path


def _truncate(path):
    data = path.read_bytes()
    path.write_bytes(data[:len(data) // 2])
    return path


def _nan_at(values, row=BAD_ROW):
    values = np.array(values, np.float64)
    values[row] = np.nan
    return values


def _text_at(values, row=BAD_ROW):
    values = np.array([repr(float(v)) for v in np.ravel(values)]).reshape(np.shape(values))
    values[row] = "abc"
    return values


def _set_cell(column, value, row=BAD_ROW):
    def edit(rows):
        rows[row][DDS_HEADER.index(column)] = value
    return edit


def _cut_last_row(rows):
    rows[-1] = rows[-1][:5]  # the file ends after five of nine fields


def _garbage(path):
    path.write_bytes(np.random.default_rng(1).bytes(4096))
    return path


def _empty(path):
    path.write_bytes(b"")
    return path


# kind -> {suffix: (build(tmp_path) -> path, what stderr must name besides the file)}
BAD_RECORDS = {
    "truncated last row": {
        ".csv": (lambda d: _write_csv(d / "r.csv", _columns(), edit=_cut_last_row),
                 ["row 2,001", "5 of 9 fields", "Var_Ch2", "truncated"]),
        ".h5": (lambda d: _truncate(_write_h5(d / "r.h5", _columns())), ["HDF5"]),
        ".npz": (lambda d: _truncate(_write_npz(d / "r.npz", _columns())), [".npz"]),
    },
    "NaN shear stress": {
        ".csv": (lambda d: _write_csv(d / "r.csv", _columns(), edit=_set_cell("ShearStress", "nan")),
                 ["row 1,502", "t = 250 s", "column ShearStress", "'nan' is not a finite number"]),
        ".h5": (lambda d: _write_h5(d / "r.h5", _columns(),
                                    stress=_nan_at(_columns()["ShearStress"])),
                ["/mech/shear_stress[1500]", "t = 250 s", "not a finite number"]),
        ".npz": (lambda d: _write_npz(d / "r.npz", _columns(),
                                      shear_stress=_nan_at(_columns()["ShearStress"])),
                 ["shear_stress[1500]", "t = 250 s", "not a finite number"]),
    },
    "missing columns": {
        ".csv": (lambda d: _write_csv(d / "r.csv", _columns(),
                                      header=[h for h in DDS_HEADER if h != "ShearStress"]),
                 ["row 1 (header)", "missing column(s) ShearStress", "found", "Var_Ch1"]),
        ".h5": (lambda d: _write_h5(d / "r.h5", _columns(), drop=("stress",)),
                ["missing dataset /mech/shear_stress", "found /features/logvar"]),
        ".npz": (lambda d: _write_npz(d / "r.npz", _columns(), shear_stress=None),
                 ["missing array(s) shear_stress", "found time, logvar"]),
    },
    "empty file": {s: (lambda d, s=s: _empty(d / f"r{s}"), ["empty file"])
                   for s in (".csv", ".h5", ".npz")},
    "too short to split": {
        ".csv": (lambda d: _write_csv(d / "r.csv", _columns(450)),
                 ["4 stick-slip event(s)", "needs 6 events", "--split 2,1,1 (evaluate: --ratios 2,1,1)"]),
        ".h5": (lambda d: _write_h5(d / "r.h5", _columns(450)),
                ["4 stick-slip event(s)", "needs 6 events", "--split 2,1,1 (evaluate: --ratios 2,1,1)"]),
        ".npz": (lambda d: _write_npz(d / "r.npz", _columns(450)),
                 ["4 stick-slip event(s)", "needs 6 events", "--split 2,1,1 (evaluate: --ratios 2,1,1)"]),
    },
    "text in a number column": {
        ".csv": (lambda d: _write_csv(d / "r.csv", _columns(), edit=_set_cell("Var_Ch1", "abc")),
                 ["row 1,502", "t = 250 s", "column Var_Ch1", "'abc' is not a number"]),
        ".h5": (lambda d: _write_h5(d / "r.h5", _columns(), stress=_text_at(
            _columns()["ShearStress"]).astype("S")),
                ["/mech/shear_stress[1500]", "'abc' is not a number"]),
        ".npz": (lambda d: _write_npz(d / "r.npz", _columns(),
                                      logvar=_text_at(np.log10(_columns()["Var_Ch1"])[:, None])),
                 ["logvar[1500, 0]", "t = 250 s", "'abc' is not a number"]),
    },
    "garbage": {
        ".csv": (lambda d: _garbage(d / "r.csv"), []),
        ".h5": (lambda d: _garbage(d / "r.h5"), ["not a readable HDF5 file", "signature"]),
        ".npz": (lambda d: _garbage(d / "r.npz"), ["not a readable NumPy .npz archive"]),
    },
    "missing path": {s: (lambda d, s=s: d / f"nope{s}", ["neither a file nor a dataset name", "p4581"])
                     for s in (".csv", ".h5", ".npz")},
}
CASES = [(kind, suffix) for kind, forms in BAD_RECORDS.items() for suffix in forms]


def _run(argv, capsys):
    code = cli.main(argv)
    out, err = capsys.readouterr()
    return code, out, err


def _assert_one_line(err, prog):
    lines = err.splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith(f"labquake {prog}: error: "), lines[0]
    return lines[0]


@pytest.mark.parametrize("kind,suffix", CASES)
def test_prepare_bad_record_is_one_line_and_writes_nothing(kind, suffix, tmp_path, capsys):
    src = tmp_path / "src"
    src.mkdir()
    path = BAD_RECORDS[kind][suffix][0](src)
    out = tmp_path / "out" / "prepared"
    code, stdout, err = _run(["prepare", "--dataset", str(path), "--out", str(out)], capsys)
    line = _assert_one_line(err, "prepare")
    assert code == 1, line
    assert str(path) in line
    for needle in BAD_RECORDS[kind][suffix][1]:
        assert needle in line, (needle, line)
    assert stdout == ""
    assert not out.exists()
    assert not (tmp_path / "out").exists() or os.listdir(tmp_path / "out") == []


@pytest.mark.parametrize("suffix", [".csv", ".h5", ".npz"])
def test_the_good_records_behind_the_table_prepare(suffix, tmp_path, capsys):
    # The bad records above are these with one thing broken: the table tests the breakage.
    path = {".csv": lambda: _write_csv(tmp_path / "r.csv", _columns()),
            ".h5": lambda: _write_h5(tmp_path / "r.h5", _columns()),
            ".npz": lambda: _write_npz(tmp_path / "r.npz", _columns())}[suffix]()
    code, stdout, err = _run(["prepare", "--dataset", str(path), "--out", str(tmp_path / "p")],
                             capsys)
    assert (code, err) == (0, "")
    assert json.loads(stdout)["n_events"] == 19  # a drop every 10 s of 200; the last is cut off
    assert (tmp_path / "p" / "manifest.json").exists()


def test_csv_counts_the_other_bad_values(tmp_path, capsys):
    def edit(rows):
        for i in (BAD_ROW, BAD_ROW + 3, BAD_ROW + 7):
            rows[i][DDS_HEADER.index("Var_Ch1")] = "n/a"
    path = _write_csv(tmp_path / "r.csv", _columns(), edit=edit)
    code, _, err = _run(["prepare", "--dataset", str(path), "--out", str(tmp_path / "p")], capsys)
    line = _assert_one_line(err, "prepare")
    assert code == 1
    assert line.endswith(f"{path} row 1,502 (t = 250 s), column Var_Ch1: 'n/a' is not a number "
                         "(and 2 more bad values)")


def test_text_in_a_column_the_reader_does_not_use_is_no_error(tmp_path, capsys):
    path = _write_csv(tmp_path / "r.csv", _columns(), edit=_set_cell("LPDisp", "n/a"))
    code, _, err = _run(["prepare", "--dataset", str(path), "--out", str(tmp_path / "p")], capsys)
    assert (code, err) == (0, "")


def test_missing_dds_file_names_the_data_dir(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("LABQUAKE_DATA_DIR", str(tmp_path))
    code, _, err = _run(["prepare", "--dataset", "p5198", "--out", str(tmp_path / "p")], capsys)
    line = _assert_one_line(err, "prepare")
    assert code == 1
    assert f"LABQUAKE_DATA_DIR={tmp_path}" in line and "p5198.csv" in line


@pytest.mark.parametrize("argv,needle", [
    (["--split", "0.7,abc"], "split ratios must be three non-negative numbers train,val,test "
                             "such as 0.7,0.1,0.2; got '0.7,abc'"),
    (["--split", "0.7,0.3"], "got '0.7,0.3'"),
    (["--channels", "one"], "--channels"),
    (["--seq-len", "ten"], "argument --seq-len: invalid int value: 'ten'"),
    (["--seq-len", "-5"], "--seq-len must be at least 1"),
    (["--targets", "stress"], "argument --targets: invalid choice: 'stress'"),
    (["--no-such-option"], "unrecognized arguments: --no-such-option"),
])
def test_prepare_bad_options_exit_2(argv, needle, tmp_path, capsys):
    path = _write_csv(tmp_path / "r.csv", _columns())
    code, _, err = _run(["prepare", "--dataset", str(path), "--out", str(tmp_path / "p")] + argv,
                        capsys)
    line = _assert_one_line(err, "prepare")
    assert code == 2
    assert needle in line
    assert not (tmp_path / "p").exists()


def test_verbose_adds_the_traceback(tmp_path, capsys, monkeypatch):
    path = tmp_path / "nope.csv"
    code, _, err = _run(["prepare", "--dataset", str(path), "--out", str(tmp_path / "p"),
                         "--verbose"], capsys)
    assert code == 1
    assert err.startswith("Traceback (most recent call last):")
    assert err.splitlines()[-1].startswith("labquake prepare: error: ")
    monkeypatch.setenv("LABQUAKE_VERBOSE", "1")
    code, _, err = _run(["prepare", "--dataset", str(path), "--out", str(tmp_path / "p")], capsys)
    assert code == 1 and err.startswith("Traceback")


def test_a_bug_keeps_its_traceback_and_says_so(monkeypatch, tmp_path, capsys):
    from labquake_tf.data import prepare

    def broken(args):
        return np.zeros(3).reshape(2)  # a ValueError from inside numpy: ours to fix

    monkeypatch.setattr(prepare, "run", broken)
    code, _, err = _run(["prepare", "--dataset", "x", "--out", str(tmp_path / "p")], capsys)
    assert code == 70
    assert err.startswith("Traceback (most recent call last):")
    assert "cannot reshape array" in err
    assert err.splitlines()[-1].startswith("labquake prepare: internal error, a bug in labquake_tf")


def test_unknown_command_is_one_line(capsys):
    code, _, err = _run(["no-such-command"], capsys)
    assert code == 2
    assert err.splitlines() == [
        f"labquake: error: unknown command 'no-such-command'; commands: {', '.join(cli.COMMANDS)} "
        "(see 'labquake --help')"]


if __name__ == "__main__":  # print every table row's message: python tests/test_cli_errors.py DIR
    import pathlib

    root = pathlib.Path(sys.argv[1])
    for kind, suffix in CASES:
        d = root / f"{kind.replace(' ', '_')}{suffix}"
        d.mkdir(parents=True, exist_ok=True)
        p = BAD_RECORDS[kind][suffix][0](d)
        print(f"--- {kind} {suffix}", flush=True)
        cli.main(["prepare", "--dataset", str(p), "--out", str(d / "out")])


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    """A tiny run dir, a run dir whose model.keras is garbage, a good and a bad record."""
    from tests.test_serving_export import tiny_manifest, tiny_model, tiny_task

    root = tmp_path_factory.mktemp("inputs")
    run = root / "run"
    run.mkdir()
    tiny_task().save(run / "model.keras")
    (run / "manifest.json").write_text(json.dumps(tiny_manifest()))
    broken = root / "broken"
    broken.mkdir()
    _garbage(broken / "model.keras")
    (broken / "manifest.json").write_text(json.dumps(tiny_manifest()))
    badjson = root / "badjson"  # a plain ValueError our code raises: a user error too
    badjson.mkdir()
    tiny_model().save(badjson / "model.keras")  # a bare network: its manifest.json is read
    (badjson / "manifest.json").write_text('{"dataset": "p4581",')
    return {"RUN": str(run), "BROKEN": str(broken), "BADJSON": str(badjson),
            "MISSING": str(root / "nope"),
            "REC": str(_write_csv(root / "r.csv", _columns())),
            "NAN": str(_write_csv(root / "nan.csv", _columns(),
                                  edit=_set_cell("ShearStress", "nan")))}


# (argv with placeholders, exit status, what the line must say); OUT must not exist after.
COMMAND_ROWS = [
    (["finetune", "--from", "MISSING", "--dataset", "REC", "--out", "OUT"], 1,
     "MISSING: no such file or folder"),
    (["finetune", "--from", "BROKEN", "--dataset", "REC", "--out", "OUT"], 1, "not a Keras model"),
    (["finetune", "--from", "RUN", "--dataset", "MISSING.csv", "--out", "OUT"], 1,
     "MISSING.csv: neither a file nor a dataset name"),
    (["finetune", "--from", "RUN", "--dataset", "REC", "--split", "0.5,x", "--out", "OUT"], 2,
     "split ratios"),
    (["finetune", "--from", "RUN", "--dataset", "REC", "--blocks", "9", "--out", "OUT"], 2,
     "blocks must be between 1 and 3"),
    (["finetune", "--from", "RUN", "--dataset", "REC", "--epochs", "two"], 2,
     "argument --epochs: invalid int value: 'two'"),
    (["evaluate", "MISSING", "--out", "OUT"], 1, "MISSING: no such file or folder"),
    (["evaluate", "RUN", "--dataset", "NAN", "--out", "OUT"], 1,
     "nan.csv row 1,502 (t = 250 s), column ShearStress"),
    (["evaluate", "RUN", "--dataset", "REC", "--ratios", "1,2", "--out", "OUT"], 2, "split ratios"),
    (["evaluate", "RUN", "--split", "holdout", "--out", "OUT"], 2, "argument --split: invalid choice"),
    (["export", "MISSING", "--name", "m", "--base-dir", "OUT"], 1,
     "MISSING: no such file or folder"),
    (["export", "BADJSON", "--name", "m", "--base-dir", "OUT"], 1,
     "BADJSON/manifest.json: not valid JSON"),
    (["export", "RUN", "--name", "m", "--version", "0", "--base-dir", "OUT"], 2,
     "version (--version) must be a positive integer, got 0"),
    (["export", "RUN", "--name", "m", "--version", "one", "--base-dir", "OUT"], 2,
     "argument --version: invalid int value: 'one'"),
    (["serve", "--model-base-path", "MISSING"], 1, "MISSING is not a directory"),
    (["serve", "--model-base-path", "MISSING", "--label", "stable"], 1,
     "--label 'stable': expected LABEL=VERSION"),
    (["serve", "--model-base-path", "MISSING", "--port", "http"], 2,
     "argument --port: invalid int value: 'http'"),
    (["predict", "--server", "http://127.0.0.1:9", "--model", "m", "--input", "MISSING.h5",
      "--out", "OUT"], 1, "MISSING.h5: neither a file nor a dataset name"),
    (["predict", "--server", "http://127.0.0.1:9", "--model", "m", "--input", "REC", "--out", "OUT",
      "--timeout", "1"], 1, "Connection refused"),
    (["predict", "--server", "http://127.0.0.1:9", "--model", "m", "--input", "REC",
      "--batch-size", "many"], 2, "argument --batch-size: invalid int value: 'many'"),
    (["tune", "--dataset", "MISSING.npz", "--project-dir", "OUT"], 1,
     "MISSING.npz: neither a file nor a dataset name"),
    (["tune", "--data", "MISSING", "--project-dir", "OUT"], 1, "no manifest"),
    (["tune", "--dataset", "REC", "--targets", "stress", "--project-dir", "OUT"], 2,
     "unknown target(s) ['stress']"),
    (["tune", "--max-trials", "few", "--project-dir", "OUT"], 2,
     "argument --max-trials: invalid int value: 'few'"),
    (["import-torch", "MISSING.pth", "--out", "OUT"], 1, "MISSING.pth: no such file"),
    (["import-torch", "BROKEN/model.keras", "--out", "OUT"], 1,
     "not a readable torch.save zip archive"),
    (["import-torch", "MISSING.pth", "--out", "OUT", "--targets", "stress"], 2,
     "argument --targets: invalid choice: 'stress'"),
    (["stream", "--model", "MISSING", "--input", "REC", "--out", "OUT"], 1, "MISSING"),
    (["stream", "--model", "RUN", "--input", "NAN", "--out", "OUT"], 1,
     "nan.csv row 1,502 (t = 250 s), column ShearStress"),
    (["stream", "--model", "RUN", "--input", "REC", "--split", "holdout", "--out", "OUT"], 2,
     "--split holdout: the model records no such split of its data"),
    (["stream", "--model", "RUN", "--input", "-", "--out", "OUT"], 2,
     "--input - (raw frames on stdin) needs --sample-rate"),
    (["finetune", "--from", "RUN", "--dataset", "REC", "--decoder", "trainable", "--ensemble", "3",
      "--out", "OUT"], 2, "--ensemble 3 needs a frozen decoder"),
    (["finetune", "--from", "RUN", "--dataset", "REC", "--ensemble", "0", "--out", "OUT"], 2,
     "argument --ensemble: must be a positive number of heads"),
    (["stream", "--model", "RUN", "--input", "REC", "--engine", "fast"], 2,
     "argument --engine: invalid choice: 'fast'"),
    (["simulate", "--out", "OUT", "--set", "stiffness"], 2, "--set expects KEY=VALUE"),
    (["simulate", "--out", "OUT", "--set", "stifness=1"], 2,
     "unknown simulation parameter(s) ['stifness']"),
]


@pytest.mark.parametrize("argv,code,needle", COMMAND_ROWS,
                         ids=[f"{r[0][0]}-{i}" for i, r in enumerate(COMMAND_ROWS)])
def test_every_command_ends_bad_input_in_one_line(argv, code, needle, inputs, tmp_path, capsys):
    names = dict(inputs, OUT=str(tmp_path / "out"))

    def fill(text):
        return re.sub(r"\b(RUN|BROKEN|BADJSON|MISSING|REC|NAN|OUT)\b", lambda m: names[m.group()], text)

    got, stdout, err = _run([fill(a) for a in argv], capsys)
    line = _assert_one_line(err, argv[0])
    assert got == code, line
    assert fill(needle) in line, line
    assert not (tmp_path / "out").exists()


def test_a_split_shorter_than_one_window_says_which_seq_len_fits(tmp_path, capsys):
    path = _write_csv(tmp_path / "r.csv", _columns())
    out = tmp_path / "p"
    code, _, err = _run(["prepare", "--dataset", str(path), "--out", str(out), "--seq-len", "300"],
                        capsys)
    line = _assert_one_line(err, "prepare")
    assert code == 1
    assert line.endswith(f"{path}: split 'val' has 200 steps, shorter than one window of "
                         "seq_len=300; pass --seq-len 200 or less, or give val a larger share "
                         "with --split")
    assert not out.exists() and os.listdir(tmp_path) == ["r.csv"]
