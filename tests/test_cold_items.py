"""The cold-item head: trained on the frozen network, stored, exported as the bundle contract
(service.bundle format 4, service.item_path) says, and reproduced by the service's numpy path."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch

from service.bundle import load_bundle
from service.item_path import cold_weights, item_scores
from training.data.prepared import ProtocolConfig, prepare
from training.jobs.checkpoint import Checkpoint
from training.jobs.export import INPUTS, export_checkpoint, padded
from training.jobs.pipeline import fit_cold_items, restore, train_and_evaluate
from training.models.cold_items import ColdHead

FAST = {"epochs": 5, "patience": 5, "batch_size": 16}
SOFTMAX = {"hidden": [16], "beta": 0.0, "output": "softmax", "loss": "cce", "input_norm": True}
SIGMOID = {"hidden": [16], "beta": 0.0, "output": "sigmoid", "loss": "bce"}
HEAD = {"epochs": 8, "batch_size": 32, "hidden": 16, "lr": 0.02}


@pytest.fixture(scope="module")
def prepared(synthetic_dir: Path):
    return prepare(synthetic_dir, ProtocolConfig(seed=0))


@pytest.fixture(scope="module")
def trained(prepared, tmp_path_factory: pytest.TempPathFactory):
    served, checkpoint = train_and_evaluate(
        "cddae", prepared, model=SOFTMAX, train=FAST, progress=False, cold=HEAD
    )
    folder = tmp_path_factory.mktemp("checkpoint")
    checkpoint.save(folder)
    return served, Checkpoint.load(folder)


def test_the_head_leaves_the_warm_network_unchanged(prepared, trained) -> None:
    served, _ = trained
    before = {k: v.clone() for k, v in served.net.state_dict().items()}
    assert fit_cold_items(served, prepared, prepared.positives) is not None
    for name, tensor in served.net.state_dict().items():
        assert torch.equal(tensor, before[name]), name


def test_the_head_travels_in_the_served_state(trained) -> None:
    _, checkpoint = trained
    assert {"cold_w0", "cold_b0", "cold_w1", "cold_b1"} <= set(checkpoint.final_state)
    assert not any(k.startswith("cold_") for k in checkpoint.state)  # the evaluated model's
    figures = checkpoint.meta["cold_items"]
    assert figures["head"].startswith(f"{checkpoint.item_features.shape[1]}→16→17")
    restored = restore(checkpoint, served=True)
    assert len(restored.cold_layers) == 2


def test_the_head_ranks_a_group_block_above_the_others(prepared, trained) -> None:
    """Synthetic genres mark each group's block: the head must place an item's row near its
    block's learnt rows (the mean score of a user's own block beats the others')."""
    served, _ = trained
    rows, biases = cold_weights(served.cold_layers, prepared.dataset.item_features)
    net = served.net
    with torch.no_grad():
        bag_users = np.arange(8)
        items, weights = padded(prepared.positives[bag_users])
        hidden = net.hidden(
            *net.padded_input(torch.from_numpy(items), torch.from_numpy(weights)),
            torch.from_numpy(prepared.dataset.user_features[bag_users].astype(np.float32)),
            torch.from_numpy(bag_users),
        ).numpy()
    scores = hidden @ rows.T + biases
    liked = prepared.positives[bag_users].toarray() > 0
    assert (scores[liked].mean() - scores[~liked].mean()) > 0.5


