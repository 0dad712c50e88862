"""The training loop for the autoencoders: Adam, user mini-batches, early stopping on validation."""

from __future__ import annotations

import copy
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import scipy.sparse as sp
import torch
from tqdm.auto import tqdm

from service.item_path import COLD_PREFIX, cold_layers, layer_arrays
from training.evaluation.metrics import evaluate_chunked
from training.models import neighbours
from training.models.autoencoders import Autoencoder, Bag, ModelConfig, Sizes
from training.models.cold_items import ColdHeadConfig, Layers, fit_cold_head, head_fits
from training.models.distributed import TrainingStep, World, join
from training.models.interface import FitContext
from training.models.linear_path import DEFAULT_SCALE, LinearPath, choose_scale, ease_start
from training.models.linear_path import resolve as resolve_linear
from training.models.optimizers import Pair, RowAdam
from training.models.options import Options
from training.models.sampled_loss import Sampling, check_objective, resolve_negatives

# The short head's weights in a state: its own (the encoder) under this prefix; the layers it
# shares with the network (decoder, output, linear path, item profiles) only once, unprefixed.
SHORT_PREFIX = "short."
SHARED = ("decoder", "out", "linear", "item_features")
# The short head's neighbours (training/models/neighbours.py) in a state: `LinearPath`'s buffers.
NEIGHBOURS_PREFIX = "neighbours."


# RecVAE's alternating passes switch which parameters train; DistributedDataParallel's graph is
# static (training/models/distributed.py).
ALTERNATE_ALONE = "model option 'alternate' needs a single process (not torchrun, not --nproc)"


@dataclass
class TrainConfig(Options):
    what = "training option"

    epochs: int = 200
    batch_size: int = 64
    lr: float = 1e-3
    patience: int = 15  # epochs without a better validation metric before stopping
    metric: str = "NDCG"  # early-stopping metric, at N = 10 on the validation set
    refit: bool = True  # after early stopping, retrain on train + validation for the best epochs
    # Early stopping scores a seeded sample of this many validation users each epoch (all of
    # them on small data); the final evaluation always takes every test user.
    valid_users: int = 10_000
    # The item loss over every item (0), or over the batch's positives and this many items
    # drawn (sigmoid + BCE, or softmax + CCE with the logQ correction): for catalogues too large
    # for every logit. Unset: automatic, sampled past SAMPLED_ABOVE items (docs/SCALE.md).
    negatives: int | None = None
    device: str = "cpu"  # cpu | cuda | auto (cuda when available)
    threads: int = 0  # torch intra-op threads; 0: torch's default (all cores)

    def __post_init__(self) -> None:
        if self.device not in ("cpu", "cuda", "auto"):
            raise ValueError(f"device must be cpu, cuda or auto, got {self.device!r}")
        negatives = self.negatives
        if negatives is not None and (type(negatives) is not int or negatives < 0):
            raise ValueError(
                "train.negatives must be a whole number ≥ 0 (0: the full loss) or unset "
                f"(automatic); got {negatives!r}"
            )
        if self.valid_users < 1 or self.threads < 0:
            raise ValueError("threads must be ≥ 0, valid_users ≥ 1")

    def torch_device(self) -> torch.device:
        if self.device == "auto":
            return torch.device("cuda" if torch.cuda.is_available() else "cpu")
        return torch.device(self.device)


