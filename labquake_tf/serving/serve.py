"""``labquake serve``: TF Serving's command line for ``server.Server``.

``labquake serve --model_base_path saved_models/NAME --rest_api_port 8501 --port 8500``
takes TF Serving's flag names (scripts for ``tensorflow_model_server`` run unchanged; the
dashed forms work too) and prints one line once every version is loaded and answering.
"""

import logging
import os

from labquake_tf.models import saving
from labquake_tf.serving.http_conn import Limits
from labquake_tf.serving.server import Server

_DEFAULT = Limits()


def set_tf_threads(n):
    """Run TF's ops on ``n`` threads (0: TF's default); must precede TF's first op.

    One window gains little from intra-op parallelism; on a machine shared with
    other jobs, fewer threads can cut tail latency (measure with bench_serving).
    """
    import tensorflow as tf

    if n > 0:
        tf.config.threading.set_intra_op_parallelism_threads(n)
        tf.config.threading.set_inter_op_parallelism_threads(n)


def boolean(text):
    """TF Serving's boolean flag values (argparse names the function in its error)."""
    if text.lower() in ("1", "true", "yes"):
        return True
    if text.lower() in ("0", "false", "no"):
        return False
    raise ValueError(text)


def add_arguments(parser):
    # TF Serving's flag names (scripts for tensorflow_model_server run unchanged) and
    # this project's dashed ones are the same options.
    parser.add_argument("--model_base_path", "--model-base-path", dest="model_base_path",
                        help="folder of integer version dirs, e.g. saved_models/NAME, or a "
                             "shipped preset's name (labquake presets)")
    parser.add_argument("--model_name", "--model-name", dest="model_name", default=None,
                        help="default: the base path's last part")
    parser.add_argument("--model_config_file", "--model-config-file", dest="model_config_file",
                        default=None, help="a models.config (ModelServerConfig text format) "
                                           "naming several models; replaces --model_base_path")
    parser.add_argument("--port", type=int, default=8500,
                        help="gRPC port, as TF Serving's (default 8500; 0: a free port; "
                             "-1: no gRPC)")
    parser.add_argument("--rest_api_port", "--rest-api-port", dest="rest_api_port", type=int,
                        default=8501, help="REST port (default 8501; 0: a free port; -1: no REST)")
    parser.add_argument("--host", default="127.0.0.1",
                        help="interface to bind (0.0.0.0 to serve other machines)")
    parser.add_argument("--num-versions", type=int, default=1,
                        help="serve the newest N versions (TF Serving's 'latest' policy)")
    parser.add_argument("--label", action="append", default=[], metavar="LABEL=VERSION",
                        help="a version label, e.g. stable=1 (repeatable)")
    parser.add_argument("--poll-seconds", "--file_system_poll_wait_seconds", dest="poll_seconds",
                        type=float, default=2.0, help="how often to look for new versions")
    parser.add_argument("--enable_batching", "--enable-batching", dest="enable_batching",
                        nargs="?", const=True, default=False, type=boolean,
                        help="merge concurrent requests into one model call "
                             "(--enable_batching or --enable_batching=true)")
    parser.add_argument("--batching_parameters_file", "--batching-parameters-file",
                        dest="batching_parameters_file", default=None,
                        help="TF Serving's BatchingParameters text format (max_batch_size, "
                             "batch_timeout_micros, num_batch_threads, max_enqueued_batches, "
                             "allowed_batch_sizes); implies --enable_batching")
    parser.add_argument("--monitoring_config_file", "--monitoring-config-file",
                        dest="monitoring_config_file", default=None,
                        help='e.g. prometheus_config { enable: true, path: '
                             '"/monitoring/prometheus/metrics" }')
    parser.add_argument("--enable_model_warmup", "--enable-model-warmup",
                        dest="enable_model_warmup", nargs="?", const=True, type=boolean,
                        default=True, help="replay assets.extra/tf_serving_warmup_requests "
                                           "before serving a version (default true)")
    parser.add_argument("--max-body-bytes", type=int, default=_DEFAULT.max_body_bytes,
                        help="larger REST bodies / gRPC messages are refused (413; default "
                             "%(default)s)")
    parser.add_argument("--rest_api_timeout_in_ms", "--rest-api-timeout-in-ms",
                        dest="rest_api_timeout_in_ms", type=int,
                        default=int(_DEFAULT.timeout_s * 1000),
                        help="a REST request must arrive in full within this many ms of its "
                             "first byte, else 408 and the connection closes (default "
                             "%(default)s, TF Serving's)")
    parser.add_argument("--rest_api_num_threads", "--rest-api-num-threads",
                        dest="rest_api_num_threads", type=int, default=_DEFAULT.threads,
                        help="REST model calls at once (default 4 per core, as TF Serving: "
                             "%(default)s)")
    parser.add_argument("--max-connections", type=int, default=_DEFAULT.max_connections,
                        help="REST connections open at once; a new one beyond gets a 503 "
                             "and is closed, those open go on (default %(default)s)")
    parser.add_argument("--max-buffered-body-bytes", type=int,
                        default=_DEFAULT.max_buffered_bytes,
                        help="REST request bodies held at once across all connections; a "
                             "request beyond gets a 503 (default %(default)s)")
    parser.add_argument("--grpc-threads", type=int, default=64,
                        help="gRPC worker threads (requests beyond this wait in line)")
    parser.add_argument("--tf-threads", type=int, default=0,
                        help="TF intra/inter-op threads (0: TF's default, one per core)")


