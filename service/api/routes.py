"""HTTP only: parse, call `Recommendations`, map its errors to status codes."""

from __future__ import annotations

import asyncio
import datetime as dt
import secrets
import time
import uuid
from collections.abc import Sequence
from pathlib import PurePath
from typing import Annotated

from fastapi import APIRouter, Depends, Header, HTTPException, Path, Query, Request, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import AfterValidator, Field, SecretStr

from service.api.app_state import AppState, AppStateDep, state_of
from service.api.schemas import (
    Availability,
    AvailabilityResponse,
    BatchScoreRequest,
    BatchScoreResponse,
    FilterText,
    Health,
    InteractionsRequest,
    InteractionsResponse,
    ItemProfile,
    ItemResponse,
    OnlineStats,
    Profile,
    ProfileResponse,
    RecommendationsResponse,
    ScoreRequest,
)
from service.experiment import CANDIDATE, CONTROL
from service.ids import ID_PATTERN, MAX_ID_LENGTH, check_id
from service.serving.filters import MAX_FILTERS
from service.serving.onnx_model import InputError
from service.serving.recommendations import MAX_NAMED, NoModel, NotFound
from service.state.online import UnknownList
from service.state.stats import experiment_summary, online_table
from service.state.store import (
    Full,
    IdempotencyConflict,
    StoreUnavailable,
    body_digest,
)

REPEATABLE = frozenset({"exclude", "filter"})  # the query parameters that take a list


def one_value_each(request: Request) -> None:
    """422 for a query parameter given twice that takes one value (`?n=5&n=50`): which one
    was meant is the caller's to say, not the framework's (it would take the last)."""
    query = request.query_params
    if len(query) == len(query.multi_items()):
        return
    repeated = sorted({k for k, _ in query.multi_items()} - REPEATABLE
                      - {k for k in query if len(query.getlist(k)) == 1})  # fmt: skip
    if repeated:
        names = ", ".join(repr(name[:40]) for name in repeated[:5])
        raise HTTPException(422, f"query parameter(s) {names} given more than once; each takes "
                                 "one value (only exclude and filter repeat)")  # fmt: skip


router = APIRouter(dependencies=[Depends(one_value_each)])
MAX_EXCLUDED = 1000  # ids one GET may exclude (a query string of ~10 KB)
ExcludedId = Annotated[
    str,
    Field(min_length=1, max_length=MAX_ID_LENGTH, json_schema_extra={"pattern": ID_PATTERN}),
    AfterValidator(check_id),
]
Excluded = Annotated[
    list[ExcludedId],
    Query(
        max_length=MAX_EXCLUDED,
        description="item ids never to return (repeatable); "
        "the list stays full: they are masked before the top-N",
    ),
]
Filtered = Annotated[
    list[FilterText],
    Query(
        alias="filter",
        max_length=MAX_FILTERS,
        description="conditions on item fields, all of which must hold (repeatable): "
        "field:value, field:a|b (either), field:low..high (numbers, either bound optional); "
        "the list stays full: failing items are masked before the top-N",
    ),
]
ItemIdPath = Annotated[
    str,
    Path(min_length=1, max_length=MAX_ID_LENGTH, examples=["50"],
         json_schema_extra={"pattern": ID_PATTERN}),
    AfterValidator(check_id),
]  # fmt: skip
UserId = Annotated[
    str,
    Path(min_length=1, max_length=MAX_ID_LENGTH, examples=["196"],
         json_schema_extra={"pattern": ID_PATTERN}),
    AfterValidator(check_id),
]  # fmt: skip
ERRORS = {
    400: {"description": "a body that is not JSON"},
    401: {"description": "a write without the configured bearer token"},
    404: {"description": "unknown user or item"},
    409: {
        "description": "an Idempotency-Key already used for another request; or the maximum of "
        "items or users created through the API is reached"
    },
    413: {"description": "body too large"},
    422: {"description": "invalid input; the detail names the offending values"},
    503: {"description": "no model loaded, or the interaction store is unavailable"},
}
BODY_ERRORS = {**ERRORS, 415: {"description": "a body sent with a Content-Type other than JSON"}}


