"""The admin page, /ui/: server-rendered HTML over what the service knows, for people.

Jinja2 templates with autoescape on (ids and titles are anybody's input), one stylesheet, no
JavaScript: the plot of online rates is an SVG built here. Errors are pages, not JSON. When
CDDAE_ADMIN_TOKEN is set, every page needs it: as a bearer header, or as the cookie that
/ui/login sets (a browser cannot easily send a header).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import html
import secrets
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, NamedTuple
from urllib.parse import parse_qs, quote

from fastapi import APIRouter, Depends, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from fastapi.routing import APIRoute
from jinja2 import Environment, FileSystemLoader, StrictUndefined
from pydantic import SecretStr

from service.api.app_state import AppState, AppStateDep
from service.bundle import BundleError, list_versions, read_manifest
from service.experiment import CANDIDATE, CONTROL, Experiment
from service.ids import id_problem
from service.serving.onnx_model import InputError
from service.serving.recommendations import NoModel, NotFound
from service.state.online import Counts
from service.state.stats import experiment_summary, online_table, wilson
from service.state.store import StoreUnavailable

HERE = Path(__file__).parent
STATIC = HERE / "static"
COOKIE = "cddae_admin"
MAX_FORM_BYTES = 4096  # the login form holds one token
MAX_VERSION_ROWS = 40  # the models folder's newest versions listed; older ones are counted
SHOWN_METRICS = ("P@10", "R@10")  # the versions table; the one in service shows all
# No script may run, nothing loads from elsewhere, and no other site may frame the pages.
HEADERS = {
    "Cache-Control": "no-store",
    "Content-Security-Policy": "default-src 'none'; style-src 'self'; img-src 'self'; "
    "form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "X-Content-Type-Options": "nosniff",
}


class PageError(Exception):
    """A page that cannot be shown: rendered as an error page with this status."""

    def __init__(self, status: int, title: str, message: str):
        super().__init__(message)
        self.status, self.title, self.message = status, title, message


def _page_error(error: Exception) -> PageError:
    """What the service's own errors mean on a page."""
    if isinstance(error, PageError):
        return error
    if isinstance(error, NotFound):
        return PageError(404, "Not found", str(error))
    if isinstance(error, InputError):
        return PageError(422, "Invalid request", str(error))
    if isinstance(error, NoModel):
        return PageError(503, "No model loaded", "no model loaded yet: nothing to show")
    if isinstance(error, RequestValidationError):
        problems = [f"{'.'.join(map(str, p.get('loc', ())))}: {p.get('msg', '')}"
                    for p in error.errors()[:5]]  # fmt: skip
        return PageError(422, "Invalid request", "; ".join(problems))
    return PageError(503, "Store unreachable", "the interaction store is unreachable; try again")


