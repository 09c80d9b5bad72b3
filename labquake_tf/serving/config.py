"""TF Serving's text-format config files: ``labquake serving-config`` writes a
``models.config``; ``labquake serve`` reads it back (``read_model_config``) together with
``--batching_parameters_file`` and ``--monitoring_config_file``.

    labquake serving-config --model p4581 --model p5198 --policy p5198=specific:1,2 \\
        --label p5198=stable:1
    docker run --rm -p 8501:8501 -v "$PWD/saved_models:/models" tensorflow/serving \\
        --model_config_file=/models/models.config --model_config_file_poll_wait_seconds=60

Base paths are written as the container sees them (``--container-root``, default
``/models``, where the ``docker run`` line mounts ``saved_models/``).
"""

import os
import pathlib

from labquake_tf.serving.export import versions

DOCKER = ('docker run --rm -p 8501:8501 -v "{base_dir}:{root}" tensorflow/serving '
          "--model_config_file={root}/models.config --model_config_file_poll_wait_seconds=60")


# TF Serving's defaults for --enable_batching without a parameters file.
DEFAULT_BATCHING = {"max_batch_size": 1000, "batch_timeout_micros": 0,
                    "num_batch_threads": os.cpu_count() or 1, "max_enqueued_batches": 10,
                    "allowed_batch_sizes": []}


def _messages():
    """TF Serving's BatchingParameters (session_bundle_config.proto) and MonitoringConfig
    (monitoring_config.proto), field numbers included: tensorflow-serving-api's wheel lacks
    them. Files written for tensorflow_model_server parse with protobuf's own text-format
    parser, wrapped values (``max_batch_size { value: 128 }``) and unknown-field errors alike."""
    from google.protobuf import descriptor_pb2, descriptor_pool, message_factory, wrappers_pb2

    pool = descriptor_pool.DescriptorPool()
    pool.AddSerializedFile(wrappers_pb2.DESCRIPTOR.serialized_pb)
    f = descriptor_pb2.FileDescriptorProto(name="labquake_tfserving.proto",
                                           package="labquake.tfserving",
                                           dependency=["google/protobuf/wrappers.proto"],
                                           syntax="proto3")
    i64, string = "google.protobuf.Int64Value", "google.protobuf.StringValue"
    fields = {"BatchingParameters": [("max_batch_size", 1, i64), ("batch_timeout_micros", 2, i64),
                                     ("thread_pool_name", 3, string),
                                     ("num_batch_threads", 4, i64),
                                     ("max_enqueued_batches", 5, i64),
                                     ("allowed_batch_sizes", 6, "repeated int64"),
                                     ("pad_variable_length_inputs", 7, "bool"),
                                     ("enable_large_batch_splitting", 8, "bool"),
                                     ("max_execution_batch_size", 9, i64)],
              "PrometheusConfig": [("enable", 1, "bool"), ("path", 2, "string")],
              "MonitoringConfig": [("prometheus_config", 1, "labquake.tfserving.PrometheusConfig")]}
    F = descriptor_pb2.FieldDescriptorProto
    scalars = {"bool": F.TYPE_BOOL, "string": F.TYPE_STRING, "int64": F.TYPE_INT64}
    for name, specs in fields.items():
        m = f.message_type.add(name=name)
        for field, number, kind in specs:
            label = F.LABEL_REPEATED if kind.startswith("repeated ") else F.LABEL_OPTIONAL
            kind = kind.removeprefix("repeated ")
            if kind in scalars:
                m.field.add(name=field, number=number, label=label, type=scalars[kind])
            else:
                m.field.add(name=field, number=number, label=label, type=F.TYPE_MESSAGE,
                            type_name="." + kind.removeprefix("."))
    pool.Add(f)
    return {name: message_factory.GetMessageClass(
        pool.FindMessageTypeByName(f"labquake.tfserving.{name}")) for name in fields}


def _parse(path, message, what):
    from google.protobuf import text_format

    path = pathlib.Path(path)
    try:
        return text_format.Parse(path.read_text(), message)
    except OSError as e:
        raise FileNotFoundError(f"{what} {path}: {e.strerror}") from None
    except text_format.ParseError as e:
        raise ValueError(f"{what} {path}: {e}") from None


