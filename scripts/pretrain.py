"""Pretrain a TCN and export it: ``python scripts/pretrain.py`` (defaults run on a laptop CPU).

Same options as ``labquake pretrain``; see ``labquake_tf/jobs/pretrain.py``.
"""

import sys

# labquake_tf.cli, not the job module: the CLI quiets TensorFlow before importing it.
from labquake_tf.cli import main

if __name__ == "__main__":
    sys.exit(main(["pretrain", *sys.argv[1:]], filter_stderr=True))