class PageRoute(APIRoute):
    """Every failure of a /ui route as an HTML page: the readers are people, not clients."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def page_or_error(request: Request) -> Response:
            try:
                return await handler(request)
            except (PageError, NotFound, InputError, NoModel, StoreUnavailable,
                    RequestValidationError) as error:  # fmt: skip
                return error_page(_page_error(error))

        return page_or_error


router = APIRouter(prefix="/ui", include_in_schema=False, route_class=PageRoute)


# --- rendering ----------------------------------------------------------------------------------


def percent(value: float | None, digits: int = 1) -> str:
    return "—" if value is None else f"{100 * value:.{digits}f}%"


def interval(bounds: list[float] | tuple[float, float] | None) -> str:
    return "—" if not bounds else f"{percent(bounds[0])} – {percent(bounds[1])}"


def number(value: Any, digits: int = 4) -> str:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return "—" if value is None else str(value)
    return f"{value:,}" if isinstance(value, int) else f"{value:.{digits}f}"


def points(value: float | None) -> str:
    """A difference of rates, in percentage points, signed."""
    return "—" if value is None else f"{100 * value:+.1f} points"


def when(value: Any) -> str:
    """An ISO time as a short UTC one; anything else as it is."""
    try:
        moment = dt.datetime.fromisoformat(str(value))
    except ValueError:
        return "—" if value is None else str(value)
    if moment.tzinfo is not None:
        moment = moment.astimezone(dt.UTC)
    return f"{moment:%Y-%m-%d %H:%M} UTC"


def shown(value: Any) -> str:
    """A profile value as text: lists joined, nothing as a dash."""
    if value is None or value == []:
        return "—"
    if isinstance(value, list | tuple):
        return ", ".join(map(str, value))
    return str(value)


def _environment() -> Environment:
    env = Environment(
        loader=FileSystemLoader(HERE / "templates"),
        autoescape=True,  # every page: ids, titles and versions are anybody's input
        undefined=StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters.update(
        percent=percent, interval=interval, number=number, shown=shown, points=points, when=when
    )
    env.filters["path"] = lambda value: quote(str(value), safe="")
    return env


TEMPLATES = _environment()


def page(template: str, status: int = 200, **context: Any) -> HTMLResponse:
    html_text = TEMPLATES.get_template(template).render(**context)
    return HTMLResponse(html_text, status, headers=HEADERS)


def error_page(error: PageError) -> HTMLResponse:
    return page("error.html", error.status, error=error, login=error.status == 401)


# --- the admin token: a bearer header or the cookie ---------------------------------------------


def _same(given: str | None, expected: str) -> bool:
    """Constant-time, on bytes (a header decoded as Latin-1 never raises here)."""
    if not given:
        return False
    return secrets.compare_digest(
        given.encode("utf-8", "surrogateescape"), expected.encode("utf-8", "surrogateescape")
    )


def token_given(request: Request, token: SecretStr | None) -> bool:
    """Whether the request carries the admin token (always, when none is configured)."""
    if token is None:
        return True
    secret = token.get_secret_value()
    bearer = _same(request.headers.get("authorization"), f"Bearer {secret}")
    cookie = _same(request.cookies.get(COOKIE), secret)
    return bearer or cookie


async def admin(request: Request, state: AppStateDep) -> AppState:
    """The app state, for a request that may see the admin pages."""
    if not token_given(request, state.settings.admin_token):
        raise PageError(401, "Sign in", "these pages need the admin token (CDDAE_ADMIN_TOKEN)")
    return state


Admin = Annotated[AppState, Depends(admin)]


def checked_id(value: str, what: str) -> str:
    """The API's rule for ids (service.ids), as a 422 page naming the problem."""
    if problem := id_problem(value, what):
        raise PageError(422, "Invalid id", problem)
    return value


@router.get("/login")
async def login_form(state: AppStateDep) -> HTMLResponse:
    return page("login.html", open_pages=state.settings.admin_token is None, wrong=False)


@router.post("/login")
async def login(request: Request, state: AppStateDep) -> Response:
    """Check the token once, then keep it in an HttpOnly cookie for the /ui pages only. Read
    as a urlencoded form by hand: python-multipart is not a dependency of the service."""
    token = state.settings.admin_token
    if token is None:
        return RedirectResponse("/ui/", 303)
    body = await request.body()  # bounded by the app's BodyLimit, and below
    fields = parse_qs(body[:MAX_FORM_BYTES].decode("utf-8", "replace"), max_num_fields=5)
    given = (fields.get("token") or [""])[0]
    if len(body) > MAX_FORM_BYTES or not _same(given, token.get_secret_value()):
        return page("login.html", 401, open_pages=False, wrong=True)
    response = RedirectResponse("/ui/", 303)
    response.set_cookie(COOKIE, given, path="/ui", httponly=True, samesite="strict",
                        secure=request.url.scheme == "https")  # fmt: skip
    return response


# --- the overview -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Plot:
    svg: str
    series: list[tuple[str, str]]  # (version, colour), as the legend lists them


COLOURS = ("#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b",
           "#e377c2", "#17becf", "#bcbd22", "#7f7f7f", "#393b79", "#637939")  # fmt: skip