def read_model_config(path):
    """The models of a ``ModelServerConfig`` text file (``--model_config_file``), as
    ``models_config`` takes them: dicts with ``name``, ``base_path``, ``policy``, ``labels``.
    Relative base paths are taken from the file's folder."""
    from tensorflow_serving.config import model_server_config_pb2

    config = _parse(path, model_server_config_pb2.ModelServerConfig(), "model config file")
    if config.WhichOneof("config") != "model_config_list":
        raise ValueError(f"model config file {path}: needs a model_config_list")
    models = []
    for c in config.model_config_list.config:
        if not c.name or not c.base_path:
            raise ValueError(f"model config file {path}: every config needs name and base_path")
        if c.model_platform not in ("", "tensorflow"):
            raise ValueError(f"model config file {path}: model {c.name!r} has platform "
                             f"{c.model_platform!r}; only 'tensorflow' is served")
        kind = c.model_version_policy.WhichOneof("policy_choice") or "latest"
        numbers = {"latest": [c.model_version_policy.latest.num_versions or 1], "all": [],
                   "specific": list(c.model_version_policy.specific.versions)}[kind]
        base = pathlib.Path(c.base_path)
        if not base.is_absolute():
            base = pathlib.Path(path).parent / base
        models.append({"name": c.name, "policy": (kind, numbers), "labels": dict(c.version_labels),
                       "base_path": base})
    if not models:
        raise ValueError(f"model config file {path}: no models in model_config_list")
    names = [m["name"] for m in models]
    if len(set(names)) != len(names):
        raise ValueError(f"model config file {path}: a model name appears twice in {names}")
    return models


def read_batching_parameters(path):
    """``--batching_parameters_file`` as a dict with TF Serving's defaults filled in."""
    p = _parse(path, _messages()["BatchingParameters"](), "batching parameters file")
    params = dict(DEFAULT_BATCHING)
    for key in ("max_batch_size", "batch_timeout_micros", "num_batch_threads",
                "max_enqueued_batches"):
        if p.HasField(key):
            params[key] = getattr(p, key).value
    params["allowed_batch_sizes"] = list(p.allowed_batch_sizes)
    sizes, top = params["allowed_batch_sizes"], params["max_batch_size"]
    for key in ("max_batch_size", "num_batch_threads", "max_enqueued_batches"):
        if params[key] < 1:
            raise ValueError(f"batching parameters file {path}: {key} must be >= 1")
    if params["batch_timeout_micros"] < 0:
        raise ValueError(f"batching parameters file {path}: batch_timeout_micros must be >= 0")
    # TF Serving's own checks: ascending, ending at max_batch_size.
    if sizes and (sizes != sorted(set(sizes)) or sizes[0] < 1 or sizes[-1] != top):
        raise ValueError(f"batching parameters file {path}: allowed_batch_sizes {sizes} must "
                         f"increase and end at max_batch_size ({top})")
    return params


def read_monitoring_config(path):
    """The Prometheus path from ``--monitoring_config_file``, or None when not enabled."""
    p = _parse(path, _messages()["MonitoringConfig"](), "monitoring config file")
    if not p.prometheus_config.enable:
        return None
    return p.prometheus_config.path or "/monitoring/prometheus/metrics"


def parse_policy(text):
    """``latest[:N]``, ``all`` or ``specific:V1,V2`` -> ``(kind, [numbers])``."""
    kind, _, numbers = text.partition(":")
    try:
        values = [int(v) for v in numbers.split(",") if v]
    except ValueError:
        raise ValueError(f"version policy {text!r}: versions must be integers") from None
    if kind == "latest" and len(values) <= 1:
        return "latest", values or [1]
    if kind == "all" and not values:
        return "all", []
    if kind == "specific" and values:
        return "specific", values
    raise ValueError(f"version policy {text!r}: use latest[:N], all, or specific:V1,V2")


