"""The app factory: wires settings, model holder, cache, store and routes together."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
from collections.abc import AsyncIterator, Iterator

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse
from fastapi.staticfiles import StaticFiles
from starlette.types import ASGIApp

from service.api.app_state import AppState
from service.api.hot_path import HotPath
from service.api.log_filters import quiet_invalid_requests
from service.api.middleware import BodyLimit, RequestMetrics
from service.api.routes import router
from service.api.ui import STATIC as UI_STATIC
from service.api.ui import router as ui_router
from service.config import Settings
from service.serving.batcher import MicroBatcher
from service.serving.catalogue import valued_fields
from service.serving.filters import filter_schema
from service.serving.holder import ModelHolder
from service.serving.recommendations import ITEM_TITLE_LIMIT, Recommendations
from service.state.cache import Cache, LocalCache, RedisCache, redis_client
from service.state.lane import Lane
from service.state.online import FileOnline, Online, RedisOnline, impressions_log
from service.state.store import FileStore, RedisStore, Store
from service.telemetry import Metrics

log = logging.getLogger("cddae.service")


def build_state(settings: Settings) -> AppState:
    holder = ModelHolder(settings.models_dir, settings.ort_threads)
    metrics = Metrics()
    cache: Cache
    store: Store
    if settings.redis_url:
        client = redis_client(settings.redis_url, settings.redis_timeout_seconds)
        # The reads every answer makes share one pipelined connection (service.state.lane)
        lane = Lane.from_url(settings.redis_url, settings.redis_timeout_seconds)
        cache = RedisCache(
            client,
            settings.cache_ttl_seconds,
            settings.cache_ttl_jitter,
            settings.redis_retry_seconds,
            lane=lane,
            write_lane=Lane.from_url(settings.redis_url, settings.background_write_timeout_seconds),
        )
        store = RedisStore(
            client,
            settings.max_history,
            settings.idempotency_ttl_seconds,
            lane,
            catalogue_lane=Lane.from_url(
                settings.redis_url, settings.background_write_timeout_seconds
            ),
        )
        online: Online | None = RedisOnline(
            client,
            settings.attribution_window_seconds,
            settings.impressions_retain,
            Lane.from_url(settings.redis_url, settings.background_write_timeout_seconds),
        )
        backend = "redis"
    else:
        cache = LocalCache(
            settings.local_cache_bytes, settings.cache_ttl_seconds, settings.cache_ttl_jitter
        )
        store, backend = FileStore(settings.interactions_log, settings.max_history), "file"
        online = FileOnline(
            impressions_log(settings.interactions_log),
            settings.attribution_window_seconds,
            settings.impressions_log_bytes,
        )
    batcher = (
        MicroBatcher(settings.micro_batch_ms / 1000, settings.max_batch)
        if settings.micro_batch_ms
        else None
    )
    if not settings.record_impressions:
        online.close()
        online = None
    recommendations = Recommendations(
        holder,
        cache,
        store,
        metrics,
        settings.max_n,
        batcher,
        settings.max_api_items,
        online,
        settings.max_api_users,
    )
    return AppState(settings, holder, cache, store, backend, metrics, recommendations)


class ServiceApp(FastAPI):
    """FastAPI with `HotPath` outside every middleware: the most frequent request is answered
    before the framework's layers (service.api.hot_path)."""

    def build_middleware_stack(self) -> ASGIApp:
        state = self.state.cddae
        stack = super().build_middleware_stack()
        return HotPath(stack, state.metrics, state.settings.max_body_bytes)


