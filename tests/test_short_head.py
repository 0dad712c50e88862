"""Two jobs, two heads: the short head (ModelConfig.short_head_share) scores histories of at
most `short_history_max` positives, the network every longer one — in training's evaluation,
in the saved state, in the exported bundle and in the service, by one rule."""

from pathlib import Path

import numpy as np
import pytest
import scipy.sparse as sp
import torch

from service.bundle import load_bundle
from service.serving.onnx_model import Model, Query
from training.data.prepared import ProtocolConfig, prepare
from training.jobs.export import export_checkpoint, first_entries
from training.jobs.pipeline import train_and_evaluate
from training.models.autoencoders import ModelConfig
from training.models.baselines import cosine_similarity
from training.models.interface import FitContext
from training.models.linear_path import AUTO_MAX_ITEMS
from training.models.neighbours import resolve as resolve_neighbours
from training.models.trainer import (
    NEIGHBOURS_PREFIX,
    SHORT_PREFIX,
    AutoencoderRecommender,
    TrainConfig,
)

HEAD = {"hidden": [16], "short_head_share": 0.75, "short_head_history_rate": 0.5,
        "short_head_cold_rate": 0.1, "short_history_max": 2}  # fmt: skip
FAST = {"epochs": 4, "patience": 4, "batch_size": 16}
# Item-kNN's fold-in on the short head's rows (training/models/neighbours.py).
NEIGHBOURS = {"short_head_neighbours": 2.0, "short_head_neighbour_shrink": 5.0}


def _context(users: int = 90, items: int = 30, seed: int = 0) -> FitContext:
    rng = np.random.default_rng(seed)
    dense = (rng.random((users, items)) < 0.2).astype(np.float32)
    dense[:10, :] = 0.0
    dense[:10, :2] = 1.0  # ten users with two positives: the short head's
    valid = (rng.random((users, items)) < 0.03) & (dense == 0)
    return FitContext(
        sp.csr_matrix(dense), sp.csr_matrix(valid.astype(np.float32)),
        np.zeros((users, 0), np.float32), np.zeros((items, 0), np.float32), seed, False,
    )  # fmt: skip


def _fitted(**options: float) -> tuple[AutoencoderRecommender, FitContext]:
    model = AutoencoderRecommender(ModelConfig(**{**HEAD, **options}), TrainConfig(**FAST))
    ctx = _context()
    model.fit(ctx)
    return model, ctx


def test_the_network_trains_without_the_new_user_options_and_the_head_with_them() -> None:
    model, _ = _fitted()
    assert model.net is not None and model.short_net is not None
    assert model.net.config.short_history_rate == 0.0 and model.net.config.cold_start_rate == 0.0
    assert model.short_net.config.short_history_rate == 0.5
    assert model.short_net.config.cold_start_rate == 0.1
    # The head's own encoder moved; the decoder and output layer are the network's.
    assert not torch.equal(model.net.item_in, model.short_net.item_in)
    for name, value in model.net.out.state_dict().items():
        assert torch.equal(value, model.short_net.out.state_dict()[name])
    assert model.params()["short_head"] == "3 epochs, histories of at most 2 positives"


def test_scores_route_by_history_length_and_survive_the_saved_state() -> None:
    model, ctx = _fitted()
    history = ctx.train[:20]
    users, features = np.arange(20), ctx.user_features[:20]
    both = model.score(history, users, features)
    short = np.diff(history.indptr) <= 2
    assert short[:10].all() and not short[10:].any()
    head_only = AutoencoderRecommender(model.model_config, model.train_config)
    head_only.net = model.short_net
    network_only = AutoencoderRecommender(model.model_config, model.train_config)
    network_only.net = model.net
    alone = {  # each head on its own rows (batch size moves the last float bits)
        "head": head_only.score(history[:10], users[:10], features[:10]),
        "network": network_only.score(history[10:], users[10:], features[10:]),
    }
    np.testing.assert_allclose(both[:10], alone["head"], atol=1e-6)
    np.testing.assert_allclose(both[10:], alone["network"], atol=1e-6)
    assert not np.allclose(both[:10], network_only.score(history[:10], users[:10], features[:10]))

    state = model.state()
    own = [k for k in state if k.startswith(SHORT_PREFIX)]
    assert own and not any(k.removeprefix(SHORT_PREFIX).startswith("out.") for k in own)
    restored = AutoencoderRecommender(model.model_config, model.train_config)
    restored.load_state(state, ctx)
    np.testing.assert_allclose(restored.score(history, users, features), both, atol=1e-6)