def models_config(models):
    """The text-format ``ModelServerConfig`` for ``models``: dicts with ``name``,
    ``base_path``, optional ``policy`` ``(kind, numbers)`` and ``labels`` ``{label: version}``."""
    lines = ["model_config_list {"]
    for m in models:
        lines += ["  config {", f'    name: "{m["name"]}"', f'    base_path: "{m["base_path"]}"',
                  '    model_platform: "tensorflow"']
        kind, numbers = m.get("policy") or ("latest", [1])
        if kind == "latest":
            body = [f"num_versions: {numbers[0]}"]
        else:
            body = [f"versions: {v}" for v in numbers]
        lines += ["    model_version_policy {", f"      {kind} {{"]
        lines += [f"        {b}" for b in body] + ["      }", "    }"]
        for label, version in sorted((m.get("labels") or {}).items()):
            lines += ["    version_labels {", f'      key: "{label}"', f"      value: {version}",
                      "    }"]
        lines.append("  }")
    lines.append("}")
    return "\n".join(lines) + "\n"


def _check(name, local_dir, policy, labels):
    present = versions(local_dir)
    if not present:
        raise FileNotFoundError(f"model {name!r}: no SavedModel versions under {local_dir}")
    kind, numbers = policy
    served = {"latest": present[-numbers[0]:], "all": present, "specific": numbers}[kind]
    missing = sorted(set(served) - set(present))
    if missing:
        raise FileNotFoundError(f"model {name!r}: version(s) {missing} not in {local_dir} "
                                f"(found {present})")
    for label, version in labels.items():
        # TF Serving refuses a label on a version its policy does not load.
        if version not in served:
            raise ValueError(f"model {name!r}: label {label!r} points at version {version}, "
                             f"which the policy does not serve ({served})")


def _pairs(items, flag):
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key or not value:
            raise ValueError(f"{flag} {item!r}: expected NAME=VALUE")
        out.setdefault(key, []).append(value)
    return out


def add_arguments(parser):
    parser.add_argument("--model", action="append", required=True, metavar="NAME",
                        help="a model under --base-dir (repeatable)")
    parser.add_argument("--base-dir", default="saved_models", help="export root")
    parser.add_argument("--policy", action="append", default=[], metavar="NAME=POLICY",
                        help="latest[:N] (default latest:1), all, or specific:V1,V2")
    parser.add_argument("--label", action="append", default=[], metavar="NAME=LABEL:VERSION",
                        help="a version label, e.g. p4581=stable:1 (repeatable)")
    parser.add_argument("--container-root", default="/models",
                        help="where --base-dir is mounted in the container ('' for local paths)")
    parser.add_argument("--out", default=None, help="default: BASE_DIR/models.config")


def run(args):
    base_dir = pathlib.Path(args.base_dir)
    policies = {k: parse_policy(v[-1]) for k, v in _pairs(args.policy, "--policy").items()}
    labels = {}
    for name, values in _pairs(args.label, "--label").items():
        for value in values:
            label, _, version = value.partition(":")
            if not version.isdigit():
                raise ValueError(f"--label {name}={value!r}: expected LABEL:VERSION")
            labels.setdefault(name, {})[label] = int(version)
    unknown = sorted((set(policies) | set(labels)) - set(args.model))
    if unknown:
        raise ValueError(f"--policy/--label for model(s) {unknown} not given with --model")
    models = []
    for name in args.model:
        policy = policies.get(name, ("latest", [1]))
        _check(name, base_dir / name, policy, labels.get(name, {}))
        root = args.container_root.rstrip("/")
        base_path = f"{root}/{name}" if root else str((base_dir / name).resolve())
        models.append({"name": name, "base_path": base_path, "policy": policy,
                       "labels": labels.get(name, {})})
    out = pathlib.Path(args.out) if args.out else base_dir / "models.config"
    tmp = out.with_name(f".{out.name}.tmp")
    tmp.write_text(models_config(models))
    os.replace(tmp, out)
    print(f"wrote {out} ({len(models)} model(s))")
    if args.container_root:
        print(DOCKER.format(base_dir=base_dir.resolve(), root=args.container_root.rstrip("/")))
    return 0
