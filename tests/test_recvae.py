"""RecVAE's recipe (Shenbin et al., WSDM 2020) as CDDAE options: the composite prior, β by
history length, and alternating encoder / decoder passes (issue 22's second lever)."""

import math
from dataclasses import replace

import numpy as np
import pytest
import scipy.sparse as sp
import torch
from torch.nn import functional as F

from training.models.autoencoders import Autoencoder, Bag, ModelConfig, Sizes
from training.models.distributed import TrainingStep
from training.models.interface import FitContext
from training.models.trainer import AutoencoderRecommender, TrainConfig

SIZES = Sizes(n_items=30, n_users=8, user_features=5, item_features=torch.rand(30, 4))


def _bag(x: torch.Tensor) -> Bag:
    return Bag.from_csr(sp.csr_matrix(x.numpy()))


def test_composite_prior_holds_last_epochs_encoder_frozen_and_outside_the_state() -> None:
    torch.manual_seed(0)
    config = ModelConfig(
        kind="cddae", hidden=(12,), code_width=4, beta=0.5, corruption=0.0, composite_prior=0.75
    )
    net = Autoencoder(config, SIZES)
    x, profile = _bag((torch.rand(3, 30) < 0.3).float()), torch.rand(3, 5)
    net.train()
    with pytest.raises(RuntimeError, match="refresh_prior"):
        net.loss(x, profile)
    net.refresh_prior()
    names = set(net.state_dict())
    assert not any("prior" in name for name in names)
    assert all(p.requires_grad for p in net.parameters())  # none of the copy's
    # Right after the copy, with no corruption, the prior's posterior is the posterior itself:
    # log q - log(0.75 q + ...) <= -log 0.75 per code dimension, for any sample.
    _, posterior = net._hidden(*net.bag_input(x), profile)
    kl = net.kl(posterior, x, profile)
    assert (kl <= 4 * -math.log(0.75) + 1e-5).all()
    before = net._prior_net.code_mean.weight.clone()
    optimizer = torch.optim.SGD(net.parameters(), lr=0.5)
    net.loss(x, profile).backward()
    optimizer.step()
    assert net._prior_net.code_mean.weight.grad is None
    torch.testing.assert_close(net._prior_net.code_mean.weight, before)  # frozen, not aliased
    assert not torch.equal(net.code_mean.weight, before)
    # ...and it moves on only when refreshed.
    net.refresh_prior()
    torch.testing.assert_close(net._prior_net.code_mean.weight, net.code_mean.weight)
    with pytest.raises(ValueError, match="composite_prior"):
        ModelConfig(composite_prior=1.0)


