"""Export a trained model as a SavedModel in TF Serving's layout.

``saved_models/NAME/VERSION/`` holds three signatures:

* ``serving_default``: raw log10-variance ``ae_features`` ``[batch, seq_len, n_features]``
  -> one float32 output per target in physical units (MPa, s). The task's
  preprocessor scales in the graph, so clients never see scaled numbers.
  When the task holds a calibrated interval (``intervals``, written by
  ``finetune``), each target ``NAME`` also gets ``NAME_lower`` and ``NAME_upper``:
  the ensemble's mean ± the conformal half-width, computed in the graph from the
  members' spread.
* ``serving_scaled``: the model as trained, scaled inputs -> scaled outputs.
* ``metadata``: no inputs -> ``metadata_json``, the same JSON as ``assets/metadata.json``.
* ``serving_step`` (streamable models only): one new raw feature step and the layer
  states in, the prediction and the new states out (``serving.step``).

``assets/model.keras`` (the whole task: network, preprocessor, interval, metadata)
rides along, so ``LabquakeRegressor.from_preset`` and fine-tuning can start from an
export. ``assets.extra/tf_serving_warmup_requests`` holds a few
``PredictRequest``s (TFRecord of ``PredictionLog``) that TF Serving and ``labquake serve``
replay before the version takes traffic, so the first client does not pay for the
graph's first run. The SavedModel loads with ``tf.saved_model.load`` alone:
no labquake_tf import is needed to serve it.
"""

import datetime
import json
import pathlib

import numpy as np

import labquake_tf
from labquake_tf.errors import UsageError
from labquake_tf.files import EXPORT_METADATA, EXPORT_MODEL, atomic_dir, write_json
from labquake_tf.models import is_streamable
from labquake_tf.models.heads import members_model
from labquake_tf.models.saving import versions
from labquake_tf.serving.tensors import to_ndarray, to_tensor_proto

DEFAULT_SIGNATURE = "serving_default"
SCALED_SIGNATURE = "serving_scaled"
METADATA_SIGNATURE = "metadata"
INPUT_NAME = "ae_features"
WARMUP_FILE = "assets.extra/tf_serving_warmup_requests"
WARMUP_BATCHES = (1, 8)  # one window, and a batch as the batching server forms them
# TF's runtime is not warm after one call: measured on the small preset, the first
# client request took ~15 ms after one replay of each batch and ~2 ms after five.
WARMUP_REPEATS = 5


def export_model(task, name, base_dir="saved_models", version=None, force=False):
    """Write ``base_dir/name/version/`` atomically and return that path.

    ``version`` defaults to one more than the largest existing version. An existing
    version is replaced only with ``force=True``, and then only once the new one is
    complete.
    """
    model_dir = pathlib.Path(base_dir) / name
    if version is not None and int(version) < 1:  # before mkdir: a refusal writes nothing
        raise UsageError(f"version (--version) must be a positive integer, got {version}")
    version = next_version(model_dir) if version is None else int(version)
    return export_task(task, model_dir / str(version), force=force)


def export_task(task, version_dir, force=False):
    """Write the task's SavedModel into ``version_dir`` (``NAME/VERSION``) atomically."""
    final = pathlib.Path(version_dir)
    if not final.name.isdigit() or int(final.name) < 1:
        raise UsageError(f"{final}: a TF Serving version folder is named by a positive "
                         "integer (NAME/1)")
    if final.exists() and not force:
        raise FileExistsError(f"{final} already exists; pass force=True (--force) to replace it")
    model, pre = task.network, task.preprocessor
    _check(model, pre)
    metadata = _metadata(task)
    if is_streamable(model):
        from labquake_tf.serving.step import STEP_SIGNATURE, state_specs

        metadata["signatures"][STEP_SIGNATURE] = ("one raw step + layer states in, "
                                                  "prediction + new states out")
        metadata["stream"] = {"warmup_steps": pre.input_len,
                              "states": {n: list(s) for n, s in state_specs(model).items()}}
    final.parent.mkdir(parents=True, exist_ok=True)
    # force: the old version is swapped out only once the new one is complete
    with atomic_dir(final, prefix=f".export-{final.name}-") as tmp:
        _archive(task, metadata).write_out(str(tmp), verbose=False)
        (tmp / EXPORT_MODEL).parent.mkdir(exist_ok=True)
        task.save(tmp / EXPORT_MODEL)
        write_json(tmp / EXPORT_METADATA, metadata)
        write_warmup(tmp / WARMUP_FILE, final.parent.name, pre)
    return final


