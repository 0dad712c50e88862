"""Durable store of what users do after training: new positive interactions and new profiles;
and of what the shop does to its catalogue: items created or described, hidden or shown again.

Every user has a *generation*, bumped by each write in the same atomic step as the write; the
cache keys a user's lists by it, so a list computed before a write can never be served after
it (a stale write lands under the old generation, which nobody reads again).

Idempotency means "the same request": a write's Idempotency-Key is scoped to its route and
user and stored with a digest of its body. A retry (same key, same body) records nothing and
answers what the first attempt recorded; the same key with another body is refused
(`IdempotencyConflict`, a 409) — it can never suppress somebody else's write. A write is
recorded whole or not at all: one Lua script with Redis; one line per write in the file store,
an append that fails is cut back off, so a retry of a failed write is recorded, not "replayed".

Histories are bounded: each user keeps the `max_history` most recently recorded items (in the
order they were recorded, whatever timestamps they carry; older ones stay in the log for
training), so writes stay O(items written) and reads O(cap).

With Redis, the stream `cddae:events` holds the log (read by the retraining job). Without
Redis, writes are appended (flushed and fsynced) to a JSON-lines file under an exclusive lock,
and the same state is kept in memory, rebuilt from that file at start: a torn last line (a crash
mid-write) is cut off, an unreadable line elsewhere is quarantined (`<file>.quarantine.jsonl`,
counted on /readyz) and skipped, as the retraining job skips it.

The catalogue has one generation, bumped by each item write with it: a cached list carries it in
its key, so hiding an item takes it out of every list at once, in every replica.

A read that fails raises `StoreUnavailable` — never an empty answer that would look like "no
such user" — and so does a write that cannot be made durable.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import hashlib
import json
import logging
import os
import secrets
import threading
from collections import OrderedDict
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from redis import asyncio as aioredis
from redis.exceptions import RedisError

from service.state.events import ITEM_EVENTS, BadEvent, Quarantine, parse
from service.state.lane import Lane, read
from service.state.scripts import run_script

STREAM = "cddae:events"
ITEM_PROFILES = "cddae:items:profile"  # item id → its profile (JSON), as the API last set it
HIDDEN_ITEMS = "cddae:items:hidden"  # the set of items taken out of every list
PENDING_ITEMS = "cddae:items:pending"  # created new to the model in service, not yet learnt
# Users created through the API that no retrain has read yet: what the users' cap counts. A
# sorted set scored by the millisecond of the creating event's stream id, so that a model's
# mark settles every user created before it in one step.
PENDING_USERS = "cddae:users:pending"
# Moved by every item write. With Redis it is Redis's clock in microseconds (or the last one
# plus one, whichever is larger), not a count: a store emptied, or restored from an older
# snapshot, and written again never comes back to a generation a process has already read.
CATALOGUE_GEN = "cddae:items:gen"
# What each of the newest CHANGES_KEPT generations changed: a sorted set of "<generation>:<item>"
# scored by the generation. A process that read the catalogue up to one of them reads what
# changed since (docs/SERVICE.md), not the whole of it.
ITEM_CHANGES = "cddae:items:changed"
CHANGES_KEPT = 10_000
STORE_ID_KEY = "cddae:store-id"  # a Redis store's identity, set once by whoever comes first
IDEMPOTENCY_TTL = 86_400  # seconds a write's key is remembered (a day of retries)
LOCAL_KEYS = 100_000  # keys the file store remembers in memory (the newest)
MAX_HISTORY = 5_000  # recorded items kept per user for serving: the most recent
log = logging.getLogger("cddae.service")


class StoreUnavailable(RuntimeError):
    pass


class Full(RuntimeError):
    """As many of something created through the API as allowed wait for a retrain (→ 409)."""


class CatalogueFull(Full):
    """Items created through the API, up to the cap."""


class UsersFull(Full):
    """Users created through the API, up to the cap."""


class IdempotencyConflict(ValueError):
    """The key was used for another request (another body) on this route and user."""


@dataclass
class UserState:
    """What the store knows of a user, read at once."""

    generation: int = 0
    added: list[str] = field(default_factory=list)  # the most recent first-to-last, capped
    profile: dict[str, Any] | None = None
    # The cached answer, when the store could look it up in the same round trip (`probe`);
    # then `added` and `profile` are not read: the answer needs neither.
    cached: bytes | None = None
    catalogue: int = 0  # the catalogue's generation, read with the rest


@dataclass
class Catalogue:
    """What the API has done to the catalogue: profiles set (new items, or new descriptions of
    the model's) and the hidden items, at one generation."""

    generation: int = 0
    profiles: dict[str, dict[str, Any]] = field(default_factory=dict)
    hidden: set[str] = field(default_factory=set)
    # Items created new to the model in service, not yet in a model: what the cap counts.
    pending: set[str] = field(default_factory=set)
    # True for the stand-in used when the store could not be read and no earlier read exists:
    # then nothing is known of hidden items, and "available" would be a guess.
    unread: bool = False
    # Redis: the last entry of ITEM_CHANGES this state includes, when it is the generation's
    # own ("" when not known): where the next read may start from.
    mark: str = ""


@dataclass(frozen=True)
class Written:
    """A write's outcome: `new` False when it was a retry of one already recorded; what the
    first attempt recorded (items; for a profile, whether it created the user) either way."""

    new: bool
    recorded: int
    created: bool = False


# Where a user's cached answer lies, for a store that can look it up with the state: the cache
# key's prefix (the generation completes it) and the field.
Probe = tuple[str, str]


def _key(user: str, what: str) -> str:
    return f"cddae:user:{user}:{what}"


def scoped_key(route: str, user: str, key: str) -> str:
    """The key as the store knows it: per route and user (hashed: ids may hold any separator)."""
    return hashlib.sha256(json.dumps([route, user, key]).encode()).hexdigest()[:40]


def body_digest(*parts: Any) -> str:
    """Equal JSON, equal digest: key order and 31 vs 31.0 do not make another request."""
    return hashlib.sha256(json.dumps(_canonical(parts), sort_keys=True).encode()).hexdigest()[:32]


def _canonical(value: Any) -> Any:
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, dict):
        return {k: _canonical(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_canonical(v) for v in value]
    return value


class Store(Protocol):
    async def user_state(self, user: str, probe: Probe | None = None) -> UserState: ...

    async def add_interactions(
        self, user: str, items: Sequence[str], timestamps: Sequence[float], key: str, digest: str
    ) -> Written:
        """Record the items, unless `key` (with `digest`, the request body's) was seen."""
        ...

    async def set_profile(
        self,
        user: str,
        profile: dict[str, Any],
        key: str,
        digest: str,
        created: bool = False,
        cap: int | None = None,
    ) -> Written:
        """Record the profile; `created`: this write creates the user (kept with the key, so
        that a retry answers as the first attempt did), and counts it as waiting for a retrain —
        refused (`UsersFull`) when `cap` users wait already, checked in the same atomic step."""
        ...

    async def settle_users(self, source: str, mark: str) -> int:
        """A model trained on this store's log (`source`, the retraining job's name for it) up
        to `mark` is in service: the users created up to there are read by a retrain, no longer
        waiting. How many were settled; none when the model's log is another store's."""
        ...

    async def catalogue_generation(self) -> int: ...

    async def catalogue(self, since: Catalogue | None = None) -> Catalogue:
        """The whole catalogue state, consistent at one generation; `since`, one read before,
        lets a store read only what changed after it (and patch a copy)."""
        ...

    async def set_item(self, item: str, profile: dict[str, Any], new: bool, cap: int) -> int:
        """Record an item's profile; the new catalogue generation. `new`: the model in service
        does not hold the item, so that unless the store has it already it is pending, and
        refused (`CatalogueFull`) when `cap` items are — checked in the same atomic step."""
        ...

    async def settle_items(self, items: Sequence[str]) -> None:
        """These pending items are in the model in service now: no longer counted."""
        ...

    async def set_availability(self, item: str, available: bool) -> int: ...

    def health(self) -> dict[str, Any]:
        """Figures for /readyz (quarantined records, …)."""
        ...

    def close(self) -> None: ...


def _remember(history: OrderedDict[str, None], item: str, cap: int) -> None:
    """Keep the `cap` most recently recorded items (a repeated item becomes the most recent):
    O(1) per item."""
    history[item] = None
    history.move_to_end(item)
    if len(history) > cap:
        history.popitem(last=False)


def store_id_file(path: Path) -> Path:
    return path.with_name(path.name + ".id")


def file_store_id(path: Path) -> str:
    """The file store's identity, written once beside its file: the retraining job keys its
    mark by it, so moving or renaming the folder neither loses nor doubles events."""
    id_path = store_id_file(path)
    try:
        return id_path.read_text().strip()
    except FileNotFoundError:
        pass
    tmp = id_path.with_name(f".{id_path.name}.{os.getpid()}.{secrets.token_hex(4)}")
    tmp.write_text(secrets.token_hex(8) + "\n")
    try:
        os.link(tmp, id_path)  # created whole, and only if absent: two first starts agree
    except FileExistsError:
        pass
    finally:
        tmp.unlink()
    return id_path.read_text().strip()


class FileStore:
    """Append-only JSON lines plus an in-memory view; one process at a time (locked)."""

    def __init__(self, path: Path, max_history: int = MAX_HISTORY):
        self.path, self.max_history = path, max_history
        self._users: dict[str, UserState] = {}
        self._catalogue = Catalogue()
        self._histories: dict[str, OrderedDict[str, None]] = {}
        # users created through the API → the byte offset after their creating record (a
        # retrain's mark in this log): those waiting for a retrain, what the users' cap counts
        self._pending_users: dict[str, int] = {}
        # scoped key → the first attempt's (digest, items recorded, created)
        self._keys: OrderedDict[str, tuple[str, int, bool]] = OrderedDict()
        self._lock = threading.Lock()
        self._writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="store-write")
        self._handle = self._open()
        self._torn_at: int | None = None  # where a failed append must be cut back to
        try:
            self.name = f"file:{file_store_id(path)}"
            self.quarantine = Quarantine(path.with_name(path.name + ".quarantine.jsonl"))
            self._replay()
        except BaseException:
            self._handle.close()
            raise

    def _open(self):
        """Open for appending under an exclusive lock; fsync the folder if the file is new."""
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            created = not self.path.exists()
            handle = self.path.open("a+b", buffering=0)  # no hidden buffer: what failed, failed
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
        """Rebuild the view from the file, line by line (never the whole file in memory)."""
        offset, torn = 0, None
        with self.path.open("rb") as reader:
            for number, line in enumerate(reader, start=1):
                if not line.endswith(b"\n"):  # a torn last line: never acknowledged
                    torn = len(line)
                    break
                if line.strip():
                    try:
                        record = json.loads(line)
                        events = list(parse(record))
                    except (ValueError, BadEvent) as error:
                        self.quarantine.add(f"byte {offset}", f"line {number}: {error}", line)
                    else:
                        self._apply(record, events, offset + len(line))
                offset += len(line)
        if torn is not None:
            log.warning("%s: cut a torn last line of %d bytes at byte %d", self.path, torn, offset)
            self._cut(offset)

    def _cut(self, size: int) -> None:
        os.ftruncate(self._handle.fileno(), size)
        os.fsync(self._handle.fileno())

    def _apply(self, record: dict[str, Any], events: list[dict[str, Any]], end: int) -> None:
        """Fold one record, which ends at byte `end` of the log, into the view."""
        if record.get("type") in ITEM_EVENTS:
            for event in events:
                if event["type"] == "item":
                    if record.get("new") and event["item"] not in self._catalogue.profiles:
                        self._catalogue.pending.add(event["item"])
                    self._catalogue.profiles[event["item"]] = event["profile"]
                elif event["available"]:
                    self._catalogue.hidden.discard(event["item"])
                else:
                    self._catalogue.hidden.add(event["item"])
            self._catalogue.generation += 1
            return
        user = record["user"]
        if record.get("created"):
            self._pending_users[user] = end
        state = self._users.setdefault(user, UserState())
        history = self._histories.setdefault(user, OrderedDict())
        for event in events:
            if event["type"] == "interaction":
                _remember(history, event["item"], self.max_history)
            else:
                state.profile = event["profile"]
        state.generation += 1
        if key := record.get("key"):
            first = (record.get("digest", ""), len(events), bool(record.get("created")))
            self._keys[key] = first
            self._keys.move_to_end(key)
            if len(self._keys) > LOCAL_KEYS:
                self._keys.popitem(last=False)

    async def _write(self, record: dict[str, Any], cap: int | None = None) -> Written:
        """Appends and their fsyncs on the store's own thread, in order: a slow disk holds up
        writes, not inference or model loads."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._writer, self._append, record, cap)

    def _append(self, record: dict[str, Any], cap: int | None = None) -> Written:
        payload = (json.dumps(record, separators=(",", ":")) + "\n").encode()
        events = list(parse(record))
        with self._lock:
            pending = self._catalogue.pending
            new = record.get("new") and record["item"] not in self._catalogue.profiles
            if new and cap is not None and len(pending) >= cap:
                raise CatalogueFull(f"{len(pending)} items wait for a retrain")
            seen = self._keys.get(record["key"]) if "key" in record else None
            if seen is not None:
                if seen[0] != record["digest"]:
                    raise IdempotencyConflict("this Idempotency-Key was used for another request")
                return Written(False, seen[1], seen[2])
            creates = record.get("created") and record["user"] not in self._pending_users
            if creates and cap is not None and len(self._pending_users) >= cap:
                raise UsersFull(f"{len(self._pending_users)} users wait for a retrain")
            try:
                if self._torn_at is not None:  # an earlier append failed and could not be cut
                    self._cut(self._torn_at)
                    self._torn_at = None
                fd = self._handle.fileno()
                start = os.fstat(fd).st_size
                try:
                    written = memoryview(payload)
                    while written:  # a short write (a disk filling up) goes on, or raises
                        written = written[os.write(fd, written) :]
                    os.fsync(fd)
                except OSError:
                    self._torn_at = start  # the write's bytes that did land are not a record
                    self._cut(start)
                    self._torn_at = None
                    raise
            except OSError as error:
                raise StoreUnavailable(f"cannot append to {self.path.name}: {error}") from None
            self._apply(record, events, start + len(payload))
            return Written(True, len(events), bool(record.get("created")))

    async def user_state(self, user: str, probe: Probe | None = None) -> UserState:
        state = self._users.get(user)
        catalogue = self._catalogue.generation
        if state is None:
            return UserState(catalogue=catalogue)
        added = list(self._histories.get(user, ()))
        return UserState(state.generation, added, state.profile, catalogue=catalogue)

    async def catalogue_generation(self) -> int:
        return self._catalogue.generation

    async def catalogue(self, since: Catalogue | None = None) -> Catalogue:
        # In memory: a copy costs less than finding what changed. The writer thread applies
        # under the lock: one consistent copy.
        with self._lock:
            now = self._catalogue
            return Catalogue(now.generation, dict(now.profiles), set(now.hidden), set(now.pending))

    async def set_item(self, item, profile, new, cap) -> int:
        record = {"type": "item", "item": item, "profile": profile, "new": new}
        await self._write(record, cap)
        return self._catalogue.generation

    async def settle_items(self, items) -> None:
        with self._lock:
            self._catalogue.pending.difference_update(items)

    async def set_availability(self, item, available) -> int:
        await self._write({"type": "availability", "item": item, "available": available})
        return self._catalogue.generation

    async def add_interactions(self, user, items, timestamps, key, digest) -> Written:
        record = {"type": "interactions", "user": user, "items": list(items),
                  "timestamps": [float(t) for t in timestamps],
                  "key": scoped_key("interactions", user, key), "digest": digest}  # fmt: skip
        return await self._write(record)

    async def set_profile(self, user, profile, key, digest, created=False, cap=None) -> Written:
        record = {"type": "profile", "user": user, "profile": profile,
                  "key": scoped_key("profile", user, key), "digest": digest,
                  "created": created}  # fmt: skip
        return await self._write(record, cap)

    async def settle_users(self, source, mark) -> int:
        if source not in (self.name, f"file:{self.path.resolve()}"):  # the latter: before ids
            return 0
        with self._lock:
            if int(mark) > os.fstat(self._handle.fileno()).st_size:
                return 0  # a mark past the end: the log was replaced since (as the job says)
            settled = [u for u, end in self._pending_users.items() if end <= int(mark)]
            for user in settled:
                del self._pending_users[user]
        return len(settled)

    def health(self) -> dict[str, Any]:
        return {"quarantined_records": len(self.quarantine)}

    def close(self) -> None:
        self._writer.shutdown(wait=True)
        with contextlib.suppress(OSError):
            self._handle.close()


# The read of an uncached or cached GET in one round trip: the user's and the catalogue's
# generations, then the cached answer under both; only on a miss the recorded items (at most
# the cap) and the profile. KEYS: generation, recent items, profile, the unbounded set of items
# recorded before histories were capped, the catalogue's generation. ARGV: the cache key's
# prefix, the field, the cap. (The cache key is computed here, so this script wants the cache
# and the store in one Redis, not a cluster.)
_READ = """
local gen = redis.call('get', KEYS[1]) or '0'
local catalogue = redis.call('get', KEYS[5]) or '0'
local hit = redis.call('hget', ARGV[1] .. catalogue .. ':' .. gen, ARGV[2])
if hit then return {gen, catalogue, hit} end
local items = redis.call('zrange', KEYS[2], -tonumber(ARGV[3]), -1)
if #items == 0 then items = redis.call('srandmember', KEYS[4], ARGV[3]) end
return {gen, catalogue, false, items, redis.call('get', KEYS[3])}
"""

# One script per write, all or nothing: the key checked (same body: a replay, answered with
# what the first attempt recorded; another body: -1, a conflict), the events appended, the
# recent items updated and capped, the generation bumped. Items are scored by the generation
# of their write and their place in it (a write holds at most 1,000): the cap keeps the most
# recently recorded. KEYS: key marker, stream, recent items, generation, legacy item set.
# ARGV: key TTL, user, digest, cap, then item/time pairs.
_ADD = """
local seen = redis.call('get', KEYS[1])
if seen then
  local digest, n = string.match(seen, '^(%x+):(%d+)$')
  if digest ~= ARGV[3] then return {-1, 0} end
  return {0, tonumber(n)}
