"""Profile feature encoding shared by training and serving.

Training fits a `FeatureSpec` on the profiles it sees and stores it in the model bundle as JSON;
the service rebuilds it from there, so a profile is encoded exactly as it was during training.
Standard library and numpy only: the serving image has no torch.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

import numpy as np

FieldKind = Literal["categorical", "multi", "bucket", "numeric"]

# MovieLens-1M's age bands, applied to MovieLens-100K's exact ages.
AGE_BAND_EDGES: tuple[float, ...] = (18, 25, 35, 45, 50, 56)
# A number a request may give for a numeric or bucket field: far past any real profile value,
# small enough that standardising it stays finite in float32.
NUMBER_LIMIT = 1e9
Z_LIMIT = 5.0  # a standardised number is clipped to ±5 standard deviations


class FeatureError(ValueError):
    """A profile value the spec cannot encode (unknown category, non-numeric number)."""


@dataclass(frozen=True)
class FieldSpec:
    """One profile field and how it becomes columns of the feature vector.

    categorical: one-hot over `values`; multi: multi-hot over `values` (a list of labels, e.g.
    genres); bucket: one-hot over the bands cut by `edges`; numeric: one standardised column.
    A missing value encodes as all zeros: "nothing known" rather than an invented default.
    """

    name: str
    kind: FieldKind
    values: tuple[str, ...] = ()
    edges: tuple[float, ...] = ()
    mean: float = 0.0
    std: float = 1.0

    @property
    def width(self) -> int:
        if self.kind in ("categorical", "multi"):
            return len(self.values)
        if self.kind == "bucket":
            return len(self.edges) + 1
        return 1

    def encode_into(self, out: np.ndarray, value: Any) -> None:
        """Write this field's columns for `value` into `out` (a zeroed slice of `width`)."""
        if value is None or value == "" or (isinstance(value, float) and math.isnan(value)):
            return
        if self.kind == "categorical":
            out[self._index(str(value))] = 1.0
        elif self.kind == "multi":
            labels = value.split("|") if isinstance(value, str) else value
            for label in labels:
                out[self._index(str(label))] = 1.0
        elif self.kind == "bucket":
            out[bisect.bisect_right(self.edges, self._number(value))] = 1.0
        else:  # bounded: one absurd value cannot swamp the model's input
            out[0] = np.clip((self._number(value) - self.mean) / self.std, -Z_LIMIT, Z_LIMIT)

    def json_schema(self) -> dict[str, Any]:
        """What a request may send for this field, as JSON Schema (null: not known)."""
        if self.kind == "categorical":
            value: dict[str, Any] = {"type": "string", "enum": list(self.values)}
        elif self.kind == "multi":
            label = {"type": "string", "enum": list(self.values)}
            value = {"type": "array", "items": label, "maxItems": max(len(self.values), 1)}
        else:
            value = {"type": "number", "minimum": -NUMBER_LIMIT, "maximum": NUMBER_LIMIT}
        return {"anyOf": [value, {"type": "null"}], "title": self.name}

    def check_request_value(self, value: Any) -> None:
        """Strict JSON types for a request (training reads CSV text and is lenient): a number
        field takes a number, not "5" or true; a label field takes text; a multi field a list."""
        if value is None:
            return
        if self.kind in ("bucket", "numeric"):
            ok = isinstance(value, int | float) and not isinstance(value, bool)
            if not ok or not -NUMBER_LIMIT <= value <= NUMBER_LIMIT:
                raise FeatureError(
                    f"{self.name} must be a number within ±{NUMBER_LIMIT:g}, got {value!r}"
                )
        elif self.kind == "categorical" and not (isinstance(value, str) and value):
            raise FeatureError(
                f"{self.name} must be one of its values (null: unknown), got {value!r}"
            )
        elif self.kind == "multi" and not (
            isinstance(value, list)
            and all(isinstance(v, str) for v in value)
            and len(value) <= max(len(self.values), 1)
        ):
            raise FeatureError(
                f"{self.name} must be a list of at most {max(len(self.values), 1)} labels, "
                f"got {str(value)[:200]}"
            )

    def _index(self, label: str) -> int:
        try:
            return self.values.index(label)
        except ValueError:
            known = ", ".join(self.values[:30])
            raise FeatureError(f"unknown {self.name} {label!r}; known values: {known}") from None

    def _number(self, value: Any) -> float:
        try:
            number = float(value)
        except (TypeError, ValueError):
            raise FeatureError(f"{self.name} must be a number, got {value!r}") from None
        if not math.isfinite(number):
            raise FeatureError(f"{self.name} must be finite, got {value!r}")
        return number