NICE_TOPS = (0.02, 0.04, 0.08, 0.1, 0.2, 0.4, 0.6, 0.8, 1.0)  # quarters read well
HOUR_STEPS = (1, 2, 3, 6, 12, 24, 48, 72, 168)
WIDTH, HEIGHT = 640, 260
LEFT, RIGHT, TOP, BOTTOM = 52, 14, 12, 30
Scale = Callable[[float], float]  # hours or rates to the SVG's coordinates


class HourRate(NamedTuple):
    hour: int
    rate: float
    lo: float  # the Wilson 95% interval
    hi: float
    lists: int
    clicked: int


def _hour_rates(hours: dict[int, list[int]]) -> list[HourRate]:
    return [
        HourRate(h, c[1] / c[0], *wilson(c[1], c[0]), c[0], c[1]) for h, c in sorted(hours.items())
    ]


def _runs(hours: list[int]) -> list[list[int]]:
    """Sorted hours cut into runs of consecutive ones: a gap breaks a line."""
    runs: list[list[int]] = []
    for hour in hours:
        if runs and hour == runs[-1][-1] + 1:
            runs[-1].append(hour)
        else:
            runs.append([hour])
    return runs


def _ticks(first: int, last: int) -> list[int]:
    span = max(last - first, 1)
    step = next((s for s in HOUR_STEPS if span / s <= 6), HOUR_STEPS[-1])
    start = -(-first // step) * step
    return list(range(start, last + 1, step)) or [first]


def _tick_label(hour: int) -> str:
    """The day at midnight (UTC), else the hour."""
    moment = dt.datetime.fromtimestamp(hour * 3600, dt.UTC)
    return f"{moment:%b %d}" if moment.hour == 0 else f"{moment:%H:00}"


def _anchor(at: float) -> str:
    """Labels near an end are aligned to it, not cut off by it."""
    if at > WIDTH - RIGHT - 30:
        return "end"
    return "start" if at < LEFT + 30 else "middle"


def rate_plot(
    by_version: dict[str, dict[int, list[int]]], now_hour: int, days: int = 14, most: int = 12
) -> Plot | None:
    """Each version's rate per hour (clicked lists / lists) with its Wilson 95% band, as an
    inline SVG; None when no list was answered in the last `days`. At most `most` versions,
    those served most recently. Pure: the page's plot without JavaScript or matplotlib."""
    first_kept = now_hour - days * 24 + 1
    series = {
        version: {h: c for h, c in hours.items() if h >= first_kept and c[0] > 0}
        for version, hours in by_version.items()
    }
    series = {v: s for v, s in series.items() if s}
    if not series:
        return None
    chosen = sorted(series, key=lambda v: (max(series[v]), v), reverse=True)[:most]
    points = {v: _hour_rates(series[v]) for v in chosen}
    every = [p for ps in points.values() for p in ps]
    first, last = min(p.hour for p in every), max(p.hour for p in every)
    top = next(t for t in NICE_TOPS if t >= max(p.hi for p in every))

    def x(hour: float) -> float:
        if last == first:
            return LEFT + (WIDTH - LEFT - RIGHT) / 2
        return LEFT + (hour - first) / (last - first) * (WIDTH - LEFT - RIGHT)

    def y(rate: float) -> float:
        return TOP + (1 - rate / top) * (HEIGHT - TOP - BOTTOM)

    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {WIDTH} {HEIGHT}" role="img" '
        'aria-label="rate per hour and version, with 95% intervals" class="rate-plot">'
    ]
    parts += _axes(first, last, top, x, y)
    colours = {}
    for at, version in enumerate(chosen):
        colours[version] = colour = COLOURS[at % len(COLOURS)]
        parts.append(_series(version, points[version], colour, x, y))
    parts.append("</svg>")
    return Plot("".join(parts), [(v, colours[v]) for v in chosen])


