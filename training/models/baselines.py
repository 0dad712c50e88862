"""Baselines beyond the paper (SPEC §6): most-popular, item-kNN (cosine) and EASE."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import scipy.sparse as sp

from training.evaluation.metrics import evaluate_chunked, rank_by_scores
from training.models.interface import FitContext

EASE_LAMBDAS = (10.0, 25.0, 50.0, 100.0, 200.0, 350.0, 500.0, 750.0, 1000.0, 2000.0)
# Item-item models hold dense items × items matrices; refuse before building one that cannot
# fit. CDDAE_ITEM_ITEM_LIMIT_GB overrides the limit (default: half the machine's memory).
ITEM_ITEM_LIMIT_ENV = "CDDAE_ITEM_ITEM_LIMIT_GB"


class TooLarge(ValueError):
    """A model whose memory would not fit; the message says how much, the limit, and what to
    use instead."""


def memory_limit_bytes() -> float:
    import os

    if value := os.environ.get(ITEM_ITEM_LIMIT_ENV):
        return float(value) * 2**30
    pages, size = os.sysconf("SC_PHYS_PAGES"), os.sysconf("SC_PAGE_SIZE")
    return pages * size / 2


def check_item_item(kind: str, n_items: int, copies: int, itemsize: int) -> None:
    """Refuse (TooLarge) when `copies` dense items × items arrays would pass the limit."""
    need = float(copies) * n_items * n_items * itemsize
    limit = memory_limit_bytes()
    if need > limit:
        raise TooLarge(
            f"{kind} on {n_items:,} items needs about {need / 2**30:.1f} GiB for its dense "
            f"items × items matrices; the limit is {limit / 2**30:.1f} GiB (half of this "
            f"machine's memory, or {ITEM_ITEM_LIMIT_ENV}). Use --model cddae (memory grows with "
            "the catalogue, not its square), or fewer items."
        )


def ease_weights(
    x: sp.csr_matrix, penalty: float | Callable[[np.ndarray], np.ndarray | float]
) -> np.ndarray:
    """EASE's closed form: B = I − P·diag(1/diag(P)), P = (XᵀX + Λ)⁻¹, zero diagonal (float32).
    Λ's diagonal is `penalty`, or `penalty(diag(XᵀX))` (EDLAE shapes it by popularity)."""
    gram = np.asarray((x.T @ x).todense(), dtype=np.float64)
    diagonal = np.diag(gram).copy()
    gram[np.diag_indices_from(gram)] += penalty(diagonal) if callable(penalty) else penalty
    p = np.linalg.inv(gram)
    b = -p / np.diag(p)
    np.fill_diagonal(b, 0.0)
    return b.astype(np.float32)


def cosine_similarity(
    x: sp.csr_matrix, shrink: float, k: int | None = None, block: int = 1024
) -> np.ndarray:
    """Items × items cosine between the columns of `x` (float32, zero diagonal), `shrink` added
    to the denominator (similarities resting on few co-occurrences pulled toward 0); with `k`,
    each column keeps its `k` largest. The division and the cut run in place, `block` rows or
    columns at a time: the peak is the sparse Gram product beside its dense copy (about three
    float32 copies where nearly every pair of items co-occurs), no items × items temporary."""
    x = x.astype(np.float32)
    gram = x.T @ x
    sim = gram.toarray()  # float32, as x
    del gram
    norms = np.sqrt(np.diag(sim)).astype(np.float32)
    n = sim.shape[0]
    for start in range(0, n, block):
        rows = slice(start, start + block)
        sim[rows] /= np.maximum(np.outer(norms[rows], norms) + np.float32(shrink), 1e-12)
    np.fill_diagonal(sim, 0.0)
    if k is not None and k < n:
        for start in range(0, n, block):
            columns = sim[:, start : start + block]  # a view: the cut writes through
            cut = np.argpartition(-columns, k, axis=0)[k:]
            np.put_along_axis(columns, cut, 0.0, axis=0)
    return sim


class MostPopular:
    """Scores every item by its number of training positives, the same for every user."""

    kind = "pop"

    def __init__(self) -> None:
        self.counts = np.zeros(0, dtype=np.float32)

    def fit(self, ctx: FitContext) -> None:
        self.counts = np.asarray(ctx.full_train.sum(axis=0), dtype=np.float32).ravel()

    def score(self, history: sp.csr_matrix, user_index: np.ndarray, user_features: np.ndarray):
        return np.broadcast_to(self.counts, (history.shape[0], len(self.counts))).copy()

    def params(self) -> dict[str, Any]:
        return {}

    def production(self) -> MostPopular:
        return MostPopular()

    def state(self) -> dict[str, np.ndarray]:
        return {"counts": self.counts}

    def load_state(self, state: dict[str, np.ndarray]) -> None:
        self.counts = state["counts"]


