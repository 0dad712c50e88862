"""DAE, CDAE and CDDAE (SPEC §4) as one configurable autoencoder module.

The module knows nothing of data loading or training loops: it maps a batch of interaction
vectors (plus encoded user features and user indices where the kind uses them) to item logits
and side-information reconstructions, and it computes its own loss.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from torch import nn
from torch.nn import functional as F

from training.options import Options

Kind = Literal["dae", "cdae", "cddae"]
Output = Literal["sigmoid", "softmax"]
Loss = Literal["bce", "cce", "mae", "mse"]


@dataclass
class ModelConfig(Options):
    """Architecture and objective. Defaults are the project's tuned CDDAE (docs/MODELS.md);
    `paper_config()` gives the paper's Experiment-1 setting."""

    what = "model option"

    kind: Kind = "cddae"
    hidden: tuple[int, ...] = (200,)  # encoder widths, the last one is the code
    decoder_hidden: tuple[int, ...] = ()  # extra decoder layers before the output
    corruption: float = 0.5  # mask-out probability on the interaction input
    rescale: bool = True  # survivors scaled by 1/(1 - corruption), as inverted dropout
    l2: float = 0.05  # λ in (λ/2)·Σθ² on all weights and biases, beside the per-batch loss
    output: Output = "sigmoid"
    loss: Loss = "bce"
    side_weight: float = 1.0  # weight of the side-information reconstruction loss
    user_node: bool = False  # Experiment 1: the user's index as an extra input, reconstructed
    input_norm: bool = False  # departure: L2-normalise the interaction vector (Mult-DAE)
    use_user_profile: bool = True  # CDDAE: feed E_u (ignored when the data has no profiles)
    use_item_profile: bool = True  # CDDAE: feed E_i pooled over the user's items
    # Departure: the share of users in each batch whose whole history is dropped, so the
    # network also learns to recommend from the profile alone (a new user's case).
    cold_start_rate: float = 0.0

    def __post_init__(self) -> None:
        self.hidden = tuple(int(h) for h in self.hidden)
        self.decoder_hidden = tuple(int(h) for h in self.decoder_hidden)
        if not self.hidden or min(self.hidden + self.decoder_hidden) < 1:
            raise ValueError("hidden widths must be positive and at least one is needed")
        if not 0.0 <= self.corruption < 1.0:
            raise ValueError("corruption must be in [0, 1)")
        if not 0.0 <= self.cold_start_rate < 1.0:
            raise ValueError("cold_start_rate must be in [0, 1)")
        if self.kind not in ("dae", "cdae", "cddae"):
            raise ValueError(f"unknown model kind {self.kind!r}")
        if self.output not in ("sigmoid", "softmax") or self.loss not in (
            "bce",
            "cce",
            "mae",
            "mse",
        ):
            raise ValueError(f"unknown output/loss {self.output}/{self.loss}")


def paper_config(kind: Kind = "cddae", **overrides: Any) -> ModelConfig:
    """Experiment 1 of the paper: cr 0.5, penalty 0.01, sigmoid + MAE, one hidden layer of 50."""
    base = dict(kind=kind, hidden=(50,), corruption=0.5, l2=0.01, output="sigmoid", loss="mae")
    return ModelConfig(**{**base, **overrides})


@dataclass
class Sizes:
    n_items: int
    n_users: int
    user_features: int = 0
    item_features: torch.Tensor | None = field(default=None, repr=False)  # items × F_i


