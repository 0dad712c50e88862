"""The event path from outside (issue 19): what a hostile or unlucky caller sends must neither
suppress other writes, nor poison training, nor hold the server."""

from __future__ import annotations

import json
import signal
import socket
import threading
from pathlib import Path

import httpx
import pytest

from tests.e2e.conftest import REDIS_URL, running

BACKENDS = {"file": None, "redis": REDIS_URL}


@pytest.mark.parametrize("backend", ["file", "redis"])
def test_a_used_key_suppresses_no_other_write(
    base_models: Path, tmp_path: Path, backend: str
) -> None:
    """(1) Keys are per route and user, bound to the body: user 2's write behind user 4's
    key is recorded; the same key with another body is a 409; a true retry replays."""
    with running(base_models, tmp_path, BACKENDS[backend]) as server:
        key = {"Idempotency-Key": "order-1"}
        first = httpx.post(f"{server.url}/users/4/interactions", json={"items": ["1"]},
                           headers=key)  # fmt: skip
        other_user = httpx.post(f"{server.url}/users/2/interactions", json={"items": ["2"]},
                                headers=key)  # fmt: skip
        profile = httpx.put(f"{server.url}/users/newbie/profile", json={"age": 30}, headers=key)
        conflict = httpx.post(f"{server.url}/users/4/interactions", json={"items": ["3"]},
                              headers=key)  # fmt: skip
        retry = httpx.post(f"{server.url}/users/4/interactions", json={"items": ["1"]},
                           headers=key)  # fmt: skip
        assert first.status_code == other_user.status_code == 201
        assert other_user.json()["replayed"] is False and other_user.json()["recorded"] == 1
        assert profile.status_code == 201 and profile.json()["created"] is True
        assert httpx.get(f"{server.url}/users/newbie/recommendations").status_code == 200
        assert conflict.status_code == 409 and "another request" in conflict.json()["detail"]
        assert retry.status_code == 201
        assert retry.json()["replayed"] is True and retry.json()["recorded"] == 1


@pytest.mark.parametrize(
    "path",
    [
        "/users/3%00/recommendations",
        "/users/3%0A/recommendations",
        "/users/3%FF/recommendations",  # not UTF-8: decoded to U+FFFD, as "3%FE" was — one user
        "/users/%ED%A0%80/recommendations",  # a surrogate's UTF-8 form: not UTF-8 either
    ],
)
def test_an_id_training_would_read_otherwise_is_refused_at_the_door(
    base_models: Path, tmp_path: Path, path: str
) -> None:
    """(11) "3\\0" was another user to the service and user 3 to training."""
    with running(base_models, tmp_path, None) as server:
        assert httpx.get(server.url + path).status_code == 422
        write = httpx.post(server.url + path.replace("recommendations", "interactions"),
                           json={"items": ["1"]})  # fmt: skip
        assert write.status_code == 422
        bad_item = httpx.post(f"{server.url}/users/3/interactions", json={"items": ["1\x00"]})
        assert bad_item.status_code == 422 and "control character" in bad_item.text
        fine = httpx.post(f"{server.url}/users/3/interactions", json={"items": ["²"]})
        assert fine.status_code == 201 and fine.json()["unknown_items"] == ["²"]


@pytest.mark.parametrize("backend", ["file", "redis"])
def test_a_user_over_the_history_cap_keeps_getting_fresh_lists(
    base_models: Path, tmp_path: Path, backend: str
) -> None:
    """(7) Long recorded histories are capped (here 50): reads stay bounded, never degraded,
    and what the user recorded last is never offered back."""
    with running(
        base_models, tmp_path, BACKENDS[backend], CDDAE_MAX_HISTORY="50",
        CDDAE_MAX_BODY_BYTES="200000",
    ) as server:  # fmt: skip
        for write in range(5):
            items = [f"new-{write}-{k}" for k in range(200)]
            answer = httpx.post(f"{server.url}/users/3/interactions", json={"items": items})
            assert answer.status_code == 201
        known = httpx.post(f"{server.url}/users/3/interactions", json={"items": ["7"]})
        assert known.status_code == 201
        listed = httpx.get(f"{server.url}/users/3/recommendations", params={"n": 50})
        assert listed.status_code == 200 and listed.json().get("degraded") is not True
        assert "7" not in [i["item_id"] for i in listed.json()["items"]]


def test_a_stored_profile_outlives_the_model_it_was_stored_under(
    base_models: Path, tmp_path: Path
) -> None:
    """(9) A profile recorded under another model (a field this one lacks, a value it never
    saw) is projected onto this model's fields: 200, never a 422 for the user's own data."""
    log = tmp_path / "events.jsonl"
    stored = {"type": "profile", "user": "kept", "key": "k", "digest": "d",
              "profile": {"zip": "12345", "gender": "X", "age": 40}}  # fmt: skip
    log.write_text(json.dumps(stored) + "\n")
    with running(base_models, tmp_path, None, CDDAE_INTERACTIONS_LOG=str(log)) as server:
        answer = httpx.get(f"{server.url}/users/kept/recommendations")
        assert answer.status_code == 200, answer.text


def test_model_shows_no_server_path(base_models: Path, tmp_path: Path) -> None:
    """(10) `/model` names the store by its id, never by where it lies on the server."""
    with running(base_models, tmp_path, None) as server:
        shown = json.dumps(httpx.get(f"{server.url}/model").json())
        assert str(tmp_path) not in shown and "/tmp/" not in shown


