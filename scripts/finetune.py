"""Fine-tune a pretrained TCN: ``python scripts/finetune.py --from RUN --dataset p4581 ...``.

Same options as ``labquake finetune``; see ``labquake_tf/training/finetune.py``.
"""

import sys

from labquake_tf.training.finetune import main

if __name__ == "__main__":
    sys.exit(main())
