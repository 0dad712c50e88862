"""Hostile input and a broken pointer, against a real server: no 500, no unbounded labels, a
watcher that survives, and readiness that tells the truth."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from pathlib import Path

import httpx
import pytest

from service import bundle
from service.bundle import promote
from service.serving.holder import ModelHolder
from service.serving.onnx_model import finish
from service.serving.recommendations import AdHocUser, Recommendations
from service.state.cache import LocalCache
from service.state.store import FileStore, StoreUnavailable
from service.telemetry import Metrics
from tests.e2e.conftest import ADMIN_TOKEN, running
from tests.e2e.test_lifecycle import _copy_as_new_version, _wait_for
from training.data.prepared import ProtocolConfig, prepare
from training.jobs.export import export_checkpoint
from training.jobs.pipeline import train_and_evaluate


def test_a_non_ascii_bearer_token_is_a_401(base_models: Path, tmp_path: Path) -> None:
    with running(base_models, tmp_path, None) as server:
        for token in ("Bearer é".encode(), b"Bearer \xff\xfe", f"Bearer {ADMIN_TOKEN}x".encode()):
            answer = httpx.post(f"{server.url}/admin/reload", headers={"Authorization": token})
            assert answer.status_code == 401, answer.text
        good = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
        assert httpx.post(f"{server.url}/admin/reload", headers=good).status_code == 200


def test_made_up_methods_do_not_mint_metric_series(base_models: Path, tmp_path: Path) -> None:
    with running(base_models, tmp_path, None) as server:
        for n in range(30):  # the compiled parser refuses them (400); h11 lets them through
            answer = httpx.request(f"FOO{n}", f"{server.url}/healthz")
            assert answer.status_code in (400, 405)
        text = httpx.get(f"{server.url}/metrics").text
        assert "FOO" not in text


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
        assert _wait_for(lambda: "pointer_error" in ready()["detail"])
        assert ready()["status"] == "degraded"
        assert httpx.get(f"{server.url}/users/1/recommendations").status_code == 200

        (models / bundle.CURRENT).rmdir()
        (models / bundle.CURRENT).write_text(good + "\n")
        second = _copy_as_new_version(models)
        graph = (models / second / "model.onnx").read_bytes()
        (models / second / "model.onnx").write_bytes(b"not a graph")
        (models / bundle.CURRENT).write_text(second + "\n")
        assert _wait_for(lambda: second in ready()["detail"]["refused_versions"])
        state = ready()  # the pointer names a version that is not served: not "ok"
        assert state["status"] == "degraded" and state["model_version"] == good
        assert str(models) not in str(state)  # reasons name files, not the server's paths

        # Repaired, the pointer moved away and back: the version is tried again.
        (models / second / "model.onnx").write_bytes(graph)
        (models / bundle.CURRENT).write_text(good + "\n")
        assert _wait_for(lambda: ready()["detail"]["current_pointer"] == good)
        (models / bundle.CURRENT).write_text(second + "\n")
        assert _wait_for(lambda: ready()["model_version"] == second)
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
        ("/users/1/interactions", '{"items": [{"item": "1", "timestamp": NaN}]}'),
        ("/users/1/interactions", '{"items": [{"item": "1", "timestamp": 1e308}]}'),
        ("/users/1/interactions", '{"items": [{"item": "1", "timestamp": -5}]}'),
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


def _service(models: Path, store) -> Recommendations:
    holder = ModelHolder(models)
    holder.refresh()
    return Recommendations(holder, LocalCache(2**20, 300), store, Metrics(), max_n=50)


def test_a_list_computed_across_a_write_is_never_served_after_it(
    base_models: Path, tmp_path: Path
) -> None:
    async def scenario() -> tuple[str, list[str]]:
        store = FileStore(tmp_path / "events.jsonl")
        service = _service(base_models, store)
        top = json.loads(await service.for_user("3", 50, True))["items"][0]["item_id"]
        scores = service._scores

        computing, written = asyncio.Event(), asyncio.Event()

        async def slow_scores(model, queries):
            computing.set()
            await written.wait()  # the write below lands while this list is computed
            return await scores(model, queries)

        service._scores = slow_scores  # type: ignore[method-assign]
        racing = asyncio.ensure_future(service.for_user("3", 5, True))
        await computing.wait()
        await service.add_interactions("3", [top], [time.time()], "race-1", "d")
        written.set()
        await racing  # the old list, computed from the state before the write
        service._scores = scores  # type: ignore[method-assign]
        after = json.loads(await service.for_user("3", 5, True))
        store.close()
        return top, [item["item_id"] for item in after["items"]]

    top, after = asyncio.run(scenario())
    assert top not in after


class _Unreadable:
    """A store whose reads fail (Redis timing out), writes too."""

    async def user_state(self, user: str, probe=None):
        raise StoreUnavailable("the interaction store (Redis) did not answer")

    async def add_interactions(self, *args) -> bool:
        raise StoreUnavailable("the interaction store (Redis) did not confirm")

    async def set_profile(self, *args) -> bool:
        raise StoreUnavailable("the interaction store (Redis) did not confirm")

    async def settle_users(self, *args) -> int:
        raise StoreUnavailable("the interaction store (Redis) did not confirm")

    async def catalogue_generation(self) -> int:
        raise StoreUnavailable("the interaction store (Redis) did not answer")

    async def catalogue(self, since=None):
        raise StoreUnavailable("the interaction store (Redis) did not answer")

    async def set_item(self, *args) -> int:
        raise StoreUnavailable("the interaction store (Redis) did not confirm")

    async def set_availability(self, *args) -> int:
        raise StoreUnavailable("the interaction store (Redis) did not confirm")

    def health(self) -> dict:
        return {}

    def close(self) -> None:
        pass


def test_a_failed_read_never_looks_like_absence(base_models: Path) -> None:
    async def scenario() -> None:
        service = _service(base_models, _Unreadable())
        answer = json.loads(await service.for_user("3", 5, True))  # in the bundle: degraded
        assert answer["degraded"] is True and answer["cached"] is False and answer["items"]
        again = json.loads(await service.for_user("3", 5, True))
        assert again["cached"] is False  # not cached
        with pytest.raises(StoreUnavailable):  # created through the API: unknown now, so 503
            await service.for_user("made-by-put", 5, True)
        with pytest.raises(StoreUnavailable):  # not "unknown user, create it with PUT"
            await service.add_interactions("made-by-put", ["1"], [time.time()], "k", "d")
        with pytest.raises(StoreUnavailable):
            await service.set_profile("made-by-put", {"gender": "F"}, "k", "d")
        with pytest.raises(StoreUnavailable):  # hiding needs the catalogue: never guessed
            await service.set_availability("1", False)
        with pytest.raises(StoreUnavailable):
            await service.set_item("new-1", {"title": "x"})
        similar = json.loads(await service.similar("1", 3))  # from the bundle, marked
        assert similar["degraded"] is True and similar["items"]

    asyncio.run(scenario())


def test_a_retried_write_is_recorded_once(base_models: Path, tmp_path: Path) -> None:
    with running(base_models, tmp_path, None) as server:
        headers = {"Idempotency-Key": "order-17"}
        body = {"items": ["1", "2"]}
        first = httpx.post(f"{server.url}/users/4/interactions", json=body, headers=headers)
        again = httpx.post(f"{server.url}/users/4/interactions", json=body, headers=headers)
        assert first.status_code == again.status_code == 201
        assert first.json()["replayed"] is False and again.json()["replayed"] is True
        assert again.headers["Idempotency-Key"] == "order-17"
        generated = httpx.post(f"{server.url}/users/4/interactions", json={"items": ["3"]})
        assert len(generated.headers["Idempotency-Key"]) == 32  # made up and returned
        lines = (tmp_path / "interactions.jsonl").read_text().splitlines()
        items = [json.loads(line)["items"] for line in lines]  # a line per write
        assert items == [["1", "2"], ["3"]]  # 2 items once, 1 item once


def test_types_are_strict_and_paths_stay_private(base_models: Path, tmp_path: Path) -> None:
    with running(base_models, tmp_path, None) as server:
        for body in ({"n": True}, {"n": "5"}, {"profile": {"age": True}}, {"n": 2.5}):
            answer = httpx.post(f"{server.url}/score", json=body)
            assert answer.status_code == 422, (body, answer.text)
        both_empty = httpx.post(f"{server.url}/score", json={"items": [], "weights": {"1": 1}})
        assert both_empty.status_code == 200, both_empty.text  # an empty list is not "given"
        source = httpx.get(f"{server.url}/model").json()["data"]["source"]
        assert "/" not in source and source.startswith("grouplens:")


def test_writes_can_require_a_token(base_models: Path, tmp_path: Path) -> None:
    with running(base_models, tmp_path, None, CDDAE_WRITE_TOKEN="w-secret") as server:
        body = {"items": ["1"]}
        assert httpx.post(f"{server.url}/users/1/interactions", json=body).status_code == 401
        assert httpx.put(f"{server.url}/users/n-1/profile", json={"age": 3}).status_code == 401
        auth = {"Authorization": "Bearer w-secret"}
        ok = httpx.post(f"{server.url}/users/1/interactions", json=body, headers=auth)
        assert ok.status_code == 201
        assert httpx.get(f"{server.url}/users/1/recommendations").status_code == 200  # reads open


def test_idle_connections_are_closed_and_the_service_stays_reachable(
    base_models: Path, tmp_path: Path
) -> None:
    import socket

    with running(base_models, tmp_path, None, CDDAE_IDLE_TIMEOUT_SECONDS="1") as server:
        idle = [socket.create_connection(("127.0.0.1", server.port)) for _ in range(300)]
        try:
            assert httpx.get(f"{server.url}/healthz", timeout=30).status_code == 200
            closed = 0
            for sock in idle:  # each waits for the server to hang up, a second after connecting
                sock.settimeout(60)
                closed += sock.recv(1) == b""
            assert closed == len(idle)
            assert httpx.get(f"{server.url}/healthz", timeout=30).status_code == 200
        finally:
            for sock in idle:
                sock.close()


def test_the_docs_page_needs_no_cdn(base_models: Path, tmp_path: Path) -> None:
    with running(base_models, tmp_path, None) as server:
        page = httpx.get(f"{server.url}/docs")
        assert page.status_code == 200 and "cdn" not in page.text.lower()
        for asset in ("swagger-ui-bundle.js", "swagger-ui.css"):
            assert httpx.get(f"{server.url}/static/swagger/{asset}").status_code == 200


def test_the_schema_states_the_limits_the_service_enforces(
    base_models: Path, tmp_path: Path
) -> None:
    with running(base_models, tmp_path, None) as server:  # CDDAE_MAX_N=50, CDDAE_MAX_BATCH=8
        schema = httpx.get(f"{server.url}/openapi.json").json()
        get = schema["paths"]["/users/{user_id}/recommendations"]["get"]
        n = next(p for p in get["parameters"] if p["name"] == "n")
        assert n["schema"]["maximum"] == 50
        components = schema["components"]["schemas"]
        assert components["ScoreRequest"]["properties"]["n"]["maximum"] == 50
        assert components["BatchScoreRequest"]["properties"]["users"]["maxItems"] == 8
        assert httpx.get(f"{server.url}/users/1/recommendations?n=51").status_code == 422


def test_an_answer_is_serialised_once_and_reads_back_as_described(base_models: Path) -> None:
    """The bytes the service sends (and caches) hold what `describe` says, scores rounded."""
    holder = ModelHolder(base_models)
    holder.refresh()
    model = holder.model
    assert model is not None
    ranked = model.rank(model.known_user(3), None, 7, exclude=[0, 1])
    answer = json.loads(finish(model.answer(ranked, ['x"y'], degraded=True), cached=True))
    assert answer["items"] == [{**d, "score": round(d["score"], 6)} for d in model.describe(ranked)]
    assert answer["unknown_items"] == ['x"y'] and answer["degraded"] and answer["cached"]
    excluded = {str(model.bundle.item_ids[0]), str(model.bundle.item_ids[1])}
    assert excluded.isdisjoint(i["item_id"] for i in answer["items"])
    empty = model.rank(model.known_user(3), None, 5, candidates=[2], exclude=[2])
    assert json.loads(finish(model.answer(empty), cached=False))["items"] == []


def test_a_stuck_disk_holds_up_writes_not_scoring(base_models: Path, tmp_path: Path) -> None:
    """Writes, model loads and CPU work have executors of their own: while the store's write
    is stuck (a disk that does not answer), a batch is still scored and a model still loads."""
    released = threading.Event()

    async def scenario() -> int:
        store = FileStore(tmp_path / "events.jsonl")
        service = _service(base_models, store)
        append, stuck = store._append, threading.Event()

        def stuck_append(*args):
            stuck.set()
            return released.wait(60) and append(*args)

        store._append = stuck_append  # type: ignore[method-assign]
        write = asyncio.ensure_future(service.add_interactions("3", ["1"], [time.time()], "k", "d"))
        while not stuck.is_set():  # the write is in the store's thread, stuck
            await asyncio.sleep(0.01)
        batch = [AdHocUser(items=["1"]), AdHocUser(items=["2"])]  # a batch: a thread
        answers = await asyncio.wait_for(service.score(batch), timeout=50)
        loaded = await asyncio.wait_for(service.holder.refresh_async(True), timeout=50)
        released.set()
        await write
        store.close()
        assert "in service" in loaded
        return len(answers)

    assert asyncio.run(scenario()) == 2


class _SlowCatalogue(FileStore):
    """A file store whose catalogue reads take a while: a rebuild of the view is in flight
    when the next write lands (the race the attack on issue 20 found)."""

    async def catalogue(self, since=None):
        snapshot = await super().catalogue(since)
        await asyncio.sleep(0.05)
        return snapshot


def test_a_list_asked_after_a_hide_never_holds_the_item(base_models: Path, tmp_path: Path) -> None:
    """A request that read the catalogue's new generation never joins a rebuild that started
    before the write: the answer after a hide's acknowledgement never holds the item."""

    async def scenario() -> None:
        service = _service(base_models, _SlowCatalogue(tmp_path / "events.jsonl"))
        top = json.loads(await service.for_user("3", 10, True))["items"][0]["item_id"]
        store = service.store
        await store.set_item("new-1", {"title": "x"}, True, 10)  # gen 1
        stale = asyncio.ensure_future(service.view(service.model()))  # reads gen 1 …
        await asyncio.sleep(0.01)  # … and is mid-rebuild when another replica hides the item
        await store.set_availability(top, False)  # acknowledged there: gen 2
        answer = json.loads(await service.for_user("3", 10, True))
        assert top not in [item["item_id"] for item in answer["items"]]
        await stale
        stale = asyncio.ensure_future(service.view(service.model(), -1))  # another rebuild …
        await asyncio.sleep(0.01)
        await store.set_item("new-2", {"title": "y"}, True, 10)  # … when an item is created
        info, _, _ = await service.item("new-2")  # never a wrong 404
        assert info.item_id == "new-2"
        await stale
        store.close()

    asyncio.run(scenario())