def _axes(first: int, last: int, top: float, x: Scale, y: Scale) -> list[str]:
    parts = []
    digits = 0 if top >= 0.1 else 1
    for k in range(5):
        value = top * k / 4
        at = y(value)
        parts.append(f'<line x1="{LEFT}" x2="{WIDTH - RIGHT}" y1="{at:.1f}" y2="{at:.1f}" '
                     'class="grid"/>')  # fmt: skip
        parts.append(f'<text x="{LEFT - 6}" y="{at + 4:.1f}" text-anchor="end">'
                     f"{percent(value, digits)}</text>")  # fmt: skip
    for hour in _ticks(first, last):
        at = x(hour)
        parts.append(f'<line x1="{at:.1f}" x2="{at:.1f}" y1="{HEIGHT - BOTTOM}" '
                     f'y2="{HEIGHT - BOTTOM + 4}" class="axis"/>')  # fmt: skip
        parts.append(f'<text x="{at:.1f}" y="{HEIGHT - 8}" text-anchor="{_anchor(at)}">'
                     f"{_tick_label(hour)}</text>")  # fmt: skip
    parts.append(f'<line x1="{LEFT}" x2="{WIDTH - RIGHT}" y1="{HEIGHT - BOTTOM}" '
                 f'y2="{HEIGHT - BOTTOM}" class="axis"/>')  # fmt: skip
    return parts


def _series(version: str, points: list[HourRate], colour: str, x: Scale, y: Scale) -> str:
    """One version: per run of consecutive hours its band and line; a lone hour as a point
    with its interval as a bar. The hover title names the version."""
    by_hour = {p.hour: p for p in points}
    lists, clicked = sum(p.lists for p in points), sum(p.clicked for p in points)
    name = html.escape(version)
    parts = [f'<g class="series"><title>{name}: {clicked:,} of {lists:,} lists clicked</title>']
    for run in _runs(sorted(by_hour)):
        rows = [by_hour[h] for h in run]
        if len(rows) == 1:
            p = rows[0]
            parts.append(f'<line x1="{x(p.hour):.1f}" x2="{x(p.hour):.1f}" y1="{y(p.lo):.1f}" '
                         f'y2="{y(p.hi):.1f}" stroke="{colour}" stroke-opacity="0.45" '
                         'stroke-width="6"/>')  # fmt: skip
            parts.append(f'<circle cx="{x(p.hour):.1f}" cy="{y(p.rate):.1f}" r="3.5" '
                         f'fill="{colour}"/>')  # fmt: skip
            continue
        upper = " ".join(f"{x(p.hour):.1f},{y(p.hi):.1f}" for p in rows)
        lower = " ".join(f"{x(p.hour):.1f},{y(p.lo):.1f}" for p in reversed(rows))
        line = " ".join(f"{x(p.hour):.1f},{y(p.rate):.1f}" for p in rows)
        parts.append(f'<polygon points="{upper} {lower}" fill="{colour}" fill-opacity="0.15"/>')
        parts.append(f'<polyline points="{line}" fill="none" stroke="{colour}" '
                     'stroke-width="2"/>')  # fmt: skip
    parts.append("</g>")
    return "".join(parts)


@dataclass(frozen=True)
class OnlineFigures:
    status: str | None  # why there are none: recording is off, the store is unreachable
    table: dict[str, dict[str, Any]]
    summary: dict[str, Any] | None  # the experiment's variants and their difference
    plot: Plot | None


def _variants(state: AppState, experiment: Experiment | None) -> dict[str, str]:
    """Which variant each version serves in the running experiment (as /stats/online says)."""
    if experiment is None:
        return {}
    variants = {experiment.control: CONTROL, experiment.candidate: CANDIDATE}
    if state.holder.model is not None:
        variants.setdefault(state.holder.model.version, CONTROL)
    return variants


