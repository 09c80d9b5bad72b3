"""``labquake prepare``: a dataset → TFRecord shards per split + ``manifest.json``.

Record granularity: one ``tf.train.Example`` per CHUNK of ``chunk_len`` steps,
carrying the ``seq_len - 1`` steps before it as context. Every
window that ends inside a chunk can then be built from that record alone, so
shards can be interleaved and records parsed in parallel without a window ever
crossing a record, and any ``seq_len`` up to the prepared one still works. One
record per step would cost a proto parse per step and tie windows to file order.
The context of a split's first chunk comes from the steps before the split (the
end of the previous part): windows there are inputs only (AE the model would
have seen live), their labels are never used, so every labelled step of val and
test can be scored, the first ``seq_len - 1`` included. Only the record's very
first steps have no window. The steps between a record and its files (plan,
shard, manifest) are ``data/shards.py``.

The whole output is written into a temporary folder beside ``--out`` and renamed
at the end, so a failed run leaves nothing half-written.
"""

import argparse
import json
import os

import labquake_tf
from labquake_tf.data import features as features_lib
from labquake_tf.data import registry, splits
from labquake_tf.data.record import channels_of
from labquake_tf.data.shards import (CHUNK_LEN, DEFAULT_WINDOW_SECONDS, RECORDS_PER_SHARD,
                                     check_parts,
                                     check_request, dataset_key, existing, finish_manifest,
                                     plan, write_shard)
from labquake_tf.errors import DataError, UsageError
from labquake_tf.files import MANIFEST_FILE, atomic_dir, write_json

PASSES_UNKNOWN_OPTIONS = True
"""The CLI hands options it does not know to ``run``: Beam's, with ``--runner beam``."""


def prepare(dataset, out, seq_len=None, targets=None, split=splits.PRETRAIN_RATIOS,
            channels=None, force=False, chunk_len=CHUNK_LEN,
            records_per_shard=RECORDS_PER_SHARD, features="logvar", **record_options):
    """Write shards and manifest for ``dataset`` (name or path) into ``out``; returns the manifest.

    ``features``: ``"logvar"`` (log10 AE variance, the default) or ``"std"`` (its square
    root, the reference PyTorch code's input); the manifest's ``feature_kind``.
    ``targets`` None: every target the record has (a TTF-only record has ``ttsf``).
    ``data.beam.prepare`` runs the same steps (``shards.plan``, ``write_shard``,
    ``finish_manifest``) spread over a Beam pipeline."""
    import tensorflow as tf

    ratios = check_request(targets, split, features)
    # The detrend line and event threshold are fitted on this split's training part.
    record = registry.load_record(dataset, channels=channels, features=features,
                                  fit_split=ratios, **record_options)
    job = plan(record, dataset, seq_len=seq_len, targets=targets, ratios=ratios,
               channels=channels, features=features, chunk_len=chunk_len,
               records_per_shard=records_per_shard, record_options=record_options)
    done = existing(out, job["request"], force)
    if done is not None:
        return done
    check_parts(job, record, dataset)
    with atomic_dir(os.path.abspath(out), prefix=".prepare-") as tmp:
        written = [write_shard(tf, tmp, record, job, shard) for shard in job["shards"]]
        manifest = finish_manifest(job, written)
        write_json(os.path.join(tmp, MANIFEST_FILE), manifest)
    return manifest


PORTABLE_OPTIONS = ("lowpass_hz", "detrend", "rel_drop", "window", "hop", "output")
"""Record options that mean the same on any dataset (``min_drop`` is in one record's MPa,
``ttf`` only exists for DDS CSVs)."""


def prepare_like(request, out, dataset=None, split=None):
    """Prepare data the way ``request`` (a manifest's ``request``) did.

    With ``dataset`` None: the run's own record again, which must still have the
    recorded sha256. With another ``dataset``: that record with the run's window,
    targets, channels and portable processing options (``PORTABLE_OPTIONS``), split
    ``split`` (default ``splits.FINETUNE_RATIOS``).
    """
    own = dataset is None or dataset_key(dataset) == request.get("dataset")
    needed = ("dataset", "seq_len", "targets", "split") if own else ("seq_len", "targets")
    missing = [k for k in needed if not request.get(k)]
    if missing:
        raise DataError(f"the run's manifest 'request' lacks {missing}: it was prepared by "
                         "an older labquake_tf; prepare its data again")
    options = request.get("options")
    if options is None:  # a request from before "options": its processing says the same
        processing = request.get("processing") or {}
        options = {k: processing[k] for k in ("lowpass_hz", "detrend", "rel_drop")
                   if k in processing}
    options = dict(options)
    if not own:
        options = {k: v for k, v in options.items() if k in PORTABLE_OPTIONS}
    source = request["dataset"] if own else dataset
    if own and not (source in registry.DATASETS or os.path.exists(source)):
        sim = request.get("simulator")
        hint = (f"; regenerate it with `labquake simulate --preset {sim.get('preset')} "
                f"--seed {sim.get('seed')}`" if sim else "")
        raise DataError(f"{source}: the run's record is gone (sha256 "
                                f"{request.get('sha256')}){hint}")
    split = split or (request["split"] if own else splits.FINETUNE_RATIOS)
    channels = request.get("channels")
    if channels and not all(isinstance(c, int) for c in channels):
        channels = channels_of(channels)  # older requests listed feature names here
    # the channels the run's feature names say (a model on logvar_ch2 reads channel 2)
    channels = channels or channels_of(request.get("feature_names") or [])
    features = request.get("features") or \
        features_lib.feature_kind(request.get("feature_names") or []) or "logvar"
    manifest = prepare(source, out, seq_len=request["seq_len"], targets=request["targets"],
                       split=split, channels=channels, features=features,
                       chunk_len=request.get("chunk_len", CHUNK_LEN), **options)
    if own and request.get("sha256") and manifest["request"]["sha256"] != request["sha256"]:
        raise DataError(f"{source}: sha256 {manifest['request']['sha256']} differs from the "
                         f"run's record ({request['sha256']}): not the data it was trained on")
    return manifest


