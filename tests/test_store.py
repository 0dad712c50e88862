"""Interaction stores: the file store survives a restart; Redis writes stream and state at once."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest
import redis

from service.cache import redis_client
from service.store import STREAM, FileStore, RedisStore, StoreUnavailable

REDIS_URL = "redis://127.0.0.1:6379/11"


def test_file_store_is_durable_and_replayed(tmp_path: Path) -> None:
    log = tmp_path / "events.jsonl"

    async def write() -> None:
        store = FileStore(log)
        await store.add_interactions("u1", ["5", "7"], [1.0, 2.0])
        await store.add_interactions("u1", ["5"], [3.0])
        await store.set_profile("u2", {"gender": "F"})

    asyncio.run(write())
    events = [json.loads(line) for line in log.read_text().splitlines()]
    assert [e["type"] for e in events] == ["interaction"] * 3 + ["profile"]
    reopened = FileStore(log)
    assert asyncio.run(reopened.added_items("u1")) == ["5", "7"]
    assert asyncio.run(reopened.profile("u2")) == {"gender": "F"}
    assert asyncio.run(reopened.profile("u1")) is None


def test_file_store_refuses_what_it_cannot_write(tmp_path: Path) -> None:
    blocked = tmp_path / "file"
    blocked.write_text("")
    store = FileStore(blocked / "events.jsonl")  # a file where the folder should be
    with pytest.raises(StoreUnavailable, match="cannot append"):
        asyncio.run(store.add_interactions("u", ["1"], [1.0]))
    assert asyncio.run(store.added_items("u")) == []


def test_redis_store_writes_stream_and_state() -> None:
    sync = redis.Redis.from_url(REDIS_URL)
    sync.flushdb()

    async def scenario() -> tuple[list[str], dict | None]:
        client = redis_client(REDIS_URL, 0.5)
        store = RedisStore(client)
        await store.add_interactions("u1", ["5", "7"], [1.0, 2.0])
        await store.set_profile("u1", {"age": 30})
        result = await store.added_items("u1"), await store.profile("u1")
        await client.aclose()
        return result

    items, profile = asyncio.run(scenario())
    assert items == ["5", "7"] and profile == {"age": 30}
    stream = sync.xrange(STREAM)
    assert [fields[b"type"] for _, fields in stream] == [b"interaction", b"interaction", b"profile"]


def test_redis_store_down_refuses_writes_and_reads_as_empty() -> None:
    async def scenario() -> None:
        client = redis_client("redis://127.0.0.1:1/0", 0.2)
        store = RedisStore(client)
        with pytest.raises(StoreUnavailable):
            await store.add_interactions("u", ["1"], [1.0])
        assert await store.added_items("u") == []
        assert await store.profile("u") is None
        await client.aclose()

    asyncio.run(scenario())
