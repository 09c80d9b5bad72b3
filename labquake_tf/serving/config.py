"""``labquake serving-config``: a ``models.config`` for TF Serving with several models.

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
