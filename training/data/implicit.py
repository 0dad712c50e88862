"""Implicit-feedback view of a `RawDataset`: stable id maps, sparse positives, encoded profiles."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import scipy.sparse as sp

from service.features import FeatureSpec, fit_field
from training.data.loaders import Interactions, RawDataset

DEFAULT_THRESHOLD = 4.0
YEAR_EDGES = (1930.0, 1940.0, 1950.0, 1960.0, 1970.0, 1980.0, 1990.0, 1995.0)


def _natural_order(ids: np.ndarray) -> np.ndarray:
    """Unique raw ids sorted numerically where they all are numbers, else as text: stable
    across runs. Works on the vocabulary (unique ids), never on the rows."""
    unique = np.unique(np.asarray(ids, dtype=object).astype(str))
    # ASCII digits only: numpy's isdigit also takes "²", which int() refuses.
    if len(unique) and all(i.isascii() and i.isdigit() for i in unique.tolist()):
        unique = np.array(sorted(unique.tolist(), key=int), dtype=str)
    return unique.astype(object)


def _index_of(ids: np.ndarray, vocab: np.ndarray) -> np.ndarray:
    """Position in `ids` of every entry of `vocab` (all present)."""
    text = ids.astype(str)
    order = np.argsort(text, kind="stable")
    return order[np.searchsorted(text[order], vocab.astype(str))]


# How MovieLens's user fields are encoded; any other field is inferred from its values, and a
# config's `features.user` section overrides either: {"zip": "categorical", "age": "ignore"}.
KNOWN_USER_FIELDS: dict[str, str] = {
    "gender": "categorical", "occupation": "categorical", "age": "bucket", "zip": "ignore",
}  # fmt: skip
FIELD_KINDS = ("categorical", "multi", "bucket", "numeric", "ignore")
MAX_CATEGORIES = 200  # more distinct values than this reads as free text or ids: not encoded


def infer_kind(values: list[Any]) -> str:
    """numeric when every value is a number; multi when values are lists or "a|b" strings;
    categorical up to MAX_CATEGORIES distinct values; else ignore (ids, free text)."""
    present = [v for v in values if v is not None and v != ""]
    if not present:
        return "ignore"
    if all(_is_number(v) for v in present):
        return "numeric"
    if any(isinstance(v, list) or (isinstance(v, str) and "|" in v) for v in present):
        return "multi"
    if len({str(v) for v in present}) <= MAX_CATEGORIES:
        return "categorical"
    return "ignore"


def _is_number(value: Any) -> bool:
    if isinstance(value, bool):
        return False
    try:
        return math.isfinite(float(value))
    except (TypeError, ValueError):
        return False


def fit_user_spec(
    profiles: dict[str, dict[str, Any]], overrides: dict[str, str] | None = None
) -> FeatureSpec:
    """A spec for whatever fields the profiles carry: MovieLens's as before (gender and
    occupation one-hot, age in MovieLens age bands, zip not encoded), others inferred, any of
    them overridden by `overrides` (field -> kind, or "ignore")."""
    overrides = overrides or {}
    if bad := {k: v for k, v in overrides.items() if v not in FIELD_KINDS}:
        raise ValueError(f"features.user: unknown kind(s) {bad}; choose from {FIELD_KINDS}")
    names = {name for profile in profiles.values() for name in profile}
    known = [n for n in ("gender", "occupation", "age") if n in names]
    fields = []
    for name in [*known, *sorted(names - set(known))]:
        column = [p.get(name) for p in profiles.values()]
        kind = overrides.get(name) or KNOWN_USER_FIELDS.get(name) or infer_kind(column)
        if kind != "ignore" and any(v is not None and v != "" for v in column):
            fields.append(fit_field(name, kind, column))  # type: ignore[arg-type]
    return FeatureSpec(tuple(fields))


def fit_item_spec(profiles: dict[str, dict[str, Any]]) -> FeatureSpec:
    """Genres multi-hot and release year in bands (title text is not used)."""
    fields = []
    genres = [p.get("genres") for p in profiles.values()]
    if any(genres):
        fields.append(fit_field("genres", "multi", genres))
    if any(p.get("year") is not None for p in profiles.values()):
        fields.append(fit_field("year", "bucket", [], edges=YEAR_EDGES))
    return FeatureSpec(tuple(fields))


@dataclass
class ImplicitDataset:
    """Users × items positives (CSR of ones) with the timestamps of the same cells."""

    user_ids: np.ndarray
    item_ids: np.ndarray
    positives: sp.csr_matrix
    timestamps: sp.csr_matrix
    user_spec: FeatureSpec
    item_spec: FeatureSpec
    user_features: np.ndarray
    item_features: np.ndarray
    raw: RawDataset
    threshold: float

    @property
    def n_users(self) -> int:
        return len(self.user_ids)

    @property
    def n_items(self) -> int:
        return len(self.item_ids)

    @classmethod
    def from_raw(
        cls,
        raw: RawDataset,
        threshold: float = DEFAULT_THRESHOLD,
        *extra: Interactions,
        user_fields: dict[str, str] | None = None,
    ) -> ImplicitDataset:
        """Id maps cover every user and item in `raw` and in `extra` (e.g. explicit test files)."""
        columns = [inter.columns() for inter in (raw.interactions, *extra)]
        user_ids = _natural_order(np.concatenate([c[0].vocab for c in columns]))
        catalogue = np.array(list(raw.item_profiles), dtype=object)
        item_ids = _natural_order(np.concatenate([*(c[1].vocab for c in columns), catalogue]))
        user_spec = fit_user_spec(raw.user_profiles, user_fields)
        item_spec = fit_item_spec(raw.item_profiles)
        data = cls(
            user_ids=user_ids,
            item_ids=item_ids,
            positives=sp.csr_matrix((len(user_ids), len(item_ids)), dtype=np.float32),
            timestamps=sp.csr_matrix((len(user_ids), len(item_ids)), dtype=np.float64),
            user_spec=user_spec,
            item_spec=item_spec,
            user_features=user_spec.encode_many(
                _select(raw.user_profiles.get(u), user_spec) for u in user_ids
            ),
            item_features=item_spec.encode_many(
                _select(raw.item_profiles.get(i), item_spec) for i in item_ids
            ),
            raw=raw,
            threshold=threshold,
        )
        data.positives, data.timestamps = data.to_matrices(raw.interactions)
        return data

    def _indices(self, inter: Interactions) -> tuple[np.ndarray, np.ndarray]:
        """Matrix row and column of every row of `inter`."""
        users, items, _, _ = inter.columns()
        u = _index_of(self.user_ids, users.vocab)[users.codes]
        i = _index_of(self.item_ids, items.vocab)[items.codes]
        return u, i

    def interacted(self, *sources: Interactions) -> sp.csr_matrix:
        """Every (user, item) pair in `sources`, whatever its rating: what a user has consumed,
        which the served model must never recommend back (the input stays positives only)."""
        rows, cols = [], []
        for inter in sources:
            u, i = self._indices(inter)
            rows.append(u)
            cols.append(i)
        u = np.concatenate(rows) if rows else np.zeros(0, np.int64)
        i = np.concatenate(cols) if cols else np.zeros(0, np.int64)
        seen = sp.csr_matrix(
            (np.ones(len(u), np.float32), (u, i)), shape=(self.n_users, self.n_items)
        )
        seen.sum_duplicates()
        seen.data[:] = 1.0
        seen.sort_indices()
        return seen

    def to_matrices(self, inter: Interactions) -> tuple[sp.csr_matrix, sp.csr_matrix]:
        """Positives (rating ≥ threshold) of `inter` under this dataset's id maps.

        A pair rated twice keeps its latest rating; a source without ratings (`implicit`) makes
        every row a positive."""
        _, _, ratings, times = inter.columns()
        u, i = self._indices(inter)
        cell = u * self.n_items + i
        order = np.lexsort((times, cell))
        cell, ratings, times = cell[order], ratings[order], times[order]
        del order
        last = np.ones(len(cell), dtype=bool)
        last[:-1] = cell[1:] != cell[:-1]
        keep = last if inter.implicit else last & (ratings >= self.threshold)
        u, i = np.divmod(cell[keep], self.n_items)
        shape = (self.n_users, self.n_items)
        ones = sp.csr_matrix((np.ones(len(u), np.float32), (u, i)), shape=shape)
        stamps = sp.csr_matrix((times[keep], (u, i)), shape=shape)
        ones.sort_indices()
        stamps.sort_indices()
        return ones, stamps


def _select(profile: dict[str, Any] | None, spec: FeatureSpec) -> dict[str, Any]:
    """The part of a profile that the spec encodes (zip codes and titles are kept, not encoded)."""
    return {k: v for k, v in (profile or {}).items() if k in spec.names}
