"""``labquake stream``: predictions on a live (or replayed) AE stream.

    labquake stream --model p5198-ttsf --input p5198 --split test --alarm "ttsf<1.0"
    labquake stream --model saved_models/p4581/1 --input sim_waveform.h5 --realtime
    labquake stream --model runs/ft --input p5198 --split test --alarm "ttsf<1.0"
    acquisition | labquake stream --model runs/ft --input - --dtype int16 --channels 2 \\
        --sample-rate 2e6 --format csv > predictions.csv

Output (stdout or ``--out``): one JSON object per prediction (``time`` and each
target in physical units), or CSV; alarm crossings as ``{"alarm": ...}`` lines
(JSON) and on stderr. Stream resets (NaN/Inf samples, time gaps) are reported on
stderr and as ``{"reset": ...}`` lines. A progress line on stderr shows the stream
time, the real-time factor (compute time / stream time; < 1 keeps up) and the
per-hop compute latency.
"""

import json
import sys
import time as time_lib

import numpy as np

from labquake_tf.errors import UsageError


def add_arguments(parser):
    parser.add_argument("--model", required=True,
                        help="a preset name (labquake presets), preset folder, run dir, "
                             "exported version dir or .keras file")
    parser.add_argument("--input", required=True,
                        help="a record (.h5 with /ae or /features/logvar, DDS .csv, .npz), a "
                             "dataset name (p4581, ...), or - for raw frames on stdin")
    parser.add_argument("--level", choices=("auto", "raw", "features"), default="auto",
                        help="replay raw AE (HDF5 /ae) or log-variance steps (default: raw "
                             "where the record has it)")
    parser.add_argument("--dtype", default="int16", help="stdin sample type (int16, float32, ...)")
    parser.add_argument("--channels", type=int, default=1, help="stdin channels per frame")
    parser.add_argument("--sample-rate", type=float, default=None, help="stdin AE rate in Hz")
    parser.add_argument("--window", type=float, default=0.1, help="log-variance window, s")
    parser.add_argument("--chunk", type=float, default=None,
                        help="replay chunk length in s (default: one hop)")
    parser.add_argument("--start", type=float, default=None, help="replay from this time (s)")
    parser.add_argument("--end", type=float, default=None, help="replay up to this time (s)")
    parser.add_argument("--split", default=None,
                        help="replay one split of the model's data (e.g. test) with its "
                             "warm-up before it; predictions are written from its start")
    parser.add_argument("--realtime", action="store_true", help="pace the replay at stream time")
    parser.add_argument("--speed", type=float, default=1.0, help="with --realtime: x real time")
    parser.add_argument("--engine", choices=("auto", "incremental", "windowed"), default="auto")
    parser.add_argument("--format", choices=("jsonl", "csv"), default="jsonl")
    parser.add_argument("--out", default=None, help="output file (default stdout)")
    parser.add_argument("--alarm", action="append", default=[],
                        help='e.g. "ttsf<1.0": an alarm line when a prediction crosses it')
    parser.add_argument("--quiet", action="store_true", help="no progress line")


