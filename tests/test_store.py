"""Interaction stores: durable, replayed, idempotent per request, bounded, generation-counted; a
failed read is an error, never an empty answer; a bad record is quarantined, never fatal."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import resource
import signal
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import redis

from service.state.cache import redis_client
from service.state.events import BadEvent, parse
from service.state.store import (
    CATALOGUE_GEN,
    ITEM_CHANGES,
    ITEM_PROFILES,
    STORE_ID_KEY,
    STREAM,
    CatalogueFull,
    FileStore,
    IdempotencyConflict,
    RedisStore,
    StoreUnavailable,
    UsersFull,
    Written,
    body_digest,
)

REDIS_URL = "redis://127.0.0.1:6379/11"


@contextlib.asynccontextmanager
async def store_of(
    backend: str, tmp_path: Path, max_history: int = 3, fresh: bool = True
) -> AsyncIterator:
    """A store of either kind (fresh: Redis's database flushed first), closed after."""
    if backend == "file":
        store = FileStore(tmp_path / "events.jsonl", max_history)
        try:
            yield store
        finally:
            store.close()
    else:
        if fresh:
            redis.Redis.from_url(REDIS_URL).flushdb()
        client = redis_client(REDIS_URL, 2.0)
        try:
            yield RedisStore(client, max_history)
        finally:
            await client.aclose()


@pytest.mark.parametrize("backend", ["file", "redis"])
def test_a_key_is_scoped_to_route_user_and_body(tmp_path: Path, backend: str) -> None:
    """Issue 19 (1): a key used by one user, or on one route, never suppresses another write;
    the same key with another body is a conflict; a true retry answers the first outcome."""

    async def scenario() -> tuple[list, object]:
        async with store_of(backend, tmp_path) as store:
            results = [
                await store.add_interactions("186", ["1", "2"], [1.0, 2.0], "order-1", "d1"),
                await store.add_interactions("22", ["2"], [3.0], "order-1", "d2"),  # another user
                await store.set_profile("22", {"age": 3}, "order-1", "d3"),  # another route
                await store.add_interactions("186", ["1", "2"], [1.0, 2.0], "order-1", "d1"),
            ]
            with pytest.raises(IdempotencyConflict):
                await store.add_interactions("186", ["9"], [1.0], "order-1", "other-body")
            return results, await store.user_state("22")

    results, state = asyncio.run(scenario())
    assert results == [Written(True, 2), Written(True, 1), Written(True, 1), Written(False, 2)]
    assert state.added == ["2"] and state.profile == {"age": 3}


def test_file_store_is_durable_replayed_and_idempotent(tmp_path: Path) -> None:
    log = tmp_path / "events.jsonl"

    async def write() -> list[Written]:
        store = FileStore(log)
        results = [
            await store.add_interactions("u1", ["5", "7"], [1.0, 2.0], "k1", "a"),
            await store.add_interactions("u1", ["5", "7"], [1.0, 2.0], "k1", "a"),  # a retry
            await store.add_interactions("u1", ["5"], [3.0], "k2", "b"),
            await store.set_profile("u2", {"gender": "F"}, "k3", "c"),
        ]
        assert (await store.user_state("u1")).generation == 2
        store.close()
        return results

    assert [w.new for w in asyncio.run(write())] == [True, False, True, True]
    records = [json.loads(line) for line in log.read_text().splitlines()]
    assert [r["type"] for r in records] == [
        "interactions",
        "interactions",
        "profile",
    ]  # a line a write
    reopened = FileStore(log)
    u1, u2 = asyncio.run(reopened.user_state("u1")), asyncio.run(reopened.user_state("u2"))
    assert sorted(u1.added) == ["5", "7"] and u1.profile is None and u2.profile == {"gender": "F"}
    # Keys survive a restart: a retry after one is still recognised, with its first outcome.
    again = asyncio.run(reopened.add_interactions("u1", ["5", "7"], [1.0, 2.0], "k1", "a"))
    assert again == Written(False, 2)
    reopened.close()


def test_a_torn_tail_is_cut_and_a_bad_line_is_quarantined_not_fatal(tmp_path: Path) -> None:
    """Issue 19 (5): a torn line in the middle (a transient disk-full before this version) or a
    foreign record no longer stops the store from starting: quarantined, counted, skipped."""
    log = tmp_path / "events.jsonl"
    good = json.dumps({"type": "interaction", "user": "u", "item": "1", "timestamp": 1.0})
    log.write_text(good + "\n" + '{"type": "inter')  # a crash mid-write
    store = FileStore(log)
    assert asyncio.run(store.add_interactions("u", ["2"], [2.0], "k", "d")).new
    store.close()
    lines = log.read_text().splitlines()
    assert len(lines) == 2 and all(json.loads(line) for line in lines)  # nothing glued

    foreign = [good, '{"type": "inter' + good, "[1, 2]", '{"type": "profile", "user": "u"}',
               json.dumps({"type": "interaction", "user": "u\x00", "item": "3", "timestamp": 1}),
               good.replace('"1"', '"4"')]  # fmt: skip
    log.write_text("\n".join(foreign) + "\n")
    store = FileStore(log)
    assert store.health() == {"quarantined_records": 4}
    assert sorted(asyncio.run(store.user_state("u")).added) == ["1", "4"]
    store.close()
    quarantine = (tmp_path / "events.jsonl.quarantine.jsonl").read_text().splitlines()
    assert len(quarantine) == 4 and "line 2" in json.loads(quarantine[0])["reason"]
    FileStore(log).close()  # a restart quarantines nothing twice
    assert len((tmp_path / "events.jsonl.quarantine.jsonl").read_text().splitlines()) == 4


def test_a_failed_append_is_cut_back_and_its_retry_is_recorded(tmp_path: Path) -> None:
    """Issue 19 (4): with the disk full mid-write, the bytes that landed are removed, the
    client gets a 503, and its retry with the same key is recorded whole — not "replayed"."""
    log = tmp_path / "events.jsonl"
    store = FileStore(log)
    asyncio.run(store.add_interactions("u", ["0"], [1.0], "first", "d0"))
    size = log.stat().st_size
    items = [f"item-{k}" for k in range(1000)]
    previous = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit: EFBIG
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (size + 4096, hard))
    try:
        with pytest.raises(StoreUnavailable, match="cannot append"):
            asyncio.run(store.add_interactions("u", items, [2.0] * 1000, "big", "d1"))
        assert log.stat().st_size == size  # the partial write is gone, the disk still full
        small = asyncio.run(store.add_interactions("u", ["s"], [2.0], "small", "d2"))
        assert small.new  # what fits is recorded: the store is not stuck on the failure
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
        signal.signal(signal.SIGXFSZ, previous)
    assert asyncio.run(store.add_interactions("u", items, [2.0] * 1000, "big", "d1")).new
    store.close()
    reopened = FileStore(log)
    assert len(asyncio.run(reopened.user_state("u")).added) == 1002
    assert reopened.health() == {"quarantined_records": 0}
    reopened.close()


