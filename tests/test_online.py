"""Impressions and online counts in the file store: exact through rotations, restarts and a
crash in the middle of a rotation; attribution by id and by window; Wilson intervals."""

from __future__ import annotations

import asyncio
import json
import os
from pathlib import Path

import pytest

from service.state import online as online_module
from service.state.online import FileOnline, Impression, MissingList, UnknownList
from service.state.stats import online_table, wilson


def _impression(k: int, user: str | None = "u1", version: str = "v1") -> Impression:
    return Impression(
        f"{k:032x}", user, version, None, json.dumps([str(k), str(k + 1)]), 1_764_000_000 + k
    )


def _totals(store: FileOnline) -> tuple[int, int]:
    counts = asyncio.run(store.counts())
    cells = [c for hours in counts.by_version.values() for c in hours.values()]
    return sum(c[0] for c in cells), sum(c[1] for c in cells)


def _reopened_totals(path: Path, retain_bytes: int) -> tuple[int, int]:
    store = FileOnline(path, window=10**9, retain_bytes=retain_bytes)
    try:
        return _totals(store)
    finally:
        store.close()


def test_counts_are_exact_through_rotations_and_restarts(tmp_path: Path) -> None:
    path = tmp_path / "log.impressions"
    store = FileOnline(path, window=10**9, retain_bytes=2_000)  # rotates every ~10 lists

    async def scenario() -> None:
        for k in range(0, 120, 3):
            await store.record([_impression(k), _impression(k + 1), _impression(k + 2, None)])
        await store.attribute("u1", [], f"{118:032x}", 1_764_000_200)
        await store.attribute("u1", ["100"], None, 1_764_000_200)  # the list of 100 (and 99)
        await store.attribute("u1", ["100"], None, 1_764_000_200)  # clicked already

    asyncio.run(scenario())
    assert (tmp_path / "log.impressions.1").exists() and store.snapshot.exists()
    assert _totals(store) == (120, 2)
    store.close()
    again = FileOnline(path, window=10**9, retain_bytes=2_000)
    assert _totals(again) == (120, 2)
    again.close()


class Killed(BaseException):
    """The process dies here."""


