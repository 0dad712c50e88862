"""The recorded-event format: what the stores write and the retraining job reads back.

One reader for every form a record has taken, so that the service (replaying its file) and the
job (folding the log into the next model) agree on what is readable:
- `{"type": "interactions", "user", "items": [...], "timestamps": [...]}` — one write, one
  line in the file store (a write is recorded whole or not at all);
- `{"type": "interaction", "user", "item", "timestamp"}` — one item: a Redis stream entry
  (values as text), and the file store's lines before writes became one line;
- `{"type": "profile", "user", "profile": {...}}` — the profile as an object, or as JSON text
  in Redis;
- `{"type": "item", "item", "profile": {...}}` — an item created or described through the API
  (its profile as for users);
- `{"type": "availability", "item", "available": true|false}` — an item hidden or shown again
  ("1"/"0" as text in Redis).
A record that is none of these, or holds an id the API would refuse (service/ids.py), raises
`BadEvent` with the reason: callers quarantine it and go on, never stop.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from service.ids import id_problem

log = logging.getLogger("cddae.events")
MAX_PROFILE_FIELDS = 64  # the API's own bounds on a profile (service/api/schemas.py)
MAX_FIELD_NAME = 64


class BadEvent(ValueError):
    """A record that cannot be read as an event; the message says why."""


def interaction(user: str, item: str, timestamp: float) -> dict[str, Any]:
    return {"type": "interaction", "user": user, "item": item, "timestamp": timestamp}


def profile_event(user: str, profile: dict[str, Any]) -> dict[str, Any]:
    return {"type": "profile", "user": user, "profile": profile}


def item_event(item: str, profile: dict[str, Any]) -> dict[str, Any]:
    return {"type": "item", "item": item, "profile": profile}


def availability_event(item: str, available: bool) -> dict[str, Any]:
    return {"type": "availability", "item": item, "available": available}


ITEM_EVENTS = ("item", "availability")  # events about the catalogue, not about a user


def parse(record: object) -> Iterator[dict[str, Any]]:
    """The events in `record`, normalised to the one-item, profile, item and availability
    forms; BadEvent else. Checks the whole record before yielding anything: a bad record
    yields nothing."""
    if not isinstance(record, Mapping):
        raise BadEvent(f"not an object but {type(record).__name__}")
    kind = record.get("type")
    if kind == "item":
        yield item_event(_id(record.get("item"), "item"), _profile(record.get("profile")))
        return
    if kind == "availability":
        yield availability_event(_id(record.get("item"), "item"), _flag(record.get("available")))
        return
    user = _id(record.get("user"), "user")
    if kind == "interactions":
        items, times = record.get("items"), record.get("timestamps")
        if not isinstance(items, list) or not isinstance(times, list) or len(items) != len(times):
            raise BadEvent("items and timestamps must be lists of one length")
        events = [interaction(user, _id(i, "item"), _time(t)) for i, t in zip(items, times)]  # noqa: B905
        yield from events
    elif kind == "interaction":
        yield interaction(user, _id(record.get("item"), "item"), _time(record.get("timestamp")))
    elif kind == "profile":
        yield profile_event(user, _profile(record.get("profile")))
    else:
        raise BadEvent(f"unknown type {kind!r}")


def _id(value: object, what: str) -> str:
    if problem := id_problem(value, what):
        raise BadEvent(problem)
    return value  # type: ignore[return-value]


def _flag(value: object) -> bool:
    if value in (True, "1", b"1", "true"):
        return True
    if value in (False, "0", b"0", "false"):
        return False
    raise BadEvent(f"available {value!r} is not a boolean")


def _time(value: object) -> float:
    if isinstance(value, bool):
        raise BadEvent("timestamp is a boolean")
    try:
        number = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise BadEvent(f"timestamp {value!r} is not a number") from None
    if not math.isfinite(number):
        raise BadEvent(f"timestamp {value!r} is not finite")
    return number


def _profile(value: object) -> dict[str, Any]:
    if isinstance(value, str | bytes):
        try:
            value = json.loads(value)
        except ValueError:
            raise BadEvent("profile is not JSON") from None
    if not isinstance(value, dict):
        raise BadEvent(f"profile is not an object but {type(value).__name__}")
    if len(value) > MAX_PROFILE_FIELDS:
        raise BadEvent(f"profile has more than {MAX_PROFILE_FIELDS} fields")
    for name, field in value.items():
        if not isinstance(name, str) or not name or len(name) > MAX_FIELD_NAME:
            raise BadEvent(f"profile field name {name!r} is not a short string")
        scalar = isinstance(field, str | int | float) and not isinstance(field, bool)
        labels = isinstance(field, list) and all(isinstance(x, str) for x in field)
        if field is not None and not scalar and not labels:
            raise BadEvent(f"profile field {name!r} holds {type(field).__name__}")
        if isinstance(field, float) and not math.isfinite(field):
            raise BadEvent(f"profile field {name!r} is not finite")
    return value


class Quarantine:
    """A JSON-lines file of records that could not be read: where each lay, why, and its first
    bytes. Each position is recorded once however often it is met (every restart replays)."""

    RAW_BYTES = 1000

    def __init__(self, path: Path):
        self.path = path
        self.seen: set[str] = set()
        try:
            with path.open(encoding="utf-8", errors="replace") as handle:
                for line in handle:
                    with contextlib.suppress(ValueError, TypeError, KeyError):
                        self.seen.add(str(json.loads(line)["at"]))
        except FileNotFoundError:
            pass

    def __len__(self) -> int:
        return len(self.seen)

    def add(self, at: str, reason: str, raw: bytes | str) -> bool:
        """Record a bad record at `at` (a line, byte offset or stream id); False if known."""
        if at in self.seen:
            return False
        text = raw.decode("utf-8", "replace") if isinstance(raw, bytes) else str(raw)
        entry = {"at": at, "reason": reason, "raw": text[: self.RAW_BYTES]}
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.open("a", encoding="utf-8") as handle:
            handle.write(json.dumps(entry) + "\n")
            handle.flush()
            os.fsync(handle.fileno())
        self.seen.add(at)
        log.warning("quarantined the record at %s of %s: %s", at, self.path.name, reason)
        return True