end
local gen = redis.call('incr', KEYS[4])
if redis.call('exists', KEYS[5]) == 1 then
  for _, item in ipairs(redis.call('srandmember', KEYS[5], ARGV[4])) do
    redis.call('zadd', KEYS[3], 0, item)
  end
  redis.call('unlink', KEYS[5])
end
local n = 0
for k = 5, #ARGV, 2 do
  redis.call('xadd', KEYS[2], '*', 'type', 'interaction', 'user', ARGV[2],
             'item', ARGV[k], 'timestamp', ARGV[k + 1])
  n = n + 1
  redis.call('zadd', KEYS[3], gen * 100000 + n, ARGV[k])  -- later in the write: more recent
end
redis.call('zremrangebyrank', KEYS[3], 0, -(tonumber(ARGV[4]) + 1))
redis.call('set', KEYS[1], ARGV[3] .. ':' .. n, 'EX', ARGV[1])
return {1, n}
"""
# A profile write: as above, and a write that creates the user counts it as waiting for a
# retrain, refused (-2) when the cap is reached. KEYS: key marker, stream, profile, generation,
# users waiting. ARGV: key TTL, user, digest, profile JSON, created (1/0), cap (0: none).
_PROFILE = """
local seen = redis.call('get', KEYS[1])
if seen then
  local digest, created = string.match(seen, '^(%x+):(%d)$')
  if digest ~= ARGV[3] then return {-1, 0} end
  return {0, tonumber(created)}
