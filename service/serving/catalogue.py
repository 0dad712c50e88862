"""The catalogue as served: the bundle's items, plus what the API has done to them since.

A `CatalogueView` joins one model version with one catalogue generation (service.state.store's
`Catalogue`): items created through the API are appended after the model's own (scored from
their profiles by the cold-item head, service.item_path), hidden items are blocked, and the
item fields that filters test are kept as arrays (a boolean column per label, a number per
item), so that a filter is a mask over the scores, applied before the top-N. Views are
immutable; the service builds a new one when the model or the generation moves.
"""

from __future__ import annotations

import weakref
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from service.item_path import cold_weights, item_scores
from service.serving.filters import LABEL_KINDS, Filters
from service.serving.onnx_model import (
    Model,
    Query,
    Ranked,
    item_tail,
    item_template,
    render,
    top_n,
)
from service.state.store import Catalogue

NO_FILTERS = Filters()
MASKS_KEPT = 64  # filter masks a view remembers (each one byte per item)


@dataclass(frozen=True)
class ItemInfo:
    item_id: str
    profile: dict[str, Any]
    available: bool
    source: str  # bundle | api
    in_model: bool  # has learnt weights in the model in service (else: the profile path)


class CatalogueView:
    def __init__(self, model: Model, catalogue: Catalogue, previous: CatalogueView | None = None):
        """`previous`: the last view of the same model, whose per-item work (the head's
        vectors, the answer templates, the filter rows) is reused for items whose profile has
        not changed: a write costs the items it changed, not every item created so far (the
        rest is array copies and a pass over the ids, docs/SERVICE.md)."""
        self.model, self.generation, self.unread = model, catalogue.generation, catalogue.unread
        bundle, known = model.bundle, model.n_items
        spec = bundle.item_spec
        ids = sorted(catalogue.profiles)
        found = model.item_index.lookup(np.asarray(ids, dtype=str)) if ids else np.zeros(0, int)
        self.new_ids = [item for item, at in zip(ids, found, strict=True) if at < 0]
        before = previous if previous is not None and previous.model is model else None
        if before is not None and not before._api_profiles.keys() <= catalogue.profiles.keys():
            before = None  # profiles gone (a store emptied): nothing of `before` is trusted
        # The common write (a profile or an availability changed, nothing created): the rows
        # stand where they stood, so arrays are copied whole (or shared) rather than gathered.
        same_rows = before is not None and before.new_ids == self.new_ids
        if same_rows:
            self.new_index = before.new_index  # type: ignore[union-attr]
        else:
            self.new_index = {item: known + k for k, item in enumerate(self.new_ids)}
        self.n_items = known + len(self.new_ids)
        self._api_profiles = catalogue.profiles
        self._pending = catalogue.pending
        self._hidden = catalogue.hidden
        overridden = {item: int(at) for item, at in zip(ids, found, strict=True) if at >= 0}
        raw_new = [catalogue.profiles[item] for item in self.new_ids]

        # Per new item: (profile, vector, bias, answer template), reused while the profile stays.
        carried = before._derived if before is not None else {}
        self._derived: dict[str, tuple[dict, np.ndarray | None, float, bytes]]
        self._derived = dict(carried) if same_rows else {}
        fresh = [k for k, item in enumerate(self.new_ids)
                 if item not in carried or carried[item][0] != raw_new[k]]  # fmt: skip
        vectors: dict[int, tuple[np.ndarray | None, float]] = {}
        if fresh and model.cold_output is not None:
            features = spec.encode_many([spec.project(raw_new[k]) for k in fresh])
            fresh_vectors, fresh_bias = cold_weights(bundle.cold_layers, features)
            vectors = {k: (fresh_vectors[j], float(fresh_bias[j])) for j, k in enumerate(fresh)}
        for k in fresh:
            item = self.new_ids[k]
            vector, bias = vectors.get(k, (None, 0.0))
            template = item_template(item, item_tail(*_shown(raw_new[k]), "profile"))
            self._derived[item] = (raw_new[k], vector, bias, template)
        if not same_rows:
            self._derived = {item: self._derived.get(item) or carried[item]
                             for item in self.new_ids}  # fmt: skip
        # Rows to make anew: the fresh new items, and the model's items the API re-described
        # since `before` (or all of them without one); the others are copied from `before`.
        redone = [known + k for k in fresh]
        if before is None:
            redone_overrides = overridden
        else:
            old = before._api_profiles
            redone_overrides = {item: at for item, at in overridden.items()
                                if old.get(item) != catalogue.profiles[item]}  # fmt: skip
        carry = np.zeros(len(self.new_ids), bool)
        if before is not None and not same_rows:
            # where each new item's row lies in `before` (-1: not there, or made anew)
            source = np.array([before.new_index.get(item, -1) for item in self.new_ids], int)
            source[fresh] = -1
            carry = source >= 0

        # Scoring: the model's items by the graph; new ones by the head, where there is one.
        self.cold_vectors = self.cold_bias = None
        rankable = np.ones(self.n_items, dtype=bool)
        if self.new_ids and model.cold_output is not None:
            if same_rows and not fresh:
                self.cold_vectors, self.cold_bias = before.cold_vectors, before.cold_bias
            elif same_rows:
                self.cold_vectors = before.cold_vectors.copy()
                self.cold_bias = before.cold_bias.copy()
                self.cold_vectors[fresh] = np.stack([vectors[k][0] for k in fresh])
                self.cold_bias[fresh] = [vectors[k][1] for k in fresh]
            elif before is not None and before.cold_vectors is not None and carry.any():
                width = before.cold_vectors.shape[1]
                self.cold_vectors = np.empty((len(self.new_ids), width), np.float32)
                self.cold_bias = np.empty(len(self.new_ids), np.float32)
                self.cold_vectors[carry] = before.cold_vectors[source[carry] - known]
                self.cold_bias[carry] = before.cold_bias[source[carry] - known]
                if fresh:
                    self.cold_vectors[fresh] = np.stack([vectors[k][0] for k in fresh])
                    self.cold_bias[fresh] = [vectors[k][1] for k in fresh]
            else:
                rows = [self._derived[item] for item in self.new_ids]
                self.cold_vectors = np.stack([row[1] for row in rows]).astype(np.float32)
                self.cold_bias = np.array([row[2] for row in rows], dtype=np.float32)
        elif self.new_ids:
            rankable[known:] = False  # no profile path in this model: listed, not ranked
        if (
            before is not None
            and before._hidden == catalogue.hidden
            and before.n_items == self.n_items
        ):
            self.available = before.available  # immutable once built: shared
        else:
            hidden = self.lookup(sorted(catalogue.hidden))
            self.available = np.ones(self.n_items, dtype=bool)
            self.available[hidden[hidden >= 0]] = False
        self.blocked = ~(self.available & rankable)
        self.popularity = np.concatenate([model.popularity, np.zeros(len(self.new_ids))])

        # What filters test, per field of the item spec (overrides and new items included).
        self.labels: dict[str, np.ndarray] = {}
        self.numbers: dict[str, np.ndarray] = {}
        base = _base_fields(model)
        for field in spec.fields:
            patch = {at: catalogue.profiles[item].get(field.name)
                     for item, at in redone_overrides.items()}  # fmt: skip
            patch.update((at, raw_new[at - known].get(field.name)) for at in redone)
            if field.kind in LABEL_KINDS:
                width = len(field.values)
                matrix = np.zeros((self.n_items, width), dtype=bool, order="F")
                if before is None:
                    matrix[:known] = base[field.name]
                elif same_rows:
                    matrix[:] = before.labels[field.name]
                else:
                    matrix[:known] = before.labels[field.name][:known]
                    matrix[known:][carry] = before.labels[field.name][source[carry]]
                _set_labels(matrix, patch, field.values)
                self.labels[field.name] = matrix
            else:
                numbers = np.concatenate([base[field.name], np.full(len(raw_new), np.nan)])
                if same_rows:
                    numbers[:] = before.numbers[field.name]
                elif before is not None:
                    numbers[:known] = before.numbers[field.name][:known]
                    numbers[known:][carry] = before.numbers[field.name][source[carry]]
                for at, value in patch.items():
                    numbers[at] = _as_number(value)
                self.numbers[field.name] = numbers
        self._masks: OrderedDict[str, np.ndarray] = OrderedDict()

        # Each item's JSON template: the model's, re-made where the API re-described.
        if same_rows:
            self.templates = list(before.templates)  # type: ignore[union-attr]
            for k in fresh:
                self.templates[known + k] = self._derived[self.new_ids[k]][3]
        else:
            self.templates = list(model._templates if before is None else before.templates[:known])
            self.templates += [self._derived[i][3] for i in self.new_ids]
        for item, at in redone_overrides.items():
            self.templates[at] = item_template(
                model._item_ids[at], item_tail(*_shown(catalogue.profiles[item]), "model")
            )

    # --- lookups -------------------------------------------------------------------------------

    def lookup(self, item_ids: Sequence[str]) -> np.ndarray:
        """Indices of many ids in this view; -1 where unknown."""
        if not item_ids:
            return np.zeros(0, dtype=np.int64)
        found = self.model.item_index.lookup(np.asarray(item_ids, dtype=str))
        if self.new_index:
            for k in np.flatnonzero(found < 0):
                found[k] = self.new_index.get(item_ids[k], -1)
        return found

    def pending_in_model(self) -> list[str]:
        """Items the store counts as waiting for a retrain that this model has learnt."""
        if not self._pending:
            return []
        pending = sorted(self._pending)
        found = self.model.item_index.lookup(np.asarray(pending, dtype=str))
        return [item for item, at in zip(pending, found, strict=True) if at >= 0]

    def index(self, item_id: str) -> int | None:
        at = self.model.item_index.get(item_id)
        return at if at is not None else self.new_index.get(item_id)

    def info(self, item_id: str) -> ItemInfo | None:
        at = self.index(item_id)
        if at is None:
            return None
        api = item_id in self._api_profiles
        profile = self._api_profiles[item_id] if api else self._bundle_profile(at)
        in_model = at < self.model.n_items
        return ItemInfo(item_id, profile, bool(self.available[at]), "api" if api else "bundle",
                        in_model)  # fmt: skip

    def _bundle_profile(self, at: int) -> dict[str, Any]:
        bundle = self.model.bundle
        profile: dict[str, Any] = {"title": str(bundle.item_titles[at])}
        genres = str(bundle.item_genres[at])
        profile["genres"] = genres.split("|") if genres else []
        for name, values in bundle.item_values.items():
            value = values[at]
            if isinstance(value, np.floating):
                profile[name] = None if np.isnan(value) else _number(float(value))
            elif name != "genres":
                text = str(value)
                profile[name] = (text.split("|") if text else []) if "|" in text else text or None
        return profile

    # --- masks and scores ----------------------------------------------------------------------

    def blocked_by(self, filters: Filters) -> np.ndarray:
        """Items no list may hold under these filters: hidden, unrankable, or failing one."""
        if not filters:
            return self.blocked
        mask = self._masks.get(filters.key)
        if mask is None:
            allowed = ~self.blocked
            for condition in filters.conditions:
                if condition.field in self.labels:
                    matrix = self.labels[condition.field]
                    columns = [self._label_column(condition.field, x) for x in condition.labels]
                    allowed &= matrix[:, columns].any(axis=1)
                else:
                    values = self.numbers[condition.field]
                    with np.errstate(invalid="ignore"):  # NaN: unknown, passes no bound
                        allowed &= (values >= condition.low) & (values <= condition.high)
            mask = ~allowed
            self._masks[filters.key] = mask
            if len(self._masks) > MASKS_KEPT:
                self._masks.popitem(last=False)
        self._masks.move_to_end(filters.key)
        return mask

    def _label_column(self, field: str, label: str) -> int:
        spec = next(f for f in self.model.bundle.item_spec.fields if f.name == field)
        return spec.values.index(label)

    def scores(self, queries: Sequence[Query]) -> np.ndarray:
        """Scores over the whole view (the model's items, then the new ones): one graph call."""
        model = self.model
        if self.cold_vectors is None:
            scores = model.scores(queries)
            if self.n_items > model.n_items:  # new items this model cannot score: blocked
                pad = np.zeros((len(scores), self.n_items - model.n_items), scores.dtype)
                scores = np.concatenate([scores, pad], axis=1)
            return scores
        scores, hidden, log_norm = model.scores_and_hidden(queries)
        assert model.cold_output is not None and self.cold_bias is not None
        cold = item_scores(hidden, log_norm, self.cold_vectors, self.cold_bias, model.cold_output)
        return np.concatenate([scores, cold.astype(scores.dtype)], axis=1)

    def rank(
        self,
        query: Query,
        scores: np.ndarray | None,
        n: int,
        exclude: Sequence[int] | np.ndarray = (),
        filters: Filters = NO_FILTERS,
        candidates: Sequence[int] | None = None,
    ) -> Ranked:
        source = self.model.source(query)
        values = self.popularity if source == "popularity" or scores is None else scores
        indices, best = top_n(values, n, exclude, candidates, self.blocked_by(filters))
        return Ranked(indices, best, source)

    def similar(self, at: int, n: int, exclude: Sequence[int], filters: Filters) -> Ranked:
        """The n items most alike item `at`: cosine of the output layer's item vectors (a new
        item's from its profile), or, for a model without them, the model's answer to a
        history of that one item. Source: "model", or "profile" for a new item's list."""
        model, known = self.model, self.model.n_items
        units = _unit_vectors(model)
        if at >= known and self.cold_vectors is None:  # a new item, and no profile path
            return Ranked(np.zeros(0, np.int64), np.zeros(0), "profile")
        if units is not None:
            cold = None
            if self.cold_vectors is not None:
                cold = self.cold_vectors / np.maximum(
                    np.linalg.norm(self.cold_vectors, axis=1, keepdims=True), 1e-12
                )
            anchor = units[at] if at < known else cold[at - known]  # type: ignore[index]
            parts = [units @ anchor]
            if cold is not None:
                # The head's vectors share a large common part (cosines of 0.75-0.94 between
                # any two new items, whatever their genres: docs/MODELS.md): a new item is
                # compared with the learnt items only; a learnt one with every item.
                parts.append(cold @ anchor if at < known else np.full(len(cold), -np.inf))
            scores = np.concatenate(parts)
        elif at < known:
            query = Query({at: 1.0}, model.encode_profile(None))
            scores = self.scores([query])[0]
        else:  # a new item, and a model without the profile path: nothing to compare
            return Ranked(np.zeros(0, np.int64), np.zeros(0), "profile")
        if len(scores) < self.n_items:  # new items the model cannot score: never listed
            scores = np.concatenate([scores, np.zeros(self.n_items - len(scores))])
        indices, best = top_n(scores, n, exclude, None, self.blocked_by(filters))
        return Ranked(indices, best, "model" if at < known else "profile")

    def answer(self, ranked: Ranked, unknown: Sequence[str] = (), degraded: bool = False) -> bytes:
        return render(self.templates, self.model._version_json, ranked, unknown, degraded)


