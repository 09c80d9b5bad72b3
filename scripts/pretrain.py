"""Pretrain a TCN and export it: ``python scripts/pretrain.py`` (defaults run on a laptop CPU).

Same options as ``labquake pretrain``; see ``labquake_tf/training/pretrain.py``.
"""

import sys

from labquake_tf.training.pretrain import main

if __name__ == "__main__":
    sys.exit(main())
