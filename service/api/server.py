"""uvicorn with the limits a service facing real clients needs.

- A connection that never sends a request is closed after the keep-alive timeout (uvicorn only
  arms that timer after a first response, so idle sockets used to stay open for ever).
- At most `CDDAE_MAX_CONNECTIONS` connections and tasks at once; beyond that, 503s.
- The open-files limit raised to the hard limit, so the cap, not the kernel, is what binds.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import resource
from typing import Any

import uvicorn
from uvicorn.protocols.http.h11_impl import H11Protocol

from service.api.app import create_app
from service.api.log_filters import quiet_invalid_requests
from service.config import Settings

try:  # uvicorn[standard]: the compiled HTTP parser; pure-Python h11 otherwise
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol as BaseProtocol
except ImportError:  # pragma: no cover - the serving image installs it
    BaseProtocol = H11Protocol  # type: ignore[assignment,misc]


class IdleTimeoutProtocol(BaseProtocol):  # type: ignore[misc,valid-type]
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


def run(
    app: Any, settings: Settings, host: str, port: int, log_level: str = "info", workers: int = 1
) -> None:
    """Any ASGI app with this server's settings: the service, and the benchmark's reference
    apps, which must be measured on the same server to make the ratios honest. With several
    workers `app` is an import string of an app factory (each process builds its own)."""
    raise_open_files_limit()
    quiet_invalid_requests()
    uvicorn.run(
        app,
        factory=isinstance(app, str),
        workers=workers if isinstance(app, str) else None,
        host=host,
        port=port,
        log_level=log_level,
        loop="auto",  # uvloop where installed (uvicorn[standard])
        http=IdleTimeoutProtocol,
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
