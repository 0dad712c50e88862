"""Training under PyTorch's launcher: DistributedDataParallel over shares of every batch.

`torchrun --nproc_per_node N -m training.cli train …` starts N processes with RANK, WORLD_SIZE
and a rendezvous in their environment. The first fit joins the process group (gloo on CPU,
nccl on CUDA, each process on its LOCAL_RANK's device). Every rank draws the same seeded user
permutation and takes its share of each batch; DistributedDataParallel averages the gradients
after each backward, so every rank steps the same weights — the sampled loss's row-sparse ones
included. Rank 0 alone scores validation (its verdict broadcast, so all ranks stop together),
evaluates on test, fits the cold-item head and writes the checkpoint. A plain run is a world of
one: none of this applies.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from training.models.autoencoders import Autoencoder, Bag
from training.models.sampled_loss import Sampling


@dataclass(frozen=True)
class World:
    rank: int = 0
    size: int = 1

    @property
    def main(self) -> bool:
        """The rank that evaluates and writes."""
        return self.rank == 0

    def share(self, batch: np.ndarray) -> tuple[np.ndarray, float]:
        """This rank's part of a batch's users — near-equal, never empty (a batch smaller than
        the world repeats users), so every rank takes every step the all-reduce waits for — and
        the weight of its mean loss: DDP averages the ranks' gradients, and weighting each
        share's mean by its size makes that average the whole batch's mean when the shares
        differ by one user."""
        if self.size == 1:
            return batch, 1.0
        if len(batch) < self.size:
            batch = np.resize(batch, self.size)
        mine = np.array_split(batch, self.size)[self.rank]
        return mine, len(mine) * self.size / len(batch)

    def from_main(self, value: Any) -> Any:
        """Rank 0's `value` on every rank."""
        if self.size == 1:
            return value
        box = [value]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def gather(self, value: Any) -> list[Any]:
        """Every rank's `value`, in rank order, on every rank."""
        if self.size == 1:
            return [value]
        values: list[Any] = [None] * self.size
        dist.all_gather_object(values, value)
        return values

    def barrier(self) -> None:
        if self.size > 1:
            dist.barrier()


def launched() -> bool:
    """Whether torchrun started this process in a world of more than one."""
    size = os.environ.get("WORLD_SIZE", "1")
    if not size.isdigit():
        raise ValueError(
            f"WORLD_SIZE must be a count of processes (torchrun sets it); got {size!r}"
        )
    return int(size) > 1


def current() -> World:
    """The world this process is in (joined by `join`), a world of one otherwise."""
    if dist.is_available() and dist.is_initialized():
        return World(dist.get_rank(), dist.get_world_size())
    return World()


def join(device: torch.device | str = "cpu") -> World:
    """Join torchrun's process group once (a no-op outside torchrun); `device` as
    `train.device` names it (cpu, cuda, auto)."""
    if not launched() or (dist.is_available() and dist.is_initialized()):
        return current()
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(device)
    if device.type == "cuda":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return current()


class _TrainingStep(nn.Module):
    """The autoencoder's loss as a module's forward: what DistributedDataParallel wraps."""

    def __init__(self, net: Autoencoder):
        super().__init__()
        # DDP all-reduces a gradient as row-sparse only where an Embedding with sparse=True
        # holds the parameter. These views, registered before the network so that DDP counts
        # the shared parameters as theirs, declare the two catalogue-sized matrices so.
        views = []
        if net.sparse_grads:
            for parameter in (net.item_in, net.out.weight):
                view = nn.Embedding(1, 1, sparse=True)
                view.weight = parameter
                views.append(view)
        self.sparse_views = nn.ModuleList(views)
        self.net = net

    def forward(self, items, weights, offsets, user_features, user_index, sampling):
        return self.net.loss(Bag(items, weights, offsets), user_features, user_index, sampling)


Loss = Callable[[Bag, torch.Tensor, torch.Tensor, Sampling | None], torch.Tensor]


def loss_function(net: Autoencoder, world: World) -> Loss:
    """`net.loss`, synchronised across the world's ranks when there is more than one."""
    if world.size == 1:
        return net.loss
    # Buffers (the item profiles) never change: no broadcast before every step. Which
    # parameters a step uses depends on the kind and the options, never on the step: a static
    # graph, which DDP learns in the first step (no search of the graph every step after).
    wrapped = DistributedDataParallel(
        _TrainingStep(net), forward_sync_buffers=False, static_graph=True
    )

    def loss(bag: Bag, user_features, user_index, sampling) -> torch.Tensor:
        return wrapped(bag.items, bag.weights, bag.offsets, user_features, user_index, sampling)

    return loss