def test_a_crash_between_the_steps_of_a_rotation_counts_nothing_twice(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "log.impressions"
    store = FileOnline(path, window=10**9, retain_bytes=1_500)
    replace, moves = os.replace, []

    def dies_before_the_log_moves(src, dst) -> None:
        if str(dst).endswith(".impressions.1"):
            moves.append(dst)
            if len(moves) == 3:  # the third rotation: its snapshot written, `.1` covered
                raise Killed
        replace(src, dst)

    monkeypatch.setattr(online_module.os, "replace", dies_before_the_log_moves)
    recorded = 0
    with pytest.raises(Killed):  # rotations go through until one dies after its snapshot
        for k in range(200):
            recorded = k + 1  # written before the rotation that follows it
            asyncio.run(store.record([_impression(k)]))
    monkeypatch.setattr(online_module.os, "replace", replace)
    store._handle.close()  # what the kernel does for a dead process
    store._writer.shutdown(wait=False)
    reopened = FileOnline(path, window=10**9, retain_bytes=1_500)
    assert _totals(reopened)[0] == recorded > 20 and len(moves) == 3
    asyncio.run(reopened.record([_impression(1000)]))  # and it goes on from there
    reopened.close()
    assert _reopened_totals(path, 1_500)[0] == recorded + 1


def test_a_rotation_that_fails_keeps_the_write_and_the_log(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "log.impressions"
    store = FileOnline(path, window=10**9, retain_bytes=1_000)

    def refused(src, dst) -> None:
        raise OSError("read-only")

    monkeypatch.setattr(online_module.os, "replace", refused)
    for k in range(30):  # no StoreUnavailable: the records are written
        asyncio.run(store.record([_impression(k)]))
    store.close()
    monkeypatch.undo()
    assert _reopened_totals(path, 1_000)[0] == 30


def test_attribution_refuses_other_users_lists_and_respects_the_window(tmp_path: Path) -> None:
    store = FileOnline(tmp_path / "log.impressions", window=100, retain_bytes=10**6)

    async def scenario() -> None:
        await store.record([_impression(1, "u1"), _impression(2, "u2"), _impression(3, None)])
        with pytest.raises(UnknownList):
            await store.attribute("u1", ["2"], f"{2:032x}", 1_764_000_010)  # u2's list
        with pytest.raises(MissingList):
            await store.attribute("u1", ["1"], f"{1:032x}", 1_764_000_500)  # past the window
        assert await store.attribute("u1", ["3"], f"{3:032x}", 1_764_000_010) == [f"{3:032x}"]
        assert await store.attribute("u1", ["2"], None, 1_764_000_010) == [f"{1:032x}"]
        assert await store.attribute("u1", ["1"], None, 1_764_000_500) == []  # too late

    asyncio.run(scenario())
    store.close()


def test_the_window_in_memory_is_bounded_by_lists_not_users(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(online_module, "MAX_WINDOW_LISTS", 10)
    store = FileOnline(tmp_path / "log.impressions", window=10**9, retain_bytes=10**6)
    asyncio.run(store.record([_impression(k, f"user-{k}") for k in range(100)]))
    assert len(store._lists) == 10 and len(store._by_user) == 10
    store.close()


def test_wilson_intervals_stay_in_bounds_and_narrow_with_counts() -> None:
    assert wilson(0, 10)[0] == 0.0 and 0 < wilson(0, 10)[1] < 0.35
    low, high = wilson(50, 100)
    assert abs((low + high) / 2 - 0.5) < 1e-9 and 0.39 < low < 0.41
    assert wilson(500, 1000)[1] - wilson(500, 1000)[0] < high - low
    table = online_table(None)
    assert table == {}


def test_redis_attribution_reads_records_and_the_earlier_layout() -> None:
    """Records are JSON strings; a list recorded by the earlier layout (a hash, its items in a
    set) is still attributed within its window, and a list is clicked once."""
    import redis

    from service.state.cache import redis_client
    from service.state.online import COUNTS, RedisOnline

    url = "redis://127.0.0.1:6379/11"
    sync = redis.Redis.from_url(url)
    sync.flushdb()
    sync.hset("cddae:list:" + "f" * 32, mapping={"user": "u1", "version": "v0", "variant": "",
                                                 "hour": "490000", "clicked": "0"})  # fmt: skip
    sync.sadd("cddae:list:" + "f" * 32 + ":items", "old-item")
    sync.zadd("cddae:user:u1:lists", {"f" * 32: 1_764_000_000})

    async def scenario() -> tuple[list[str], ...]:
        client = redis_client(url, 2.0)
        store = RedisOnline(client, window=10**9, retain=1000)
        await store.record([_impression(k) for k in range(3)])
        by_id = await store.attribute("u1", ["1"], f"{1:032x}", 1_764_000_100)
        again = await store.attribute("u1", ["1"], f"{1:032x}", 1_764_000_100)
        by_window = await store.attribute("u1", ["3", "old-item", "nowhere"], None, 1_764_000_100)
        await store.record([_impression(7, None)])  # an ad-hoc list: anyone's click counts
        assert await store.attribute("u9", ["7"], f"{7:032x}", 1_764_000_100) == [f"{7:032x}"]
        with pytest.raises(MissingList):
            await store.attribute("u1", ["1"], "e" * 32, 1_764_000_100)
        with pytest.raises(UnknownList):
            await store.attribute("u2", ["1"], f"{1:032x}", 1_764_000_100)
        counts = await store.counts()
        await client.aclose()
        return by_id, again, by_window, [counts.by_version]

    by_id, again, by_window, (by_version,) = asyncio.run(scenario())
    assert by_id == again == [f"{1:032x}"]
    assert by_window == [f"{2:032x}", "f" * 32]  # the newest list holding "3"; the old one
    assert by_version["v1"] == {490000: [4, 3]} and by_version["v0"] == {490000: [0, 1]}
    assert sync.xlen("cddae:impressions") == 4 and sync.hlen(COUNTS[0]) == 1
    sync.flushdb()


_BUSY = """
local t = redis.call('TIME')
local start = t[1] * 1000000 + t[2]
repeat t = redis.call('TIME') until t[1] * 1000000 + t[2] - start > tonumber(ARGV[1])
return 1
"""


def test_redis_impressions_wait_out_a_busy_redis_on_their_own_lane(tmp_path: Path) -> None:
    """A reply later than a read's timeout is not a lost batch: the service records impressions
    on a lane with the background writes' timeout. Redis is held busy for 250 ms (a script)
    while a batch is recorded; with a read's 50 ms (the previous wiring) the same batch fails
    — the control that makes this test able to fail."""
    import redis

    from service.api.app import build_state
    from service.config import Settings
    from service.state.cache import redis_client
    from service.state.online import IMPRESSIONS, RedisOnline
    from service.state.store import StoreUnavailable

    url = "redis://127.0.0.1:6379/11"
    sync = redis.Redis.from_url(url)
    sync.flushdb()
    settings = Settings(redis_url=url, redis_timeout_seconds=0.05, models_dir=tmp_path)

    async def record_while_busy(online) -> None:
        busy = redis.asyncio.Redis.from_url(url)
        hold = asyncio.ensure_future(busy.eval(_BUSY, 0, 250_000))
        await asyncio.sleep(0.02)  # the script has begun
        try:
            await online.record([_impression(k) for k in range(3)])
        finally:
            await hold
            await busy.aclose()

    async def as_the_service_records() -> None:
        state = build_state(settings)
        try:
            await record_while_busy(state.recommendations.online)
        finally:
            state.recommendations.online.close()
            await state.cache.close()

    asyncio.run(as_the_service_records())
    assert sync.xlen(IMPRESSIONS) == 3

    async def on_the_reads_client() -> None:
        client = redis_client(url, settings.redis_timeout_seconds)
        try:
            await record_while_busy(RedisOnline(client, window=10**9, retain=1000))
        finally:
            await client.aclose()

    with pytest.raises(StoreUnavailable):
        asyncio.run(on_the_reads_client())
    sync.flushdb()


def test_redis_impressions_reload_their_script_on_their_lane() -> None:
    """A Redis that lost its scripts (restarted, SCRIPT FLUSH): the lane loads the script and
    records, with its own timeout — not through redis-py's reads' client."""
    import redis

    from service.state.cache import redis_client
    from service.state.lane import Lane
    from service.state.online import IMPRESSIONS, RedisOnline

    url = "redis://127.0.0.1:6379/11"
    sync = redis.Redis.from_url(url)
    sync.flushdb()

    async def scenario() -> None:
        client = redis_client("redis://127.0.0.1:1/11", 0.05)  # nothing listens: only the
        lane = Lane.from_url(url, 1.0)  # lane can load the script and record
        online = RedisOnline(client, window=10**9, retain=1000, lane=lane)
        sync.script_flush()
        await online.record([_impression(k) for k in range(2)])
        online.close()
        await client.aclose()

    asyncio.run(scenario())
    assert sync.xlen(IMPRESSIONS) == 2
    sync.flushdb()


def test_an_attribution_waits_for_queued_impressions_within_bounds() -> None:
    """`recorded(within=…)` flushes the queue now and waits for the recorder at most that
    long: a store that holds a batch for seconds (stalled, each batch waiting out the
    background timeout) or steady traffic that keeps the recorder busy does not hold an
    interactions request with it."""
    import time

    import numpy as np

    from service.serving.onnx_model import Ranked, item_tail, item_template, render
    from service.serving.recommendations import Recommendations
    from service.telemetry import Metrics

    class StalledStore:
        async def record(self, impressions, shadowed=()) -> None:
            await asyncio.sleep(3)

        def close(self) -> None:
            pass

    answer = render([item_template("a", item_tail("A", [], "model"))], b'"v1"',
                    Ranked(np.array([0]), np.array([1.0]), "model"))  # fmt: skip

    async def scenario() -> float:
        recommendations = Recommendations(None, None, None, Metrics(), 100, online=StalledStore())
        await recommendations._serve(answer + b"}", "u1")
        started = time.monotonic()
        await recommendations.recorded(within=0.2)
        waited = time.monotonic() - started
        recommendations._impressing.cancel()
        return waited

    assert asyncio.run(scenario()) < 1.0