def next_version(model_dir):
    """One more than the largest integer-named subdirectory (1 when there is none)."""
    return max(versions(model_dir), default=0) + 1


def read_metadata(version_dir):
    """The metadata JSON written beside an export."""
    path = pathlib.Path(version_dir) / EXPORT_METADATA
    if not path.exists():
        raise FileNotFoundError(f"{path} not found: not a labquake_tf export")
    return json.loads(path.read_text())


def write_warmup(path, model_name, preprocessor, batches=WARMUP_BATCHES, repeats=WARMUP_REPEATS):
    """TF Serving's warmup file: ``repeats`` rounds of one ``PredictionLog`` per batch size,
    each a ``serving_default`` request of raw windows drawn inside the features' training
    range. The repeats are in the file, so tensorflow_model_server warms up as much."""
    import tensorflow as tf
    from tensorflow_serving.apis import predict_pb2, prediction_log_pb2


    lo = preprocessor.feature_scaler.data_min.astype(np.float32)
    hi = preprocessor.feature_scaler.data_max.astype(np.float32)
    seq_len, n_features = preprocessor.input_len, len(preprocessor.feature_names)
    rng = np.random.default_rng(0)
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with tf.io.TFRecordWriter(str(path)) as writer:
        for n in [n for _ in range(repeats) for n in batches]:
            x = (lo + (hi - lo) * rng.random((n, seq_len, n_features))).astype(np.float32)
            request = predict_pb2.PredictRequest()
            request.model_spec.name = model_name
            request.model_spec.signature_name = DEFAULT_SIGNATURE
            request.inputs[INPUT_NAME].CopyFrom(to_tensor_proto(x))
            log = prediction_log_pb2.PredictionLog(
                predict_log=prediction_log_pb2.PredictLog(request=request))
            writer.write(log.SerializeToString())


def read_warmup(version_dir, limit=1000):
    """The warmup requests of a version as ``[{"signature_name", "inputs": {name: array}}]``
    (empty when it has none). Only ``predict_log`` records are replayed here."""
    path = pathlib.Path(version_dir) / WARMUP_FILE
    if not path.exists():
        return []
    import tensorflow as tf
    from tensorflow_serving.apis import prediction_log_pb2


    requests = []
    for i, record in enumerate(tf.data.TFRecordDataset(str(path)).as_numpy_iterator()):
        if i == limit:  # TF Serving's cap on warmup records
            raise ValueError(f"{path}: more than {limit} warmup records")
        log = prediction_log_pb2.PredictionLog.FromString(record)
        if log.WhichOneof("log_type") != "predict_log":
            raise ValueError(f"{path}: record {i} is a {log.WhichOneof('log_type')}; only "
                             "predict_log warmup records are replayed")
        request = log.predict_log.request
        requests.append({"signature_name": request.model_spec.signature_name or None,
                         "inputs": {k: to_ndarray(v) for k, v in request.inputs.items()}})
    return requests


def _check(model, preprocessor):
    if not preprocessor.fitted:
        raise ValueError("the model has no feature/target scaler, which the export bakes in "
                         "(an imported PyTorch model has none until fine-tuned or imported "
                         "with --scaler-from)")
    in_shape, out_shape = tuple(model.inputs[0].shape), tuple(model.outputs[0].shape)
    if in_shape[1:] != (preprocessor.input_len, len(preprocessor.feature_names)):
        raise ValueError(f"model input {in_shape} does not match its preprocessor's "
                         f"{preprocessor.input_len} steps of {preprocessor.feature_names}")
    if out_shape[-1] != len(preprocessor.target_names):
        raise ValueError(f"model output {out_shape} does not match its preprocessor's "
                         f"targets {preprocessor.target_names}")


