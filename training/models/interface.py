"""The fit/score interface every model follows, baselines and autoencoders alike."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import scipy.sparse as sp


@dataclass
class FitContext:
    """What a model may learn from: training positives, a validation set carved out of them
    (for early stopping and tuning), and the encoded profiles of all users and items."""

    train: sp.csr_matrix
    valid: sp.csr_matrix
    user_features: np.ndarray
    item_features: np.ndarray
    seed: int = 0
    progress: bool = True

    @property
    def full_train(self) -> sp.csr_matrix:
        """Training plus validation positives: the history a model sees once tuned."""
        return (self.train + self.valid).tocsr()


class Recommender(Protocol):
    kind: str

    def fit(self, ctx: FitContext) -> None: ...

    def score(
        self, history: sp.csr_matrix, user_index: np.ndarray, user_features: np.ndarray
    ) -> np.ndarray:
        """Scores (rows of `history` × items). `user_index` is -1 for users unseen in training."""
        ...

    def params(self) -> dict[str, Any]:
        """Hyper-parameters, chosen or given, for reports and manifests."""
        ...

    def production(self) -> Recommender:
        """A fresh, unfitted copy with the settings this fit chose, for the fit on all data."""
        ...

    def state(self) -> dict[str, np.ndarray]: ...

    def load_state(self, state: dict[str, np.ndarray]) -> None: ...