def test_new_items_without_a_profile_path_are_listed_never_ranked(
    synthetic_dir: Path, tmp_path: Path
) -> None:
    """A model exported without the cold-item head (`cold_items.epochs` 0): a new item is
    known (GET /items) but not in lists, and its similar list is empty — never a 500."""
    prepared = prepare(synthetic_dir, ProtocolConfig(seed=0))
    _, checkpoint = train_and_evaluate("cddae", prepared, model={"hidden": [8]},
                                       train={"epochs": 2}, progress=False,
                                       cold={"epochs": 0})  # fmt: skip
    models = tmp_path / "models"
    version, _ = export_checkpoint(checkpoint, models)
    promote(models, version)

    async def scenario() -> None:
        service = _service(models, FileStore(tmp_path / "events.jsonl"))
        assert service.model().cold_output is None
        assert await service.set_item("n1", {"genres": ["Action"]}) is True
        info, _, _ = await service.item("n1")
        assert info.in_model is False
        similar = json.loads(await service.similar("n1", 5))
        assert similar["items"] == [] and similar["source"] == "profile"
        listed = json.loads(await service.for_user("3", 50, True))["items"]
        assert "n1" not in [item["item_id"] for item in listed]
        scored = json.loads((await service.score([AdHocUser(items=["1"], n=50)]))[0])["items"]
        assert "n1" not in [item["item_id"] for item in scored]
        service.store.close()

    asyncio.run(scenario())
