"""Model output shapes, the loss, and the unseen-user path."""

import pytest
import torch

from training.models import Autoencoder, ModelConfig, Sizes, paper_config, reconstruction_loss

SIZES = Sizes(n_items=30, n_users=8, user_features=5, item_features=torch.rand(30, 4))


@pytest.mark.parametrize("kind", ["dae", "cdae", "cddae"])
@pytest.mark.parametrize("decoder_hidden", [(), (16,)])
def test_output_shapes(kind: str, decoder_hidden: tuple[int, ...]) -> None:
    net = Autoencoder(ModelConfig(kind=kind, hidden=(12, 6), decoder_hidden=decoder_hidden), SIZES)
    x = (torch.rand(3, 30) < 0.3).float()
    output = net(x, torch.rand(3, 5), torch.tensor([0, 7, -1]))
    items, side = net.split_output(output)
    assert items.shape == (3, 30)
    assert side.shape == (3, (5 + 4) if kind == "cddae" else 0)
    scores = net.scores(output)
    assert scores.shape == (3, 30) and bool(((scores >= 0) & (scores <= 1)).all())
    assert torch.isfinite(net.loss(x, torch.rand(3, 5), torch.tensor([0, 1, 2])))


def test_user_node_variant_reconstructs_the_user() -> None:
    net = Autoencoder(paper_config("cddae", user_node=True), SIZES)
    _, side = net.split_output(net(torch.zeros(2, 30), torch.zeros(2, 5), torch.tensor([0, 1])))
    assert side.shape == (2, 5 + 4 + 8)


def test_unseen_user_uses_the_reserved_row() -> None:
    net = Autoencoder(ModelConfig(kind="cdae", hidden=(6,)), SIZES)
    with torch.no_grad():
        net.user_vector.weight[8] = 100.0
    x = torch.zeros(1, 30)
    assert not torch.equal(net(x, None, torch.tensor([-1])), net(x, None, torch.tensor([0])))


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


def test_cold_start_rate_drops_whole_histories() -> None:
    torch.manual_seed(0)
    net = Autoencoder(ModelConfig(kind="cddae", corruption=0.0, cold_start_rate=0.5), SIZES)
    noisy = net.corrupt(torch.ones(200, 30))
    rows = noisy.sum(dim=1)
    assert set(rows.tolist()) == {0.0, 30.0}  # a row is kept whole or dropped whole
    assert 60 < int((rows == 0).sum()) < 140
