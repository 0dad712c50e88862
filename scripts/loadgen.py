"""Open-loop HTTP load on loopback: a constant arrival rate, latency from the intended send time.

A closed-loop client (send, wait, send) slows down with the server and hides its queue; here
request i is due at start + i / rate whatever happened before, and its latency counts from that
moment, so time spent waiting for a free connection or in the server's backlog is counted
(no coordinated omission). Raw HTTP/1.1 over kept-alive asyncio connections: the client's own
cost per request is a few tens of microseconds, well below what it measures.

Bounded: loopback only, at most `MAX_SECONDS` and `MAX_CONNECTIONS`.

    from scripts.loadgen import Request, open_loop, closed_loop
    result = asyncio.run(open_loop("127.0.0.1", 8000, make_request, rate=500, seconds=10))
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

MAX_SECONDS = 60
MAX_CONNECTIONS = 512
LOOPBACK = ("127.0.0.1", "localhost", "::1")
IDLE_REUSE_SECONDS = 3.0  # below the servers' keep-alive timeout (5 s), as HTTP clients do


@dataclass(frozen=True)
class Request:
    method: str
    path: str
    body: bytes = b""

    def encode(self, host: str) -> bytes:
        head = f"{self.method} {self.path} HTTP/1.1\r\nHost: {host}\r\n"
        if self.body:
            head += f"Content-Type: application/json\r\nContent-Length: {len(self.body)}\r\n"
        return head.encode() + b"\r\n" + self.body


@dataclass
class Result:
    rate: float  # intended requests per second (0: closed loop)
    seconds: float  # from the first intended send to the last answer
    latencies_ms: np.ndarray  # of the answered requests, from their intended send time
    errors: dict[str, int] = field(default_factory=dict)
    # With `tag`: each answered request's tag, in the order of `latencies_ms` — interleaved
    # kinds of request share one run's noise, and are then summarised apart (`of`).
    tags: np.ndarray | None = None

    def of(self, tag: str) -> Result:
        """The answered requests of one tag (errors stay with the whole run)."""
        assert self.tags is not None
        return Result(self.rate, self.seconds, self.latencies_ms[self.tags == tag], {})

    @property
    def achieved(self) -> float:
        return len(self.latencies_ms) / self.seconds if self.seconds else 0.0

    def summary(self) -> dict[str, float | int | dict]:
        lat = self.latencies_ms if len(self.latencies_ms) else np.zeros(1)
        return {
            "rate": self.rate,
            "achieved": round(self.achieved, 1),
            "requests": len(self.latencies_ms) + sum(self.errors.values()),
            "errors": sum(self.errors.values()),
            "error_kinds": dict(self.errors),
            **{f"p{q}": round(float(np.percentile(lat, q)), 3) for q in (50, 90, 99)},
            "max": round(float(lat.max()), 3),
        }


class Connection:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter):
        self.reader, self.writer = reader, writer
        self.used = time.monotonic()

    async def exchange(self, payload: bytes) -> int:
        """Send one request, read one response; return its status."""
        self.writer.write(payload)
        head = await self.reader.readuntil(b"\r\n\r\n")
        status = int(head[9:12])
        length = None
        for line in head.split(b"\r\n")[1:]:
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value)
            elif name.strip().lower() == b"transfer-encoding":
                raise ValueError("chunked responses are not expected here")
        if length:
            await self.reader.readexactly(length)
        if b"connection: close" in head.lower():
            raise ConnectionResetError("server closed the connection")
        return status

    def close(self) -> None:
        self.writer.close()


class Pool:
    """Idle kept-alive connections; a new one when none is idle, up to the cap."""

    def __init__(self, host: str, port: int, cap: int):
        self.host, self.port, self.cap = host, port, min(cap, MAX_CONNECTIONS)
        self.idle: list[Connection] = []
        self.opened = 0
        self.freed = asyncio.Condition()

    async def take(self) -> Connection:
        async with self.freed:
            while not self.idle and self.opened >= self.cap:
                await self.freed.wait()
            while self.idle:
                connection = self.idle.pop()
                if time.monotonic() - connection.used < IDLE_REUSE_SECONDS:
                    return connection
                connection.close()  # the server may be closing it right now: do not race it
                self.opened -= 1
            self.opened += 1
        try:
            return Connection(*await asyncio.open_connection(self.host, self.port))
        except OSError:
            await self.drop(None)
            raise

    async def give(self, connection: Connection) -> None:
        connection.used = time.monotonic()
        async with self.freed:
            self.idle.append(connection)
            self.freed.notify()

    async def drop(self, connection: Connection | None) -> None:
        if connection is not None:
            connection.close()
        async with self.freed:
            self.opened -= 1
            self.freed.notify()

    def close(self) -> None:
        for connection in self.idle:
            connection.close()


def _check(host: str, seconds: float) -> None:
    if host not in LOOPBACK:
        raise ValueError(f"load goes to loopback only, not {host}")
    if not 0 < seconds <= MAX_SECONDS:
        raise ValueError(f"a run lasts at most {MAX_SECONDS} s")


async def _one(
    pool: Pool, payload: bytes, due: float, out: list, errors: dict, tag: str = ""
) -> None:
    connection = None
    try:
        connection = await pool.take()
        status = await asyncio.wait_for(connection.exchange(payload), timeout=10)
    except (OSError, asyncio.IncompleteReadError, ValueError, TimeoutError) as error:
        errors[type(error).__name__] = errors.get(type(error).__name__, 0) + 1
        with contextlib.suppress(Exception):
            await pool.drop(connection)
        return
    await pool.give(connection)
    if status >= 400:
        errors[f"HTTP {status}"] = errors.get(f"HTTP {status}", 0) + 1
        return
    out.append((time.perf_counter() - due, tag))


async def open_loop(
    host: str,
    port: int,
    make: Callable[[int], Request],
    rate: float,
    seconds: float,
    connections: int = 256,
    tag: Callable[[int], str] | None = None,
) -> Result:
    """Request i at start + i / rate for `seconds`; `make(i)` builds it, `tag(i)` labels it."""
    _check(host, seconds)
    count = int(rate * seconds)
    payloads = [make(i).encode(host) for i in range(count)]  # built before the clock starts
    labels = [tag(i) if tag is not None else "" for i in range(count)]
    pool, latencies, errors, tasks = Pool(host, port, connections), [], {}, []
    start = time.perf_counter() + 0.05
    for i, payload in enumerate(payloads):
        due = start + i / rate
        delay = due - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(_one(pool, payload, due, latencies, errors, labels[i])))
    await asyncio.gather(*tasks)
    elapsed = time.perf_counter() - start
    pool.close()
    seconds_taken = np.array([t for t, _ in latencies])
    tags = np.array([t for _, t in latencies]) if tag is not None else None
    return Result(rate, elapsed, seconds_taken * 1000, errors, tags)


async def closed_loop(
    host: str, port: int, make: Callable[[int], Request], clients: int, seconds: float
) -> Result:
    """`clients` connections sending back to back: the most the server sustains."""
    _check(host, seconds)
    latencies: list[tuple[float, str]] = []
    errors: dict[str, int] = {}
    stop = time.perf_counter() + seconds
    counter = iter(range(10**9))

    async def client() -> None:
        pool = Pool(host, port, 1)
        while time.perf_counter() < stop:
            await _one(pool, make(next(counter)).encode(host), time.perf_counter(), latencies,
                       errors)  # fmt: skip
        pool.close()

    start = time.perf_counter()
    await asyncio.gather(*(client() for _ in range(clients)))
    seconds_taken = np.array([t for t, _ in latencies])
    return Result(0, time.perf_counter() - start, seconds_taken * 1000, errors)