def server_from_args(args):
    """A ``Server`` (not started) for ``labquake serve``'s arguments."""
    from labquake_tf.serving import config

    if (args.model_base_path is None) == (args.model_config_file is None):
        raise SystemExit("give --model_base_path or --model_config_file (one of them)")
    if args.model_base_path in saving.shipped_names() and not os.path.exists(args.model_base_path):
        # a shipped preset's folder is a TF Serving base path as it is
        args.model_base_path = str(saving.resolve(args.model_base_path))
    labels = {}
    for item in args.label:
        label, _, version = item.partition("=")
        if not version.isdigit():
            raise SystemExit(f"--label {item!r}: expected LABEL=VERSION, e.g. stable=1")
        labels[label] = int(version)
    models = None
    if args.model_config_file:
        if args.label or args.model_name:
            raise SystemExit("--label/--model_name go in the --model_config_file")
        models = config.read_model_config(args.model_config_file)
    batching = None
    if args.enable_batching or args.batching_parameters_file:
        batching = config.read_batching_parameters(args.batching_parameters_file) \
            if args.batching_parameters_file else config.DEFAULT_BATCHING
    metrics_path = config.read_monitoring_config(args.monitoring_config_file) \
        if args.monitoring_config_file else None
    for flag, port in (("--port", args.port), ("--rest_api_port", args.rest_api_port)):
        if not -1 <= port <= 65535:
            raise SystemExit(f"{flag} {port}: a port is 0..65535 (0: a free one, -1: none)")
    rest = None if args.rest_api_port < 0 else args.rest_api_port
    grpc_port = None if args.port < 0 else args.port
    if rest is None and grpc_port is None:
        raise SystemExit("--port -1 and --rest_api_port -1: nothing would be served")
    if rest and rest == grpc_port:
        raise SystemExit(f"--port (gRPC) and --rest_api_port (REST) are both {rest}; "
                         "since the gRPC API arrived, --port is TF Serving's gRPC port")
    return Server(args.model_base_path, args.model_name, args.host, rest, args.poll_seconds,
                  args.num_versions, labels, grpc_port=grpc_port, models=models,
                  batching=batching, metrics_path=metrics_path,
                  warmup=args.enable_model_warmup, grpc_threads=args.grpc_threads,
                  limits=limits_from_args(args))


def limits_from_args(args):
    """The REST port's ``Limits`` from the command line; a value out of range is an error."""
    for flag, value in (("--max-body-bytes", args.max_body_bytes),
                        ("--rest_api_timeout_in_ms", args.rest_api_timeout_in_ms),
                        ("--rest_api_num_threads", args.rest_api_num_threads),
                        ("--max-connections", args.max_connections),
                        ("--max-buffered-body-bytes", args.max_buffered_body_bytes)):
        if value <= 0:
            raise SystemExit(f"{flag} {value}: must be positive")
    if args.max_buffered_body_bytes < args.max_body_bytes:
        raise SystemExit(f"--max-buffered-body-bytes {args.max_buffered_body_bytes} is less "
                         f"than --max-body-bytes {args.max_body_bytes}: no body that size "
                         "could ever be held")
    return Limits(max_body_bytes=args.max_body_bytes,
                  max_buffered_bytes=args.max_buffered_body_bytes,
                  timeout_s=args.rest_api_timeout_in_ms / 1000,
                  max_connections=args.max_connections, threads=args.rest_api_num_threads)


def run(args):
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    set_tf_threads(args.tf_threads)
    server = server_from_args(args).start()
    print(server.describe(), flush=True)  # once it answers: scripts wait for this line
    server.serve_forever()
    return 0