class _ItemItem:
    """Shared scoring for item-item models: scores = history · S."""

    similarity: np.ndarray

    def score(self, history: sp.csr_matrix, user_index: np.ndarray, user_features: np.ndarray):
        return np.asarray(history @ self.similarity, dtype=np.float32)

    def state(self) -> dict[str, np.ndarray]:
        return {"similarity": self.similarity}

    def load_state(self, state: dict[str, np.ndarray]) -> None:
        self.similarity = state["similarity"]


class ItemKNN(_ItemItem):
    """Cosine similarity between item columns, keeping each item's `k` nearest neighbours;
    `shrink` > 0 adds to the denominator, pulling similarities resting on few co-occurrences
    toward 0."""

    kind = "itemknn"

    def __init__(self, k: int = 100, shrink: float = 0.0) -> None:
        if k < 1 or shrink < 0:
            raise ValueError("item-kNN needs k ≥ 1 and shrink ≥ 0")
        self.k, self.shrink = k, shrink

    def fit(self, ctx: FitContext) -> None:
        # The Gram matrix, the similarity and the top-k cut: about three float32 copies.
        check_item_item("item-kNN", ctx.train.shape[1], copies=3, itemsize=4)
        self.similarity = cosine_similarity(ctx.full_train, self.shrink, self.k)

    def params(self) -> dict[str, Any]:
        return {"k": self.k, "shrink": self.shrink}

    def production(self) -> ItemKNN:
        return ItemKNN(self.k, self.shrink)


class EASE(_ItemItem):
    """Steck (2019): B = I − P·diag(1/diag(P)), P = (XᵀX + Λ)⁻¹ with Λ = λI; λ chosen on
    validation NDCG@10. Subclasses shape Λ differently (EDLAE)."""

    kind = "ease"

    def __init__(self, lambdas: tuple[float, ...] = EASE_LAMBDAS, metric: str = "NDCG") -> None:
        self.lambdas = lambdas
        self.metric = metric
        self.chosen: Any = None
        self.validation: dict[Any, float] = {}

    def grid(self) -> list[Any]:
        return list(self.lambdas)

    def penalty(self, setting: Any, gram_diagonal: np.ndarray) -> np.ndarray | float:
        """Λ's diagonal for one setting of the grid."""
        return float(setting)

    def closed_form(self, x: sp.csr_matrix, setting: Any) -> np.ndarray:
        return ease_weights(x, lambda diagonal: self.penalty(setting, diagonal))

    def fit(self, ctx: FitContext) -> None:
        # The float64 Gram matrix and its inverse, then the float32 weights: about 2.5 copies.
        check_item_item(self.kind.upper(), ctx.train.shape[1], copies=3, itemsize=8)
        grid = self.grid()
        if len(grid) > 1 and ctx.valid.nnz:
            for setting in grid:
                weights = self.closed_form(ctx.train, setting)
                score = lambda history, users, b=weights: np.asarray(history @ b)  # noqa: E731
                result = evaluate_chunked(rank_by_scores(score), ctx.train, ctx.valid)
                self.validation[setting] = float(result[self.metric][9])
            self.chosen = max(self.validation, key=self.validation.__getitem__)
        else:
            self.chosen = grid[0]
        self.similarity = self.closed_form(ctx.full_train, self.chosen)

    def production(self) -> EASE:
        """The setting validation chose, fit once on all data."""
        assert self.chosen is not None, "fit first"
        return EASE((self.chosen,), self.metric)

    def params(self) -> dict[str, Any]:
        return {
            "lambda": self.chosen,
            "validation": {str(k): v for k, v in self.validation.items()},
        }


EDLAE_DROPOUTS = (0.1, 0.25, 0.5, 0.67, 0.75, 0.8)


class EDLAE(EASE):
    """Steck (2020), "Autoencoders that don't overfit towards the identity": the emphasised
    denoising linear autoencoder, full rank, all emphasis on the dropped-out inputs. Its closed
    form is EASE's with Λ = λI + p/(1−p)·diag(XᵀX): dropout with probability p is an L2 penalty
    proportional to each item's popularity. The denoising autoencoder's own linear limit; (λ, p)
    chosen on validation NDCG@10."""

    kind = "edlae"

    def __init__(
        self,
        lambdas: tuple[float, ...] = (1.0, 10.0, 50.0, 200.0),
        dropouts: tuple[float, ...] = EDLAE_DROPOUTS,
        metric: str = "NDCG",
    ) -> None:
        super().__init__(lambdas, metric)
        self.dropouts = dropouts

    def grid(self) -> list[Any]:
        return [(lam, p) for lam in self.lambdas for p in self.dropouts]

    def penalty(self, setting: Any, gram_diagonal: np.ndarray) -> np.ndarray | float:
        lam, p = setting
        return lam + p / (1.0 - p) * gram_diagonal

    def production(self) -> EDLAE:
        assert self.chosen is not None, "fit first"
        lam, p = self.chosen
        return EDLAE((lam,), (p,), self.metric)

    def params(self) -> dict[str, Any]:
        lam, p = self.chosen if self.chosen is not None else (None, None)
        return {
            "lambda": lam,
            "dropout": p,
            "validation": {str(k): v for k, v in self.validation.items()},
        }
