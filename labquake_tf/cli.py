"""The ``labquake`` command: one subcommand per pipeline step.

Each subcommand is a module that exposes ``add_arguments(parser)`` and
``run(args) -> int``: a job in ``labquake_tf.jobs`` when it composes several
layers, else the one layer's own command module (``prepare``, ``export``, ...).
Only the chosen module is imported, so ``labquake --help`` does not pay for
importing TensorFlow.

Errors: a user error (``labquake_tf.errors``, a missing or existing file, a
message our own code raised) ends in one line on stderr, ``labquake CMD: error:
...``, exit status 1 (data) or 2 (usage). Anything else is a bug: its traceback
is kept and the last line says so (exit status 70, sysexits' EX_SOFTWARE).
``--verbose`` or ``LABQUAKE_VERBOSE=1`` adds the traceback to user errors and
lets TensorFlow's logs through; by default they are silenced (``_quiet``): environment
variables set before TensorFlow loads, and, for a real process, a parent process that
filters the child's stderr (``_run_filtered``), so that a crash inside TensorFlow (a
``Check failed``, SIGABRT) still prints its own message and a line naming the signal.
"""

import argparse
import contextlib
import functools
import importlib
import logging
import os
import re
import signal
import subprocess
import sys
import traceback
import warnings

COMMANDS = {
    "simulate": ("labquake_tf.jobs.simulate", "generate a synthetic lab-quake record (HDF5)"),
    "prepare": ("labquake_tf.data.prepare", "turn a dataset into TFRecord shards + manifest"),
    "pretrain": ("labquake_tf.jobs.pretrain", "pretrain a TCN and export it"),
    "finetune": ("labquake_tf.jobs.finetune", "fine-tune the first K blocks of a pretrained TCN"),
    "import-torch": ("labquake_tf.jobs.import_torch", "a reference PyTorch TCN checkpoint (.pth) as a run dir"),
    "evaluate": ("labquake_tf.jobs.evaluate", "score a model in physical units, with plots"),
    "transfer-matrix": ("labquake_tf.jobs.transfer_matrix", "zero-shot / fine-tuned RMSE across datasets"),
    "tune": ("labquake_tf.jobs.tune", "KerasTuner search over the TCN and its training"),
    "export": ("labquake_tf.jobs.export", "export a model as a TF Serving SavedModel"),
    "serving-config": ("labquake_tf.serving.config", "write a TF Serving models.config"),
    "serve": ("labquake_tf.serving.serve", "serve SavedModels over TF Serving's REST and gRPC APIs"),
    "predict": ("labquake_tf.jobs.predict", "predict a record with intervals (locally or through a server)"),
    "stream": ("labquake_tf.jobs.stream", "real-time predictions and alarms on a live AE stream"),
    "presets": ("labquake_tf.jobs.presets", "list the pretrained models that ship with the package"),
}

EXIT_DATA, EXIT_USAGE, EXIT_BUG, EXIT_INTERRUPTED = 1, 2, 70, 130
VERBOSE_ENV = "LABQUAKE_VERBOSE"
FILTERED_ENV = "LABQUAKE_STDERR_FILTERED"  # set in the child whose stderr a parent filters


def main(argv=None, filter_stderr=None):
    """Run ``labquake ARGV``; returns the exit status.

    ``filter_stderr`` (default: ``argv is None``, a real process reading
    ``sys.argv``) runs the command in a child process whose stderr this one filters
    of C++ log lines; in-process callers (tests) own their stderr. Wrappers that are
    processes pass True.
    """
    as_program = argv is None if filter_stderr is None else filter_stderr
    argv = list(sys.argv[1:] if argv is None else argv)
    verbose = _env_verbose()
    while argv and argv[0] == "--verbose":
        verbose, argv = True, argv[1:]
    if not argv or argv[0] in ("-h", "--help"):
        print(_usage())
        return 0
    if argv[0] == "--version":
        print(_version())
        return 0
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        print(f"labquake: error: unknown command {name!r}; commands: {', '.join(COMMANDS)} "
              "(see 'labquake --help')", file=sys.stderr)
        return EXIT_USAGE
    # Decided before the module (and TensorFlow) is imported: the log settings
    # only take effect if they are in place when TensorFlow starts.
    verbose = verbose or any(a == "--verbose" or a.startswith("--verbose=") for a in rest)
    if as_program and not verbose and os.environ.get(FILTERED_ENV) != "1" \
            and getattr(sys, "orig_argv", None):
        return _run_filtered(f"labquake {name}")
    with _quiet(verbose, prog=f"labquake {name}"):
        return _run(name, rest, verbose)


