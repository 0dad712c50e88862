"""The user-disjoint protocol: held-out users never reach training, and are asked for through
the bundle as the service asks for ad-hoc users."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from training.experiments.new_users import reveal, run, user_disjoint


def test_held_out_users_are_out_of_training_whole(synthetic_dir: Path) -> None:
    split = user_disjoint(synthetic_dir, fraction=0.25, seed=3)
    prepared = split.prepared
    held = np.flatnonzero(np.diff(prepared.test.indptr) > 0)
    assert len(held) == round(0.25 * prepared.dataset.n_users)
    for matrix in (prepared.train, prepared.fit, prepared.valid, prepared.positives, prepared.seen):
        assert not np.diff(matrix.indptr)[held].any()  # nothing of theirs to learn from
    shown, target = reveal(split, 3)
    assert (np.diff(shown.indptr)[split.held] == 3).all()
    assert shown.multiply(target).nnz == 0  # revealed items are never targets
    for user in split.held[:5]:  # the revealed are the earliest
        row = slice(split.positives.indptr[user], split.positives.indptr[user + 1])
        times = dict(zip(split.positives.indices[row], split.timestamps.data[row], strict=True))
        first = shown.indices[shown.indptr[user] : shown.indptr[user + 1]]
        rest = target.indices[target.indptr[user] : target.indptr[user + 1]]
        assert max(times[i] for i in first) <= min(times[i] for i in rest)


def test_models_and_baselines_are_scored_at_every_k(synthetic_dir: Path) -> None:
    config = {"cddae": {"model": {"hidden": [16]}, "train": {"epochs": 8, "batch_size": 16}}}
    results = run(synthetic_dir, ("cddae", "ease"), seed=0, fraction=0.25, revealed=(0, 3),
                  config=config, log=lambda _: None)  # fmt: skip
    assert {"popularity", "cddae", "ease"} <= set(results)
    assert any(name.startswith("popularity by ") for name in results)
    for by_k in results.values():
        assert set(by_k) == {0, 3} and all(0 <= m["P@10"] <= 1 for m in by_k.values())
    # The planted pattern: 3 revealed items point at the user's block; popularity cannot see it.
    assert results["ease"][3]["R@10"] > results["popularity"][3]["R@10"]
