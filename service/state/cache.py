"""Recommendation cache: Redis when configured, an in-process LRU otherwise.

Entries are grouped per owner (a user at one generation, or one ad-hoc request) in a Redis hash
whose key carries the model version: a promotion invalidates everything by construction, and a
write for a user moves the user's generation, hence the key (service.state.store). Nothing is ever
deleted to invalidate; old keys expire. Redis calls have short timeouts; after a failure the
cache is bypassed for a while (`degraded`), then tried again, so a slow or dead Redis never
fails a request.
"""

from __future__ import annotations

import random
import time
from collections import OrderedDict
from typing import Protocol

from redis import asyncio as aioredis
from redis.exceptions import RedisError

from service.state.lane import Lane, read
from service.state.scripts import queue_script, run_script, run_script_many

PREFIX = "cddae:rec"


def cache_key(version: str, owner: str) -> str:
    return f"{PREFIX}:{version}:{owner}"


class Cache(Protocol):
    backend: str

    @property
    def degraded(self) -> bool: ...

    async def get(self, key: str, field: str) -> bytes | None: ...

    async def set(self, key: str, field: str, value: bytes) -> None: ...

    async def set_many(self, entries: list[tuple[str, str, bytes]]) -> None: ...

    async def check(self) -> bool: ...

    async def close(self) -> None: ...


ENTRY_OVERHEAD = 200  # bytes a cached entry costs beyond its key and value (dicts, tuples)


class LocalCache:
    """LRU over owners with a TTL per entry, bounded by bytes (not by owners: one owner can hold
    many lists); enough for one process on a laptop."""

    backend = "memory"
    degraded = False

    def __init__(self, max_bytes: int, ttl: float, jitter: float = 0.0, clock=time.monotonic):
        self._entries: OrderedDict[str, dict[str, tuple[float, bytes]]] = OrderedDict()
        self._max, self._ttl, self._jitter, self._clock = max_bytes, ttl, jitter, clock
        self.bytes = 0

    @staticmethod
    def _cost(key: str, field: str, value: bytes) -> int:
        return len(key) + len(field) + len(value) + ENTRY_OVERHEAD

    def _drop(self, key: str) -> None:
        for field, (_, value) in self._entries.pop(key, {}).items():
            self.bytes -= self._cost(key, field, value)

    async def get(self, key: str, field: str) -> bytes | None:
        fields = self._entries.get(key)
        if fields is None or field not in fields:
            return None
        expires, value = fields[field]
        if expires <= self._clock():
            del fields[field]
            self.bytes -= self._cost(key, field, value)
            return None
        self._entries.move_to_end(key)
        return value

    async def set(self, key: str, field: str, value: bytes) -> None:
        ttl = self._ttl * (1 + random.uniform(-self._jitter, self._jitter))
        fields = self._entries.setdefault(key, {})
        if field in fields:
            self.bytes -= self._cost(key, field, fields[field][1])
        fields[field] = (self._clock() + ttl, value)
        self.bytes += self._cost(key, field, value)
        self._entries.move_to_end(key)
        while self.bytes > self._max and self._entries:
            self._drop(next(iter(self._entries)))

    async def set_many(self, entries: list[tuple[str, str, bytes]]) -> None:
        for key, field, value in entries:
            await self.set(key, field, value)

    async def check(self) -> bool:
        return True

    async def close(self) -> None:
        self._entries.clear()


# One command, not MULTI/HSET/EXPIRE/EXEC: a quarter of the replies to parse.
_SET = """
redis.call('hset', KEYS[1], ARGV[1], ARGV[2])
redis.call('expire', KEYS[1], ARGV[3])
"""


class RedisCache:
    backend = "redis"

    def __init__(
        self,
        client: aioredis.Redis,
        ttl: int,
        jitter: float = 0.1,
        retry_seconds: float = 1.0,
        clock=time.monotonic,
        lane: Lane | None = None,
        write_lane: Lane | None = None,
    ):
        self._client, self._ttl, self._jitter, self._lane = client, ttl, jitter, lane
        # Writes on a connection of their own: a large batch, or a slow one, never makes the
        # reads behind it wait or time out (service.state.lane fails everything waiting).
        self._write_lane = write_lane
        self._retry, self._clock = retry_seconds, clock
        self._down_until = 0.0
        self._set = client.register_script(_SET)

    @property
    def degraded(self) -> bool:
        return self._clock() < self._down_until

    def _failed(self) -> None:
        self._down_until = self._clock() + self._retry

    def _ttl_now(self) -> int:
        """The TTL with jitter: entries written together do not all expire together."""
        return max(1, round(self._ttl * (1 + random.uniform(-self._jitter, self._jitter))))

    async def get(self, key: str, field: str) -> bytes | None:
        if self.degraded:
            return None
        try:
            return await read(self._client, self._lane, "HGET", key, field)
        except (TimeoutError, RedisError, OSError):
            self._failed()
            return None

    async def set(self, key: str, field: str, value: bytes) -> None:
        if self.degraded:
            return
        try:
            await run_script(self._set, [key], [field, value, self._ttl_now()])
        except (TimeoutError, RedisError, OSError):
            self._failed()

    async def set_many(self, entries: list[tuple[str, str, bytes]]) -> None:
        """Many writes in one round trip: on the write lane where there is one (best effort,
        as every cache write: a refused one is skipped), else a redis-py pipeline."""
        if self.degraded or not entries:
            return
        try:
            if self._write_lane is not None:
                calls = [([k], [f, v, self._ttl_now()]) for k, f, v in entries]
                await run_script_many(self._set, calls, self._write_lane)
                return
            async with self._client.pipeline(transaction=False) as pipe:
                for key, field, value in entries:
                    queue_script(pipe, self._set, [key], [field, value, self._ttl_now()])
                await pipe.execute()
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
        if self._write_lane is not None:
            self._write_lane.close()
        await self._client.aclose()


def redis_client(url: str, timeout: float) -> aioredis.Redis:
    return aioredis.Redis.from_url(
        url,
        socket_timeout=timeout,
        socket_connect_timeout=timeout,
        retry_on_timeout=False,
        health_check_interval=0,
    )
