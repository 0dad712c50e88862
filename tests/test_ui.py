"""The admin page /ui/ in-process: what each page shows, the token, error pages, escaping."""

from __future__ import annotations

import re
import shutil
import tomllib
from collections.abc import Iterator
from pathlib import Path

import pytest

from service.api.ui import rate_plot
from service.experiment import CANDIDATE, start_experiment
from service.state.store import StoreUnavailable
from tests.inprocess import Client, serving

ROOT = Path(__file__).resolve().parent.parent
TOKEN = 'adm;in "token"=1'  # characters a cookie must quote


@pytest.fixture
def models(two_small_bundles: Path, tmp_path: Path) -> Path:
    """Two real exports of one small model; the first promoted."""
    return Path(shutil.copytree(two_small_bundles, tmp_path / "models"))


@pytest.fixture
def client(models: Path, tmp_path: Path) -> Iterator[Client]:
    with serving(models, tmp_path) as client:
        yield client


def served_with_a_click(client: Client, user: str) -> dict:
    answer = client.get(f"/users/{user}/recommendations").json()
    body = {
        "items": [answer["items"][0]["item_id"]],
        "recommendation_id": answer["recommendation_id"],
    }
    assert client.request("POST", f"/users/{user}/interactions", json=body).status_code == 201
    client.settle()
    return answer


def text_of(html: str) -> str:
    """The page's text, tags removed (as a reader sees it, entities left as they are)."""
    return re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", html))


# --- pages --------------------------------------------------------------------------------------


