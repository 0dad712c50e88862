"""Durable store of what users do after training: new positive interactions and new profiles.

Every user has a *generation*, bumped by each write in the same atomic step as the write; the
cache keys a user's lists by it, so a list computed before a write can never be served after
it (a stale write lands under the old generation, which nobody reads again).

Every write carries an idempotency key: a write whose key was seen (a client retrying after a
503 that was in fact applied) is recognised and not recorded twice.

With Redis, one Lua script per write appends to the stream `cddae:events` (read by the
retraining job), updates the user's added items or profile, bumps the generation and records
the key — all or nothing. Without Redis, events are appended (flushed and fsynced) to a
JSON-lines file under an exclusive lock, and the same state is kept in memory, rebuilt from
that file at start (a torn last line, from a crash mid-write, is cut off and reported).

A read that fails raises `StoreUnavailable` — never an empty answer that would look like "no
such user" — and so does a write that cannot be made durable.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import json
import logging
import os
import threading
from collections import OrderedDict
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from redis import asyncio as aioredis
from redis.exceptions import RedisError

STREAM = "cddae:events"
IDEMPOTENCY_TTL = 86_400  # seconds a write's key is remembered (a day of retries)
LOCAL_KEYS = 100_000  # keys the file store remembers in memory (the newest)
log = logging.getLogger("cddae.service")


class StoreUnavailable(RuntimeError):
    pass


class StoreCorrupt(RuntimeError):
    """The file store holds a record it cannot read; the message names file and line."""


@dataclass
class UserState:
    """What the store knows of a user, read at once."""

    generation: int = 0
    added: list[str] = field(default_factory=list)
    profile: dict[str, Any] | None = None
    # The cached answer, when the store could look it up in the same round trip (`probe`);
    # then `added` and `profile` are not read: the answer needs neither.
    cached: bytes | None = None


# Where a user's cached answer lies, for a store that can look it up with the state: the cache
# key's prefix (the generation completes it) and the field.
Probe = tuple[str, str]


def _key(user: str, what: str) -> str:
    return f"cddae:user:{user}:{what}"


class Store(Protocol):
    async def user_state(self, user: str, probe: Probe | None = None) -> UserState: ...

    async def add_interactions(
        self, user: str, items: Sequence[str], timestamps: Sequence[float], key: str
    ) -> bool:
        """Record the interactions; False when `key` was seen before (nothing recorded)."""
        ...

    async def set_profile(self, user: str, profile: dict[str, Any], key: str) -> bool: ...

    def close(self) -> None: ...


class FileStore:
    """Append-only JSON lines plus an in-memory view; one process at a time (locked)."""

    def __init__(self, path: Path):
        self.path = path
        self._users: dict[str, UserState] = {}
        self._keys: OrderedDict[str, None] = OrderedDict()
        self._lock = threading.Lock()
        self._writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="store-write")
        self._handle = self._open()
        try:
            self._replay()
        except BaseException:
            self._handle.close()
            raise

    def _open(self):
        """Open for appending under an exclusive lock; fsync the folder if the file is new."""
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            created = not self.path.exists()
            handle = self.path.open("a+b")
        except OSError as error:
            raise StoreUnavailable(f"cannot open {self.path}: {error}") from None
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.close()
            raise StoreUnavailable(
                f"{self.path} is locked by another process: one writer at a time"
            ) from None
        if created:
            fd = os.open(self.path.parent, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        return handle

    def _replay(self) -> None:
        self._handle.seek(0)
        data = self._handle.read()
        end = data.rfind(b"\n") + 1
        if end < len(data):  # a torn last line: the write was never acknowledged
            log.warning(
                "%s: cut a torn last line of %d bytes at byte %d", self.path, len(data) - end, end
            )
            self._handle.truncate(end)
            self._handle.flush()
            os.fsync(self._handle.fileno())
        for number, line in enumerate(data[:end].splitlines(), start=1):
            if not line.strip():
                continue
            try:
                event = json.loads(line)
                self._apply(event)
            except (ValueError, KeyError, TypeError) as error:
                raise StoreCorrupt(f"{self.path}:{number}: unreadable event ({error})") from None

    def _apply(self, event: dict[str, Any]) -> None:
        state = self._users.setdefault(event["user"], UserState())
        if event["type"] == "interaction":
            if event["item"] not in state.added:
                state.added.append(event["item"])
        elif event["type"] == "profile":
            state.profile = event["profile"]
        if key := event.get("key"):
            self._keys[key] = None
            if len(self._keys) > LOCAL_KEYS:
                self._keys.popitem(last=False)

    async def _write(self, user: str, events: list[dict[str, Any]], key: str) -> bool:
        """Appends and their fsyncs on the store's own thread, in order: a slow disk holds up
        writes, not inference or model loads."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._writer, self._append, user, events, key)

    def _append(self, user: str, events: list[dict[str, Any]], key: str) -> bool:
        payload = "".join(json.dumps(e, separators=(",", ":")) + "\n" for e in events).encode()
        with self._lock:
            if key in self._keys:
                return False
            try:
                self._handle.write(payload)
                self._handle.flush()
                os.fsync(self._handle.fileno())
            except OSError as error:
                raise StoreUnavailable(f"cannot append to {self.path.name}: {error}") from None
            for event in events:
                self._apply(event)
            self._users[user].generation += 1
            return True

    async def user_state(self, user: str, probe: Probe | None = None) -> UserState:
        state = self._users.get(user)
        if state is None:
            return UserState()
        return UserState(state.generation, list(state.added), state.profile)

    async def add_interactions(self, user, items, timestamps, key) -> bool:
        events = [
            {"type": "interaction", "user": user, "item": item, "timestamp": ts, "key": key}
            for item, ts in zip(items, timestamps, strict=True)
        ]
        return await self._write(user, events, key)

    async def set_profile(self, user: str, profile: dict[str, Any], key: str) -> bool:
        event = {"type": "profile", "user": user, "profile": profile, "key": key}
        return await self._write(user, [event], key)

    def close(self) -> None:
        self._writer.shutdown(wait=True)
        with contextlib.suppress(OSError):
            self._handle.close()


