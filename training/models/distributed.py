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
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from training.models.autoencoders import Autoencoder, Bag


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

    def computed_by_main(
        self,
        compute: Callable[[], torch.Tensor],
        shape: tuple[int, ...],
        device: torch.device | str = "cpu",
    ) -> torch.Tensor:
        """`compute()` — a float32 tensor of `shape` — run on rank 0 alone and received by
        every rank, on `device`. For the items × items matrices (EASE's closed form, the
        neighbours' similarities): each rank computing its own held the closed form's float64
        working copies once per rank on one machine, and split its cores between them."""
        if self.main:
            tensor = compute().to(device=device, dtype=torch.float32).contiguous()
        # Every rank sees rank 0's shape and every rank's announcement, so all raise or none.
        shapes = self.gather((tuple(tensor.shape) if self.main else None, tuple(shape)))
        received = shapes[0][0]
        if any(announced != received for _, announced in shapes):
            raise ValueError(f"computed {received}, announced {[a for _, a in shapes]}")
        if self.size == 1:
            return tensor
        if not self.main:
            tensor = torch.empty(received, dtype=torch.float32, device=device)
        dist.broadcast(tensor, src=0)
        return tensor

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


def leave(code: int = 0) -> int:
    """A rank's way out: wait for the others, leave the group, and end the process here with
    `code`. The interpreter's own teardown, with gloo's threads still alive, aborted ranks at
    exit now and then ("terminate called without an active exception", more often on a busy
    machine), failing a finished run. Outside torchrun: returns `code`."""
    if not (dist.is_available() and dist.is_initialized()):
        return code
    if code != 0:  # failed: the others may wait in another collective than a barrier (a
        # broadcast from this rank) until gloo's 30-minute timeout; torchrun ends them now
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    dist.barrier()  # no rank leaves while another still talks to it
    dist.destroy_process_group()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


class _Forward(nn.Module):
    """The autoencoder's loss as a module's forward: what DistributedDataParallel wraps."""

    def __init__(self, net: Autoencoder):
        super().__init__()
        self.net = net

    def forward(self, items, weights, offsets, user_features, user_index, sampling):
        return self.net.loss(Bag(items, weights, offsets), user_features, user_index, sampling)


class TrainingStep:
    """One process's loss and gradients, synchronised across the world's ranks.

    The dense gradients are DistributedDataParallel's. The sampled loss's row-sparse ones (the
    two catalogue-sized matrices) are left out of it — nccl has no sparse all-reduce, and gloo's
    crashed here at 1M users — and reduced by `reduce_sparse` after the backward: every rank's
    touched rows and their gradients gathered (two all-gathers, any backend), summed per row
    and averaged, as DDP averages."""

    def __init__(self, net: Autoencoder, world: World):
        self.net, self.world = net, world
        catalogue = (net.item_in, net.out.weight)
        self.sparse = [p for p in catalogue if p.requires_grad] if net.sparse_grads else []
        self._forward: Callable[..., torch.Tensor] = _Forward(net)
        if world.size == 1:
            return
        if self.sparse:
            names = ["net.item_in", "net.out.weight"]
            DistributedDataParallel._set_params_and_buffers_to_ignore_for_model(
                self._forward, names
            )
            for parameter in self.sparse:  # DDP broadcasts the rest at construction
                dist.broadcast(parameter.data, src=0)
        # Buffers (the item profiles) never change: no broadcast before every step. Which
        # parameters a step uses depends on the kind and the options, never on the step: a
        # static graph, which DDP learns in the first step (no search of the graph after).
        self._forward = DistributedDataParallel(
            self._forward, forward_sync_buffers=False, static_graph=True
        )

    def loss(self, bag: Bag, user_features, user_index, sampling) -> torch.Tensor:
        return self._forward(
            bag.items, bag.weights, bag.offsets, user_features, user_index, sampling
        )

    def reduce_sparse(self) -> None:
        """Average the row-sparse gradients across the ranks (a no-op in a world of one)."""
        if self.world.size == 1:
            return
        for parameter in self.sparse:
            parameter.grad = _all_reduce_rows(parameter.grad, self.world.size)


def _all_reduce_rows(grad: torch.Tensor | None, size: int) -> torch.Tensor:
    """Every rank's row-sparse gradient, summed per row and divided by the world's size."""
    assert grad is not None and grad.is_sparse, "the sampled loss gives row-sparse gradients"
    grad = grad.coalesce()
    rows, values = grad.indices()[0], grad.values()
    count = torch.tensor([len(rows)], device=rows.device)
    counts = [torch.zeros_like(count) for _ in range(size)]
    dist.all_gather(counts, count)
    most = int(max(int(c) for c in counts))
    padded_rows = rows.new_zeros(most)
    padded_rows[: len(rows)] = rows
    padded_values = values.new_zeros((most, *values.shape[1:]))
    padded_values[: len(rows)] = values
    all_rows = [torch.empty_like(padded_rows) for _ in range(size)]
    all_values = [torch.empty_like(padded_values) for _ in range(size)]
    dist.all_gather(all_rows, padded_rows)
    dist.all_gather(all_values, padded_values)
    kept = [int(c) for c in counts]
    merged_rows = torch.cat([r[:k] for r, k in zip(all_rows, kept, strict=True)])
    merged_values = torch.cat([v[:k] for v, k in zip(all_values, kept, strict=True)]) / size
    # Rows from the ranks' own coalesced gradients: in range by construction.
    merged = torch.sparse_coo_tensor(
        merged_rows[None], merged_values, grad.shape, check_invariants=False
    )
    return merged.coalesce()
