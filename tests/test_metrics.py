"""Every metric against values worked out by hand (see the comments for the arithmetic)."""

import math

import numpy as np
import pytest
import scipy.sparse as sp

from training.evaluation.metrics import (
    evaluate_chunked,
    evaluate_lists,
    evaluate_sampled,
    evaluate_scores,
    mask_seen,
    rank_by_scores,
    top_n,
)


def _csr(rows: list[list[int]], n_items: int) -> sp.csr_matrix:
    dense = np.zeros((len(rows), n_items), dtype=np.float32)
    for r, items in enumerate(rows):
        dense[r, items] = 1
    return sp.csr_matrix(dense)


# User A ranks [0, 1, 2] with test items {1, 4}; user B ranks [3, 4, 5] with test item {3}.
LISTS = np.array([[0, 1, 2], [3, 4, 5]])
TEST = _csr([[1, 4], [3]], 6)
L3 = 1 / math.log2(3)  # discount at rank 2


@pytest.mark.parametrize(
    ("metric", "expected"),
    [
        ("P", [(0 + 1) / 2, (1 / 2 + 1 / 2) / 2, (1 / 3 + 1 / 3) / 2]),
        ("R", [(0 / 2 + 1 / 1) / 2, (1 / 2 + 1) / 2, (1 / 2 + 1) / 2]),
        ("PU", [1 / 2, 1, 1]),
        ("RU", [1 / 3, 2 / 3, 2 / 3]),
        # A: DCG 0, L3, L3 over ideal 1, 1 + L3, 1 + L3 (|G_A| = 2); B: DCG 1 over ideal 1.
        ("NDCG", [(0 + 1) / 2, (L3 / (1 + L3) + 1) / 2, (L3 / (1 + L3) + 1) / 2]),
        # A: precision 1/2 at its hit (rank 2) over min(N, 2); B: 1 over min(N, 1).
        ("MAP", [(0 + 1) / 2, (0.5 / 2 + 1) / 2, (0.5 / 2 + 1) / 2]),
        ("COV", [2 / 6, 4 / 6, 6 / 6]),
    ],
)
def test_metric_by_hand(metric: str, expected: list[float]) -> None:
    result = evaluate_lists(LISTS, TEST)
    np.testing.assert_allclose(result[metric], expected, rtol=1e-12)


def test_users_without_test_items_are_not_evaluated() -> None:
    with_empty = _csr([[1, 4], [], [3]], 6)
    lists = np.array([[0, 1, 2], [0, 1, 2], [3, 4, 5]])
    full = evaluate_lists(lists, with_empty)
    np.testing.assert_allclose(full["P"], evaluate_lists(LISTS, TEST)["P"])


def test_top_n_orders_best_first_and_breaks_ties_by_index() -> None:
    scores = np.array([[0.1, 0.9, 0.5, 0.9, 0.0]])
    assert top_n(scores, 3).tolist() == [[1, 3, 2]]


def test_mask_seen_removes_training_items_from_ranking() -> None:
    scores = np.array([[5.0, 4.0, 3.0, 2.0]])
    masked = mask_seen(scores, _csr([[0, 2]], 4))
    assert top_n(masked, 2).tolist() == [[1, 3]]
    assert scores[0, 0] == 5.0  # the input is untouched


def test_evaluate_scores_excludes_seen_items() -> None:
    # The best-scored item is in training: it must not count, the next two are test items.
    scores = np.array([[9.0, 8.0, 7.0, 1.0]])
    result = evaluate_scores(scores, _csr([[0]], 4), _csr([[1, 2]], 4), max_n=2)
    np.testing.assert_allclose(result["P"], [1.0, 1.0])
    np.testing.assert_allclose(result["R"], [0.5, 1.0])


def test_chunked_evaluation_equals_the_dense_result_exactly() -> None:
    rng = np.random.default_rng(0)
    n_users, n_items = 53, 40
    scores = rng.random((n_users, n_items)).astype(np.float32)
    scores[:, :5] = 0.5  # ties, broken the same way
    train = sp.random(n_users, n_items, density=0.2, format="csr", random_state=1)
    test = sp.random(n_users, n_items, density=0.1, format="csr", random_state=2)
    train.data[:] = test.data[:] = 1.0
    test = (test - test.multiply(train)).tocsr()
    test.eliminate_zeros()
    dense = evaluate_scores(scores, train, test)
    rank = rank_by_scores(lambda history, users: scores[users])
    for chunk in (1, 7, 1000):
        chunked = evaluate_chunked(rank, train, test, chunk=chunk)
        for name in dense:
            np.testing.assert_array_equal(chunked[name], dense[name])
    sample = np.arange(0, n_users, 3)
    some = evaluate_chunked(rank, train, test, users=sample)
    keep = np.zeros(n_users, bool)
    keep[sample] = True
    sub = evaluate_scores(scores[keep], train[keep], test[keep])
    np.testing.assert_array_equal(some["P"], sub["P"])


def _population(users: int = 4000, items: int = 300, seed: int = 0):
    """A test matrix and a fixed ranker (each user's list a function of the user alone)."""
    rng = np.random.default_rng(seed)
    test = sp.random(users, items, density=0.03, format="csr", random_state=seed)
    test.data[:] = 1.0
    train = sp.csr_matrix((users, items), dtype=np.float32)
    popular = np.argsort(-np.asarray(test.sum(axis=0)).ravel())  # good lists for some users
    offsets = rng.integers(0, min(40, max(items - 10, 0)) + 1, size=users)

    def rank(history, rows, n):
        return np.stack([popular[offsets[u] : offsets[u] + n] for u in rows])

    return rank, train, test


def test_a_sample_as_large_as_the_population_is_the_full_evaluation() -> None:
    rank, train, test = _population()
    full = evaluate_chunked(rank, train, test)
    results, sampling = evaluate_sampled(rank, train, test, sample=10**9)
    assert not sampling.sampled and sampling.ci95 == {}
    assert all(np.array_equal(full[k], results[k]) for k in full)


def test_sampled_metrics_are_the_chosen_users_and_their_intervals_cover_the_truth() -> None:
    """95% intervals over 200 seeded samples of 300 of ~3,900 users hold the full figure
    about 95% of the time (binomial spread: 90–99%), for means and for the pooled RU."""
    rank, train, test = _population()
    truth = evaluate_chunked(rank, train, test)
    covered = {"P": 0, "R": 0, "NDCG": 0, "RU": 0}
    for seed in range(200):
        results, sampling = evaluate_sampled(rank, train, test, sample=300, seed=seed)
        assert sampling.sampled and sampling.users == 300
        for name in covered:
            width = sampling.ci95[name][9]
            assert width > 0
            covered[name] += abs(results[name][9] - truth[name][9]) <= width
    assert all(180 <= hits <= 198 for hits in covered.values()), covered
    chosen = np.sort(np.random.default_rng(7).choice(
        np.flatnonzero(np.diff(test.indptr) > 0), 300, replace=False))  # fmt: skip
    again, _ = evaluate_sampled(rank, train, test, sample=300, seed=7)
    direct = evaluate_chunked(rank, train, test, users=chosen)
    assert np.allclose(again["P"], direct["P"]) and np.allclose(again["RU"], direct["RU"])


def test_a_catalogue_shorter_than_the_list_is_summarised() -> None:
    rank, train, test = _population(users=20_000, items=6)
    _, sampling = evaluate_sampled(rank, train, test, sample=1000, max_n=10)
    assert set(sampling.summary()["ci95"]) == {"P@6", "R@6", "PU@6", "NDCG@6", "MAP@6", "RU@6"}
