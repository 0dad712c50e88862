"""Top-N ranking metrics (SPEC §3), vectorised over users and over N = 1..max_n at once.

All functions are pure: scores in, numbers out. Items a user saw in training must already be
masked (e.g. with -inf) by the caller; only users with at least one test item are evaluated.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import scipy.sparse as sp

METRICS = ("P", "R", "PU", "RU", "NDCG", "MAP", "COV")
CHUNK = 1024  # users scored at once: memory is chunk × items floats, not users × items
# Score functions take (history rows, user indices) and return a dense chunk × items array;
# rank functions take (history rows, user indices, n) and return the chunk's top-n lists with
# the history excluded.
ScoreChunk = Callable[[sp.csr_matrix, np.ndarray], np.ndarray]
RankChunk = Callable[[sp.csr_matrix, np.ndarray, int], np.ndarray]


def top_n(scores: np.ndarray, n: int) -> np.ndarray:
    """Indices of the n highest scores per row, best first (ties: lower index first)."""
    n = min(n, scores.shape[1])
    part = np.argpartition(-scores, n - 1, axis=1)[:, :n]
    part_scores = np.take_along_axis(scores, part, axis=1)
    order = np.lexsort((part, -part_scores), axis=1)
    return np.take_along_axis(part, order, axis=1)


def evaluate_lists(
    lists: np.ndarray, test: sp.csr_matrix, n_items: int | None = None
) -> dict[str, np.ndarray]:
    """Metrics at N = 1..lists.shape[1] for top-N lists (users × max_n) of the same users as the
    rows of `test`. Returns name -> array of length max_n (index N-1)."""
    test = test.tocsr()
    n_items = n_items if n_items is not None else test.shape[1]
    relevant = np.diff(test.indptr).astype(np.float64)
    keep = relevant > 0
    lists, relevant = lists[keep], relevant[keep]
    hits = np.asarray(test[np.flatnonzero(keep)[:, None], lists].todense(), dtype=bool)
    return metrics_from_hits(hits, relevant, lists, n_items)


def metrics_from_hits(
    hits: np.ndarray, relevant: np.ndarray, lists: np.ndarray, n_items: int
) -> dict[str, np.ndarray]:
    """hits[u, k]: whether the item at rank k+1 of user u's list is a test item; relevant[u]:
    |G_u| (> 0)."""
    max_n = hits.shape[1]
    ranks = np.arange(1, max_n + 1, dtype=np.float64)
    cum_hits = np.cumsum(hits, axis=1, dtype=np.float64)  # |L_N ∩ G_u| for every N
    discounts = 1.0 / np.log2(ranks + 1.0)
    dcg = np.cumsum(hits * discounts, axis=1)
    ideal_cum = np.cumsum(discounts)
    ideal = ideal_cum[np.minimum(ranks[None, :], relevant[:, None]).astype(int) - 1]
    precision_at_hit = np.cumsum(hits * (cum_hits / ranks), axis=1)
    coverage = np.array(
        [len(np.unique(lists[:, :n])) / n_items for n in range(1, max_n + 1)], dtype=np.float64
    )
    return {
        "P": (cum_hits / ranks).mean(axis=0),
        "R": (cum_hits / relevant[:, None]).mean(axis=0),
        "PU": (cum_hits > 0).mean(axis=0),
        "RU": cum_hits.sum(axis=0) / relevant.sum(),
        "NDCG": (dcg / ideal).mean(axis=0),
        "MAP": (precision_at_hit / np.minimum(ranks[None, :], relevant[:, None])).mean(axis=0),
        "COV": coverage,
    }


def evaluate_scores(
    scores: np.ndarray, train: sp.csr_matrix, test: sp.csr_matrix, max_n: int = 10
) -> dict[str, np.ndarray]:
    """Mask training items, rank, and score against `test` (all users × all items)."""
    users = np.flatnonzero(np.diff(test.indptr) > 0)
    masked = mask_seen(scores[users], train[users])
    return evaluate_lists(top_n(masked, max_n), test[users], n_items=test.shape[1])


def mask_seen(scores: np.ndarray, seen: sp.csr_matrix, copy: bool = True) -> np.ndarray:
    """`scores` (a copy unless `copy` is off) with the cells of `seen` set to -inf."""
    masked = np.array(scores, copy=True) if copy else scores
    if not np.issubdtype(masked.dtype, np.floating):
        masked = masked.astype(np.float64)
    rows = np.repeat(np.arange(seen.shape[0]), np.diff(seen.indptr))
    masked[rows, seen.indices] = -np.inf
    return masked


def rank_by_scores(score: ScoreChunk) -> RankChunk:
    """A rank function from a score function: mask the history, then `top_n`."""

    def rank(history: sp.csr_matrix, users: np.ndarray, n: int) -> np.ndarray:
        return top_n(mask_seen(score(history, users), history, copy=False), n)

    return rank


def top_n_chunked(
    rank: RankChunk, history: sp.csr_matrix, users: np.ndarray, n: int, chunk: int = CHUNK
) -> np.ndarray:
    """Top-n lists (len(users) × n) of `users`, their `history` items excluded, ranking `chunk`
    users at a time and keeping only each chunk's lists."""
    lists = np.zeros((len(users), min(n, history.shape[1])), dtype=np.int64)
    for start in range(0, len(users), chunk):
        rows = users[start : start + chunk]
        lists[start : start + len(rows)] = rank(history[rows], rows, n)
    return lists


def evaluate_chunked(
    rank: RankChunk,
    train: sp.csr_matrix,
    test: sp.csr_matrix,
    users: np.ndarray | None = None,
    max_n: int = 10,
    chunk: int = CHUNK,
) -> dict[str, np.ndarray]:
    """`evaluate_scores` without the users × items matrix: the same figures (tested equal),
    computed chunk by chunk. `users` restricts the evaluation (e.g. a validation sample)."""
    evaluated = np.flatnonzero(np.diff(test.indptr) > 0)
    if users is not None:
        evaluated = np.intersect1d(evaluated, users)
    lists = top_n_chunked(rank, train, evaluated, max_n, chunk)
    return evaluate_lists(lists, test[evaluated], n_items=test.shape[1])


def summary(results: dict[str, np.ndarray], n: int = 10) -> dict[str, float]:
    return {f"{name}@{n}": float(values[n - 1]) for name, values in results.items()}
