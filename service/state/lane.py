"""A Redis connection of its own for the hot path: requests written back to back on one socket
(pipelined: Redis answers in order), replies parsed by hiredis, one future each.

redis-py's asyncio client took about 35 µs of CPU per command here — a pool checkout, a retry
wrapper and a health check around every call — a tenth of an uncached answer
(docs/PERFORMANCE.md); this takes about 9. The reads every recommendation makes go this way
(`RedisStore.user_state`, the cache, the catalogue generation); the cache's writes, best
effort by nature, go on a lane of their own (`call_many`: one round trip for the answers of a
moment); the store's writes keep redis-py and its handling.

Failure is the same as redis-py's to the caller: `redis.exceptions.ConnectionError` or
`TimeoutError` (RedisError), which the store turns into StoreUnavailable. A reply late past the
timeout drops the connection and fails everything waiting on it (its replies can no longer be
matched to requests); the next call connects again. `redis://`, `rediss://` (TLS, its context
built by redis-py from the URL's `ssl_*` options, so both clients verify alike) and `unix://`.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import ssl
from collections.abc import Sequence
from typing import Any

import hiredis
from redis.asyncio.connection import (
    Connection,
    SSLConnection,
    UnixDomainSocketConnection,
    parse_url,
)
from redis.exceptions import ConnectionError, NoScriptError, RedisError, ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

# The least a connection may take (TCP, a TLS handshake, AUTH, SELECT): under load the event
# loop reads each step late, and a TLS handshake has several; bounded by the reads' 50 ms, a
# lane over TLS could fail to reconnect for as long as the load lasted.
CONNECT_SECONDS = 1.0
CLOSED_WHILE_OPENING = "the connection to Redis was closed while it was opening"


def pack(args: tuple[Any, ...]) -> bytes:
    """A command in RESP: an array of bulk strings."""
    parts = [b"*%d\r\n" % len(args)]
    for arg in args:
        if isinstance(arg, str):
            arg = arg.encode()
        elif not isinstance(arg, bytes):
            arg = repr(arg).encode() if isinstance(arg, float) else str(arg).encode()
        parts.append(b"$%d\r\n%s\r\n" % (len(arg), arg))
    return b"".join(parts)


def _error(reply: hiredis.ReplyError) -> RedisError:
    text = str(reply)
    return NoScriptError(text) if text.startswith("NOSCRIPT") else ResponseError(text)


class _Protocol(asyncio.Protocol):
    def __init__(self) -> None:
        self.reader = hiredis.Reader()
        self.waiting: collections.deque[asyncio.Future] = collections.deque()
        self.transport: asyncio.Transport | None = None
        self.lost = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's is no subclass

    def data_received(self, data: bytes) -> None:
        self.reader.feed(data)
        while True:
            try:
                reply = self.reader.gets()
            except hiredis.ProtocolError:
                self.fail(ConnectionError("Redis sent a reply that cannot be parsed"))
                return
            if reply is False:
                return
            if not self.waiting:  # a reply nobody asked for: the stream is not ours to trust
                self.fail(ConnectionError("Redis sent a reply no request was waiting for"))
                return
            future = self.waiting.popleft()
            if future.done():  # its caller went away (cancelled)
                continue
            if isinstance(reply, hiredis.ReplyError):
                future.set_exception(_error(reply))
            else:
                future.set_result(reply)

    def connection_lost(self, exc: Exception | None) -> None:
        self.fail(ConnectionError("the connection to Redis was lost"))

    def fail(self, error: Exception) -> None:
        """Every waiting request gets `error`; the connection is closed and not used again."""
        self.lost = True
        while self.waiting:
            future = self.waiting.popleft()
            if not future.done():
                future.set_exception(error)
        if self.transport is not None:
            self.transport.abort()


class Lane:
    def __init__(
        self,
        host: str,
        port: int,
        db: int,
        username: str | None,
        password: str | None,
        timeout: float,
        *,
        tls: dict[str, Any] | None = None,
        path: str | None = None,
    ):
        """A lane to `host`:`port`, over TLS with redis-py's `ssl_*` options `tls`, or to the
        unix socket `path`."""
        self.host, self.port, self.db, self.tls, self.path = host, port, db, tls, path
        self.username, self.password, self.timeout = username, password, timeout
        # A connection (TCP, TLS's handshake, AUTH, SELECT) may take longer than one reply:
        # callers still wait at most `timeout`, the attempt goes on for the next ones.
        self.connect_timeout = max(timeout, CONNECT_SECONDS)
        self._protocol: _Protocol | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._connecting: asyncio.Future[_Protocol] | None = None
        self._closes = 0  # an attempt begun before a close must not leave a connection open

    @classmethod
    def from_url(cls, url: str, timeout: float) -> Lane | None:
        """A lane to the Redis at `url` (redis://, rediss://, unix://), or None for a
        connection class redis-py knows and this does not."""
        options = parse_url(url)
        kind = options.pop("connection_class", Connection)
        credentials = (int(options.get("db", 0) or 0), options.get("username"),
                       options.get("password"), timeout)  # fmt: skip
        host, port = options.get("host", "localhost"), int(options.get("port", 6379))
        if kind is Connection:
            return cls(host, port, *credentials)
        if kind is UnixDomainSocketConnection:
            return cls("", 0, *credentials, path=options.get("path") or "")
        if kind is SSLConnection:
            tls = {k: v for k, v in options.items() if k.startswith("ssl_")}
            return cls(host, port, *credentials, tls=tls)
        return None

    def tls_context(self) -> ssl.SSLContext:
        """The TLS context as redis-py builds it from the same options, made at each connect as
        redis-py does for each new connection: a certificate mounted or rotated after the start
        is read then, and one missing or unreadable is a connection error (the service
        degrades and retries), not a crash at start."""
        assert self.tls is not None
        options = {"ssl_password": _no_passphrase, **self.tls}  # never a prompt on a terminal
        try:
            return SSLConnection(**options).ssl_context.get()
        except (OSError, ValueError, RedisError) as error:  # ssl.SSLError is an OSError
            files = {k: v for k, v in self.tls.items() if k in TLS_FILES and v is not None}
            raise ConnectionError(f"the TLS settings {files} cannot be used: {error}") from None

    async def call(self, *args: Any) -> Any:
        """One command's reply (bytes, int, None or a list of them, as redis-py gives without
        decoding); a Redis error reply raised as redis-py would."""
        loop = asyncio.get_running_loop()
        protocol = self._current(loop) or await self._connect(loop)
        return await self._send(loop, protocol, args)

    async def call_many(self, commands: Sequence[tuple[Any, ...]]) -> list[Any]:
        """Many commands written at once (one round trip), each one's reply in order; a Redis
        error reply in its command's place as the exception redis-py would raise, so that one
        refused command does not hide the others' fate. A lost connection or a timeout is
        raised, as by `call`."""
        if not commands:
            return []
        loop = asyncio.get_running_loop()
        protocol = self._current(loop) or await self._connect(loop)
        transport = self._transport(protocol)
        futures = [loop.create_future() for _ in commands]
        protocol.waiting.extend(futures)
        transport.write(b"".join([pack(command) for command in commands]))
        # Replies come in order: the last one late means the connection is.
        timer = loop.call_later(self.timeout, self._expire, protocol, futures[-1])
        try:
            replies = await asyncio.gather(*futures, return_exceptions=True)
        finally:
            timer.cancel()
        for reply in replies:
            if isinstance(reply, (ConnectionError, RedisTimeoutError)):
                raise reply
        return replies

    def _current(self, loop: asyncio.AbstractEventLoop) -> _Protocol | None:
        """The open connection of this loop, if any."""
        if self._loop is not loop:  # another loop (tests): its connection is not this one's
            self._protocol, self._connecting, self._loop = None, None, loop
        protocol = self._protocol
        return None if protocol is None or protocol.lost else protocol

    @staticmethod
    def _transport(protocol: _Protocol) -> asyncio.Transport:
        transport = protocol.transport
        if protocol.lost or transport is None or transport.is_closing():
            # Accepted, then closed (Redis at maxclients, in protected mode, a proxy whose
            # Redis is down): a connection error like any other, never a RuntimeError
            protocol.lost = True
            raise ConnectionError("the connection to Redis was closed")
        return transport

    async def _send(
        self,
        loop: asyncio.AbstractEventLoop,
        protocol: _Protocol,
        args: tuple[Any, ...],
        timeout: float | None = None,
    ) -> Any:
        transport = self._transport(protocol)
        future = loop.create_future()
        protocol.waiting.append(future)
        transport.write(pack(args))
        timer = loop.call_later(timeout or self.timeout, self._expire, protocol, future)
        try:
            return await future
        finally:
            timer.cancel()

    @staticmethod
    def _expire(protocol: _Protocol, future: asyncio.Future) -> None:
        if not future.done():
            protocol.fail(RedisTimeoutError("Redis did not answer in time"))

    async def _connect(self, loop: asyncio.AbstractEventLoop) -> _Protocol:
        """One connection attempt at a time; callers meanwhile wait for the same one, each
        at most `timeout` (the attempt itself may take `connect_timeout`)."""
        if self._connecting is None or self._connecting.done():
            self._connecting = asyncio.ensure_future(self._open(loop))
            self._connecting.add_done_callback(_retrieved)
        attempt = self._connecting
        # asyncio.wait, not wait_for: it leaves the attempt running on a timeout, and (unlike
        # 3.11's wait_for) never swallows this caller's own cancellation.
        done, _ = await asyncio.wait({attempt}, timeout=self.timeout)
        if not done:
            raise RedisTimeoutError(
                f"no connection to Redis within {self.timeout:g} s (still connecting)"
            )
        if attempt.cancelled():  # close() stopped it: a connection error to this caller
            raise ConnectionError(CLOSED_WHILE_OPENING)
        return attempt.result()

    async def _open(self, loop: asyncio.AbstractEventLoop) -> _Protocol:
        closes = self._closes
        try:
            if self.path is not None:
                opening = loop.create_unix_connection(_Protocol, self.path)
            else:
                tls = self.tls_context() if self.tls is not None else None
                opening = loop.create_connection(
                    _Protocol, self.host, self.port, ssl=tls,
                    server_hostname=self.host if tls is not None else None,
                )  # fmt: skip
            transport, protocol = await asyncio.wait_for(opening, self.connect_timeout)
        except (OSError, ValueError, TimeoutError) as error:  # ssl.SSLError is an OSError
            why = str(error) or f"no connection within {self.connect_timeout:g} s"
            raise ConnectionError(f"cannot connect to Redis: {why}") from None
        protocol.transport = transport  # uvloop may call connection_made a moment later
        try:
            if self.password is not None:  # the two-argument form, as redis-py's HELLO: a
                # Redis whose default user has no password yet accepts it, as redis-py does
                auth = ("AUTH", self.username or "default", self.password)
                await self._send(loop, protocol, auth, self.connect_timeout)
            if self.db:
                await self._send(loop, protocol, ("SELECT", self.db), self.connect_timeout)
            if self._closes != closes:  # closed meanwhile; the cancel may have come too late
                raise ConnectionError(CLOSED_WHILE_OPENING)
        except BaseException as error:
            protocol.fail(ConnectionError("the Redis handshake failed"))
            if isinstance(error, ResponseError):  # WRONGPASS, NOAUTH, a db out of range: a
                # connection that cannot be used, as redis-py reports it
                raise ConnectionError(f"the Redis handshake failed: {error}") from None
            raise
        self._protocol = protocol
        return protocol

    def close(self) -> None:
        """The connection closed, and an attempt still under way stopped (it would open one
        after the close, up to `connect_timeout` later). From the lane's loop's thread, as
        every asyncio call."""
        self._closes += 1
        connecting = self._connecting
        if (
            connecting is not None
            and not connecting.done()
            and not connecting.get_loop().is_closed()
        ):
            connecting.cancel()
        self._connecting = None
        protocol, self._protocol = self._protocol, None
        if protocol is not None and protocol.transport is not None:
            with contextlib.suppress(RuntimeError):  # its loop already closed (tests)
                protocol.transport.close()


# The options naming files the TLS context reads.
TLS_FILES = ("ssl_ca_certs", "ssl_ca_path", "ssl_certfile", "ssl_keyfile")


def _no_passphrase() -> str:
    """An encrypted key with no `ssl_password`: refused, where OpenSSL would ask on a
    terminal and hold the start."""
    raise ValueError("the key is encrypted and the URL gives no ssl_password")


def _retrieved(future: asyncio.Future) -> None:
    """A connection attempt's error is its callers'; none left is no reason for a warning."""
    if not future.cancelled():
        future.exception()


async def read(client: Any, lane: Lane | None, *command: Any) -> Any:
    """One read command whose reply is a bulk string or nil (GET, HGET), on `lane` where
    there is one, else on redis-py's `client`: the same bytes either way. (redis-py shapes
    other replies — HGETALL, SMEMBERS — into dicts and sets; the lane does not.)"""
    if lane is None:
        return await client.execute_command(*command)
    return await lane.call(*command)
