"""Train/test splits of a positives matrix (SPEC §2), all deterministic by seed.

Each split holds out part of every user's positives; `holdout_count` fixes how many: a fraction
rounded to the nearest whole, at least one for users with two or more positives, none for users
with one (they stay in training and are not evaluated).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
import scipy.sparse as sp

from training.names import PROTOCOLS

Protocol = Literal["random", "temporal", "leave-one-out"]


@dataclass
class Split:
    train: sp.csr_matrix
    test: sp.csr_matrix
    train_times: sp.csr_matrix

    @property
    def evaluated_users(self) -> np.ndarray:
        return np.flatnonzero(np.diff(self.test.indptr) > 0)


def holdout_count(n_positives: int, fraction: float) -> int:
    if n_positives < 2:
        return 0
    return min(n_positives - 1, max(1, round(fraction * n_positives)))


def split(
    positives: sp.csr_matrix,
    timestamps: sp.csr_matrix,
    protocol: Protocol = "random",
    fraction: float = 0.2,
    seed: int = 0,
) -> Split:
    """Hold out a share of each user's positives: at random, the latest, or the latest one."""
    if protocol not in PROTOCOLS:
        raise ValueError(f"unknown protocol {protocol!r}; choose from {PROTOCOLS}")
    rng = np.random.default_rng(seed)
    positives = positives.tocsr()
    held = np.zeros(positives.nnz, dtype=bool)
    for user in range(positives.shape[0]):
        start, end = positives.indptr[user], positives.indptr[user + 1]
        n = end - start
        k = 1 if protocol == "leave-one-out" and n >= 2 else holdout_count(n, fraction)
        if k == 0:
            continue
        if protocol == "random":
            chosen = rng.choice(n, size=k, replace=False)
        else:  # the latest k by timestamp; ties broken by item index for stability
            chosen = np.argsort(timestamps.data[start:end], kind="stable")[n - k :]
        held[start + chosen] = True
    return Split(
        train=_select(positives, ~held),
        test=_select(positives, held),
        train_times=_select(timestamps, ~held),
    )


def _select(matrix: sp.csr_matrix, mask: np.ndarray) -> sp.csr_matrix:
    """The cells of `matrix` where `mask` (aligned with its data) is true, same shape."""
    coo = matrix.tocoo()
    out = sp.csr_matrix(
        (coo.data[mask], (coo.row[mask], coo.col[mask])), shape=matrix.shape, dtype=matrix.dtype
    )
    out.sort_indices()
    return out


def train_valid_test(
    positives: sp.csr_matrix,
    timestamps: sp.csr_matrix,
    protocol: Protocol = "random",
    fraction: float = 0.2,
    seed: int = 0,
) -> tuple[Split, Split]:
    """(outer, inner): outer splits test from training; inner carves validation from training."""
    outer = split(positives, timestamps, protocol, fraction, seed)
    inner = split(outer.train, outer.train_times, protocol, fraction, seed + 10_007)
    return outer, inner
