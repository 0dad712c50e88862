"""What was served, and what users did with it: impressions, attribution and online counts.

Every list the service answers has an id and is recorded as an *impression* (id, user, model
version, variant, items, time). An interaction is *attributed* to a list: to the one it names
(`recommendation_id`; it must be that user's, or a list served to nobody in particular — an
ad-hoc `/score` or similar items), else to the most recent list served to the same user within
the window that held the item. A list with at least one attributed interaction is *clicked*.
Counts per version and hour (lists, clicked lists) live in the store, so they are exact across
processes and restarts; attribution never changes what is recorded for training.

Bounded: a list can be attributed for `window` seconds (then its record expires); a user's
recent lists are capped (`USER_LISTS`); the Redis stream of impressions keeps about `retain`
entries (XADD MAXLEN ~); the file store's impression log rotates at `retain_bytes`, its
counts folded into a snapshot first, so counts survive rotation.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
from collections import OrderedDict
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Protocol

from redis import asyncio as aioredis
from redis.exceptions import RedisError

from service.state.store import StoreUnavailable

log = logging.getLogger("cddae.service")
USER_LISTS = 50  # lists per user that window attribution looks at (the most recent)
MAX_WINDOW_LISTS = 200_000  # lists the file store keeps for attribution (the newest)
IMPRESSIONS = "cddae:impressions"  # the Redis stream of impressions
COUNTS = ("cddae:online:lists", "cddae:online:clicked")  # hashes: "<version>|<hour>" → count


class UnknownList(ValueError):
    """A recommendation_id that names no list of this user (→ 422)."""


@dataclass(frozen=True)
class Impression:
    id: str
    user: str | None  # None: an ad-hoc list (POST /score, similar items)
    version: str
    variant: str | None
    items: tuple[str, ...]
    time: float

    @property
    def hour(self) -> int:
        return int(self.time // 3600)


@dataclass
class Counts:
    """Per version and hour: [lists, clicked lists]."""

    by_version: dict[str, dict[int, list[int]]] = field(default_factory=dict)

    def add(self, version: str, hour: int, lists: int = 0, clicked: int = 0) -> None:
        cell = self.by_version.setdefault(version, {}).setdefault(hour, [0, 0])
        cell[0] += lists
        cell[1] += clicked


class Online(Protocol):
    async def record(self, impressions: Sequence[Impression]) -> None: ...

    async def attribute(
        self, user: str, items: Sequence[str], list_id: str | None, now: float
    ) -> list[str]:
        """The ids of the lists these interactions are attributed to (UnknownList when
        `list_id` names no list of this user)."""
        ...

    async def counts(self) -> Counts: ...

    def close(self) -> None: ...


# --- Redis -------------------------------------------------------------------------------------

# One impression: its record (expiring with the window), its items, the user's recent lists,
# the version's count for the hour, and the stream entry. KEYS: record, items, user's lists,
# lists counts, stream. ARGV: id, user, version, variant, time, hour, window, user cap, stream
# cap, items JSON, then the items.
_RECORD = """
redis.call('hset', KEYS[1], 'user', ARGV[2], 'version', ARGV[3], 'variant', ARGV[4],
           'hour', ARGV[6], 'clicked', '0')
redis.call('expire', KEYS[1], ARGV[7])
if #ARGV > 10 then
  redis.call('sadd', KEYS[2], unpack(ARGV, 11))
  redis.call('expire', KEYS[2], ARGV[7])
end
if ARGV[2] ~= '' then
  redis.call('zadd', KEYS[3], ARGV[5], ARGV[1])
  redis.call('zremrangebyrank', KEYS[3], 0, -(tonumber(ARGV[8]) + 1))
  redis.call('expire', KEYS[3], ARGV[7])
end
redis.call('hincrby', KEYS[4], ARGV[3] .. '|' .. ARGV[6], 1)
redis.call('xadd', KEYS[5], 'MAXLEN', '~', ARGV[9], '*', 'id', ARGV[1], 'user', ARGV[2],
           'version', ARGV[3], 'variant', ARGV[4], 'time', ARGV[5], 'items', ARGV[10])
return 1
"""

# Attribution, all in one step. KEYS: the user's lists, clicked counts. ARGV: user, now,
# window, list id or '', record key prefix, then the items. Returns the attributed ids, or
# {'!unknown'} when the named list is not this user's (nor a list served to nobody).
_ATTRIBUTE = """
local function mark(id)
  local key = ARGV[5] .. id
  if redis.call('hget', key, 'clicked') == '0' then
    redis.call('hset', key, 'clicked', '1')
    local cell = redis.call('hget', key, 'version') .. '|' .. redis.call('hget', key, 'hour')
    redis.call('hincrby', KEYS[2], cell, 1)
  end
end
if ARGV[4] ~= '' then
  local owner = redis.call('hget', ARGV[5] .. ARGV[4], 'user')
  if not owner or (owner ~= '' and owner ~= ARGV[1]) then return {'!unknown'} end
  mark(ARGV[4])
  return {ARGV[4]}
