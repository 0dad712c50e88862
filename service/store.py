"""Durable store of what users do after training: new positive interactions and new profiles.

With Redis, events go to the stream `cddae:events` (read by the retraining job) and each user's
added items and profile to keys the service reads at request time; both in one transaction.
Without Redis, events are appended (flushed and fsynced) to a JSON-lines file, and the same
state is kept in memory, rebuilt from that file at start. A write that cannot be made durable
raises `StoreUnavailable`: the request fails (503) instead of losing data silently.
"""

from __future__ import annotations

import asyncio
import json
import os
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol

from redis import asyncio as aioredis
from redis.exceptions import RedisError

STREAM = "cddae:events"


class StoreUnavailable(RuntimeError):
    pass


def _items_key(user: str) -> str:
    return f"cddae:user:{user}:items"


def _profile_key(user: str) -> str:
    return f"cddae:user:{user}:profile"


class Store(Protocol):
    async def add_interactions(
        self, user: str, items: Sequence[str], timestamps: Sequence[float]
    ) -> None: ...

    async def added_items(self, user: str) -> list[str]: ...

    async def set_profile(self, user: str, profile: dict[str, Any]) -> None: ...

    async def profile(self, user: str) -> dict[str, Any] | None: ...


class FileStore:
    """Append-only JSON lines plus an in-memory view; one process at a time."""

    def __init__(self, path: Path):
        self.path = path
        self._items: dict[str, list[str]] = {}
        self._profiles: dict[str, dict[str, Any]] = {}
        self._lock = threading.Lock()
        if path.exists():
            with path.open(encoding="utf-8") as handle:
                for line in handle:
                    if line.strip():
                        self._apply(json.loads(line))

    def _apply(self, event: dict[str, Any]) -> None:
        user = event["user"]
        if event["type"] == "interaction":
            items = self._items.setdefault(user, [])
            if event["item"] not in items:
                items.append(event["item"])
        elif event["type"] == "profile":
            self._profiles[user] = event["profile"]

    def _append(self, events: list[dict[str, Any]]) -> None:
        payload = "".join(json.dumps(e, separators=(",", ":")) + "\n" for e in events)
        with self._lock:
            try:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                with self.path.open("a", encoding="utf-8") as handle:
                    handle.write(payload)
                    handle.flush()
                    os.fsync(handle.fileno())
            except OSError as error:
                raise StoreUnavailable(f"cannot append to {self.path}: {error}") from None
            for event in events:
                self._apply(event)

    async def add_interactions(self, user, items, timestamps) -> None:
        events = [
            {"type": "interaction", "user": user, "item": item, "timestamp": ts}
            for item, ts in zip(items, timestamps, strict=True)
        ]
        await asyncio.to_thread(self._append, events)

    async def added_items(self, user: str) -> list[str]:
        return list(self._items.get(user, ()))

    async def set_profile(self, user: str, profile: dict[str, Any]) -> None:
        await asyncio.to_thread(
            self._append, [{"type": "profile", "user": user, "profile": profile}]
        )

    async def profile(self, user: str) -> dict[str, Any] | None:
        return self._profiles.get(user)


class RedisStore:
    def __init__(self, client: aioredis.Redis):
        self._client = client

    async def add_interactions(self, user, items, timestamps) -> None:
        try:
            async with self._client.pipeline(transaction=True) as pipe:
                for item, ts in zip(items, timestamps, strict=True):
                    pipe.xadd(
                        STREAM,
                        {"type": "interaction", "user": user, "item": item, "timestamp": ts},
                    )
                pipe.sadd(_items_key(user), *items)
                await pipe.execute()
        except (TimeoutError, RedisError, OSError) as error:
            raise StoreUnavailable(f"Redis: {error}") from None

    async def added_items(self, user: str) -> list[str]:
        """Items added since training; an unreachable Redis reads as none (degraded)."""
        try:
            members = await self._client.smembers(_items_key(user))
        except (TimeoutError, RedisError, OSError):
            return []
        return sorted(m.decode() for m in members)

    async def set_profile(self, user: str, profile: dict[str, Any]) -> None:
        payload = json.dumps(profile)
        try:
            async with self._client.pipeline(transaction=True) as pipe:
                pipe.xadd(STREAM, {"type": "profile", "user": user, "profile": payload})
                pipe.set(_profile_key(user), payload)
                await pipe.execute()
        except (TimeoutError, RedisError, OSError) as error:
            raise StoreUnavailable(f"Redis: {error}") from None

    async def profile(self, user: str) -> dict[str, Any] | None:
        try:
            payload = await self._client.get(_profile_key(user))
        except (TimeoutError, RedisError, OSError):
            return None
        return json.loads(payload) if payload else None