@pytest.mark.parametrize("backend", ["file", "redis"])
def test_histories_keep_the_most_recent_items_only(tmp_path: Path, backend: str) -> None:
    """Issue 19 (7): a user's recorded history is capped (here at 3): the newest stay."""

    async def scenario() -> list[str]:
        async with store_of(backend, tmp_path) as store:
            await store.add_interactions("u", ["a", "b"], [1.0, 1.0], "k1", "d1")
            await store.add_interactions("u", ["c", "d"], [1.0, 1.0], "k2", "d2")
            await store.add_interactions("u", ["b"], [1.0], "k3", "d3")  # b again: recent now
            return (await store.user_state("u")).added

    assert sorted(asyncio.run(scenario())) == ["b", "c", "d"]


def test_file_store_writes_stay_cheap_for_a_long_history(tmp_path: Path) -> None:
    """80 writes of 1,000 new items to one user cost what the first did (no scan per item):
    checked by the size of the state, not by a clock."""
    store = FileStore(tmp_path / "events.jsonl", max_history=5000)

    async def scenario() -> int:
        for write in range(80):
            items = [f"{write}-{k}" for k in range(1000)]
            await store.add_interactions("196", items, [1.0] * 1000, f"k{write}", f"d{write}")
        return len((await store.user_state("196")).added)

    assert asyncio.run(scenario()) == 5000
    store.close()


