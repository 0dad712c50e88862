"""The service end to end, over HTTP, on Redis and on the embedded default."""

from __future__ import annotations

import re

import httpx
import pytest

from tests.e2e.conftest import ADMIN_TOKEN, Server


def _get(server: Server, path: str, **kw) -> httpx.Response:
    return httpx.get(server.url + path, timeout=10, **kw)


def _post(server: Server, path: str, **kw) -> httpx.Response:
    return httpx.post(server.url + path, timeout=10, **kw)


def _ids(response: httpx.Response) -> list[str]:
    return [item["item_id"] for item in response.json()["items"]]


def test_recommendations_exclude_history_and_carry_item_data(server: Server) -> None:
    response = _get(server, "/users/1/recommendations", params={"n": 5})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["source"] == "model" and len(body["items"]) == 5
    assert set(body["items"][0]) == {"item_id", "score", "title", "genres", "source"}
    model = _get(server, "/model").json()
    assert body["model_version"] == model["model_version"]
    scores = [item["score"] for item in body["items"]]
    assert scores == sorted(scores, reverse=True)
    with_seen = _get(server, "/users/1/recommendations", params={"n": 50, "exclude_seen": "false"})
    without = _get(server, "/users/1/recommendations", params={"n": 50})
    assert set(_ids(without)) < set(_ids(with_seen)) or _ids(without) != _ids(with_seen)


def test_second_identical_call_is_a_cache_hit(server: Server) -> None:
    first = _get(server, "/users/2/recommendations", params={"n": 7}).json()
    second = _get(server, "/users/2/recommendations", params={"n": 7}).json()
    assert first["cached"] is False and second["cached"] is True
    assert first["items"] == second["items"]
    hits = re.search(
        r'^cddae_cache_total\{result="hit"\} (\S+)$', _get(server, "/metrics").text, re.M
    )
    assert hits is not None and float(hits.group(1)) >= 1


def test_new_interactions_invalidate_and_leave_the_list(server: Server) -> None:
    before = _get(server, "/users/3/recommendations", params={"n": 5})
    assert _get(server, "/users/3/recommendations", params={"n": 5}).json()["cached"]
    taken = _ids(before)[:2]
    posted = _post(server, "/users/3/interactions", json={"items": taken})
    assert posted.status_code == 201, posted.text
    after = _get(server, "/users/3/recommendations", params={"n": 5}).json()
    assert after["cached"] is False
    assert not set(taken) & {item["item_id"] for item in after["items"]}


def test_new_user_from_profile_then_interactions(server: Server) -> None:
    assert _get(server, "/users/new-7/recommendations").status_code == 404
    created = httpx.put(f"{server.url}/users/new-7/profile", json={"gender": "F", "age": 30})
    assert created.status_code == 201 and created.json()["created"] is True
    assert _get(server, "/users/new-7/recommendations").json()["source"] == "profile"
    assert _post(server, "/users/new-7/interactions", json={"items": ["1", "2"]}).status_code == 201
    body = _get(server, "/users/new-7/recommendations").json()
    assert body["source"] == "model" and not {"1", "2"} & set(i["item_id"] for i in body["items"])


def test_score_paths(server: Server) -> None:
    one = _post(server, "/score", json={"items": ["1", "2"], "n": 3}).json()
    assert one["source"] == "model" and len(one["items"]) == 3
    assert not {"1", "2"} & {i["item_id"] for i in one["items"]}
    vector = [0] * 80
    vector[0] = vector[1] = 1
    assert _ids(_post(server, "/score", json={"vector": vector, "n": 3})) == _ids(
        _post(server, "/score", json={"weights": {"1": 1, "2": 1}, "n": 3})
    )
    assert _post(server, "/score", json={"profile": {"gender": "M"}}).json()["source"] == "profile"
    assert _post(server, "/score", json={}).json()["source"] == "popularity"
    reranked = _post(server, "/score", json={"items": ["1"], "candidates": ["70", "5", "33"]})
    assert set(_ids(reranked)) == {"70", "5", "33"}
    excluded = _post(server, "/score", json={"items": ["1"], "exclude": ["3", "4"], "n": 50})
    assert not {"3", "4"} & set(_ids(excluded))
    batch = _post(
        server, "/score", json={"users": [{"items": ["1"]}, {}, {"profile": {"age": 20}}]}
    )
    assert [r["source"] for r in batch.json()["results"]] == ["model", "popularity", "profile"]
    again = _post(server, "/score", json={"items": ["1", "2"], "n": 3}).json()
    assert again["cached"] is True and again["items"] == one["items"]


def test_item_ids_the_model_does_not_know_are_named_not_refused(server: Server) -> None:
    """A client may know an item before the model in service does: /score leaves it out and
    names it; a recorded interaction with it is kept for the next retrain (which adds it to the
    catalogue) and named too."""
    scored = _post(server, "/score", json={"items": ["1", "nope"], "weights": {"zzz": 2.0}})
    assert scored.status_code == 200 and scored.json()["unknown_items"] == ["nope", "zzz"]
    assert scored.json()["source"] == "model"
    alone = _post(server, "/score", json={"items": ["1"], "n": 5}).json()
    assert [i["item_id"] for i in alone["items"]] == [
        i["item_id"]
        for i in _post(server, "/score", json={"items": ["1", "nope"], "n": 5}).json()["items"]
    ]
    recorded = _post(server, "/users/1/interactions", json={"items": ["2", "brand-new"]})
    assert recorded.status_code == 201, recorded.text
    assert recorded.json()["recorded"] == 2 and recorded.json()["unknown_items"] == ["brand-new"]
    listed = httpx.get(f"{server.url}/users/1/recommendations", timeout=10)
    assert listed.status_code == 200 and "2" not in [i["item_id"] for i in listed.json()["items"]]


