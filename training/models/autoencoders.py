"""DAE, CDAE and CDDAE (SPEC §4) as one configurable autoencoder module.

The module knows nothing of data loading or training loops: it maps a batch of interaction
vectors (plus encoded user features and user indices where the kind uses them) to item logits
and side-information reconstructions, and it computes its own loss.
"""

from __future__ import annotations

import copy
import functools
import itertools
import math
from dataclasses import dataclass, field, replace
from typing import Any, Literal, NamedTuple

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from training.models.linear_path import LinearMode, LinearPath, weighted_rows
from training.models.options import Options
from training.models.sampled_loss import Sampling, sampled_item_loss

Kind = Literal["dae", "cdae", "cddae"]
WIDE_LOGVAR = 10.0  # RecVAE's wide prior component: N(0, e^10)
Output = Literal["sigmoid", "softmax"]
Encoder = Literal["mlp", "dense"]
Loss = Literal["bce", "cce", "mae", "mse"]


@dataclass
class ModelConfig(Options):
    """Architecture and objective. The `default` preset overlays the tuner's choice for each
    kind on these values (training/models/tuned.py); `paper_config()` is Experiment 1's setting."""

    what = "model option"

    kind: Kind = "cddae"
    hidden: tuple[int, ...] = (200,)  # encoder widths, the last one is the code
    # "dense": RecVAE's encoder — every layer after the input one takes the sum of all before
    # it, swish and LayerNorm after each (the widths equal); "mlp": ReLU layers in a chain.
    encoder: Encoder = "mlp"
    decoder_hidden: tuple[int, ...] = ()  # extra decoder layers before the output
    corruption: float = 0.5  # mask-out probability on the interaction input
    rescale: bool = True  # survivors scaled by 1/(1 - corruption), as inverted dropout
    l2: float = 0.05  # λ in (λ/2)·Σθ² on all weights and biases, beside the per-batch loss
    output: Output = "sigmoid"
    loss: Loss = "bce"
    side_weight: float = 1.0  # weight of the side-information reconstruction loss
    user_node: bool = False  # Experiment 1: the user's index as an extra input, reconstructed
    input_norm: bool = False  # departure: L2-normalise the interaction vector (Mult-DAE)
    # Departure: L2-normalise the encoded user profile too, so that beside a unit-norm
    # interaction vector the profile's one-hots (norm √fields) do not drown the history.
    profile_norm: bool = False
    use_user_profile: bool = True  # CDDAE: feed E_u (ignored when the data has no profiles)
    use_item_profile: bool = True  # CDDAE: feed E_i pooled over the user's items
    # Departure: the share of users in each batch whose whole history is dropped, so the
    # network also learns to recommend from the profile alone (a new user's case).
    cold_start_rate: float = 0.0
    # Departure: the share of users in each batch whose history is cut to a random 1 to
    # `short_history_max` of its items, so the network also learns from what a new visitor
    # has done so far (POST /score with a handful of items).
    short_history_rate: float = 0.0
    short_history_max: int = 5
    # Departure (two jobs, two heads): above 0, after the network's fit a copy of it trains
    # its encoder on, for this share of the network's epochs, with histories cut short
    # (`short_head_history_rate` of the users, to 1..`short_history_max` items) and dropped
    # whole (`short_head_cold_rate`): the copy (the short head) serves histories of at most
    # `short_history_max` positives, the network every longer one, each with its own options.
    short_head_share: float = 0.0
    short_head_history_rate: float = 0.5
    short_head_cold_rate: float = 0.1
    short_head_lr_scale: float = 1.0  # the head's learning rate over the network's
    # Departure (issue 22, side information where histories are short): above 0, a history the
    # short head serves also gets this weight · x S added to its item logits, S the items'
    # cosine similarity on the fit's data with `short_head_neighbour_shrink` in its
    # denominator: item-kNN's fold-in, which ranks 3–5 items better than the head alone
    # (training/models/neighbours.py, docs/MODELS.md). Without the head (share 0), none.
    short_head_neighbours: float = 0.0
    short_head_neighbour_shrink: float = 21.1
    # Emphasised denoising (Steck, NeurIPS 2020): the loss weight of the positives the
    # corruption dropped, against 1 for every other cell. Above 1 the network gains more from
    # predicting what it could not see than from copying what it could (the identity).
    emphasis: float = 1.0
    # Departure (Mult-VAE, Liang et al., WWW 2018): with beta > 0 a Gaussian code of
    # `code_width` follows the hidden layers, its mean and log-variance linear in the last one;
    # training samples it and adds β·KL to the loss, β rising linearly from 0 over
    # `anneal_steps` optimiser steps; scoring, and the exported graph, use the mean.
    beta: float = 0.0
    code_width: int = 200
    anneal_steps: int = 1000
    # Departure (RecVAE, Shenbin et al., WSDM 2020), with beta > 0: `composite_prior` is the
    # weight of the previous epoch's posterior of the same (uncorrupted) history in the code's
    # prior, the rest split 3:2 between the standard normal and a wide one (variance e^10);
    # RecVAE's mixture is 0.75 (3/20, 3/4, 1/10). 0: the standard normal alone (Mult-VAE), the
    # closed-form KL. `kl_by_history`: each user's KL weighted by its history's length over
    # the training data's mean (RecVAE's β·|x_u|, normalised so that β keeps its scale): a
    # long history's reconstruction term is larger, so its code is held as firmly.
    composite_prior: float = 0.0
    kl_by_history: bool = False
    # RecVAE's alternating updates: above 0, each epoch is this many passes that train the
    # encoder's side (denoised input) and then one that trains the decoder's side (decoder and
    # output layer) on clean input; 0: every parameter on every pass.
    alternate: int = 0
    # Departure (after VASP, Vančura & Kordík 2021): EASE's items × items weights (λ =
    # `linear_lambda`) beside the network, `scale · x B` added to the item logits; the scale
    # chosen on validation after the network's fit, or `linear_scale` when given
    # (training/models/linear_path.py). `auto`: on where it fits (full item loss, memory).
    linear_path: LinearMode = "off"
    linear_lambda: float = 300.0
    linear_scale: float | None = None

    def __post_init__(self) -> None:
        self.hidden = tuple(int(h) for h in self.hidden)
        self.decoder_hidden = tuple(int(h) for h in self.decoder_hidden)
        if not self.hidden or min(self.hidden + self.decoder_hidden) < 1:
            raise ValueError("hidden widths must be positive and at least one is needed")
        if not 0.0 <= self.corruption < 1.0:
            raise ValueError("corruption must be in [0, 1)")
        if not 0.0 <= self.cold_start_rate < 1.0:
            raise ValueError("cold_start_rate must be in [0, 1)")
        if not 0.0 <= self.short_history_rate < 1.0 or not 1 <= self.short_history_max <= 10_000:
            raise ValueError(
                "short_history_rate must be in [0, 1) and short_history_max in [1, 10000]"
            )
        if not (0.0 <= self.short_head_share <= 10.0 and 0.0 < self.short_head_lr_scale <= 100.0):
            raise ValueError("short_head_share must be in [0, 10], short_head_lr_scale in (0, 100]")
        if not (0.0 <= self.short_head_history_rate < 1 and 0.0 <= self.short_head_cold_rate < 1):
            raise ValueError("short_head_history_rate and short_head_cold_rate must be in [0, 1)")
        if not (0.0 <= self.short_head_neighbours <= 1e4):
            raise ValueError("short_head_neighbours must be in [0, 10000]")
        if not (0.0 <= self.short_head_neighbour_shrink <= 1e6):
            raise ValueError("short_head_neighbour_shrink must be in [0, 1e6]")
        if self.emphasis <= 0.0:
            raise ValueError("emphasis must be > 0")
        if self.beta < 0.0 or self.anneal_steps < 1 or self.code_width < 1:
            raise ValueError("beta must be ≥ 0, anneal_steps and code_width ≥ 1")
        if not 0.0 <= self.composite_prior < 1.0:
            raise ValueError("composite_prior must be in [0, 1)")
        if (self.composite_prior or self.kl_by_history) and not self.beta > 0.0:
            raise ValueError("composite_prior and kl_by_history need beta > 0 (a variational code)")
        if type(self.alternate) is not int or not 0 <= self.alternate <= 10:
            raise ValueError("alternate must be a whole number in [0, 10]")
        if self.linear_path not in ("off", "ease", "auto"):
            raise ValueError(f"linear_path must be off, ease or auto, got {self.linear_path!r}")
        scale = 0.0 if self.linear_scale is None else self.linear_scale
        if not (0.01 <= self.linear_lambda <= 1e9 and 0.0 <= scale <= 1e4):
            raise ValueError(
                "linear_lambda must be in [0.01, 1e9] and linear_scale in [0, 10000] (or unset)"
            )
        if self.kind not in ("dae", "cdae", "cddae"):
            raise ValueError(f"unknown model kind {self.kind!r}")
        if self.encoder not in ("mlp", "dense"):
            raise ValueError(f"encoder must be mlp or dense, got {self.encoder!r}")
        if self.encoder == "dense" and len(set(self.hidden)) != 1:
            raise ValueError("a dense encoder's hidden widths must all be equal")
        if self.output not in ("sigmoid", "softmax") or self.loss not in (
            "bce",
            "cce",
            "mae",
            "mse",
        ):
            raise ValueError(f"unknown output/loss {self.output}/{self.loss}")

    def short_head_options(self) -> ModelConfig:
        """The short head's training options: the network's, with the head's own rates."""
        return replace(
            self,
            short_history_rate=self.short_head_history_rate,
            cold_start_rate=self.short_head_cold_rate,
        )


