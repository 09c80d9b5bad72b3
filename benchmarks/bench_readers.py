"""DDS CSV reading: what the checks that name row and column cost, and what a bad cell costs.

Prints one JSON line. A synthetic DDS CSV of ``--rows`` rows is written to a temp
dir; timed, best of ``--repeat``, all in the same run so the ratios hold under load:

- ``parse_s``: the bare vectorised parse (``csv.reader`` + ``np.array(rows, float64)``),
  the reader's fast path before any check;
- ``read_s``: ``readers.read_dds_csv`` on the good file (parse, finiteness and
  monotonic-time checks, log10, targets and events);
- ``bad_cell_s``: the same file with ``'abc'`` in its last row, from open to the
  one-line error (the slow path that locates the cell runs only then).

    python benchmarks/bench_readers.py [--rows 300000] [--repeat 3]
"""

import argparse
import csv
import io
import json
import pathlib
import tempfile
import time

import numpy as np

from labquake_tf.data import readers
from labquake_tf.errors import DataError

HEADER = ["", "LPDisp", "NormStress", "ShearStress", "Time", "Var_Ch1", "Var_Ch2",
          "TimeToStartFailure", "TimeToEndFailure"]


def _write(path, n, bad=False):
    t = np.arange(n) / 10.0
    phase = (t % 10.0) / 10.0
    cols = [np.arange(n), t, 2 + 0 * t, 5 + 0.5 * phase, t, 10 ** (3 + phase), 10 ** (3 + phase),
            10 * (1 - phase), 10 * (1 - phase) + 0.1]
    rows = np.column_stack(cols)
    with open(path, "w") as f:
        f.write(",".join(HEADER) + "\n")
        np.savetxt(f, rows[:-1], delimiter=",", fmt="%.10g")
        last = [f"{v:.10g}" for v in rows[-1]]
        if bad:
            last[HEADER.index("Var_Ch1")] = "abc"
        f.write(",".join(last) + "\n")


def _best(fn, repeat):
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rows", type=int, default=300_000)
    p.add_argument("--repeat", type=int, default=3)
    args = p.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        good, bad = pathlib.Path(tmp, "good.csv"), pathlib.Path(tmp, "bad.csv")
        _write(good, args.rows)
        _write(bad, args.rows, bad=True)

        def parse():
            reader = csv.reader(io.StringIO(good.read_text(), newline=""))
            next(reader)
            return np.array(list(reader), dtype=np.float64)

        def read_bad():
            try:
                readers.read_dds_csv(bad)
            except DataError as e:
                return str(e)
            raise AssertionError("the bad cell was not found")

        parse_s = _best(parse, args.repeat)
        read_s = _best(lambda: readers.read_dds_csv(good), args.repeat)
        bad_s = _best(read_bad, args.repeat)
        message = read_bad()
    print(json.dumps({"rows": args.rows, "parse_s": round(parse_s, 3), "read_s": round(read_s, 3),
                      "bad_cell_s": round(bad_s, 3), "read_over_parse": round(read_s / parse_s, 2),
                      "bad_over_parse": round(bad_s / parse_s, 2),
                      "message": message.rsplit("/", 1)[-1]}))


if __name__ == "__main__":
    main()