def test_file_store_takes_one_writer(tmp_path: Path) -> None:
    first = FileStore(tmp_path / "events.jsonl")
    with pytest.raises(StoreUnavailable, match="locked by another process"):
        FileStore(tmp_path / "events.jsonl")
    first.close()
    FileStore(tmp_path / "events.jsonl").close()


def test_file_store_has_a_stable_identity(tmp_path: Path) -> None:
    """The retraining job keys its mark by the store's id, never by its path."""
    first = FileStore(tmp_path / "a" / "events.jsonl")
    first.close()
    os.rename(tmp_path / "a", tmp_path / "b")  # the folder moved
    moved = FileStore(tmp_path / "b" / "events.jsonl")
    moved.close()
    assert first.name == moved.name and "/" not in moved.name


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
            await store.add_interactions("u1", ["5", "7"], [1.0, 2.0], "a", "d1"),
            await store.add_interactions("u1", ["5", "7"], [1.0, 2.0], "a", "d1"),
            await store.set_profile("u1", {"age": 30}, "b", "d2"),
        ]
        state = await store.user_state("u1")
        await client.aclose()
        return writes, state

    writes, state = asyncio.run(scenario())
    assert [w.new for w in writes] == [True, False, True]
    assert sorted(state.added) == ["5", "7"] and state.profile == {"age": 30}
    assert state.generation == 2
    stream = sync.xrange(STREAM)
    assert [fields[b"type"] for _, fields in stream] == [b"interaction", b"interaction", b"profile"]


def test_redis_store_reads_a_history_recorded_before_the_cap() -> None:
    """Items recorded as an unbounded set by earlier versions: read (capped), then moved into
    the bounded history at the user's next write."""
    sync = redis.Redis.from_url(REDIS_URL)
    sync.flushdb()
    sync.sadd("cddae:user:old:items", *[str(k) for k in range(10)])

    async def scenario():
        client = redis_client(REDIS_URL, 0.5)
        store = RedisStore(client, max_history=4)
        before = await store.user_state("old")
        await store.add_interactions("old", ["new"], [1.0], "k", "d")
        after = await store.user_state("old")
        await client.aclose()
        return before, after

    before, after = asyncio.run(scenario())
    assert len(before.added) == 4 and "new" in after.added and len(after.added) == 4
    assert not sync.exists("cddae:user:old:items")


def test_redis_store_down_fails_reads_and_writes_loudly() -> None:
    async def scenario() -> None:
        client = redis_client("redis://127.0.0.1:1/0", 0.2)
        store = RedisStore(client)
        with pytest.raises(StoreUnavailable):
            await store.add_interactions("u", ["1"], [1.0], "k", "d")
        with pytest.raises(StoreUnavailable):  # never an empty state that reads as "no user"
            await store.user_state("u")
        await client.aclose()

    asyncio.run(scenario())


@pytest.mark.parametrize(
    "record",
    [
        [1, 2],
        {"type": "interaction", "user": "u", "timestamp": 1},
        {"user": "u", "item": "1", "timestamp": 1},
        {"type": "profile", "user": "u", "profile": None},
        {"type": "interaction", "user": None, "item": "1", "timestamp": 1},
        {"type": "interaction", "user": "196\x00", "item": "1", "timestamp": 1},
        {"type": "interaction", "user": "u", "item": "1", "timestamp": "soon"},
        {"type": "interactions", "user": "u", "items": ["1", "2"], "timestamps": [1]},
    ],
)
def test_a_malformed_record_is_named_never_read(record: object) -> None:
    """Issue 19 (3): what used to crash the job (exit 1) or train a user called "None"."""
    with pytest.raises(BadEvent):
        list(parse(record))


def test_records_of_every_form_read_alike() -> None:
    one = {"type": "interaction", "user": "u", "item": "²", "timestamp": "5"}  # Redis: text
    many = {"type": "interactions", "user": "u", "items": ["²"], "timestamps": [5]}
    assert list(parse(one)) == list(parse(many))
    profile = {"type": "profile", "user": "u", "profile": '{"age": 3}'}
    assert next(parse(profile))["profile"] == {"age": 3}


