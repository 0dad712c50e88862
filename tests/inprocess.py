"""The app in-process, its lifespan run as under uvicorn: for tests that need no real server."""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Iterator
from pathlib import Path

import anyio.from_thread
import httpx

from service.api.app import create_app
from service.api.app_state import AppState
from service.config import Settings


class Client:
    """Blocking calls to the app in-process through httpx's ASGI transport, its lifespan run
    as under uvicorn (starlette's TestClient warns about plain httpx)."""

    def __init__(self, portal: anyio.from_thread.BlockingPortal, http: httpx.AsyncClient, app):
        self.portal, self.http = portal, http
        self.state: AppState = app.state.cddae

    def request(self, method: str, url: str, **kwargs) -> httpx.Response:
        return self.portal.call(functools.partial(self.http.request, method, url, **kwargs))

    def get(self, url: str, **kwargs) -> httpx.Response:
        return self.request("GET", url, **kwargs)

    def settle(self) -> None:
        """The impressions of the answers so far, recorded."""
        self.portal.call(self.state.recommendations.settle)


@contextlib.contextmanager
def serving(models: Path, tmp: Path, **settings) -> Iterator[Client]:
    """The app with its lifespan; shut down cleanly even when the test fails (uvicorn never
    throws a failure into the lifespan, so neither does this)."""
    app = create_app(Settings(models_dir=models, interactions_log=tmp / "log.jsonl", **settings))
    with anyio.from_thread.start_blocking_portal() as portal:
        lifespan = portal.wrap_async_context_manager(app.router.lifespan_context(app))
        lifespan.__enter__()
        http = httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app), base_url="http://testserver"
        )
        try:
            yield Client(portal, http, app)
        finally:
            portal.call(http.aclose)
            lifespan.__exit__(None, None, None)


def small_bundles(synthetic_dir: Path, models: Path, count: int = 1) -> list[str]:
    """`count` exports of one small CDDAE trained on the synthetic set, into `models`, the first
    promoted: a real bundle in seconds. Returns their versions."""
    from service.bundle import promote
    from training.data.prepared import ProtocolConfig, prepare
    from training.jobs.export import export_checkpoint
    from training.jobs.pipeline import train_and_evaluate

    prepared = prepare(synthetic_dir, ProtocolConfig(seed=0))
    _, checkpoint = train_and_evaluate(
        "cddae", prepared, model={"hidden": [16]}, train={"epochs": 2}, progress=False
    )
    versions = [export_checkpoint(checkpoint, models)[0] for _ in range(count)]
    promote(models, versions[0])
    return versions