class JSONBytes(Response):
    """An answer serialised once, by the model (`Model.answer`): FastAPI neither validates nor
    re-encodes it; the route's `response_model` still documents its shape."""

    media_type = "application/json"


def _http_error(error: Exception) -> HTTPException:
    if isinstance(error, NotFound):
        return HTTPException(404, str(error))
    if isinstance(error, InputError):
        return HTTPException(422, str(error))
    if isinstance(error, IdempotencyConflict):
        return HTTPException(409, f"{error}: a retry must repeat the request it retries")
    if isinstance(error, Full):
        return HTTPException(409, str(error))
    return HTTPException(503, str(error))  # our own words: no driver text, hosts or ports


HANDLED = (NotFound, InputError, NoModel, StoreUnavailable, IdempotencyConflict, Full)


@router.get(
    "/users/{user_id}/recommendations", response_model=RecommendationsResponse, responses=ERRORS
)
async def get_recommendations(
    request: Request,
    user_id: UserId,
    n: Annotated[int, Query(ge=1, description="list length, up to the configured maximum")] = 10,
    exclude_seen: bool = True,
    exclude: Excluded = [],  # noqa: B006 - FastAPI copies a default list per request
    filters: Filtered = [],  # noqa: B006
) -> Response:
    """Top-N items for a known user, without the items the user has already interacted with,
    the ones `exclude` names, hidden items, and those failing a `filter`."""
    # The plain form (no exclusions or filters) seldom gets here: service.api.hot_path
    # answers it before FastAPI solves parameters, through `answer_for_user` too.
    return await answer_for_user(state_of(request), user_id, n, exclude_seen, exclude, filters)


async def answer_for_user(
    state: AppState,
    user_id: str,
    n: int,
    exclude_seen: bool,
    exclude: Sequence[str],
    filters: Sequence[str],
) -> Response:
    """A known user's list, or the error as FastAPI would render it (the hot path has no
    exception handlers to raise into)."""
    try:
        answer = await state.recommendations.for_user(user_id, n, exclude_seen, exclude, filters)
    except HANDLED as error:
        return _error_response(error)
    return JSONBytes(answer)


@router.post(
    "/score",
    response_model=RecommendationsResponse | BatchScoreResponse,
    responses=BODY_ERRORS,
)
async def post_score(request: Request, body: ScoreRequest | BatchScoreRequest) -> Response:
    """Recommendations for ad-hoc users: one request, or a batch as {"users": [...]}."""
    # A single user's body seldom gets here: service.api.hot_path validates it with the same
    # model and answers it through `answer_for_score` too.
    state = state_of(request)
    if isinstance(body, BatchScoreRequest):
        if len(body.users) > state.settings.max_batch:
            raise HTTPException(
                422,
                f"batch of {len(body.users)} users exceeds the maximum of "
                f"{state.settings.max_batch}",
            )
        return await answer_for_score(state, body.users, batch=True)
    return await answer_for_score(state, [body], batch=False)


async def answer_for_score(
    state: AppState, requests: Sequence[ScoreRequest], batch: bool
) -> Response:
    """Ad-hoc users' lists (as a batch's `results`, or one list), or the error as FastAPI
    would render it."""
    try:
        answers = await state.recommendations.score([r.ad_hoc_user() for r in requests])
    except HANDLED as error:
        return _error_response(error)
    return JSONBytes(b'{"results":[%s]}' % b",".join(answers) if batch else answers[0])


def _error_response(error: Exception) -> Response:
    http = _http_error(error)
    return JSONResponse({"detail": http.detail}, http.status_code)


IdempotencyKey = Annotated[
    str | None,
    Header(
        alias="Idempotency-Key",
        min_length=1,
        max_length=128,
        pattern=r"^[\x21-\x7e]+$",
        description="retry a write with the same key: it is recorded at most once "
        "(generated and returned when absent)",
    ),
]


def _bearer_ok(authorization: str | None, token: SecretStr) -> bool:
    """Constant-time comparison of bytes (a non-ASCII header is simply wrong, not a 500)."""
    expected = f"Bearer {token.get_secret_value()}".encode()
    given = (authorization or "").encode("utf-8", "surrogateescape")
    return authorization is not None and secrets.compare_digest(given, expected)


