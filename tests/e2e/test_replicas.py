"""Past one process: two API replicas behind one Redis share cache, invalidation and events."""

from __future__ import annotations

import shutil
from pathlib import Path

import httpx
import redis

from tests.e2e.conftest import REDIS_URL, Server


def _ids(response: httpx.Response) -> list[str]:
    assert response.status_code == 200, response.text
    return [item["item_id"] for item in response.json()["items"]]


def test_two_replicas_stay_consistent(base_models: Path, tmp_path: Path) -> None:
    models = tmp_path / "models"
    shutil.copytree(base_models, models)
    redis.Redis.from_url(REDIS_URL).flushdb()
    a = Server(models, REDIS_URL, tmp_path / "a").start()
    b = Server(models, REDIS_URL, tmp_path / "b").start()
    try:
        first = _ids(httpx.get(f"{a.url}/users/5/recommendations", params={"n": 5}))
        cached = httpx.get(f"{b.url}/users/5/recommendations", params={"n": 5}).json()
        assert cached["cached"] is True and [i["item_id"] for i in cached["items"]] == first

        taken = first[:2]  # recorded through one replica ...
        posted = httpx.post(f"{a.url}/users/5/interactions", json={"items": taken})
        assert posted.status_code == 201, posted.text
        after = httpx.get(f"{b.url}/users/5/recommendations", params={"n": 5}).json()
        assert after["cached"] is False  # ... invalidates the other's cache
        assert not set(taken) & {i["item_id"] for i in after["items"]}

        created = httpx.put(f"{b.url}/users/r-1/profile", json={"gender": "F", "age": 30})
        assert created.status_code == 201  # a user created on one is known to the other
        assert httpx.get(f"{a.url}/users/r-1/recommendations").status_code == 200
        assert redis.Redis.from_url(REDIS_URL).xlen("cddae:events") == 3  # one shared log
    finally:
        a.stop()
        b.stop()
