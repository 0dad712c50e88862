"""Catalogue control from outside (issue 20): filters and exclusions, hidden items, items created
through the API, similar items — real uvicorn processes, on both stores, through a restart and a
retrain. The bundle has 943 users, as MovieLens-100K has."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from service.bundle import current_version, promote
from tests.e2e.conftest import REDIS_URL, Server, running
from tests.synthetic import write_grouplens
from training.cli import main
from training.data.prepared import ProtocolConfig, prepare
from training.jobs.export import export_checkpoint
from training.jobs.pipeline import train_and_evaluate

USERS, ITEMS, GROUPS = 943, 200, 4
BLOCK = ITEMS // GROUPS  # users of group g like items of block g, whose genre is GENRE[g]
GENRE = ("Action", "Adventure", "Animation", "Children's")
FAST = {"model": {"hidden": [16]}, "train": {"epochs": 8, "lr": 0.01, "batch_size": 32}}


def _year(item: int) -> int:
    return 1950 + item % 50  # the synthetic u.item's release date


def _block(item: int) -> int:
    return (item - 1) // BLOCK


@pytest.fixture(scope="module")
def shop_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_grouplens(tmp_path_factory.mktemp("shop-data"), USERS, ITEMS, GROUPS, seed=3)


@pytest.fixture(scope="module")
def shop_models(shop_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    prepared = prepare(shop_data, ProtocolConfig(seed=0))
    _, checkpoint = train_and_evaluate("cddae", prepared, model=FAST["model"],
                                       train=FAST["train"], progress=False)  # fmt: skip
    models = tmp_path_factory.mktemp("shop-models")
    version, _ = export_checkpoint(checkpoint, models)
    promote(models, version)
    return models


class Shop:
    def __init__(self, server: Server, store: str, data: Path, workdir: Path):
        self.server, self.store, self.data, self.workdir = server, store, data, workdir
        self.client = httpx.Client(base_url=server.url, timeout=30)

    def get(self, path: str, **params) -> httpx.Response:
        return self.client.get(path, params=params)

    def put(self, path: str, body: dict) -> httpx.Response:
        return self.client.put(path, json=body)

    def items(self, response: httpx.Response) -> list[str]:
        assert response.status_code == 200, response.text
        return [item["item_id"] for item in response.json()["items"]]

    def retrain(self) -> str:
        """`cddae retrain` against this store, then wait for the server to serve the result."""
        config = self.workdir / "fast.json"
        config.write_text(json.dumps(FAST))
        store = (["--redis-url", REDIS_URL] if self.store == "redis"
                 else ["--events", str(self.workdir / "interactions.jsonl")])  # fmt: skip
        before = current_version(self.server.models)
        code = main(["retrain", "--data", str(self.data), "--models-dir", str(self.server.models),
                     "--config", str(config), "--gate", "0", *store])  # fmt: skip
        assert code == 0
        version = current_version(self.server.models)
        assert version != before
        self.client.post("/admin/reload", headers={"Authorization": "Bearer test-token"})
        assert self.get("/model").json()["model_version"] == version
        return version

    def restart(self) -> None:
        self.server.stop()
        self.server.start()


@pytest.fixture(scope="module", params=["redis", "embedded"])
def shop(request, shop_models: Path, shop_data: Path, tmp_path_factory) -> Iterator[Shop]:
    workdir = tmp_path_factory.mktemp(f"shop-{request.param}")
    url = REDIS_URL if request.param == "redis" else None
    with running(shop_models, workdir, url, CDDAE_MAX_API_USERS="1") as server:
        shop = Shop(server, request.param, shop_data, workdir)
        try:
            yield shop
        finally:
            shop.client.close()  # else its sockets are found unclosed in some later test


def test_filters_and_exclusions_hold_and_lists_stay_full(shop: Shop) -> None:
    for user in range(1, 41):
        plain = shop.items(shop.get(f"/users/{user}/recommendations", n=8))
        excluded = plain[:3]
        kept = shop.items(shop.get(f"/users/{user}/recommendations", n=8, exclude=excluded))
        assert len(kept) == 8 and not set(kept) & set(excluded)
        genre = GENRE[(user + 1) % GROUPS]  # another group's genre: few of its items score high
        answer = shop.get(f"/users/{user}/recommendations", n=8, filter=[f"genres:{genre}"])
        assert len(shop.items(answer)) == 8
        assert all(genre in item["genres"] for item in answer.json()["items"])
        conditions = ["year:1990..1994", f"genres:{genre}|{GENRE[0]}"]
        years = shop.items(shop.get(f"/users/{user}/recommendations", n=5, filter=conditions))
        assert len(years) == 5 and all(1990 <= _year(int(i)) <= 1994 for i in years)
        assert all(_block(int(i)) in (0, (user + 1) % GROUPS) for i in years)
    # cached answers never cross filters: the same request again is cached and the same
    first = shop.get("/users/1/recommendations", n=6, filter=["genres:Animation"]).json()
    for _ in range(100):  # the cache is written in the background: wait for the hit
        again = shop.get("/users/1/recommendations", n=6, filter=["genres:Animation"]).json()
        if again["cached"]:
            break
        time.sleep(0.05)
    other = shop.get("/users/1/recommendations", n=6, filter=["genres:Adventure"]).json()
    assert again["cached"] and again["items"] == first["items"]
    assert not other["cached"] and all("Adventure" in i["genres"] for i in other["items"])
    # /score, one user and a batch, takes the same conditions in its body
    body = {"items": ["1", "2", "3"], "n": 7, "filter": ["genres:Children's"], "exclude": ["151"]}
    single = shop.client.post("/score", json=body).json()
    batch = shop.client.post("/score", json={"users": [body, {**body, "filter": []}]}).json()
    assert len(single["items"]) == 7 and "151" not in [i["item_id"] for i in single["items"]]
    assert all("Children's" in i["genres"] for i in single["items"])
    assert batch["results"][0]["items"] == single["items"]
    assert any("Children's" not in i["genres"] for i in batch["results"][1]["items"])
    # fewer items pass than asked for: all of them, no padding
    narrow = shop.items(shop.get("/users/1/recommendations", n=50, filter=["year:1950..1950"]))
    assert 0 < len(narrow) <= 4 and all(_year(int(i)) == 1950 for i in narrow)


def test_bad_conditions_are_422s_that_name_the_allowed_fields(shop: Shop) -> None:
    for condition in ("colour:red", "genres", "year:abc", "genres:Nope", "year:1..x"):
        response = shop.get("/users/1/recommendations", filter=[condition])
        assert response.status_code == 422, (condition, response.text)
        detail = response.json()["detail"]
        assert "genres" in detail or "year" in detail or "Action" in detail, detail
    unknown = shop.get("/users/1/recommendations", filter=["colour:red"]).json()["detail"]
    assert "filterable fields: genres, year" in unknown
    body = {"items": ["1"], "filter": ["colour:red"]}
    assert "genres, year" in shop.client.post("/score", json=body).json()["detail"]
    similar = shop.get("/items/1/similar", filter=["colour:red"])
    assert similar.status_code == 422 and "genres, year" in similar.json()["detail"]
    bad_item = shop.put("/items/x-1", {"colour": "red"})
    assert bad_item.status_code == 422 and "title, genres, year" in bad_item.json()["detail"]
    assert shop.put("/items/x-1", {"genres": ["Nope"]}).status_code == 422
    assert shop.get("/items/x-1").status_code == 404  # nothing half-written
    assert shop.put("/items/nope/availability", {"available": False}).status_code == 404
    schema = shop.get("/openapi.json").json()
    parameters = schema["paths"]["/users/{user_id}/recommendations"]["get"]["parameters"]
    pattern = next(p for p in parameters if p["name"] == "filter")["schema"]["items"]["pattern"]
    assert "genres:" in pattern and "year:" in pattern and "Children's" in pattern


def _everyone_without(shop: Shop, item: str) -> None:
    for user in range(1, USERS + 1):
        assert item not in shop.items(shop.get(f"/users/{user}/recommendations", n=10)), user


def test_a_hidden_item_leaves_every_list_at_once_and_stays_out(shop: Shop) -> None:
    top = shop.items(shop.get("/users/1/recommendations", n=10))
    hidden = top[0]
    assert shop.get(f"/items/{top[1]}/similar", n=10).status_code == 200
    response = shop.put(f"/items/{hidden}/availability", {"available": False})
    assert response.status_code == 200 and response.json() == {"item_id": hidden,
                                                               "available": False}  # fmt: skip
    assert shop.get(f"/items/{hidden}").json()["available"] is False
    _everyone_without(shop, hidden)
    for anchor in range(1, ITEMS + 1, 7):
        similar = shop.items(shop.get(f"/items/{anchor}/similar", n=20))
        assert hidden not in similar and str(anchor) not in similar
    history = {"items": [str(i) for i in range(1, 6)], "n": 20}
    assert hidden not in shop.items(shop.client.post("/score", json=history))

    shop.restart()
    assert shop.get(f"/items/{hidden}").json()["available"] is False
    _everyone_without(shop, hidden)
    shop.retrain()
    assert shop.get(f"/items/{hidden}").json()["available"] is False
    _everyone_without(shop, hidden)

    assert shop.put(f"/items/{hidden}/availability", {"available": True}).status_code == 200
    assert hidden in shop.items(shop.get("/users/1/recommendations", n=10))


def test_a_new_item_ranks_at_once_from_its_profile_and_joins_the_next_version(
    shop: Shop,
) -> None:
    # A user created through the API holds its place until a retrain reads it (the cap is 1)
    assert shop.put("/users/api-1/profile", {"age": 30}).status_code == 201
    assert shop.put("/users/api-2/profile", {"age": 30}).status_code == 409
    profile = {"title": "Tomorrow's Action Film", "genres": [GENRE[0]], "year": 1994}
    created = shop.put("/items/new-action-1", profile)
    assert created.status_code == 201, created.text
    assert created.json()["source"] == "api" and created.json()["in_model"] is False
    assert shop.put("/items/new-action-1", profile).status_code == 200  # a PUT again: no create
    info = shop.get("/items/new-action-1").json()
    assert info["profile"] == profile and info["available"] is True

    fan = {"items": [str(i) for i in range(1, 21)], "n": 50}  # a history in the Action block
    listed = shop.client.post("/score", json=fan).json()["items"]
    ours = [item for item in listed if item["item_id"] == "new-action-1"]
    assert ours and ours[0]["source"] == "profile" and ours[0]["genres"] == [GENRE[0]]
    assert all(item["source"] == "model" for item in listed if item["item_id"] != "new-action-1")
    other = {"items": [str(i) for i in range(101, 121)], "n": 50}  # the Animation block
    ranked = shop.items(shop.client.post("/score", json=other))
    fan_rank = [i["item_id"] for i in listed].index("new-action-1")
    assert "new-action-1" not in ranked[: fan_rank + 1]  # it ranks where its profile fits
    group_zero = [u for u in range(1, 41) if (u - 1) % GROUPS == 0]
    lists = [shop.items(shop.get(f"/users/{u}/recommendations", n=50)) for u in group_zero]
    assert sum("new-action-1" in x for x in lists) >= len(lists) // 2
    filtered = shop.items(shop.client.post("/score", json={**fan, "filter": ["year:1994"]}))
    assert "new-action-1" in filtered
    assert shop.put("/items/new-action-2", {**profile, "title": "Another"}).status_code == 201
    similar = shop.get("/items/new-action-1/similar", n=10).json()
    alike = [item["item_id"] for item in similar["items"]]
    assert similar["source"] == "profile" and "new-action-1" not in alike
    assert sum(_block(int(i)) == 0 for i in alike) >= 5 and "new-action-2" not in alike
    assert shop.put("/items/new-action-2/availability", {"available": False}).status_code == 200
    # recorded interactions with it go to the next retrain, which learns it
    recorded = shop.client.post("/users/1/interactions", json={"items": ["new-action-1"]})
    assert recorded.status_code == 201 and recorded.json()["unknown_items"] == []
    assert "new-action-1" not in shop.items(shop.get("/users/1/recommendations", n=50))
    shop.retrain()
    assert shop.put("/users/api-2/profile", {"age": 30}).status_code == 201
    after = shop.get("/items/new-action-1").json()
    assert after["in_model"] is True and after["profile"] == profile
    learnt = {**fan, "candidates": ["new-action-1", "21", "22"]}  # scored by its own weights
    listed = shop.client.post("/score", json=learnt).json()["items"]
    assert any(i["item_id"] == "new-action-1" and i["source"] == "model" for i in listed)
