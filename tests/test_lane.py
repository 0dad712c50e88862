"""The read lane: replies as redis-py gives them, in order under concurrency, and every failure
(silence, a lost connection, a refused one) a redis-py error that the next call recovers from."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import ssl
import subprocess
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import redis
import uvloop
from redis import asyncio as aioredis
from redis.exceptions import ConnectionError, NoScriptError, ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from service.state.cache import RedisCache
from service.state.lane import Lane, pack
from service.state.scripts import run_script, run_script_many
from service.state.store import RedisStore, StoreUnavailable
from tests.inprocess import serving, small_bundles

URL = "redis://127.0.0.1:6379/11"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextlib.asynccontextmanager
async def fake_redis(answer) -> AsyncIterator[int]:
    """A TCP server that hands each connection to `answer(reader, writer)`; yields its port."""

    handlers: set[asyncio.Task] = set()

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        handlers.add(asyncio.current_task())  # type: ignore[arg-type]
        try:
            await answer(reader, writer)
        except (OSError, ValueError, asyncio.IncompleteReadError):
            pass  # the client went away (a closed lane): EOF mid-command
        finally:
            writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    try:
        yield server.sockets[0].getsockname()[1]
    finally:
        server.close()
        for task in handlers:
            task.cancel()
        await asyncio.gather(*handlers, return_exceptions=True)
        await server.wait_closed()


async def _commands(reader: asyncio.StreamReader) -> AsyncIterator[list[bytes]]:
    """The RESP commands a client sends, one list of arguments each."""
    while True:
        count = int((await reader.readline())[1:])
        args = []
        for _ in range(count):
            size = int((await reader.readline())[1:])
            args.append((await reader.readexactly(size + 2))[:-2])
        yield args


def _recording(seen: list[list[bytes]]):
    """A fake Redis that answers +OK to everything and keeps what it was sent in `seen`."""

    async def recording(reader, writer) -> None:
        async for args in _commands(reader):
            seen.append(args)
            writer.write(b"+OK\r\n")
            await writer.drain()

    return recording


def test_pack_encodes_as_redis_py_does() -> None:
    assert pack(("GET", "é", 3, 0.5, b"\x00")) == (
        b"*5\r\n$3\r\nGET\r\n$2\r\n\xc3\xa9\r\n$1\r\n3\r\n$3\r\n0.5\r\n$1\r\n\x00\r\n"
    )


def test_urls_get_a_lane_of_their_kind() -> None:
    lane = Lane.from_url("redis://user:secret@example.org:6380/4", 1.0)
    assert lane is not None
    assert (lane.host, lane.port, lane.db, lane.username, lane.password) == (
        "example.org", 6380, 4, "user", "secret",
    )  # fmt: skip
    assert lane.tls is None and lane.path is None
    tls = Lane.from_url("rediss://example.org:6380/0", 1.0)
    assert tls is not None and tls.tls_context().check_hostname
    assert tls.tls_context().verify_mode == ssl.CERT_REQUIRED  # redis-py's default, kept
    relaxed = Lane.from_url("rediss://example.org:6380/0?ssl_cert_reqs=none", 1.0)
    assert relaxed is not None  # asked for in the URL, as redis-py reads it
    assert relaxed.tls_context().verify_mode == ssl.CERT_NONE
    unix = Lane.from_url("unix:///run/redis.sock?db=2", 1.0)
    assert unix is not None and (unix.path, unix.db, unix.tls) == ("/run/redis.sock", 2, None)


def test_replies_match_redis_py_and_keep_their_order_under_concurrency() -> None:
    async def scenario() -> None:
        sync = redis.Redis.from_url(URL)
        sync.flushdb()
        sync.mset({f"lane:{k}": f"value-{k}" for k in range(300)})
        lane = Lane.from_url(URL, 2.0)
        assert lane is not None
        replies = await asyncio.gather(*(lane.call("GET", f"lane:{k}") for k in range(300)))
        assert replies == [f"value-{k}".encode() for k in range(300)]
        assert await lane.call("GET", "lane:none") is None
        assert await lane.call("INCR", "lane:n") == 1
        with pytest.raises(ResponseError):
            await lane.call("INCR", "lane:0")  # not an integer: an error reply, raised
        assert await lane.call("GET", "lane:1") == b"value-1"  # and the lane goes on
        lane.close()

    asyncio.run(scenario())


def test_many_commands_in_one_write_keep_their_order_and_their_own_errors() -> None:
    async def scenario() -> None:
        sync = redis.Redis.from_url(URL)
        sync.flushdb()
        sync.set("lane:text", "not a number")
        lane = Lane.from_url(URL, 2.0)
        assert lane is not None
        commands = [("SET", f"lane:{k}", k) for k in range(200)]
        commands.insert(50, ("INCR", "lane:text"))  # refused: its place, not the batch's
        replies = await lane.call_many(commands)
        assert isinstance(replies[50], ResponseError)
        assert replies[:50] + replies[51:] == [b"OK"] * 200
        assert sync.get("lane:199") == b"199" and await lane.call_many([]) == []
        # Interleaved with single calls from other tasks: every reply reaches its caller.
        many, *singles = await asyncio.gather(
            lane.call_many([("GET", f"lane:{k}") for k in range(100)]),
            *(lane.call("GET", f"lane:{k}") for k in range(100, 150)),
        )
        assert many == [str(k).encode() for k in range(100)]
        assert singles == [str(k).encode() for k in range(100, 150)]
        lane.close()

    asyncio.run(scenario())


def test_many_commands_to_a_silent_redis_time_out_or_a_closed_port_refuses() -> None:
    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read(1)
        await asyncio.sleep(3600)

    async def scenario() -> None:
        async with fake_redis(silent) as port:
            lane = Lane("127.0.0.1", port, 0, None, None, 0.3)
            with pytest.raises(RedisTimeoutError):
                await lane.call_many([("GET", "a"), ("GET", "b")])
        with pytest.raises(ConnectionError):
            await Lane("127.0.0.1", _free_port(), 0, None, None, 0.3).call_many([("GET", "a")])

    asyncio.run(scenario())


def test_an_unknown_script_is_loaded_through_redis_py() -> None:
    async def scenario() -> None:
        client = aioredis.Redis.from_url(URL)
        script = client.register_script("return {KEYS[1], ARGV[1], 7}")
        lane = Lane.from_url(URL, 2.0)
        assert lane is not None
        await client.script_flush()
        with pytest.raises(NoScriptError):
            await lane.call("EVALSHA", script.sha, 1, "k", "a")
        assert await run_script(script, ["k"], ["a"], lane) == [b"k", b"a", 7]
        assert await lane.call("EVALSHA", script.sha, 1, "k", "b") == [b"k", b"b", 7]
        lane.close()
        await client.aclose()

    asyncio.run(scenario())


def test_many_script_calls_reload_a_lost_script_and_keep_their_order() -> None:
    """Redis lost the script between two bursts: it is loaded once and only the refused calls
    run again, each reply in its call's place; a refusal other than NOSCRIPT is raised."""

    async def scenario() -> None:
        client = aioredis.Redis.from_url(URL)
        script = client.register_script(
            "if ARGV[1] == 'bad' then return redis.error_reply('ERR bad argument') end "
            "return redis.call('INCR', KEYS[1])"
        )
        lane = Lane.from_url(URL, 2.0)
        assert lane is not None
        await client.delete("count:a", "count:b")
        await client.script_flush()
        calls = [(["count:a"], ["x"]), (["count:b"], ["x"]), (["count:a"], ["x"])]
        assert await run_script_many(script, calls, lane) == [1, 1, 2]  # each call ran once
        assert await run_script_many(script, calls, lane) == [3, 2, 4]
        await client.script_flush()
        with pytest.raises(ResponseError, match="bad argument"):
            await run_script_many(script, [(["count:a"], ["x"]), (["count:a"], ["bad"])], lane)
        assert int(await client.get("count:a")) == 5  # loaded again, the good call ran once
        with pytest.raises(ResponseError, match="bad argument"):
            await run_script_many(script, [(["count:b"], ["bad"])], lane)
        assert int(await client.get("count:b")) == 2
        lane.close()
        await client.aclose()

    asyncio.run(scenario())


