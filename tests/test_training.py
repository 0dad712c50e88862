"""End-to-end training on synthetic data with a planted pattern: recall far above chance."""

from pathlib import Path

import numpy as np
import pytest

from training.data.prepared import ProtocolConfig, prepare
from training.evaluation.metrics import evaluate_chunked, evaluate_scores
from training.jobs.pipeline import ranker, restore, train_and_evaluate

TINY = {"hidden": [32]}
FAST = {"epochs": 40, "patience": 8, "batch_size": 16}


@pytest.mark.parametrize("kind", ["pop", "itemknn", "ease", "edlae", "dae", "cdae", "cddae"])
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
    from training.jobs.checkpoint import Checkpoint

    loaded = Checkpoint.load(tmp_path / "ckpt")
    users = np.arange(prepared.dataset.n_users)
    feats = prepared.dataset.user_features
    np.testing.assert_allclose(  # the served model: fit on all data
        restore(loaded, served=True).score(prepared.positives, users, feats),
        model.score(prepared.positives, users, feats),
        rtol=1e-6,
    )
    evaluated = restore(loaded)  # the evaluated model, ranked as the evaluation ranks
    metrics = evaluate_chunked(ranker(evaluated, feats), prepared.train, prepared.test)
    assert {k: v.tolist() for k, v in metrics.items()} == checkpoint.meta["metrics"]
    # The autoencoder ranks in torch on logits; the same lists as its scores ranked in numpy.
    by_scores = evaluate_scores(
        evaluated.score(prepared.train, users, feats), prepared.train, prepared.test
    )
    for name, values in by_scores.items():
        np.testing.assert_allclose(metrics[name], values, rtol=1e-12)


def test_served_model_is_fit_on_all_data_with_the_evaluated_settings(synthetic_dir: Path) -> None:
    prepared = prepare(synthetic_dir, ProtocolConfig(seed=0))
    served, checkpoint = train_and_evaluate(
        "cddae", prepared, model=TINY, train=FAST, progress=False
    )
    evaluated = checkpoint.meta["params"]
    assert served.params()["train"]["epochs"] == evaluated["best_epoch"]
    assert checkpoint.meta["served"]["positives"] == prepared.positives.nnz > prepared.train.nnz
    # The served weights differ from the evaluated ones: they saw the held-out positives.
    assert any(
        not np.array_equal(checkpoint.state[k], checkpoint.final_state[k]) for k in checkpoint.state
    )
    ease, ease_checkpoint = train_and_evaluate("ease", prepared, progress=False)
    assert ease.params()["lambda"] == ease_checkpoint.meta["params"]["lambda"]
    _, off = train_and_evaluate(
        "cddae", prepared, model=TINY, train=FAST, progress=False, final_fit=False
    )
    assert off.final_state is None and off.meta["served"]["fit_on"].startswith("training split")


def test_item_item_models_refuse_what_cannot_fit(
    synthetic_dir: Path, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    from training.cli import main

    monkeypatch.setenv("CDDAE_ITEM_ITEM_LIMIT_GB", "0.00001")  # 10 KiB: 80 items do not fit
    for kind, label in (("ease", "EASE"), ("itemknn", "item-kNN")):
        assert main(["train", "--model", kind, "--data", str(synthetic_dir), "--quiet"]) == 2
        error = capsys.readouterr().err
        assert f"{label} on 80 items needs about" in error and "the limit is" in error
        assert "Use --model cddae" in error and "Traceback" not in error


def test_sampled_loss_with_row_sparse_updates_learns_the_pattern(synthetic_dir: Path) -> None:
    prepared = prepare(synthetic_dir, ProtocolConfig(seed=0))
    train = {**FAST, "negatives": 20}  # 20 of 80 items drawn per batch
    model = {**TINY, "output": "sigmoid", "loss": "bce", "input_norm": False}  # sampled: BCE
    _, checkpoint = train_and_evaluate("cddae", prepared, model=model, train=train, progress=False)
    assert checkpoint.meta["metrics"]["R"][9] > 0.5  # chance ≈ 0.14