def _metadata(task):
    pre = task.preprocessor
    data = task.metadata.get("data") or {}
    meta = {
        "dataset": data.get("dataset"),
        "feature_names": list(pre.feature_names),
        # what serving_default's ae_features must hold: logvar or std (sqrt variance)
        "feature_kind": pre.feature_kind,
        "target_names": list(pre.target_names),
        "target_units": dict(pre.units),
        "seq_len": pre.input_len,
        "dt": pre.dt,
        "hop": data.get("hop", pre.dt),
        "preset": task.metadata.get("preset"),
        "package_version": labquake_tf.__version__,
        "exported_at": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "signatures": {DEFAULT_SIGNATURE: "raw log10-variance in, physical units out",
                       SCALED_SIGNATURE: "min-max scaled in, scaled out"},
    }
    if task.intervals:
        iv = task.intervals
        meta["intervals"] = {"method": iv.get("method"), "coverage": iv.get("coverage"),
                             "score": iv.get("score"), "members": iv.get("members"),
                             "outputs": [f"{t}_{b}" for t in pre.target_names
                                         for b in ("lower", "upper")]}
    # what made it, as the export's metadata signature reports it
    meta.update({k: task.metadata[k] for k in ("source", "run", "tuning") if k in task.metadata})
    return meta


def _archive(task, metadata):
    import keras
    import tensorflow as tf

    model, pre = task.network, task.preprocessor
    targets = list(pre.target_names)
    spec = tf.TensorSpec([None, pre.input_len, len(pre.feature_names)], tf.float32,
                         name=INPUT_NAME)
    half = _half_width(task.intervals, targets)
    net = members_model(model) if half is not None else model

    # One tf.function for both signatures: the model is traced once, not twice.
    @tf.function(input_signature=[spec], autograph=False)
    def scaled(x):
        # A mixed_float16 model computes in float16; the signature stays float32.
        out = net(tf.cast(x, model.inputs[0].dtype), training=False)
        if half is None:
            return tf.cast(out, tf.float32), None
        members = tf.stack([tf.cast(m, tf.float32) for m in out[1:]])
        return tf.cast(out[0], tf.float32), tf.math.reduce_std(members, axis=0)

    def split(y):
        return {t: y[:, i] for i, t in enumerate(targets)}

    def physical(ae_features):
        mean, spread = scaled(pre.scale_features(ae_features))
        mean = pre.unscale_targets(mean)
        outputs = split(mean)
        if half is not None:
            width = half[0] * spread * pre.target_scale.astype(np.float32) + half[1]
            outputs.update({f"{t}_lower": v for t, v in split(mean - width).items()})
            outputs.update({f"{t}_upper": v for t, v in split(mean + width).items()})
        return outputs

    # No archive.track(model): the endpoints track every variable they use, and under
    # Keras 3.15 tracking the model too stored each weight twice (the Keras variable and
    # the tf.Variable inside it), doubling variables/ for nothing TF Serving reads.
    archive = keras.export.ExportArchive()
    archive.add_endpoint(DEFAULT_SIGNATURE, physical, input_signature=[spec])
    archive.add_endpoint(SCALED_SIGNATURE, lambda ae_features: split(scaled(ae_features)[0]),
                         input_signature=[spec])
    if is_streamable(model):
        from labquake_tf.serving import step

        archive.add_endpoint(step.STEP_SIGNATURE, *step.step_endpoint(model, pre))
    meta_json = json.dumps(metadata, sort_keys=True)
    archive.add_endpoint(METADATA_SIGNATURE,
                         lambda: {"metadata_json": tf.constant(meta_json)}, input_signature=[])
    return archive


def _half_width(intervals, targets):
    """``(coef, offset)`` float32 vectors of ``half = coef * spread + offset`` in
    physical units, or None when the task holds no calibrated interval."""
    if not intervals:
        return None
    missing = [t for t in targets if t not in intervals.get("targets", {})]
    if missing:
        raise ValueError(f"the task's interval has no calibration for {missing}")
    params = [intervals["targets"][t] for t in targets]
    return (np.asarray([p["coef"] for p in params], np.float32),
            np.asarray([p["offset"] for p in params], np.float32))
