"""Split invariants: disjoint, complete, deterministic, the documented hold-out sizes."""

import numpy as np
import pytest
import scipy.sparse as sp

from training.data.splits import holdout_count, split, train_valid_test


def _random_matrix(
    seed: int = 0, users: int = 50, items: int = 40
) -> tuple[sp.csr_matrix, sp.csr_matrix]:
    rng = np.random.default_rng(seed)
    dense = (rng.random((users, items)) < 0.2).astype(np.float32)
    dense[0] = 0
    dense[1, :] = 0
    dense[1, 3] = 1  # a user with a single positive keeps it in training
    times = sp.csr_matrix(dense * rng.integers(1, 10**6, size=dense.shape))
    return sp.csr_matrix(dense), times


@pytest.mark.parametrize("protocol", ["random", "temporal", "leave-one-out"])
def test_split_is_disjoint_complete_and_deterministic(protocol: str) -> None:
    positives, times = _random_matrix()
    a = split(positives, times, protocol, seed=3)
    b = split(positives, times, protocol, seed=3)
    assert a.train.multiply(a.test).nnz == 0
    assert ((a.train + a.test) != positives).nnz == 0
    assert (a.train != b.train).nnz == 0 and (a.test != b.test).nnz == 0
    assert a.test[1].nnz == 0 and a.train[1].nnz == 1


def test_random_split_sizes_and_seed_dependence() -> None:
    positives, times = _random_matrix()
    result = split(positives, times, "random", fraction=0.2, seed=1)
    for user in range(positives.shape[0]):
        assert result.test[user].nnz == holdout_count(positives[user].nnz, 0.2)
    other = split(positives, times, "random", fraction=0.2, seed=2)
    assert (result.test != other.test).nnz > 0


def test_holdout_count() -> None:
    assert [holdout_count(n, 0.2) for n in (0, 1, 2, 5, 8, 10, 13)] == [0, 0, 1, 1, 2, 2, 3]


def test_temporal_split_holds_out_the_latest() -> None:
    positives, times = _random_matrix()
    result = split(positives, times, "temporal", seed=0)
    for user in result.evaluated_users:
        train_times = times[user].toarray()[0][result.train[user].indices]
        test_times = times[user].toarray()[0][result.test[user].indices]
        assert train_times.max() <= test_times.min()


def test_validation_is_carved_from_training_only() -> None:
    positives, times = _random_matrix()
    outer, inner = train_valid_test(positives, times, seed=4)
    assert ((inner.train + inner.test) != outer.train).nnz == 0
    assert inner.test.multiply(outer.test).nnz == 0
