"""Top-N ranking metrics (SPEC §3), vectorised over users and over N = 1..max_n at once.

All functions are pure: scores in, numbers out. Items a user saw in training must already be
masked (e.g. with -inf) by the caller; only users with at least one test item are evaluated.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

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


def per_user(hits: np.ndarray, relevant: np.ndarray) -> dict[str, np.ndarray]:
    """The metrics that are means over users, per user (users × max_n): P, R, PU, NDCG, MAP.
    hits[u, k]: whether the item at rank k+1 of user u's list is a test item; relevant[u]:
    |G_u| (> 0)."""
    max_n = hits.shape[1]
    ranks = np.arange(1, max_n + 1, dtype=np.float64)
    cum_hits = np.cumsum(hits, axis=1, dtype=np.float64)  # |L_N ∩ G_u| for every N
    discounts = 1.0 / np.log2(ranks + 1.0)
    dcg = np.cumsum(hits * discounts, axis=1)
    ideal_cum = np.cumsum(discounts)
    ideal = ideal_cum[np.minimum(ranks[None, :], relevant[:, None]).astype(int) - 1]
    precision_at_hit = np.cumsum(hits * (cum_hits / ranks), axis=1)
    return {
        "P": cum_hits / ranks,
        "R": cum_hits / relevant[:, None],
        "PU": (cum_hits > 0).astype(np.float64),
        "NDCG": dcg / ideal,
        "MAP": precision_at_hit / np.minimum(ranks[None, :], relevant[:, None]),
    }


def metrics_from_hits(
    hits: np.ndarray, relevant: np.ndarray, lists: np.ndarray, n_items: int
) -> dict[str, np.ndarray]:
    """The metrics at N = 1..max_n (see `per_user`); RU pools hits over users, COV counts the
    distinct items listed."""
    users = per_user(hits, relevant)
    cum_hits = np.cumsum(hits, axis=1, dtype=np.float64)
    coverage = np.array(
        [len(np.unique(lists[:, :n])) / n_items for n in range(1, hits.shape[1] + 1)],
        dtype=np.float64,
    )
    return {
        "P": users["P"].mean(axis=0),
        "R": users["R"].mean(axis=0),
        "PU": users["PU"].mean(axis=0),
        "RU": cum_hits.sum(axis=0) / relevant.sum(),
        "NDCG": users["NDCG"].mean(axis=0),
        "MAP": users["MAP"].mean(axis=0),
        "COV": coverage,
    }


def sample_intervals(
    hits: np.ndarray, relevant: np.ndarray, population: int, z: float = 1.96
) -> dict[str, np.ndarray]:
    """95% half-widths of the sampled metrics (a simple random sample of `len(relevant)` of
    `population` users, without replacement: the finite-population correction applies). Means
    over users by their standard error; RU, a ratio of sums, by the delta method. COV is not a
    mean over users (a sample lists fewer distinct items): it has no interval."""
    n = len(relevant)
    correction = np.sqrt(max(population - n, 0) / max(population - 1, 1))

    def half_width(values: np.ndarray) -> np.ndarray:
        return z * values.std(axis=0, ddof=1) / np.sqrt(n) * correction

    widths = {name: half_width(values) for name, values in per_user(hits, relevant).items()}
    cum_hits = np.cumsum(hits, axis=1, dtype=np.float64)
    ratio = cum_hits.sum(axis=0) / relevant.sum()
    widths["RU"] = half_width(cum_hits - ratio[None, :] * relevant[:, None]) / relevant.mean()
    return widths


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


SAMPLE_ABOVE = 100_000  # evaluable users past which the default evaluation samples this many
# The intervals are normal approximations: below this many users, skewed and discrete metrics
# (most users hit nothing) made "95%" intervals cover the truth a third to four fifths of the
# time in the outside attack's simulation.
MIN_SAMPLE = 1_000


@dataclass
class Sampling:
    """How many of the evaluable users were evaluated, and each metric's 95% half-width at
    N = 1..max_n (empty when every user was)."""

    users: int
    of: int
    seed: int
    ci95: dict[str, np.ndarray] = field(default_factory=dict)

    @property
    def sampled(self) -> bool:
        return self.users < self.of

    def summary(self, n: int = 10) -> dict:
        return {"users": self.users, "of": self.of, "sampled": self.sampled, "seed": self.seed,
                "ci95": {f"{name}@{min(n, len(w))}": round(float(w[min(n, len(w)) - 1]), 6)
                         for name, w in self.ci95.items()}}  # fmt: skip


def evaluate_sampled(
    rank: RankChunk,
    train: sp.csr_matrix,
    test: sp.csr_matrix,
    sample: int | None = None,
    seed: int = 0,
    max_n: int = 10,
) -> tuple[dict[str, np.ndarray], Sampling]:
    """Every evaluable user, or a seeded simple random sample of `sample` of them with a 95%
    interval on each metric. None: every user up to `SAMPLE_ABOVE`, that many above (at a
    million users the full evaluation was most of a run's time: docs/SCALE.md)."""
    evaluable = np.flatnonzero(np.diff(test.indptr) > 0)
    if sample is None:
        sample = SAMPLE_ABOVE
    if sample >= len(evaluable):
        return evaluate_chunked(rank, train, test, max_n=max_n), Sampling(
            len(evaluable), len(evaluable), seed
        )
    chosen = np.sort(np.random.default_rng(seed).choice(evaluable, sample, replace=False))
    lists = top_n_chunked(rank, train, chosen, max_n)
    rows = test[chosen]
    relevant = np.diff(rows.indptr).astype(np.float64)
    hits = np.asarray(rows[np.arange(len(chosen))[:, None], lists].todense(), dtype=bool)
    results = metrics_from_hits(hits, relevant, lists, test.shape[1])
    intervals = sample_intervals(hits, relevant, len(evaluable))
    return results, Sampling(len(chosen), len(evaluable), seed, intervals)


def summary(results: dict[str, np.ndarray], n: int = 10) -> dict[str, float]:
    return {f"{name}@{n}": float(values[n - 1]) for name, values in results.items()}