@pytest.fixture(scope="module")
def served(synthetic_dir: Path, tmp_path_factory: pytest.TempPathFactory):
    prepared = prepare(synthetic_dir, ProtocolConfig(seed=0))
    model = {**HEAD, **NEIGHBOURS, "short_history_max": 3}  # the shipped default's parts
    recommender, checkpoint = train_and_evaluate(
        "cddae", prepared, model=model, train=FAST, progress=False
    )
    models = tmp_path_factory.mktemp("models")
    version, figures = export_checkpoint(checkpoint, models)
    return recommender, checkpoint, models / version, figures


def test_the_graph_follows_the_trainers_rule(served) -> None:
    recommender, checkpoint, folder, figures = served
    manifest = load_bundle(folder).manifest
    assert manifest["short_head"]["max_history"] == 3
    assert manifest["parity"] == figures and figures["max_abs_diff"] <= 1e-4
    model = Model.load(folder)
    users = np.arange(40)
    positives = checkpoint.positives[users]
    # Each user twice: the first 3 positives (the short head's) and the first 4 (the network's).
    for length in (3, 4):
        rows = first_entries(positives, length)
        assert (np.diff(rows.indptr) == length).all()
        features = checkpoint.user_features[users]
        want = recommender.score(rows, np.full(len(users), -1), features)
        queries = [
            Query(dict.fromkeys(rows[u].indices.tolist(), 1.0), features[u]) for u in range(40)
        ]
        np.testing.assert_allclose(model.scores(queries), want, atol=1e-4)
    # A batch of both (the graph's third branch) scores each row as it scores it alone.
    features = checkpoint.user_features[users]
    rows = [first_entries(positives[u : u + 1], 3 + u % 2) for u in range(40)]
    mixed = [Query(dict.fromkeys(r.indices.tolist(), 1.0), features[u]) for u, r in enumerate(rows)]
    alone = np.vstack([model.scores([q]) for q in mixed])
    np.testing.assert_allclose(model.scores(mixed), alone, atol=1e-5)
    want = recommender.score(sp.vstack(rows, format="csr"), np.full(40, -1), features)
    np.testing.assert_allclose(alone, want, atol=1e-4)
    # The two encoders differ: the same three items score otherwise as part of a longer row.
    short = Query({0: 1.0, 1: 1.0, 2: 1.0}, np.zeros(model.bundle.user_spec.width, np.float32))
    padded = Query({0: 1.0, 1: 1.0, 2: 1.0, 3: 0.0}, short.features)  # weight 0: padding
    np.testing.assert_allclose(model.scores([short]), model.scores([padded]), atol=1e-6)
    history = sp.csr_matrix(([1.0] * 3, [0, 1, 2], [0, 3]), shape=(1, len(model.item_index)))
    head_off, near = recommender.short_net, recommender.neighbours
    assert near is not None and manifest["short_head"]["neighbours"].startswith("item cosine")
    try:
        recommender.short_net, recommender.neighbours = None, None
        network = recommender.score(history, np.array([-1]), short.features[None])
        recommender.short_net = head_off  # the head without its neighbours
        head_alone = recommender.score(history, np.array([-1]), short.features[None])
    finally:
        recommender.short_net, recommender.neighbours = head_off, near
    assert not np.allclose(model.scores([short]), network, atol=1e-4)
    assert not np.allclose(model.scores([short]), head_alone, atol=1e-4)


