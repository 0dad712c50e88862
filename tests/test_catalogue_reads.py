"""The catalogue as the service reads it from the store: never read (Redis down since the start:
availability is not known, so not reported), larger than a request's read timeout (read on a
connection of its own, with the background timeout), and a read that failed (the last view
serves for a moment rather than every request trying again)."""

from __future__ import annotations

import asyncio
import json
import shutil
import socket
from pathlib import Path

import redis

from service.state.store import CATALOGUE_GEN, ITEM_PROFILES, PENDING_ITEMS, StoreUnavailable
from tests.inprocess import serving

REDIS_URL = "redis://127.0.0.1:6379/11"


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _models(two_small_bundles: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(two_small_bundles, tmp_path / "models"))


def test_an_unread_catalogue_reports_no_availability(two_small_bundles: Path, tmp_path: Path):
    down = f"redis://127.0.0.1:{_closed_port()}/0"
    with serving(_models(two_small_bundles, tmp_path), tmp_path, redis_url=down) as client:
        model = client.state.recommendations.model()
        item, user = model.bundle.item_ids[0], model.bundle.user_ids[0]
        answer = client.get(f"/items/{item}")
        assert answer.status_code == 503, answer.text
        assert "availability not known" in answer.json()["detail"]
        served = client.get(f"/users/{user}/recommendations?n=3")
        assert served.status_code == 200 and served.json()["degraded"] is True


def test_a_catalogue_larger_than_a_reads_timeout_is_read(two_small_bundles: Path, tmp_path: Path):
    """30,000 created items take Redis longer than the reads' timeout (50 ms) to hand over: on
    the reads' connection the service stayed degraded and refused every item write."""
    sync = redis.Redis.from_url(REDIS_URL)
    sync.flushdb()
    pipe = sync.pipeline(transaction=False)
    for k in range(30_000):
        pipe.hset(ITEM_PROFILES, f"api-{k}", json.dumps({"title": f"Item {k}"}))
        pipe.sadd(PENDING_ITEMS, f"api-{k}")
    pipe.set(CATALOGUE_GEN, 1)
    pipe.execute()
    models = _models(two_small_bundles, tmp_path)
    with serving(models, tmp_path, redis_url=REDIS_URL) as client:
        item = client.state.recommendations.model().bundle.item_ids[0]
        hidden = client.request("PUT", f"/items/{item}/availability", json={"available": False})
        assert hidden.status_code == 200, hidden.text
        answer = client.get(f"/items/{item}")
        assert answer.status_code == 200 and answer.json()["available"] is False
        assert answer.json()["degraded"] is False
        assert client.get("/items/api-29999").json()["in_model"] is False
    sync.flushdb()


def test_a_failed_read_is_not_tried_again_by_every_request(
    two_small_bundles: Path, tmp_path: Path
) -> None:
    redis.Redis.from_url(REDIS_URL).flushdb()
    with serving(_models(two_small_bundles, tmp_path), tmp_path, redis_url=REDIS_URL) as client:
        recommendations = client.state.recommendations
        item = recommendations.model().bundle.item_ids[0]
        assert client.get(f"/items/{item}").json()["degraded"] is False  # read once
        store, reads = recommendations.store, []

        async def failing(since=None) -> None:
            reads.append(1)
            raise StoreUnavailable("the interaction store (Redis) did not answer")

        store.catalogue = failing  # the generation still reads: only the whole read fails
        redis.Redis.from_url(REDIS_URL).incr(CATALOGUE_GEN)
        answers = [client.get(f"/items/{item}") for _ in range(20)]
        assert all(a.status_code == 200 and a.json()["degraded"] for a in answers)
        assert len(reads) == 1  # then the last view, for a second
    redis.Redis.from_url(REDIS_URL).flushdb()


def test_before_any_view_a_failing_read_is_neither_joined_nor_repeated(
    two_small_bundles: Path, tmp_path: Path
) -> None:
    """A fresh process (or a new model) has no view: a request whose own generation read
    fails answers from the bundle at once rather than joining another's catalogue read and
    failing with it (a 503 after the read's timeout), and a failed read is not started again by
    every request that follows."""
    redis.Redis.from_url(REDIS_URL).flushdb()
    with serving(_models(two_small_bundles, tmp_path), tmp_path, redis_url=REDIS_URL) as client:
        store = client.state.recommendations.store
        user = client.state.recommendations.model().bundle.user_ids[0]
        real_generation, reads = store.catalogue_generation, []

        async def failing_read(since=None) -> None:
            reads.append(1)
            await asyncio.sleep(0.3)
            raise StoreUnavailable("the interaction store (Redis) did not answer")

        async def generation() -> int:  # GET's user read brings the generation with it
            raise StoreUnavailable("the interaction store (Redis) did not answer")

        store.catalogue, store.catalogue_generation = failing_read, generation
        url = f"/users/{user}/recommendations?n=3"
        item = client.state.recommendations.model().bundle.item_ids[0]

        async def both():
            first = asyncio.ensure_future(client.http.get(url))
            await asyncio.sleep(0.05)  # the first request is reading the catalogue
            second = asyncio.ensure_future(client.http.get(f"/items/{item}/similar?n=3"))
            return await asyncio.gather(first, second)

        for answer in client.portal.call(both):
            assert answer.status_code == 200, answer.text
            assert answer.json()["degraded"] is True
        store.catalogue_generation = real_generation
        answers = [client.get(url) for _ in range(10)]
        assert all(a.status_code == 200 and a.json()["degraded"] for a in answers)
        assert len(reads) == 1  # then the bundle alone, for a second
    redis.Redis.from_url(REDIS_URL).flushdb()
