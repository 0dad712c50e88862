"""One optimiser step of the autoencoder on a batch split in two, for tests/test_distributed.py.

Under torchrun (2 ranks) each rank takes its share of the batch (21 and 20 users) through the
trainer's DistributedDataParallel loss, weighted as the trainer weights it; in one process, the
reference is the batch's mean loss, each share's mean weighted by its size.
The weights after the step must agree: DDP averaged the gradients, the dense and the row-sparse.

    torchrun --nproc_per_node 2 -m tests.ddp_step OUT_FOLDER
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import scipy.sparse as sp
import torch

from training.jobs.pipeline import make_recommender
from training.models.autoencoders import Bag
from training.models.distributed import TrainingStep, World, join, leave
from training.models.interface import FitContext

USERS, ITEMS = 41, 50  # shares of 21 and 20 users
CASES = {"dense": 0, "sparse": 20}  # negatives: the full loss, a sampled one (row-sparse)


Weights = dict[str, np.ndarray]


def step(negatives: int, world: World) -> tuple[Weights, Weights]:
    """The weights before the step and after it."""
    rng = np.random.default_rng(0)
    train = sp.random(USERS, ITEMS, density=0.2, format="csr", random_state=1, dtype=np.float32)
    train.data[:] = 1.0
    ctx = FitContext(
        train,
        sp.csr_matrix(train.shape, dtype=np.float32),
        rng.random((USERS, 6)).astype(np.float32),
        rng.random((ITEMS, 4)).astype(np.float32),
        seed=0,
        progress=False,
    )
    model = {"hidden": [16], "corruption": 0.0, "beta": 0.0, "short_history_rate": 0.0,
             "cold_start_rate": 0.0}  # fmt: skip
    recommender = make_recommender("cddae", "default", model, {"negatives": negatives})
    torch.manual_seed(0)
    net = recommender._build(ctx, train)
    sampling = recommender._sampling(train)
    optimizer = recommender._optimizer(net, sampling is not None)
    shares = np.array_split(np.arange(USERS), 2)  # 21 and 20 users

    def loss_of(users: np.ndarray, loss) -> torch.Tensor:
        torch.manual_seed(1)  # the same negatives drawn on each rank and for each share
        bag = Bag.from_csr(train[users])
        features = torch.from_numpy(ctx.user_features[users])
        return loss(bag, features, torch.from_numpy(users.astype(np.int64)), sampling)

    before = _weights(net)
    net.train()
    synchronised = TrainingStep(net, world)
    if world.size > 1:
        mine, weight = world.share(np.arange(USERS))
        loss = loss_of(mine, synchronised.loss) * weight
    else:  # the batch's mean loss: each share's mean weighted by its size
        loss = sum(len(share) * loss_of(share, net.loss) for share in shares) / USERS
    optimizer.zero_grad()
    loss.backward()
    synchronised.reduce_sparse()
    optimizer.step()
    return before, _weights(net)


def _weights(net: torch.nn.Module) -> Weights:
    return {k: v.detach().numpy().copy() for k, v in net.state_dict().items()}


if __name__ == "__main__":
    world = join("cpu")
    for name, negatives in CASES.items():
        _, state = step(negatives, world)
        if world.main:
            np.savez(Path(sys.argv[1]) / f"{name}.npz", **state)
    leave(0)