@pytest.mark.parametrize("backend", ["file", "redis"])
def test_a_profile_retry_answers_as_its_first_attempt(tmp_path: Path, backend: str) -> None:
    async def scenario() -> list[Written]:
        async with store_of(backend, tmp_path) as store:
            first = await store.set_profile("u", {"age": 31}, "p1", "d", created=True)
            again = await store.set_profile("u", {"age": 31}, "p1", "d", created=False)
            return [first, again]

    first, again = asyncio.run(scenario())
    assert first == Written(True, 1, True) and again == Written(False, 1, True)


def test_equal_json_is_the_same_request() -> None:
    assert body_digest({"age": 31, "a": [1]}) == body_digest({"a": [1.0], "age": 31.0})
    assert body_digest({"age": 31}) != body_digest({"age": 31.5})


@pytest.mark.parametrize("backend", ["file", "redis"])
def test_both_stores_keep_the_same_items_and_read_no_more_than_the_cap(
    tmp_path: Path, backend: str
) -> None:
    """Later in a write is more recent, whatever the ids sort like; a cap lowered since the
    items were recorded bounds the read too."""

    async def scenario() -> tuple[list[str], list[str], list[str]]:
        async with store_of(backend, tmp_path, max_history=10) as store:
            await store.add_interactions("u", ["30", "20", "10", "40"], [1.0] * 4, "k1", "d1")
            await store.add_interactions("v", [str(k) for k in range(10)], [1.0] * 10, "k", "d")
            one = (await store.user_state("u")).added
        async with store_of(backend, tmp_path, max_history=3, fresh=False) as store:
            v = (await store.user_state("v")).added  # read before any write under the new cap
            await store.add_interactions("u", ["50"], [1.0], "k2", "d2")
            return one, sorted((await store.user_state("u")).added), sorted(v)

    one, capped, v = asyncio.run(scenario())
    assert v == ["7", "8", "9"]
    assert sorted(one) == ["10", "20", "30", "40"]
    assert capped == ["10", "40", "50"]


@pytest.mark.parametrize("backend", ["file", "redis"])
def test_the_catalogue_is_kept_counted_and_capped_atomically(tmp_path: Path, backend: str) -> None:
    """Issue 20: item profiles and hidden items are store state with one generation; items new
    to the model count against the cap in the same step as their write, even when writes
    arrive together; a settled item frees its place; all of it survives a restart."""

    async def scenario() -> None:
        async with store_of(backend, tmp_path) as store:
            assert (await store.catalogue()).generation == 0
            writes = [store.set_item(f"n{i}", {"title": f"N{i}"}, True, 3) for i in range(8)]
            outcomes = await asyncio.gather(*writes, return_exceptions=True)
            assert sum(isinstance(o, CatalogueFull) for o in outcomes) == 5
            catalogue = await store.catalogue()
            assert len(catalogue.pending) == 3 and catalogue.pending <= set(catalogue.profiles)
            created = sorted(catalogue.pending)
            await store.set_item(created[0], {"title": "again"}, True, 3)  # known: not counted
            await store.set_item("50", {"title": "in the model"}, False, 3)  # never counted
            await store.set_availability("50", False)
            await store.set_availability("51", False)
            await store.set_availability("51", True)
            await store.settle_items(created[:2])
            await store.set_item("n-late", {"genres": ["Comedy"]}, True, 3)
            catalogue = await store.catalogue()
            assert catalogue.hidden == {"50"}
            assert catalogue.pending == {created[2], "n-late"}
            assert catalogue.profiles[created[0]] == {"title": "again"}
            generation = catalogue.generation
            assert generation == await store.catalogue_generation() > 0
            assert (await store.user_state("anyone")).catalogue == generation
        async with store_of(backend, tmp_path, fresh=False) as store:  # a restart
            again = await store.catalogue()
            assert again.hidden == {"50"} and again.profiles == catalogue.profiles
            assert again.generation >= generation
            assert created[2] in again.pending

    asyncio.run(scenario())