@dataclass(frozen=True)
class FeatureSpec:
    """An ordered list of fields; `encode` maps a profile dict to one float32 vector."""

    fields: tuple[FieldSpec, ...] = field(default_factory=tuple)

    @property
    def width(self) -> int:
        return sum(f.width for f in self.fields)

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(f.name for f in self.fields)

    def encode(self, profile: Mapping[str, Any] | None) -> np.ndarray:
        out = np.zeros(self.width, dtype=np.float32)
        if not profile:
            return out
        unknown = set(profile) - set(self.names)
        if unknown:
            raise FeatureError(
                f"unknown profile field(s) {sorted(unknown)}; expected {list(self.names)}"
            )
        start = 0
        for spec in self.fields:
            spec.encode_into(out[start : start + spec.width], profile.get(spec.name))
            start += spec.width
        return out

    def project(self, profile: Mapping[str, Any]) -> dict[str, Any]:
        """A profile stored under another model (a rollback, a changed spec) as this spec can
        use it: its fields this spec has, with values it can encode; the rest is absent (not
        known), never an error — it is the user's own stored data, not a request."""
        by_name = {f.name: f for f in self.fields}
        kept: dict[str, Any] = {}
        for name, value in profile.items():
            spec = by_name.get(name)
            if spec is None or value is None:
                continue
            try:
                spec.check_request_value(value)
                spec.encode_into(np.zeros(spec.width, dtype=np.float32), value)
            except FeatureError:
                continue
            kept[name] = value
        return kept

    def check_request(self, profile: Mapping[str, Any]) -> None:
        """A request's profile against this spec, strictly typed (see `check_request_value`)."""
        by_name = {f.name: f for f in self.fields}
        unknown = set(profile) - set(by_name)
        if unknown:
            raise FeatureError(
                f"unknown profile field(s) {sorted(unknown)}; expected {list(self.names)}"
            )
        for name, value in profile.items():
            by_name[name].check_request_value(value)

    def json_schema(self) -> dict[str, Any]:
        """The profile a request may send for this spec, as JSON Schema (for OpenAPI)."""
        return {
            "type": "object",
            "properties": {f.name: f.json_schema() for f in self.fields},
            "additionalProperties": False,
        }

    def encode_many(self, profiles: Iterable[Mapping[str, Any] | None]) -> np.ndarray:
        rows = [self.encode(p) for p in profiles]
        if not rows:
            return np.zeros((0, self.width), dtype=np.float32)
        return np.stack(rows)

    def to_dict(self) -> dict[str, Any]:
        return {"fields": [asdict(f) for f in self.fields]}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> FeatureSpec:
        fields = []
        for raw in data["fields"]:
            raw = dict(raw)
            raw["values"] = tuple(raw.get("values", ()))
            raw["edges"] = tuple(float(e) for e in raw.get("edges", ()))
            fields.append(FieldSpec(**raw))
        return cls(tuple(fields))


def fit_field(name: str, kind: FieldKind, column: Iterable[Any], **options: Any) -> FieldSpec:
    """Fit one field on the values seen in training (categories sorted for a stable layout)."""
    present = [v for v in column if v is not None and v != ""]
    if kind == "categorical":
        return FieldSpec(name, kind, values=tuple(sorted({str(v) for v in present})))
    if kind == "multi":
        labels: set[str] = set()
        for v in present:
            labels.update(v.split("|") if isinstance(v, str) else v)
        return FieldSpec(name, kind, values=tuple(sorted(labels)))
    if kind == "bucket":
        return FieldSpec(name, kind, edges=tuple(options.get("edges", AGE_BAND_EDGES)))
    numbers = np.array([float(v) for v in present], dtype=np.float64)
    if numbers.size:  # robust to a few absurd values (a recorded age of 1e9 would flatten the
        low, high = np.percentile(numbers, [1, 99])  # rest): fit on the 1st-99th percentiles
        numbers = numbers.clip(low, high)
    std = float(numbers.std()) if numbers.size else 1.0
    return FieldSpec(
        name, kind, mean=float(numbers.mean()) if numbers.size else 0.0, std=std or 1.0
    )
