"""Model output shapes, the loss, the sparse input layer, and the unseen-user path."""

from dataclasses import replace

import numpy as np
import pytest
import scipy.sparse as sp
import torch
from torch.nn import functional as F

from training.jobs.export import padded
from training.models.autoencoders import (
    Autoencoder,
    Bag,
    ModelConfig,
    Sizes,
    paper_config,
    reconstruction_cells,
)
from training.models.sampled_loss import (
    DEFAULT_NEGATIVES,
    SAMPLED_ABOVE,
    Sampling,
    resolve_negatives,
    sampled_item_loss,
)

SIZES = Sizes(n_items=30, n_users=8, user_features=5, item_features=torch.rand(30, 4))


def _bag(x: torch.Tensor) -> Bag:
    return Bag.from_csr(sp.csr_matrix(x.numpy()))


@pytest.mark.parametrize("kind", ["dae", "cdae", "cddae"])
@pytest.mark.parametrize("decoder_hidden", [(), (16,)])
def test_output_shapes(kind: str, decoder_hidden: tuple[int, ...]) -> None:
    net = Autoencoder(ModelConfig(kind=kind, hidden=(12, 6), decoder_hidden=decoder_hidden), SIZES)
    x = _bag((torch.rand(3, 30) < 0.3).float())
    output = net(x, torch.rand(3, 5), torch.tensor([0, 7, -1]))
    items, side = net.split_output(output)
    assert items.shape == (3, 30)
    assert side.shape == (3, (5 + 4) if kind == "cddae" else 0)
    scores = net.scores(output)
    assert scores.shape == (3, 30) and bool(((scores >= 0) & (scores <= 1)).all())
    assert torch.isfinite(net.loss(x, torch.rand(3, 5), torch.tensor([0, 1, 2])))


def test_user_node_variant_reconstructs_the_user() -> None:
    net = Autoencoder(paper_config("cddae", user_node=True), SIZES)
    empty = _bag(torch.zeros(2, 30))
    _, side = net.split_output(net(empty, torch.zeros(2, 5), torch.tensor([0, 1])))
    assert side.shape == (2, 5 + 4 + 8)


def test_unseen_user_uses_the_reserved_row() -> None:
    net = Autoencoder(ModelConfig(kind="cdae", hidden=(6,)), SIZES)
    with torch.no_grad():
        net.user_vector.weight[8] = 100.0
    x = _bag(torch.zeros(1, 30))
    assert not torch.equal(net(x, None, torch.tensor([-1])), net(x, None, torch.tensor([0])))


def reconstruction_loss(logits, x, output, loss) -> torch.Tensor:
    return reconstruction_cells(logits, x, output, loss).sum(dim=1)


def test_reconstruction_losses_by_hand() -> None:
    logits = torch.tensor([[0.0, 0.0]])
    x = torch.tensor([[1.0, 0.0]])
    log2 = torch.log(torch.tensor(2.0))
    assert torch.allclose(reconstruction_loss(logits, x, "sigmoid", "bce"), 2 * log2)
    assert torch.allclose(reconstruction_loss(logits, x, "softmax", "cce"), log2)
    assert torch.allclose(reconstruction_loss(logits, x, "sigmoid", "mae"), torch.tensor(1.0))
    assert torch.allclose(reconstruction_loss(logits, x, "sigmoid", "mse"), torch.tensor(0.5))
    assert torch.allclose(reconstruction_loss(logits, x, "softmax", "bce"), 2 * log2, atol=1e-6)


def test_config_rejects_bad_values() -> None:
    with pytest.raises(ValueError, match="corruption"):
        ModelConfig(corruption=1.0)
    with pytest.raises(ValueError, match="unknown model option"):
        ModelConfig.from_dict({"widht": 3})


def _sampling(negatives: int, share: torch.Tensor | None = None) -> Sampling:
    return Sampling(negatives, share if share is not None else torch.full((30,), 0.3))


@pytest.mark.parametrize("negatives", [0, 5000])
def test_emphasis_weights_only_the_dropped_positives(negatives: int) -> None:
    """Raising `emphasis` from 1 to 4 adds 3× the loss of exactly the cells whose input the
    corruption dropped (here the first item, a positive of every user), in the full loss and
    in the sampled one (5,000 draws cover all 30 items)."""
    torch.manual_seed(0)
    x = (torch.rand(4, 30) < 0.3).float()
    x[:, 0] = 1.0
    net = Autoencoder(ModelConfig(kind="dae", hidden=(8,)), SIZES)

    def drop_first(bag: Bag) -> Bag:
        return Bag(bag.items, torch.where(bag.items == 0, 0.0, bag.weights), bag.offsets)

    net.corrupt = drop_first
    plain = net.loss(_bag(x), sampling=_sampling(negatives))
    net.config = replace(net.config, emphasis=4.0)
    emphasised = net.loss(_bag(x), sampling=_sampling(negatives))
    logits = net.out(net.hidden(*net.bag_input(drop_first(_bag(x)))))[:, 0]
    first = F.binary_cross_entropy_with_logits(logits, x[:, 0], reduction="none")
    torch.testing.assert_close(emphasised - plain, 3 * first.mean())
    with pytest.raises(ValueError, match="emphasis"):
        ModelConfig(emphasis=0.0)