def paper_config(kind: Kind = "cddae", **overrides: Any) -> ModelConfig:
    """Experiment 1 of the paper: cr 0.5, penalty 0.01, sigmoid + MAE, one hidden layer of 50."""
    base = dict(kind=kind, hidden=(50,), corruption=0.5, l2=0.01, output="sigmoid", loss="mae")
    return ModelConfig(**{**base, **overrides})


@dataclass
class Bag:
    """A batch of users' items as a flat bag: items, weights and each user's start (offsets),
    the layout `torch.nn.functional.embedding_bag` takes. Cost scales with the items in the
    batch, not with the catalogue."""

    items: torch.Tensor  # int64 (nnz,)
    weights: torch.Tensor  # float32 (nnz,)
    offsets: torch.Tensor  # int64 (batch,)

    @functools.cached_property
    def rows(self) -> torch.Tensor:
        """The batch row of every entry (computed once per bag)."""
        counts = torch.diff(self.offsets, append=self.offsets.new_tensor([len(self.items)]))
        return torch.repeat_interleave(counts)

    def dense(self, n_items: int) -> torch.Tensor:
        out = self.weights.new_zeros((len(self.offsets), n_items))
        out.index_put_((self.rows, self.items), self.weights, accumulate=True)
        return out

    def row_sums(self) -> torch.Tensor:
        return self.weights.new_zeros(len(self.offsets)).index_add_(0, self.rows, self.weights)

    def to(self, device: torch.device) -> Bag:
        return Bag(self.items.to(device), self.weights.to(device), self.offsets.to(device))

    @classmethod
    def from_csr(cls, rows: Any) -> Bag:
        """From a scipy CSR matrix (one row per user; its values are the weights)."""
        return cls(
            torch.from_numpy(rows.indices.astype(np.int64)),
            torch.from_numpy(rows.data.astype(np.float32)),
            torch.from_numpy(rows.indptr[:-1].astype(np.int64)),
        )