def test_silence_times_out_everything_waiting_and_the_next_call_reconnects() -> None:
    connections = 0

    async def silent_then_answering(reader, writer) -> None:
        nonlocal connections
        connections += 1
        first = connections == 1
        async for _ in _commands(reader):
            if not first:
                writer.write(b"+PONG\r\n")
                await writer.drain()

    async def scenario() -> None:
        async with fake_redis(silent_then_answering) as port:
            lane = Lane("127.0.0.1", port, 0, None, None, 0.2)
            results = await asyncio.gather(
                *(lane.call("PING") for _ in range(3)), return_exceptions=True
            )
            assert all(isinstance(r, RedisTimeoutError | ConnectionError) for r in results)
            assert any(isinstance(r, RedisTimeoutError) for r in results)
            assert await lane.call("PING") == b"PONG"
            assert connections == 2
            lane.close()

    asyncio.run(scenario())


def test_a_slow_handshake_fails_its_callers_in_time_and_connects_for_the_next() -> None:
    """AUTH answered after 0.3 s (a TLS handshake or a reply read late by a busy loop): the
    callers get a timeout within the lane's 0.1 s, the attempt goes on, and the next call uses
    that one connection. Bounded by the 0.1 s too, every attempt failed and a new one began."""
    connections = 0

    async def slow_auth(reader, writer) -> None:
        nonlocal connections
        connections += 1
        async for args in _commands(reader):
            if args[0] == b"AUTH":
                await asyncio.sleep(0.3)
            writer.write(b"+OK\r\n" if args[0] == b"AUTH" else b"+PONG\r\n")
            await writer.drain()

    async def scenario() -> None:
        async with fake_redis(slow_auth) as port:
            lane = Lane.from_url(f"redis://:pw@127.0.0.1:{port}/0", 0.1)
            assert lane is not None
            started = asyncio.get_running_loop().time()
            with pytest.raises(RedisTimeoutError, match="still connecting"):
                await lane.call("PING")
            assert asyncio.get_running_loop().time() - started < 0.25
            await asyncio.sleep(0.4)
            assert await lane.call("PING") == b"PONG"
            assert connections == 1
            lane.close()
            with pytest.raises(RedisTimeoutError):  # closed while connecting: nothing opens
                await lane.call("PING")
            lane.close()
            await asyncio.sleep(0.4)
            assert lane._protocol is None

    asyncio.run(scenario())
    connections = 0
    uvloop.run(scenario())