async def require_writer(
    state: AppStateDep, authorization: Annotated[str | None, Header()] = None
) -> None:
    """Writes need CDDAE_WRITE_TOKEN as a bearer token, when one is configured."""
    token = state.settings.write_token
    if token is not None and not _bearer_ok(authorization, token):
        raise HTTPException(401, "writes need the bearer token (CDDAE_WRITE_TOKEN)")


Writer = Annotated[None, Depends(require_writer)]
REPLAYED_BY_WINDOW = (
    "a retry of a recorded write: attributed (by the window) when it was first recorded"
)


def _write_key(given: str | None, response: Response) -> str:
    key = given or uuid.uuid4().hex
    response.headers["Idempotency-Key"] = key
    return key


@router.post(
    "/users/{user_id}/interactions",
    response_model=InteractionsResponse,
    status_code=201,
    responses=BODY_ERRORS,
)
async def post_interactions(
    state: AppStateDep,
    user_id: UserId,
    body: InteractionsRequest,
    response: Response,
    _: Writer,
    idempotency_key: IdempotencyKey = None,
) -> dict:
    """Record new positive interactions; the user's next recommendations take them in at once.
    A 503 means the store did not confirm: the write may or may not be recorded; retry with the
    same Idempotency-Key and it is recorded exactly once."""
    key = _write_key(idempotency_key, response)
    sent = body.model_dump(mode="json")  # as sent: not the times filled in
    if sent.get("recommendation_id") is None:
        sent.pop("recommendation_id", None)
    digest = body_digest(sent)
    recommendations = state.recommendations
    items, list_id = body.item_ids(), body.recommendation_id
    try:  # a list that is not this user's is a 422 before anything is written; a click is
        # counted only once the interactions are: a refused write counts none
        attributed, note = await recommendations.attribute(user_id, items, list_id, mark=False)
        written, unknown = await recommendations.add_interactions(
            user_id, items, body.timestamps(time.time()), key, digest
        )
        if attributed and (written.new or list_id is not None):
            # a retry naming its list marks it again (a list is clicked once); by the window
            # it would pick the newest list now, not the one the first attempt had
            attributed, note = await recommendations.attribute(user_id, items, list_id)
        elif attributed:
            attributed, note = [], REPLAYED_BY_WINDOW
    except UnknownList as error:
        raise HTTPException(422, str(error)) from None
    except HANDLED as error:
        raise _http_error(error) from None
    return {"user_id": user_id, "recorded": written.recorded, "store": state.store_backend,
            "replayed": not written.new, "unknown_items": unknown[:MAX_NAMED],
            "attributed_to": attributed, "attribution_note": note}  # fmt: skip


@router.put(
    "/users/{user_id}/profile",
    response_model=ProfileResponse,
    responses={**BODY_ERRORS, 201: {"model": ProfileResponse, "description": "user created"}},
)
async def put_profile(
    state: AppStateDep,
    user_id: UserId,
    body: Profile,
    response: Response,
    _: Writer,
    idempotency_key: IdempotencyKey = None,
):
    """Create a user (201), or replace the profile of one (200): recommendations then use this
    profile. Idempotency-Key as for interactions."""
    key = _write_key(idempotency_key, response)
    try:
        created, written = await state.recommendations.set_profile(
            user_id, body.root, key, body_digest(body.root)
        )
    except HANDLED as error:
        raise _http_error(error) from None
    response.status_code = 201 if created else 200
    return {"user_id": user_id, "profile": body.fields(), "created": created,
            "replayed": not written.new}  # fmt: skip


# --- the catalogue ------------------------------------------------------------------------------


def _item_answer(info, version: str, stale: bool, created: bool | None = None) -> dict:
    return {"item_id": info.item_id, "profile": info.profile, "available": info.available,
            "source": info.source, "in_model": info.in_model, "model_version": version,
            "degraded": stale, **({"created": created} if created is not None else {})}  # fmt: skip


