"""Online evaluation from outside (issue 21, first part): every list has an id and is recorded;
interactions are attributed to lists, by id or by window; counts per version are exact across
replicas and restarts — real uvicorn processes, both stores."""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import httpx
import pytest
import redis

from service.serving.recommendations import IMPRESSION_BATCH_SECONDS
from tests.e2e.conftest import ADMIN_TOKEN, REDIS_URL, Server

AUTH = {"Authorization": f"Bearer {ADMIN_TOKEN}"}


def _stats(url: str) -> dict:
    """The counts, once every replica's queued impressions have reached the store (each
    replica records within IMPRESSION_BATCH_SECONDS)."""
    time.sleep(4 * IMPRESSION_BATCH_SECONDS)
    response = httpx.get(f"{url}/stats/online", headers=AUTH, timeout=30)
    assert response.status_code == 200, response.text
    return response.json()["versions"]


@pytest.mark.parametrize("store", ["redis", "embedded"])
def test_lists_have_ids_interactions_are_attributed_and_counts_are_exact(
    store: str, base_models: Path, tmp_path: Path
) -> None:
    models = tmp_path / "models"
    shutil.copytree(base_models, models)
    url = REDIS_URL if store == "redis" else None
    if url:
        redis.Redis.from_url(url).flushdb()
    servers = [Server(models, url, tmp_path).start()]
    if url:  # a second replica on the same store
        servers.append(Server(models, url, tmp_path / "b").start())
    try:
        served, ids = 0, set()
        for k in range(12):  # the same list asked twice per user: a fresh id when cached
            user = str(1 + k // 2)
            answer = httpx.get(f"{servers[k % len(servers)].url}/users/{user}/recommendations",
                               params={"n": 5}, timeout=30).json()  # fmt: skip
            assert len(answer["recommendation_id"]) == 32 and answer["recommendation_id"] not in ids
            ids.add(answer["recommendation_id"])
            served += 1
        assert answer["cached"] is True
        batch = httpx.post(f"{servers[0].url}/score", json={"users": [{"items": ["1"]}] * 3},
                           timeout=30).json()["results"]  # fmt: skip
        assert len({r["recommendation_id"] for r in batch}) == 3
        similar = httpx.get(f"{servers[-1].url}/items/1/similar", timeout=30).json()
        assert similar["recommendation_id"]
        served += 4
        version = answer["model_version"]
        assert _stats(servers[0].url)[version]["lists"] == served
        assert _stats(servers[-1].url)[version]["clicked_lists"] == 0

        # by id: tied to that list; another user's list is a 422 and nothing is recorded
        mine = httpx.get(f"{servers[0].url}/users/7/recommendations", params={"n": 5},
                         timeout=30).json()  # fmt: skip
        theirs = httpx.get(f"{servers[-1].url}/users/8/recommendations", params={"n": 5},
                           timeout=30).json()  # fmt: skip
        served += 2
        item = mine["items"][2]["item_id"]
        body = {"items": [item], "recommendation_id": mine["recommendation_id"]}
        clicked = httpx.post(f"{servers[-1].url}/users/7/interactions", json=body, timeout=30)
        assert clicked.status_code == 201 and clicked.json()["attributed_to"] == [
            mine["recommendation_id"]
        ]
        gone = {"items": ["1"], "recommendation_id": "0" * 32}  # expired, or never recorded
        kept = httpx.post(f"{servers[0].url}/users/7/interactions", json=gone, timeout=30)
        assert kept.status_code == 201 and kept.json()["recorded"] == 1, kept.text
        assert kept.json()["attributed_to"] == [] and "not in the store" in kept.text
        wrong = {"items": [item], "recommendation_id": theirs["recommendation_id"]}
        refused = httpx.post(f"{servers[0].url}/users/7/interactions", json=wrong, timeout=30)
        assert refused.status_code == 422 and "names no list served to" in refused.text
        after = httpx.get(f"{servers[0].url}/users/7/recommendations", params={"n": 5},
                          timeout=30).json()  # fmt: skip
        served += 1
        assert item not in [i["item_id"] for i in after["items"]]  # the first write counted
        # by window: the most recent list of this user that held the item
        other = after["items"][0]["item_id"]
        windowed = httpx.post(f"{servers[0].url}/users/7/interactions",
                              json={"items": [other, "99999"]}, timeout=30)  # fmt: skip
        assert windowed.json()["attributed_to"] == [after["recommendation_id"]]
        again = httpx.post(f"{servers[0].url}/users/7/interactions",
                           json={"items": [other], "recommendation_id": after["recommendation_id"]},
                           timeout=30)  # fmt: skip
        assert again.status_code == 201  # a second click on a clicked list: counted once
        figures = _stats(servers[0].url)[version]
        assert figures["lists"] == served and figures["clicked_lists"] == 2
        assert figures["ci95"][0] <= figures["rate"] <= figures["ci95"][1]

        for server in servers:  # restarts: counted in the store, so the same after
            server.stop()
            server.start()
        assert _stats(servers[-1].url)[version] == figures
        assert httpx.get(f"{servers[0].url}/stats/online", timeout=30).status_code == 401
    finally:
        for server in servers:
            server.stop()
