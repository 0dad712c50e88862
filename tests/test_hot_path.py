"""The hot path answers exactly what the FastAPI routes would, and hands them everything else."""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path
from unittest import mock

import pytest

from service.api.hot_path import HotPath, bodiless, plain_ask, score_body, single_score
from tests.inprocess import Client, serving

PATH = "/users/7/recommendations"
JSON = [(b"content-type", b"application/json")]


@pytest.mark.parametrize(
    ("path", "query", "expected"),
    [
        (PATH, b"", ("7", 10, True)),
        (PATH, b"n=5", ("7", 5, True)),
        (PATH, b"exclude_seen=false&n=100", ("7", 100, False)),
        (PATH, b"n=999999&exclude_seen=0", ("7", 999999, False)),
        ("/users/a b/recommendations", b"n=1", ("a b", 1, True)),
    ],
)
def test_the_plain_form_is_taken(path: str, query: bytes, expected: tuple) -> None:
    assert plain_ask(path, query) == expected


@pytest.mark.parametrize(
    ("path", "query"),
    [
        (PATH, b"n=05"),  # another spelling: FastAPI's rules decide
        (PATH, b"n=0"),
        (PATH, b"n=-1"),
        (PATH, b"n=1234567"),
        (PATH, b"n=%35"),
        (PATH, b"n=5&n=6"),
        (PATH, b"n"),
        (PATH, b"exclude_seen=yes"),
        (PATH, b"exclude=50"),
        (PATH, b"filter=genres:Drama"),
        (PATH, b"n=5&"),
        ("/users//recommendations", b""),
        ("/users/a/b/recommendations", b""),
        ("/users/\x01/recommendations", b""),
        ("/users/" + "x" * 129 + "/recommendations", b""),
        ("/users/7/recommendations/", b""),
        ("/items/7/similar", b""),
    ],
)
def test_anything_else_goes_to_the_route(path: str, query: bytes) -> None:
    assert plain_ask(path, query) is None


def test_a_score_body_is_read_only_when_declared_json_and_within_the_limit() -> None:
    assert score_body([(b"content-length", b"20"), *JSON], 100) == 20
    assert score_body([(b"content-length", b"200"), *JSON], 100) is None  # BodyLimit's 413
    assert score_body([(b"content-length", b"0"), *JSON], 100) is None
    assert score_body([(b"content-length", b"20")], 100) is None
    assert score_body([(b"content-length", b"20"), (b"content-type", b"text/plain")], 100) is None
    assert score_body([*JSON, (b"transfer-encoding", b"chunked")], 100) is None
    two_lengths = [(b"content-length", b"20"), (b"content-length", b"30"), *JSON]
    assert score_body(two_lengths, 100) is None
    two_types = [(b"content-length", b"20"), (b"content-type", b"text/plain"), *JSON]
    assert score_body(two_types, 100) is None  # FastAPI reads the first: its call


def test_a_get_with_a_body_goes_to_the_route() -> None:
    assert bodiless([(b"host", b"x")]) and bodiless([(b"content-length", b"0")])
    assert not bodiless([(b"content-length", b"5")])
    assert not bodiless([(b"transfer-encoding", b"chunked")])


def test_only_one_valid_user_is_scored_here() -> None:
    assert single_score(b'{"items": ["1"], "n": 3}') is not None
    assert single_score(b"{}") is not None  # the route's model takes it too
    refused = [b'{"users": [{"items": ["1"]}]}', b'{"items": ["1"], "n": 0}', b"[1]", b"nope",
               b'{"items": [NaN]}', b"\xff", b'{"items": ["1"], "extra": 1}',
               b"[" * 100_000, b'{"profile": ' * 5_000]  # fmt: skip
    for body in refused:
        assert single_score(body) is None, body


@pytest.fixture
def client(two_small_bundles: Path, tmp_path: Path) -> Iterator[Client]:
    models = Path(shutil.copytree(two_small_bundles, tmp_path / "models"))
    with serving(models, tmp_path, max_n=50) as client:
        yield client


def _same(a: dict, b: dict) -> None:
    """Equal answers but for what differs per answer (its id) or per cache state."""
    for answer in (a, b):
        answer.pop("recommendation_id", None)
        answer.pop("cached", None)
    assert a == b


def _counted(client: Client):
    """A spy on the hot path's answers."""
    return mock.patch.object(HotPath, "_answer", autospec=True, side_effect=HotPath._answer)


def test_get_answers_and_errors_equal_the_routes(client: Client) -> None:
    user = str(client.state.holder.model.bundle.user_ids[0])
    with _counted(client) as hot:
        fast = client.get(f"/users/{user}/recommendations?n=5")
        assert hot.call_count == 1
        routed = client.get(f"/users/{user}/recommendations?n=05")  # FastAPI: 05 is 5
        assert hot.call_count == 1
    assert fast.status_code == routed.status_code == 200
    assert fast.headers["content-type"] == routed.headers["content-type"] == "application/json"
    _same(fast.json(), routed.json())
    assert len(fast.json()["items"]) == 5
    for fast_query, route_query in (("n=5", "n=05"), ("n=51", "n=051")):  # unknown; over max_n
        for who in ("no-such-user", user):
            fast = client.get(f"/users/{who}/recommendations?{fast_query}")
            routed = client.get(f"/users/{who}/recommendations?{route_query}")
            assert fast.status_code == routed.status_code
            _same(fast.json(), routed.json())
    assert client.get(f"/users/{user}/recommendations?n=51").status_code == 422
    assert client.get("/users/\u00e9t\u00e9/recommendations").status_code == 404
    assert client.get(f"/users/{user}/recommendations?n=0").json()["detail"][0]["loc"] == [
        "query",
        "n",
    ]
    metrics = client.get("/metrics").text
    assert 'route="/users/{user_id}/recommendations",status="200"' in metrics
    assert 'route="/users/{user_id}/recommendations",status="422"' in metrics