end
local creates = ARGV[5] == '1' and not redis.call('zscore', KEYS[5], ARGV[2])
local cap = tonumber(ARGV[6])
if creates and cap > 0 and redis.call('zcard', KEYS[5]) >= cap then return {-2, 0} end
local id = redis.call('xadd', KEYS[2], '*', 'type', 'profile', 'user', ARGV[2],
                      'profile', ARGV[4])
if creates then redis.call('zadd', KEYS[5], tonumber(string.match(id, '^(%d+)')), ARGV[2]) end
redis.call('set', KEYS[3], ARGV[4])
redis.call('incr', KEYS[4])
redis.call('set', KEYS[1], ARGV[3] .. ':' .. ARGV[5], 'EX', ARGV[1])
return {1, tonumber(ARGV[5])}
"""
# Every item write starts with `next_generation` and ends with `changed`. The generation moves
# to Redis's clock in microseconds or the last plus one, whichever is larger; one that is not a
# whole number below 2^53 (set by hand: Lua's numbers are doubles) moves to the clock, and the
# changes are dropped. What it changed is written down (the newest CHANGES_KEPT kept). A
# generation the changes do not end at was moved by a writer that keeps none (an earlier
# version of the service): the changes cannot be trusted across it, and are dropped — every
# reader then reads the whole catalogue once.
_CHANGED = f"""
local function next_generation(generation)
  local text = redis.call('get', generation) or '0'
  local before = tonumber(text)
  local now = redis.call('time')
  local clock = tonumber(now[1]) * 1000000 + tonumber(now[2])
  if not string.match(text, '^%d+$') or before >= 9007199254740991 then return -1, clock end
  return before, math.max(before + 1, clock)