def run(args):
    from labquake_tf.streaming import sources
    from labquake_tf.streaming.alarms import Alarm
    from labquake_tf.task import LabquakeRegressor

    task = LabquakeRegressor.from_preset(args.model)
    # provenance only: which part of the record was held out, to replay it
    splits = (task.metadata.get("data") or {}).get("splits") or {}
    hop = float(task.preprocessor.dt or 0.01)
    chunk = args.chunk or hop
    start, end, emit_from = args.start, args.end, None
    if args.split:
        split = splits.get(args.split)
        if not split or "t_start" not in split:
            raise UsageError(f"--split {args.split}: the model records no such split of its "
                             f"data with times (splits: {sorted(splits)})")
        emit_from = float(split["t_start"])
        # Warm up on the steps before the split, as the offline windows do.
        start = emit_from - (task.preprocessor.input_len + 1) * hop - args.window
        end = float(split["t_end"]) if end is None else end
    if args.input == "-":
        if args.sample_rate is None:
            raise UsageError("--input - (raw frames on stdin) needs --sample-rate")
        source = sources.stdin_source(sys.stdin.buffer, args.dtype, args.channels,
                                      args.sample_rate, chunk)
    else:
        source = sources.open_record(args.input, args.level, chunk, start, end)
        if source.record is not None and abs(source.record.dt - hop) > 0.01 * hop:
            raise ValueError(f"{args.input}: feature steps every {source.record.dt:g} s, but "
                             f"the model was trained on {hop:g} s steps")

    out = open(args.out, "w") if args.out else sys.stdout
    writer = _Writer(out, args.format)
    resets = []

    def on_reset(t, reason):
        resets.append((t, reason))
        print(f"\nRESET t={t:.6g} s: {reason}; state cleared, predictions resume after a "
              "full window", file=sys.stderr)
        writer.event({"reset": reason, "time": t})
        for a in alarms:
            a.reset()

    streamer = task.streamer(engine=args.engine, sample_rate=source.sample_rate,
                             window=args.window, hop=hop, t0=source.t0, on_reset=on_reset)
    alarms = [Alarm.parse(a, streamer.output_names) for a in args.alarm]
    writer.header(streamer.output_names)
    progress = _Progress(streamer, quiet=args.quiet)
    wall0 = time_lib.perf_counter()
    stream_time = 0.0
    n_pred = 0
    for piece in source.chunks:
        if args.realtime:
            ahead = stream_time / args.speed - (time_lib.perf_counter() - wall0)
            if ahead > 0:
                time_lib.sleep(ahead)
        tic = time_lib.perf_counter()
        if piece.kind == "raw":
            preds = streamer.update(piece.data)
        else:
            preds = streamer.update_features(piece.data, piece.time)
        progress.add(time_lib.perf_counter() - tic, piece.span, len(preds), preds)
        stream_time += piece.span
        if emit_from is not None and len(preds):
            keep = preds.time >= emit_from - 1e-9
            preds = type(preds)(preds.time[keep], {k: v[keep] for k, v in preds.values.items()},
                                preds.scaled[keep])
        n_pred += len(preds)
        writer.rows(preds)
        for alarm in alarms:
            for t, v in alarm.update(preds):
                line = {"alarm": str(alarm), "time": t, alarm.name: v}
                writer.event(line)
                print(f"\nALARM t={t:.6g} s: {alarm.name}={v:.4g} {alarm.op} {alarm.threshold:g}",
                      file=sys.stderr)
    progress.done()
    if out is not sys.stdout:
        out.close()
    print(f"{n_pred} predictions from {source.name} ({streamer.engine_name}); "
          f"{len(resets)} reset(s); {progress.summary()}", file=sys.stderr)
    return 0


class _Writer:
    def __init__(self, out, fmt):
        self.out, self.fmt, self.names = out, fmt, []

    def header(self, names):
        self.names = list(names)
        if self.fmt == "csv":
            self.out.write(",".join(["time", *self.names]) + "\n")

    def rows(self, preds):
        if not len(preds):
            return
        if self.fmt == "csv":
            cols = np.column_stack([preds.time, *(preds.values[n] for n in self.names)])
            np.savetxt(self.out, cols, fmt="%.9g", delimiter=",")
        else:
            self.out.write("".join(json.dumps(r) + "\n" for r in preds.rows()))
        self.out.flush()

    def event(self, obj):
        if self.fmt == "jsonl":  # CSV stays a plain table; events go to stderr only
            self.out.write(json.dumps(obj) + "\n")
            self.out.flush()


class _Progress:
    """The live stderr line: stream time, real-time factor, per-hop latency."""

    def __init__(self, streamer, quiet=False, every=0.5):
        self.streamer, self.quiet, self.every = streamer, quiet, every
        self.compute = 0.0
        self.span = 0.0
        self.per_hop = []  # compute seconds per produced feature step, per update
        self.n_pred = 0
        self._last = 0.0
        self._steps_before = 0

    def add(self, seconds, span, n_pred, preds):
        self.compute += seconds
        self.span += span
        self.n_pred += n_pred
        steps = self.streamer.engine.n_steps
        new = steps - self._steps_before if steps >= self._steps_before else steps
        self._steps_before = steps
        if new > 0:
            self.per_hop.append(seconds / new)
        now = time_lib.perf_counter()
        if not self.quiet and now - self._last > self.every:
            self._last = now
            sys.stderr.write("\r" + self.summary() + " " * 4)
            sys.stderr.flush()

    def summary(self):
        rtf = self.compute / self.span if self.span else float("nan")
        p50, p99 = (np.percentile(self.per_hop, [50, 99]) * 1e3 if self.per_hop
                    else (float("nan"),) * 2)
        return (f"stream {self.span:.1f} s, {self.n_pred} predictions, real-time factor "
                f"{rtf:.3g}, per-hop {p50:.3g} ms p50 / {p99:.3g} ms p99")

    def done(self):
        if not self.quiet:
            sys.stderr.write("\r" + self.summary() + "\n")