def test_profile_norm_makes_the_profile_scale_free() -> None:
    torch.manual_seed(0)
    x = _bag((torch.rand(3, 30) < 0.3).float())
    profile = torch.rand(3, 5)
    for norm in (True, False):
        net = Autoencoder(ModelConfig(kind="cddae", hidden=(12,), profile_norm=norm), SIZES)
        same = torch.allclose(net(x, profile), net(x, 5 * profile), atol=1e-6)
        assert same is norm


def test_variational_code_samples_in_training_and_takes_the_mean_in_scoring() -> None:
    torch.manual_seed(0)
    config = ModelConfig(kind="cddae", hidden=(12,), code_width=4, beta=0.5, anneal_steps=4)
    net = Autoencoder(config, SIZES)
    x, profile = _bag((torch.rand(3, 30) < 0.3).float()), torch.rand(3, 5)
    net.eval()
    torch.testing.assert_close(net(x, profile), net(x, profile))  # the mean: deterministic
    net.train()
    assert not torch.equal(net(x, profile), net(x, profile))  # a sample of the code
    _, posterior = net._hidden(*net.bag_input(x), profile)
    assert posterior is not None and (net.kl(posterior, x, profile) >= 0.0).all()
    for _ in range(6):  # β reaches its target after anneal_steps steps, then stays
        assert torch.isfinite(net.loss(x, profile))
    assert net.kl_steps == 6
    assert net(x, profile).shape == (3, 30 + 5 + 4) and net.code_mean.out_features == 4
    with pytest.raises(ValueError, match="code_width"):
        ModelConfig(beta=0.2, code_width=0)


def test_short_history_rate_cuts_histories_to_a_few_random_items() -> None:
    torch.manual_seed(0)
    config = ModelConfig(kind="cddae", corruption=0.0, short_history_rate=0.5, short_history_max=3)
    net = Autoencoder(config, SIZES)
    bag = _bag(torch.ones(400, 30))
    kept = net.corrupt(bag).dense(30)
    lengths = kept.sum(dim=1)
    short = lengths < 30
    assert set(lengths[short].tolist()) == {1.0, 2.0, 3.0}  # cut to 1..3, never to 0
    assert set(lengths[~short].tolist()) == {30.0}  # the others keep every item
    assert 140 < int(short.sum()) < 260
    first = kept[short].nonzero()[:, 1]
    assert len(set(first.tolist())) > 20  # which items survive is random, not the first ones


def test_cold_start_rate_drops_whole_histories() -> None:
    torch.manual_seed(0)
    net = Autoencoder(ModelConfig(kind="cddae", corruption=0.0, cold_start_rate=0.5), SIZES)
    noisy = net.corrupt(_bag(torch.ones(200, 30)))
    rows = noisy.dense(30).sum(dim=1)
    assert set(rows.tolist()) == {0.0, 30.0}  # a row is kept whole or dropped whole
    assert 60 < int((rows == 0).sum()) < 140


