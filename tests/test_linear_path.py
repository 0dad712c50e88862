"""The linear path beside the autoencoder: EASE's weights, the scale validation chooses, where
it is built, and that it is what the saved and exported model scores with."""

import numpy as np
import pytest
import scipy.sparse as sp
import torch

from training.jobs.export import padded
from training.models.autoencoders import Autoencoder, Bag, ModelConfig, Sizes
from training.models.baselines import EASE, ITEM_ITEM_LIMIT_ENV, TooLarge
from training.models.interface import FitContext
from training.models.linear_path import (
    AUTO_MAX_ITEMS,
    SCALES,
    LinearPath,
    choose_scale,
    ease_start,
    resolve,
)
from training.models.trainer import AutoencoderRecommender, TrainConfig

SOFTMAX = {"output": "softmax", "loss": "cce", "input_norm": True}


def _context(users: int = 120, items: int = 40, seed: int = 0) -> FitContext:
    rng = np.random.default_rng(seed)
    dense = (rng.random((users, items)) < 0.15).astype(np.float32)
    valid = (rng.random((users, items)) < 0.03) & (dense == 0)
    return FitContext(
        sp.csr_matrix(dense), sp.csr_matrix(valid.astype(np.float32)),
        np.zeros((users, 0), np.float32), np.zeros((items, 0), np.float32), seed, False,
    )  # fmt: skip


def _ease(train: sp.csr_matrix, lam: float) -> EASE:
    ease = EASE((lam,))
    empty = sp.csr_matrix(train.shape, dtype=np.float32)
    ease.fit(FitContext(train, empty, np.zeros((train.shape[0], 0)), np.zeros((0, 0))))
    return ease


def test_the_path_is_ease_and_alone_ranks_as_ease() -> None:
    ctx = _context()
    ease = _ease(ctx.full_train, 50.0)
    path = LinearPath(ease_start(ctx.full_train, 50.0), 1.0)
    np.testing.assert_allclose(path.weight.numpy(), ease.similarity, atol=1e-6)
    net = Autoencoder(ModelConfig(kind="dae", hidden=(8,), **SOFTMAX), Sizes(40, 120))
    with torch.no_grad():  # the network silenced: the path alone decides
        net.out.weight.zero_()
        net.out.bias.zero_()
    net.linear = path
    net.eval()
    history = ctx.full_train[:10]
    ours = net(Bag.from_csr(history)).detach().numpy()
    theirs = ease.score(history, np.arange(10), ctx.user_features[:10])
    top = lambda scores: np.argsort(-scores, axis=1, kind="stable")[:, :10]  # noqa: E731
    np.testing.assert_array_equal(top(ours), top(theirs))
    # The padded form (the exported graph's) gives the same logits as the bag form.
    items, weights = padded(history)
    np.testing.assert_allclose(
        net.forward_padded(torch.from_numpy(items), torch.from_numpy(weights)).detach().numpy(),
        ours, atol=1e-5,
    )  # fmt: skip


def test_validation_chooses_the_scale_and_zero_means_the_network_alone() -> None:
    path = LinearPath(torch.rand(5, 5), 1.0)
    figures = {0.0: 0.1, 5.0: 0.3, 10.0: 0.3, 60.0: 0.2}
    chosen, seen = choose_scale(path, lambda: figures.get(path.scale.item(), 0.0))
    assert chosen == 5.0 and path.scale.item() == 5.0  # ties: the smaller scale
    assert list(seen) == [f"{s:g}" for s in SCALES]
    assert torch.count_nonzero(path.weight.diagonal()) == 0


def test_a_fit_chooses_on_validation_and_the_production_fit_keeps_it() -> None:
    ctx = _context()
    config = ModelConfig(kind="dae", hidden=(8,), linear_path="ease", linear_lambda=50.0,
                         **SOFTMAX)  # fmt: skip
    model = AutoencoderRecommender(config, TrainConfig(epochs=3, patience=3, batch_size=16))
    model.fit(ctx)
    params = model.params()
    assert set(params["linear_validation"]) == {f"{s:g}" for s in SCALES}
    chosen = model.linear_scale
    best = max(params["linear_validation"].values())
    assert params["linear_validation"][f"{chosen:g}"] == best
    if chosen:  # the refit's path: EASE on train + validation, at the chosen scale
        assert model.net.linear.scale.item() == chosen
        expected = ease_start(ctx.full_train, 50.0)
        torch.testing.assert_close(model.net.linear.weight, expected)
        assert params["linear_path"] == f"ease (40 × 40), scale {chosen:g}"
    else:
        assert (
            model.net.linear is None and params["linear_path"] == "off: scale 0 (the network alone)"
        )

    production = model.production()
    assert production.model_config.linear_scale == chosen
    everything = FitContext(ctx.full_train, sp.csr_matrix(ctx.full_train.shape),
                            ctx.user_features, ctx.item_features, 0, False)  # fmt: skip
    production.fit(everything)
    assert production.linear_validation == {}  # nothing chosen twice
    assert (production.net.linear is None) == (chosen == 0.0)

    # Saved and loaded, the path comes back with its weights and scale.
    again = AutoencoderRecommender(production.model_config, production.train_config)
    again.load_state(production.state(), everything)
    history = ctx.full_train[:5]
    np.testing.assert_allclose(
        again.score(history, np.arange(5), ctx.user_features[:5]),
        production.score(history, np.arange(5), ctx.user_features[:5]), atol=1e-6,
    )  # fmt: skip


