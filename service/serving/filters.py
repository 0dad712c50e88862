"""Conditions on item fields that a list must meet: parsed once, tested as one boolean mask.

A condition names a field of the bundle's item spec: `genres:Comedy` or `genres:Comedy|Drama`
(any of the labels) for label fields, `year:1990..1999` for numbers (either bound optional; a
single number is both). Every condition must hold. Parsing is strict: an unknown field, an
unknown label or a malformed bound is an `InputError` that names what is allowed, never an
empty list that looks like "nothing matched".
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from collections.abc import Collection, Sequence
from dataclasses import dataclass

from service.features import FeatureSpec
from service.serving.onnx_model import InputError

MAX_FILTERS = 20  # conditions in one request
MAX_FILTER_LENGTH = 1000  # characters in one condition
LABEL_KINDS = ("categorical", "multi")


@dataclass(frozen=True)
class Condition:
    field: str
    labels: tuple[str, ...] = ()  # label fields: any of these
    low: float = -math.inf  # number fields: low ≤ value ≤ high
    high: float = math.inf


@dataclass(frozen=True)
class Filters:
    conditions: tuple[Condition, ...] = ()

    def __bool__(self) -> bool:
        return bool(self.conditions)

    @property
    def key(self) -> str:
        """Equal filters, equal keys (order and repeated labels do not matter): the cache field
        part, so that a cached answer never crosses filters."""
        if not self.conditions:
            return ""
        text = json.dumps([[c.field, c.labels, c.low, c.high] for c in self.conditions])
        return hashlib.sha256(text.encode()).hexdigest()[:16]


def filterable(spec: FeatureSpec) -> list[str]:
    return list(spec.names)


NUMBER = re.compile(r"-?[0-9]{1,9}(\.[0-9]{1,6})?")  # what the published pattern allows


def parse_filters(
    texts: Sequence[str], spec: FeatureSpec, valued: Collection[str] | None = None
) -> Filters:
    """The request's `filter` strings against the item spec of the model in service. `valued`:
    the fields its items have values for (a field none has would match nothing: refused)."""
    if len(texts) > MAX_FILTERS:
        raise InputError(f"at most {MAX_FILTERS} filters, got {len(texts)}")
    fields = {f.name: f for f in spec.fields if valued is None or f.name in valued}
    allowed = ", ".join(fields) or "none (this model's items have no fields)"
    conditions = set()
    for text in texts:
        name, colon, value = text.partition(":")
        if not colon or not value or len(text) > MAX_FILTER_LENGTH:
            raise InputError(
                f"filter {text[:80]!r} is not field:value or field:low..high; "
                f"filterable fields: {allowed}"
            )
        spec_field = fields.get(name)
        if spec_field is None:
            raise InputError(f"unknown filter field {name[:80]!r}; filterable fields: {allowed}")
        if spec_field.kind in LABEL_KINDS:
            labels = tuple(sorted(set(value.split("|"))))
            unknown = [label for label in labels if label not in spec_field.values]
            if unknown:
                known = ", ".join(spec_field.values[:40])
                raise InputError(f"unknown {name} {unknown[0][:80]!r} in filter; known: {known}")
            conditions.add(Condition(name, labels))
        else:
            low, high = _bounds(name, value)
            conditions.add(Condition(name, low=low, high=high))
    return Filters(tuple(sorted(conditions, key=lambda c: (c.field, c.labels, c.low, c.high))))


def _bounds(name: str, value: str) -> tuple[float, float]:
    low_text, dots, high_text = value.partition("..")
    if not dots:
        low_text = high_text = value
    if not all(NUMBER.fullmatch(t) for t in (low_text, high_text) if t):
        raise InputError(
            f"filter {name}:{value[:80]} needs numbers as low..high (either optional; at most "
            "9 digits, and 6 after the point)"
        )
    low = float(low_text) if low_text else -math.inf
    high = float(high_text) if high_text else math.inf
    return low, high  # low > high: an empty range, which no item meets


def filter_schema(spec: FeatureSpec, valued: Collection[str] | None = None) -> dict:
    """The `filter` strings this spec accepts, as a JSON Schema string (for OpenAPI): each
    field (of those with values, `valued`) with its labels, or with number bounds."""
    number = r"-?[0-9]{1,9}(\.[0-9]{1,6})?"
    options = []
    examples = []
    for field in spec.fields:
        if valued is not None and field.name not in valued:
            continue
        name = _escape(field.name)
        if field.kind in LABEL_KINDS:
            if not field.values:
                continue
            label = "(" + "|".join(_escape(v) for v in field.values) + ")"
            options.append(f"{name}:{label}(\\|{label})*")
            examples.append(f"{field.name}:{field.values[0]}")
        else:
            options.append(f"{name}:({number}|({number})?\\.\\.({number})?)")
            examples.append(f"{field.name}:1990..1999")
    if not options:
        return {"type": "string", "not": {}, "description": "this model's items have no fields"}
    return {
        "type": "string",
        "maxLength": MAX_FILTER_LENGTH,
        "pattern": "^(" + "|".join(options) + ")$",
        "examples": examples,
    }


def _escape(text: str) -> str:
    """A literal inside a JSON Schema pattern (Python's and ECMA's common syntax)."""
    return "".join("\\" + c if c in r"\^$.|?*+()[]{}/-" else c for c in text)
