"""Caches on their own: the in-process LRU, Redis for real, and single-flight misses."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable

import pytest
import redis

from service.serving.recommendations import Recommendations
from service.state.cache import LocalCache, RedisCache, cache_key, redis_client
from service.state.lane import Lane
from service.telemetry import Metrics

REDIS_URL = "redis://127.0.0.1:6379/10"


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_local_cache_ttl_lru_and_invalidation() -> None:
    async def scenario() -> None:
        clock = Clock()
        cache = LocalCache(max_bytes=650, ttl=10, clock=clock)  # about three entries
        await cache.set("a", "n=1", b"1")
        await cache.set("a", "n=2", b"2")
        assert await cache.get("a", "n=1") == b"1"
        clock.now = 11
        assert await cache.get("a", "n=1") is None  # expired
        await cache.set("a", "x", b"a")
        await cache.set("b", "x", b"b")
        await cache.get("a", "x")  # a is now the most recent
        await cache.set("c", "x", b"c")  # evicts b, the least recent owner
        assert await cache.get("b", "x") is None and await cache.get("a", "x") == b"a"

    asyncio.run(scenario())


def test_local_cache_is_bounded_by_bytes_whatever_the_owners_hold() -> None:
    async def scenario() -> LocalCache:
        cache = LocalCache(max_bytes=200_000, ttl=60)
        for user in range(100):  # each user asks for every n, with and without exclusion
            for n in range(1, 101):
                await cache.set(f"user:{user}", f"{n}:1", b"x" * 1000)
        return cache

    cache = asyncio.run(scenario())
    assert 100_000 < cache.bytes <= 200_000  # whole owners are evicted, oldest first
    assert asyncio.run(cache.get("user:99", "100:1")) is not None
    assert asyncio.run(cache.get("user:0", "1:1")) is None


def test_redis_cache_sets_ttl_with_jitter() -> None:
    redis.Redis.from_url(REDIS_URL).flushdb()

    async def scenario() -> list[int]:
        cache = RedisCache(redis_client(REDIS_URL, 0.5), ttl=100, jitter=0.1)
        key = cache_key("v1", "user:7")
        await cache.set(key, "10:1", b"payload")
        assert await cache.get(key, "10:1") == b"payload"
        ttls = [await cache._client.ttl(key)]
        assert await cache.get(cache_key("v1", "user:7:1"), "10:1") is None  # next generation
        await cache.close()
        return ttls

    (ttl,) = asyncio.run(scenario())
    assert 89 <= ttl <= 110


def test_redis_cache_writes_many_on_the_lane_and_reloads_a_flushed_script() -> None:
    redis.Redis.from_url(REDIS_URL).flushdb()

    async def scenario() -> None:
        client = redis_client(REDIS_URL, 0.5)
        lane = Lane.from_url(REDIS_URL, 0.5)
        writes = Lane.from_url(REDIS_URL, 0.5)
        cache = RedisCache(client, ttl=100, jitter=0.1, lane=lane, write_lane=writes)
        entries = [(cache_key("v1", f"user:{u}"), "10:1", b"answer %d" % u) for u in range(50)]
        await cache.set_many(entries)
        assert [await cache.get(k, f) for k, f, _ in entries] == [v for _, _, v in entries]
        assert all(89 <= ttl <= 110 for ttl in [await client.ttl(k) for k, _, _ in entries])
        await client.script_flush()  # a restarted Redis: the script is loaded again
        await cache.set_many([(cache_key("v1", "user:x"), "5:0", b"again")])
        assert await cache.get(cache_key("v1", "user:x"), "5:0") == b"again"
        assert not cache.degraded
        down = Lane("127.0.0.1", 1, 0, None, None, 0.2)
        dead = RedisCache(client, ttl=100, write_lane=down)
        await dead.set_many(entries)  # never raises: the cache is bypassed for a while
        assert dead.degraded
        lane.close()
        await cache.close()  # and its write lane
        assert writes is not None and writes._protocol is None

    asyncio.run(scenario())


def test_redis_cache_bypasses_a_dead_server_then_retries() -> None:
    async def scenario() -> None:
        clock = Clock()
        cache = RedisCache(redis_client("redis://127.0.0.1:1/0", 0.2), ttl=10,
                           retry_seconds=5, clock=clock)  # fmt: skip
        assert await cache.get("k", "f") is None and cache.degraded
        await cache.set("k", "f", b"x")  # skipped while degraded: no waiting on timeouts
        clock.now = 6
        assert not cache.degraded  # the next call tries Redis again
        assert await cache.check() is False and cache.degraded
        await cache.close()

    asyncio.run(scenario())


def test_concurrent_misses_for_one_key_are_computed_once() -> None:
    calls = 0

    async def scenario() -> list[dict]:
        release = asyncio.Event()  # the computation lasts until every caller has asked

        async def compute() -> bytes:
            nonlocal calls
            calls += 1
            await release.wait()
            return b'{"items":[1,2]'

        service = Recommendations(None, LocalCache(2**20, 60), None, Metrics(), max_n=10)  # type: ignore[arg-type]
        callers = [
            asyncio.ensure_future(service._cached("k", "f", compute, None)) for _ in range(5)
        ]
        await _until(lambda: calls == 1 and len(service._inflight) == 1)
        release.set()
        first = await asyncio.gather(*callers)
        await service.settle()  # the cache write happens in the background
        again = await service._cached("k", "f", compute, await service.cache.get("k", "f"))
        return [json.loads(r) for r in (*first, again)]

    results = asyncio.run(scenario())
    assert calls == 1
    assert [r["cached"] for r in results] == [False] * 5 + [True]
    assert all(r["items"] == [1, 2] for r in results)


def test_a_failed_computation_reaches_every_waiter_and_is_not_cached() -> None:
    async def failing() -> bytes:
        await asyncio.sleep(0)
        raise LookupError("unknown user")

    async def scenario() -> list:
        service = Recommendations(None, LocalCache(2**20, 60), None, Metrics(), max_n=10)  # type: ignore[arg-type]
        answers = await asyncio.gather(
            *(service._cached("k", "f", failing, None) for _ in range(3)), return_exceptions=True
        )
        await service.settle()
        assert await service.cache.get("k", "f") is None
        return answers

    results = asyncio.run(scenario())
    assert all(isinstance(r, LookupError) for r in results)
    with pytest.raises(LookupError):
        raise results[0]


def test_a_cancelled_leader_leaves_the_waiters_their_answer() -> None:
    async def scenario() -> tuple[list, bool]:
        release, started = asyncio.Event(), asyncio.Event()

        async def compute() -> bytes:
            started.set()
            await release.wait()
            return b'{"items":[3]'

        service = Recommendations(None, LocalCache(2**20, 60), None, Metrics(), max_n=10)  # type: ignore[arg-type]
        leader = asyncio.ensure_future(service._cached("k", "f", compute, None))
        await started.wait()
        waiters = [
            asyncio.ensure_future(service._cached("k", "f", compute, None)) for _ in range(3)
        ]
        await asyncio.sleep(0)  # the waiters are waiting on the leader's computation
        leader.cancel()  # the client that started the computation went away
        await asyncio.sleep(0)
        release.set()
        answers = [json.loads(a) for a in await asyncio.gather(*waiters)]
        await service.settle()
        cached = await service.cache.get("k", "f") is not None
        return answers, leader.cancelled() and cached

    answers, leader_cancelled_and_cached = asyncio.run(scenario())
    assert all(isinstance(a, dict) and a["items"] == [3] for a in answers), answers
    assert leader_cancelled_and_cached


async def _until(condition: Callable[[], bool], seconds: float = 30.0) -> None:
    """Yield to the loop until `condition` holds: no guess at how long the others need."""
    deadline = asyncio.get_running_loop().time() + seconds
    while not condition():
        assert asyncio.get_running_loop().time() < deadline, "condition never held"
        await asyncio.sleep(0.001)