class Autoencoder(nn.Module):
    """z = relu(W x̃ [+ V_u] [+ W_u E_u + W_i E_i] + b); deep encoder/decoder; the decoder
    reconstructs the items and, for CDDAE, the side information too."""

    def __init__(self, config: ModelConfig, sizes: Sizes):
        super().__init__()
        self.config = config
        self.n_items, self.n_users = sizes.n_items, sizes.n_users
        width = config.hidden[0]
        self.item_in = nn.Linear(sizes.n_items, width)
        cddae = config.kind == "cddae"
        self.user_in = (
            nn.Linear(sizes.user_features, width, bias=False)
            if cddae and config.use_user_profile and sizes.user_features
            else None
        )
        item_features = sizes.item_features if cddae and config.use_item_profile else None
        if item_features is not None and item_features.shape[1] == 0:
            item_features = None
        self.register_buffer("item_features", item_features)
        self.item_profile_in = (
            nn.Linear(item_features.shape[1], width, bias=False)
            if item_features is not None
            else None
        )
        # CDAE's V_u, and CDDAE's user node: one row per user plus a last row for unseen users.
        per_user = config.kind == "cdae" or (cddae and config.user_node)
        self.user_vector = nn.Embedding(sizes.n_users + 1, width) if per_user else None
        if self.user_vector is not None:
            nn.init.normal_(self.user_vector.weight, std=0.01)
        self.encoder = _mlp(config.hidden)
        self.decoder = _mlp((config.hidden[-1], *config.decoder_hidden))
        self.side_widths = (
            (self.user_in.in_features if self.user_in is not None else 0),
            (item_features.shape[1] if item_features is not None else 0),
            (sizes.n_users if cddae and config.user_node else 0),
        )
        last = (config.hidden[-1], *config.decoder_hidden)[-1]
        self.out = nn.Linear(last, sizes.n_items + sum(self.side_widths))

    @torch.no_grad()
    def init_output_bias(self, item_rates: torch.Tensor) -> None:
        """Start the item outputs at each item's training rate (logit for sigmoid, log-share for
        softmax): epoch 0 is then the most-popular ranking, not a flat 0.5 the first epochs
        spend unlearning."""
        rates = item_rates.clamp(1e-4, 1 - 1e-4)
        if self.config.output == "sigmoid":
            start = torch.log(rates / (1 - rates))
        else:
            start = torch.log(rates / rates.sum())
        self.out.bias[: self.n_items] = start

    def pooled_item_profile(self, x: torch.Tensor) -> torch.Tensor:
        """E_i: the mean item-profile vector of the items in x (zeros for an empty history)."""
        counts = x.sum(dim=1, keepdim=True).clamp_min(1.0)
        return (x @ self.item_features) / counts

    def forward(
        self,
        x: torch.Tensor,
        user_features: torch.Tensor | None = None,
        user_index: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Logits over items followed by the side reconstructions (see `split_output`)."""
        inputs = F.normalize(x, dim=1) if self.config.input_norm else x
        h = self.item_in(inputs)
        if self.user_in is not None and user_features is not None:
            h = h + self.user_in(user_features)
        if self.item_profile_in is not None:
            h = h + self.item_profile_in(self.pooled_item_profile(x))
        if self.user_vector is not None and user_index is not None:
            unseen = torch.full_like(user_index, self.n_users)
            h = h + self.user_vector(torch.where(user_index < 0, unseen, user_index))
        h = self.encoder(torch.relu(h))
        return self.out(self.decoder(h))

    def split_output(self, output: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return output[:, : self.n_items], output[:, self.n_items :]

    def scores(self, output: torch.Tensor) -> torch.Tensor:
        """Item scores in [0, 1]: the output activation applied to the item logits."""
        logits = output[:, : self.n_items]
        return (
            torch.softmax(logits, dim=1)
            if self.config.output == "softmax"
            else torch.sigmoid(logits)
        )

    def corrupt(self, x: torch.Tensor) -> torch.Tensor:
        cr = self.config.corruption
        noisy = x
        if cr > 0.0:
            noisy = x * (torch.rand_like(x) >= cr)
            noisy = noisy / (1.0 - cr) if self.config.rescale else noisy
        if self.config.cold_start_rate > 0.0:  # whole histories dropped: profile-only inputs
            users = torch.rand(x.shape[0], 1, device=x.device) >= self.config.cold_start_rate
            noisy = noisy * users
        return noisy

    def side_targets(
        self, x: torch.Tensor, user_features: torch.Tensor | None, user_index: torch.Tensor | None
    ) -> torch.Tensor:
        parts = []
        if self.side_widths[0]:
            parts.append(user_features)
        if self.side_widths[1]:
            parts.append(self.pooled_item_profile(x))
        if self.side_widths[2]:
            parts.append(F.one_hot(user_index, self.n_users).to(x.dtype))
        return torch.cat(parts, dim=1) if parts else x.new_zeros((x.shape[0], 0))

    def loss(
        self,
        x: torch.Tensor,
        user_features: torch.Tensor | None = None,
        user_index: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Denoising objective on one batch: item loss + weighted side loss. The L2 penalty
        (λ/2)·Σθ² is left to the optimiser as coupled weight decay, which adds exactly its
        gradient λθ, without building it into the graph every step."""
        noisy = self.corrupt(x)
        logits, side = self.split_output(self(noisy, user_features, user_index))
        item_loss = reconstruction_loss(logits, x, self.config.output, self.config.loss)
        total = item_loss.mean()
        if side.shape[1]:
            target = self.side_targets(x, user_features, user_index)
            total = total + self.config.side_weight * ((side - target) ** 2).sum(dim=1).mean()
        return total


def reconstruction_loss(
    logits: torch.Tensor, x: torch.Tensor, output: Output, loss: Loss
) -> torch.Tensor:
    """Per-user loss summed over items, in the numerically stable form where one exists."""
    if output == "sigmoid" and loss == "bce":
        return F.binary_cross_entropy_with_logits(logits, x, reduction="none").sum(dim=1)
    log_probs = F.log_softmax(logits, dim=1) if output == "softmax" else F.logsigmoid(logits)
    if loss == "cce":
        return -(x * log_probs).sum(dim=1)
    probs = log_probs.exp()
    if loss == "bce":
        log_not = torch.log1p(-probs.clamp(max=1 - 1e-7))
        return -(x * log_probs + (1 - x) * log_not).sum(dim=1)
    if loss == "mae":
        return (probs - x).abs().sum(dim=1)
    return ((probs - x) ** 2).sum(dim=1)


def _mlp(widths: tuple[int, ...]) -> nn.Sequential:
    layers: list[nn.Module] = []
    for a, b in itertools.pairwise(widths):
        layers += [nn.Linear(a, b), nn.ReLU()]
    return nn.Sequential(*layers)
