"""Load → split → fit → evaluate → checkpoint: what `cddae train` and the experiments run."""

from __future__ import annotations

import hashlib
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import scipy.sparse as sp

from training.baselines import EASE, ItemKNN, MostPopular
from training.checkpoint import Checkpoint
from training.data import RawDataset, load_dataset, load_interactions_csv
from training.dataset import DEFAULT_THRESHOLD, ImplicitDataset
from training.metrics import evaluate_scores
from training.names import KINDS, NEURAL, PRESETS
from training.recommender import FitContext, Recommender
from training.splits import split, train_valid_test


@dataclass
class ProtocolConfig:
    name: str = "random"  # random | temporal | leave-one-out | explicit
    fraction: float = 0.2
    seed: int = 0
    threshold: float = DEFAULT_THRESHOLD


def make_recommender(
    kind: str, preset: str = "default", model: dict | None = None, train: dict | None = None
) -> Recommender:
    """A fresh model of `kind`; `model`/`train` override the preset's options."""
    if kind not in KINDS:
        raise ValueError(f"unknown model {kind!r}; choose from {KINDS}")
    if kind in ("pop", "itemknn", "ease"):
        options = {k: tuple(v) if isinstance(v, list) else v for k, v in (model or {}).items()}
        baseline = {"pop": MostPopular, "itemknn": ItemKNN, "ease": EASE}[kind]
        try:
            return baseline(**options)
        except TypeError:
            raise ValueError(f"{kind} takes no option(s) {sorted(options)}") from None
    from training.train import AutoencoderRecommender, TrainConfig

    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; choose from {PRESETS}")
    from training.models import ModelConfig, paper_config

    base = paper_config(kind) if preset == "paper" else ModelConfig(kind=kind)
    model_config = ModelConfig.from_dict({**base.to_dict(), **(model or {}), "kind": kind})
    return AutoencoderRecommender(model_config, TrainConfig.from_dict(train or {}))


@dataclass
class Prepared:
    dataset: ImplicitDataset
    train: sp.csr_matrix  # full training positives
    test: sp.csr_matrix
    fit: sp.csr_matrix  # training minus validation
    valid: sp.csr_matrix
    protocol: dict[str, Any]  # as reports and manifests state it


def prepare(
    data: Path | RawDataset,
    protocol: ProtocolConfig,
    train_file: Path | None = None,
    test_file: Path | None = None,
) -> Prepared:
    raw = data if isinstance(data, RawDataset) else load_dataset(data)
    if (train_file is None) != (test_file is None):
        raise ValueError("--train-file and --test-file go together")
    if train_file is not None and test_file is not None:
        return _prepare_explicit(raw, protocol, train_file, test_file)
    dataset = ImplicitDataset.from_raw(raw, protocol.threshold)
    outer, inner = train_valid_test(
        dataset.positives, dataset.timestamps, protocol.name, protocol.fraction, protocol.seed
    )
    return Prepared(dataset, outer.train, outer.test, inner.train, inner.test, asdict(protocol))


def _prepare_explicit(
    raw: RawDataset, protocol: ProtocolConfig, train_file: Path, test_file: Path
) -> Prepared:
    """Train/test from files; ids also span the folder's data so the maps match the built-in
    split's; validation is carved from the training file as usual."""
    train_inter, test_inter = load_interactions_csv(train_file), load_interactions_csv(test_file)
    profiled = RawDataset(train_inter, raw.user_profiles, raw.item_profiles, raw.source)
    dataset = ImplicitDataset.from_raw(profiled, protocol.threshold, test_inter, raw.interactions)
    test, _ = dataset.to_matrices(test_inter)
    test = (test - test.multiply(dataset.positives)).tocsr()
    test.eliminate_zeros()
    name = "random" if protocol.name == "explicit" else protocol.name
    inner = split(
        dataset.positives, dataset.timestamps, name, protocol.fraction, protocol.seed + 10_007
    )
    stated = {**asdict(protocol), "name": "explicit", "validation": name}
    return Prepared(dataset, dataset.positives, test, inner.train, inner.test, stated)


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
    scores = recommender.score(prepared.train, np.arange(ds.n_users), features)
    return evaluate_scores(scores, prepared.train, prepared.test), fit_seconds


def train_and_evaluate(
    kind: str,
    prepared: Prepared,
    seed: int = 0,
    preset: str = "default",
    model: dict | None = None,
    train: dict | None = None,
    progress: bool = True,
) -> tuple[Recommender, Checkpoint]:
    ds = prepared.dataset
    recommender = make_recommender(kind, preset, model, train)
    results, fit_seconds = fit_and_evaluate(recommender, prepared, seed, progress)
    meta = {
        "protocol": prepared.protocol,
        "params": recommender.params(),
        "preset": preset,
        "seed": seed,
        "data": {
            "source": ds.raw.source,
            "fingerprint": fingerprint(prepared.train, ds.item_ids),
            "threshold": ds.threshold,
            "users": ds.n_users,
            "items": ds.n_items,
            "train_positives": int(prepared.train.nnz),
            "test_positives": int(prepared.test.nnz),
        },
        "metrics": {name: values.tolist() for name, values in results.items()},
        "evaluated_users": int((np.diff(prepared.test.indptr) > 0).sum()),
        "fit_seconds": round(fit_seconds, 3),
    }
    checkpoint = Checkpoint(
        kind=kind,
        user_ids=ds.user_ids,
        item_ids=ds.item_ids,
        train=prepared.train,
        test=prepared.test,
        user_features=ds.user_features,
        item_features=ds.item_features,
        user_spec=ds.user_spec,
        item_spec=ds.item_spec,
        user_profiles=ds.raw.user_profiles,
        item_catalogue=ds.raw.item_profiles,
        state=recommender.state(),
        meta=meta,
    )
    return recommender, checkpoint


def restore(checkpoint: Checkpoint) -> Recommender:
    """The fitted recommender a checkpoint describes, ready to score."""
    params: dict[str, Any] = checkpoint.meta.get("params", {})
    if checkpoint.kind in NEURAL:
        recommender = make_recommender(checkpoint.kind, "default", params["model"], params["train"])
        ctx = FitContext(
            checkpoint.train,
            sp.csr_matrix(checkpoint.train.shape),
            checkpoint.user_features,
            checkpoint.item_features,
        )
        recommender.load_state(checkpoint.state, ctx)  # type: ignore[call-arg]
        return recommender
    recommender = make_recommender(checkpoint.kind)
    recommender.load_state(checkpoint.state)
    return recommender
