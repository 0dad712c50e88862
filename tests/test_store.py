"""Interaction stores: durable, replayed, idempotent, generation-counted; a failed read is an
error, never an empty answer."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest
import redis

from service.state.cache import redis_client
from service.state.store import STREAM, FileStore, RedisStore, StoreCorrupt, StoreUnavailable

REDIS_URL = "redis://127.0.0.1:6379/11"


def test_file_store_is_durable_replayed_and_idempotent(tmp_path: Path) -> None:
    log = tmp_path / "events.jsonl"

    async def write() -> list[bool]:
        store = FileStore(log)
        results = [
            await store.add_interactions("u1", ["5", "7"], [1.0, 2.0], "k1"),
            await store.add_interactions("u1", ["5", "7"], [1.0, 2.0], "k1"),  # a retry
            await store.add_interactions("u1", ["5"], [3.0], "k2"),
            await store.set_profile("u2", {"gender": "F"}, "k3"),
        ]
        assert (await store.user_state("u1")).generation == 2
        store.close()
        return results

    assert asyncio.run(write()) == [True, False, True, True]
    events = [json.loads(line) for line in log.read_text().splitlines()]
    assert [e["type"] for e in events] == ["interaction"] * 3 + ["profile"]
    reopened = FileStore(log)
    u1, u2 = asyncio.run(reopened.user_state("u1")), asyncio.run(reopened.user_state("u2"))
    assert u1.added == ["5", "7"] and u1.profile is None and u2.profile == {"gender": "F"}
    # Keys survive a restart: a retry after one is still recognised.
    assert asyncio.run(reopened.add_interactions("u1", ["5", "7"], [1.0, 2.0], "k1")) is False
    reopened.close()


def test_file_store_cuts_a_torn_tail_and_names_a_bad_record(tmp_path: Path, caplog) -> None:
    log = tmp_path / "events.jsonl"
    good = json.dumps({"type": "interaction", "user": "u", "item": "1", "timestamp": 1.0})
    log.write_text(good + "\n" + '{"type": "inter')  # a crash mid-write
    with caplog.at_level("WARNING", logger="cddae.service"):
        store = FileStore(log)
    assert "cut a torn last line" in caplog.text
    assert asyncio.run(store.add_interactions("u", ["2"], [2.0], "k")) is True
    store.close()
    lines = log.read_text().splitlines()
    assert len(lines) == 2 and all(json.loads(line) for line in lines)  # nothing glued

    log.write_text(good + "\n" + "not json\n" + good + "\n")
    with pytest.raises(StoreCorrupt, match=r"events\.jsonl:2: unreadable event"):
        FileStore(log)


def test_file_store_takes_one_writer(tmp_path: Path) -> None:
    first = FileStore(tmp_path / "events.jsonl")
    with pytest.raises(StoreUnavailable, match="locked by another process"):
        FileStore(tmp_path / "events.jsonl")
    first.close()
    FileStore(tmp_path / "events.jsonl").close()


def test_file_store_refuses_what_it_cannot_open(tmp_path: Path) -> None:
    blocked = tmp_path / "file"
    blocked.write_text("")
    with pytest.raises(StoreUnavailable, match="cannot open"):
        FileStore(blocked / "events.jsonl")  # a file where the folder should be


def test_redis_store_writes_stream_state_and_generation_at_once() -> None:
    sync = redis.Redis.from_url(REDIS_URL)
    sync.flushdb()

    async def scenario():
        client = redis_client(REDIS_URL, 0.5)
        store = RedisStore(client)
        writes = [
            await store.add_interactions("u1", ["5", "7"], [1.0, 2.0], "a"),
            await store.add_interactions("u1", ["5", "7"], [1.0, 2.0], "a"),
            await store.set_profile("u1", {"age": 30}, "b"),
        ]
        state = await store.user_state("u1")
        await client.aclose()
        return writes, state

    writes, state = asyncio.run(scenario())
    assert writes == [True, False, True]
    assert state.added == ["5", "7"] and state.profile == {"age": 30} and state.generation == 2
    stream = sync.xrange(STREAM)
    assert [fields[b"type"] for _, fields in stream] == [b"interaction", b"interaction", b"profile"]


def test_redis_store_down_fails_reads_and_writes_loudly() -> None:
    async def scenario() -> None:
        client = redis_client("redis://127.0.0.1:1/0", 0.2)
        store = RedisStore(client)
        with pytest.raises(StoreUnavailable):
            await store.add_interactions("u", ["1"], [1.0], "k")
        with pytest.raises(StoreUnavailable):  # never an empty state that reads as "no user"
            await store.user_state("u")
        await client.aclose()

    asyncio.run(scenario())