def test_overview_shows_the_version_its_metrics_the_plot_and_every_version(
    client: Client, models: Path
) -> None:
    served_with_a_click(client, "1")
    model = client.state.holder.model
    assert model is not None
    page = client.get("/ui/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert '<meta name="viewport"' in page.text and "/ui/static/ui.css" in page.text
    assert "<script" not in page.text and "'self'" in page.headers["content-security-policy"]
    text = text_of(page.text)
    assert model.version in text and "cddae" in text
    for name, value in model.bundle.manifest["metrics"].items():
        assert f"{name}" in text and f"{value:.4f}" in text
    other = [v for v in (p.name for p in models.iterdir() if p.is_dir()) if v != model.version]
    assert other and other[0] in text  # every version of the folder is listed
    assert "in service" in text and "No experiment is running" in text
    svg = page.text[page.text.index("<svg") : page.text.index("</svg>")]
    assert "rate-plot" in svg and "<circle" in svg and model.version in svg
    assert re.search(r"\b1 1 100\.0% 20\.7% – 100\.0%", text)  # one list, clicked, its interval


def test_a_manifest_that_cannot_be_read_is_said_not_a_failure(client: Client, models: Path) -> None:
    broken = models / "20990101T000000000000Z-broken00"
    broken.mkdir()
    (broken / "manifest.json").write_text("{not json")
    page = client.get("/ui/")
    assert page.status_code == 200 and "unreadable manifest" in page.text


def test_a_user_page_shows_the_history_with_titles_and_the_list_not_recorded(
    client: Client,
) -> None:
    answer = served_with_a_click(client, "2")
    before = client.portal.call(client.state.recommendations.online.counts)
    page = client.get("/ui/users/2")
    client.settle()
    assert page.status_code == 200
    text = text_of(page.text)
    history = client.portal.call(client.state.recommendations.history, "2")
    assert history and all(info.profile["title"] in text for info in history)
    assert f'href="/ui/items/{history[0].item_id}"' in page.text
    shown = re.findall(r'<td><a href="/ui/items/([^"]+)">', page.text)
    clicked = answer["items"][0]["item_id"]
    assert clicked in shown[len(shown) - len(history) :]  # recorded: now in the history
    assert clicked not in shown[:10]  # and out of the list
    assert "no experiment" in text and client.state.holder.model.version in text
    after = client.portal.call(client.state.recommendations.online.counts)
    assert after.cells == before.cells  # a preview is never an impression
    preview, _ = client.portal.call(client.state.recommendations.preview, "2", 10)
    assert "recommendation_id" not in preview


def test_an_item_page_shows_its_profile_availability_and_similar_items(client: Client) -> None:
    page = client.get("/ui/items/5")
    assert page.status_code == 200
    text = text_of(page.text)
    assert "Movie 5 (1995)" in text and "available yes" in text and "bundle" in text
    similar = client.portal.call(client.state.recommendations.preview_similar, "5", 10)
    assert len(similar["items"]) == 10
    assert all(entry["title"] in text for entry in similar["items"])
    assert 'href="/ui/items/5"' not in page.text.split("Similar items")[1]  # never itself
    client.request("PUT", "/items/5/availability", json={"available": False})
    assert "hidden from every list" in client.get("/ui/items/5").text


def test_the_lookup_form_leads_to_the_pages(client: Client) -> None:
    assert 'action="/ui/find"' in client.get("/ui/").text
    found = client.get("/ui/find", params={"user": "a b/c"})
    assert found.status_code == 303 and found.headers["location"] == "/ui/users/a%20b%2Fc"
    assert client.get("/ui/find", params={"item": "7"}).headers["location"] == "/ui/items/7"
    assert client.get("/ui/find").headers["location"] == "/ui/"


def test_hostile_ids_and_titles_are_escaped(client: Client) -> None:
    hostile = "<script>alert(1)</script>"
    unknown = "/ui/users/%3Cscript%3Ealert(1)"  # a 404 page naming the id
    assert client.request("PUT", "/items/x<b>", json={"title": hostile}).status_code == 201
    assert client.request("PUT", "/users/u<i>/profile", json={}).status_code == 201
    client.request("POST", "/users/u<i>/interactions", json={"items": ["x<b>"]})
    for url in ("/ui/items/x%3Cb%3E", "/ui/users/u%3Ci%3E", unknown):
        page = client.get(url)
        assert page.status_code == (404 if url == unknown else 200), url
        assert "<script" not in page.text and "<b>" not in page.text and "<i>" not in page.text
    item = client.get("/ui/items/x%3Cb%3E").text
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in item and "x&lt;b&gt;" in item
    user = client.get("/ui/users/u%3Ci%3E").text
    assert "u&lt;i&gt;" in user and "&lt;script&gt;" in user  # the item's title in the history
    assert 'href="/ui/items/x%3Cb%3E"' in user
    assert "&lt;script&gt;alert(1)" in client.get(unknown).text


# --- errors -------------------------------------------------------------------------------------


def test_unknown_ids_are_404_pages_and_invalid_ones_422_pages(client: Client) -> None:
    for url in ("/ui/users/nobody", "/ui/items/nothing"):
        page = client.get(url)
        assert page.status_code == 404 and "text/html" in page.headers["content-type"]
        assert "Not found" in page.text and url.rsplit("/", 1)[1] in page.text
    for url in ("/ui/users/a%01b", "/ui/items/" + "x" * 129, "/ui/find?item=%7F"):
        page = client.get(url)
        assert page.status_code == 422 and "text/html" in page.headers["content-type"], url
    assert "control character" in client.get("/ui/users/a%01b").text
    assert "longer than 128" in client.get("/ui/items/" + "x" * 129).text
    page = client.get("/ui/users/1?n=0")
    assert page.status_code == 422 and "greater than or equal to 1" in page.text
    page = client.get("/ui/users/1?n=1000")
    assert page.status_code == 422 and "n must be between 1 and 100" in page.text


def test_an_unreachable_store_is_a_503_page_and_said_on_the_overview(
    client: Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def unreachable(*_args, **_kwargs):
        raise StoreUnavailable("redis at 10.0.0.1:6379 timed out")

    monkeypatch.setattr(client.state.recommendations, "history", unreachable)
    monkeypatch.setattr(client.state.recommendations.online, "counts", unreachable)
    page = client.get("/ui/users/1")
    assert page.status_code == 503 and "Store unreachable" in page.text
    assert "10.0.0.1" not in page.text  # our words, not the driver's
    overview = client.get("/ui/")
    assert overview.status_code == 200 and "the store is unreachable" in overview.text


def test_without_a_model_the_pages_say_so(tmp_path: Path) -> None:
    empty = tmp_path / "models"
    empty.mkdir()
    with serving(empty, tmp_path, record_impressions=False) as client:
        overview = client.get("/ui/")
        assert overview.status_code == 200 and "No model loaded" in overview.text
        assert "recording is off" in overview.text
        for url in ("/ui/users/1", "/ui/items/1"):
            page = client.get(url)
            assert page.status_code == 503 and "No model loaded" in page.text


# --- the admin token ----------------------------------------------------------------------------


def test_with_a_token_pages_need_the_bearer_or_the_login_cookie(
    models: Path, tmp_path: Path
) -> None:
    with serving(models, tmp_path, admin_token=TOKEN) as client:
        for url in ("/ui/", "/ui/users/1", "/ui/items/1", "/ui/find?user=1"):
            page = client.get(url)
            assert page.status_code == 401 and 'href="/ui/login"' in page.text, url
        assert client.get("/ui/static/ui.css").status_code == 200  # the style needs no token
        wrong = client.get("/ui/", headers={"Authorization": "Bearer nope"})
        assert wrong.status_code == 401
        assert client.get("/ui/", headers={"Cookie": "cddae_admin=nope"}).status_code == 401
        bearer = client.get("/ui/", headers={"Authorization": f"Bearer {TOKEN}"})
        assert bearer.status_code == 200 and "In service" in bearer.text

        form = client.get("/ui/login")
        assert form.status_code == 200 and 'name="token"' in form.text
        refused = client.request("POST", "/ui/login", data={"token": "nope"})
        assert refused.status_code == 401 and "not the admin token" in refused.text
        assert "set-cookie" not in refused.headers
        login = client.request("POST", "/ui/login", data={"token": TOKEN})
        assert login.status_code == 303 and login.headers["location"] == "/ui/"
        cookie = login.headers["set-cookie"]
        assert cookie.startswith("cddae_admin=") and "HttpOnly" in cookie
        assert "SameSite=strict" in cookie and "Path=/ui" in cookie
        for url in ("/ui/", "/ui/users/1", "/ui/items/1"):  # the cookie, kept by the client
            assert client.get(url).status_code == 200, url


def test_without_a_token_the_pages_are_open_and_the_login_says_so(client: Client) -> None:
    assert client.get("/ui/").status_code == 200
    assert "the pages are open" in client.get("/ui/login").text
    login = client.request("POST", "/ui/login", data={"token": "anything"})
    assert login.status_code == 303 and "set-cookie" not in login.headers


# --- an experiment ------------------------------------------------------------------------------


def test_a_running_experiment_is_on_the_overview_and_a_users_variant_on_the_user_page(
    client: Client, models: Path
) -> None:
    control = client.state.holder.model.version
    candidate = next(p.name for p in models.iterdir() if p.is_dir() and p.name != control)
    experiment = start_experiment(models, candidate, 0.5)
    client.state.holder.refresh()
    assert client.state.holder.experiment == experiment
    user = next(str(u) for u in range(1, 121) if experiment.variant(str(u)) == CANDIDATE)
    client.get(f"/users/{user}/recommendations")
    client.settle()
    text = text_of(client.get("/ui/").text)
    assert experiment.id in text and "50% get the candidate" in text
    assert re.search(rf"candidate 1 0 0\.0% 0\.0% – \d+\.\d% {candidate}", text)
    assert "Candidate − control:" in text and "points" in text
    assert re.search(rf"{candidate} candidate ", text)  # its role in the versions table
    page = text_of(client.get(f"/ui/users/{user}").text)
    assert f"served by {candidate} variant candidate" in page


# --- the plot -----------------------------------------------------------------------------------


def test_the_plot_keeps_the_newest_twelve_versions_of_the_last_fourteen_days() -> None:
    now = 500_000
    by_version = {f"v{i:02d}": {now - i: [10, 2], now - i - 1: [10, 3]} for i in range(13)}
    by_version["old"] = {now - 14 * 24: [5, 1]}  # just before the fourteen days
    by_version["empty"] = {now: [0, 0]}
    plot = rate_plot(by_version, now)
    assert plot is not None
    assert [v for v, _ in plot.series] == [f"v{i:02d}" for i in range(12)]  # v12 served last
    assert len(set(dict(plot.series).values())) == 12  # a colour each
    assert "old" not in plot.svg and "empty" not in plot.svg and "v12" not in plot.svg
    assert plot.svg.count("<polyline") == 12 and plot.svg.count("<polygon") == 12
    assert rate_plot({"old": {now - 14 * 24: [5, 1]}}, now) is None
    assert rate_plot({}, now) is None


def test_the_plot_draws_a_lone_hour_as_a_point_with_its_interval_and_escapes_names() -> None:
    plot = rate_plot({"<v&1>": {100: [1, 1], 102: [4, 1], 103: [4, 2]}}, 103)
    assert plot is not None and plot.series == [("<v&1>", "#1f77b4")]
    assert "&lt;v&amp;1&gt;: 4 of 9 lists clicked" in plot.svg and "<v&1>" not in plot.svg
    assert plot.svg.count("<circle") == 1 and plot.svg.count("<polyline") == 1  # 100; 102-103
    assert ">100%</text>" in plot.svg  # the lone hour's interval reaches 1: the axis's top
    assert plot.svg.startswith("<svg") and plot.svg.endswith("</svg>")


def test_the_wheel_carries_the_templates_and_the_stylesheet() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    patterns = project["tool"]["setuptools"]["package-data"]["service"]
    package = ROOT / "service"
    found = {path.relative_to(package) for pattern in patterns for path in package.glob(pattern)}
    assert Path("api/templates/overview.html") in found and Path("api/static/ui.css") in found
    assert any(d.startswith("jinja2") for d in project["project"]["dependencies"])
