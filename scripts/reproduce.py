"""Reproduce the paper's claims on the public records, with the spread over seeds.

    LABQUAKE_DATA_DIR=/work/shared/data/dds python scripts/reproduce.py --seeds 3
    python scripts/reproduce.py --quick                       # smoke run, minutes
    python scripts/reproduce.py --size paper --jobs 1         # the paper's sizes, a GPU

Each claim (Fig. 4, Fig. 5, the decoder ablation, a data-limited sweep, Wang 2021,
the transfer matrix, the accuracy targets) is printed HOLDS / DOES NOT HOLD with its
numbers; writes docs/reproduce.md, docs/reproduce/*.png, OUT/results.csv and the
README's claims table (``labquake_tf.jobs.reproduce``). The last line is JSON.
"""

import argparse
import json
import pathlib
import shlex
import sys

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import labquake_tf  # noqa: E402  (the package root: no TensorFlow yet)

labquake_tf.quiet_tensorflow_logs()  # before anything imports TensorFlow

from labquake_tf.jobs.reproduce import SIZES, reproduce  # noqa: E402


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=3, help="seeds 0..N-1 per fine-tune")
    parser.add_argument("--size", choices=sorted(SIZES), default="small")
    parser.add_argument("--out", default="runs/reproduce", help="run dirs and results.csv")
    parser.add_argument("--jobs", type=int, default=2, help="pieces run at once (processes)")
    parser.add_argument("--quick", action="store_true",
                        help="smoke run: 1 seed, a few epochs each (not the method's accuracy)")
    parser.add_argument("--doc", default=str(ROOT / "docs" / "reproduce.md"))
    parser.add_argument("--readme", default=str(ROOT / "README.md"),
                        help="README whose claims table is rewritten ('' to leave it)")
    args = parser.parse_args(argv)
    if args.seeds < 1 or args.jobs < 1:
        parser.error("--seeds and --jobs must be at least 1")
    seeds = (0,) if args.quick else tuple(range(args.seeds))
    command = "python scripts/reproduce.py " + shlex.join(sys.argv[1:] if argv is None else argv)
    line = reproduce(args.out, seeds, args.size, args.jobs, args.quick, args.doc, args.readme,
                     command.strip())
    print(json.dumps(line))
    return 0


if __name__ == "__main__":
    sys.exit(main())