def test_history_is_the_union_of_items_vector_and_weights(server: Server) -> None:
    union = _post(server, "/score", json={"items": ["1"], "weights": {"2": 3.0, "1": 0}})
    only = _post(server, "/score", json={"weights": {"2": 3.0}})
    assert union.status_code == 200 and union.json()["items"] == only.json()["items"]
    # A weight that is 0 as the graph reads it (float32) takes the item out as 0 does.
    tiny = _post(server, "/score", json={"weights": {"2": 3.0, "1": 1e-46}})
    assert tiny.status_code == 200 and tiny.json()["items"] == only.json()["items"]


@pytest.mark.parametrize(
    ("method", "path", "payload", "status", "needle"),
    [
        ("get", "/users/nobody/recommendations", None, 404, "unknown user 'nobody'"),
        ("get", "/users/1/recommendations?n=0", None, 422, "greater than or equal to 1"),
        ("get", "/users/1/recommendations?n=51", None, 422, "n must be between 1 and 50"),
        ("post", "/score", {"items": [1]}, 422, "Input should be a valid string"),
        ("post", "/score", {"n": "5"}, 422, "must be a JSON integer"),
        (
            "post",
            "/score",
            {"vector": [1, 0, 1]},
            422,
            "vector has 3 entries, the catalogue has 80",
        ),
        ("post", "/score", {"vector": [2] * 80}, 422, "vector entries must be 0 or 1"),
        ("post", "/score", {"profile": {"gender": "X"}}, 422, "unknown gender 'X'"),
        ("post", "/score", {"profile": {"shoe": 42}}, 422, "shoe"),
        ("post", "/score", {"users": [{}] * 9}, 422, "batch of 9 users exceeds the maximum of 8"),
        ("post", "/score", {"users": [{}, {"vector": [1]}]}, 422, "users[1]: vector has 1"),
        (
            "post",
            "/users/1/interactions",
            {"items": [{"item": "1", "timestamp": -1}]},
            422,
            "greater than or equal to 0",
        ),
        ("put", "/users/1/profile", {"age": "31"}, 422, "age must be a number"),
        ("put", "/users/1/profile", {"gender": 1}, 422, "gender must be one of its values"),
        ("post", "/users/ghost/interactions", {"items": ["1"]}, 404, "unknown user 'ghost'"),
        ("put", "/users/1/profile", {"occupation": "wizard"}, 422, "unknown occupation 'wizard'"),
    ],
)
def test_bad_input_is_a_clear_4xx(server, method, path, payload, status, needle) -> None:
    response = httpx.request(method.upper(), server.url + path, json=payload, timeout=10)
    assert response.status_code == status, response.text
    assert needle in response.text


def test_oversized_body_is_413(server: Server) -> None:
    response = _post(server, "/score", json={"items": ["1"] * 5000})
    assert response.status_code == 413 and "exceeds the limit of 20000" in response.text
    chunked = _post(server, "/score", content=iter([b'{"items": [' + b'"1",' * 6000 + b'"1"]}']))
    assert chunked.status_code == 413


def test_probes_model_metrics_and_openapi(server: Server) -> None:
    assert _get(server, "/healthz").json() == {
        "status": "ok",
        "model_version": None,
        "cache": None,
        "detail": {},
    }
    ready = _get(server, "/readyz").json()
    assert ready["status"] == "ok" and ready["model_version"]
    manifest = _get(server, "/model").json()
    assert manifest["model"]["kind"] == "cddae" and manifest["items"] == 80
    metrics = _get(server, "/metrics").text
    assert "cddae_request_seconds_bucket" in metrics and "cddae_inference_seconds" in metrics
    assert f'cddae_model_info{{version="{manifest["model_version"]}"}} 1.0' in metrics
    spec = _get(server, "/openapi.json").json()
    users = "/users/{user_id}"
    for path in (f"{users}/recommendations", "/score", f"{users}/interactions",
                 f"{users}/profile", "/readyz", "/model", "/metrics", "/admin/reload"):  # fmt: skip
        assert path in spec["paths"]
    schemas = spec["components"]["schemas"]
    for name in ("ScoreRequest", "BatchScoreRequest", "RecommendationsResponse",
                 "InteractionsRequest", "InteractionsResponse", "Profile", "Health"):  # fmt: skip
        assert "example" in schemas[name], name
    # The profile and the vector are described by the model in service, as they are enforced.
    profile = schemas["Profile"]
    assert profile["additionalProperties"] is False
    fields = {f["name"]: f for f in manifest["profile_fields"]}
    assert set(profile["properties"]) == set(fields)
    for name, field in fields.items():
        allowed = profile["properties"][name]["anyOf"][0]
        if field["kind"] == "categorical":
            assert allowed["enum"] == field["values"]
        elif field["kind"] in ("numeric", "bucket"):
            assert allowed["type"] == "number"
    vector = schemas["ScoreRequest"]["properties"]["vector"]["anyOf"][0]
    assert vector["minItems"] == vector["maxItems"] == 80


def test_admin_reload_needs_the_token(server: Server) -> None:
    assert _post(server, "/admin/reload").status_code == 401
    assert (
        _post(server, "/admin/reload", headers={"Authorization": "Bearer wrong"}).status_code == 401
    )
    ok = _post(server, "/admin/reload", headers={"Authorization": f"Bearer {ADMIN_TOKEN}"})
    assert ok.status_code == 200 and "in service" in ok.json()["outcome"]