def test_close_while_connecting_fails_the_waiting_callers_and_opens_nothing() -> None:
    """close() at any step of an attempt (TCP, AUTH, SELECT): a caller waiting on it gets a
    ConnectionError (it got a bare CancelledError, which the store does not catch), and no
    connection is kept after the close (3.11's wait_for returned a connection whose cancel
    came a moment late)."""

    async def answering(reader, writer) -> None:
        async for args in _commands(reader):
            writer.write(b"+OK\r\n" if args[0] in (b"AUTH", b"SELECT") else b"+PONG\r\n")
            await writer.drain()

    async def scenario() -> None:
        async with fake_redis(answering) as port:
            for steps in range(1, 25):
                lane = Lane.from_url(f"redis://:pw@127.0.0.1:{port}/2", 0.5)
                assert lane is not None
                caller = asyncio.ensure_future(lane.call("PING"))
                for _ in range(steps):
                    await asyncio.sleep(0)
                lane.close()
                outcome = (await asyncio.gather(caller, return_exceptions=True))[0]
                assert outcome == b"PONG" or isinstance(outcome, ConnectionError), outcome
                await asyncio.sleep(0.01)
                assert lane._protocol is None, steps

    asyncio.run(scenario())
    uvloop.run(scenario())


def test_a_lost_connection_fails_its_callers_and_a_refused_one_is_a_connection_error() -> None:
    async def hang_up(reader, writer) -> None:
        await reader.read(1)

    async def scenario() -> None:
        async with fake_redis(hang_up) as port:
            lane = Lane("127.0.0.1", port, 0, None, None, 2.0)
            with pytest.raises(ConnectionError):
                await lane.call("PING")
            lane.close()
        closed = Lane("127.0.0.1", _free_port(), 0, None, None, 1.0)
        with pytest.raises(ConnectionError):
            await closed.call("PING")

    asyncio.run(scenario())


