"""Users created through the API are bounded: at most `CDDAE_MAX_API_USERS` wait for a retrain
(409 after, naming the setting); a retry, a new profile for a user already there and a model's
own users are not new users; a model trained on the store's log up to a mark, once in service,
frees the places of the users created before it. Both stores."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from types import SimpleNamespace
from unittest import mock

import pytest
import redis

from service.bundle import MANIFEST, list_versions, promote
from service.state.store import STORE_ID_KEY, STREAM
from tests.inprocess import Client, serving

REDIS_URL = "redis://127.0.0.1:6379/11"


def _log_name_and_mark(client: Client, backend: str, tmp_path: Path) -> tuple[str, str]:
    """What the retraining job records of the store's log after reading all of it."""
    if backend == "file":
        return client.state.store.name, str((tmp_path / "log.jsonl").stat().st_size)
    sync = redis.Redis.from_url(REDIS_URL, decode_responses=True)
    sync.set(STORE_ID_KEY, "store-a", nx=True)
    return f"redis:{sync.get(STORE_ID_KEY)}", sync.xrevrange(STREAM, count=1)[0][0]


def _retrained(models: Path, version: str, source: str, mark: str) -> None:
    """`version` as if a retrain had read the log up to `mark`, promoted."""
    path = models / version / MANIFEST
    manifest = json.loads(path.read_text())
    manifest["events"] = {"source": source, "mark": mark, "segments": []}
    path.write_text(json.dumps(manifest))
    promote(models, version)


@pytest.mark.parametrize("backend", ["file", "redis"])
def test_users_created_through_the_api_are_capped_until_a_retrain_reads_them(
    two_small_bundles: Path, tmp_path: Path, backend: str
) -> None:
    if backend == "redis":
        redis.Redis.from_url(REDIS_URL).flushdb()
    models = Path(shutil.copytree(two_small_bundles, tmp_path / "models"))
    store = {"redis_url": REDIS_URL} if backend == "redis" else {}
    with serving(models, tmp_path, max_api_users=2, **store) as client:

        def put(user: str, key: str, age: int = 30):
            headers = {"Idempotency-Key": key}
            body = {"age": age}
            return client.request("PUT", f"/users/{user}/profile", json=body, headers=headers)

        known = client.state.recommendations.model().bundle.user_ids[0]
        assert put(known, "k0").status_code == 200  # the model's: never counted
        assert [put(u, f"k-{u}").status_code for u in ("new-1", "new-2")] == [201, 201]
        assert put("new-2", "another", age=41).status_code == 200  # re-described: not new
        refused = put("new-3", "k-new-3")
        assert refused.status_code == 409, refused.text
        assert "CDDAE_MAX_API_USERS" in refused.json()["detail"]
        retry = put("new-1", "k-new-1")
        assert retry.status_code == 201 and retry.json()["replayed"] is True
        refused = client.request("POST", "/users/new-3/interactions", json={"items": [known]})
        assert refused.status_code == 404  # never created: nothing recorded for it

        source, mark = _log_name_and_mark(client, backend, tmp_path)
        served = client.state.recommendations.model().version
        later = next(v for v in list_versions(models) if v != served)
        _retrained(models, later, source + "-elsewhere", mark)  # another store's log
        client.state.holder.refresh()
        assert put("new-3", "k-new-3").status_code == 409
        _retrained(models, later, source, mark)
        client.state.holder.refresh(force=True)
        assert put("new-3", "k-new-3").status_code == 201
        assert put("new-4", "k-new-4").status_code == 201
        assert put("new-5", "k-new-5").status_code == 409
    if backend == "redis":
        redis.Redis.from_url(REDIS_URL).flushdb()


def test_a_user_an_experiments_candidate_knows_is_not_created(
    two_small_bundles: Path, tmp_path: Path
) -> None:
    """Issue found by the attack: during an experiment, users only the candidate knows were
    counted as new (409 at the cap), though their interactions and lists were served."""
    models = Path(shutil.copytree(two_small_bundles, tmp_path / "models"))
    with serving(models, tmp_path, max_api_users=1) as client:
        recommendations = client.state.recommendations
        served = recommendations.model()
        candidate = SimpleNamespace(user_index={"cand-user": 0})
        body, key = {"age": 30}, {"Idempotency-Key": "k"}
        assert client.request("PUT", "/users/new-1/profile", json=body).status_code == 201
        with mock.patch.object(recommendations, "models", return_value=[served, candidate]):
            known = client.request("PUT", "/users/cand-user/profile", json=body, headers=key)
        assert known.status_code == 200 and known.json()["created"] is False, known.text
