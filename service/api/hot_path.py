"""The two most frequent requests answered before FastAPI's layers, routing and parameter
solving, which cost more than a third of an uncached answer (docs/PERFORMANCE.md, profiles):

- `GET /users/{id}/recommendations[?n=…][&exclude_seen=…]` in its plain form: an id that passes
  the API's id rule, `n` as 1–6 digits without a leading zero, `exclude_seen` as
  true/false/1/0, each at most once, nothing else;
- `POST /score` with one user: a JSON body (`content-type: application/json`, a declared length
  within the body limit) that the route's own model, `ScoreRequest`, validates as it would.

Anything else — exclusions, filters, another spelling, a batch, a bad value, a body the model
refuses — goes on to the FastAPI routes (a body replayed as read), so every validation error
and the OpenAPI contract stay FastAPI's. Answers and errors are made by the routes' own code
(`answer_for_user`, `answer_for_score`).
"""

from __future__ import annotations

import json
import time
from collections.abc import Awaitable, Callable
from typing import NamedTuple

from pydantic import ValidationError
from starlette.responses import PlainTextResponse, Response
from starlette.types import ASGIApp, Receive, Scope, Send

from service.api.middleware import read_body, replaying
from service.api.routes import answer_for_score, answer_for_user
from service.api.schemas import ScoreRequest
from service.ids import id_problem
from service.telemetry import Metrics

PREFIX, SUFFIX = "/users/", "/recommendations"
ROUTE_PATH = PREFIX + "{user_id}" + SUFFIX
_FLAGS = {"true": True, "1": True, "false": False, "0": False}


class PlainAsk(NamedTuple):
    user_id: str
    n: int
    exclude_seen: bool


def plain_ask(path: str, query: bytes) -> PlainAsk | None:
    """The request's user, n and exclude_seen when it is the plain form; None otherwise."""
    if not (path.startswith(PREFIX) and path.endswith(SUFFIX)):
        return None
    user_id = path[len(PREFIX) : -len(SUFFIX)]
    if "/" in user_id or id_problem(user_id) is not None:
        return None
    n, exclude_seen = 10, True
    if query:
        seen: set[bytes] = set()
        for pair in query.split(b"&"):
            key, sign, value = pair.partition(b"=")
            if not sign or key in seen:
                return None
            seen.add(key)
            if key == b"n" and 1 <= len(value) <= 6 and value.isdigit() and value[0] != 48:
                n = int(value)
            elif key == b"exclude_seen" and value.decode("latin-1") in _FLAGS:
                exclude_seen = _FLAGS[value.decode("latin-1")]
            else:
                return None
    return PlainAsk(user_id, n, exclude_seen)


def score_body(headers: list[tuple[bytes, bytes]], limit: int) -> int | None:
    """The declared length of a `POST /score` body the hot path may read, or None."""
    length, json_type = None, None
    for name, value in headers:
        if name == b"content-length":
            if length is not None or not value.isdigit():
                return None
            length = int(value)
        elif name == b"content-type":
            if json_type is not None:  # two: which one FastAPI reads is its business
                return None
            json_type = value.strip().lower() == b"application/json"
        elif name == b"transfer-encoding":
            return None
    return length if json_type and length is not None and 0 < length <= limit else None


def bodiless(headers: list[tuple[bytes, bytes]]) -> bool:
    """Whether a request declares no body (a GET with one goes to the routes: its size limit
    and its errors are theirs)."""
    for name, value in headers:
        if name == b"transfer-encoding" or (name == b"content-length" and value != b"0"):
            return False
    return True


def single_score(body: bytes) -> ScoreRequest | None:
    """The body as the route would take it (decoded as FastAPI decodes JSON, then validated
    by the same model) when it is one user's request; None for anything else."""
    try:
        data = json.loads(body)
    except (ValueError, RecursionError):  # not JSON, not UTF-8, nested past the parser
        return None
    if not isinstance(data, dict) or "users" in data:
        return None
    try:
        return ScoreRequest.model_validate(data)
    except (ValidationError, RecursionError):
        return None


class HotPath:
    """Pure ASGI, outermost: answers the two forms itself — request metrics recorded as the
    routes', an unexpected error answered 500 and raised to the server, as FastAPI's own
    outer layer does — and hands everything else to `app`."""

    def __init__(self, app: ASGIApp, metrics: Metrics, max_body_bytes: int):
        self.app, self.metrics, self.max_body_bytes = app, metrics, max_body_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            method = scope["method"]
            if method == "GET":
                ask = plain_ask(scope["path"], scope["query_string"])
                if ask is not None and bodiless(scope["headers"]):
                    state = scope["app"].state.cddae

                    def answer() -> Awaitable[Response]:
                        return answer_for_user(state, *ask, (), ())

                    await self._answer(ROUTE_PATH, "GET", answer, scope, receive, send)
                    return
            elif method == "POST" and scope["path"] == "/score":
                length = score_body(scope["headers"], self.max_body_bytes)
                if length is not None:
                    await self._score(length, scope, receive, send)
                    return
        await self.app(scope, receive, send)

    async def _score(self, length: int, scope: Scope, receive: Receive, send: Send) -> None:
        read = await read_body(receive, length)
        if read is None:  # the client went away
            return
        chunks, size, more = read
        body = b"".join(chunks)
        request = single_score(body) if not more and size == length else None
        if request is None:  # the routes decide, from the same bytes
            await self.app(scope, replaying(chunks, more, receive), send)
            return
        state = scope["app"].state.cddae

        def answer() -> Awaitable[Response]:
            return answer_for_score(state, [request], batch=False)

        await self._answer("/score", "POST", answer, scope, receive, send)

    async def _answer(
        self,
        route: str,
        method: str,
        answer: Callable[[], Awaitable[Response]],
        scope: Scope,
        receive: Receive,
        send: Send,
    ) -> None:
        started, status = time.perf_counter(), 500
        try:
            response = await answer()
            status = response.status_code
            await response(scope, receive, send)
        except Exception:
            if status == 500:  # nothing sent yet
                await PlainTextResponse("Internal Server Error", 500)(scope, receive, send)
            raise
        finally:
            self.metrics.observe_request(route, method, status, time.perf_counter() - started)
