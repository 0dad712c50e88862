"""Experiments between two versions from outside (issue 21): sticky variants across replicas
and restarts, answers that name their version and variant, counts per variant, status, stop
and promote; a shadow candidate is never served — real uvicorn processes, both stores."""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import httpx
import pytest
import redis

from service import bundle
from service.experiment import CANDIDATE, EXPERIMENT, read_experiment
from service.serving.recommendations import IMPRESSION_BATCH_SECONDS
from tests.e2e.conftest import ADMIN_TOKEN, REDIS_URL, Server
from training.cli import main

AUTH = {"Authorization": f"Bearer {ADMIN_TOKEN}"}


def _models(base_models: Path, candidate_bundle: Path, tmp: Path) -> tuple[Path, str, str]:
    models = tmp / "models"
    shutil.copytree(base_models, models)
    shutil.copytree(candidate_bundle, models / candidate_bundle.name)
    control = bundle.current_version(models)
    assert control is not None
    return models, control, candidate_bundle.name


def _servers(models: Path, tmp: Path, store: str) -> list[Server]:
    url = REDIS_URL if store == "redis" else None
    if url:
        redis.Redis.from_url(url).flushdb()
        return [Server(models, url, tmp / "a").start(), Server(models, url, tmp / "b").start()]
    return [Server(models, None, tmp / "a").start()]


def _until(check, seconds: float = 30.0) -> None:
    deadline = time.monotonic() + seconds
    while not check():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.1)


def _experiment_on(server: Server) -> dict | None:
    return httpx.get(f"{server.url}/readyz", timeout=30).json()["detail"].get("experiment")


def _get(server: Server, user: str) -> dict:
    response = httpx.get(f"{server.url}/users/{user}/recommendations", params={"n": 5},
                         timeout=30)  # fmt: skip
    assert response.status_code == 200, response.text
    return response.json()


def _stats(server: Server) -> dict:
    time.sleep(4 * IMPRESSION_BATCH_SECONDS)  # every replica's queued impressions recorded
    response = httpx.get(f"{server.url}/stats/online", headers=AUTH, timeout=30)
    assert response.status_code == 200, response.text
    return response.json()


def _stop(servers: list[Server]) -> None:
    for server in servers:
        server.stop()


