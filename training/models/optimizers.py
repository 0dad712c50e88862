"""Optimisers for the sampled loss's row-sparse gradients (docs/SCALE.md).

With the sampled loss a batch touches a few thousand rows of the two catalogue-sized matrices;
a dense Adam step over every row would cost more than the batch. `RowAdam` is torch's
SparseAdam (the same update, the same per-parameter step count, rows a batch did not touch left
as they are) written as a handful of dense row gathers and scatters, several times cheaper per
step than SparseAdam's sparse-tensor arithmetic at 100k items, and with the L2 penalty's
gradient λθ added to the touched rows (the lazy form of Adam's coupled weight decay).
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch


class RowAdam(torch.optim.Optimizer):
    """Adam on the rows of each parameter that its row-sparse gradient touches."""

    def __init__(
        self,
        params: Iterable[torch.Tensor],
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0.0,
    ):
        defaults = {"lr": lr, "betas": betas, "eps": eps, "weight_decay": weight_decay}
        super().__init__(params, defaults)

    @torch.no_grad()
    def step(self, closure=None):  # type: ignore[override]
        assert closure is None, "RowAdam takes no closure"
        for group in self.param_groups:
            beta1, beta2 = group["betas"]
            for param in group["params"]:
                if param.grad is None:
                    continue
                if not param.grad.is_sparse:
                    raise RuntimeError("RowAdam takes row-sparse gradients; use Adam for dense")
                grad = param.grad.coalesce()
                rows, values = grad.indices()[0], grad.values()
                state = self.state[param]
                if not state:
                    state["step"] = 0
                    state["exp_avg"] = torch.zeros_like(param)
                    state["exp_avg_sq"] = torch.zeros_like(param)
                state["step"] += 1
                current = param.index_select(0, rows)
                if group["weight_decay"]:
                    values = values.add(current, alpha=group["weight_decay"])
                exp_avg = state["exp_avg"].index_select(0, rows).lerp_(values, 1 - beta1)
                exp_avg_sq = state["exp_avg_sq"].index_select(0, rows)
                exp_avg_sq.mul_(beta2).addcmul_(values, values, value=1 - beta2)
                state["exp_avg"].index_copy_(0, rows, exp_avg)
                state["exp_avg_sq"].index_copy_(0, rows, exp_avg_sq)
                step = state["step"]
                size = group["lr"] * math.sqrt(1 - beta2**step) / (1 - beta1**step)
                update = exp_avg.div_(exp_avg_sq.sqrt_().add_(group["eps"]))
                param.index_copy_(0, rows, current.sub_(update, alpha=size))
        return None


class Pair:
    """Two optimisers stepped as one (row-sparse and dense parameters)."""

    def __init__(self, *optimizers: torch.optim.Optimizer):
        self.optimizers = optimizers

    def zero_grad(self) -> None:
        for optimizer in self.optimizers:
            optimizer.zero_grad()

    def step(self) -> None:
        for optimizer in self.optimizers:
            optimizer.step()
