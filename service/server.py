"""uvicorn with the limits a service facing real clients needs.

- A connection that never sends a request is closed after the keep-alive timeout (uvicorn only
  arms that timer after a first response, so idle sockets used to stay open for ever).
- At most `CDDAE_MAX_CONNECTIONS` connections and tasks at once; beyond that, 503s.
- The open-files limit raised to the hard limit, so the cap, not the kernel, is what binds.
"""

from __future__ import annotations

import asyncio
import contextlib
import resource

import uvicorn
from uvicorn.protocols.http.h11_impl import H11Protocol

from service.config import Settings
from service.main import create_app


class IdleTimeoutH11Protocol(H11Protocol):
    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        # The same timer uvicorn arms between requests; the first byte received disarms it.
        self.timeout_keep_alive_task = self.loop.call_later(
            self.timeout_keep_alive, self.timeout_keep_alive_handler
        )


def raise_open_files_limit() -> None:
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    with contextlib.suppress(ValueError, OSError):
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def serve(settings: Settings, host: str, port: int, log_level: str = "info") -> None:
    raise_open_files_limit()
    uvicorn.run(
        create_app(settings),
        host=host,
        port=port,
        log_level=log_level,
        http=IdleTimeoutH11Protocol,
        timeout_keep_alive=settings.idle_timeout_seconds,
        limit_concurrency=settings.max_connections,
    )
