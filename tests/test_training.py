"""End-to-end training on synthetic data with a planted pattern: recall far above chance."""

from pathlib import Path

import numpy as np
import pytest

from training.pipeline import ProtocolConfig, prepare, restore, train_and_evaluate

TINY = {"hidden": [32]}
FAST = {"epochs": 40, "patience": 8, "batch_size": 16}


@pytest.mark.parametrize("kind", ["pop", "itemknn", "ease", "dae", "cdae", "cddae"])
def test_models_learn_the_planted_pattern(synthetic_dir: Path, kind: str) -> None:
    prepared = prepare(synthetic_dir, ProtocolConfig(seed=0))
    neural = kind in ("dae", "cdae", "cddae")
    _, checkpoint = train_and_evaluate(
        kind, prepared, model=TINY if neural else None, train=FAST if neural else None,
        progress=False,
    )  # fmt: skip
    recall = checkpoint.meta["metrics"]["R"][9]
    # A user's test items sit in its group's block of 20 items among 80; the user's 8 training
    # items are excluded, so a random list of 10 reaches recall ≈ 10 / 72 ≈ 0.14, and a perfect
    # one, drawing from the block's 12 unseen items, about 10 / 12 ≈ 0.83 (more with luck).
    chance = 10 / 72
    if kind == "pop":
        assert recall < 2 * chance + 0.1
    else:
        assert recall > 0.7, f"{kind}: R@10 = {recall:.3f}, chance ≈ {chance:.2f}"


def test_same_seed_same_metrics_and_checkpoint_round_trip(
    synthetic_dir: Path, tmp_path: Path
) -> None:
    prepared = prepare(synthetic_dir, ProtocolConfig(seed=1))
    runs = [
        train_and_evaluate("cddae", prepared, seed=5, model=TINY, train=FAST, progress=False)
        for _ in range(2)
    ]
    assert runs[0][1].meta["metrics"] == runs[1][1].meta["metrics"]
    model, checkpoint = runs[0]
    checkpoint.save(tmp_path / "ckpt")
    from training.checkpoint import Checkpoint

    restored = restore(Checkpoint.load(tmp_path / "ckpt"))
    users = np.arange(prepared.dataset.n_users)
    feats = prepared.dataset.user_features
    np.testing.assert_allclose(
        restored.score(prepared.train, users, feats),
        model.score(prepared.train, users, feats),
        rtol=1e-6,
    )