class Posterior(NamedTuple):
    """A variational code in training: its mean, log-variance and the sample drawn."""

    mean: torch.Tensor
    logvar: torch.Tensor
    code: torch.Tensor


@dataclass
class Sizes:
    n_items: int
    n_users: int
    user_features: int = 0
    item_features: torch.Tensor | None = field(default=None, repr=False)  # items × F_i


class Autoencoder(nn.Module):
    """z = relu(W x̃ [+ V_u] [+ W_u E_u + W_i E_i] + b); deep encoder/decoder; the decoder
    reconstructs the items and, for CDDAE, the side information too.

    W x̃ is a gather-and-sum over the user's items (`item_in`, items × width), never a dense
    catalogue-length product: training and scoring cost grows with the history, not the
    catalogue. The output layer over all items is the model and stays dense."""

    def __init__(self, config: ModelConfig, sizes: Sizes):
        super().__init__()
        self.config = config
        self.n_items, self.n_users = sizes.n_items, sizes.n_users
        width = config.hidden[0]
        # Initialised exactly as nn.Linear(n_items, width) would be (uniform ±1/√n_items),
        # stored transposed so that a user's items are rows to gather.
        linear = nn.Linear(sizes.n_items, width)
        self.item_in = nn.Parameter(linear.weight.detach().t().contiguous())
        self.item_in_bias = nn.Parameter(linear.bias.detach().clone())
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
        variational = config.beta > 0.0
        self.encoder = (
            DenseEncoder(config.hidden) if config.encoder == "dense" else _mlp(config.hidden)
        )
        # Mult-VAE's code: a mean and a log-variance, linear in the last hidden layer.
        code = config.code_width if variational else config.hidden[-1]
        self.code_mean = nn.Linear(config.hidden[-1], code) if variational else None
        self.code_logvar = nn.Linear(config.hidden[-1], code) if variational else None
        self.kl_steps = 0  # optimiser steps taken: the β annealing's clock
        self.decoder = _mlp((code, *config.decoder_hidden))
        self.side_widths = (
            (self.user_in.in_features if self.user_in is not None else 0),
            (item_features.shape[1] if item_features is not None else 0),
            (sizes.n_users if cddae and config.user_node else 0),
        )
        last = (code, *config.decoder_hidden)[-1]
        self.out = nn.Linear(last, sizes.n_items + sum(self.side_widths))
        self.linear: LinearPath | None = None  # set after the fit (AutoencoderRecommender)
        # The composite prior's frozen encoder (`refresh_prior`), a plain attribute.
        self._prior_net: Autoencoder | None = None
        # The mean history length of the data the trainer fits on: `kl_by_history`'s unit, the
        # same for every batch and every torchrun rank's share of it (set by the trainer, reset
        # by `end_training`).
        self.mean_history = 1.0
        # False for RecVAE's decoder passes: the input goes in as it is (`alternate`).
        self.denoising = True
        # Row-sparse gradients for the two catalogue-sized matrices (item_in, out.weight): set
        # by the trainer with a sampled loss, so the optimiser touches only the batch's rows.
        self.sparse_grads = False

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

    # --- the input layer, sparse (training) and padded (the exported graph) --------------------

    def bag_input(self, bag: Bag) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(W x, E_i pooled) for a bag: a weighted sum of item rows, and the weighted mean item
        profile (zeros for an empty history)."""
        weights = bag.weights
        if self.config.input_norm:
            norms = weights.new_zeros(len(bag.offsets)).index_add_(0, bag.rows, weights * weights)
            weights = weights / norms.sqrt().clamp_min(1e-12)[bag.rows]
        h = F.embedding_bag(
            bag.items, self.item_in, bag.offsets, mode="sum", per_sample_weights=weights,
            sparse=self.sparse_grads and self.training,
        )  # fmt: skip
        return h, self.pooled_profile(bag)

    def pooled_profile(self, bag: Bag) -> torch.Tensor | None:
        if self.item_features is None:
            return None
        summed = F.embedding_bag(
            bag.items, self.item_features, bag.offsets, mode="sum", per_sample_weights=bag.weights
        )
        return summed / bag.row_sums().clamp_min(1.0)[:, None]

    def padded_input(
        self, items: torch.Tensor, weights: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The same for a padded batch (batch × length; padding has weight 0): Gather and
        MatMul in the ONNX graph."""
        w = weights
        if self.config.input_norm:
            w = w / (w * w).sum(dim=1, keepdim=True).sqrt().clamp_min(1e-12)
        h = weighted_rows(self.item_in, items, w)
        pooled = None
        if self.item_features is not None:
            summed = weighted_rows(self.item_features, items, weights)
            pooled = summed / weights.sum(dim=1, keepdim=True).clamp_min(1.0)
        return h, pooled

    def hidden(
        self,
        h: torch.Tensor,
        pooled: torch.Tensor | None,
        user_features: torch.Tensor | None = None,
        user_index: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """The decoder's output (before the output layer) from the input layer's sum."""
        return self._hidden(h, pooled, user_features, user_index)[0]

    def _hidden(
        self,
        h: torch.Tensor,
        pooled: torch.Tensor | None,
        user_features: torch.Tensor | None = None,
        user_index: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, Posterior | None]:
        """(the decoder's output, the code's posterior in training when variational)."""
        last = self._encode(h, pooled, user_features, user_index)
        if self.code_mean is None or self.code_logvar is None:
            return self.decoder(last), None
        mean = self.code_mean(last)
        if not self.training:  # scoring takes the code's mean
            return self.decoder(mean), None
        logvar = self.code_logvar(last)
        code = mean + torch.randn_like(mean) * torch.exp(0.5 * logvar)
        return self.decoder(code), Posterior(mean, logvar, code)

    def _encode(
        self,
        h: torch.Tensor,
        pooled: torch.Tensor | None,
        user_features: torch.Tensor | None,
        user_index: torch.Tensor | None,
    ) -> torch.Tensor:
        """The encoder's last layer from the input layer's sum."""
        h = h + self.item_in_bias
        if self.user_in is not None and user_features is not None:
            if self.config.profile_norm:
                user_features = F.normalize(user_features, dim=1)
            h = h + self.user_in(user_features)
        if self.item_profile_in is not None and pooled is not None:
            h = h + self.item_profile_in(pooled)
        if self.user_vector is not None and user_index is not None:
            unseen = torch.full_like(user_index, self.n_users)
            h = h + self.user_vector(torch.where(user_index < 0, unseen, user_index))
        if isinstance(self.encoder, DenseEncoder):
            return self.encoder(h)
        return self.encoder(torch.relu(h))

    def forward(
        self,
        bag: Bag,
        user_features: torch.Tensor | None = None,
        user_index: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Logits over items followed by the side reconstructions (see `split_output`)."""
        hidden = self.hidden(*self.bag_input(bag), user_features, user_index)
        return self.with_linear(self.out(hidden), self.linear_logits(bag))

    def forward_padded(self, items, weights, user_features=None, user_index=None) -> torch.Tensor:
        hidden = self.hidden(*self.padded_input(items, weights), user_features, user_index)
        return self.with_linear(self.out(hidden), self.linear_padded(items, weights))

    def linear_padded(self, items, weights) -> torch.Tensor | None:
        """The linear path's logits from padded histories (None without a path)."""
        return self.linear.padded(items, weights) if self.linear is not None else None

    def linear_logits(self, bag: Bag) -> torch.Tensor | None:
        """The linear path's item logits for a bag (None without one)."""
        if self.linear is None:
            return None
        return self.linear.bag(bag.items, bag.weights, bag.offsets)

    def with_linear(self, output: torch.Tensor, linear: torch.Tensor | None) -> torch.Tensor:
        """The output with the linear path's logits added to its item part."""
        if linear is None:
            return output
        return output + F.pad(linear, (0, output.shape[1] - self.n_items))

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

    # --- training ------------------------------------------------------------------------------

    def corrupt(self, bag: Bag) -> Bag:
        """Mask-out noise on the entries of the bag (rescaled survivors); histories cut short
        for `short_history_rate` of the users and dropped whole for `cold_start_rate`; none of
        it on a decoder pass (`denoising` False)."""
        if not self.denoising:
            return bag
        cr = self.config.corruption
        weights = bag.weights
        if self.config.short_history_rate > 0.0:
            weights = weights * self._short_histories(bag)
        if cr > 0.0:
            weights = weights * (torch.rand_like(weights) >= cr)
            weights = weights / (1.0 - cr) if self.config.rescale else weights
        if self.config.cold_start_rate > 0.0:
            users = (
                torch.rand(len(bag.offsets), device=weights.device) >= self.config.cold_start_rate
            )
            weights = weights * users[bag.rows]
        return Bag(bag.items, weights, bag.offsets)

    def _short_histories(self, bag: Bag) -> torch.Tensor:
        """A 0/1 mask keeping, for the chosen users, a random 1..short_history_max of their
        entries (all entries of the others): entries sorted by row, then by a random key, and
        kept while their place in the row is below the row's draw."""
        users = len(bag.offsets)
        device = bag.weights.device
        chosen = torch.rand(users, device=device) < self.config.short_history_rate
        keep = torch.randint(1, self.config.short_history_max + 1, (users,), device=device)
        limit = torch.where(chosen, keep, torch.full_like(keep, len(bag.items) + 1))
        rows = bag.rows
        order = torch.argsort(
            rows.double() + torch.rand(len(rows), device=device, dtype=torch.float64)
        )
        place = torch.empty_like(rows)
        place[order] = torch.arange(len(rows), device=device) - bag.offsets[rows[order]]
        return (place < limit[rows]).to(bag.weights.dtype)

    def side_targets(
        self, bag: Bag, user_features: torch.Tensor | None, user_index: torch.Tensor | None
    ) -> torch.Tensor:
        parts = []
        if self.side_widths[0]:
            parts.append(user_features)
        if self.side_widths[1]:
            parts.append(self.pooled_profile(bag))
        if self.side_widths[2]:
            parts.append(F.one_hot(user_index, self.n_users).float())
        return torch.cat(parts, dim=1) if parts else bag.weights.new_zeros((len(bag.offsets), 0))

    def loss(
        self,
        bag: Bag,
        user_features: torch.Tensor | None = None,
        user_index: torch.Tensor | None = None,
        sampling: Sampling | None = None,
    ) -> torch.Tensor:
        """Denoising objective on one batch: item loss + weighted side loss. The L2 penalty
        (λ/2)·Σθ² is left to the optimiser as coupled weight decay, which adds exactly its
        gradient λθ, without building it into the graph every step.

        With `sampling`, the item loss is over the batch's positives and a draw of items
        (training/models/sampled_loss.py) — for catalogues where every item's logit per user
        is too dear."""
        noisy = self.corrupt(bag)
        hidden, posterior = self._hidden(*self.bag_input(noisy), user_features, user_index)
        # Emphasis: a weight per positive, `emphasis` where the corruption dropped it.
        emphasis = None
        if self.config.emphasis != 1.0:
            dropped = (noisy.weights == 0) & (bag.weights != 0)
            emphasis = torch.where(dropped, self.config.emphasis, 1.0)
        if sampling is not None and sampling.negatives:
            total = self._sampled_item_loss(hidden, bag, sampling, emphasis)
        else:
            n = self.n_items
            logits = F.linear(hidden, self.out.weight[:n], self.out.bias[:n])
            target = bag.dense(n)
            cells = reconstruction_cells(logits, target, self.config.output, self.config.loss)
            if emphasis is not None:
                weights = torch.ones_like(cells)
                weights[bag.rows, bag.items] = emphasis
                cells = cells * weights
            total = cells.sum(dim=1).mean()
        if sum(self.side_widths):
            rows = torch.arange(self.n_items, self.out.out_features, device=hidden.device)
            side = F.linear(hidden, self._out_rows(rows), self.out.bias[self.n_items :])
            target = self.side_targets(bag, user_features, user_index)
            total = total + self.config.side_weight * ((side - target) ** 2).sum(dim=1).mean()
        if posterior is not None:  # β annealed from 0 (Mult-VAE)
            self.kl_steps += 1
            kl = self.kl(posterior, bag, user_features, user_index)
            if self.config.kl_by_history:
                kl = kl * (bag.row_sums() / self.mean_history)
            anneal = min(1.0, self.kl_steps / self.config.anneal_steps)
            total = total + self.config.beta * anneal * kl.mean()
        return total

    def kl(
        self,
        posterior: Posterior,
        bag: Bag,
        user_features: torch.Tensor | None = None,
        user_index: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Each user's KL divergence of the code's posterior from its prior: closed form
        against the standard normal, or one sample's log-density ratio against RecVAE's
        composite prior (the previous epoch's posterior of the clean history, `refresh_prior`)."""
        mean, logvar, code = posterior
        weight = self.config.composite_prior
        if weight == 0.0:
            return -0.5 * (1 + logvar - mean.pow(2) - logvar.exp()).sum(dim=1)
        previous = self._prior_net
        if previous is None:
            raise RuntimeError("composite_prior needs refresh_prior() before training")
        with torch.no_grad():
            last = previous._encode(*previous.bag_input(bag), user_features, user_index)
            old_mean, old_logvar = previous.code_mean(last), previous.code_logvar(last)
        zero = torch.zeros_like(code)
        parts = torch.stack([
            _log_normal(code, zero, zero) + math.log((1 - weight) * 0.6),
            _log_normal(code, old_mean, old_logvar) + math.log(weight),
            _log_normal(code, zero, zero + WIDE_LOGVAR) + math.log((1 - weight) * 0.4),
        ])  # fmt: skip
        prior = torch.logsumexp(parts, dim=0)
        return (_log_normal(code, mean, logvar) - prior).sum(dim=1)

    @torch.no_grad()
    def refresh_prior(self) -> None:
        """Keep a frozen copy of the encoder as it is now: the composite prior's posterior for
        the next epoch (RecVAE updates it between epochs). Only the encoder's side is copied;
        the copy is not a submodule, so it is in no state dict, optimiser or DDP bucket."""
        if self.config.composite_prior == 0.0 or self.code_mean is None:
            return
        self.release_prior()  # never two copies at once
        skip: dict[int, Any] = {id(m): None for m in (self.decoder, self.out, self.linear)}
        if self.item_features is not None:  # constant: shared, not copied
            skip[id(self.item_features)] = self.item_features
        previous = copy.deepcopy(self, skip)
        previous.requires_grad_(False)
        previous.sparse_grads = False
        object.__setattr__(self, "_prior_net", previous.eval())  # not a submodule

    def release_prior(self) -> None:
        """Drop the composite prior's copy."""
        object.__setattr__(self, "_prior_net", None)

    def end_training(self) -> None:
        """Drop what only training uses (the prior's copy, the fit data's history unit): a
        fitted network holds nothing of its data beyond its weights, so the exported graph's
        fingerprint (training/jobs/onnx_graph.py) is the same for every fit of one structure."""
        self.release_prior()
        self.mean_history = 1.0

    def _out_rows(self, rows: torch.Tensor) -> torch.Tensor:
        """Rows of the output weights, with a row-sparse gradient when `sparse_grads`."""
        if self.sparse_grads:
            return F.embedding(rows, self.out.weight, sparse=True)
        return self.out.weight[rows]

    def _sampled_item_loss(
        self,
        hidden: torch.Tensor,
        bag: Bag,
        sampling: Sampling,
        emphasis: torch.Tensor | None = None,
    ) -> torch.Tensor:
        def logits_of(columns: torch.Tensor) -> torch.Tensor:
            return F.linear(hidden, self._out_rows(columns), self.out.bias[columns])

        return sampled_item_loss(
            logits_of, bag.rows, bag.items, bag.weights, len(bag.offsets), sampling,
            (self.config.output, self.config.loss), emphasis,
        )  # fmt: skip


def reconstruction_cells(
    logits: torch.Tensor, x: torch.Tensor, output: Output, loss: Loss
) -> torch.Tensor:
    """The loss of every (user, item) cell, in the numerically stable form where one exists."""
    if output == "sigmoid" and loss == "bce":
        return F.binary_cross_entropy_with_logits(logits, x, reduction="none")
    log_probs = F.log_softmax(logits, dim=1) if output == "softmax" else F.logsigmoid(logits)
    if loss == "cce":
        return -(x * log_probs)
    probs = log_probs.exp()
    if loss == "bce":
        log_not = torch.log1p(-probs.clamp(max=1 - 1e-7))
        return -(x * log_probs + (1 - x) * log_not)
    if loss == "mae":
        return (probs - x).abs()
    return (probs - x) ** 2


def _log_normal(x: torch.Tensor, mean: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """log N(x; mean, exp(logvar)), elementwise; the variance kept at or above e^-30, where a
    float32 exp(logvar) would underflow to 0 and the density be 0/0."""
    logvar = logvar.clamp_min(-30.0)
    return -0.5 * (logvar + math.log(2 * math.pi) + (x - mean).pow(2) * torch.exp(-logvar))


class DenseEncoder(nn.Module):
    """RecVAE's encoder over the input layer's sum h: h_1 = LN(swish(h)), then each
    h_k = LN(swish(W_k h_(k-1) + b_k + h_1 + ... + h_(k-1))) — every layer sees all before it."""

    def __init__(self, widths: tuple[int, ...]):
        super().__init__()
        width = widths[0]
        self.norms = nn.ModuleList(nn.LayerNorm(width) for _ in widths)
        self.layers = nn.ModuleList(nn.Linear(width, width) for _ in widths[1:])

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        out = self.norms[0](F.silu(h))
        total = out
        for layer, norm in zip(self.layers, self.norms[1:], strict=True):
            out = norm(F.silu(layer(out) + total))
            total = total + out
        return out


def _mlp(widths: tuple[int, ...]) -> nn.Sequential:
    layers: list[nn.Module] = []
    for a, b in itertools.pairwise(widths):
        layers += [nn.Linear(a, b), nn.ReLU()]
    return nn.Sequential(*layers)
