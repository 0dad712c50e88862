"""A mixin for option dataclasses: plain dicts out, and in with unknown names refused."""

from __future__ import annotations

from dataclasses import asdict, fields
from typing import Any, Self


class Options:
    what = "option"  # how error messages name these options

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)  # type: ignore[call-overload]

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Self:
        known = {f.name for f in fields(cls)}  # type: ignore[arg-type]
        if unknown := set(data) - known:
            raise ValueError(f"unknown {cls.what}(s): {sorted(unknown)}")
        return cls(**data)