def test_parity_is_against_the_trainer_and_catches_a_wrong_rule(served) -> None:
    from training.jobs.export import InferencePath, ItemPath, graph_of, model_inputs, parity

    recommender, checkpoint, _, _ = served
    module = InferencePath(recommender, "cddae")
    module.short_max = 0  # the graph's rule no longer the trainer's: only empty rows short
    graph = graph_of(module, model_inputs(checkpoint, np.arange(2)))

    def scorer(rows: sp.csr_matrix, users: np.ndarray) -> np.ndarray:
        return recommender.score(rows, users, checkpoint.user_features[users])

    module.short_max = 3  # parity's sides follow the trainer's limit
    path = ItemPath.of(module, recommender.cold_layers)
    figures = parity(graph, module, checkpoint, path, scorer)
    assert figures["max_abs_diff"] > 1e-4  # export would refuse it


def test_a_checkpoint_whose_head_does_not_match_its_options_is_refused() -> None:
    model, ctx = _fitted()
    state = model.state()
    for broken in (
        {**state, SHORT_PREFIX + "out.weight": state["out.weight"]},  # a shared layer
        {k: v for k, v in state.items() if k != SHORT_PREFIX + "item_in_bias"},  # one missing
        {k: v for k, v in state.items() if not k.startswith(SHORT_PREFIX)},  # none: share 0.75
    ):
        restored = AutoencoderRecommender(model.model_config, model.train_config)
        with pytest.raises(ValueError, match="short head"):
            restored.load_state(broken, ctx)
    no_head = AutoencoderRecommender(ModelConfig(hidden=(16,)), model.train_config)
    with pytest.raises(ValueError, match="short head"):
        no_head.load_state(state, ctx)
    wider = dict(state)
    wider[SHORT_PREFIX + "item_in"] = np.zeros((30, 8), np.float32)
    with pytest.raises(ValueError, match=r"(?s)the checkpoint.s short head: .*item_in"):
        AutoencoderRecommender(model.model_config, model.train_config).load_state(wider, ctx)
    with pytest.raises(ValueError, match="short_history_max in"):
        ModelConfig(short_history_max=2**63 - 1)


def test_neighbours_add_item_knns_fold_in_to_the_short_rows_only() -> None:
    plain, ctx = _fitted()
    model, _ = _fitted(**NEIGHBOURS)
    assert model.neighbours is not None and plain.neighbours is None
    assert model.params()["short_head_neighbours"] == "item cosine (30 × 30), weight 2"
    history = ctx.train[:20]
    users, features = np.arange(20), ctx.user_features[:20]
    with_them = model._output(history, features, users).numpy()
    without = plain._output(history, features, users).numpy()
    # Longer histories: the very same model (the neighbours draw nothing from the seed).
    np.testing.assert_allclose(with_them[10:], without[10:], atol=1e-6)
    # Short ones: the head's logits plus 2 · x S, S the cosine of the binarised data the head
    # was fit on (the refit's: training and validation positives).
    binary = ctx.full_train.astype(np.float32)
    binary.data[:] = 1.0
    near = 2.0 * (history[:10] @ cosine_similarity(binary, 5.0))
    np.testing.assert_allclose(with_them[:10, :30], without[:10, :30] + near, atol=1e-5)
    assert np.abs(near).max() > 0.1

    restored = AutoencoderRecommender(model.model_config, model.train_config)
    restored.load_state(model.state(), ctx)
    assert restored.params()["short_head_neighbours"] == model.params()["short_head_neighbours"]
    np.testing.assert_allclose(
        restored.score(history, users, features), model.score(history, users, features), atol=1e-6
    )