@router.get("/items/{item_id}", response_model=ItemResponse, responses=ERRORS)
async def get_item(state: AppStateDep, item_id: ItemIdPath) -> dict:
    """An item's profile, whether it is available, and where it came from."""
    try:
        info, version, stale = await state.recommendations.item(item_id)
    except HANDLED as error:
        raise _http_error(error) from None
    return _item_answer(info, version, stale)


@router.put(
    "/items/{item_id}",
    response_model=ItemResponse,
    responses={**BODY_ERRORS, 201: {"model": ItemResponse, "description": "item created"}},
)
async def put_item(
    state: AppStateDep, item_id: ItemIdPath, body: ItemProfile, response: Response, _: Writer
) -> dict:
    """Create an item (201) or replace an item's profile (200). A new item is recommendable at
    once, scored from its profile through the model's cold-item path until a retrain learns
    it from its interactions. A PUT is idempotent: repeating one sets the same profile."""
    recommendations = state.recommendations
    try:
        created = await recommendations.set_item(item_id, body.root)
        info, version, stale = await recommendations.item(item_id)
    except HANDLED as error:
        raise _http_error(error) from None
    response.status_code = 201 if created else 200
    return _item_answer(info, version, stale, created)


@router.put(
    "/items/{item_id}/availability", response_model=AvailabilityResponse, responses=BODY_ERRORS
)
async def put_availability(
    state: AppStateDep, item_id: ItemIdPath, body: Availability, _: Writer
) -> dict:
    """{"available": false} takes the item out of every list at once (every user, similar
    items, /score; every replica); {"available": true} brings it back. Kept in the store:
    it survives restarts and retrains."""
    try:
        await state.recommendations.set_availability(item_id, body.available)
    except HANDLED as error:
        raise _http_error(error) from None
    return {"item_id": item_id, "available": body.available}


@router.get("/items/{item_id}/similar", response_model=RecommendationsResponse, responses=ERRORS)
async def get_similar(
    request: Request,
    item_id: ItemIdPath,
    n: Annotated[int, Query(ge=1, description="list length, up to the configured maximum")] = 10,
    exclude: Excluded = [],  # noqa: B006
    filters: Filtered = [],  # noqa: B006
) -> Response:
    """The items the model holds most alike this one (never itself, never a hidden item);
    `exclude` and `filter` as for a user's list. A new item's come from its profile."""
    state = state_of(request)
    try:
        answer = await state.recommendations.similar(item_id, n, exclude, filters)
    except HANDLED as error:
        raise _http_error(error) from None
    return JSONBytes(answer)


def _admin(state, authorization: str | None) -> None:
    """Admin pages need CDDAE_ADMIN_TOKEN as a bearer token when one is configured."""
    token = state.settings.admin_token
    if token is not None and not _bearer_ok(authorization, token):
        raise HTTPException(401, "missing or wrong bearer token (CDDAE_ADMIN_TOKEN)")


@router.get("/stats/online", response_model=OnlineStats, responses=ERRORS)
async def get_stats_online(
    state: AppStateDep,
    since: Annotated[
        int | None,
        Query(
            ge=0,
            le=32_503_680_000,
            description="count lists answered from this time on (seconds since 1970; by the "
            "hour it falls in)",
        ),
    ] = None,
    authorization: Annotated[str | None, Header()] = None,
) -> dict:
    """What users did with what was served, per model version: lists answered, lists with
    at least one attributed interaction, their rate with a Wilson 95% interval. Counted in the
    store: exact across processes and restarts."""
    _admin(state, authorization)
    online = state.recommendations.online
    try:
        await state.recommendations.recorded()  # this replica's queue first
        counts = await online.counts() if online is not None else None
    except StoreUnavailable as error:
        raise _http_error(error) from None
    start = dt.datetime.fromtimestamp(since, dt.UTC) if since is not None else None
    experiment = state.holder.experiment
    variants = {}
    summary = None
    if experiment is not None:
        variants = {experiment.control: CONTROL, experiment.candidate: CANDIDATE}
        if state.holder.model is not None:
            variants.setdefault(state.holder.model.version, CONTROL)
        summary = experiment_summary(counts, experiment)
    return {"versions": online_table(counts, start, variants), "experiment": summary}