end
local function changed(item, changes, generation, before, moved)
  local last = redis.call('zrange', changes, -1, -1, 'WITHSCORES')
  if last[2] and tonumber(last[2]) ~= before then redis.call('del', changes) end
  local text = string.format('%.0f', moved)
  redis.call('set', generation, text)
  redis.call('zadd', changes, moved, text .. ':' .. item)
  redis.call('zremrangebyrank', changes, 0, -{CHANGES_KEPT + 1})
  return moved
end
"""
# Item writes: the state, the log entry and the catalogue's generation in one step; a new item
# counted against the cap in the same step (-1: full). KEYS: profiles or hidden set, stream,
# catalogue generation, (profiles only) pending set, then the changes.
# ARGV: item, profile JSON or 1/0, new (1/0), cap.
_ITEM = (
    _CHANGED
    + """
local before, moved = next_generation(KEYS[3])
if ARGV[3] == '1' and redis.call('hexists', KEYS[1], ARGV[1]) == 0 then
  if redis.call('scard', KEYS[4]) >= tonumber(ARGV[4]) then return -1 end
  redis.call('sadd', KEYS[4], ARGV[1])
end
redis.call('hset', KEYS[1], ARGV[1], ARGV[2])
redis.call('xadd', KEYS[2], '*', 'type', 'item', 'item', ARGV[1], 'profile', ARGV[2])
return changed(ARGV[1], KEYS[5], KEYS[3], before, moved)
"""
)
_AVAILABILITY = (
    _CHANGED
    + """
