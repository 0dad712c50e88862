"""Model swaps under load, refused bundles, and Redis going away and coming back."""

from __future__ import annotations

import json
import shutil
import subprocess
import threading
import time
from pathlib import Path

import httpx
import pytest

from service import bundle
from tests.e2e.conftest import free_port, running


def _copy_as_new_version(models: Path) -> str:
    """A new version with the current bundle's content (its manifest says so)."""
    current = models / bundle.current_version(models)
    files = {name: (current / name).read_bytes() for name in bundle.FILES}
    manifest = json.loads((current / bundle.MANIFEST).read_text())
    for key in ("model_version", "created_at", "files", "format_version"):
        manifest.pop(key)
    return bundle.write_bundle(models, files, {**manifest, "note": "copy"})


def _wait_for(predicate, seconds: float = 60.0) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.1)
    return False


def test_promotion_under_load_fails_no_request(base_models: Path, tmp_path: Path) -> None:
    with running(base_models, tmp_path, None) as server:
        old = httpx.get(f"{server.url}/model").json()["model_version"]
        failures, versions, stop = [], set(), threading.Event()

        def load() -> None:
            with httpx.Client(base_url=server.url, timeout=10) as client:
                n = 0
                while not stop.is_set():
                    n += 1
                    for response in (
                        client.get(f"/users/{n % 100 + 1}/recommendations", params={"n": 5}),
                        client.post("/score", json={"items": [str(n % 80 + 1)]}),
                    ):
                        if response.status_code != 200:
                            failures.append(response.status_code)
                        else:
                            versions.add(response.json()["model_version"])

        threads = [threading.Thread(target=load) for _ in range(3)]
        for thread in threads:
            thread.start()
        assert _wait_for(lambda: old in versions), "no answer under load before the promotion"
        new = _copy_as_new_version(server.models)
        bundle.promote(server.models, new)
        swapped = _wait_for(lambda: new in versions)  # answered by the new version under load
        stop.set()
        for thread in threads:
            thread.join()
        assert swapped, "the service did not pick up the promoted version"
        assert failures == []
        assert {old, new} <= versions


def test_corrupt_version_is_refused_and_the_old_one_serves(
    base_models: Path, tmp_path: Path
) -> None:
    with running(base_models, tmp_path, None) as server:
        old = httpx.get(f"{server.url}/model").json()["model_version"]
        bad = _copy_as_new_version(server.models)
        onnx = server.models / bad / "model.onnx"
        onnx.write_bytes(onnx.read_bytes()[:100])  # truncated
        (server.models / bundle.CURRENT).write_text(bad)  # a careless hand, not `promote`

        def refused() -> dict[str, str]:
            return httpx.get(f"{server.url}/readyz").json()["detail"]["refused_versions"]

        assert _wait_for(lambda: bad in refused())
        reason = refused()[bad]
        assert "model.onnx: sha256" in reason
        assert httpx.get(f"{server.url}/model").json()["model_version"] == old
        response = httpx.get(f"{server.url}/users/1/recommendations")
        assert response.status_code == 200 and response.json()["model_version"] == old


def _start_redis(port: int, workdir: Path) -> subprocess.Popen:
    binary = shutil.which("redis-server")
    if binary is None:
        pytest.fail("redis-server is not installed (.ci/run installs it)")
    process = subprocess.Popen(
        [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
         "--dir", str(workdir)],
        stdout=subprocess.DEVNULL,
    )  # fmt: skip
    import redis

    client = redis.Redis(port=port, socket_connect_timeout=0.2)
    assert _wait_for(lambda: _pings(client), 10), "redis-server did not start"
    return process


def _pings(client) -> bool:
    try:
        return bool(client.ping())
    except Exception:
        return False


def test_redis_outage_degrades_and_recovers(base_models: Path, tmp_path: Path) -> None:
    port = free_port()
    redis_process = _start_redis(port, tmp_path)
    try:
        with running(base_models, tmp_path, f"redis://127.0.0.1:{port}/0") as server:

            def get(user: int) -> httpx.Response:
                return httpx.get(f"{server.url}/users/{user}/recommendations", timeout=5)

            assert get(1).json()["cached"] is False and get(1).json()["cached"] is True

            redis_process.terminate()
            redis_process.wait(timeout=10)
            for user in range(1, 21):
                response = get(user)
                assert response.status_code == 200 and response.json()["cached"] is False
            score = httpx.post(f"{server.url}/score", json={"items": ["1"]}, timeout=5)
            assert score.status_code == 200
            ready = httpx.get(f"{server.url}/readyz").json()
            assert ready["status"] == "degraded" and ready["cache"] == "redis:unreachable"
            lost = httpx.post(f"{server.url}/users/1/interactions", json={"items": ["5"]})
            assert lost.status_code == 503  # refused, not silently dropped

            redis_process = _start_redis(port, tmp_path)
            assert _wait_for(lambda: httpx.get(f"{server.url}/readyz").json()["status"] == "ok")
            assert get(2).json()["cached"] is False and get(2).json()["cached"] is True
    finally:
        redis_process.terminate()
        redis_process.wait(timeout=10)
