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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from redis import asyncio as aioredis
from redis.exceptions import RedisError

from service.state.lane import Lane
from service.state.scripts import run_script
from service.state.store import StoreUnavailable

log = logging.getLogger("cddae.service")
USER_LISTS = 50  # lists per user that window attribution looks at (the most recent)
MAX_WINDOW_LISTS = 200_000  # lists the file store keeps for attribution (the newest)
IMPRESSIONS = "cddae:impressions"  # the Redis stream of impressions
COUNTS = ("cddae:online:lists", "cddae:online:clicked")  # hashes: "<version>|<hour>" → count


class UnknownList(ValueError):
    """A recommendation_id that names a list served to another user (→ 422)."""


class MissingList(LookupError):
    """A recommendation_id the store does not hold: expired with the window, never recorded
    (the process died before its batch went out), or not yet there (another replica's)."""


@dataclass(frozen=True)
class Impression:
    id: str
    user: str | None  # None: an ad-hoc list (POST /score, similar items)
    version: str
    variant: str | None  # "control" | "candidate" while an experiment runs
    items_json: str  # the items listed, a JSON array (as the answer held them: never re-encoded)
    time: float
    arm: str | None = None  # the experiment's variant as counted: "<experiment id>:<variant>"

    @property
    def items(self) -> tuple[str, ...]:
        return tuple(json.loads(self.items_json))

    def json(self) -> str:
        """The impression as one JSON object (the Redis record and stream entry)."""
        head = json.dumps({"id": self.id, "user": self.user, "version": self.version,
                           "variant": self.variant, "arm": self.arm, "cell": self.cell,
                           "time": self.time}, separators=(",", ":"))  # fmt: skip
        return f'{head[:-1]},"items":{self.items_json}}}'

    def line(self) -> bytes:
        """As the file store writes it: one JSON line, the items as the answer held them (never
        decoded and encoded again: that was most of an embedded answer's recording)."""
        head = json.dumps({"t": "list", "id": self.id, "user": self.user,
                           "version": self.version, "variant": self.variant},
                          separators=(",", ":"))  # fmt: skip
        tail = json.dumps({"time": self.time, "arm": self.arm}, separators=(",", ":"))
        return f'{head[:-1]},"items":{self.items_json},{tail[1:]}\n'.encode()

    @property
    def hour(self) -> int:
        return int(self.time // 3600)

    @property
    def cell(self) -> str:
        """Where the counts add it up: `<version>|<hour>`, and `|<arm>` in an experiment."""
        return f"{self.version}|{self.hour}" + (f"|{self.arm}" if self.arm else "")


@dataclass(frozen=True)
class Shadowed:
    """A shadow experiment's candidate scored a user on the side: how much of the served list
    its own list held (|served ∩ candidate's| / |served|)."""

    experiment: str
    version: str
    overlap: float


@dataclass
class Counts:
    """Lists and clicked lists per cell (`<version>|<hour>[|<arm>]`); per shadow experiment
    and candidate (`<experiment>|<version>`), lists scored and the sum of their overlaps."""

    cells: dict[str, list[int]] = field(default_factory=dict)
    shadow: dict[str, list[float]] = field(default_factory=dict)

    def add(self, cell: str, lists: int = 0, clicked: int = 0) -> None:
        row = self.cells.setdefault(cell, [0, 0])
        row[0] += lists
        row[1] += clicked

    def add_shadow(self, experiment: str, version: str, lists: int, overlap: float) -> None:
        row = self.shadow.setdefault(f"{experiment}|{version}", [0, 0.0])
        row[0] += lists
        row[1] += overlap

    def merge(self, other: Counts, sign: int = 1) -> None:
        for cell, (lists, clicked) in other.cells.items():
            self.add(cell, sign * lists, sign * clicked)
        for key, (lists, overlap) in other.shadow.items():
            experiment, version = key.split("|", 1)
            self.add_shadow(experiment, version, sign * int(lists), sign * overlap)

    def copy(self) -> Counts:
        copy = Counts()
        copy.merge(self)
        return copy

    @property
    def by_version(self) -> dict[str, dict[int, list[int]]]:
        """version → hour → [lists, clicked], every arm added up."""
        table: dict[str, dict[int, list[int]]] = {}
        for cell, (lists, clicked) in self.cells.items():
            version, hour, _ = parse_cell(cell)
            row = table.setdefault(version, {}).setdefault(hour, [0, 0])
            row[0] += lists
            row[1] += clicked
        return table

    def by_arm(self, arm: str) -> dict[str, list[int]]:
        """version → [lists, clicked] of one experiment arm (`<experiment id>:<variant>`)."""
        table: dict[str, list[int]] = {}
        for cell, (lists, clicked) in self.cells.items():
            version, _, at = parse_cell(cell)
            if at == arm:
                row = table.setdefault(version, [0, 0])
                row[0] += lists
                row[1] += clicked
        return table


def parse_cell(cell: str) -> tuple[str, int, str | None]:
    """(version, hour, arm or None) from `<version>|<hour>[|<arm>]` (versions hold no `|`)."""
    version, hour, *arm = cell.split("|", 2)
    return version, int(hour), (arm[0] or None) if arm else None


class Online(Protocol):
    async def record(
        self, impressions: Sequence[Impression], shadowed: Sequence[Shadowed] = ()
    ) -> None: ...

    async def attribute(
        self, user: str, items: Sequence[str], list_id: str | None, now: float, mark: bool = True
    ) -> list[str]:
        """The ids of the lists these interactions are attributed to (UnknownList when
        `list_id` names another user's list, MissingList when the store does not hold it),
        counted as clicked unless `mark` is False (a check before the interactions are
        written: a refused write counts no click)."""
        ...

    async def counts(self) -> Counts: ...

    def close(self) -> None: ...


# --- Redis -------------------------------------------------------------------------------------

# A moment's impressions in one call. Each: its record (a JSON string expiring with the
# window: user, version, variant, cell, items…), the user's recent lists (capped), a stream
# entry; then the counts, one HINCRBY per cell. KEYS: lists counts, stream. ARGV: window, user
# cap, stream cap, record prefix, then five per impression: id, user, time, cell, record.
_RECORD = """
local window, cap, retain, prefix = ARGV[1], tonumber(ARGV[2]), ARGV[3], ARGV[4]
local cells = {}
for k = 5, #ARGV, 5 do
  local id, user, at, cell, record = ARGV[k], ARGV[k + 1], ARGV[k + 2], ARGV[k + 3], ARGV[k + 4]
  redis.call('set', prefix .. id, record, 'EX', window)
  if user ~= '' then
    local lists = 'cddae:user:' .. user .. ':lists'
    redis.call('zadd', lists, at, id)
    if redis.call('zcard', lists) > cap then redis.call('zremrangebyrank', lists, 0, -cap - 1) end
    redis.call('expire', lists, window)
  end
  cells[cell] = (cells[cell] or 0) + 1
  redis.call('xadd', KEYS[2], 'MAXLEN', '~', retain, '*', 'impression', record)
end
for cell, n in pairs(cells) do redis.call('hincrby', KEYS[1], cell, n) end
return 1
"""

# Attribution, all in one step. KEYS: the user's lists, clicked counts. ARGV: user, now,
# window, list id or '', record key prefix, '1' to mark the lists clicked or '0' to only find
# them, then the items. Returns the attributed ids, or {'!foreign'} when the named list is
# another user's, {'!missing'} when it is not there. A list is clicked once: its `:clicked` key
# (SET NX) decides.
_ATTRIBUTE = """
local prefix, window = ARGV[5], ARGV[3]
local function load(id)  -- {user, cell, items}, or nil when the list is gone
  local key = prefix .. id
  local kind = redis.call('type', key).ok
  if kind == 'string' then
    local r = cjson.decode(redis.call('get', key))
    local user = r.user
    if user == nil or user == cjson.null then user = '' end  -- an ad-hoc list: nobody's
    return {user, r.cell, r.items}
  elseif kind == 'hash' then  -- a record of the earlier layout (fields, items in a set)
    local f = redis.call('hmget', key, 'user', 'cell', 'version', 'hour')
    return {f[1], f[2] or (f[3] .. '|' .. f[4]), redis.call('smembers', key .. ':items')}
  end
  return nil
end
local function mark(id, list)
  if ARGV[6] ~= '1' then return end
  if redis.call('set', prefix .. id .. ':clicked', '1', 'NX', 'EX', window) then
    redis.call('hincrby', KEYS[2], list[2], 1)
  end
end
if ARGV[4] ~= '' then
  local list = load(ARGV[4])
  if not list then return {'!missing'} end
  if list[1] ~= '' and list[1] ~= ARGV[1] then return {'!foreign'} end
  mark(ARGV[4], list)
  return {ARGV[4]}
end
local ids = redis.call('zrevrangebyscore', KEYS[1], '+inf', tonumber(ARGV[2]) - tonumber(window))
local lists, held = {}, {}  -- list id → its record; → the set of its items
local out, seen = {}, {}
for k = 7, #ARGV do
  for _, id in ipairs(ids) do
    if lists[id] == nil then
      lists[id], held[id] = load(id) or false, {}
      if lists[id] then
        for _, item in ipairs(lists[id][3]) do held[id][item] = true end
      end
    end
    if held[id][ARGV[k]] then
      mark(id, lists[id])
      if not seen[id] then seen[id] = true; out[#out + 1] = id end
      break
    end
  end
end
return out
"""

RECORD_PREFIX = "cddae:list:"
SHADOW = "cddae:online:shadow"  # hash: "<experiment>|<version>|lists" and "…|overlap"


class RedisOnline:
    """With a `lane`, impressions are recorded on it: a connection of their own whose timeout
    is a background write's, not a read's. On redis-py's client with the reads' 50 ms, a
    saturated event loop that read the reply late counted recorded batches as lost (and
    dropped the connection): 244 of 14,801 at 1,800 requests/s, every one in the stream."""

    def __init__(
        self, client: aioredis.Redis, window: float, retain: int, lane: Lane | None = None
    ):
        self._client, self.window, self.retain, self._lane = client, window, retain, lane
        self._record = client.register_script(_RECORD)
        self._attribute = client.register_script(_ATTRIBUTE)

    async def record(
        self, impressions: Sequence[Impression], shadowed: Sequence[Shadowed] = ()
    ) -> None:
        args: list = [int(self.window), USER_LISTS, self.retain, RECORD_PREFIX]
        for imp in impressions:
            args += [imp.id, imp.user or "", imp.time, imp.cell, imp.json()]
        try:
            if impressions:
                await run_script(self._record, [COUNTS[0], IMPRESSIONS], args, self._lane)
            if shadowed:
                totals = Counts()
                for seen in shadowed:
                    totals.add_shadow(seen.experiment, seen.version, 1, seen.overlap)
                async with self._client.pipeline(transaction=True) as pipe:
                    for key, (lists, overlap) in totals.shadow.items():
                        pipe.hincrby(SHADOW, f"{key}|lists", int(lists))
                        pipe.hincrbyfloat(SHADOW, f"{key}|overlap", overlap)
                    await pipe.execute()
        except (TimeoutError, RedisError, OSError) as error:
            raise StoreUnavailable("the store (Redis) did not record impressions") from error

    async def attribute(self, user, items, list_id, now, mark=True) -> list[str]:
        keys = [f"cddae:user:{user}:lists", COUNTS[1]]
        args = [user, now, self.window, list_id or "", RECORD_PREFIX, "1" if mark else "0", *items]
        try:
            reply = await run_script(self._attribute, keys, args)
        except (TimeoutError, RedisError, OSError) as error:
            raise StoreUnavailable("the store (Redis) did not attribute") from error
        ids = [r.decode() for r in reply]
        if ids == ["!foreign"]:
            raise UnknownList(f"recommendation_id {list_id!r} names no list served to {user!r}")
        if ids == ["!missing"]:
            raise MissingList(list_id)
        return ids

    async def counts(self) -> Counts:
        try:
            lists, clicked, shadow = await asyncio.gather(
                *(self._client.hgetall(k) for k in (*COUNTS, SHADOW))
            )
        except (TimeoutError, RedisError, OSError) as error:
            raise StoreUnavailable("the store (Redis) did not answer") from error
        counts = Counts()
        for cell, value in lists.items():
            counts.add(cell.decode(), lists=int(value))
        for cell, value in clicked.items():
            counts.add(cell.decode(), clicked=int(value))
        for name, value in shadow.items():
            experiment, version, what = name.decode().split("|", 2)
            if what == "lists":
                counts.add_shadow(experiment, version, int(value), 0.0)
            else:
                counts.add_shadow(experiment, version, 0, float(value))
        return counts

    def close(self) -> None:
        if self._lane is not None:
            self._lane.close()


# --- The file store ------------------------------------------------------------------------------


@dataclass
class _Listed:
    user: str | None
    cell: str
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

    def __init__(self, path: Path, window: float, retain_bytes: int, read_only: bool = False):
        """`read_only`: read the counts (a report beside a running service), write nothing."""
        self.path, self.window, self.retain_bytes = path, window, retain_bytes
        self.older = path.with_name(path.name + ".1")
        self.snapshot = path.with_name(path.name + ".counts.json")
        self._counts = Counts()  # everything
        self._covered, self._segment = -1, 0  # the snapshot's last segment; the live one's
        self._older_counts, self._current_counts = Counts(), Counts()
        self._lists: OrderedDict[str, _Listed] = OrderedDict()
        self._by_user: dict[str, list[str]] = {}
        self._writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="online-write")
        self._load()
        if read_only:
            return
        path.parent.mkdir(parents=True, exist_ok=True)
        _cut_torn_tail(path)
        self._handle = path.open("ab", buffering=0)
        if os.fstat(self._handle.fileno()).st_size == 0:  # a new log: after `.1`'s segment,
            # never the same number
            self._segment += 1 if self.older.exists() else 0
            self._write_header()

    def _load(self) -> None:
        with contextlib.suppress(FileNotFoundError, ValueError, KeyError, TypeError):
            data = json.loads(self.snapshot.read_text())
            self._covered = int(data["covers"])
            for cell, (lists, clicked) in data.get("cells", {}).items():
                self._counts.add(cell, lists, clicked)
            for version, hours in data.get("counts", {}).items():  # before cells
                for hour, (lists, clicked) in hours.items():
                    self._counts.add(f"{version}|{hour}", lists, clicked)
            for key, (lists, overlap) in data.get("shadow", {}).items():
                experiment, version = key.split("|", 1)
                self._counts.add_shadow(experiment, version, lists, overlap)
        for path, segment_counts in ((self.older, self._older_counts),
                                     (self.path, self._current_counts)):  # fmt: skip
            with contextlib.suppress(FileNotFoundError), path.open("rb") as handle:
                for number, line in enumerate(handle):
                    if not line.endswith(b"\n"):
                        break  # a torn last line: never acknowledged (cut before appending)
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

    def _apply(self, record: dict | Impression, segment: Counts) -> None:
        if isinstance(record, Impression):
            self._listed(record, segment)
        elif record["t"] == "list":
            imp = Impression(record["id"], record["user"], record["version"],
                             record["variant"], json.dumps(record["items"]), record["time"],
                             record.get("arm"))  # fmt: skip
            self._listed(imp, segment)
        elif record["t"] == "click":
            cell = record.get("cell") or f"{record['version']}|{record['hour']}"
            for counts in (self._counts, segment):
                counts.add(cell, clicked=1)
            listed = self._lists.get(record["id"])
            if listed is not None:
                listed.clicked = True
        elif record["t"] == "shadow":
            for counts in (self._counts, segment):
                counts.add_shadow(record["experiment"], record["version"], int(record["lists"]),
                                  float(record["overlap"]))  # fmt: skip

    def _listed(self, imp: Impression, segment: Counts) -> None:
        for counts in (self._counts, segment):
            counts.add(imp.cell, lists=1)
        self._remember(imp)

    def _remember(self, imp: Impression) -> None:
        self._lists[imp.id] = _Listed(imp.user, imp.cell, imp.time, frozenset(imp.items))
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

    def _append(self, records: Sequence[dict | Impression]) -> None:
        payload = b"".join(
            r.line()
            if isinstance(r, Impression)
            else json.dumps(r, separators=(",", ":")).encode() + b"\n"
            for r in records
        )
        fd = self._handle.fileno()
        before = os.fstat(fd).st_size
        try:
            written = os.write(fd, payload)
            if written != len(payload):
                raise OSError(f"wrote {written} of {len(payload)} bytes")
            os.fsync(fd)
        except OSError as error:
            with contextlib.suppress(OSError):  # a part written must not join the next line
                os.ftruncate(fd, before)
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
        covered = self._counts.copy()  # the total, less the live segment (which becomes `.1`)
        covered.merge(self._current_counts, -1)
        data = {"covers": self._segment - 1, "cells": covered.cells, "shadow": covered.shadow}
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

    async def _write(self, records: Sequence[dict | Impression]) -> None:
        await asyncio.get_running_loop().run_in_executor(self._writer, self._append, records)

    async def record(
        self, impressions: Sequence[Impression], shadowed: Sequence[Shadowed] = ()
    ) -> None:
        records: list[dict | Impression] = list(impressions)
        totals = Counts()
        for seen in shadowed:
            totals.add_shadow(seen.experiment, seen.version, 1, seen.overlap)
        for key, (lists, overlap) in totals.shadow.items():
            experiment, version = key.split("|", 1)
            records.append({"t": "shadow", "experiment": experiment, "version": version,
                            "lists": int(lists), "overlap": overlap})  # fmt: skip
        if records:
            await self._write(records)

    async def attribute(self, user, items, list_id, now, mark=True) -> list[str]:
        if list_id is not None:
            listed = self._lists.get(list_id)
            if listed is None or now - listed.time > self.window:
                raise MissingList(list_id)
            if listed.user not in (None, user):
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
        if not mark:
            return ids
        clicks = []
        for rid in ids:
            listed = self._lists[rid]
            if not listed.clicked:
                listed.clicked = True
                clicks.append({"t": "click", "id": rid, "cell": listed.cell})
        if clicks:
            await self._write(clicks)
        return ids

    async def counts(self) -> Counts:
        return self._counts.copy()

    def close(self) -> None:
        self._writer.shutdown(wait=True)
        with contextlib.suppress(OSError, AttributeError):  # AttributeError: read-only
            self._handle.close()


