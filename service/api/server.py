"""uvicorn with the limits a service facing real clients needs.

- A connection that never sends a request is closed after the keep-alive timeout (uvicorn only
  arms that timer after a first response, so idle sockets used to stay open for ever).
- A request must arrive whole — headers and body — within `CDDAE_REQUEST_TIMEOUT_SECONDS` of
  its first byte (uvicorn disarms every timer on the first byte: "G" and silence, slowloris,
  held a connection for ever).
- At most `CDDAE_MAX_CONNECTIONS` connections and tasks at once; beyond that, 503s; and at
  most `CDDAE_MAX_CONNECTIONS_PER_CLIENT` from one address, beyond which a connection is closed
  at once: one client cannot take every slot.
- The open-files limit raised to the hard limit, so the cap, not the kernel, is what binds.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import resource
from collections import Counter
from typing import Any, ClassVar

import uvicorn
from uvicorn.protocols.http.h11_impl import H11Protocol

from service.api.app import create_app
from service.api.log_filters import quiet_invalid_requests
from service.config import Settings

log = logging.getLogger("cddae.server")

try:  # uvicorn[standard]: the compiled HTTP parser; pure-Python h11 otherwise
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol as BaseProtocol
except ImportError:  # pragma: no cover - the serving image installs it
    BaseProtocol = H11Protocol  # type: ignore[assignment,misc]


class GuardedProtocol(BaseProtocol):  # type: ignore[misc,valid-type]
    """uvicorn's HTTP protocol with an idle timer from the start, a deadline per request and
    a cap per client address. Limits come from `limits` (set by `run`; a worker process of
    its own reads the settings from the environment, as its app does)."""

    limits: ClassVar[tuple[float, int] | None] = None  # (request timeout, per-client cap)
    per_client: ClassVar[Counter[str]] = Counter()

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        if GuardedProtocol.limits is None:
            settings = Settings()
            GuardedProtocol.limits = (
                settings.request_timeout_seconds,
                settings.per_client_connections,
            )
        self.request_timeout, cap = GuardedProtocol.limits
        self.address = self.client[0] if self.client else ""
        self.per_client[self.address] += 1
        self.deadline: asyncio.TimerHandle | None = None
        self.receiving = False  # a request has begun and not yet arrived whole
        self.answering = 0  # requests arrived whole whose responses are not complete
        if self.per_client[self.address] > cap:
            log.warning("a client holds more than %d connections: closing the extras", cap)
            transport.close()
            return
        # The same timer uvicorn arms between requests; the first byte received disarms it.
        self.timeout_keep_alive_task = self.loop.call_later(
            self.timeout_keep_alive, self.timeout_keep_alive_handler
        )

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        self.per_client[self.address] -= 1
        if self.per_client[self.address] <= 0:
            del self.per_client[self.address]  # bounded by the connections open, not seen
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        self._arm()  # a request's first bytes (or more of one already armed)
        super().data_received(data)

    def on_message_begin(self) -> None:
        self.receiving = True
        self._arm()  # a request pipelined behind another, in the same bytes, is timed too
        super().on_message_begin()

    def on_message_complete(self) -> None:
        self.receiving = False
        self._disarm()  # the request arrived whole; the response may take what it takes
        if self.cycle is not None and not self.cycle.response_complete:
            self.answering += 1
        super().on_message_complete()

    def on_response_complete(self) -> None:
        self.answering = max(0, self.answering - 1)
        super().on_response_complete()
        if self.receiving:  # a request pipelined behind that response: its time starts now
            self._arm()

    def _responding(self) -> bool:
        """A whole request is being answered: bytes arriving meanwhile (a pipelined request,
        which uvicorn stops reading; a stray newline) must not cost the client that answer.
        A request still arriving — a trickled body — is not being answered yet."""
        return self.answering > 0

    def _arm(self) -> None:
        if self.deadline is None and not self.transport.is_closing() and not self._responding():
            self.deadline = self.loop.call_later(self.request_timeout, self._too_slow)

    def _disarm(self) -> None:
        if self.deadline is not None:
            self.deadline.cancel()
            self.deadline = None

    def _too_slow(self) -> None:
        self.deadline = None
        if self._responding():  # armed before the request completed its way in: wait for it
            return
        if not self.transport.is_closing():
            log.info("closing a connection: no whole request within %s s", self.request_timeout)
            self.transport.close()


def raise_open_files_limit() -> None:
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    with contextlib.suppress(ValueError, OSError):
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def run(
    app: Any, settings: Settings, host: str, port: int, log_level: str = "info", workers: int = 1
) -> None:
    """Any ASGI app with this server's settings: the service, and the benchmark's reference
    apps, which must be measured on the same server to make the ratios honest. With several
    workers `app` is an import string of an app factory (each process builds its own)."""
    raise_open_files_limit()
    quiet_invalid_requests()
    GuardedProtocol.limits = (settings.request_timeout_seconds, settings.per_client_connections)
    uvicorn.run(
        app,
        factory=isinstance(app, str),
        workers=workers if isinstance(app, str) else None,
        host=host,
        port=port,
        log_level=log_level,
        loop="auto",  # uvloop where installed (uvicorn[standard])
        http=GuardedProtocol,
        timeout_keep_alive=settings.idle_timeout_seconds,
        limit_concurrency=settings.max_connections,
        access_log=False,
    )


def serve(settings: Settings, host: str, port: int, log_level: str = "info") -> None:
    if settings.workers > 1:  # each worker reads its settings from the environment
        os.environ["CDDAE_MODELS_DIR"] = str(settings.models_dir)
        run("service.api.app:create_app", settings, host, port, log_level, settings.workers)
        return
    run(create_app(settings), settings, host, port, log_level)
