"""The cold-item head (DropoutNet-style): an item's output-layer row and bias from its profile.

The served network has one learnt output row per trained item; an item created after the
training has none. The head maps the item's encoded profile (the item spec: genres, year
bands) to a row and a bias that stand in for learnt ones. It is trained after the network is
fit, on the frozen network, so the warm model is unchanged: each step a share of the catalogue
is "cold" — gone from the users' input histories (a new item is in nobody's input) and its
output rows replaced by the head's — and the loss is the model's own reconstruction objective
over the batch; only the head learns. A share of the cold items also lose their profile, so
that the head's answer for an empty profile is trained too (an average item, not noise).

Users are visited in mini-batches from a bounded sample, never as a users × items matrix.
"""

from __future__ import annotations

import itertools
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import scipy.sparse as sp
import torch
from torch import nn
from torch.nn import functional as F

from training.models.autoencoders import Autoencoder, Bag, reconstruction_cells
from training.models.options import Options
from training.models.sampled_loss import Sampling, sampled_item_loss

Layers = list[tuple[np.ndarray, np.ndarray]]  # (weight in × out, bias), ReLU between


@dataclass
class ColdHeadConfig(Options):
    """Chosen on a validation split of warm items (docs/MODELS.md, "New items")."""

    what = "cold-item head option"

    hidden: int = 256  # 0: a linear head
    cold_share: float = 0.25  # share of the catalogue cold at each step (DropoutNet's rate)
    empty_share: float = 0.1  # share of the cold items whose profile is hidden as well
    epochs: int = 30  # passes over the user sample
    batch_size: int = 128
    lr: float = 1e-3
    l2: float = 1e-4
    max_users: int = 20_000  # users sampled for the head's training: bounded at any scale
    seed: int = 0

    def __post_init__(self) -> None:
        if not 0.0 < self.cold_share < 1.0 or not 0.0 <= self.empty_share < 1.0:
            raise ValueError("cold_share must be in (0, 1), empty_share in [0, 1)")
        if self.hidden < 0 or self.epochs < 0 or self.batch_size < 1 or self.max_users < 1:
            raise ValueError("hidden and epochs must be ≥ 0, batch_size and max_users ≥ 1")


class ColdHead(nn.Module):
    """features → [row (width), bias]: one hidden ReLU layer, or linear when `hidden` is 0."""

    def __init__(self, features: int, width: int, hidden: int):
        super().__init__()
        widths = [features, hidden, width + 1] if hidden else [features, width + 1]
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in itertools.pairwise(widths))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for k, layer in enumerate(self.layers):
            x = layer(x)
            if k < len(self.layers) - 1:
                x = torch.relu(x)
        return x

    @torch.no_grad()
    def start_at_average(self, rows: torch.Tensor, biases: torch.Tensor) -> None:
        """Output the catalogue's mean row and bias for any input at first: small last weights,
        the mean as the last bias."""
        last = self.layers[-1]
        last.weight.mul_(0.1)
        last.bias.copy_(torch.cat([rows.mean(dim=0), biases.mean().reshape(1)]))

    def arrays(self) -> Layers:
        """As service.item_path stores it: weights `in × out`."""
        return [
            (layer.weight.detach().cpu().numpy().T.copy(), layer.bias.detach().cpu().numpy())
            for layer in self.layers
        ]

    @classmethod
    def from_arrays(cls, layers: Layers) -> ColdHead:
        features, out = layers[0][0].shape[0], layers[-1][0].shape[1]
        head = cls(features, out - 1, layers[0][0].shape[1] if len(layers) > 1 else 0)
        with torch.no_grad():
            for layer, (weight, bias) in zip(head.layers, layers, strict=True):
                layer.weight.copy_(torch.from_numpy(np.asarray(weight)).t())
                layer.bias.copy_(torch.from_numpy(np.asarray(bias)))
        return head

    def describe(self) -> str:
        widths = [self.layers[0].in_features, *(layer.out_features for layer in self.layers)]
        return "→".join(map(str, widths)) + (" (ReLU)" if len(self.layers) > 1 else " (linear)")


