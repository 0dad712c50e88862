"""The tuner: equal budgets, validation only — the tuning split's test part is never read."""

from __future__ import annotations

from pathlib import Path

import pytest

from training.data.prepared import ProtocolConfig, prepare
from training.experiments.tuning import TUNING_SEED, tune, tuning_split


@pytest.mark.parametrize("protocol", ["random", "temporal"])
def test_the_tuning_split_never_holds_its_test_part(synthetic_dir: Path, protocol: str) -> None:
    outer = prepare(synthetic_dir, ProtocolConfig(name=protocol, seed=TUNING_SEED))
    tuning = tuning_split(synthetic_dir, TUNING_SEED, protocol)
    assert (tuning.train != outer.fit).nnz == 0 and (tuning.test != outer.valid).nnz == 0
    for part in (tuning.train, tuning.test, tuning.fit, tuning.valid):
        assert part.multiply(outer.test).nnz == 0  # the split's own test items: never seen
    assert (tuning.fit + tuning.valid != tuning.train).nnz == 0
    assert TUNING_SEED not in range(5)  # the seeds reports average


def test_a_temporal_tuning_split_stops_early_on_each_users_latest(synthetic_dir: Path) -> None:
    """Early stopping's validation is carved as a reported temporal fit carves it: by time."""
    outer = prepare(synthetic_dir, ProtocolConfig(name="temporal", seed=TUNING_SEED))
    times = outer.dataset.timestamps
    tuning = tuning_split(synthetic_dir, TUNING_SEED, "temporal")
    checked = 0
    for user in range(tuning.fit.shape[0]):
        fit, valid = tuning.fit[user].indices, tuning.valid[user].indices
        if len(fit) and len(valid):
            latest_fit = times[user, fit].toarray().max()
            assert times[user, valid].toarray().min() > latest_fit, user
            checked += 1
    assert checked > 100


def test_every_model_gets_the_same_budget(synthetic_dir: Path) -> None:
    report = tune(synthetic_dir, ("ease", "edlae", "itemknn"), budget=3, log=lambda _: None)
    for kind, result in report["models"].items():
        assert len(result["trials"]) == 3, kind
        assert result["NDCG@10"] == max(t["NDCG@10"] for t in result["trials"])
    ease = report["models"]["ease"]["chosen"]["model"]["lambdas"]
    assert len(ease) == 1  # one setting per trial, not EASE's own grid


def test_the_defaults_are_the_tuners_choices() -> None:
    """Every tuned kind's default sets exactly the options its search space draws (so no
    hand-picked value rides along), and the default preset builds that model."""
    import random

    from training.experiments.tuning import SPACES
    from training.jobs.pipeline import make_recommender
    from training.models.tuned import NEW_USERS, TUNED

    assert set(TUNED) == set(SPACES)
    for kind, chosen in TUNED.items():
        draw = SPACES[kind](random.Random(0))
        assert {part: set(options) for part, options in chosen.items()} == {
            part: set(options) for part, options in draw.items()
        }, kind
    cddae = make_recommender("cddae").params()
    assert cddae["model"]["linear_path"] == "auto"  # EASE's weights beside it, at EASE's λ
    assert cddae["model"]["linear_lambda"] == TUNED["ease"]["model"]["lambdas"][0]
    assert cddae["model"]["short_history_rate"] == NEW_USERS["cddae"]["model"]["short_history_rate"]
    assert list(cddae["model"]["hidden"]) == TUNED["cddae"]["model"]["hidden"]
    assert cddae["train"]["lr"] == TUNED["cddae"]["train"]["lr"]
    paper = make_recommender("cddae", "paper").params()
    assert list(paper["model"]["hidden"]) == [50] and paper["model"]["loss"] == "mae"
    assert make_recommender("ease").lambdas == tuple(TUNED["ease"]["model"]["lambdas"])