def _cut_torn_tail(path: Path, chunk: int = 1 << 16) -> None:
    """Cut a last line without its newline (a crash mid-write): else the next line appended
    joins it and both are lost to the replay."""
    try:
        fd = os.open(path, os.O_RDWR)
    except FileNotFoundError:
        return
    try:
        _cut(fd, chunk)
    finally:
        os.close(fd)


def _cut(fd: int, chunk: int) -> None:
    size = os.fstat(fd).st_size
    end = size
    while end > 0:
        start = max(0, end - chunk)
        block = os.pread(fd, end - start, start)
        if end == size and block.endswith(b"\n"):
            return
        newline = block.rfind(b"\n")
        if newline >= 0:
            os.ftruncate(fd, start + newline + 1)
            return
        end = start
    os.ftruncate(fd, 0)


def impressions_log(interactions_log: Path) -> Path:
    """Where the file store keeps impressions: beside its interaction log."""
    return interactions_log.with_name(interactions_log.name + ".impressions")


def read_counts(redis_url: str | None, interactions_log: Path, timeout: float = 5.0) -> Counts:
    """The online counts as the service keeps them (Redis, else the file store's log, read
    only): for reports and the experiment commands, outside the service."""
    if redis_url:

        async def fetch() -> Counts:
            client = aioredis.Redis.from_url(redis_url, socket_timeout=timeout)
            try:
                return await RedisOnline(client, 0, 0).counts()
            finally:
                await client.aclose()

        return asyncio.run(fetch())
    reader = FileOnline(impressions_log(interactions_log), 0, 0, read_only=True)
    try:
        return asyncio.run(reader.counts())
    finally:
        reader.close()