def test_a_caller_that_goes_away_never_shifts_the_replies_of_the_others() -> None:
    async def slow_echo(reader, writer) -> None:
        async for args in _commands(reader):
            await asyncio.sleep(0.05)
            writer.write(b"$%d\r\n%s\r\n" % (len(args[-1]), args[-1]))
            await writer.drain()

    async def scenario() -> None:
        async with fake_redis(slow_echo) as port:
            lane = Lane("127.0.0.1", port, 0, None, None, 2.0)
            first = asyncio.ensure_future(lane.call("ECHO", "first"))
            await asyncio.sleep(0.01)
            second = asyncio.ensure_future(lane.call("ECHO", "second"))
            first.cancel()
            assert await second == b"second"
            assert await lane.call("ECHO", "third") == b"third"
            lane.close()

    asyncio.run(scenario())


def test_the_handshake_authenticates_and_selects_the_database() -> None:
    seen: list[list[bytes]] = []
    recording = _recording(seen)

    async def scenario() -> None:
        async with fake_redis(recording) as port:
            lane = Lane.from_url(f"redis://me:pw@127.0.0.1:{port}/3", 1.0)
            assert lane is not None
            assert await lane.call("PING") == b"OK"
            lane.close()

    asyncio.run(scenario())
    assert seen == [[b"AUTH", b"me", b"pw"], [b"SELECT", b"3"], [b"PING"]]


def test_a_password_alone_authenticates_as_the_default_user() -> None:
    seen: list[list[bytes]] = []
    recording = _recording(seen)

    async def scenario() -> None:
        async with fake_redis(recording) as port:
            lane = Lane.from_url(f"redis://:pw@127.0.0.1:{port}/0", 1.0)
            assert lane is not None
            assert await lane.call("PING") == b"OK"
            lane.close()

    asyncio.run(scenario())
    assert seen[0] == [b"AUTH", b"default", b"pw"]


def test_a_connection_accepted_then_closed_is_a_connection_error_under_uvloop() -> None:
    """Redis at maxclients (or a proxy whose Redis is down) accepts, then hangs up: callers get
    ConnectionError at once — the store's StoreUnavailable —, never a RuntimeError (a 500)."""

    async def hang_up_at_once(reader, writer) -> None:
        writer.close()

    async def scenario() -> None:
        async with fake_redis(hang_up_at_once) as port:
            lane = Lane("127.0.0.1", port, 0, None, None, 1.0)
            for _ in range(5):
                await asyncio.sleep(0.01)
                with pytest.raises(ConnectionError):
                    await lane.call("PING")
            lane.close()

    uvloop.run(scenario())


def test_a_lane_moved_to_another_loop_connects_afresh() -> None:
    lane = Lane.from_url(URL, 2.0)
    assert lane is not None
    for _ in range(2):

        async def burst() -> list:
            try:
                return await asyncio.gather(*(lane.call("PING") for _ in range(20)))
            finally:
                lane.close()  # in its own loop: a loop's sockets do not outlive it

        assert asyncio.run(burst()) == [b"PONG"] * 20


def test_the_store_reads_through_the_lane_and_reports_it_down_as_unavailable() -> None:
    async def scenario() -> None:
        client = aioredis.Redis.from_url(URL)
        await client.flushdb()
        store = RedisStore(client, lane=Lane.from_url(URL, 2.0))
        await store.add_interactions("u1", ["a", "b"], [1.0, 2.0], "key-1", "digest-1")
        state = await store.user_state("u1")
        assert state.added == ["a", "b"] and state.generation == 1
        down = RedisStore(client, lane=Lane("127.0.0.1", _free_port(), 0, None, None, 1.0))
        with pytest.raises(StoreUnavailable):
            await down.user_state("u1")
        store.close()
        await client.aclose()

    asyncio.run(scenario())