def test_a_given_scale_is_used_without_choosing() -> None:
    ctx = _context()
    config = ModelConfig(kind="dae", hidden=(8,), linear_path="ease", linear_scale=7.0, **SOFTMAX)
    model = AutoencoderRecommender(config, TrainConfig(epochs=2, patience=2))
    model.fit(ctx)
    assert model.linear_validation == {} and model.net.linear.scale.item() == 7.0


def test_where_the_path_is_built(monkeypatch: pytest.MonkeyPatch) -> None:
    assert resolve("off", 1_000, sampled=False) == (False, "off")
    assert resolve("auto", 1_000, sampled=False) == (True, "ease (1,000 × 1,000)")
    built, why = resolve("auto", AUTO_MAX_ITEMS + 1, sampled=False)  # items² per served user
    assert not built and f"> {AUTO_MAX_ITEMS:,}" in why
    assert resolve("ease", AUTO_MAX_ITEMS + 1, sampled=False)[0]  # asked for: built
    with pytest.raises(ValueError, match="needs the full item loss"):
        resolve("ease", 50_000, sampled=True)
    monkeypatch.setenv(ITEM_ITEM_LIMIT_ENV, "0.001")  # 1 MiB: 1,000 items need 38 MiB
    built, why = resolve("auto", 1_000, sampled=False)
    assert not built and "the limit is 0.0 GiB" in why
    with pytest.raises(TooLarge, match="linear path on 1,000 items"):
        resolve("ease", 1_000, sampled=False)


def test_bad_linear_options_are_named() -> None:
    with pytest.raises(ValueError, match="linear_path"):
        ModelConfig(linear_path="yes")
    nan, inf = float("nan"), float("inf")
    for bad in ({"linear_lambda": 1e-300}, {"linear_lambda": nan}, {"linear_lambda": inf},
                {"linear_scale": -1.0}, {"linear_scale": nan}, {"linear_scale": 1e39}):  # fmt: skip
        with pytest.raises(ValueError, match=r"linear_lambda must be in \[0.01, 1e9\]"):
            ModelConfig(**bad)


def test_an_impossible_linear_path_is_refused_before_any_epoch() -> None:
    ctx = _context()
    config = ModelConfig(kind="dae", hidden=(8,), linear_path="ease", **SOFTMAX)
    model = AutoencoderRecommender(config, TrainConfig(epochs=50, negatives=10))
    with pytest.raises(ValueError, match="needs the full item loss"):
        model.fit(ctx)
    assert model.history == [] and model.net is None


def test_the_graph_form_is_the_same_gathered_or_dense() -> None:
    rng = np.random.default_rng(0)
    path = LinearPath(torch.from_numpy(rng.standard_normal((200, 200)).astype(np.float32)), 2.0)
    items = torch.from_numpy(rng.integers(0, 200, (4, 6)))
    weights = torch.from_numpy(rng.random((4, 6)).astype(np.float32))
    weights[:, -2:] = 0.0  # padding
    want = 2.0 * (
        torch.zeros(4, 200).scatter_add(1, items, weights) @ path.weight
    )  # x B, written out
    gathered = path.padded(items, weights)  # 24 entries ≤ 200 / 8, 4,800 floats: gathered
    path.gathered_max = 10
    dense = path.padded(items, weights)
    torch.testing.assert_close(gathered, want, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(dense, want, atol=1e-5, rtol=1e-5)


def test_eager_graph_forms_branch_in_python_not_through_dynamo(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Eager torch.cond compiles through one dynamo cache per process; after calls of other sizes
    it refused the short head's branches, and a retraining run that exported twice failed its
    parity check. Eagerly the branch is Python's; under export it stays an ONNX If (the export
    tests' mixed-batch parity shows both sides)."""

    def refused(*args, **kwargs):
        raise AssertionError("torch.cond reached when run eagerly")

    monkeypatch.setattr(torch, "cond", refused)
    rng = np.random.default_rng(0)
    for n in (30, 50):  # two sizes, as two exports in one process
        path = LinearPath(torch.from_numpy(rng.standard_normal((n, n)).astype(np.float32)), 1.0)
        for batch, length in ((1, 3), (5, 2)):
            items = torch.from_numpy(rng.integers(0, n, (batch, length)))
            weights = torch.ones(batch, length)
            want = torch.zeros(batch, n).scatter_add(1, items, weights) @ path.weight
            torch.testing.assert_close(path.padded(items, weights), want, atol=1e-5, rtol=1e-5)


def test_another_threads_export_leaves_eager_calls_eager(monkeypatch: pytest.MonkeyPatch) -> None:
    """`torch.compiler.is_compiling()` is one flag for the process: while a thread exports, it is
    true in every thread. An eager call (real tensors) still branches in Python."""

    def refused(*args, **kwargs):
        raise AssertionError("torch.cond reached by an eager call")

    monkeypatch.setattr(torch, "cond", refused)
    monkeypatch.setattr(torch.compiler, "is_compiling", lambda: True)  # as during an export
    rng = np.random.default_rng(0)
    path = LinearPath(torch.from_numpy(rng.standard_normal((30, 30)).astype(np.float32)), 1.0)
    items, weights = torch.from_numpy(rng.integers(0, 30, (2, 3))), torch.ones(2, 3)
    want = torch.zeros(2, 30).scatter_add(1, items, weights) @ path.weight
    torch.testing.assert_close(path.padded(items, weights), want, atol=1e-5, rtol=1e-5)
