"""Load → split → fit → evaluate → checkpoint: what `cddae train` and the experiments run."""

from __future__ import annotations

import hashlib
import time
from typing import TYPE_CHECKING, Any

import numpy as np
import scipy.sparse as sp

from training.data.prepared import Prepared
from training.evaluation.metrics import RankChunk, Sampling, evaluate_sampled, rank_by_scores
from training.jobs.checkpoint import Checkpoint
from training.models.baselines import EASE, EDLAE, ItemKNN, MostPopular
from training.models.interface import FitContext, Recommender
from training.models.tuned import tuned
from training.names import KINDS, NEURAL, PRESETS

if TYPE_CHECKING:
    from training.models.distributed import World


def make_recommender(
    kind: str,
    preset: str = "default",
    model: dict | None = None,
    train: dict | None = None,
    cold: dict | None = None,
) -> Recommender:
    """A fresh model of `kind`; `model`/`train` override the preset's options, `cold` the
    cold-item head's (autoencoders only). The default
    preset is the choice of the tuner for the kind (training/models/tuned.py); `paper` is Experiment
    1's setting for the autoencoders; `untuned` (and `paper`, for the baselines) the options'
    plain defaults — what the tuner's draws start from."""
    if kind not in KINDS:
        raise ValueError(f"unknown model {kind!r}; choose from {KINDS}")
    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; choose from {PRESETS}")
    tuned_model, tuned_train = tuned(kind) if preset == "default" else ({}, {})
    if kind in ("pop", "itemknn", "ease", "edlae"):
        options = {k: tuple(v) if isinstance(v, list) else v
                   for k, v in {**tuned_model, **(model or {})}.items()}  # fmt: skip
        baseline = {"pop": MostPopular, "itemknn": ItemKNN, "ease": EASE, "edlae": EDLAE}[kind]
        try:
            return baseline(**options)
        except TypeError:
            raise ValueError(f"{kind} takes no option(s) {sorted(options)}") from None
    from training.models.autoencoders import ModelConfig, paper_config
    from training.models.cold_items import ColdHeadConfig
    from training.models.trainer import AutoencoderRecommender, TrainConfig

    base = paper_config(kind) if preset == "paper" else ModelConfig(kind=kind)
    model_config = ModelConfig.from_dict(
        {**base.to_dict(), **tuned_model, **(model or {}), "kind": kind}
    )
    return AutoencoderRecommender(
        model_config,
        TrainConfig.from_dict({**tuned_train, **(train or {})}),
        ColdHeadConfig.from_dict(cold or {}),
    )


def fingerprint(matrix: sp.csr_matrix, ids: np.ndarray) -> str:
    digest = hashlib.sha256()
    digest.update(matrix.indptr.astype(np.int64).tobytes())
    digest.update(matrix.indices.astype(np.int32).tobytes())
    digest.update("\n".join(map(str, ids)).encode())
    return digest.hexdigest()[:16]


def fit_and_evaluate(
    recommender: Recommender,
    prepared: Prepared,
    seed: int = 0,
    progress: bool = True,
    user_features: np.ndarray | None = None,
    eval_users: int | None = None,
) -> tuple[dict[str, np.ndarray], float, Sampling]:
    """Fit on training-minus-validation, score the full training history, evaluate on test:
    every user, or a sample with intervals (`evaluate_sampled`: by default past 100,000).

    `user_features` replaces the dataset's encoded profiles (experiments use a subset)."""
    ds = prepared.dataset
    features = ds.user_features if user_features is None else user_features
    ctx = FitContext(prepared.fit, prepared.valid, features, ds.item_features, seed, progress)
    started = time.perf_counter()
    recommender.fit(ctx)
    fit_seconds = time.perf_counter() - started
    world = _world()
    evaluated = None
    if world.main:  # under torchrun, rank 0 evaluates and every rank gets its figures
        evaluated = evaluate_sampled(
            ranker(recommender, features), prepared.train, prepared.test, eval_users, seed
        )
    results, sampling = world.from_main(evaluated)
    return results, fit_seconds, sampling


def _world() -> World:
    """torchrun's world (training/models/distributed.py), a world of one otherwise."""
    from training.models.distributed import current  # torch: imported where a fit needs it

    return current()


def ranker(recommender: Recommender, user_features: np.ndarray) -> RankChunk:
    """The chunk ranker the evaluation takes: the model's own where it has one (the
    autoencoders rank in torch), else its scores masked and ranked in numpy."""
    if hasattr(recommender, "ranker"):
        return recommender.ranker(user_features)
    return rank_by_scores(
        lambda history, users: recommender.score(history, users, user_features[users])
    )