end
local ids = redis.call('zrevrangebyscore', KEYS[1], '+inf', tonumber(ARGV[2]) - tonumber(ARGV[3]))
local out, seen = {}, {}
for k = 6, #ARGV do
  for _, id in ipairs(ids) do
    if redis.call('sismember', ARGV[5] .. id .. ':items', ARGV[k]) == 1 then
      mark(id)
      if not seen[id] then seen[id] = true; out[#out + 1] = id end
      break
    end
  end
end
return out
"""

RECORD_PREFIX = "cddae:list:"


class RedisOnline:
    def __init__(self, client: aioredis.Redis, window: float, retain: int):
        self._client, self.window, self.retain = client, window, retain
        self._record = client.register_script(_RECORD)
        self._attribute = client.register_script(_ATTRIBUTE)

    async def record(self, impressions: Sequence[Impression]) -> None:
        try:
            async with self._client.pipeline(transaction=False) as pipe:
                for imp in impressions:
                    keys = [RECORD_PREFIX + imp.id, f"{RECORD_PREFIX}{imp.id}:items",
                            f"cddae:user:{imp.user}:lists", COUNTS[0], IMPRESSIONS]  # fmt: skip
                    args = [imp.id, imp.user or "", imp.version, imp.variant or "", imp.time,
                            imp.hour, int(self.window), USER_LISTS, self.retain,
                            json.dumps(imp.items), *imp.items]  # fmt: skip
                    await self._record(keys=keys, args=args, client=pipe)
                await pipe.execute()
        except (TimeoutError, RedisError, OSError) as error:
            raise StoreUnavailable("the store (Redis) did not record impressions") from error

    async def attribute(self, user, items, list_id, now) -> list[str]:
        keys = [f"cddae:user:{user}:lists", COUNTS[1]]
        args = [user, now, self.window, list_id or "", RECORD_PREFIX, *items]
        try:
            reply = await self._attribute(keys=keys, args=args)
        except (TimeoutError, RedisError, OSError) as error:
            raise StoreUnavailable("the store (Redis) did not attribute") from error
        ids = [r.decode() for r in reply]
        if ids == ["!unknown"]:
            raise UnknownList(f"recommendation_id {list_id!r} names no list served to {user!r}")
        return ids

    async def counts(self) -> Counts:
        try:
            lists, clicked = await asyncio.gather(*(self._client.hgetall(k) for k in COUNTS))
        except (TimeoutError, RedisError, OSError) as error:
            raise StoreUnavailable("the store (Redis) did not answer") from error
        counts = Counts()
        for table, column in ((lists, 0), (clicked, 1)):
            for cell, value in table.items():
                version, _, hour = cell.decode().rpartition("|")
                counts.add(version, int(hour), **{("lists", "clicked")[column]: int(value)})
        return counts

    def close(self) -> None:
        pass


# --- The file store ------------------------------------------------------------------------------


@dataclass
class _Listed:
    user: str | None
    version: str
    hour: int
    time: float
    items: frozenset[str]
    clicked: bool = False


class FileOnline:
    """Impressions and clicks as JSON lines beside the interaction log, replayed at start; the
    lists of the attribution window in memory (the newest `MAX_WINDOW_LISTS`).

    The log rotates past `retain_bytes`: it becomes `<log>.1` (the one before goes) and a new
    log starts. Each log opens with a segment number; the snapshot holds the counts of every
    segment before `.1` and names the last one it covers, so a crash between its steps never
    counts a segment twice or loses one."""

    def __init__(self, path: Path, window: float, retain_bytes: int):
        self.path, self.window, self.retain_bytes = path, window, retain_bytes
        self.older = path.with_name(path.name + ".1")
        self.snapshot = path.with_name(path.name + ".counts.json")
        self._counts = Counts()  # everything
        self._covered, self._segment = -1, 0  # the snapshot's last segment; the live one's
        self._older_counts, self._current_counts = Counts(), Counts()
        self._lists: OrderedDict[str, _Listed] = OrderedDict()
        self._by_user: dict[str, list[str]] = {}
        self._writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="online-write")
        path.parent.mkdir(parents=True, exist_ok=True)
        self._load()
        self._handle = path.open("ab", buffering=0)
        if self._handle.tell() == 0:  # a new log: after `.1`'s segment, never the same number
            self._segment += 1 if self.older.exists() else 0
            self._write_header()

    def _load(self) -> None:
        with contextlib.suppress(FileNotFoundError, ValueError, KeyError, TypeError):
            data = json.loads(self.snapshot.read_text())
            self._covered = int(data["covers"])
            for version, hours in data["counts"].items():
                for hour, (lists, clicked) in hours.items():
                    self._counts.add(version, int(hour), lists, clicked)
        for path, segment_counts in ((self.older, self._older_counts),
                                     (self.path, self._current_counts)):  # fmt: skip
            with contextlib.suppress(FileNotFoundError), path.open("rb") as handle:
                for number, line in enumerate(handle):
                    if not line.endswith(b"\n"):
                        break  # a torn last line: never acknowledged
                    with contextlib.suppress(ValueError, KeyError, TypeError):
                        record = json.loads(line)
                        if number == 0 and record.get("t") == "segment":
                            self._segment = max(self._segment, int(record["segment"]))
                            if record["segment"] <= self._covered:
                                break  # already in the snapshot
                            continue
                        self._apply(record, segment_counts)

    def _write_header(self) -> None:
        header = json.dumps({"t": "segment", "segment": self._segment}) + "\n"
        os.write(self._handle.fileno(), header.encode())
        os.fsync(self._handle.fileno())

    def _apply(self, record: dict, segment: Counts) -> None:
        if record["t"] == "list":
            imp = Impression(record["id"], record["user"], record["version"],
                             record["variant"], tuple(record["items"]), record["time"])  # fmt: skip
            for counts in (self._counts, segment):
                counts.add(imp.version, imp.hour, lists=1)
            self._remember(imp)
        elif record["t"] == "click":
            for counts in (self._counts, segment):
                counts.add(record["version"], record["hour"], clicked=1)
            listed = self._lists.get(record["id"])
            if listed is not None:
                listed.clicked = True

    def _remember(self, imp: Impression) -> None:
        self._lists[imp.id] = _Listed(imp.user, imp.version, imp.hour, imp.time,
                                      frozenset(imp.items))  # fmt: skip
        if imp.user is not None:
            recent = self._by_user.setdefault(imp.user, [])
            recent.append(imp.id)
            del recent[:-USER_LISTS]
        while len(self._lists) > MAX_WINDOW_LISTS:  # the oldest list, and its user's entry
            old_id, old = self._lists.popitem(last=False)
            recent = self._by_user.get(old.user) if old.user is not None else None
            if recent and recent[0] == old_id:
                recent.pop(0)
                if not recent:
                    del self._by_user[old.user]  # type: ignore[arg-type]

    def _append(self, records: list[dict]) -> None:
        payload = b"".join(json.dumps(r, separators=(",", ":")).encode() + b"\n" for r in records)
        try:
            os.write(self._handle.fileno(), payload)
            os.fsync(self._handle.fileno())
        except OSError as error:
            raise StoreUnavailable(f"cannot append to {self.path.name}: {error}") from None
        for record in records:
            self._apply(record, self._current_counts)
        if os.fstat(self._handle.fileno()).st_size > self.retain_bytes:
            try:  # upkeep: the records are written whatever happens here
                self._rotate()
            except OSError as error:
                log.warning("could not rotate %s: %s", self.path.name, error)
                if self._handle.closed:
                    self._handle = self.path.open("ab", buffering=0)

    def _rotate(self) -> None:
        """Snapshot (every segment up to `.1`'s, atomically), then the log becomes `.1` and a
        new segment starts."""
        covered = Counts()  # the total, less the live segment (which becomes `.1`)
        for source, sign in ((self._counts, 1), (self._current_counts, -1)):
            for version, hours in source.by_version.items():
                for hour, (lists, clicked) in hours.items():
                    covered.add(version, hour, sign * lists, sign * clicked)
        data = {"covers": self._segment - 1,
                "counts": {v: {str(h): c for h, c in hours.items()}
                           for v, hours in covered.by_version.items()}}  # fmt: skip
        tmp = self.snapshot.with_name(self.snapshot.name + ".tmp")
        tmp.write_text(json.dumps(data))
        with tmp.open("rb") as handle:
            os.fsync(handle.fileno())
        os.replace(tmp, self.snapshot)
        self._handle.close()
        os.replace(self.path, self.older)
        self._older_counts, self._current_counts = self._current_counts, Counts()
        self._segment += 1
        self._handle = self.path.open("ab", buffering=0)
        self._write_header()

    async def _write(self, records: list[dict]) -> None:
        await asyncio.get_running_loop().run_in_executor(self._writer, self._append, records)

    async def record(self, impressions: Sequence[Impression]) -> None:
        await self._write([{"t": "list", **asdict(imp)} for imp in impressions])

    async def attribute(self, user, items, list_id, now) -> list[str]:
        if list_id is not None:
            listed = self._lists.get(list_id)
            if listed is None or listed.user not in (None, user) or now - listed.time > self.window:
                raise UnknownList(f"recommendation_id {list_id!r} names no list served to {user!r}")
            ids = [list_id]
        else:
            ids = []
            recent = [i for i in reversed(self._by_user.get(user, [])) if i in self._lists]
            for item in items:
                for rid in recent:
                    listed = self._lists[rid]
                    if now - listed.time <= self.window and item in listed.items:
                        if rid not in ids:
                            ids.append(rid)
                        break
        clicks = []
        for rid in ids:
            listed = self._lists[rid]
            if not listed.clicked:
                listed.clicked = True
                clicks.append({"t": "click", "id": rid, "version": listed.version,
                               "hour": listed.hour})  # fmt: skip
        if clicks:
            await self._write(clicks)
        return ids

    async def counts(self) -> Counts:
        return Counts({v: {h: list(c) for h, c in hours.items()}
                       for v, hours in self._counts.by_version.items()})  # fmt: skip

    def close(self) -> None:
        self._writer.shutdown(wait=True)
        with contextlib.suppress(OSError):
            self._handle.close()