def test_export_writes_the_item_path(trained, tmp_path: Path) -> None:
    _, checkpoint = trained
    version, figures = export_checkpoint(checkpoint, tmp_path)
    assert figures["item_path_max_abs_diff"] <= 1e-4
    assert figures["cold_head_max_abs_diff"] <= 1e-4
    bundle = load_bundle(tmp_path / version)
    manifest = bundle.manifest
    assert [o["name"] for o in manifest["outputs"]] == ["scores", "hidden", "log_norm"]
    assert manifest["outputs"][1]["shape"] == ["batch", 16]
    assert manifest["cold_items"]["output"] == "softmax"
    assert manifest["cold_items"]["cold_share"] == 0.25
    n_items = len(bundle.item_ids)
    assert bundle.item_vectors.shape == (n_items, 16) and bundle.item_bias.shape == (n_items,)
    assert bundle.item_vectors.dtype == np.float32
    assert len(bundle.cold_layers) == 2
    assert set(bundle.item_values) == {"genres", "year"}
    assert bundle.item_values["year"].dtype == np.float64
    assert bundle.item_values["genres"][0] == "|".join(
        checkpoint.item_catalogue[str(checkpoint.item_ids[0])]["genres"]
    )
    # The service's path: the graph's hidden and log_norm with the item vectors give its scores,
    # and a new item's weights come from its profile alone.
    session = ort.InferenceSession(str(bundle.onnx_path), providers=["CPUExecutionProvider"])
    users = np.arange(5)
    items, weights = padded(checkpoint.positives[users])
    feeds = dict(zip(INPUTS, (items, weights, checkpoint.user_features[users], users),
                     strict=True))  # fmt: skip
    scores, hidden, log_norm = session.run(["scores", "hidden", "log_norm"], feeds)
    # A catalogue item's score also holds the linear path's logit (CDDAE's default); a new
    # item has no column in B, so its score is the head's row alone on the same normaliser.
    net = restore(checkpoint, served=True).net
    assert net.linear is not None
    with torch.no_grad():
        offset = net.linear.padded(torch.from_numpy(items), torch.from_numpy(weights)).numpy()
    rebuilt = item_scores(hidden, log_norm, bundle.item_vectors, bundle.item_bias, "softmax")
    assert np.abs(rebuilt - scores).max() > 1e-3  # without it, the scores are not rebuilt
    rebuilt = item_scores(hidden, log_norm, bundle.item_vectors, bundle.item_bias, "softmax",
                          offset)  # fmt: skip
    np.testing.assert_allclose(rebuilt, scores, rtol=1e-5, atol=1e-6)  # float32 sums
    empty = cold_weights(bundle.cold_layers, np.zeros((1, checkpoint.item_features.shape[1])))
    with torch.no_grad():
        want = ColdHead.from_arrays(bundle.cold_layers)(
            torch.zeros(1, checkpoint.item_features.shape[1])
        )
    np.testing.assert_allclose(np.append(empty[0][0], empty[1]), want[0].numpy(), atol=1e-6)


def test_a_sigmoid_model_with_sampled_loss_gets_a_head(prepared, tmp_path: Path) -> None:
    train = {**FAST, "epochs": 2, "negatives": 20}
    _, checkpoint = train_and_evaluate(
        "cddae", prepared, model=SIGMOID, train=train, progress=False, cold={**HEAD, "hidden": 0}
    )
    version, _ = export_checkpoint(checkpoint, tmp_path)
    bundle = load_bundle(tmp_path / version)
    assert bundle.manifest["cold_items"]["output"] == "sigmoid"
    assert bundle.manifest["cold_items"]["head"].endswith("(linear)")
    assert len(bundle.cold_layers) == 1
    session = ort.InferenceSession(str(bundle.onnx_path), providers=["CPUExecutionProvider"])
    items, weights = padded(checkpoint.positives[:3])
    feeds = dict(zip(INPUTS, (items, weights, checkpoint.user_features[:3], np.arange(3)),
                     strict=True))  # fmt: skip
    _, _, log_norm = session.run(["scores", "hidden", "log_norm"], feeds)
    np.testing.assert_array_equal(log_norm, np.zeros(3, np.float32))


def test_baselines_keep_scores_only(prepared, tmp_path: Path) -> None:
    _, checkpoint = train_and_evaluate("ease", prepared, progress=False)
    version, _ = export_checkpoint(checkpoint, tmp_path)
    bundle = load_bundle(tmp_path / version)
    assert [o["name"] for o in bundle.manifest["outputs"]] == ["scores"]
    assert "cold_items" not in bundle.manifest
    assert bundle.item_vectors is None and not bundle.cold_layers
    assert set(bundle.item_values) == {"genres", "year"}  # filters work for every kind