def run_command(argv):
    """``labquake COMMAND ARGS`` in-process, raising what the command raises (tests, scripts).

    ``main`` is this plus turning errors into one line and an exit status.
    """
    name, rest = argv[0], argv[1:]
    module_name, help_ = COMMANDS[name]
    module = importlib.import_module(module_name)
    parser = _Parser(prog=f"labquake {name}", description=help_)
    module.add_arguments(parser)
    parser.add_argument("--verbose", action="store_true",
                        help=f"show tracebacks and TensorFlow's logs (or {VERBOSE_ENV}=1)")
    if getattr(module, "PASSES_UNKNOWN_OPTIONS", False):  # prepare --runner beam: Beam's own
        args, args.unknown_options = parser.parse_known_args(rest)
    else:
        args = parser.parse_args(rest)
    return module.run(args) or 0


def _run(name, rest, verbose):
    prog = f"labquake {name}"
    try:
        return run_command([name, *rest])
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except SystemExit as exit_:  # raise SystemExit("message"): Python's exit 1 with a message
        if not isinstance(exit_.code, str):
            raise
        text = exit_.code.removeprefix(f"{prog}: ")
        print(f"{prog}: error: {' '.join(text.split())}", file=sys.stderr)
        return EXIT_DATA
    except Exception as err:  # noqa: BLE001 -- sorted into user errors and bugs below
        return _report(prog, err, verbose)


def _report(prog, err, verbose):
    code = user_error_code(err)
    sys.stdout.flush()
    if code is None:
        traceback.print_exception(err, file=sys.stderr)
        from labquake_tf import __version__

        print(f"{prog}: internal error, a bug in labquake_tf {__version__} (not in your input): "
              f"{type(err).__name__}: {one_line(err)} -- please report it with the traceback "
              "above", file=sys.stderr)
        return EXIT_BUG
    if verbose:
        traceback.print_exception(err, file=sys.stderr)
    print(f"{prog}: error: {one_line(err)}", file=sys.stderr)
    return code


_FILE_ERRORS = (FileNotFoundError, FileExistsError, IsADirectoryError, NotADirectoryError,
                PermissionError, ConnectionError)
"""The user's files and servers: wrong paths, existing outputs, an unreachable server."""

_OUR_MESSAGES = (ValueError, LookupError, RuntimeError, OSError)
"""Raised by a ``raise`` statement in labquake_tf, these carry a message for the user."""

_PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__)) + os.sep


def user_error_code(err):
    """The exit status for a user error, or None for a bug (keep the traceback).

    A ``ValueError`` from deep inside numpy or TensorFlow is a bug unless our
    code caught it and raised its own message; ``labquake_tf.errors`` types are
    the explicit way, a ``raise`` statement in this package the implicit one.
    """
    from labquake_tf import errors

    if isinstance(err, errors.LabquakeError):
        return err.exit_code
    if isinstance(err, _FILE_ERRORS) or (isinstance(err, OSError) and err.errno is not None):
        return EXIT_DATA  # the OS refused (no such file, disk full, ...): not our bug
    tf = sys.modules.get("tensorflow")
    if tf is not None and isinstance(err, (tf.errors.NotFoundError, tf.errors.DataLossError)):
        return EXIT_DATA
    if isinstance(err, _OUR_MESSAGES) and _raised_here(err):
        return EXIT_DATA
    return None


def _raised_here(err):
    frames = traceback.extract_tb(err.__traceback__)
    if not frames:
        return False
    last = frames[-1]
    return (os.path.abspath(last.filename).startswith(_PACKAGE_DIR)
            and (last.line or "").lstrip().startswith("raise "))