def test_one_byte_and_silence_hold_no_connection(base_models: Path, tmp_path: Path) -> None:
    """(8) Slowloris: "G" then nothing used to stay open for ever and 16 such sockets made
    /healthz answer 503. Now one address holds at most its share (4 here), and each request
    must arrive whole within its deadline (1 s here)."""
    settings = {
        "CDDAE_MAX_CONNECTIONS": "16", "CDDAE_MAX_CONNECTIONS_PER_CLIENT": "4",
        "CDDAE_REQUEST_TIMEOUT_SECONDS": "1", "CDDAE_IDLE_TIMEOUT_SECONDS": "60",
    }  # fmt: skip
    with running(base_models, tmp_path, None, **settings) as server:
        slow = []
        for _ in range(16):  # from another loopback address than the health check's
            sock = socket.socket()
            sock.bind(("127.0.0.2", 0))
            sock.connect(("127.0.0.1", server.port))
            sock.sendall(b"G")
            slow.append(sock)
        try:
            assert httpx.get(f"{server.url}/healthz", timeout=30).status_code == 200
            for sock in slow:  # each closed by the server: 12 at once, 4 at their deadline
                sock.settimeout(50)  # under the idle timeout: only the deadline closes them
                assert _closed_by_server(sock)
            assert httpx.get(f"{server.url}/healthz", timeout=30).status_code == 200
            # Pipelined: a whole request, then a second one whose body never comes.
            piped = socket.create_connection(("127.0.0.1", server.port))
            piped.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\nPOST /score HTTP/1.1\r\n"
                          b"Host: x\r\nContent-Length: 100\r\n\r\n")  # fmt: skip
            slow.append(piped)
            piped.settimeout(50)
            assert piped.recv(4096).startswith(b"HTTP/1.1 200")
            while not _closed_by_server(piped):  # the rest of the answer, then the hang-up
                pass
        finally:
            for sock in slow:
                sock.close()


def _closed_by_server(sock: socket.socket) -> bool:
    """A hang-up: end of stream, or a reset (the server closed with our byte unread)."""
    try:
        return sock.recv(4096) == b""
    except ConnectionResetError:
        return True


@pytest.mark.parametrize("backend", ["file", "redis"])
def test_excluded_items_never_come_back_and_the_list_stays_full(
    base_models: Path, tmp_path: Path, backend: str
) -> None:
    """Issue 20 (part): `exclude` masks items before the top-N; cached answers never cross
    exclusions."""
    with running(base_models, tmp_path, BACKENDS[backend]) as server:
        url = f"{server.url}/users/3/recommendations"
        plain = [i["item_id"] for i in httpx.get(url, params={"n": 10}).json()["items"]]
        again = httpx.get(url, params={"n": 10})  # cached now
        banned = plain[:3]
        masked = httpx.get(url, params={"n": 10, "exclude": [*banned, "not-an-item"]})
        assert again.json()["cached"] is True and masked.json()["cached"] is False
        items = [i["item_id"] for i in masked.json()["items"]]
        assert len(items) == 10 and not set(banned) & set(items)
        assert items[:7] == plain[3:]  # the same order, the next ones moved up
        assert [i["item_id"] for i in httpx.get(url, params={"n": 10}).json()["items"]] == plain
        bad = httpx.get(url, params={"exclude": "1\x00"})
        assert bad.status_code == 422
        too_many = httpx.get(url, params=[("exclude", str(k)) for k in range(1001)])
        assert too_many.status_code in (414, 422)


def test_the_deadline_times_requests_not_answers(base_models: Path, tmp_path: Path) -> None:
    """A slow answer (its Redis stalled) is not cut off by bytes that arrive meanwhile — a
    pipelined request, a stray newline: the write it acknowledges is answered. A body trickled
    byte by byte is closed at the deadline."""
    from tests.e2e.test_lifecycle import _start_redis, free_port

    port = free_port()
    redis_process = _start_redis(port, tmp_path)
    settings = {"CDDAE_REQUEST_TIMEOUT_SECONDS": "1", "CDDAE_REDIS_TIMEOUT_SECONDS": "5"}
    try:
        with running(base_models, tmp_path, f"redis://127.0.0.1:{port}/0", **settings) as server:
            body = b'{"items": ["1"]}'
            head = b"POST /users/3/interactions HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n"
            write = head % len(body) + b"Content-Type: application/json\r\n\r\n" + body
            for extra in (b"\r\n", b"GET /healthz HTTP/1.1\r\nHost: x\r\n"):
                redis_process.send_signal(signal.SIGSTOP)  # the answer waits for Redis
                try:
                    sock = socket.create_connection(("127.0.0.1", server.port))
                    with sock:
                        sock.sendall(write)
                        sock.sendall(extra)  # while the answer is being computed
                        threading.Timer(2, redis_process.send_signal, (signal.SIGCONT,)).start()
                        sock.settimeout(60)
                        assert sock.recv(4096).startswith(b"HTTP/1.1 201"), extra
                finally:
                    redis_process.send_signal(signal.SIGCONT)
            trickled = socket.create_connection(("127.0.0.1", server.port))
            trickled.sendall(b"POST /score HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n")
            closed = False
            for _ in range(100):  # a byte every 0.3 s: 30 s for the body, the deadline is 1 s
                try:
                    trickled.sendall(b" ")
                except OSError:
                    closed = True
                    break
                trickled.settimeout(0.3)
                try:
                    if trickled.recv(4096) == b"":
                        closed = True
                        break
                except TimeoutError:
                    continue
                except ConnectionResetError:
                    closed = True
                    break
            trickled.close()
            assert closed, "a trickled body was never cut off"
    finally:
        redis_process.kill()
        redis_process.wait()
