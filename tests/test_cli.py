import os
import pathlib
import re
import subprocess
import sys

import pytest

import labquake_tf
from labquake_tf import cli

ROOT = str(pathlib.Path(__file__).resolve().parents[1])


def test_help_lists_every_command(capsys):
    assert cli.main(["--help"]) == 0
    out = capsys.readouterr().out
    for name in cli.COMMANDS:
        assert name in out


def test_unknown_command_exits_2(capsys):
    assert cli.main(["no-such-command"]) == 2
    assert "unknown command" in capsys.readouterr().err


@pytest.mark.parametrize("name", sorted(cli.COMMANDS))
def test_every_command_parses_help(name, capsys):
    with pytest.raises(SystemExit) as exit_:
        cli.main([name, "--help"])
    assert exit_.value.code == 0
    assert f"labquake {name}" in capsys.readouterr().out


def _labquake(*argv, env=None, cwd=None):
    """``labquake ARGV`` as a real process (the console script's ``main()``), quiet by default."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("TF_CPP_MIN_LOG_LEVEL", cli.VERBOSE_ENV)} | (env or {})
    env["PYTHONPATH"] = os.pathsep.join([ROOT, env.get("PYTHONPATH", "")])
    return subprocess.run([sys.executable, "-c", "import sys; from labquake_tf import cli; "
                           "sys.exit(cli.main())", *argv], capture_output=True, text=True,
                          env=env, cwd=cwd, timeout=300)


def test_help_and_version_print_exactly_these_lines():
    expected = ["usage: labquake [--verbose] COMMAND [options]", "       labquake --version", "",
                "commands:"]
    expected += [f"  {name:<16} {help_}" for name, (_, help_) in cli.COMMANDS.items()]
    expected += ["", "Run 'labquake COMMAND --help' for a command's options.",
                 "--verbose (or LABQUAKE_VERBOSE=1): tracebacks with errors, TensorFlow's logs.",
                 "Exit status: 0 done, 1 bad input data, 2 bad options, 70 a bug."]
    done = _labquake("--help")
    assert (done.returncode, done.stderr) == (0, "")
    assert done.stdout.splitlines() == expected
    done = _labquake("--version")
    assert (done.returncode, done.stderr) == (0, "")
    assert done.stdout.splitlines() == [f"labquake {labquake_tf.__version__}"]


TF_LOG_LINE = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d+: [IWEF] |[IWEF]\d{4} |WARNING: All "
                         r"log messages before absl|To enable the following instructions)|"
                         r"OUT_OF_RANGE|oneDNN|TensorRT|cuFFT|cuDNN|cuBLAS", re.M)


def test_a_command_prints_no_tensorflow_logs_unless_verbose(tmp_path):
    from tests.test_cli_errors import _columns, _write_csv

    record = _write_csv(tmp_path / "r.csv", _columns())
    done = _labquake("prepare", "--dataset", str(record), "--out", str(tmp_path / "p"))
    assert (done.returncode, done.stderr) == (0, "")
    assert '"n_events": 19' in done.stdout and not TF_LOG_LINE.search(done.stdout)
    # The same command with --verbose shows what was hidden (TensorFlow logs on import),
    # so the quiet run above is a real test. Its bad --split ends in the error line.
    done = _labquake("prepare", "--dataset", str(record), "--out", str(tmp_path / "v"),
                     "--split", "1,x", "--verbose")
    assert TF_LOG_LINE.search(done.stderr), done.stderr
    assert done.returncode == 2
    assert done.stderr.splitlines()[-1].startswith("labquake prepare: error: split ratios")


NOISE = (b"WARNING: All log messages before absl::InitializeLog() is called are written to STDERR\n"
         b"I0000 00:00:1732960000.123456   4242 cuda_executor.cc:1015] successful NUMA node read\n"
         b"2026-11-30 09:43:18.739637: E external/local_xla/xla/stream_executor/cuda/cuda_dnn.cc"
         b":10575] Unable to register cuDNN factory\n"
         b"2026-11-30 09:44:23.789647: W tensorflow/core/framework/local_rendezvous.cc:404] Local "
         b"rendezvous is aborting with status: OUT_OF_RANGE: End of sequence\n"
         b"\t [[{{node IteratorGetNext}}]]\n")
KEPT = b"simulate [#####     ]  50%\rsimulate [##########] 100%\nplain 2026 words\n\tindented\n"


def test_the_stderr_filter_drops_cxx_log_lines_at_any_chunking(tmp_path):
    data = NOISE + KEPT + NOISE
    for chunk in (1, 7, len(data)):
        with open(tmp_path / "out", "wb") as f:
            filt = cli._LogLineFilter(f.fileno())
            for i in range(0, len(data), chunk):
                filt.feed(data[i:i + chunk])
            filt.feed(b"", final=True)
        assert (tmp_path / "out").read_bytes() == KEPT, chunk


def test_a_real_process_filters_lines_that_ignore_tf_cpp_min_log_level(tmp_path):
    # Lines XLA and abseil print before absl::InitializeLog() ignore TF_CPP_MIN_LOG_LEVEL
    # (GPU builds print them on import); the command's own stderr and error line pass.
    (tmp_path / "noisy_cmd.py").write_text(
        "import os, sys\n"
        "from labquake_tf.errors import DataError\n"
        "def add_arguments(parser):\n    pass\n"
        "def run(args):\n"
        f"    os.write(2, {NOISE!r})\n"
        f"    sys.stderr.write({KEPT.decode()!r})\n"
        "    raise DataError('r.csv row 3, column Time: oops')\n")
    code = ("import sys; sys.path.insert(0, sys.argv.pop(1)); from labquake_tf import cli; "
            "cli.COMMANDS['noisy'] = ('noisy_cmd', 'test'); sys.exit(cli.main())")
    env = {k: v for k, v in os.environ.items() if k not in (cli.VERBOSE_ENV, cli.FILTERED_ENV)}
    env["PYTHONPATH"] = os.pathsep.join([ROOT, env.get("PYTHONPATH", "")])
    run = [sys.executable, "-c", code, str(tmp_path), "noisy"]
    done = subprocess.run(run, capture_output=True, env=env, timeout=60)
    assert done.returncode == 1
    assert done.stderr == KEPT + b"labquake noisy: error: r.csv row 3, column Time: oops\n"
    done = subprocess.run(run + ["--verbose"], capture_output=True, env=env, timeout=60)
    assert done.stderr.startswith(NOISE + KEPT + b"Traceback")


FATAL = (b"2026-11-30 09:44:23.789647: F tensorflow/core/framework/tensor_shape.cc:45] Check "
         b"failed: NDIMS == dims() (2 vs. 3)\n")


def test_a_crash_inside_tf_prints_its_own_message_and_the_signal(tmp_path):
    # What TF does on a failed CHECK: a FATAL log line, then abort(). The parent that
    # filters stderr reads the child's last words and names the signal.
    (tmp_path / "crash_cmd.py").write_text(
        "import os\n"
        "def add_arguments(parser):\n    pass\n"
        "def run(args):\n"
        f"    os.write(2, {NOISE!r} + {FATAL!r})\n"
        "    os.abort()\n")
    code = ("import sys; sys.path.insert(0, sys.argv.pop(1)); from labquake_tf import cli; "
            "cli.COMMANDS['crash'] = ('crash_cmd', 'test'); sys.exit(cli.main())")
    env = {k: v for k, v in os.environ.items() if k not in (cli.VERBOSE_ENV, cli.FILTERED_ENV)}
    env["PYTHONPATH"] = os.pathsep.join([ROOT, env.get("PYTHONPATH", "")])
    done = subprocess.run([sys.executable, "-c", code, str(tmp_path), "crash"],
                          capture_output=True, env=env, timeout=60)
    assert done.returncode == 128 + 6  # SIGABRT, as a shell reports it
    assert done.stderr.startswith(FATAL)  # the noise before it dropped, the reason kept
    assert done.stderr.splitlines()[-1].startswith(
        b"labquake crash: error: the process was killed by SIGABRT (a crash inside")


def test_the_filtering_parent_hands_sigterm_to_the_command(tmp_path):
    (tmp_path / "wait_cmd.py").write_text(
        "import sys, time\n"
        "def add_arguments(parser):\n    pass\n"
        "def run(args):\n"
        "    print('ready', flush=True)\n"
        "    time.sleep(60)\n")
    code = ("import sys; sys.path.insert(0, sys.argv.pop(1)); from labquake_tf import cli; "
            "cli.COMMANDS['wait'] = ('wait_cmd', 'test'); sys.exit(cli.main())")
    env = {k: v for k, v in os.environ.items() if k not in (cli.VERBOSE_ENV, cli.FILTERED_ENV)}
    env["PYTHONPATH"] = os.pathsep.join([ROOT, env.get("PYTHONPATH", "")])
    proc = subprocess.Popen([sys.executable, "-c", code, str(tmp_path), "wait"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    try:
        assert proc.stdout.readline() == b"ready\n"
        proc.terminate()
        assert proc.wait(timeout=30) == 128 + 15
        assert b"killed by SIGTERM" in proc.stderr.read()
    finally:
        proc.kill()
        proc.wait()


def test_warnings_are_one_line_and_known_spurious_ones_are_dropped(monkeypatch, capsys):
    import warnings

    from labquake_tf.data import prepare

    def run(args):
        warnings.warn("Your input ran out of data; interrupting training.")
        warnings.warn("seq_len=600 exceeds the receptive field (253 steps)\nof the model")
        return 0

    monkeypatch.setattr(prepare, "run", run)
    assert cli.main(["prepare", "--dataset", "x", "--out", "y"]) == 0
    assert capsys.readouterr().err.splitlines() == [
        "labquake prepare: warning: seq_len=600 exceeds the receptive field (253 steps) of the model"]


@pytest.mark.parametrize("error,code,line", [
    (OSError(28, "No space left on device", "/runs/x/model.keras"), 1,
     "labquake prepare: error: /runs/x/model.keras: No space left on device"),
    (KeyError("shear_stress"), 70, None),  # raised outside labquake_tf: a bug
    (RuntimeError("boom"), 70, None),
])
def test_errors_sorted_into_user_errors_and_bugs(error, code, line, monkeypatch, capsys):
    from labquake_tf.data import prepare

    def run(args):
        raise error

    monkeypatch.setattr(prepare, "run", run)
    assert cli.main(["prepare", "--dataset", "x", "--out", "y"]) == code
    err = capsys.readouterr().err
    if line:
        assert err.splitlines() == [line]
    else:
        assert err.startswith("Traceback") and "a bug in labquake_tf" in err.splitlines()[-1]