def fit_cold_head(
    net: Autoencoder,
    train: sp.csr_matrix,
    user_features: np.ndarray,
    item_features: np.ndarray,
    config: ColdHeadConfig,
    sampling: Sampling | None = None,
) -> tuple[ColdHead, dict[str, Any]]:
    """Train a head on the frozen `net` (left in eval mode, unchanged); return it and figures."""
    started = time.perf_counter()
    device = net.out.weight.device
    generator = torch.Generator().manual_seed(config.seed)
    rng = np.random.default_rng(config.seed)
    n = net.n_items
    rows, biases = net.out.weight[:n].detach(), net.out.bias[:n].detach()
    features = torch.from_numpy(np.ascontiguousarray(item_features, np.float32)).to(device)
    torch.manual_seed(config.seed)
    head = ColdHead(features.shape[1], rows.shape[1], config.hidden).to(device)
    head.start_at_average(rows, biases)
    optimizer = torch.optim.Adam(head.parameters(), lr=config.lr, weight_decay=config.l2)
    users = np.flatnonzero(np.diff(train.indptr) > 0)
    if len(users) > config.max_users:
        users = np.sort(rng.choice(users, config.max_users, replace=False))
    net.eval()
    losses: list[float] = []
    for _ in range(config.epochs):
        order = rng.permutation(users)
        total = 0.0
        for start in range(0, len(order), config.batch_size):
            batch = order[start : start + config.batch_size]
            cold = torch.rand(n, generator=generator) < config.cold_share
            empty = torch.rand(n, generator=generator) < config.empty_share
            loss = _step_loss(
                net, head, train[batch], user_features[batch], batch, features,
                cold.to(device), (cold & empty).to(device), rows, biases, sampling, generator,
            )  # fmt: skip
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            total += loss.item() * len(batch)
        losses.append(total / max(len(users), 1))
    head.eval()
    figures = {
        "users": len(users),
        "steps": config.epochs * -(-len(users) // config.batch_size),
        "loss_first_epoch": round(losses[0], 4) if losses else None,
        "loss_last_epoch": round(losses[-1], 4) if losses else None,
        "seconds": round(time.perf_counter() - started, 2),
    }
    return head, figures


def _step_loss(
    net: Autoencoder,
    head: ColdHead,
    history: sp.csr_matrix,
    user_features: np.ndarray,
    users: np.ndarray,
    features: torch.Tensor,
    cold: torch.Tensor,
    empty: torch.Tensor,
    rows: torch.Tensor,
    biases: torch.Tensor,
    sampling: Sampling | None,
    generator: torch.Generator,
) -> torch.Tensor:
    """One batch: the cold items out of the input, the head's rows in their place at the output."""
    device = rows.device
    bag = Bag.from_csr(history).to(device)
    warm = ~cold[bag.items]
    keep = Bag(bag.items, bag.weights * warm, bag.offsets)  # weight 0: not in the input
    with torch.no_grad():
        hidden = net.hidden(
            *net.bag_input(keep),
            torch.from_numpy(np.asarray(user_features, np.float32)).to(device),
            torch.from_numpy(np.asarray(users, np.int64)).to(device),
        )
    if sampling is not None and sampling.negatives:
        objective = (net.config.output, net.config.loss)
        return _sampled_loss(hidden, bag, head, features, cold, empty, rows, biases, sampling,
                             objective, generator)  # fmt: skip
    cold_items = torch.nonzero(cold).flatten()
    predicted = head(features[cold_items] * (~empty[cold_items]).unsqueeze(1))
    output, loss = net.config.output, net.config.loss
    weight = rows.index_put((cold_items,), predicted[:, :-1])
    bias = biases.index_put((cold_items,), predicted[:, -1])
    logits = F.linear(hidden, weight, bias)
    cells = reconstruction_cells(logits, bag.dense(net.n_items), output, loss)
    return cells.sum(dim=1).mean()


def _sampled_loss(
    hidden: torch.Tensor,
    bag: Bag,
    head: ColdHead,
    features: torch.Tensor,
    cold: torch.Tensor,
    empty: torch.Tensor,
    rows: torch.Tensor,
    biases: torch.Tensor,
    sampling: Sampling,
    objective: tuple[str, str],
    generator: torch.Generator,
) -> torch.Tensor:
    """The trainer's sampled loss with the cold columns' rows from the head: the head runs on
    the batch's cold columns only, so a step costs the same on any catalogue."""

    def logits_of(columns: torch.Tensor) -> torch.Tensor:
        at = torch.nonzero(cold[columns]).flatten()  # places of the cold columns
        items = columns[at]
        predicted = head(features[items] * (~empty[items]).unsqueeze(1))
        weight = rows[columns].index_put((at,), predicted[:, :-1])
        bias = biases[columns].index_put((at,), predicted[:, -1])
        return F.linear(hidden, weight, bias)

    return sampled_item_loss(
        logits_of, bag.rows, bag.items, bag.weights, len(bag.offsets), sampling, objective,
        generator=generator,
    )  # fmt: skip


def head_fits(net: Autoencoder | None, item_features: np.ndarray) -> bool:
    """Whether a model gets a head: a trained network and items with encoded profiles."""
    return net is not None and item_features.ndim == 2 and item_features.shape[1] > 0
