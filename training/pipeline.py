"""Load → split → fit → evaluate → checkpoint: what `cddae train` and the experiments run."""

from __future__ import annotations

import hashlib
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import scipy.sparse as sp

from training.baselines import EASE, EDLAE, ItemKNN, MostPopular
from training.checkpoint import Checkpoint
from training.data import RawDataset, load_dataset, load_interactions_csv
from training.dataset import DEFAULT_THRESHOLD, ImplicitDataset
from training.metrics import RankChunk, evaluate_chunked, rank_by_scores
from training.names import KINDS, NEURAL, PRESETS
from training.recommender import FitContext, Recommender
from training.splits import split, train_valid_test
from training.tuned import tuned


@dataclass
class ProtocolConfig:
    name: str = "random"  # random | temporal | leave-one-out | explicit
    fraction: float = 0.2
    seed: int = 0
    threshold: float = DEFAULT_THRESHOLD


def make_recommender(
    kind: str, preset: str = "default", model: dict | None = None, train: dict | None = None
) -> Recommender:
    """A fresh model of `kind`; `model`/`train` override the preset's options. The default
    preset is the choice of the tuner for the kind (training/tuned.py); `paper` is Experiment
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
    from training.models import ModelConfig, paper_config
    from training.train import AutoencoderRecommender, TrainConfig

    base = paper_config(kind) if preset == "paper" else ModelConfig(kind=kind)
    model_config = ModelConfig.from_dict(
        {**base.to_dict(), **tuned_model, **(model or {}), "kind": kind}
    )
    return AutoencoderRecommender(
        model_config, TrainConfig.from_dict({**tuned_train, **(train or {})})
    )


@dataclass
class Prepared:
    dataset: ImplicitDataset
    train: sp.csr_matrix  # full training positives
    test: sp.csr_matrix
    fit: sp.csr_matrix  # training minus validation
    valid: sp.csr_matrix
    protocol: dict[str, Any]  # as reports and manifests state it
    positives: sp.csr_matrix  # every positive, training and test: the final fit's data
    seen: sp.csr_matrix  # every interaction, any rating: what the service never recommends


def prepare(
    data: Path | RawDataset,
    protocol: ProtocolConfig,
    train_file: Path | None = None,
    test_file: Path | None = None,
    user_fields: dict[str, str] | None = None,
) -> Prepared:
    """Load and split; `user_fields` overrides how profile fields are encoded (field -> kind)."""
    raw = data if isinstance(data, RawDataset) else load_dataset(data)
    if (train_file is None) != (test_file is None):
        raise ValueError("--train-file and --test-file go together")
    if train_file is not None and test_file is not None:
        return _prepare_explicit(raw, protocol, train_file, test_file, user_fields)
    dataset = ImplicitDataset.from_raw(raw, protocol.threshold, user_fields=user_fields)
    outer, inner = train_valid_test(
        dataset.positives, dataset.timestamps, protocol.name, protocol.fraction, protocol.seed
    )
    seen = dataset.interacted(raw.interactions)
    return Prepared(
        dataset, outer.train, outer.test, inner.train, inner.test, asdict(protocol),
        dataset.positives, seen,
    )  # fmt: skip


def _prepare_explicit(
    raw: RawDataset,
    protocol: ProtocolConfig,
    train_file: Path,
    test_file: Path,
    user_fields: dict[str, str] | None = None,
) -> Prepared:
    """Train/test from files; ids also span the folder's data so the maps match the built-in
    split's; validation is carved from the training file as usual."""
    train_inter, test_inter = load_interactions_csv(train_file), load_interactions_csv(test_file)
    profiled = RawDataset(train_inter, raw.user_profiles, raw.item_profiles, raw.source)
    dataset = ImplicitDataset.from_raw(
        profiled, protocol.threshold, test_inter, raw.interactions, user_fields=user_fields
    )
    test, _ = dataset.to_matrices(test_inter)
    test = (test - test.multiply(dataset.positives)).tocsr()
    test.eliminate_zeros()
    name = "random" if protocol.name == "explicit" else protocol.name
    inner = split(
        dataset.positives, dataset.timestamps, name, protocol.fraction, protocol.seed + 10_007
    )
    stated = {**asdict(protocol), "name": "explicit", "validation": name}
    everything = (dataset.positives + test).tocsr()
    everything.data[:] = 1.0
    seen = dataset.interacted(train_inter, test_inter)
    return Prepared(
        dataset, dataset.positives, test, inner.train, inner.test, stated, everything, seen
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
) -> tuple[dict[str, np.ndarray], float]:
    """Fit on training-minus-validation, score the full training history, evaluate on test.

    `user_features` replaces the dataset's encoded profiles (experiments use a subset)."""
    ds = prepared.dataset
    features = ds.user_features if user_features is None else user_features
    ctx = FitContext(prepared.fit, prepared.valid, features, ds.item_features, seed, progress)
    started = time.perf_counter()
    recommender.fit(ctx)
    fit_seconds = time.perf_counter() - started
    results = evaluate_chunked(ranker(recommender, features), prepared.train, prepared.test)
    return results, fit_seconds


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


def train_and_evaluate(
    kind: str,
    prepared: Prepared,
    seed: int = 0,
    preset: str = "default",
    model: dict | None = None,
    train: dict | None = None,
    progress: bool = True,
    final_fit: bool = True,
) -> tuple[Recommender, Checkpoint]:
    """Evaluate honestly on the holdout, then (by default) fit the served model on all data.

    Returns the served recommender (the evaluated one when `final_fit` is off)."""
    ds = prepared.dataset
    recommender = make_recommender(kind, preset, model, train)
    results, fit_seconds = fit_and_evaluate(recommender, prepared, seed, progress)
    served, final_state = recommender, None
    if final_fit:
        served, final_seconds = fit_final(recommender, prepared, seed, progress)
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
        "evaluated_users": int((np.diff(prepared.test.indptr) > 0).sum()),
        "fit_seconds": round(fit_seconds, 3),
        "served": {
            "fit_on": "all data" if final_fit else "training split (final fit off)",
            "positives": int((prepared.positives if final_fit else prepared.train).nnz),
            "params": served.params(),
            "fit_seconds": round(final_seconds, 3) if final_fit else None,
        },
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
        recommender = make_recommender(checkpoint.kind, "default", params["model"], params["train"])
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
