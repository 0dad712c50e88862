"""The training loop for the autoencoders: Adam, user mini-batches, early stopping on validation."""

from __future__ import annotations

import copy
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import scipy.sparse as sp
import torch
from tqdm.auto import tqdm

from training.metrics import evaluate_scores
from training.models import Autoencoder, ModelConfig, Sizes
from training.options import Options
from training.recommender import FitContext


@dataclass
class TrainConfig(Options):
    what = "training option"

    epochs: int = 200
    batch_size: int = 64
    lr: float = 1e-3
    patience: int = 15  # epochs without a better validation metric before stopping
    metric: str = "NDCG"  # early-stopping metric, at N = 10 on the validation set
    refit: bool = True  # after early stopping, retrain on train + validation for the best epochs


def _dense(rows: sp.csr_matrix) -> torch.Tensor:
    return torch.from_numpy(rows.toarray().astype(np.float32, copy=False))


class AutoencoderRecommender:
    """DAE / CDAE / CDDAE behind the common fit/score interface."""

    def __init__(self, model: ModelConfig, train: TrainConfig | None = None):
        self.model_config = model
        self.train_config = train or TrainConfig()
        self.kind = model.kind
        self.net: Autoencoder | None = None
        self.best_epoch = 0
        self.history: list[dict[str, float]] = []

    def _build(self, ctx: FitContext, train: sp.csr_matrix | None = None) -> Autoencoder:
        """A fresh network; with `train`, its output biases start at the items' rates there."""
        sizes = Sizes(
            n_items=ctx.train.shape[1],
            n_users=ctx.train.shape[0],
            user_features=ctx.user_features.shape[1],
            item_features=torch.from_numpy(np.ascontiguousarray(ctx.item_features, np.float32)),
        )
        net = Autoencoder(self.model_config, sizes)
        if train is not None:
            rates = np.asarray(train.mean(axis=0), dtype=np.float32).ravel()
            net.init_output_bias(torch.from_numpy(rates))
        return net

    def _optimizer(self, net: Autoencoder) -> torch.optim.Optimizer:
        """Adam; the model's L2 penalty as coupled weight decay (gradient λθ, as eq. 4)."""
        return torch.optim.Adam(
            net.parameters(), lr=self.train_config.lr, weight_decay=self.model_config.l2,
            fused=True,
        )  # fmt: skip

    def fit(self, ctx: FitContext) -> None:
        """Early stopping on validation, then (with `refit`) the best epoch count on train +
        validation. Without validation data: exactly `epochs` epochs (the production fit)."""
        cfg = self.train_config
        if not ctx.valid.nnz:
            self.best_epoch = cfg.epochs
            self.net = self._fit_epochs(ctx, ctx.train, cfg.epochs, "fit")
            return
        torch.manual_seed(ctx.seed)
        net, best_state, best, stale = self._build(ctx, ctx.train), None, -np.inf, 0
        optimizer = self._optimizer(net)
        rng = np.random.default_rng(ctx.seed)
        # Epoch 0 scores the untrained network: the baseline any training must beat.
        bar = tqdm(range(cfg.epochs + 1), desc=self.kind, disable=not ctx.progress, leave=False)
        for epoch in bar:
            loss = self._epoch(net, optimizer, ctx, ctx.train, rng) if epoch else float("nan")
            self.net = net
            result = evaluate_scores(self._scores(ctx.train, ctx), ctx.train, ctx.valid)
            value = float(result[cfg.metric][9])
            self.history.append({"epoch": epoch, "loss": loss, f"valid_{cfg.metric}@10": value})
            bar.set_postfix(loss=f"{loss:.3f}", valid=f"{value:.4f}", best=self.best_epoch)
            if value > best:
                best, stale, self.best_epoch = value, 0, epoch
                best_state = copy.deepcopy(net.state_dict())
            else:
                stale += 1
                if stale >= cfg.patience:
                    break
        net.load_state_dict(best_state)
        if cfg.refit:
            net = self._fit_epochs(ctx, ctx.full_train, self.best_epoch, "refit", rng)
        self.net = net
        self.net.eval()

    def _fit_epochs(
        self, ctx: FitContext, train: sp.csr_matrix, epochs: int, label: str, rng=None
    ) -> Autoencoder:
        """A fresh network trained for a fixed number of epochs, no validation."""
        torch.manual_seed(ctx.seed)
        rng = rng if rng is not None else np.random.default_rng(ctx.seed)
        net = self._build(ctx, train)
        optimizer = self._optimizer(net)
        for _ in tqdm(range(epochs), desc=label, disable=not ctx.progress, leave=False):
            self._epoch(net, optimizer, ctx, train, rng)
        return net.eval()

    def production(self) -> AutoencoderRecommender:
        """A fresh model for the fit on all data: these settings and the epoch count early
        stopping picked. Batches are users, so an epoch on all data takes as many steps as one
        on the training split (each user's vector is just fuller): the count carries over."""
        train = replace(self.train_config, epochs=self.best_epoch, refit=False)
        return AutoencoderRecommender(self.model_config, train)

    def _epoch(self, net, optimizer, ctx: FitContext, train: sp.csr_matrix, rng) -> float:
        net.train()
        users = rng.permutation(np.flatnonzero(np.diff(train.indptr) > 0))
        total = 0.0
        for start in range(0, len(users), self.train_config.batch_size):
            batch = users[start : start + self.train_config.batch_size]
            loss = net.loss(
                _dense(train[batch]),
                torch.from_numpy(ctx.user_features[batch].astype(np.float32)),
                torch.from_numpy(batch.astype(np.int64)),
            )
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            total += loss.item() * len(batch)
        return total / max(len(users), 1)

    def _scores(self, history: sp.csr_matrix, ctx: FitContext) -> np.ndarray:
        users = np.arange(history.shape[0])
        return self.score(history, users, ctx.user_features)

    @torch.no_grad()
    def score(
        self, history: sp.csr_matrix, user_index: np.ndarray, user_features: np.ndarray
    ) -> np.ndarray:
        assert self.net is not None, "fit or load_state first"
        self.net.eval()
        out = []
        for start in range(0, history.shape[0], 1024):
            rows = slice(start, start + 1024)
            output = self.net(
                _dense(history[rows]),
                torch.from_numpy(np.asarray(user_features[rows], dtype=np.float32)),
                torch.from_numpy(np.asarray(user_index[rows], dtype=np.int64)),
            )
            out.append(self.net.scores(output).numpy())
        return np.concatenate(out) if out else np.zeros((0, self.net.n_items), np.float32)

    def params(self) -> dict[str, Any]:
        return {
            "model": self.model_config.to_dict(),
            "train": self.train_config.to_dict(),
            "best_epoch": self.best_epoch,
        }

    def state(self) -> dict[str, np.ndarray]:
        assert self.net is not None
        return {k: v.detach().numpy() for k, v in self.net.state_dict().items()}

    def load_state(self, state: dict[str, np.ndarray], ctx: FitContext | None = None) -> None:
        assert ctx is not None, "the autoencoder needs the feature sizes to rebuild"
        self.net = self._build(ctx)
        self.net.load_state_dict({k: torch.from_numpy(np.asarray(v)) for k, v in state.items()})
        self.net.eval()
