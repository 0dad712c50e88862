"""`World.computed_by_main` under torchrun (2 ranks), for tests/test_distributed.py: each rank
writes whether it computed and what it received.

    torchrun --nproc_per_node 2 -m tests.ddp_broadcast OUT_FOLDER
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import scipy.sparse as sp
import torch

from training.models import neighbours
from training.models.distributed import join, leave
from training.models.linear_path import ease_start

SHAPE = (30, 30)


def train() -> sp.csr_matrix:
    matrix = sp.random(40, SHAPE[1], density=0.2, format="csr", random_state=3, dtype=np.float32)
    matrix.data[:] = 1.0
    return matrix


def failing() -> torch.Tensor:
    raise ValueError("Singular matrix")  # as numpy's LinAlgError, a ValueError


if __name__ == "__main__":
    world = join("cpu")
    out = Path(sys.argv[1])
    if sys.argv[2:] == ["fail"]:  # rank 0's error ends every rank, as `cddae` handles it
        try:
            world.computed_by_main(failing, SHAPE)
        except ValueError:
            sys.exit(leave(2))
        sys.exit(leave(0))
    if sys.argv[2:] == ["disagree"]:  # rank 1 announces a shape rank 0 did not compute
        shape = SHAPE if world.rank == 0 else (SHAPE[0] + 1, SHAPE[1])
        try:
            world.computed_by_main(lambda: ease_start(train(), 5.0), shape)
        except ValueError:
            (out / f"refused{world.rank}").touch()
            sys.exit(leave(3))
        sys.exit(leave(0))
    calls: list[str] = []

    def ease() -> torch.Tensor:
        calls.append("ease")
        return ease_start(train(), 5.0)

    def similar() -> torch.Tensor:
        calls.append("neighbours")
        return neighbours.similarities(train(), 10.0)

    got = {
        "ease": world.computed_by_main(ease, SHAPE).numpy(),
        "neighbours": world.computed_by_main(similar, SHAPE).numpy(),
    }
    np.savez(out / f"rank{world.rank}.npz", calls=np.array(calls, dtype=str), **got)
    sys.exit(leave(0))