_BASES: weakref.WeakKeyDictionary[Model, dict[str, np.ndarray]] = weakref.WeakKeyDictionary()


def _base_fields(model: Model) -> dict[str, np.ndarray]:
    """The model's own items' filter arrays, built once per model (a view copies and patches
    them): a label matrix per label field, a number per item for the others."""
    if model in _BASES:
        return _BASES[model]
    bundle, known = model.bundle, model.n_items
    base: dict[str, np.ndarray] = {}
    for field in bundle.item_spec.fields:
        values = bundle.item_values.get(field.name)
        if values is None and field.name == "genres":  # a format-3 bundle: genres only
            values = bundle.item_genres
        if field.kind in LABEL_KINDS:
            matrix = np.zeros((known, len(field.values)), dtype=bool, order="F")
            if values is not None:
                column = {at: v for at, v in enumerate(values.tolist()) if v}
                _set_labels(matrix, column, field.values)
            base[field.name] = matrix
        elif values is not None and values.dtype.kind == "f":
            base[field.name] = values.astype(np.float64)
        else:
            base[field.name] = np.full(known, np.nan)
    _BASES[model] = base
    return base


_UNITS: weakref.WeakKeyDictionary[Model, np.ndarray | None] = weakref.WeakKeyDictionary()


def _unit_vectors(model: Model) -> np.ndarray | None:
    """The model's item vectors scaled to unit length, once per model; None without them."""
    if model not in _UNITS:
        vectors = model.bundle.item_vectors
        if vectors is None:
            _UNITS[model] = None
        else:
            norms = np.linalg.norm(vectors, axis=1, keepdims=True)
            _UNITS[model] = (vectors / np.maximum(norms, 1e-12)).astype(np.float32)
    return _UNITS[model]