@pytest.mark.parametrize("store", ["redis", "embedded"])
def test_variants_are_sticky_counted_apart_and_the_candidate_promoted(
    store: str,
    base_models: Path,
    candidate_bundle: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    models, control, candidate = _models(base_models, candidate_bundle, tmp_path)
    servers = _servers(models, tmp_path, store)
    try:
        before = _get(servers[0], "1")
        assert before["variant"] is None and before["model_version"] == control
        where = ["--models-dir", str(models)]
        assert main(["models", "experiment", "start", candidate, "--share", "0.5", *where]) == 0
        experiment = read_experiment(models)
        assert experiment is not None
        for server in servers:
            _until(lambda s=server: _experiment_on(s) is not None)

        users = [str(u) for u in range(1, 41)]
        seen: dict[str, str] = {}
        served = {"control": 0, "candidate": 0}
        for k, user in enumerate(users):
            answers = [_get(server, user) for server in servers]  # every replica
            for answer in answers:
                assert answer["variant"] == experiment.variant(user)  # the same everywhere
                expected = candidate if answer["variant"] == CANDIDATE else control
                assert answer["model_version"] == expected
                served[answer["variant"]] += 1
            seen[user] = answers[0]["variant"]
            if k % 4 == 0:  # a click on the first answer's list, by id
                first = answers[0]
                body = {"items": [first["items"][0]["item_id"]],
                        "recommendation_id": first["recommendation_id"]}  # fmt: skip
                clicked = httpx.post(f"{servers[-1].url}/users/{user}/interactions", json=body,
                                     timeout=30)  # fmt: skip
                assert clicked.json()["attributed_to"] == [first["recommendation_id"]]
        assert 0 < served["candidate"] < sum(served.values())  # both variants served
        clicks = {"control": 0, "candidate": 0}
        for k, user in enumerate(users):
            clicks[seen[user]] += k % 4 == 0

        stats = _stats(servers[0])
        variants = stats["experiment"]["variants"]
        for name in ("control", "candidate"):
            assert variants[name]["lists"] == served[name]
            assert variants[name]["clicked_lists"] == clicks[name]
        assert stats["versions"][candidate]["variant"] == "candidate"
        assert stats["versions"][control]["variant"] == "control"
        assert stats["versions"][control]["lists"] == served["control"] + 1  # and the one before
        lo, hi = stats["experiment"]["difference"]["ci95"]
        assert lo <= stats["experiment"]["difference"]["value"] <= hi

        # the status command reads the same store, outside the service
        monkeypatch.setenv("CDDAE_REDIS_URL", REDIS_URL if store == "redis" else "")
        monkeypatch.setenv("CDDAE_INTERACTIONS_LOG", str(tmp_path / "a" / "interactions.jsonl"))
        capsys.readouterr()
        assert main(["models", "experiment", "status", *where]) == 0
        status = capsys.readouterr().out
        rows = {line.split()[0]: line.split()[1:3] for line in status.splitlines()
                if line.startswith(("control ", "candidate ")) and "−" not in line}  # fmt: skip
        for name in ("control", "candidate"):
            assert rows[name] == [str(served[name]), str(clicks[name])], status
        assert "candidate − control" in status

        # after a restart of every replica: the same users, the same variants
        _stop(servers)
        servers = [server.start() for server in servers]
        for user in users[:10]:
            assert _get(servers[-1], user)["variant"] == seen[user]
        assert _stats(servers[0])["experiment"]["variants"]["candidate"]["lists"] == (
            served["candidate"] + sum(seen[u] == CANDIDATE for u in users[:10])
        )

        # stop and promote: the candidate serves everyone, outside any experiment
        assert main(["models", "experiment", "stop", "--promote", *where]) == 0
        assert bundle.current_version(models) == candidate and read_experiment(models) is None
        for server in servers:
            _until(lambda s=server: _get(s, "2")["model_version"] == candidate)
            _until(lambda s=server: _experiment_on(s) is None)
            answer = _get(server, "3")
            assert answer["variant"] is None and answer["model_version"] == candidate
        assert _stats(servers[0])["experiment"] is None
    finally:
        _stop(servers)


def test_a_shadow_candidate_scores_on_the_side_and_is_never_served(
    base_models: Path, candidate_bundle: Path, tmp_path: Path
) -> None:
    """Two replicas on Redis (the file store's shadow counts are tested below HTTP)."""
    models, control, candidate = _models(base_models, candidate_bundle, tmp_path)
    servers = _servers(models, tmp_path, "redis")
    where = ["--models-dir", str(models)]
    try:
        assert main(["models", "experiment", "start", candidate, "--share", "0.5", "--shadow",
                     *where]) == 0  # fmt: skip
        experiment = read_experiment(models)
        assert experiment is not None and experiment.shadow
        for server in servers:
            _until(lambda s=server: _experiment_on(s) is not None)
        users = [str(u) for u in range(1, 31)]
        for k, user in enumerate(users):
            answer = _get(servers[k % len(servers)], user)
            assert answer["model_version"] == control  # never the candidate
            assert answer["variant"] == "control"
        shadowed = sum(experiment.variant(u) == CANDIDATE for u in users)
        assert 0 < shadowed < len(users)

        def counted() -> bool:
            return _stats(servers[0])["experiment"]["shadow_lists"] == shadowed

        _until(counted)  # scored in the background, counted once each
        summary = _stats(servers[-1])["experiment"]
        assert 0.0 <= summary["shadow_overlap"] <= 1.0
        assert summary["variants"]["candidate"]["lists"] == 0  # nobody was served it
        assert summary["variants"]["control"]["lists"] == len(users)

        # a file the replicas cannot follow: every replica says so (degraded), keeps serving
        # what it had, and the command removes it
        (models / EXPERIMENT).write_text('{"id": "x", "share": "half"')

        def degraded(server: Server) -> bool:
            ready = httpx.get(f"{server.url}/readyz", timeout=30).json()
            return ready["status"] == "degraded" and "experiment_error" in ready["detail"]

        for server in servers:
            _until(lambda s=server: degraded(s))
            assert _get(server, "5")["variant"] == "control"
        assert main(["models", "experiment", "stop", *where]) == 0
        assert bundle.current_version(models) == control
        for server in servers:
            _until(lambda s=server: _experiment_on(s) is None)
            assert _get(server, "5")["variant"] is None
            assert httpx.get(f"{server.url}/readyz", timeout=30).json()["status"] == "ok"
    finally:
        _stop(servers)