def test_kl_by_history_weights_each_users_kl_by_its_length() -> None:
    config = ModelConfig(kind="dae", hidden=(12,), code_width=4, beta=1.0, anneal_steps=1,
                         corruption=0.0, kl_by_history=True)  # fmt: skip
    dense = torch.zeros(2, 30)
    dense[0, :3], dense[1, :9] = 1.0, 1.0  # lengths 3 and 9; the data's mean 6
    x = _bag(dense)
    losses = {}
    for by_history in (True, False):
        torch.manual_seed(0)
        net = Autoencoder(replace(config, kl_by_history=by_history), SIZES).train()
        net.mean_history = 6.0  # the trainer's: the fit's data, not the batch (torchrun's shares)
        torch.manual_seed(1)
        _, posterior = net._hidden(*net.bag_input(x))
        kl = net.kl(posterior, x)
        torch.manual_seed(1)
        losses[by_history] = (net.loss(x), kl)
    (weighted, kl), (plain, _) = losses[True], losses[False]
    torch.testing.assert_close(weighted - plain, (0.5 * kl[0] + 1.5 * kl[1]) / 2 - kl.mean())
    # A torchrun rank's share of the batch (here user 1 alone) weighs its user the same way:
    # 9 / 6, not 9 / its own mean (which would be 1, the option undone).
    share = _bag(dense[1:])
    figures = {}
    for by_history in (True, False):
        torch.manual_seed(0)
        net = Autoencoder(replace(config, kl_by_history=by_history), SIZES).train()
        net.mean_history = 6.0
        torch.manual_seed(1)
        _, posterior = net._hidden(*net.bag_input(share))
        torch.manual_seed(1)
        figures[by_history] = (net.loss(share), net.kl(posterior, share))
    (weighted, kl), (plain, _) = figures[True], figures[False]
    torch.testing.assert_close(weighted - plain, 0.5 * kl[0])
    # The unit is the data of the pass (every rank holds all of it), and ends with the fit.
    trainer = AutoencoderRecommender(config)
    ctx = _context()
    seen = []
    original = trainer._pass

    def recording(step, *args):
        seen.append(step.net.mean_history)
        return original(step, *args)

    trainer._pass = recording
    net = trainer._build(ctx, ctx.train)
    trainer._train_for(net, ctx, ctx.train, 1, "fit", np.random.default_rng(0))
    assert seen == [pytest.approx(ctx.train.nnz / (np.diff(ctx.train.indptr) > 0).sum())]
    assert net.mean_history == 1.0
    with pytest.raises(ValueError, match="need beta > 0"):
        ModelConfig(kl_by_history=True, beta=0.0)
    with pytest.raises(ValueError, match="need beta > 0"):
        ModelConfig(composite_prior=0.5, beta=0.0)


def test_the_composite_kl_stays_finite_where_the_variance_underflows() -> None:
    torch.manual_seed(0)
    config = ModelConfig(kind="dae", hidden=(12,), code_width=4, beta=0.5, composite_prior=0.75)
    net = Autoencoder(config, SIZES).train()
    net.refresh_prior()
    x = _bag((torch.rand(3, 30) < 0.3).float())
    _, posterior = net._hidden(*net.bag_input(x))
    tiny = posterior._replace(logvar=torch.full_like(posterior.logvar, -110.0))
    tiny = tiny._replace(code=tiny.mean)
    assert torch.isfinite(net.kl(tiny, x)).all()


def test_the_prior_copy_shares_the_item_profiles_and_ends_with_the_fit() -> None:
    torch.manual_seed(0)
    config = ModelConfig(kind="cddae", hidden=(12,), code_width=4, beta=0.5, composite_prior=0.75)
    net = Autoencoder(config, SIZES)
    net.refresh_prior()
    first = net._prior_net
    assert first.item_features is net.item_features  # a constant: not copied each epoch
    assert first.out is None and first.decoder is None and first._prior_net is None
    net.refresh_prior()
    assert net._prior_net is not first and net._prior_net._prior_net is None
    model = AutoencoderRecommender(config, TrainConfig(epochs=2, patience=2, batch_size=16))
    model.fit(_context())
    assert model.net is not None and model.net._prior_net is None  # training's alone


def _context(users: int = 60, items: int = 30, density: float = 0.2) -> FitContext:
    rng = np.random.default_rng(0)
    dense = (rng.random((users, items)) < density).astype(np.float32)
    valid = (rng.random((users, items)) < 0.05) & (dense == 0)
    return FitContext(
        sp.csr_matrix(dense), sp.csr_matrix(valid.astype(np.float32)),
        np.zeros((users, 0), np.float32), np.zeros((items, 0), np.float32), 0, False,
    )  # fmt: skip


def _passes(model: AutoencoderRecommender, net: Autoencoder) -> list[tuple[str, bool]]:
    """One epoch of `model` on `net`, each pass recorded: which side trained, denoised or not."""
    ctx, seen = _context(), []
    decoder = {id(p) for m in (net.decoder, net.out) for p in m.parameters()}
    original = model._pass

    def recording(*args):
        trained = {id(p) for p in net.parameters() if p.requires_grad}
        side = "decoder" if trained <= decoder else "encoder" if not trained & decoder else "all"
        seen.append((side, net.denoising))
        return original(*args)

    model._pass = recording
    optimizer = model._optimizer(net, False)
    step = TrainingStep(net, model.world)
    model._epoch(step, optimizer, ctx, ctx.train, np.random.default_rng(0), None)
    return seen