def _log_name_and_mark(backend: str, store, tmp_path: Path) -> tuple[str, str]:
    """What the retraining job would record of this store's log after reading all of it."""
    if backend == "file":
        return store.name, str((tmp_path / "events.jsonl").stat().st_size)
    client = redis.Redis.from_url(REDIS_URL, decode_responses=True)
    client.set(STORE_ID_KEY, "ours", nx=True)
    return f"redis:{client.get(STORE_ID_KEY)}", client.xrevrange(STREAM, count=1)[0][0]


@pytest.mark.parametrize("backend", ["file", "redis"])
def test_users_created_are_counted_capped_and_settled_by_a_models_mark(
    tmp_path: Path, backend: str
) -> None:
    """Users created through the API count against the cap in the same step as their write,
    even when writes arrive together; re-profiling or a retry is not another user; a model
    whose training read the log up to a mark frees the places of the users created before
    it — only a model of this store's log; the count survives a restart."""

    async def create(store, users: list[str], cap: int = 3) -> list:
        writes = [store.set_profile(u, {"age": 30}, f"k-{u}", "d", True, cap) for u in users]
        return await asyncio.gather(*writes, return_exceptions=True)

    async def scenario() -> None:
        async with store_of(backend, tmp_path) as store:
            outcomes = await create(store, [f"u{i}" for i in range(8)])
            assert sum(isinstance(o, UsersFull) for o in outcomes) == 5
            made = [f"u{i}" for i, o in enumerate(outcomes) if isinstance(o, Written)]
            again = await store.set_profile(made[0], {"age": 30}, f"k-{made[0]}", "d", True, 3)
            assert again == Written(False, 1, True)  # a retry: answered, not refused
            await store.set_profile(made[1], {"age": 40}, "other", "d2", False, 3)  # re-profile
            await store.add_interactions(made[0], ["i1"], [1.0], "k", "d")
            assert isinstance((await create(store, ["late"]))[0], UsersFull)
            await asyncio.sleep(0.005)  # the mark lies in a later millisecond than the users
            await store.add_interactions("someone", ["i2"], [1.0], "k", "d")
            source, mark = _log_name_and_mark(backend, store, tmp_path)
            assert await store.settle_users("redis:another" if backend == "file" else
                                            "file:another", mark) == 0  # fmt: skip
            assert await store.settle_users(source + "x", mark) == 0
            if backend == "file":  # a mark past the end: this file replaced the one it was on
                assert await store.settle_users(source, str(int(mark) + 10**6)) == 0
            assert isinstance((await create(store, ["late"]))[0], UsersFull)
            legacy = f"file:{store.path.resolve()}" if backend == "file" else f"redis:{STREAM}"
            assert await store.settle_users(legacy, mark) == 3  # the job's name before store ids
            assert await store.settle_users(source, mark) == 0
            outcomes = await create(store, ["a", "b", "c", "d"])
            assert sum(isinstance(o, UsersFull) for o in outcomes) == 1
        async with store_of(backend, tmp_path, fresh=False) as store:  # a restart
            assert isinstance((await create(store, ["e"]))[0], UsersFull)
            await store.settle_users(source, mark)  # the file store's replay counts all again
            assert isinstance((await create(store, ["e"]))[0], UsersFull)  # 3 after the mark

    asyncio.run(scenario())


def _same_catalogue(a, b) -> None:
    assert (a.generation, a.profiles, a.hidden, a.pending) == (
        b.generation, b.profiles, b.hidden, b.pending)  # fmt: skip