def create_app(settings: Settings | None = None) -> FastAPI:

    quiet_invalid_requests()
    settings = settings or Settings()
    state = build_state(settings)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        log.info("model: %s", await state.holder.refresh_async())
        watcher = asyncio.create_task(state.holder.watch(settings.reload_interval_seconds))
        yield
        watcher.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await watcher
        await state.recommendations.settle()
        await state.cache.close()
        state.store.close()
        if state.recommendations.online is not None:
            state.recommendations.online.close()

    app = ServiceApp(
        title="cddae",
        summary="Top-N recommendations from a Collaborative Deep Denoising Autoencoder",
        version="0.1.0",
        lifespan=lifespan,
        docs_url=None,  # served below from a package: the page works without the internet
        redoc_url=None,
    )
    mount_docs(app)
    publish_contract(app, settings, state.holder)
    app.state.cddae = state
    app.add_exception_handler(RequestValidationError, validation_error)
    app.add_exception_handler(405, method_not_allowed)
    app.include_router(router)
    app.include_router(ui_router)  # the admin page, /ui/
    app.mount("/ui/static", StaticFiles(directory=UI_STATIC), name="ui-static")
    app.add_middleware(RequestMetrics, metrics=state.metrics)
    app.add_middleware(BodyLimit, max_bytes=settings.max_body_bytes)
    return app


MAX_ERRORS = 5  # a 422 names at most this many problems, each input cut to a short text
NOT_JSON = "the body must be JSON, sent with Content-Type: application/json"


def _not_json(request: Request) -> bool:
    """A body not declared as JSON, or not declared at all (FastAPI then hands the route
    bytes, and its 422 would say "a valid dictionary")."""
    declared = request.headers.get("content-type", "")
    media = declared.split(";", 1)[0].strip().lower()
    return not (media == "application/json" or (media.startswith("application/")
                                                 and media.endswith("+json")))  # fmt: skip


async def validation_error(request: Request, error: Exception) -> JSONResponse:
    """422 naming what was wrong, always serialisable: NaN or a 240k-item list in the input is
    described briefly instead of echoed (or failing to serialise into a 500)."""
    assert isinstance(error, RequestValidationError)
    problems = error.errors()
    raw = [
        p
        for p in problems
        if p.get("loc", ("",))[0] == "body" and isinstance(p.get("input"), bytes)
    ]
    if raw and _not_json(request):  # the route was handed bytes: the body was not read as JSON
        return JSONResponse({"detail": NOT_JSON}, status_code=415)
    detail = [
        {
            "loc": list(problem.get("loc", ())),
            "msg": problem.get("msg", ""),
            "type": problem.get("type", ""),
            "input": _brief(problem.get("input")),
        }
        for problem in problems[:MAX_ERRORS]
    ]
    return JSONResponse({"detail": detail, "errors": len(problems)}, status_code=422)


def _routes(routes: list) -> Iterator:
    """Every route, those of included routers too (FastAPI ≥ 0.16x keeps them apart; all are
    included without a prefix here)."""
    for route in routes:
        included = getattr(route, "original_router", None)
        if included is not None:
            yield from _routes(included.routes)
        else:
            yield route


def _brief(value: object) -> object:
    """The input as a 422 may echo it: short, finite and encodable (a lone surrogate from an
    escaped JSON string cannot be sent as UTF-8: shown as its escape)."""
    if isinstance(value, str) and not _encodable(value):
        value = value.encode("utf-8", "backslashreplace").decode()
    if isinstance(value, bool | int | str) and len(str(value)) <= 100:
        return value
    if isinstance(value, float) and math.isfinite(value):
        return value
    text = repr(value)
    if not _encodable(text):
        text = text.encode("utf-8", "backslashreplace").decode()
    return text if len(text) <= 100 else text[:97] + "..."


def _encodable(text: str) -> bool:
    try:
        text.encode()
    except UnicodeEncodeError:
        return False
    return True


def mount_docs(app: FastAPI) -> None:
    """/docs with Swagger UI's files from the swagger-ui-bundle package, not from a CDN."""
    from fastapi.openapi.docs import get_swagger_ui_html
    from fastapi.staticfiles import StaticFiles
    from swagger_ui_bundle import swagger_ui_path

    app.mount("/static/swagger", StaticFiles(directory=swagger_ui_path), name="swagger")

    @app.get("/docs", include_in_schema=False)
    async def docs() -> HTMLResponse:
        return get_swagger_ui_html(
            openapi_url="/openapi.json",
            title="cddae — API",
            swagger_js_url="/static/swagger/swagger-ui-bundle.js",
            swagger_css_url="/static/swagger/swagger-ui.css",
            swagger_favicon_url="/static/swagger/favicon-32x32.png",
        )


