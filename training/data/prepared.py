"""Load → implicit feedback → split: the `Prepared` matrices all fits start from."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import scipy.sparse as sp

from training.data.implicit import DEFAULT_THRESHOLD, ImplicitDataset
from training.data.loaders import RawDataset, load_dataset, load_interactions_csv
from training.data.splits import split, train_valid_test


@dataclass
class ProtocolConfig:
    name: str = "random"  # random | temporal | leave-one-out | explicit
    fraction: float = 0.2
    seed: int = 0
    threshold: float = DEFAULT_THRESHOLD


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
    fit_times: sp.csr_matrix | None = None  # `fit`'s timestamps, cell for cell


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
        dataset.positives, seen, inner.train_times,
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
        dataset,
        dataset.positives,
        test,
        inner.train,
        inner.test,
        stated,
        everything,
        seen,
        inner.train_times,
    )
