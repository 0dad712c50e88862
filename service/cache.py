"""Recommendation cache: Redis when configured, an in-process LRU otherwise.

Entries are grouped per owner (a user, or one ad-hoc request) in a Redis hash whose key carries
the model version: a promotion invalidates everything by construction, and invalidating a user
is one DEL. Redis calls have short timeouts; after a failure the cache is bypassed for a while
(`degraded`), then tried again, so a slow or dead Redis never fails a request.
"""

from __future__ import annotations

import random
import time
from collections import OrderedDict
from typing import Protocol

from redis import asyncio as aioredis
from redis.exceptions import RedisError

PREFIX = "cddae:rec"


def cache_key(version: str, owner: str) -> str:
    return f"{PREFIX}:{version}:{owner}"


class Cache(Protocol):
    backend: str

    @property
    def degraded(self) -> bool: ...

    async def get(self, key: str, field: str) -> bytes | None: ...

    async def set(self, key: str, field: str, value: bytes) -> None: ...

    async def invalidate(self, key: str) -> None: ...

    async def check(self) -> bool: ...

    async def close(self) -> None: ...


class LocalCache:
    """LRU over owners with a TTL per entry; enough for one process on a laptop."""

    backend = "memory"
    degraded = False

    def __init__(self, max_owners: int, ttl: float, jitter: float = 0.0, clock=time.monotonic):
        self._entries: OrderedDict[str, dict[str, tuple[float, bytes]]] = OrderedDict()
        self._max, self._ttl, self._jitter, self._clock = max_owners, ttl, jitter, clock

    async def get(self, key: str, field: str) -> bytes | None:
        fields = self._entries.get(key)
        if fields is None or field not in fields:
            return None
        expires, value = fields[field]
        if expires <= self._clock():
            del fields[field]
            return None
        self._entries.move_to_end(key)
        return value

    async def set(self, key: str, field: str, value: bytes) -> None:
        ttl = self._ttl * (1 + random.uniform(-self._jitter, self._jitter))
        self._entries.setdefault(key, {})[field] = (self._clock() + ttl, value)
        self._entries.move_to_end(key)
        while len(self._entries) > self._max:
            self._entries.popitem(last=False)

    async def invalidate(self, key: str) -> None:
        self._entries.pop(key, None)

    async def check(self) -> bool:
        return True

    async def close(self) -> None:
        self._entries.clear()


class RedisCache:
    backend = "redis"

    def __init__(
        self,
        client: aioredis.Redis,
        ttl: int,
        jitter: float = 0.1,
        retry_seconds: float = 1.0,
        clock=time.monotonic,
    ):
        self._client, self._ttl, self._jitter = client, ttl, jitter
        self._retry, self._clock = retry_seconds, clock
        self._down_until = 0.0

    @property
    def degraded(self) -> bool:
        return self._clock() < self._down_until

    def _failed(self) -> None:
        self._down_until = self._clock() + self._retry

    async def get(self, key: str, field: str) -> bytes | None:
        if self.degraded:
            return None
        try:
            return await self._client.hget(key, field)
        except (TimeoutError, RedisError, OSError):
            self._failed()
            return None

    async def set(self, key: str, field: str, value: bytes) -> None:
        if self.degraded:
            return
        ttl = max(1, round(self._ttl * (1 + random.uniform(-self._jitter, self._jitter))))
        try:
            async with self._client.pipeline(transaction=True) as pipe:
                await pipe.hset(key, field, value).expire(key, ttl).execute()
        except (TimeoutError, RedisError, OSError):
            self._failed()

    async def invalidate(self, key: str) -> None:
        # Not skipped while degraded: a stale list must not outlive a recorded interaction.
        try:
            await self._client.delete(key)
        except (TimeoutError, RedisError, OSError):
            self._failed()

    async def check(self) -> bool:
        """Ping, whatever the back-off says: readiness probes are how recovery is noticed."""
        try:
            await self._client.ping()
        except (TimeoutError, RedisError, OSError):
            self._failed()
            return False
        self._down_until = 0.0
        return True

    async def close(self) -> None:
        await self._client.aclose()


def redis_client(url: str, timeout: float) -> aioredis.Redis:
    return aioredis.Redis.from_url(
        url,
        socket_timeout=timeout,
        socket_connect_timeout=timeout,
        retry_on_timeout=False,
        health_check_interval=0,
    )
