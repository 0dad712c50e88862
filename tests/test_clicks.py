"""A click is counted only for interactions that were recorded: a write refused (unknown user,
an idempotency key reused with another body, a list of another user) counts none, and a retry
of a recorded write counts its list once. In-process, on the embedded store and on Redis."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from tests.inprocess import Client, serving

REDIS_URL = "redis://127.0.0.1:6379/11"
ADMIN = "admin token"


@pytest.fixture(params=["embedded", "redis"])
def client(request, two_small_bundles: Path, tmp_path: Path) -> Iterator[Client]:
    models = Path(shutil.copytree(two_small_bundles, tmp_path / "models"))
    settings = {"admin_token": ADMIN}
    if request.param == "redis":
        redis.Redis.from_url(REDIS_URL).flushdb()
        settings["redis_url"] = REDIS_URL
    with serving(models, tmp_path, **settings) as client:
        yield client


def clicked(client: Client) -> int:
    client.settle()
    response = client.get("/stats/online", headers={"Authorization": f"Bearer {ADMIN}"})
    assert response.status_code == 200, response.text
    return sum(row["clicked_lists"] for row in response.json()["versions"].values())


def a_list(client: Client, user: str) -> tuple[str, str]:
    """(recommendation_id, the first item) of a list served to `user` (None: an ad-hoc one)."""
    if user:
        answer = client.get(f"/users/{user}/recommendations?n=3").json()
    else:
        answer = client.request("POST", "/score", json={"items": [], "n": 3}).json()
    client.settle()
    return answer["recommendation_id"], answer["items"][0]["item_id"]


def post(client: Client, user: str, body: dict, key: str | None = None):
    headers = {"Idempotency-Key": key} if key else {}
    return client.request("POST", f"/users/{user}/interactions", json=body, headers=headers)


def test_a_refused_write_counts_no_click(client: Client) -> None:
    user = client.state.recommendations.model().bundle.user_ids[0]
    assert clicked(client) == 0
    rid, item = a_list(client, "")  # an ad-hoc list: anyone's to click
    assert post(client, "ghost-1", {"items": [item], "recommendation_id": rid}).status_code == 404
    assert clicked(client) == 0
    first = post(client, user, {"items": [item]}, key="k1")
    assert first.status_code == 201
    conflict = post(client, user, {"items": [item], "recommendation_id": rid}, key="k1")
    assert conflict.status_code == 409, conflict.text
    assert clicked(client) == 0
    other_rid, other_item = a_list(client, client.state.recommendations.model().bundle.user_ids[1])
    foreign = post(client, user, {"items": [other_item], "recommendation_id": other_rid})
    assert foreign.status_code == 422
    assert clicked(client) == 0
    body = {"items": [item], "recommendation_id": rid}
    recorded = post(client, user, body, key="k2")
    assert recorded.status_code == 201 and recorded.json()["attributed_to"] == [rid]
    again = post(client, user, body, key="k2")  # a retry: replayed, its list counted once
    assert again.status_code == 201 and again.json()["replayed"]
    assert again.json()["attributed_to"] == [rid]
    assert clicked(client) == 1


def test_a_retry_attributed_by_the_window_counts_no_newer_list(client: Client) -> None:
    """Without a recommendation_id the window picks the newest list holding the item: a retry
    after a newer list was served would have clicked that one too."""
    user = client.state.recommendations.model().bundle.user_ids[0]
    url = f"/users/{user}/recommendations?n=5&exclude_seen=false"
    first = client.get(url).json()
    client.settle()
    item = first["items"][0]["item_id"]
    recorded = post(client, user, {"items": [item]}, key="w1")
    assert recorded.json()["attributed_to"] == [first["recommendation_id"]]
    assert clicked(client) == 1
    newer = client.get(url).json()  # holds the item again
    client.settle()
    assert item in [i["item_id"] for i in newer["items"]]
    again = post(client, user, {"items": [item]}, key="w1")
    assert again.status_code == 201 and again.json()["replayed"]
    assert (
        again.json()["attributed_to"] == [] and "first recorded" in again.json()["attribution_note"]
    )
    assert clicked(client) == 1