# The read of an uncached or cached GET in one round trip: the generation, then the cached
# answer under it; only on a miss the recorded items and the profile. KEYS: generation, items,
# profile. ARGV: the cache key's prefix, the field. (The cache key is computed here, so this
# script wants the cache and the store in one Redis, not a cluster.)
_READ = """
local gen = redis.call('get', KEYS[1]) or '0'
local hit = redis.call('hget', ARGV[1] .. gen, ARGV[2])
if hit then return {gen, hit} end
return {gen, false, redis.call('smembers', KEYS[2]), redis.call('get', KEYS[3])}
"""

# One script per write: the key checked and recorded, the events appended, the state updated
# and the generation bumped, atomically. KEYS: key marker, stream, state key, generation.
_ADD = """
if not redis.call('set', KEYS[1], '1', 'NX', 'EX', ARGV[1]) then return 0 end
for k = 3, #ARGV, 2 do
  redis.call('xadd', KEYS[2], '*', 'type', 'interaction', 'user', ARGV[2],
             'item', ARGV[k], 'timestamp', ARGV[k + 1])
  redis.call('sadd', KEYS[3], ARGV[k])
end
redis.call('incr', KEYS[4])
return 1
"""
_PROFILE = """
if not redis.call('set', KEYS[1], '1', 'NX', 'EX', ARGV[1]) then return 0 end
redis.call('xadd', KEYS[2], '*', 'type', 'profile', 'user', ARGV[2], 'profile', ARGV[3])
redis.call('set', KEYS[3], ARGV[3])
redis.call('incr', KEYS[4])
return 1
"""


class RedisStore:
    def __init__(self, client: aioredis.Redis):
        self._client = client
        self._add = client.register_script(_ADD)
        self._profile = client.register_script(_PROFILE)
        self._read = client.register_script(_READ)

    async def user_state(self, user: str, probe: Probe | None = None) -> UserState:
        """Generation, added items and profile in one round trip; with a probe, the cached
        answer in the same one (and on a hit nothing else)."""
        if probe is not None:
            return await self._probed_state(user, probe)
        try:
            async with self._client.pipeline(transaction=False) as pipe:
                pipe.get(_key(user, "gen")).smembers(_key(user, "items"))
                generation, members, profile = await pipe.get(_key(user, "profile")).execute()
        except (TimeoutError, RedisError, OSError) as error:
            raise StoreUnavailable("the interaction store (Redis) did not answer") from error
        return UserState(
            int(generation or 0),
            sorted(m.decode() for m in members),
            json.loads(profile) if profile else None,
        )

    async def _probed_state(self, user: str, probe: Probe) -> UserState:
        keys = [_key(user, "gen"), _key(user, "items"), _key(user, "profile")]
        try:
            reply = await self._read(keys=keys, args=list(probe))
        except (TimeoutError, RedisError, OSError) as error:
            raise StoreUnavailable("the interaction store (Redis) did not answer") from error
        generation = int(reply[0])
        if reply[1] is not None:
            return UserState(generation, cached=reply[1])
        members, profile = reply[2], reply[3] if len(reply) > 3 else None
        return UserState(
            generation,
            sorted(m.decode() for m in members),
            json.loads(profile) if profile else None,
        )

    async def _run(self, script, user: str, what: str, key: str, args: list) -> bool:
        keys = [f"cddae:idem:{key}", STREAM, _key(user, what), _key(user, "gen")]
        try:
            return bool(await script(keys=keys, args=[IDEMPOTENCY_TTL, user, *args]))
        except (TimeoutError, RedisError, OSError) as error:
            raise StoreUnavailable("the interaction store (Redis) did not confirm") from error

    async def add_interactions(self, user, items, timestamps, key) -> bool:
        args = [value for pair in zip(items, timestamps, strict=True) for value in pair]
        return await self._run(self._add, user, "items", key, args)

    async def set_profile(self, user: str, profile: dict[str, Any], key: str) -> bool:
        return await self._run(self._profile, user, "profile", key, [json.dumps(profile)])

    def close(self) -> None:
        pass
