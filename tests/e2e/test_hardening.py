"""Hostile input and a broken pointer, against a real server: no 500, no unbounded labels, a
watcher that survives, and readiness that tells the truth."""

from __future__ import annotations

import time
from pathlib import Path

import httpx

from service import bundle
from tests.e2e.conftest import ADMIN_TOKEN, running
from tests.e2e.test_lifecycle import _copy_as_new_version


def _until(predicate, seconds: float = 10.0) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.1)
    return False


def test_a_non_ascii_bearer_token_is_a_401(base_models: Path, tmp_path: Path) -> None:
    with running(base_models, tmp_path, None) as server:
        for token in ("Bearer é".encode(), b"Bearer \xff\xfe", f"Bearer {ADMIN_TOKEN}x".encode()):
            answer = httpx.post(f"{server.url}/admin/reload", headers={"Authorization": token})
            assert answer.status_code == 401, answer.text
        good = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
        assert httpx.post(f"{server.url}/admin/reload", headers=good).status_code == 200


def test_made_up_methods_do_not_mint_metric_series(base_models: Path, tmp_path: Path) -> None:
    with running(base_models, tmp_path, None) as server:
        for n in range(30):
            httpx.request(f"FOO{n}", f"{server.url}/healthz")
        text = httpx.get(f"{server.url}/metrics").text
        assert "FOO" not in text and 'method="other"' in text


def test_the_watcher_survives_a_broken_pointer_and_readiness_says_so(
    base_models: Path, tmp_path: Path
) -> None:
    with running(base_models, tmp_path, None) as server:
        models = server.models
        good = bundle.current_version(models)
        ready = lambda: httpx.get(f"{server.url}/readyz").json()  # noqa: E731
        assert ready()["status"] == "ok"

        (models / bundle.CURRENT).unlink()
        (models / bundle.CURRENT).mkdir()  # a directory where the pointer should be
        assert _until(lambda: "pointer_error" in ready()["detail"])
        assert ready()["status"] == "degraded"
        assert httpx.get(f"{server.url}/users/1/recommendations").status_code == 200

        (models / bundle.CURRENT).rmdir()
        (models / bundle.CURRENT).write_text(good + "\n")
        second = _copy_as_new_version(models)
        graph = (models / second / "model.onnx").read_bytes()
        (models / second / "model.onnx").write_bytes(b"not a graph")
        (models / bundle.CURRENT).write_text(second + "\n")
        assert _until(lambda: second in ready()["detail"]["refused_versions"])
        state = ready()  # the pointer names a version that is not served: not "ok"
        assert state["status"] == "degraded" and state["model_version"] == good
        assert str(models) not in str(state)  # reasons name files, not the server's paths

        # Repaired, the pointer moved away and back: the version is tried again.
        (models / second / "model.onnx").write_bytes(graph)
        (models / bundle.CURRENT).write_text(good + "\n")
        assert _until(lambda: ready()["detail"]["current_pointer"] == good)
        (models / bundle.CURRENT).write_text(second + "\n")
        assert _until(lambda: ready()["model_version"] == second)
        assert ready()["status"] == "ok"


def test_non_finite_and_huge_numbers_are_422s_that_serialise(
    base_models: Path, tmp_path: Path
) -> None:
    bodies = [
        ("/score", '{"n": NaN}'),
        ("/score", '{"items": [NaN]}'),
        ("/score", '{"profile": {"age": NaN}}'),
        ("/score", '{"weights": {"1": 1e308}}'),
        ("/score", '{"weights": {"1": Infinity}}'),
        ("/score", '{"weights": {"1": NaN}}'),
        ("/score", '{"vector": [-Infinity]}'),
        ("/users/1/interactions", '{"items": ["1"], "timestamps": [NaN]}'),
        ("/users/1/interactions", '{"items": ["1"], "timestamps": [1e308]}'),
        ("/users/1/interactions", '{"items": ["1"], "timestamps": [-5]}'),
    ]
    with running(base_models, tmp_path, None) as server:
        for path, body in bodies:
            answer = httpx.post(
                server.url + path, content=body, headers={"content-type": "application/json"}
            )
            assert answer.status_code == 422, (body, answer.status_code, answer.text)
            assert answer.json()["detail"], body
        log = tmp_path / "interactions.jsonl"
        assert not log.exists() or not log.read_text()  # nothing was recorded


def test_a_422_describes_a_huge_input_briefly(base_models: Path, tmp_path: Path) -> None:
    with running(base_models, tmp_path, None, CDDAE_MAX_BODY_BYTES="2000000") as server:
        items = [f"x{k}" for k in range(20_000)]
        answer = httpx.post(f"{server.url}/score", json={"items": items, "n": 0})
        assert answer.status_code == 422 and len(answer.content) < 5000, len(answer.content)