async def online_figures(state: AppState) -> OnlineFigures:
    """The online counts as figures; never a failure: a missing or unreachable store is said."""
    online = state.recommendations.online
    if online is None:
        return OnlineFigures("recording is off (CDDAE_RECORD_IMPRESSIONS=false)", {}, None, None)
    try:
        counts: Counts = await online.counts()
    except StoreUnavailable:
        return OnlineFigures("the store is unreachable: no online figures now", {}, None, None)
    experiment = state.holder.experiment
    table = online_table(counts, None, _variants(state, experiment))
    summary = experiment_summary(counts, experiment) if experiment is not None else None
    plot = rate_plot(counts.by_version, int(time.time() // 3600))
    return OnlineFigures(None, table, summary, plot)


@dataclass(frozen=True)
class VersionRow:
    version: str
    role: str  # in service, candidate, refused, removed (online figures only), or ""
    created_at: str | None
    kind: str | None
    metrics: dict[str, Any]
    unreadable: bool = False


def _role(state: AppState, version: str) -> str:
    model, experiment = state.holder.model, state.holder.experiment
    if model is not None and model.version == version:
        return "in service"
    if experiment is not None and experiment.candidate == version:
        return "candidate"
    if version in state.holder.refused:
        return "refused: " + state.holder.refused[version]
    return ""


def _row(state: AppState, folder: Path) -> VersionRow:
    try:
        manifest = read_manifest(folder)
    except (BundleError, OSError):
        return VersionRow(folder.name, _role(state, folder.name), None, None, {}, True)
    model = manifest.get("model")
    metrics = manifest.get("metrics")
    created = manifest.get("created_at")
    return VersionRow(
        folder.name,
        _role(state, folder.name),
        created if isinstance(created, str) else None,
        str(model.get("kind")) if isinstance(model, dict) else None,
        metrics if isinstance(metrics, dict) else {},
    )


def version_rows(state: AppState, online: dict[str, Any]) -> tuple[list[VersionRow], int]:
    """The models folder's versions, newest first (at most MAX_VERSION_ROWS; how many more),
    then versions with online figures whose folder is gone. Reads files: run in a thread."""
    models_dir = state.settings.models_dir
    versions = list_versions(models_dir)[::-1]
    rows = [_row(state, models_dir / v) for v in versions[:MAX_VERSION_ROWS]]
    gone = [VersionRow(v, "removed", None, None, {}) for v in online if v not in versions]
    return rows + gone, max(0, len(versions) - MAX_VERSION_ROWS)


@router.get("/")
async def overview(state: Admin) -> HTMLResponse:
    """The version in service, the experiment, every version's offline and online figures."""
    figures = await online_figures(state)
    rows, older = await asyncio.to_thread(version_rows, state, figures.table)
    model = state.holder.model
    return page(
        "overview.html",
        model=model,
        manifest=model.bundle.manifest if model is not None else {},
        holder=state.holder,
        experiment=state.holder.experiment,
        figures=figures,
        rows=rows,
        older=older,
        shown_metrics=SHOWN_METRICS,
    )


@router.get("/find")
async def find(state: Admin, user: str | None = None, item: str | None = None) -> RedirectResponse:
    """The overview's lookup form: to the user's or the item's page."""
    if user:
        return RedirectResponse(f"/ui/users/{quote(checked_id(user, 'user id'), safe='')}", 303)
    if item:
        return RedirectResponse(f"/ui/items/{quote(checked_id(item, 'item id'), safe='')}", 303)
    return RedirectResponse("/ui/", 303)


# --- a user, an item ----------------------------------------------------------------------------


@router.get("/users/{user_id}")
async def user_page(
    state: Admin, user_id: str, n: Annotated[int, Query(ge=1, le=1000)] = 10
) -> HTMLResponse:
    """What the user did and what the user would be served now (a preview: not recorded)."""
    checked_id(user_id, "user id")
    history = await state.recommendations.history(user_id)
    answer, assigned = await state.recommendations.preview(user_id, n)
    return page("user.html", user_id=user_id, history=history, answer=answer,
                assigned=assigned, n=n)  # fmt: skip


@router.get("/items/{item_id}")
async def item_page(state: Admin, item_id: str) -> HTMLResponse:
    """An item's profile and availability, and the items the model holds most alike."""
    checked_id(item_id, "item id")
    info, version, stale = await state.recommendations.item(item_id)
    similar = await state.recommendations.preview_similar(item_id, 10)
    return page("item.html", info=info, version=version, stale=stale, similar=similar)