class AutoencoderRecommender:
    """DAE / CDAE / CDDAE behind the common fit/score interface."""

    def __init__(
        self,
        model: ModelConfig,
        train: TrainConfig | None = None,
        cold: ColdHeadConfig | None = None,
    ):
        self.model_config = model
        self.train_config = train or TrainConfig()
        self.cold_config = cold or ColdHeadConfig()
        check_objective(self.train_config.negatives, model.output, model.loss)  # before any data
        self.cold_layers: Layers = []  # the cold-item head (training/models/cold_items.py)
        self.cold_figures: dict[str, Any] = {}
        self.device = self.train_config.torch_device()
        self.kind = model.kind
        self.net: Autoencoder | None = None
        # The short head (ModelConfig.short_head_share): the network's copy, with its own
        # encoder, that scores histories of at most `short_history_max` positives.
        self.short_net: Autoencoder | None = None
        self.short_head_epochs = 0
        # Item-kNN's fold-in added to the rows the short head serves (ModelConfig
        # .short_head_neighbours), and why it is on or off.
        self.neighbours: LinearPath | None = None
        self.neighbours_note = "off"
        self.best_epoch = 0
        self.history: list[dict[str, float]] = []
        self.sampled = 0  # the draws per batch of the last fit (0: the full loss)
        self.linear_note = "off"  # the linear path of the last fit, and why
        self.linear_scale: float | None = None  # its scale (chosen on validation or given)
        self.linear_validation: dict[str, float] = {}  # validation metric by scale
        self.world = World()  # torchrun's, once a fit has joined it

    def _build(self, ctx: FitContext, train: sp.csr_matrix | None = None) -> Autoencoder:
        """A fresh network; with `train`, its output biases start at the items' rates there."""
        sizes = Sizes(
            n_items=ctx.train.shape[1],
            n_users=ctx.train.shape[0],
            user_features=ctx.user_features.shape[1],
            item_features=torch.from_numpy(np.ascontiguousarray(ctx.item_features, np.float32)),
        )
        net = Autoencoder(self.model_config, sizes)
        if train is not None:
            rates = np.asarray(train.mean(axis=0), dtype=np.float32).ravel()
            net.init_output_bias(torch.from_numpy(rates))
        return net.to(self.device)

    def _sampling(self, train: sp.csr_matrix) -> Sampling | None:
        """The sampled loss of a fit on `train` (None: the full loss), decided by the options and
        the catalogue size; recorded in `self.sampled` for the checkpoint's parameters."""
        config = self.model_config
        draws = resolve_negatives(
            self.train_config.negatives, train.shape[1], config.output, config.loss
        )
        self.sampled = draws
        return Sampling.of(train, draws, self.device) if draws else None

    def _optimizer(
        self, net: Autoencoder, sampled: bool, lr_scale: float = 1.0
    ) -> torch.optim.Optimizer | Pair:
        """Adam; the model's L2 penalty as coupled weight decay (gradient λθ, as eq. 4).

        With a sampled loss, the catalogue-sized matrices (items × width, twice) get row-sparse
        gradients and a RowAdam that updates only the rows a batch touched, their L2 applied
        lazily to those rows: a dense step over every row of a 100k-item catalogue costs more
        than the batch itself."""
        l2, lr = self.model_config.l2, self.train_config.lr * lr_scale
        net.sparse_grads = sampled
        trained = [p for p in net.parameters() if p.requires_grad]  # the short head: encoder
        if not net.sparse_grads:
            return torch.optim.Adam(trained, lr=lr, weight_decay=l2, fused=True)
        sparse = [p for p in (net.item_in, net.out.weight) if p.requires_grad]
        dense = [p for p in trained if all(p is not s for s in sparse)]
        return Pair(
            RowAdam(sparse, lr=lr, weight_decay=l2),
            torch.optim.Adam(dense, lr=lr, weight_decay=l2, fused=True),
        )

    def fit(self, ctx: FitContext) -> None:
        """Early stopping on validation, then (with `refit`) the best epoch count on train +
        validation. Without validation data: exactly `epochs` epochs (the production fit)."""
        cfg = self.train_config
        if cfg.threads:
            torch.set_num_threads(cfg.threads)
        self.world = join(self.device)
        if self.world.main:  # refuse an impossible `ease` before any epoch: rank 0 decides (a
            # rank reading a smaller memory limit of its own node follows it, as in _attach_linear)
            self._linear_fits(ctx.train.shape[1])
        if self.model_config.alternate and self.world.size > 1:
            raise ValueError(ALTERNATE_ALONE)
        if not ctx.valid.nnz:
            self.best_epoch = cfg.epochs
            self.net = self._fit_epochs(ctx, ctx.train, cfg.epochs, "fit")
            given = self.model_config.linear_scale
            self._attach_linear(ctx.train, DEFAULT_SCALE if given is None else given)
            self._fit_short_head(ctx, ctx.train)
            return
        torch.manual_seed(ctx.seed)
        net, best_state, best, stale = self._build(ctx, ctx.train), None, -np.inf, 0
        sampling = self._sampling(ctx.train)
        optimizer = self._optimizer(net, sampling is not None)
        step = TrainingStep(net, self.world)
        rng = np.random.default_rng(ctx.seed)
        sample = _validation_sample(ctx.valid, cfg.valid_users, ctx.seed)
        # Epoch 0 scores the untrained network: the baseline any training must beat.
        shown = ctx.progress and self.world.main
        bar = tqdm(range(cfg.epochs + 1), desc=self.kind, disable=not shown, leave=False)
        for epoch in bar:
            loss = (
                self._epoch(step, optimizer, ctx, ctx.train, rng, sampling)
                if epoch
                else float("nan")
            )
            self.net = net
            value = self.world.from_main(self._validate(ctx, sample))
            self.history.append({"epoch": epoch, "loss": loss, f"valid_{cfg.metric}@10": value})
            bar.set_postfix(loss=f"{loss:.3f}", valid=f"{value:.4f}", best=self.best_epoch)
            if value > best:
                best, stale, self.best_epoch = value, 0, epoch
                best_state = copy.deepcopy(net.state_dict())
            else:
                stale += 1
                if stale >= cfg.patience:
                    break
        net.load_state_dict(best_state)
        net.end_training()
        self.net = net.eval()
        self._attach_linear(ctx.train, self.model_config.linear_scale, ctx, sample)
        if cfg.refit:
            self.net = self._fit_epochs(ctx, ctx.full_train, self.best_epoch, "refit", rng)
            self._attach_linear(ctx.full_train, self.linear_scale)
        self.net.eval()
        self._fit_short_head(ctx, ctx.full_train if cfg.refit else ctx.train, rng)

    def _fit_short_head(self, ctx: FitContext, train: sp.csr_matrix, rng=None) -> None:
        """The short head: a copy of the fitted network whose encoder alone trains on, with
        its own new-user rates (histories cut short, dropped whole), for `short_head_share` of
        the network's epochs (early stopping's count: the same in the refit and production).
        The decoder and output layer stay the network's, so item vectors (similar items, the
        cold-item head) mean the same under both heads; the linear path is shared."""
        self.short_net, self.neighbours, self.neighbours_note = None, None, "off"
        share = self.model_config.short_head_share
        if not share:
            return
        epochs = self.short_head_epochs = max(1, round(share * self.best_epoch))
        assert self.net is not None
        short = copy.deepcopy(self.net)
        short.config = self.model_config.short_head_options()
        for shared in (short.decoder, short.out):
            shared.requires_grad_(False)
        rng = rng if rng is not None else np.random.default_rng(ctx.seed)
        # A fine-tune from the fitted network: a step of its own size.
        lr_scale = self.model_config.short_head_lr_scale
        self.short_net = self._train_for(short, ctx, train, epochs, "short head", rng, lr_scale)
        config = self.model_config
        weight, n_items = config.short_head_neighbours, train.shape[1]
        # Rank 0 decides for all: ranks that disagreed (memory read per node) would wait in
        # different collectives for ever.
        built, self.neighbours_note = self.world.from_main(
            neighbours.resolve(weight, n_items, config.short_history_max)
            if self.world.main
            else None
        )
        if built:
            shrink = config.short_head_neighbour_shrink
            similar = self.world.computed_by_main(  # rank 0 computes, every rank receives
                lambda: neighbours.similarities(train, shrink), (n_items, n_items), self.device
            )
            self.neighbours = LinearPath(similar, weight).to(self.device)

    def _attach_linear(
        self,
        train: sp.csr_matrix,
        scale: float | None,
        ctx: FitContext | None = None,
        sample: np.ndarray | None = None,
    ) -> None:
        """Put EASE's weights on `train` beside the fitted network, where the options and the
        catalogue give it a linear path; `scale` None: chosen on `ctx`'s validation (rank 0
        judges, every rank gets the choice). A scale of 0 leaves the network alone."""
        config, net = self.model_config, self.net
        assert net is not None
        main = self.world.main  # the others never judge (`ease` would refuse on their limit)
        built, self.linear_note = self.world.from_main(
            self._linear_fits(train.shape[1]) if main else None
        )
        if not built or scale == 0.0:
            net.linear = None
            self.linear_scale = 0.0 if built else None
            if built:
                self.linear_note = "off: scale 0 (the network alone)"
            return
        n_items = train.shape[1]
        weights = self.world.computed_by_main(  # rank 0 computes, every rank receives
            lambda: ease_start(train, config.linear_lambda), (n_items, n_items), self.device
        )
        net.linear = LinearPath(weights, scale or 0.0).to(self.device)
        if scale is None:
            assert ctx is not None

            def judge() -> float:  # rank 0 scores, every rank gets its figure
                return self.world.from_main(self._validate(ctx, sample))

            self.linear_scale, self.linear_validation = choose_scale(net.linear, judge)
            if self.linear_scale == 0.0:
                return self._attach_linear(train, 0.0)
        else:
            self.linear_scale = scale
        self.linear_note += f", scale {self.linear_scale:g}"

    def _linear_fits(self, n_items: int) -> tuple[bool, str]:
        """(whether the linear path is built, why) on `n_items`; raises for `ease` asked where
        it cannot be."""
        config = self.model_config
        draws = resolve_negatives(self.train_config.negatives, n_items, config.output, config.loss)
        return resolve_linear(config.linear_path, n_items, draws > 0)

    def _fit_epochs(
        self, ctx: FitContext, train: sp.csr_matrix, epochs: int, label: str, rng=None
    ) -> Autoencoder:
        """A fresh network trained for a fixed number of epochs, no validation."""
        torch.manual_seed(ctx.seed)
        rng = rng if rng is not None else np.random.default_rng(ctx.seed)
        return self._train_for(self._build(ctx, train), ctx, train, epochs, label, rng)

    def _train_for(
        self,
        net: Autoencoder,
        ctx: FitContext,
        train: sp.csr_matrix,
        epochs: int,
        label: str,
        rng: np.random.Generator,
        lr_scale: float = 1.0,
    ) -> Autoencoder:
        """`epochs` passes over `train` for the parameters of `net` that take gradients."""
        sampling = self._sampling(train)
        optimizer = self._optimizer(net, sampling is not None, lr_scale)
        step = TrainingStep(net, self.world)
        shown = ctx.progress and self.world.main
        for _ in tqdm(range(epochs), desc=label, disable=not shown, leave=False):
            self._epoch(step, optimizer, ctx, train, rng, sampling)
        net.end_training()
        return net.eval()

    def production(self) -> AutoencoderRecommender:
        """A fresh model for the fit on all data: these settings and the epoch count early
        stopping picked. Batches are users, so an epoch on all data takes as many steps as one
        on the training split (each user's vector is just fuller): the count carries over."""
        train = replace(self.train_config, epochs=self.best_epoch, refit=False)
        model = replace(self.model_config, linear_scale=self.linear_scale)
        return AutoencoderRecommender(model, train, self.cold_config)

    def fit_cold_items(self, ctx: FitContext) -> bool:
        """Learn the cold-item head on the fitted, frozen network from every positive in `ctx`
        (the network itself is unchanged); False when the model has no item profiles."""
        if not head_fits(self.net, ctx.item_features) or self.cold_config.epochs == 0:
            return False
        assert self.net is not None
        config = replace(self.cold_config, seed=ctx.seed)
        head, figures = fit_cold_head(
            self.net, ctx.full_train, ctx.user_features, ctx.item_features, config,
            self._sampling(ctx.full_train),
        )  # fmt: skip
        self.cold_layers = head.arrays()
        self.cold_figures = {"head": head.describe(), **figures}
        return True

    def _epoch(self, step: TrainingStep, optimizer, ctx: FitContext, train, rng, sampling) -> float:
        """One epoch: a pass over the users, or with `alternate` (RecVAE) that many passes for
        the encoder's side and one for the decoder's side on clean input. The composite prior
        (if any) holds the encoder as the epoch found it."""
        net = step.net
        net.train()
        net.refresh_prior()
        if net.config.kl_by_history:  # its unit: this fit's data (every rank holds all of it)
            with_history = int((np.diff(train.indptr) > 0).sum())
            net.mean_history = train.nnz / max(with_history, 1)
        if not self.model_config.alternate:
            return self._pass(step, optimizer, ctx, train, rng, sampling)
        decoder = [p for m in (net.decoder, net.out) for p in m.parameters() if p.requires_grad]
        if not decoder:  # the short head trains its encoder alone anyway
            return self._pass(step, optimizer, ctx, train, rng, sampling)
        ids = {id(p) for p in decoder}
        encoder = [p for p in net.parameters() if p.requires_grad and id(p) not in ids]
        try:
            _trains(decoder, False)
            for _ in range(self.model_config.alternate):
                loss = self._pass(step, optimizer, ctx, train, rng, sampling)
            _trains(decoder, True)
            _trains(encoder, False)
            net.denoising = False
            self._pass(step, optimizer, ctx, train, rng, sampling)
        finally:
            net.denoising = True
            _trains(encoder, True)
            _trains(decoder, True)
        return loss

    def _pass(self, step: TrainingStep, optimizer, ctx: FitContext, train, rng, sampling) -> float:
        """One pass over the users with history, in seeded batches; under torchrun each rank
        takes its share of every batch (training/models/distributed.py)."""
        users = rng.permutation(np.flatnonzero(np.diff(train.indptr) > 0))
        total = 0.0
        for start in range(0, len(users), self.train_config.batch_size):
            batch = users[start : start + self.train_config.batch_size]
            mine, weight = self.world.share(batch)
            loss = step.loss(
                Bag.from_csr(train[mine]).to(self.device),
                torch.from_numpy(ctx.user_features[mine].astype(np.float32)).to(self.device),
                torch.from_numpy(mine.astype(np.int64)).to(self.device),
                sampling,
            )
            optimizer.zero_grad()
            (loss * weight if weight != 1.0 else loss).backward()
            step.reduce_sparse()
            optimizer.step()
            total += loss.item() * len(batch)  # this rank's share's mean stands for the batch
        return total / max(len(users), 1)

    def _validate(self, ctx: FitContext, sample: np.ndarray | None) -> float | None:
        """The early-stopping metric on validation, scored on rank 0 only (None elsewhere)."""
        if not self.world.main:
            return None
        ranked = evaluate_chunked(self.ranker(ctx.user_features), ctx.train, ctx.valid, sample)
        return float(ranked[self.train_config.metric][9])

    def ranker(self, user_features: np.ndarray):
        """A chunk ranker for `training.evaluation.metrics.evaluate_chunked`: the history masked
        and the top-n taken in torch on the item logits (the output activation keeps each row's
        order), so no users × items scores are copied out or sorted in numpy."""

        @torch.no_grad()
        def rank(history: sp.csr_matrix, users: np.ndarray, n: int) -> np.ndarray:
            assert self.net is not None, "fit or load_state first"
            bag = Bag.from_csr(history).to(self.device)
            logits = self._output(history, user_features[users], users)[:, : self.net.n_items]
            logits[bag.rows, bag.items] = -torch.inf
            values, items = torch.topk(logits, min(n, logits.shape[1]), dim=1)
            values, items = values.cpu().numpy(), items.cpu().numpy()
            order = np.lexsort((items, -values), axis=1)  # ties: the lower index first
            return np.take_along_axis(items, order, axis=1)

        return rank

    @torch.no_grad()
    def score(
        self, history: sp.csr_matrix, user_index: np.ndarray, user_features: np.ndarray
    ) -> np.ndarray:
        """Scores of the rows of `history` (a chunk of users: the output is rows × items)."""
        assert self.net is not None, "fit or load_state first"
        out = []
        for start in range(0, history.shape[0], 1024):
            rows = slice(start, start + 1024)
            output = self._output(history[rows], user_features[rows], user_index[rows])
            out.append(self.net.scores(output).cpu().numpy())
        return np.concatenate(out) if out else np.zeros((0, self.net.n_items), np.float32)

    @torch.no_grad()
    def _output(
        self, history: sp.csr_matrix, user_features: np.ndarray, user_index: np.ndarray
    ) -> torch.Tensor:
        """The output for a chunk of users: from the network, and for the rows of at most
        `short_history_max` positives from the short head where there is one — the exported
        graph's rule (training.jobs.export.InferencePath)."""
        assert self.net is not None, "fit or load_state first"

        def run(net: Autoencoder, rows: np.ndarray | slice, bag: Bag | None = None) -> torch.Tensor:
            net.eval()
            return net(
                bag if bag is not None else Bag.from_csr(history[rows]).to(self.device),
                torch.from_numpy(np.asarray(user_features[rows], np.float32)).to(self.device),
                torch.from_numpy(np.asarray(user_index[rows], np.int64)).to(self.device),
            )

        output = run(self.net, slice(None))
        if self.short_net is not None:
            short = np.flatnonzero(np.diff(history.indptr) <= self.model_config.short_history_max)
            if len(short):
                rows = torch.from_numpy(short).to(self.device)
                bag = Bag.from_csr(history[short]).to(self.device)  # the head's and S's input
                head = run(self.short_net, short, bag)
                if self.neighbours is not None:
                    near = self.neighbours.bag(bag.items, bag.weights, bag.offsets)
                    head = self.short_net.with_linear(head, near)
                output[rows] = head
        return output

    def params(self) -> dict[str, Any]:
        return {
            "model": self.model_config.to_dict(),
            "train": self.train_config.to_dict(),
            "best_epoch": self.best_epoch,
            "sampled_negatives": self.sampled,  # 0: the full loss
            "linear_path": self.linear_note,
            "linear_validation": self.linear_validation,  # validation metric by scale
            "short_head": (
                f"{self.short_head_epochs} epochs, histories of at most "
                f"{self.model_config.short_history_max} positives"
                if self.short_net is not None
                else "off"
            ),
            "short_head_neighbours": self.neighbours_note,
            "cold_items": self.cold_config.to_dict(),
        }

    def state(self) -> dict[str, np.ndarray]:
        """The network's weights, and the cold-item head's layers as `cold_w0, cold_b0, …`."""
        assert self.net is not None
        state = {k: v.detach().cpu().numpy() for k, v in self.net.state_dict().items()}
        if self.short_net is not None:
            state |= {
                SHORT_PREFIX + k: v.detach().cpu().numpy()
                for k, v in self.short_net.state_dict().items()
                if k.split(".")[0] not in SHARED
            }
        if self.neighbours is not None:
            state |= {
                NEIGHBOURS_PREFIX + k: v.detach().cpu().numpy()
                for k, v in self.neighbours.state_dict().items()
            }
        return {**state, **layer_arrays(self.cold_layers)}

    def load_state(self, state: dict[str, np.ndarray], ctx: FitContext | None = None) -> None:
        assert ctx is not None, "the autoencoder needs the feature sizes to rebuild"
        self.net = self._build(ctx)
        if "linear.weight" in state:  # the saved path's shape; its values come with the state
            n = self.net.n_items
            self.net.linear = LinearPath(torch.zeros(n, n), 0.0).to(self.device)
        self.cold_layers = cold_layers(state)
        tensors = {
            k: torch.from_numpy(np.asarray(v))
            for k, v in state.items()
            if not k.startswith((*COLD_PREFIX, SHORT_PREFIX, NEIGHBOURS_PREFIX))
        }
        self.net.load_state_dict(tensors)
        self.net.eval()
        self.short_net = None
        own = {
            k.removeprefix(SHORT_PREFIX): torch.from_numpy(np.asarray(v))
            for k, v in state.items()
            if k.startswith(SHORT_PREFIX)
        }
        expected = {k for k in tensors if k.split(".")[0] not in SHARED}
        if bool(own) != bool(self.model_config.short_head_share) or (own and set(own) != expected):
            raise ValueError(
                f"the checkpoint's short head does not match its options (short_head_share "
                f"{self.model_config.short_head_share}; short-head weights: "
                f"{sorted(set(own) ^ expected) if own else 'none'})"
            )
        if own:  # the short head: the network's shared layers, its own encoder
            self.short_net = copy.deepcopy(self.net)
            self.short_net.config = self.model_config.short_head_options()
            try:
                self.short_net.load_state_dict({**tensors, **own})
            except RuntimeError as error:
                raise ValueError(f"the checkpoint's short head: {error}") from None
            self.short_net.eval()
        self.neighbours = self._load_neighbours(state)

    def _load_neighbours(self, state: dict[str, np.ndarray]) -> LinearPath | None:
        """The short head's neighbours from a state, refused by name where they do not fit the
        options, the head or the catalogue (a checkpoint built by hand, or damaged): real
        floats, finite, the options' weight as the scale. Absent while the options ask for
        them only where the fit's rule leaves them out (`neighbours.resolve`)."""
        assert self.net is not None
        n, config = self.net.n_items, self.model_config
        weight = state.get(NEIGHBOURS_PREFIX + "weight")
        scale = state.get(NEIGHBOURS_PREFIX + "scale")
        keys = sorted(k for k in state if k.startswith(NEIGHBOURS_PREFIX))
        self.neighbours_note = "off"
        expected = (
            self.short_net is not None
            and (neighbours.resolve(config.short_head_neighbours, n, config.short_history_max)[0])
        )
        if not keys and not expected:
            return None
        weight = np.asarray(weight) if weight is not None else None
        scale = np.asarray(scale) if scale is not None else None
        problem = None
        if self.short_net is None or not config.short_head_neighbours:
            problem = "present without a short head or with short_head_neighbours 0"
        elif keys != [NEIGHBOURS_PREFIX + "scale", NEIGHBOURS_PREFIX + "weight"]:
            problem = f"keys {keys}, expected {NEIGHBOURS_PREFIX}{{scale, weight}}"
        elif weight.dtype.kind != "f" or weight.shape != (n, n):
            problem = f"weight {weight.dtype} {weight.shape}, expected floats ({n}, {n})"
        elif scale.dtype.kind != "f" or scale.size != 1:
            problem = f"scale {scale.dtype} {scale.shape}, expected one float"
        elif not (np.isfinite(weight).all() and np.isfinite(scale).all()):
            problem = "values that are not finite"
        elif np.float32(scale.reshape(())) != np.float32(config.short_head_neighbours):
            problem = (
                f"scale {float(scale.reshape(())):g} against short_head_neighbours "
                f"{config.short_head_neighbours:g}"
            )
        if problem is not None:
            raise ValueError(f"the checkpoint's short-head neighbours do not fit: {problem}")
        assert weight is not None and scale is not None
        self.neighbours_note = neighbours.note(n, float(scale.reshape(())))
        path = LinearPath(torch.from_numpy(weight.astype(np.float32)), float(scale.reshape(())))
        return path.to(self.device).eval()


def _trains(parameters: list[torch.nn.Parameter], on: bool) -> None:
    for parameter in parameters:
        parameter.requires_grad_(on)


def _validation_sample(valid: sp.csr_matrix, limit: int, seed: int) -> np.ndarray | None:
    """Users early stopping scores: all with validation items, or a seeded sample of `limit`."""
    users = np.flatnonzero(np.diff(valid.indptr) > 0)
    if len(users) <= limit:
        return None
    return np.sort(np.random.default_rng(seed + 1).choice(users, limit, replace=False))