def add_arguments(parser):
    parser.add_argument("--dataset", required=True, help="registry name (p4581, p5198, "
                        "synthetic-*) or a .csv/.h5/.npz path")
    parser.add_argument("--out", required=True, help="output folder for shards + manifest.json")
    parser.add_argument("--seq-len", type=int, default=None,
                        help=f"window length in steps (default: {DEFAULT_WINDOW_SECONDS} s of record)")
    parser.add_argument("--targets", nargs="+", default=None, choices=labquake_tf.TARGETS,
                        help="targets to store (default: all)")
    parser.add_argument("--split", default="0.7,0.1,0.2",
                        help="train,val,test ratios by event count (fine-tuning: 0.5,0.1,0.4)")
    parser.add_argument("--channels", default=None,
                        help="AE channels, 1-based, comma separated (default: 1)")
    parser.add_argument("--ttf", choices=("published", "derived"), default=None,
                        help="DDS CSVs: published TimeToFailure columns (default) or derived")
    parser.add_argument("--lowpass-hz", type=float, default=15.0,
                        help="shear-stress low-pass cutoff; skipped when >= Nyquist")
    parser.add_argument("--detrend", action=argparse.BooleanOptionalAction, default=False,
                        help="subtract a line fitted on the training part from the shear-stress "
                             "target (default: no; see data/targets.py for why)")
    parser.add_argument("--features", choices=sorted(features_lib.FEATURE_KINDS), default="logvar",
                        help="AE feature: log10 variance (default) or standard deviation "
                             "(std, the reference PyTorch models' input)")
    parser.add_argument("--columns", default=None, metavar="KEY=COLUMN,...",
                        help="a raw record's own column layout (CSV, Parquet, HDF5), e.g. "
                             "ae=acoustic_data,ttf=time_to_failure,rate=4e6; keys: ae, "
                             "stress, ttf, ttef, rate (see data/columns.py)")
    parser.add_argument("--force", action="store_true", help="replace a non-empty --out")
    parser.add_argument("--runner", default="local",
                        help="local (default), or beam: an Apache Beam pipeline (pip install "
                             "labquake_tf[beam]); beam options follow (--direct_num_workers, "
                             "--runner flink|spark|dataflow after --runner beam, ...)")


def run(args):
    options = {"lowpass_hz": args.lowpass_hz, "detrend": args.detrend}
    if args.ttf:
        options["ttf"] = args.ttf
    if args.columns:
        options["columns"] = args.columns
    try:
        channels = [int(c) for c in args.channels.split(",")] if args.channels else None
    except ValueError:
        raise UsageError(f"--channels: expected 1-based channel numbers like 1,2; "
                         f"got {args.channels!r}") from None
    unknown = getattr(args, "unknown_options", [])
    kwargs = dict(seq_len=args.seq_len, targets=args.targets, split=args.split,
                  channels=channels, force=args.force, features=args.features, **options)
    if args.runner == "local":
        if unknown:
            raise UsageError(f"unrecognized arguments: {' '.join(unknown)} (Beam's options "
                             "need --runner beam; see 'labquake prepare --help')")
        manifests = [prepare(args.dataset, args.out, **kwargs)]
    else:
        from labquake_tf.data import beam

        manifests = beam.prepare(args.dataset, args.out, runner=args.runner,
                                 beam_args=unknown, **kwargs)
    for manifest in manifests:
        summary = {n: {"events": s["events"], "steps": s["n_steps"],
                       "t": [s["t_start"], s["t_end"]]} for n, s in manifest["splits"].items()}
        out = args.out if len(manifests) == 1 else os.path.join(
            args.out, os.path.basename(os.path.splitext(manifest["sources"][0]["path"])[0]))
        print(json.dumps({"out": os.path.abspath(out), "dataset": manifest["dataset"],
                          "n_events": manifest["n_events"], "seq_len": manifest["seq_len"],
                          "splits": summary}))
    return 0
