"""Pure ASGI middleware: request latency per route, and a cap on request body size (413)."""

from __future__ import annotations

import json
import time

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.telemetry import Metrics

# Label values come from fixed sets: a made-up method or path must not mint a new series.
METHODS = frozenset({"GET", "POST", "PUT", "DELETE", "HEAD", "OPTIONS", "PATCH"})


class RequestMetrics:
    def __init__(self, app: ASGIApp, metrics: Metrics):
        self.app, self.metrics = app, metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started, status = time.perf_counter(), 500

        async def send_with_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_with_status)
        finally:
            route = scope.get("route")
            path = getattr(route, "path", "unmatched")
            method = scope["method"] if scope["method"] in METHODS else "other"
            self.metrics.observe_request(path, method, status, time.perf_counter() - started)


class BodyLimit:
    """413 for a body over `max_bytes`: by Content-Length at once, or, for a chunked body, as
    soon as it passes the limit. The body (at most `max_bytes`) is read here, then replayed."""

    def __init__(self, app: ASGIApp, max_bytes: int):
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope["headers"])
        declared = headers.get(b"content-length")
        if declared is None and b"transfer-encoding" not in headers:  # no body: nothing to cap
            await self.app(scope, receive, send)
            return
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            await self._reject(send, int(declared))
            return
        read = await read_body(receive, self.max_bytes)
        if read is None:  # the client went away
            return
        chunks, size, _ = read  # more to come only past the limit: rejected below
        if size > self.max_bytes:
            await self._reject(send, size)
            return
        await self.app(scope, replaying(chunks, False, receive), send)

    async def _reject(self, send: Send, size: int) -> None:
        body = json.dumps(
            {"detail": f"request body of {size} bytes exceeds the limit of {self.max_bytes}"}
        ).encode()
        headers = [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(body))]
        await send({"type": "http.response.start", "status": 413, "headers": headers})
        await send({"type": "http.response.body", "body": body})


def replaying(chunks: list[bytes], more: bool, receive: Receive) -> Receive:
    """`receive` giving back the body read so far (`more`: whether the rest is still to come
    from `receive`), then whatever `receive` gives."""
    replayed = False

    async def replay() -> Message:
        nonlocal replayed
        if not replayed:
            replayed = True
            return {"type": "http.request", "body": b"".join(chunks), "more_body": more}
        return await receive()

    return replay


async def read_body(receive: Receive, limit: int) -> tuple[list[bytes], int, bool] | None:
    """A request body's chunks, read until the last one or until past `limit` bytes: (chunks,
    bytes read, whether more is to come). None when the client went away meanwhile."""
    chunks: list[bytes] = []
    size, more = 0, True
    while more and size <= limit:
        message = await receive()
        if message["type"] != "http.request":
            return None
        chunks.append(message.get("body", b""))
        size += len(chunks[-1])
        more = message.get("more_body", False)
    return chunks, size, more