def one_line(err):
    """The error's message on one line (file errors as ``PATH: reason``)."""
    if isinstance(err, OSError) and err.filename is not None and err.strerror:
        text = f"{err.filename}: {err.strerror}"
    elif isinstance(err, KeyError) and len(err.args) == 1:
        text = str(err.args[0])  # str(KeyError) quotes its message
    else:
        text = str(err)
    tf = sys.modules.get("tensorflow")
    if tf is not None and isinstance(err, tf.errors.OpError):
        text = err.message.split("\n")[0]  # the rest is graph node context
    return " ".join(text.split()) or type(err).__name__


class _Parser(argparse.ArgumentParser):
    """argparse, but a bad command line is one line too (``UsageError``, exit 2)."""

    def error(self, message):
        from labquake_tf.errors import UsageError

        raise UsageError(f"{message} (see '{self.prog} --help')")


def _usage():
    lines = ["usage: labquake [--verbose] COMMAND [options]", "       labquake --version", "",
             "commands:"]
    lines += [f"  {name:<16} {help_}" for name, (_, help_) in COMMANDS.items()]
    lines += ["", "Run 'labquake COMMAND --help' for a command's options.",
              f"--verbose (or {VERBOSE_ENV}=1): tracebacks with errors, TensorFlow's logs.",
              "Exit status: 0 done, 1 bad input data, 2 bad options, 70 a bug."]
    return "\n".join(lines)


def _version():
    from labquake_tf import __version__

    return f"labquake {__version__}"


def _env_verbose():
    return os.environ.get(VERBOSE_ENV, "").strip().lower() not in ("", "0", "false", "no")


_SPURIOUS_WARNINGS = (
    # Keras' EpochIterator on a finite dataset sized by the manifest: the end is expected.
    r"Your input ran out of data",
    # Reloading a .keras file for inference or fine-tuning; the optimizer is rebuilt.
    r"Skipping variable loading for optimizer",
    r"Compiled the loaded model, but the compiled metrics have yet to be built",
    # A functional model with a named input called on a bare tensor: same result.
    r"The structure of `inputs` doesn't match the expected structure",
)


@contextlib.contextmanager
def _quiet(verbose, prog="labquake"):
    """Silence TensorFlow's C++ and Python logs and known spurious Keras warnings.

    Other warnings stay, as one line each: ``labquake CMD: warning: ...``.

    ``TF_CPP_MIN_LOG_LEVEL=3`` hides TensorFlow's own C++ logs below FATAL, read when
    TensorFlow loads; lines that XLA/abseil print before ``absl::InitializeLog()``
    ignore it, which ``_run_filtered``'s parent process drops.
    """
    if verbose:
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "0")
        yield
        return
    os.environ["TF_CPP_MIN_LOG_LEVEL"] = "3"
    os.environ.setdefault("GRPC_VERBOSITY", "ERROR")
    loggers = {name: logging.getLogger(name) for name in ("tensorflow", "absl", "apache_beam")}
    levels = {name: logger.level for name, logger in loggers.items()}
    try:
        with warnings.catch_warnings():
            for pattern in _SPURIOUS_WARNINGS:
                warnings.filterwarnings("ignore", message=pattern)
            warnings.showwarning = functools.partial(_show_warning, prog)
            for logger in loggers.values():
                logger.setLevel(logging.ERROR)
            yield
    finally:
        for name, logger in loggers.items():
            logger.setLevel(levels[name])


def _run_filtered(prog):
    """This process's own command line again, as a child whose stderr is filtered here;
    returns its exit status (128 + N for a child killed by signal N, as a shell says).

    The filter lives in this parent, not in a thread of the process that runs TensorFlow,
    so whatever the child prints before it dies (an abort's ``Check failed``) is read to
    the end and passed on. SIGTERM and SIGHUP are handed to the child; SIGINT from a
    terminal reaches both, and only the child acts on it.
    """
    sys.stdout.flush()
    env = dict(os.environ, **{FILTERED_ENV: "1", "TF_CPP_MIN_LOG_LEVEL": "3"})
    env.setdefault("GRPC_VERBOSITY", "ERROR")
    child = subprocess.Popen([sys.executable, *sys.orig_argv[1:]], env=env,
                             stderr=subprocess.PIPE, preexec_fn=_die_with_parent)
    handlers = {sig: signal.signal(sig, lambda n, _: child.send_signal(n))
                for sig in (signal.SIGTERM, signal.SIGHUP)}
    handlers[signal.SIGINT] = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        out = _LogLineFilter(sys.stderr.fileno())
        while data := os.read(child.stderr.fileno(), 1 << 16):
            out.feed(data)
        out.feed(b"", final=True)
        code = child.wait()
    finally:
        for sig, handler in handlers.items():
            signal.signal(sig, handler)
    if code < 0:
        name = signal.Signals(-code).name
        print(f"{prog}: error: the process was killed by {name}" +
              (" (a crash inside TensorFlow or another library: the lines above say why)"
               if -code in (signal.SIGABRT, signal.SIGSEGV, signal.SIGBUS, signal.SIGFPE,
                            signal.SIGILL) else ""), file=sys.stderr)
        return 128 - code
    return code


