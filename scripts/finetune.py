"""Fine-tune a pretrained TCN: ``python scripts/finetune.py --from RUN --dataset p4581 ...``.

Same options as ``labquake finetune``; see ``labquake_tf/jobs/finetune.py``.
"""

import sys

# labquake_tf.cli, not the job module: the CLI quiets TensorFlow before importing it.
from labquake_tf.cli import main

if __name__ == "__main__":
    sys.exit(main(["finetune", *sys.argv[1:]], filter_stderr=True))
