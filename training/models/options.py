"""A mixin for option dataclasses: plain dicts out, and in with unknown names and values of the
wrong kind refused (a config file's `"corruption": "x"` is named, not a TypeError later)."""

from __future__ import annotations

from dataclasses import MISSING, asdict, fields
from typing import Any, Self


def _kind_of(field: Any) -> tuple[type, ...] | None:
    """The value types a field takes, from its default or its annotation; None: unchecked."""
    annotation = str(field.type).replace(" ", "")
    optional = annotation.endswith("|None")
    base = annotation.removesuffix("|None")
    if field.default is not MISSING and field.default is not None:
        base = type(field.default).__name__
    kinds = {"bool": (bool,), "int": (int,), "float": (int, float), "str": (str,)}
    if base == "tuple" or base.startswith("tuple["):
        found: tuple[type, ...] = (list, tuple)
    elif base in kinds:
        found = kinds[base]
    else:
        return None
    return found + ((type(None),) if optional else ())


def _integral(value: Any) -> bool:
    return isinstance(value, float) and value.is_integer()


class Options:
    what = "option"  # how error messages name these options

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)  # type: ignore[call-overload]

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Self:
        known = {f.name: f for f in fields(cls)}  # type: ignore[arg-type]
        if unknown := set(data) - set(known):
            raise ValueError(f"unknown {cls.what}(s): {sorted(unknown)}")
        data = dict(data)
        for name, value in data.items():
            kinds = _kind_of(known[name])
            if kinds and int in kinds and float not in kinds and _integral(value):
                data[name] = value = int(value)  # 2.0 or 1e4 from a JSON writer: a count
            wrong_bool = isinstance(value, bool) and bool not in (kinds or ())
            if kinds is not None and (not isinstance(value, kinds) or wrong_bool):
                wanted = "/".join(k.__name__.replace("NoneType", "null") for k in kinds)
                raise ValueError(f"{cls.what} {name!r} must be {wanted}, got {value!r}")
        return cls(**data)