def _die_with_parent():
    # A child left running by a killed parent would hold its ports (``serve``): Linux's
    # PR_SET_PDEATHSIG ends it with the parent; elsewhere this does nothing.
    try:
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # 1: PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def _show_warning(prog, message, category, filename, lineno, file=None, line=None):
    print(f"{prog}: warning: {' '.join(str(message).split())}", file=file or sys.stderr)


class _LogLineFilter:
    """Copies a child's stderr to ``out_fd``, dropping C++ log lines below FATAL.

    Decided on each line's first bytes, so progress bars (``\\r`` lines) and
    prompts pass at once; only what could still become a log line waits.
    """

    # In a template, '#' stands for a digit and '%' for a severity letter other than F:
    # FATAL lines ("Check failed: ...") are why a process died, and always pass.
    _TEMPLATES = (b"####-##-## ##:##:##.######: %",  # TSL: 2026-11-30 09:43:18.713805: E ...
                  b"%#### ##:##:",  # abseil: I1114 09:32:22.28 ..., before init I0000 00:00:1718...
                  b"WARNING: All log messages before absl::InitializeLog()",
                  # Beam's worker processes (prepare --runner beam), before their options apply
                  b"WARNING:root:apitools not found", b"INFO:__main__:Logging handler created",
                  b"WARNING:__main__:No semi_persistent_directory found",
                  b"WARNING:apache_beam.options.pipeline_options:Discarding unparseable args: "
                  b"['--direct_runner_use_stacked_bundle'")
    _CONTINUATIONS = (b"\t", b"To enable the following instructions")

    def __init__(self, out_fd):
        self.out, self.buf, self.mode, self.after_drop = out_fd, b"", "start", False

    def feed(self, data, final=False):
        out = []
        for piece in re.split(rb"([\r\n])", data):
            if piece in (b"\n", b"\r"):
                if self.mode == "start":
                    self.mode = "pass" if self._decide(done=True) != "drop" else "drop"
                    if self.mode == "pass":
                        out.append(self.buf)
                if self.mode == "pass":
                    out.append(piece)
                self.after_drop = self.mode == "drop"
                self.mode, self.buf = "start", b""
            elif piece:
                if self.mode == "start":
                    self.buf += piece
                    decision = self._decide(done=False)
                    if decision != "wait":
                        self.mode = decision
                        if decision == "pass":
                            out.append(self.buf)
                        self.buf = b""
                elif self.mode == "pass":
                    out.append(piece)
        if final and self.mode == "start" and self._decide(done=True) != "drop":
            out.append(self.buf)
        data = b"".join(out)
        while data:
            data = data[os.write(self.out, data):]

    def _decide(self, done):
        """'drop', 'pass', or 'wait' for more of the line."""
        buf = self.buf
        templates = self._TEMPLATES + (self._CONTINUATIONS if self.after_drop else ())
        maybe = False
        for t in templates:
            n = min(len(t), len(buf))
            if all(_fits(t[i], buf[i]) for i in range(n)):
                if len(buf) >= len(t):
                    return "drop"
                maybe = True
        return "wait" if maybe and not done else "pass"


def _fits(template_char, char):
    if template_char == ord("#"):
        return 48 <= char <= 57
    if template_char == ord("%"):
        return char in b"IWE"
    return template_char == char


if __name__ == "__main__":
    sys.exit(main())