def test_neighbours_that_do_not_fit_are_refused_and_past_the_size_rule_left_out(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    model, ctx = _fitted(**NEIGHBOURS)
    state = model.state()
    weight_key, scale_key = NEIGHBOURS_PREFIX + "weight", NEIGHBOURS_PREFIX + "scale"
    assert state[weight_key].shape == (30, 30)
    poisoned = state[weight_key].copy()
    poisoned[3, 0] = np.nan
    short_less = {k: v for k, v in state.items() if not k.startswith(SHORT_PREFIX)}
    absent = {k: v for k, v in state.items() if not k.startswith(NEIGHBOURS_PREFIX)}
    for config, broken, what in (
        (model.model_config, {**state, weight_key: np.zeros((30, 29))}, "expected floats"),
        (model.model_config, {**state, weight_key: np.ones((30, 30), np.int64)}, "int64"),
        (model.model_config, {**state, weight_key: poisoned}, "not finite"),
        (model.model_config, {**state, scale_key: np.float32("nan")}, "not finite"),
        (model.model_config, {**state, scale_key: np.array("2")}, "expected one float"),
        (model.model_config, {**state, scale_key: np.float32(-1000)}, "scale -1000 against"),
        (model.model_config, {**state, NEIGHBOURS_PREFIX + "extra": np.zeros(1)}, "keys"),
        (model.model_config, {k: v for k, v in state.items() if k != scale_key}, "keys"),
        (model.model_config, absent, "keys \\[\\]"),  # the options and the rule ask for them
        (ModelConfig(**HEAD), state, "short_head_neighbours 0"),  # the options say off
        (ModelConfig(hidden=(16,)), short_less, "without a short head"),
    ):
        restored = AutoencoderRecommender(config, model.train_config)
        with pytest.raises(ValueError, match=f"short-head neighbours do not fit: .*{what}"):
            restored.load_state(broken, ctx)
    # Absent where the fit's rule leaves them out (past the size rule): the head serves alone.
    monkeypatch.setattr("training.models.neighbours.AUTO_MAX_ITEMS", 20)
    restored = AutoencoderRecommender(model.model_config, model.train_config)
    restored.load_state(absent, ctx)
    assert restored.neighbours is None and restored.params()["short_head_neighbours"] == "off"
    monkeypatch.undo()
    assert resolve_neighbours(8.0, AUTO_MAX_ITEMS + 1, 5) == (
        False,
        f"off: {AUTO_MAX_ITEMS + 1:,} items > {AUTO_MAX_ITEMS:,} (a dense items × items matrix)",
    )
    built, why = resolve_neighbours(8.0, 300, 10_000)  # 3M floats gathered per user
    assert not built and why.startswith("off: short_history_max 10,000 × 300 items")
    assert resolve_neighbours(0.0, 30, 5) == (False, "off")
    no_head, _ = _fitted(**{**NEIGHBOURS, "short_head_share": 0.0})  # the head off: all of it
    assert no_head.neighbours is None and no_head.params()["short_head_neighbours"] == "off"
    for bad in ({"short_head_neighbours": -1.0}, {"short_head_neighbour_shrink": float("nan")}):
        with pytest.raises(ValueError, match="must be in"):
            ModelConfig(**HEAD, **bad)


def test_cosine_similarity_in_blocks_is_the_whole_matrixs() -> None:
    rng = np.random.default_rng(3)
    x = sp.csr_matrix((rng.random((200, 50)) < 0.2).astype(np.float32))
    dense = x.toarray().astype(np.float64)
    gram = dense.T @ dense
    norms = np.sqrt(np.diag(gram))
    want = gram / (np.outer(norms, norms) + 4.0)
    np.fill_diagonal(want, 0.0)
    np.testing.assert_allclose(cosine_similarity(x, 4.0, block=7), want, atol=1e-6)
    cut = cosine_similarity(x, 4.0, k=5, block=7)
    assert ((cut != 0).sum(axis=0) <= 5).all()
    np.testing.assert_array_equal(cut, cosine_similarity(x, 4.0, k=5, block=1024))
    kept = np.sort(want, axis=0)[-5:]
    np.testing.assert_allclose(np.sort(cut, axis=0)[-5:], kept, atol=1e-6)


def test_parity_counts_a_nan_as_the_worst_difference() -> None:
    from training.jobs.export import largest_difference

    ones = np.ones((2, 3), np.float32)
    assert largest_difference(ones, ones + 0.5) == pytest.approx(0.5)
    with_nan = ones.copy()
    with_nan[1, 2] = np.nan
    assert largest_difference(with_nan, ones) == float("inf")
    assert largest_difference(ones, with_nan * np.inf) == float("inf")