@pytest.mark.parametrize("input_norm", [False, True])
def test_sparse_and_padded_input_layers_equal_the_dense_product(input_norm: bool) -> None:
    torch.manual_seed(0)
    net = Autoencoder(ModelConfig(kind="cddae", hidden=(12,), input_norm=input_norm), SIZES)
    x = (torch.rand(5, 30) < 0.3).float() * torch.rand(5, 30) * 3  # weighted, one row empty
    x[2] = 0.0
    dense_in = F.normalize(x, dim=1) if input_norm else x
    want_h = dense_in @ net.item_in  # the dense first layer: W x
    want_pooled = (x @ net.item_features) / x.sum(dim=1, keepdim=True).clamp_min(1.0)
    h, pooled = net.bag_input(_bag(x))
    torch.testing.assert_close(h, want_h, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(pooled, want_pooled, rtol=1e-5, atol=1e-6)
    items, weights = padded(sp.csr_matrix(x.numpy()))
    h_pad, pooled_pad = net.padded_input(torch.from_numpy(items), torch.from_numpy(weights))
    torch.testing.assert_close(h_pad, want_h, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(pooled_pad, want_pooled, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("objective", [("sigmoid", "bce"), ("softmax", "cce")])
def test_sampled_loss_over_every_item_is_the_full_loss(objective: tuple[str, str]) -> None:
    torch.manual_seed(0)
    output, loss = objective
    config = ModelConfig(kind="dae", hidden=(8,), corruption=0.0, output=output, loss=loss)
    net = Autoencoder(config, SIZES)
    x = (torch.rand(4, 30) < 0.3).float()
    if output == "softmax":  # a multinomial's counts: weighted positives
        x = x * torch.randint(1, 4, (4, 30))
    bag = _bag(x)
    full = net.loss(bag)
    hidden = net.hidden(*net.bag_input(bag))
    # 5,000 draws cover all 30 items: every negative then stands for itself (weight 1, π = 1).
    sampled = net._sampled_item_loss(hidden, bag, _sampling(5000))
    torch.testing.assert_close(sampled, full)
    assert torch.isfinite(net.loss(bag, sampling=_sampling(5)))
    with pytest.raises(ValueError, match="sigmoid and loss bce"):
        resolve_negatives(5, 30, "sigmoid", "mae")


def test_sampled_softmax_normaliser_is_unbiased_with_the_logq_correction() -> None:
    """Over many batches, the corrected candidates' Σ exp(logit − log π) has the catalogue's
    Σ exp(logit) as its mean; without the correction the sum falls far short. User 0 (positive:
    item 3) shares each batch with 7 users whose positives are drawn by the items' shares (item
    7: every user's), and 20 of 400 items are drawn."""
    torch.manual_seed(0)
    n_items, batch = 400, 8
    logits = torch.randn(1, n_items).expand(batch, n_items)
    share = torch.full((n_items,), 0.01)
    share[7] = 1.0
    sampling = Sampling(20, share)
    captured: list[torch.Tensor] = []

    def logits_of(columns: torch.Tensor) -> torch.Tensor:
        captured.append(columns)
        return logits[:, columns]

    corrected, plain = [], []
    for _ in range(4000):
        others = torch.nonzero(torch.rand(batch - 1, n_items) < share)
        rows = torch.cat([torch.tensor([0]), others[:, 0] + 1])
        items = torch.cat([torch.tensor([3]), others[:, 1]])
        weights = (rows == 0).float()  # only user 0's loss counts; the others are candidates
        loss = sampled_item_loss(
            logits_of, rows, items, weights, batch, sampling, ("softmax", "cce")
        )
        # the loss is −(logit₃ − log Ẑ) / batch: recover Ẑ; and the uncorrected sum
        corrected.append(torch.exp(loss * batch + logits[0, 3]))
        plain.append(torch.exp(logits[0, captured.pop()]).sum())
    truth = torch.exp(logits[0]).sum()
    assert abs(float(torch.stack(corrected).mean() / truth) - 1) < 0.05
    assert float(torch.stack(plain).mean() / truth) < 0.3


def test_automatic_sampling_switches_on_past_the_catalogue_size() -> None:
    assert resolve_negatives(None, 1_682, "softmax", "cce") == 0  # ml-100k: the full loss
    assert resolve_negatives(None, SAMPLED_ABOVE + 1, "softmax", "cce") == DEFAULT_NEGATIVES
    assert resolve_negatives(None, SAMPLED_ABOVE + 1, "sigmoid", "bce") == DEFAULT_NEGATIVES
    assert resolve_negatives(None, SAMPLED_ABOVE + 1, "sigmoid", "mae") == 0  # no sampled form
    assert resolve_negatives(0, 10**6, "softmax", "cce") == 0  # asked for the full loss
    assert resolve_negatives(500, 400, "softmax", "cce") == 0  # the draw covers the catalogue


def test_bag_from_csr_keeps_rows_and_weights() -> None:
    matrix = sp.csr_matrix(np.array([[0, 2.0, 0], [0, 0, 0], [1.0, 0, 3.0]], np.float32))
    bag = Bag.from_csr(matrix)
    assert bag.rows.tolist() == [0, 2, 2]
    torch.testing.assert_close(bag.dense(3), torch.from_numpy(matrix.toarray()))


@pytest.mark.parametrize("negatives", ["5", 1.5, True, -1])
def test_a_bad_negatives_option_is_named_before_any_work(negatives: object) -> None:
    from training.models.trainer import TrainConfig

    named = r"train\.negatives must be a whole number|option 'negatives' must be int/null"
    with pytest.raises(ValueError, match=named):
        TrainConfig.from_dict({"negatives": negatives})
    TrainConfig.from_dict({"negatives": 0})  # the full loss
    TrainConfig.from_dict({"negatives": None})  # automatic


def test_world_size_that_is_not_a_count_is_named() -> None:
    from training.models.distributed import launched

    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("WORLD_SIZE", "two")
        with pytest.raises(ValueError, match="WORLD_SIZE must be a count"):
            launched()


@pytest.mark.parametrize(
    ("option", "value"),
    [("corruption", "x"), ("hidden", 600), ("rescale", "yes"), ("linear_scale", "5"),
     ("l2", True), ("kind", 3)],
)  # fmt: skip
def test_a_config_value_of_the_wrong_kind_is_named(option: str, value: object) -> None:
    with pytest.raises(ValueError, match=f"model option '{option}' must be"):
        ModelConfig.from_dict({option: value})
    ModelConfig.from_dict({"corruption": 1 / 3, "hidden": [8], "linear_scale": None, "l2": 1})
    # A whole number written as a float (2.0, 1e4 from a JSON writer) is a count.
    assert ModelConfig.from_dict({"short_history_max": 2.0}).short_history_max == 2
    with pytest.raises(ValueError, match="'short_history_max' must be int"):
        ModelConfig.from_dict({"short_history_max": 2.5})