def test_alternate_trains_the_encoder_denoised_then_the_decoder_on_clean_input() -> None:
    config = ModelConfig(kind="dae", hidden=(16,), code_width=4, beta=0.5, alternate=2)
    model = AutoencoderRecommender(config, TrainConfig(epochs=2, patience=2, batch_size=16))
    ctx = _context()
    net = model._build(ctx, ctx.train)
    before = {k: v.clone() for k, v in net.state_dict().items()}
    seen = _passes(model, net)
    assert seen == [("encoder", True), ("encoder", True), ("decoder", False)]
    # Every parameter trains again after the epoch, and both sides moved.
    assert all(p.requires_grad for p in net.parameters()) and net.denoising
    assert not torch.equal(net.item_in, before["item_in"])
    assert not torch.equal(net.out.weight, before["out.weight"])
    # Without the option: one pass of everything, denoised.
    plain = AutoencoderRecommender(replace(config, alternate=0), model.train_config)
    assert _passes(plain, plain._build(ctx, ctx.train)) == [("all", True)]
    # A network whose decoder is frozen (the short head) has nothing to alternate.
    frozen = model._build(ctx, ctx.train)
    for m in (frozen.decoder, frozen.out):
        m.requires_grad_(False)
    assert _passes(model, frozen) == [("encoder", True)]
    model.fit(ctx)  # the whole fit, early stopping and refit, with the option
    assert model.net is not None and model.best_epoch >= 1
    with pytest.raises(ValueError, match="alternate"):
        ModelConfig(alternate=-1)


def test_dense_encoder_feeds_every_layer_the_sum_of_all_before_it() -> None:
    torch.manual_seed(0)
    config = ModelConfig(kind="cddae", hidden=(6, 6, 6), encoder="dense")
    net = Autoencoder(config, SIZES)
    encoder = net.encoder
    h = torch.randn(4, 6)
    first = encoder.norms[0](F.silu(h))
    second = encoder.norms[1](F.silu(encoder.layers[0](first) + first))
    third = encoder.norms[2](F.silu(encoder.layers[1](second) + first + second))
    torch.testing.assert_close(encoder(h), third)
    assert net(_bag((torch.rand(3, 30) < 0.3).float()), torch.rand(3, 5)).shape == (3, 39)
    with pytest.raises(ValueError, match="equal"):
        ModelConfig(hidden=(6, 4), encoder="dense")
    with pytest.raises(ValueError, match="encoder"):
        ModelConfig(encoder="resnet")


def test_fits_on_different_data_leave_one_graph_fingerprint() -> None:
    """The exported graph is reused while a module's structure and plain attributes are the
    same (training/jobs/onnx_graph.py): nothing of a fit's data may stay on a network restored
    from its checkpoint (what export traces), or every retrain traces its graph afresh."""
    from training.jobs.onnx_graph import fingerprint

    config = ModelConfig(kind="cddae", hidden=(12,), code_width=4, beta=0.5, composite_prior=0.75,
                         kl_by_history=True)  # fmt: skip
    prints = set()
    for density in (0.2, 0.4):
        ctx = _context(density=density)
        model = AutoencoderRecommender(config, TrainConfig(epochs=2, patience=2, batch_size=16))
        model.fit(ctx)
        restored = AutoencoderRecommender(config, model.train_config)
        restored.load_state(model.state(), ctx)
        prints.add(fingerprint(restored.net.eval(), (), (), (), ()))
        assert model.net._prior_net is None and model.net.mean_history == 1.0  # the fit's end
    assert None not in prints and len(prints) == 1