@router.get("/healthz", response_model=Health)
async def get_healthz() -> dict:
    """Liveness: the process answers."""
    return {"status": "ok"}


@router.get("/readyz", response_model=Health, responses={503: {"description": "no model"}})
async def get_readyz(state: AppStateDep, response: Response) -> dict:
    """Readiness: a model is loaded; "degraded" while Redis is unreachable, while the version
    CURRENT names is not the one in service (refused, or not readable), or while the
    experiment file cannot be followed (unreadable, or its candidate refused)."""
    holder = state.holder
    model = holder.model
    try:
        cache_ok = await asyncio.wait_for(state.cache.check(), timeout=1.0)
    except TimeoutError:
        cache_ok = False
    # An experiment file a replica cannot follow (or a refused candidate) degrades it: the
    # replicas may be serving different variants.
    healthy = holder.serving_current and holder.experiment_error is None
    status = "ok" if model is not None and cache_ok and healthy else "degraded"
    if model is None:
        status, response.status_code = "unavailable", 503
    detail: dict = {"refused_versions": holder.refused, "current_pointer": holder.pointer,
                    **state.store.health()}  # fmt: skip
    if holder.pointer_error:
        detail["pointer_error"] = holder.pointer_error
    if (experiment := holder.experiment) is not None:
        detail["experiment"] = {"id": experiment.id, "candidate": experiment.candidate,
                                "share": experiment.share, "shadow": experiment.shadow}  # fmt: skip
    if holder.experiment_error:
        detail["experiment_error"] = holder.experiment_error
    return {
        "status": status,
        "model_version": model.version if model else None,
        "cache": f"{state.cache.backend}:{'ok' if cache_ok else 'unreachable'}",
        "detail": detail,
    }


@router.get("/model", responses={503: {"description": "no model"}})
async def get_model(state: AppStateDep) -> dict:
    """The manifest of the bundle in service, files and parity included (where the training
    data lay on the training machine is not shown: only its kind and name)."""
    model = state.holder.model
    if model is None:
        raise HTTPException(503, "no model loaded yet")
    manifest = dict(model.bundle.manifest)
    data = dict(manifest.get("data", {}))
    if "source" in data:
        kind, _, where = str(data["source"]).partition(":")
        data["source"] = f"{kind}:{PurePath(where).name}" if where else kind
    manifest["data"] = data
    events = dict(manifest.get("events", {}))
    if "/" in str(events.get("source", "")):  # bundles from before store ids named the path
        kind, _, where = str(events["source"]).partition(":")
        events["source"] = f"{kind}:{PurePath(where).name}"
        manifest["events"] = events
    spec = model.bundle.user_spec.to_dict()["fields"]
    manifest["profile_fields"] = [  # what PUT …/profile and /score accept
        {"name": f["name"], "kind": f["kind"], **({"values": f["values"]} if f["values"] else {})}
        for f in spec
    ]
    return manifest


@router.get("/metrics", response_class=Response)
async def get_metrics(state: AppStateDep) -> Response:
    """Prometheus metrics: request and inference latency, cache hits and misses, model version."""
    if state.holder.model is not None:
        state.metrics.set_versions({m.version for m in state.recommendations.models()})
    state.metrics.quarantined.set(state.store.health().get("quarantined_records", 0))
    return Response(generate_latest(state.metrics.registry), media_type=CONTENT_TYPE_LATEST)


@router.post("/admin/reload", responses={401: {"description": "bad token"}, 404: {}})
async def post_admin_reload(
    state: AppStateDep, authorization: Annotated[str | None, Header()] = None
) -> dict:
    """Load the promoted version now (bearer token from CDDAE_ADMIN_TOKEN; off when unset)."""
    token = state.settings.admin_token
    if token is None:
        raise HTTPException(404, "admin endpoints are off: no CDDAE_ADMIN_TOKEN configured")
    if not _bearer_ok(authorization, token):
        raise HTTPException(401, "missing or wrong bearer token")
    outcome = await state.holder.refresh_async(True)
    model = state.holder.model
    return {"outcome": outcome, "model_version": model.version if model else None}