def publish_contract(app: FastAPI, settings: Settings, holder: ModelHolder) -> None:
    """The OpenAPI schema says what the service enforces: limits that are settings (n's
    maximum, a batch's size) and the profile fields of the model in service (rebuilt when
    another version comes into service)."""
    build = app.openapi
    built: dict[str | None, dict] = {}

    def openapi() -> dict:
        model = holder.model
        version = model.version if model is not None else None
        if version in built:
            return built[version]
        app.openapi_schema = None
        schema = build()
        filters = None
        if model is not None:
            filters = filter_schema(model.bundle.item_spec, valued_fields(model))
        for operation in (op for path in schema["paths"].values() for op in path.values()):
            for parameter in operation.get("parameters", []):
                if parameter["name"] == "n":
                    parameter["schema"]["maximum"] = settings.max_n
                if parameter["name"] == "filter" and filters is not None:
                    parameter["schema"]["items"] = filters
        components = schema.get("components", {}).get("schemas", {})
        if "ScoreRequest" in components:
            components["ScoreRequest"]["properties"]["n"]["maximum"] = settings.max_n
        if "BatchScoreRequest" in components:
            components["BatchScoreRequest"]["properties"]["users"]["maxItems"] = settings.max_batch
        if model is not None and "ScoreRequest" in components:
            vector = {"type": "array", "items": {"enum": [0, 1]},
                      "minItems": model.n_items, "maxItems": model.n_items}  # fmt: skip
            components["ScoreRequest"]["properties"]["vector"]["anyOf"] = [vector, {"type": "null"}]
        if filters is not None and "ScoreRequest" in components:
            components["ScoreRequest"]["properties"]["filter"]["items"] = filters
        if model is not None and "ItemProfile" in components:
            item = components["ItemProfile"]
            spec = model.bundle.item_spec.json_schema()
            title = {"anyOf": [{"type": "string", "maxLength": ITEM_TITLE_LIMIT},
                               {"type": "null"}], "title": "title"}  # fmt: skip
            spec["properties"] = {"title": title, **spec["properties"]}
            components["ItemProfile"] = {
                **{k: item[k] for k in ("title", "description") if k in item},
                **spec,
                "example": _item_example(model.bundle.item_spec),
            }
        if model is not None and "Profile" in components:
            profile = components["Profile"]
            components["Profile"] = {
                **{k: profile[k] for k in ("title", "description", "example") if k in profile},
                **model.bundle.user_spec.json_schema(),
            }
        built.clear()  # one version's schema at a time
        built[version] = app.openapi_schema = schema
        return schema

    app.openapi = openapi  # type: ignore[method-assign]


def _item_example(spec) -> dict:
    """An item profile this model accepts, for the schema's example."""
    example: dict = {"title": "Tomorrow's Film (2026)"}
    for field in spec.fields:
        if field.kind == "multi" and field.values:
            example[field.name] = [field.values[-1]]
        elif field.kind == "categorical" and field.values:
            example[field.name] = field.values[0]
        elif field.kind in ("bucket", "numeric"):
            example[field.name] = 2026
    return example


async def method_not_allowed(request: Request, error: Exception) -> JSONResponse:
    """A 405 whose Allow header lists every method of the path: FastAPI's names only those of
    the first route that matched it (GET /items/{id} hides PUT /items/{id})."""
    methods: set[str] = set()
    for route in _routes(request.app.routes):
        regex = getattr(route, "path_regex", None)
        if regex is not None and regex.match(request.url.path) and getattr(route, "methods", None):
            methods |= set(route.methods)
    detail = getattr(error, "detail", "Method Not Allowed")
    return JSONResponse({"detail": detail}, status_code=405,
                        headers={"Allow": ", ".join(sorted(methods))})  # fmt: skip
