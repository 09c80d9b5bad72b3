"""KerasTuner search over the TCN: ``python scripts/tune.py --data DIR [options]``.

Same options as ``labquake tune``; see ``labquake_tf/jobs/tune.py``.
"""

import sys

from labquake_tf.cli import main

if __name__ == "__main__":
    sys.exit(main(["tune", *sys.argv[1:]], filter_stderr=True))