_VALUED: weakref.WeakKeyDictionary[Model, frozenset[str]] = weakref.WeakKeyDictionary()


def valued_fields(model: Model) -> frozenset[str]:
    """The item fields some of the model's items have a value for: what filters may test
    (once per model: a request asks on its hot path)."""
    if model not in _VALUED:
        _VALUED[model] = frozenset(
            name
            for name, values in _base_fields(model).items()
            if (values.any() if values.dtype == bool else np.isfinite(values).any())
        )
    return _VALUED[model]


def _set_labels(matrix: np.ndarray, column: dict[int, Any], labels: tuple[str, ...]) -> None:
    """Row `at` of `matrix` (items × labels) set from a value: labels as a list or "a|b"."""
    where = {label: k for k, label in enumerate(labels)}
    for at, value in column.items():
        matrix[at] = False
        if not isinstance(value, str | list):
            continue
        for label in value.split("|") if isinstance(value, str) else value:
            k = where.get(str(label))
            if k is not None:
                matrix[at, k] = True


def _as_number(value: Any) -> float:
    if isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    return np.nan


def _shown(profile: dict[str, Any]) -> tuple[str, list[str]]:
    """(title, genres) as an answer shows them, from a profile set through the API."""
    title = profile.get("title")
    genres = profile.get("genres")
    return (
        title if isinstance(title, str) else "",
        list(genres) if isinstance(genres, list) else [],
    )


def _number(value: float) -> float | int:
    return int(value) if value.is_integer() else value
