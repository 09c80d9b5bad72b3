"""``labquake predict``: every window of a record through a model, written as CSV
(or Parquet) with the interval, and a plot.

    labquake predict --model p4581-shear-stress --input p4581          # local, no server
    labquake predict --model runs/ft --input my_run.h5 --format parquet
    labquake predict --server http://localhost:8501 --model p4581 --input p5198
    labquake predict --server grpc://localhost:8500 --model p4581 --input p5198

Locally ``--model`` is anything ``LabquakeRegressor.from_preset`` takes. With
``--server`` (TF Serving or ``labquake serve``) it is the served model's name: the
window length comes from its ``serving_default`` signature and its feature NAMES
from its ``metadata`` signature, so the client needs no copy of the model. The
record is read with the channels those names say (a model trained on
``logvar_ch2`` gets channel 2), and names that still differ are an error naming
both lists.
"""

import csv
import os
import pathlib

import numpy as np

from labquake_tf import TARGET_UNITS
from labquake_tf.errors import UsageError
from labquake_tf.serving.client import Client


def model_feature_names(client):
    """The served model's feature names, or None when its metadata cannot be read
    (not a labquake export)."""
    from labquake_tf.serving.client import ServingError

    try:
        return client.model_metadata().get("feature_names")
    except (ServingError, ConnectionError, ValueError, TypeError, AttributeError):
        return None  # an unreachable server is reported by the predict call itself


def predict_record(client, record, batch_size=256, signature_name="serving_default",
                   feature_names=None):
    """``(time, {output: values})`` for every full window of ``record``.

    ``feature_names`` (default: asked from the model's metadata) must equal the
    record's: features are matched by name, not by count.
    """
    from labquake_tf.data.record import check_feature_names

    names = feature_names if feature_names is not None else model_feature_names(client)
    if names:  # empty or None: an export without names, matched by count below
        check_feature_names(names, record.feature_names, f"model {client.model!r}",
                            f"record {record.name!r}")
    inputs, _ = client.signature(signature_name)
    if len(inputs) != 1:
        raise ValueError(f"{client.model}: expected one input, the signature has {sorted(inputs)}")
    (shape,) = inputs.values()
    seq_len, n_features = shape[1], shape[2]
    if record.features.shape[1] != n_features:
        raise ValueError(f"{record.name}: {record.features.shape[1]} feature column(s) "
                         f"{record.feature_names}, the model takes {n_features}")
    if len(record) < seq_len:
        raise ValueError(f"{record.name}: {len(record)} steps, shorter than one "
                         f"{seq_len}-step window")
    outputs = client.predict_series(record.features, seq_len, batch_size, signature_name)
    return record.time[seq_len - 1:], outputs