def test_the_cache_and_the_catalogue_generation_read_through_the_lane() -> None:
    async def scenario() -> None:
        client = aioredis.Redis.from_url(URL)
        await client.flushdb()
        lane = Lane.from_url(URL, 2.0)
        cache = RedisCache(client, ttl=100, lane=lane)
        await cache.set("k", "f", b"answer")
        assert await cache.get("k", "f") == b"answer" and await cache.get("k", "g") is None
        store = RedisStore(client, lane=lane)
        assert await store.catalogue_generation() == 0
        down = Lane("127.0.0.1", _free_port(), 0, None, None, 1.0)
        assert await RedisCache(client, ttl=100, lane=down).get("k", "f") is None  # a miss
        with pytest.raises(StoreUnavailable):
            await RedisStore(client, lane=down).catalogue_generation()
        lane.close()
        await client.aclose()

    asyncio.run(scenario())


@pytest.fixture(scope="module")
def tls_and_socket_redis(tmp_path_factory: pytest.TempPathFactory):
    """A redis-server of its own, stopped by PID: TLS on a port (a certificate for localhost
    signed by a CA of the test's making) and a unix socket; yields (tls port, socket, CA)."""
    folder = tmp_path_factory.mktemp("tls")
    ca, key, cert = folder / "ca.pem", folder / "server.key", folder / "server.pem"

    def openssl(*args: str) -> None:
        subprocess.run(["openssl", *args], check=True, capture_output=True, cwd=folder)

    openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=test ca",
            "-keyout", "ca.key", "-out", str(ca))  # fmt: skip
    openssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=localhost", "-keyout", str(key),
            "-out", "server.csr")  # fmt: skip
    (folder / "san.ext").write_text("subjectAltName=DNS:localhost\n")
    openssl("x509", "-req", "-in", "server.csr", "-CA", str(ca), "-CAkey", "ca.key",
            "-CAcreateserial", "-days", "1", "-extfile", "san.ext", "-out", str(cert))  # fmt: skip
    port, sock = _free_port(), folder / "redis.sock"
    server = subprocess.Popen(
        ["redis-server", "--port", "0", "--tls-port", str(port), "--bind", "127.0.0.1",
         "--tls-cert-file", str(cert), "--tls-key-file", str(key), "--tls-ca-cert-file", str(ca),
         "--tls-auth-clients", "no", "--unixsocket", str(sock), "--save", "", "--appendonly",
         "no", "--dir", str(folder)],
        stdout=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 10
        while not sock.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert sock.exists(), "redis-server did not start"
        yield port, sock, ca
    finally:
        server.kill()
        server.wait()


def test_tls_and_unix_socket_urls_get_a_lane_that_verifies_as_redis_py_does(
    tls_and_socket_redis,
) -> None:
    """A managed Redis behind TLS, or a local one on a socket: the same lane as plain TCP (they
    kept redis-py and the reads' timeout for impressions, whose late replies counted recorded
    batches as lost). Verification is redis-py's: an untrusted certificate is refused by both."""
    port, sock, ca = tls_and_socket_redis
    trusted = f"rediss://localhost:{port}/2?ssl_ca_certs={ca}"
    urls = [trusted, f"unix://{sock}?db=3"]

    async def scenario() -> None:
        for url in urls:
            lane = Lane.from_url(url, 2.0)
            assert lane is not None, url
            client = aioredis.Redis.from_url(url)
            try:
                await client.set("lane-key", url)
                assert await lane.call("GET", "lane-key") == url.encode()  # the same db
                assert await lane.call_many([("SET", "k", "1"), ("GET", "k")]) == [b"OK", b"1"]
            finally:
                lane.close()
                await client.aclose()
        untrusted = f"rediss://localhost:{port}/2"  # the system's CAs do not know ours
        lane = Lane.from_url(untrusted, 2.0)
        assert lane is not None
        with pytest.raises(ConnectionError, match="CERTIFICATE_VERIFY_FAILED"):
            await lane.call("PING")
        client = aioredis.Redis.from_url(untrusted)
        with pytest.raises(ConnectionError):
            await client.ping()
        await client.aclose()

    asyncio.run(scenario())
    uvloop.run(scenario())


def test_the_service_answers_caches_and_records_over_tls(
    tls_and_socket_redis, synthetic_dir: Path, tmp_path: Path
) -> None:
    """The whole service on a `rediss://` URL: reads, the cache's writes and the impressions
    each on their lane, every list counted."""
    port, _, ca = tls_and_socket_redis
    models = tmp_path / "models"
    small_bundles(synthetic_dir, models)
    url = f"rediss://localhost:{port}/5?ssl_ca_certs={ca}"
    # A TLS handshake under this suite's load can pass the reads' 50 ms: the lanes are under
    # test here, not the timeout (a failed read bypasses the cache, and the test would see it).
    with serving(models, tmp_path, redis_url=url, redis_timeout_seconds=1.0) as client:
        served = client.state.recommendations
        assert served is not None
        lanes = (served.store._lane, served.cache._write_lane, served.online._lane)
        assert all(lane is not None and lane.tls is not None for lane in lanes)
        first = client.get("/users/1/recommendations", params={"n": 5})
        assert first.status_code == 200 and first.json()["cached"] is False
        client.settle()  # the cache's write, in the background
        assert client.get("/users/1/recommendations", params={"n": 5}).json()["cached"] is True
        client.settle()
        counts = client.portal.call(client.state.recommendations.online.counts)
    assert sum(row[0] for row in counts.cells.values()) == 2


def test_tls_files_are_read_at_connect_and_a_bad_one_is_a_connection_error(
    tls_and_socket_redis, tmp_path: Path
) -> None:
    """A CA mounted after the start is read at the next connect; until then (or with a key
    that is encrypted and no password) the lane fails as a connection, naming the file — it
    crashed the start (FileNotFoundError without a name), or asked for a pass phrase on a
    terminal."""
    port, _, ca = tls_and_socket_redis
    later = tmp_path / "mounted-later.pem"
    lane = Lane.from_url(f"rediss://localhost:{port}/0?ssl_ca_certs={later}", 2.0)
    assert lane is not None  # nothing read yet
    locked, cert = tmp_path / "locked.key", tmp_path / "client.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-passout", "pass:pw",
                    "-subj", "/CN=client", "-days", "1", "-keyout", str(locked), "-out",
                    str(cert)], check=True, capture_output=True)  # fmt: skip
    with_key = Lane.from_url(
        f"rediss://localhost:{port}/0?ssl_ca_certs={ca}&ssl_certfile={cert}&ssl_keyfile={locked}",
        2.0,
    )
    assert with_key is not None

    async def scenario() -> None:
        with pytest.raises(ConnectionError, match=r"mounted-later\.pem"):
            await lane.call("PING")
        later.write_bytes(ca.read_bytes())
        assert await lane.call("PING") == b"PONG"
        lane.close()
        with pytest.raises(ConnectionError, match="no ssl_password"):
            await with_key.call("PING")

    asyncio.run(scenario())


def test_a_refused_handshake_is_a_connection_error_as_redis_py_says(tls_and_socket_redis) -> None:
    """A wrong password or a database out of range: the lane cannot be used, so its callers
    get ConnectionError (the lane's contract, and redis-py's), not the handshake's reply."""
    _, sock, _ = tls_and_socket_redis

    async def scenario() -> None:
        for url in (f"unix://nobody:wrong@{sock}", f"unix://{sock}?db=99"):
            lane = Lane.from_url(url, 2.0)
            assert lane is not None
            try:
                with pytest.raises(ConnectionError, match="handshake failed"):
                    await lane.call("PING")
            finally:
                lane.close()

    asyncio.run(scenario())
