"""`cddae train` under torchrun where rank 1 alone reads a tiny item × item memory limit (nodes
with different memory), for tests/test_distributed.py: the ranks must follow rank 0's decision
to build the linear path and the neighbours, not wait in different collectives.

    torchrun --nproc_per_node 2 -m tests.ddp_limited TRAIN_ARGS...
"""

from __future__ import annotations

import os
import sys

from training.cli import main
from training.models.baselines import ITEM_ITEM_LIMIT_ENV

if __name__ == "__main__":
    if os.environ.get("RANK") == "1":
        os.environ[ITEM_ITEM_LIMIT_ENV] = "0.000001"
    sys.exit(main(sys.argv[1:]))