local before, moved = next_generation(KEYS[3])
if ARGV[2] == '1' then redis.call('srem', KEYS[1], ARGV[1])
else redis.call('sadd', KEYS[1], ARGV[1]) end
redis.call('xadd', KEYS[2], '*', 'type', 'availability', 'item', ARGV[1], 'available', ARGV[2])
return changed(ARGV[1], KEYS[4], KEYS[3], before, moved)
"""
)
# Users a model read: those created in a millisecond before its mark's (a stream id), when the
# model's log is this Redis's. KEYS: users waiting, the store's id. ARGV: the model's log name,
# its mark's millisecond, the name the retraining job gave this log before stores had ids.
_SETTLE_USERS = """
if ARGV[1] ~= 'redis:' .. (redis.call('get', KEYS[2]) or '') and ARGV[1] ~= ARGV[3] then
  return 0
end
return redis.call('zremrangebyscore', KEYS[1], '-inf', '(' .. ARGV[2])
"""
# The catalogue: what changed since the reader's mark, when the changes still hold the mark at
# its generation and end at the current one (each changed item once: its profile or false,
# hidden, pending); else the whole of it, with the mark it ends at ('' when the changes do not
# end at the generation). KEYS: generation, profiles, hidden, pending, changes. ARGV: the
# reader's generation and mark ('' for none).
_CATALOGUE = """
local text = redis.call('get', KEYS[1]) or '0'
local generation = tonumber(text)
local last = redis.call('zrange', KEYS[5], -1, -1, 'WITHSCORES')
local mark = ''
if last[2] and tonumber(last[2]) == generation then mark = last[1] end
local score = ARGV[2] ~= '' and redis.call('zscore', KEYS[5], ARGV[2])
if mark ~= '' and score and tonumber(score) == tonumber(ARGV[1]) then
  local changed, seen = {}, {}
  for _, entry in ipairs(redis.call('zrangebyscore', KEYS[5], '(' .. ARGV[1], '+inf')) do
    local item = string.sub(entry, string.find(entry, ':', 1, true) + 1)
    if not seen[item] then
      seen[item] = true
      changed[#changed + 1] = item
      changed[#changed + 1] = redis.call('hget', KEYS[2], item)
      changed[#changed + 1] = redis.call('sismember', KEYS[3], item)
      changed[#changed + 1] = redis.call('sismember', KEYS[4], item)
    end
  end
  return {'since', text, mark, changed}
end
return {'whole', text, mark, redis.call('hgetall', KEYS[2]),
        redis.call('smembers', KEYS[3]), redis.call('smembers', KEYS[4])}
"""


def _generation(value: bytes | str | int) -> int:
    """The catalogue's generation as Redis holds it. A value that is no whole number (only
    set by hand) reads as -1, the same for every process, until the next item write moves it
    to the clock (`next_generation`): never a 500, and nothing a write can get stuck on."""
    try:
        return int(value)
    except ValueError:
        return -1


def _patched(since: Catalogue, generation: int, mark: str, changed: list) -> Catalogue:
    """`since` (never changed: a view holds it) copied, with the changed items' state."""
    profiles, hidden, pending = dict(since.profiles), set(since.hidden), set(since.pending)
    for k in range(0, len(changed), 4):
        item, profile = changed[k].decode(), changed[k + 1]
        if profile is None:
            profiles.pop(item, None)
        else:
            with contextlib.suppress(ValueError):  # written by us, as JSON: never expected
                profiles[item] = json.loads(profile)
        (hidden.add if changed[k + 2] else hidden.discard)(item)
        (pending.add if changed[k + 3] else pending.discard)(item)
    return Catalogue(generation, profiles, hidden, pending, mark=mark)


class RedisStore:
    def __init__(
        self,
        client: aioredis.Redis,
        max_history: int = MAX_HISTORY,
        idempotency_ttl: int = IDEMPOTENCY_TTL,
        lane: Lane | None = None,
        catalogue_lane: Lane | None = None,
    ):
        self._client, self.max_history, self.idempotency_ttl = client, max_history, idempotency_ttl
        self._lane = lane  # the per-request read's own connection (service.state.lane)
        # The whole catalogue's read: rare (once per catalogue generation and process) and as
        # large as what the API created (10,000 profiles: 0.12 s), past any per-request read's
        # timeout — on redis-py's client with the reads' 50 ms it failed from ~3,000 items on,
        # and the service stayed degraded. A connection of its own, a background timeout.
        self._catalogue_lane = catalogue_lane
        self._add = client.register_script(_ADD)
        self._profile = client.register_script(_PROFILE)
        self._read = client.register_script(_READ)
        self._item = client.register_script(_ITEM)
        self._availability = client.register_script(_AVAILABILITY)
        self._catalogue = client.register_script(_CATALOGUE)
        self._settle_users = client.register_script(_SETTLE_USERS)

    def _keys(self, user: str) -> list[str]:
        return [_key(user, "gen"), _key(user, "recent"), _key(user, "profile"),
                _key(user, "items"), CATALOGUE_GEN]  # fmt: skip

    async def user_state(self, user: str, probe: Probe | None = None) -> UserState:
        """Generation, recent items and profile in one round trip; with a probe, the cached
        answer in the same one (and on a hit nothing else)."""
        prefix, field = probe if probe is not None else ("cddae:no-cache:", "")
        try:
            args = [prefix, field, self.max_history]
            reply = await run_script(self._read, self._keys(user), args, self._lane)
        except (TimeoutError, RedisError, OSError) as error:
            raise StoreUnavailable("the interaction store (Redis) did not answer") from error
        generation, catalogue = int(reply[0]), _generation(reply[1])
        if reply[2] is not None:
            return UserState(generation, cached=reply[2], catalogue=catalogue)
        members, profile = reply[3], reply[4] if len(reply) > 4 else None
        return UserState(
            generation,
            [m.decode() for m in members],
            json.loads(profile) if profile else None,
            catalogue=catalogue,
        )

    async def _call(self, script, keys: list[str], args: list, what: str):
        try:
            return await run_script(script, keys, args)
        except (TimeoutError, RedisError, OSError) as error:
            raise StoreUnavailable(f"the interaction store (Redis) did not {what}") from error

    async def catalogue_generation(self) -> int:
        try:
            text = await read(self._client, self._lane, "GET", CATALOGUE_GEN)
        except (TimeoutError, RedisError, OSError) as error:
            raise StoreUnavailable("the interaction store (Redis) did not answer") from error
        return _generation(text or 0)

    async def catalogue(self, since: Catalogue | None = None) -> Catalogue:
        keys = [CATALOGUE_GEN, ITEM_PROFILES, HIDDEN_ITEMS, PENDING_ITEMS, ITEM_CHANGES]
        known = since is not None and not since.unread and since.mark
        args = [since.generation, since.mark] if known and since else [0, ""]
        try:
            reply = await run_script(self._catalogue, keys, args, self._catalogue_lane)
        except (TimeoutError, RedisError, OSError) as error:
            raise StoreUnavailable("the interaction store (Redis) did not answer") from error
        generation, mark = _generation(reply[1]), reply[2].decode()
        if reply[0] == b"since":
            assert since is not None
            return _patched(since, generation, mark, reply[3])
        pairs, hidden, pending = reply[3:]
        profiles = {}
        for k in range(0, len(pairs), 2):
            with contextlib.suppress(ValueError):  # written by us, as JSON: never expected
                profiles[pairs[k].decode()] = json.loads(pairs[k + 1])
        return Catalogue(
            generation,
            profiles,
            {m.decode() for m in hidden},
            {m.decode() for m in pending},
            mark=mark,
        )

    async def set_item(self, item, profile, new, cap) -> int:
        keys = [ITEM_PROFILES, STREAM, CATALOGUE_GEN, PENDING_ITEMS, ITEM_CHANGES]
        args = [item, json.dumps(profile), "1" if new else "0", cap]
        generation = int(await self._call(self._item, keys, args, "confirm"))
        if generation < 0:
            raise CatalogueFull("the items created through the API wait for a retrain")
        return generation

    async def settle_items(self, items) -> None:
        try:
            await self._client.srem(PENDING_ITEMS, *items)
        except (TimeoutError, RedisError, OSError) as error:
            raise StoreUnavailable("the interaction store (Redis) did not confirm") from error

    async def set_availability(self, item, available) -> int:
        keys = [HIDDEN_ITEMS, STREAM, CATALOGUE_GEN, ITEM_CHANGES]
        args = [item, "1" if available else "0"]
        return int(await self._call(self._availability, keys, args, "confirm"))

    async def _run(self, script, user: str, keys: list[str], args: list) -> Written:
        try:
            status, recorded = await run_script(script, keys, args)
        except (TimeoutError, RedisError, OSError) as error:
            raise StoreUnavailable("the interaction store (Redis) did not confirm") from error
        if status == -1:
            raise IdempotencyConflict("this Idempotency-Key was used for another request")
        if status == -2:
            raise UsersFull("the users created through the API wait for a retrain")
        return Written(bool(status), int(recorded))

    async def add_interactions(self, user, items, timestamps, key, digest) -> Written:
        gen, recent, _, legacy, _ = self._keys(user)
        keys = [f"cddae:idem:{scoped_key('interactions', user, key)}", STREAM, recent, gen, legacy]
        pairs = [value for pair in zip(items, timestamps, strict=True) for value in pair]
        args = [self.idempotency_ttl, user, digest, self.max_history, *pairs]
        return await self._run(self._add, user, keys, args)

    async def set_profile(self, user, profile, key, digest, created=False, cap=None) -> Written:
        keys = [f"cddae:idem:{scoped_key('profile', user, key)}", STREAM,
                _key(user, "profile"), _key(user, "gen"), PENDING_USERS]  # fmt: skip
        args = [self.idempotency_ttl, user, digest, json.dumps(profile), int(created), cap or 0]
        written = await self._run(self._profile, user, keys, args)
        return Written(written.new, 1, bool(written.recorded))

    async def settle_users(self, source, mark) -> int:
        millisecond = mark.split("-")[0]
        if not millisecond.isdigit():
            return 0  # not a stream id: a mark in another kind of log
        args = [source, millisecond, f"redis:{STREAM}"]
        return int(await self._call(self._settle_users, [PENDING_USERS, STORE_ID_KEY], args,
                                    "confirm"))  # fmt: skip

    def health(self) -> dict[str, Any]:
        return {}

    def close(self) -> None:
        for lane in (self._lane, self._catalogue_lane):
            if lane is not None:
                lane.close()