def test_score_answers_and_errors_equal_the_routes(client: Client) -> None:
    items = [str(i) for i in client.state.holder.model.bundle.item_ids[:3]]
    body = json.dumps({"items": items, "n": 4}).encode()
    plain = {"content-type": "application/json"}
    other = {"content-type": "application/json; charset=utf-8"}  # the route takes it too
    with _counted(client) as hot:
        fast = client.request("POST", "/score", content=body, headers=plain)
        assert hot.call_count == 1
        routed = client.request("POST", "/score", content=body, headers=other)
        assert hot.call_count == 1
        batch = client.request(
            "POST", "/score", content=b'{"users": [%s, %s]}' % (body, body), headers=plain
        )
        invalid = client.request("POST", "/score", content=b'{"items": [], "n": 0}', headers=plain)
        broken = client.request("POST", "/score", content=b'{"items": [', headers=plain)
        assert hot.call_count == 1  # the body was replayed to the route each time
    assert fast.status_code == routed.status_code == 200
    _same(fast.json(), routed.json())
    assert [len(r["items"]) for r in batch.json()["results"]] == [4, 4]
    assert invalid.status_code == 422 and invalid.json()["detail"][0]["loc"][-1] == "n"
    assert broken.status_code in (400, 422)
    too_big = client.request(
        "POST", "/score", content=b'{"items": ["%s"]}' % b"1" * 2_000_000, headers=plain
    )
    assert too_big.status_code == 413
    nested = client.request("POST", "/score", content=b"[" * 1000, headers=plain)
    assert nested.status_code == 400  # the route's answer, not a 500
    surrogate = client.request("POST", "/score", content=b'{"items": ["\\ud800"]}', headers=plain)
    assert surrogate.status_code == 422 and "\\ud800" in surrogate.text
    get_body = client.request(
        "GET", "/users/1/recommendations", content=b"x" * 2_000_000, headers=plain
    )
    assert get_body.status_code == 413
    metrics = client.get("/metrics").text
    assert 'method="POST",route="/score",status="200"' in metrics


def test_a_wrong_method_names_the_allowed_ones(client: Client) -> None:
    wrong = client.request("PUT", "/users/1/recommendations")
    assert wrong.status_code == 405 and wrong.headers["allow"] == "GET"
    assert client.request("GET", "/score").headers["allow"] == "POST"


def test_an_unknown_id_in_both_items_and_weights_is_named_once(client: Client) -> None:
    known = str(client.state.holder.model.bundle.item_ids[0])
    body = {"items": [known, "new-1", "new-1"], "weights": {"new-1": 2.0, "new-2": 1.0}, "n": 3}
    answer = client.request("POST", "/score", json=body)
    assert answer.status_code == 200, answer.text
    assert answer.json()["unknown_items"] == ["new-1", "new-2"]


def test_a_parameter_given_twice_is_refused_unless_it_takes_a_list(client: Client) -> None:
    """`?n=5&n=50` took the last value silently: which one the caller meant is theirs to say."""
    user = str(client.state.holder.model.bundle.user_ids[0])
    items = [str(i) for i in client.state.holder.model.bundle.item_ids[:2]]
    twice = client.get(f"/users/{user}/recommendations?n=5&n=50")
    assert twice.status_code == 422 and "'n' given more than once" in twice.json()["detail"]
    flags = client.get(f"/users/{user}/recommendations?exclude_seen=true&exclude_seen=false")
    assert flags.status_code == 422 and "'exclude_seen'" in flags.json()["detail"]
    lists = client.get(f"/users/{user}/recommendations?n=5&exclude={items[0]}&exclude={items[1]}")
    assert lists.status_code == 200 and not {i["item_id"] for i in lists.json()["items"]} & {*items}
    similar = client.get(f"/items/{items[0]}/similar?n=3&n=4")
    assert similar.status_code == 422 and "'n'" in similar.json()["detail"]
    long = client.get(f"/users/{user}/recommendations?{'k' * 500}=1&{'k' * 500}=2")
    assert long.status_code == 422 and len(long.json()["detail"]) < 200  # the name cut short


def test_a_body_declared_as_something_else_than_json_is_a_415(client: Client) -> None:
    items = [str(i) for i in client.state.holder.model.bundle.item_ids[:3]]
    body = json.dumps({"items": items, "n": 4}).encode()
    for declared in ("text/plain", "application/x-www-form-urlencoded", "multipart/form-data"):
        refused = client.request("POST", "/score", content=body, headers={"content-type": declared})
        assert refused.status_code == 415, (declared, refused.text)
        assert "Content-Type: application/json" in refused.json()["detail"]
        profile = client.request(
            "PUT",
            "/users/u-415/profile",
            content=b'{"age": 30}',
            headers={"content-type": declared},
        )
        assert profile.status_code == 415, (declared, profile.text)
    undeclared = client.request("PUT", "/users/u-415/profile", content=b'{"age": 30}')
    assert undeclared.status_code == 415, undeclared.text  # FastAPI reads no JSON either
    for accepted in ("application/json; charset=utf-8", "application/merge-patch+json"):
        answer = client.request("POST", "/score", content=body, headers={"content-type": accepted})
        assert answer.status_code == 200, (accepted, answer.text)
    wrong = client.request(
        "POST", "/score", content=b'{"n": 0}', headers={"content-type": "application/json"}
    )
    assert wrong.status_code == 422  # a JSON body that is wrong stays a 422