def test_a_catalogue_read_since_an_earlier_one_is_the_whole_read(tmp_path: Path) -> None:
    """Redis hands over only what changed since a process's last read, and the whole catalogue
    when that history no longer holds the read: changes trimmed, the store emptied or restored
    from an older snapshot and written again, or a writer that keeps no changes (an earlier
    version of the service) in between. A generation never comes back."""

    async def scenario() -> None:
        sync = redis.Redis.from_url(REDIS_URL)
        async with store_of("redis", tmp_path) as store:
            for k in range(5):
                await store.set_item(f"n{k}", {"title": f"N{k}"}, True, 100)
            await store.set_availability("n1", False)
            first = await store.catalogue()
            await store.set_item("n0", {"title": "again"}, True, 100)  # re-described
            await store.set_item("late", {"genres": ["Comedy"]}, True, 100)  # created
            await store.set_availability("n1", True)
            await store.set_availability("n2", False)
            await store.set_availability("50", False)  # one of the model's
            await store.settle_items(["n3"])  # no generation: not a change, as the view says
            since = await store.catalogue(first)
            whole = await store.catalogue()
            assert since.pending == whole.pending | {"n3"}  # the process settles what it sees
            since.pending.discard("n3")
            _same_catalogue(since, whole)
            assert since.hidden == {"n2", "50"} and since.profiles["n0"] == {"title": "again"}
            _same_catalogue(await store.catalogue(whole), whole)  # nothing since

            def sees_behind_its_back(read) -> bool:
                return "behind-its-back" in read.profiles

            # Only the changes are read: a profile written past them is not seen...
            sync.hset(ITEM_PROFILES, "behind-its-back", json.dumps({"title": "x"}))
            await store.set_availability("n4", False)
            latest = await store.catalogue(whole)
            assert not sees_behind_its_back(latest)
            # ... but the whole catalogue is once the changes no longer hold the last read,
            sync.zremrangebyrank(ITEM_CHANGES, 0, -1)  # trimmed past it
            await store.set_availability("n4", True)
            assert sees_behind_its_back(await store.catalogue(latest))
            # after a writer that keeps no changes (its generation moved without them),
            latest = await store.catalogue()
            sync.incr(CATALOGUE_GEN)
            sync.hset(ITEM_PROFILES, "old-writer", json.dumps({"title": "y"}))
            await store.set_availability("n4", False)
            assert "old-writer" in (await store.catalogue(latest)).profiles
            # after a restore from an older snapshot, written again past the last read,
            before = await store.catalogue()
            snapshot = {key: sync.dump(key) for key in sync.keys("*")}
            await store.set_item("lost", {"title": "lost"}, True, 100)
            read = await store.catalogue(before)
            for key in sync.keys("*"):
                sync.delete(key)
            for key, value in snapshot.items():
                sync.restore(key, 0, value)
            await store.set_availability("n0", False)
            await store.set_availability("n0", True)
            restored = await store.catalogue(read)
            assert "lost" not in restored.profiles and restored.generation > read.generation
            _same_catalogue(restored, await store.catalogue())
            # A generation set by hand to what is no whole number below 2^53 reads alike in
            # every process, and the next write moves it to the clock: no 500, nothing stuck.
            for odd in (b"abc", b"1.5", b"99999999999999999999"):
                sync.set(CATALOGUE_GEN, odd)
                stuck = await store.catalogue()
                assert stuck.generation == (-1 if odd != b"99999999999999999999" else int(odd))
                await store.set_availability("n3", odd != b"abc")
                moved = await store.catalogue(stuck)
                assert 0 < moved.generation < 2**53 and moved.generation != stuck.generation
                _same_catalogue(moved, await store.catalogue())
                assert ("n3" in moved.hidden) == (odd == b"abc")
                restored = moved
            # and after the store was emptied: a generation never read before, the whole read.
            sync.flushdb()
            await store.set_availability("m0", False)
            again = await store.catalogue(restored)
            assert again.generation > restored.generation and again.profiles == {}
            _same_catalogue(again, await store.catalogue())

    asyncio.run(scenario())


def test_item_records_read_back_and_bad_ones_are_named() -> None:
    assert list(parse({"type": "item", "item": "x", "profile": {"year": 1994}})) == [
        {"type": "item", "item": "x", "profile": {"year": 1994}}
    ]
    assert list(parse({"type": "availability", "item": "x", "available": "0"})) == [
        {"type": "availability", "item": "x", "available": False}
    ]
    for record in ({"type": "item", "item": "", "profile": {}},
                   {"type": "availability", "item": "x", "available": "maybe"},
                   {"type": "item", "item": "x", "profile": "not json"}):  # fmt: skip
        with pytest.raises(BadEvent):
            list(parse(record))