def fit_final(
    evaluated: Recommender, prepared: Prepared, seed: int = 0, progress: bool = True
) -> tuple[Recommender, float]:
    """The production fit: the settings the evaluation chose, on every positive (nothing held
    out). Evaluation and production are two jobs: the first measures, the second serves."""
    ds = prepared.dataset
    empty = sp.csr_matrix(prepared.positives.shape, dtype=np.float32)
    ctx = FitContext(prepared.positives, empty, ds.user_features, ds.item_features, seed, progress)
    final = evaluated.production()
    started = time.perf_counter()
    final.fit(ctx)
    return final, time.perf_counter() - started


def fit_cold_items(
    served: Recommender, prepared: Prepared, matrix: sp.csr_matrix, seed: int = 0
) -> dict[str, Any] | None:
    """The cold-item head of a fitted autoencoder, learnt on the frozen network from `matrix`
    (the positives it was fit on); its figures, or None for a model without one."""
    if not hasattr(served, "fit_cold_items") or not _world().main:  # torchrun: rank 0's job
        return None
    ds = prepared.dataset
    empty = sp.csr_matrix(matrix.shape, dtype=np.float32)
    ctx = FitContext(matrix, empty, ds.user_features, ds.item_features, seed, False)
    return served.cold_figures if served.fit_cold_items(ctx) else None


def train_and_evaluate(
    kind: str,
    prepared: Prepared,
    seed: int = 0,
    preset: str = "default",
    model: dict | None = None,
    train: dict | None = None,
    progress: bool = True,
    final_fit: bool = True,
    cold: dict | None = None,
    eval_users: int | None = None,
) -> tuple[Recommender, Checkpoint]:
    """Evaluate honestly on the holdout, then (by default) fit the served model on all data,
    then the served autoencoder's cold-item head on its frozen network.

    Returns the served recommender (the evaluated one when `final_fit` is off)."""
    ds = prepared.dataset
    recommender = make_recommender(kind, preset, model, train, cold)
    results, fit_seconds, sampling = fit_and_evaluate(
        recommender, prepared, seed, progress, eval_users=eval_users
    )
    served, final_state = recommender, None
    if final_fit:
        served, final_seconds = fit_final(recommender, prepared, seed, progress)
    cold_figures = fit_cold_items(
        served, prepared, prepared.positives if final_fit else prepared.train, seed
    )
    if final_fit:
        final_state = served.state()
    meta = {
        "protocol": prepared.protocol,
        "params": recommender.params(),
        "preset": preset,
        "seed": seed,
        "data": {
            "source": ds.raw.source,
            "fingerprint": fingerprint(prepared.positives, ds.item_ids),
            "threshold": ds.threshold,
            "users": ds.n_users,
            "items": ds.n_items,
            "interactions": int(prepared.seen.nnz),
            "positives": int(prepared.positives.nnz),
            "train_positives": int(prepared.train.nnz),
            "test_positives": int(prepared.test.nnz),
        },
        "metrics": {name: values.tolist() for name, values in results.items()},
        "evaluated_users": sampling.users,
        "evaluation": sampling.summary(),
        "fit_seconds": round(fit_seconds, 3),
        "served": {
            "fit_on": "all data" if final_fit else "training split (final fit off)",
            "positives": int((prepared.positives if final_fit else prepared.train).nnz),
            "params": served.params(),
            "fit_seconds": round(final_seconds, 3) if final_fit else None,
        },
        "cold_items": cold_figures,
        "world_size": _world().size,  # processes the fits ran in (torchrun)
    }
    checkpoint = Checkpoint(
        kind=kind,
        user_ids=ds.user_ids,
        item_ids=ds.item_ids,
        train=prepared.train,
        test=prepared.test,
        positives=prepared.positives,
        seen=prepared.seen,
        user_features=ds.user_features,
        item_features=ds.item_features,
        user_spec=ds.user_spec,
        item_spec=ds.item_spec,
        user_profiles=ds.raw.user_profiles,
        item_catalogue=ds.raw.item_profiles,
        state=recommender.state(),
        final_state=final_state,
        meta=meta,
    )
    return served, checkpoint


def restore(checkpoint: Checkpoint, served: bool = False) -> Recommender:
    """The fitted recommender a checkpoint describes, ready to score: the evaluated one, or with
    `served` the one fit on all data (the evaluated one where the final fit was off)."""
    params: dict[str, Any] = checkpoint.meta.get("params", {})
    state = checkpoint.state
    if served and checkpoint.final_state is not None:
        state = checkpoint.final_state
        params = checkpoint.meta.get("served", {}).get("params", params)
    if checkpoint.kind in NEURAL:
        recommender = make_recommender(
            checkpoint.kind, "default", params["model"], params["train"], params.get("cold_items")
        )
        ctx = FitContext(
            checkpoint.train,
            sp.csr_matrix(checkpoint.train.shape),
            checkpoint.user_features,
            checkpoint.item_features,
        )
        recommender.load_state(state, ctx)  # type: ignore[call-arg]
        return recommender
    recommender = make_recommender(checkpoint.kind)
    recommender.load_state(state)
    return recommender