def write_table(path, time, outputs, record, offset):
    """time, then per output its prediction and, when the record has it, the truth and
    whether that truth is a label (``NAME_labelled``, 0/1: each target has its own mask).
    ``.csv``, or ``.parquet`` (needs pyarrow)."""
    names = sorted(outputs)
    truth = [n for n in names if n in record.targets]
    header = ["time"] + names + [f"{n}_true" for n in truth] + [f"{n}_labelled" for n in truth]
    columns = [time] + [outputs[n] for n in names] + \
        [record.targets[n][offset:] for n in truth] + \
        [record.label_mask[n][offset:].astype(int) for n in truth]
    tmp = path.with_name(f".{path.name}.tmp")
    if path.suffix == ".parquet":
        try:
            import pyarrow as pa
            import pyarrow.parquet as pq
        except ImportError:
            raise UsageError("--format parquet needs pyarrow (pip install pyarrow)") from None
        pq.write_table(pa.table({h: np.asarray(c) for h, c in zip(header, columns)}), tmp)
    else:
        with open(tmp, "w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(header)
            writer.writerows(zip(*(np.asarray(c).tolist() for c in columns)))
    os.replace(tmp, path)


def plot(path, time, outputs, record, offset, title):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    # NAME_lower / NAME_upper (a calibrated interval) shade NAME's panel
    names = sorted(n for n in outputs if _bound_of(n, outputs) is None)
    fig, axes = plt.subplots(len(names), 1, figsize=(10, 2.5 * len(names)), sharex=True,
                             squeeze=False)
    for ax, name in zip(axes[:, 0], names):
        if f"{name}_lower" in outputs and f"{name}_upper" in outputs:
            ax.fill_between(time, outputs[f"{name}_lower"], outputs[f"{name}_upper"],
                            color="C3", alpha=0.2, lw=0, label="interval")
        if name in record.targets:
            ax.plot(time, record.targets[name][offset:], color="0.6", lw=1, label="measured")
        ax.plot(time, outputs[name], color="C3", lw=1, label="predicted")
        ax.set_ylabel(f"{name} ({TARGET_UNITS[name]})" if name in TARGET_UNITS else name)
        ax.legend(loc="upper right", fontsize=8)
    axes[-1, 0].set_xlabel("time (s)")
    axes[0, 0].set_title(title)
    fig.tight_layout()
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    os.replace(tmp, path)


def _bound_of(name, outputs):
    """The output ``name`` bounds (``x`` for ``x_lower``/``x_upper``), else None."""
    for suffix in ("_lower", "_upper"):
        if name.endswith(suffix) and name[:-len(suffix)] in outputs:
            return name[:-len(suffix)]
    return None


def add_arguments(parser):
    parser.add_argument("--model", required=True,
                        help="a preset name (labquake presets), preset folder, run dir, export "
                             "or .keras file; with --server, the model's name on the server")
    parser.add_argument("--input", required=True,
                        help="a dataset name (p4581, synthetic-dds, ...) or a record file")
    parser.add_argument("--server", default=None,
                        help="predict through a REST or gRPC server instead of locally, e.g. "
                             "http://localhost:8501 or grpc://localhost:8500")
    parser.add_argument("--version", type=int, default=None,
                        help="with --server: the model version (default: the newest)")
    parser.add_argument("--out", default=None,
                        help="output folder (default: predictions/MODEL-RECORD)")
    parser.add_argument("--format", choices=("csv", "parquet"), default="csv")
    parser.add_argument("--features", choices=("logvar", "std"), default="logvar",
                        help="with --server: the AE feature the model takes when its export "
                             "does not say (std for models imported from PyTorch)")
    parser.add_argument("--batch-size", type=int, default=256, help="windows per call")
    parser.add_argument("--timeout", type=float, default=30.0,
                        help="with --server: seconds per request")


def run(args):
    if args.server:
        time, outputs, record, name = _remote(args)
    else:
        from labquake_tf.task import LabquakeRegressor

        task = LabquakeRegressor.from_preset(args.model)
        record = task.read_record(args.input)
        outputs = task.predict(record, batch_size=args.batch_size)
        time, name = outputs.pop("time"), pathlib.Path(args.model).name
    offset = len(record) - len(time)
    out = pathlib.Path(args.out or f"predictions/{name}-{record.name}")
    out.mkdir(parents=True, exist_ok=True)
    table = out / f"predictions.{args.format}"
    write_table(table, time, outputs, record, offset)
    plot(out / "predictions.png", time, outputs, record, offset,
         f"{name} on {record.name} ({len(time)} windows)")
    print(f"{len(time)} windows of {record.name} -> {table}, {out}/predictions.png")
    return 0


def _remote(args):
    from labquake_tf.data.features import feature_kind
    from labquake_tf.data.record import channels_of
    from labquake_tf.data.registry import load_record

    client = Client(args.server, args.model, args.version, timeout=args.timeout)
    names = model_feature_names(client)
    # The export's feature names say which channels and which feature (logvar, std).
    kind = feature_kind(names) if names else None
    record = load_record(args.input, channels=channels_of(names) if names else None,
                         features=kind or args.features)
    time, outputs = predict_record(client, record, args.batch_size, feature_names=names)
    return time, outputs, record, args.model
