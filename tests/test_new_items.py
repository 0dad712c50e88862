"""The item-disjoint protocol's pieces and the similar-items measure, on tiny data."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import scipy.sparse as sp

from training.data.prepared import ProtocolConfig, prepare
from training.experiments.new_items import anchors, hold_out, rank_held
from training.experiments.similar_items import cosine, lifts, top_lists


def test_held_out_items_leave_the_catalogue(synthetic_dir: Path) -> None:
    full = prepare(synthetic_dir, ProtocolConfig(seed=0))
    split = hold_out(full, np.arange(full.dataset.n_items), 0.2, seed=3)
    counts = np.diff(full.positives.tocsc().indptr)
    assert len(split.held) == round(0.2 * (counts > 0).sum())
    assert (counts[split.held] > 0).all()
    assert not set(split.held) & set(split.warm)
    warm = split.prepared
    assert warm.dataset.n_items == len(split.warm)
    assert set(warm.dataset.raw.item_profiles) == {
        str(i) for i in full.dataset.item_ids[split.warm]
    }
    np.testing.assert_array_equal(
        warm.dataset.item_features, full.dataset.item_features[split.warm]
    )
    assert warm.positives.nnz == full.positives[:, split.warm].nnz
    assert (warm.train + warm.test).nnz == warm.positives.nnz  # nothing of the held items left
    again = hold_out(full, np.arange(full.dataset.n_items), 0.2, seed=3)
    np.testing.assert_array_equal(again.held, split.held)  # the rule is the seed's


def test_genre_similarity_finds_the_planted_blocks(synthetic_dir: Path) -> None:
    """Synthetic genres mark each group's block: the content anchor must beat random."""
    full = prepare(synthetic_dir, ProtocolConfig(seed=0))
    split = hold_out(full, np.arange(full.dataset.n_items), 0.2, seed=0)
    test = full.positives[:, split.held]
    users = np.flatnonzero(np.diff(test.indptr) > 0)
    rows = {name: rank_held(s, users, test, split.held) for name, s in anchors(split, 0).items()}
    assert rows["genre similarity"]["NDCG@10"] > rows["random"]["NDCG@10"] + 0.1
    assert rows["genre similarity"]["R@10"] > 0.9


def test_lift_against_a_hand_count() -> None:
    # 4 users; item 0 rated by users 0, 1; item 1 by 0, 1; item 2 by 2, 3; item 3 by 0, 2.
    ratings = sp.csr_matrix(
        np.array([[1, 1, 0, 1], [1, 1, 0, 0], [0, 0, 1, 1], [0, 0, 1, 0]], dtype=np.float32)
    )
    lift = lifts(ratings, np.array([0]), np.array([[1, 3]]))
    # P(1|0) = 2/2, P(1) = 2/4: lift 2; P(3|0) = 1/2, P(3) = 2/4: lift 1; mean 1.5.
    np.testing.assert_allclose(lift, [1.5])
    lists = top_lists(cosine(ratings.T.toarray()), np.array([0]), n=2)
    assert lists[0, 0] == 1 and 0 not in lists[0]
