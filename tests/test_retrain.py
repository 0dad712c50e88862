"""The retraining job: its place in the event log, the lock, the like-for-like gate."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest
import redis

from service import bundle
from service.state.store import STREAM
from training.cli import main
from training.jobs.retrain import Outcome, read_segment

FAST = {
    "model": {"hidden": [16]},
    "train": {"epochs": 8, "lr": 0.01, "batch_size": 16},
    "cold_items": {"epochs": 2},
}  # the job is under test here, not the head's quality
REDIS_URL = "redis://127.0.0.1:6379/6"  # its own: make test's suites flush 11 (run alongside)


def _interaction(user: str, item: int | str, t: float) -> dict:
    return {"type": "interaction", "user": user, "item": str(item), "timestamp": t}


class FileLog:
    def __init__(self, path: Path):
        self.path = path

    def record(self, events: list[dict]) -> None:
        with self.path.open("a") as handle:
            handle.write("".join(json.dumps(e) + "\n" for e in events))

    def args(self) -> list[str]:
        return ["--events", str(self.path)]


class RedisLog:
    def __init__(self) -> None:
        self.client = redis.Redis.from_url(REDIS_URL)
        self.client.flushdb()

    def record(self, events: list[dict]) -> None:
        for event in events:
            fields = {k: v for k, v in event.items() if v is not None}  # Redis has no null
            if "profile" in fields:
                fields["profile"] = json.dumps(fields["profile"])
            if "available" in fields:
                fields["available"] = "1" if fields["available"] else "0"
            self.client.xadd(STREAM, fields)

    def args(self) -> list[str]:
        return ["--redis-url", REDIS_URL]


class Job:
    """`cddae retrain` on the synthetic data into one models folder."""

    def __init__(self, data: Path, tmp: Path):
        config = tmp / "fast.json"
        config.write_text(json.dumps(FAST))
        self.models = tmp / "models"
        self.base = ["retrain", "--data", str(data), "--models-dir", str(self.models),
                     "--config", str(config)]  # fmt: skip

    def __call__(self, log: FileLog | RedisLog, *extra: str) -> int:
        return main([*self.base, *log.args(), *extra])


@pytest.fixture
def job(synthetic_dir: Path, tmp_path: Path) -> Job:
    return Job(synthetic_dir, tmp_path)


def _events_state(models: Path) -> dict:
    return bundle.read_manifest(models / bundle.current_version(models))["events"]


def _key(event: dict) -> tuple:
    """An event's identity, whichever log it came through (Redis gives every field as text)."""
    profile = json.dumps(event.get("profile"), sort_keys=True)
    timestamp = float(event.get("timestamp", 0))
    user, available = str(event.get("user")), event.get("available")
    return (event["type"], user, str(event.get("item")), timestamp, profile, available)


def _folded(models: Path) -> Counter:
    """Every event in the training data of the version in service, with its multiplicity."""
    state = _events_state(models)
    return Counter(
        _key(e) for name in state["segments"] for e in read_segment(models / bundle.EVENTS / name)
    )


@pytest.mark.parametrize("kind", ["file", "redis"])
def test_two_runs_fold_each_event_exactly_once_and_move_the_mark(
    job: Job, tmp_path: Path, kind: str
) -> None:
    log = FileLog(tmp_path / "events.jsonl") if kind == "file" else RedisLog()
    first = [{"type": "profile", "user": "new-1", "profile": {"gender": "F", "age": 30}}]
    first += [_interaction("new-1", i, 1e9 + i) for i in (1, 2, 3, 4, 5)]
    log.record(first)
    assert job(log, "--gate", "0") == Outcome.PROMOTED
    mark_1 = _events_state(job.models)["mark"]
    loaded = bundle.load_bundle(job.models / bundle.current_version(job.models))
    user = loaded.user_ids.tolist().index("new-1")
    assert {loaded.item_ids[i] for i in loaded.seen(user)} == {"1", "2", "3", "4", "5"}
    assert loaded.has_profile[user]
    want = loaded.user_spec.encode({"gender": "F", "age": 30})
    assert loaded.user_features[user].tolist() == want.tolist()

    # An item the catalogue does not have yet (the service records it): it joins at retrain.
    second = [_interaction("new-2", i, 2e9 + k) for k, i in enumerate((6, 7, 8, "fresh-1"))]
    # Items created and hidden through the API (issue 20): the profile joins the catalogue,
    # the item ranks from then on by its learnt weights; availability stays the store's.
    profile = {"title": "Fresh Two", "year": 1994, "genres": ["Comedy"]}
    second += [{"type": "item", "item": "fresh-2", "profile": profile},
               {"type": "availability", "item": "7", "available": False}]  # fmt: skip
    log.record(second)
    assert job(log, "--gate", "0", *(["--trim"] if kind == "redis" else [])) == Outcome.PROMOTED
    state = _events_state(job.models)
    assert state["mark"] != mark_1 and len(state["segments"]) == 2
    folded = _folded(job.models)
    assert set(folded.values()) == {1}  # nothing twice
    assert set(folded) == {_key(e) for e in first + second}
    manifest = bundle.read_manifest(job.models / bundle.current_version(job.models))
    assert manifest["retrain"]["recorded_interactions"] == 9
    assert manifest["retrain"]["new_interactions"] == 4
    assert manifest["retrain"]["new_items"] == 1
    served = bundle.load_bundle(job.models / bundle.current_version(job.models))
    assert "fresh-1" in served.item_ids.tolist()
    fresh = served.item_ids.tolist().index("fresh-2")
    assert served.item_titles[fresh] == "Fresh Two" and served.item_genres[fresh] == "Comedy"
    if kind == "file":
        assert int(state["mark"]) == (tmp_path / "events.jsonl").stat().st_size
    else:  # trimmed up to the oldest mark a version on disk needs: the first version's
        remaining = log.client.xrange(STREAM)
        assert remaining[0][0].decode() == mark_1 and len(remaining) == 7

    assert job(log, "--gate", "0") == Outcome.PROMOTED  # nothing new: same mark, same chain
    assert _events_state(job.models)["segments"] == state["segments"]


def test_a_run_killed_before_promotion_loses_nothing(job: Job, tmp_path: Path) -> None:
    log = FileLog(tmp_path / "events.jsonl")
    log.record([_interaction("1", i, 1e9 + i) for i in (1, 2)])
    assert job(log, "--gate", "0") == Outcome.PROMOTED
    current, state = bundle.current_version(job.models), _events_state(job.models)
    log.record([_interaction("2", i, 2e9 + i) for i in (3, 4, 5)])

    # A real process, killed between export and promotion.
    code = (
        "import os, sys; import training.jobs.retrain as r; "
        "r.promote = lambda *a, **k: os._exit(137); "
        "from training.cli import main; sys.exit(main(sys.argv[1:]))"
    )
    died = subprocess.run([sys.executable, "-c", code, *job.base, *log.args(), "--gate", "0"])
    assert died.returncode == 137
    assert len(bundle.list_versions(job.models)) == 2  # exported, never promoted
    assert bundle.current_version(job.models) == current
    assert _events_state(job.models) == state  # the mark did not move

    assert job(log, "--gate", "0") == Outcome.PROMOTED  # the next run takes them all, once
    folded = _folded(job.models)
    assert sum(folded.values()) == len(folded) == 5


def test_concurrent_runs_one_exits_locked(job: Job, tmp_path: Path, capsys) -> None:
    log = FileLog(tmp_path / "events.jsonl")
    log.record([_interaction("1", 1, 1e9)])
    other = subprocess.Popen([sys.executable, "-m", "training.cli", *job.base, *log.args()])
    lock = job.models / bundle.LOCK
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:  # until the other run holds the lock
        if lock.exists() and lock.read_text().strip() == str(other.pid):
            break
        time.sleep(0.02)
    assert job(log) == Outcome.LOCKED
    assert "another process holds .lock" in capsys.readouterr().out
    assert other.wait(timeout=120) == Outcome.PROMOTED
    assert main(["models", "gc", "--models-dir", str(job.models)]) == 0  # the lock is free


def test_the_redis_lock_keeps_out_runs_on_other_machines(job: Job) -> None:
    log = RedisLog()
    log.client.set("cddae:retrain:lock", "someone-else", px=5000)
    assert job(log) == Outcome.LOCKED
    assert not bundle.list_versions(job.models)


def test_a_worse_model_is_gated_on_its_evaluation(job: Job, tmp_path: Path, capsys) -> None:
    log = FileLog(tmp_path / "events.jsonl")
    log.record([_interaction("1", 1, 1e9)])
    assert job(log) == Outcome.PROMOTED  # nothing in service: promoted
    current, state = bundle.current_version(job.models), _events_state(job.models)
    log.record([_interaction("2", 2, 2e9)])
    popularity = [a for a in job.base if a != "--config" and not a.endswith("fast.json")]
    assert main([*popularity, *log.args(), "--model", "pop"]) == Outcome.GATED
    out = capsys.readouterr().out
    assert "retrain: gated" in out and "evaluated P@10" in out
    assert bundle.current_version(job.models) == current
    assert _events_state(job.models) == state


POISON = [
    {"type": "interaction", "user": "new-2", "timestamp": 1e9},  # no item
    {"item": "1", "user": "new-2", "timestamp": 1e9},  # no type
    {"type": "profile", "user": "new-2", "profile": None},
    {"type": "interaction", "user": None, "item": "1", "timestamp": 1e9},  # not a user "None"
    _interaction("196\x00", 1, 1e9),  # a NUL: another user to the service (issue 19, 11)
]


@pytest.mark.parametrize("kind", ["file", "redis"])
def test_poisoned_events_are_quarantined_and_the_rest_is_learnt(
    job: Job, tmp_path: Path, kind: str
) -> None:
    """Issue 19 (2, 3, 11): bad records no longer stop every later retrain; they are set aside
    with their reason, the mark moves past them, no temporary file is left. "²" is a fine id
    (numpy's isdigit took it for a number, which int() refused: every retrain died)."""
    log = FileLog(tmp_path / "events.jsonl") if kind == "file" else RedisLog()
    good = [_interaction("new-2", 1, 1e9), _interaction("new-2", "²", 1e9)]
    log.record([*good, *POISON, _interaction("new-2", 2, 1e9 + 1)])
    if kind == "file":
        with log.path.open("a") as handle:
            handle.write('[1, 2]\n{"type": "inter\n')  # an array, a torn line mid-log
        log.record([_interaction("new-2", 3, 1e9 + 2)])
    assert job(log, "--gate", "0") == Outcome.PROMOTED
    folded = _folded(job.models)
    assert {k[2] for k in folded} == ({"1", "²", "2", "3"} if kind == "file" else {"1", "²", "2"})
    served = bundle.load_bundle(job.models / bundle.current_version(job.models))
    assert "²" in served.item_ids.tolist()
    assert all(k[1] == "new-2" for k in folded)
    quarantine = (job.models / bundle.EVENTS / "quarantine.jsonl").read_text().splitlines()
    assert len(quarantine) == len(POISON) + (2 if kind == "file" else 0)
    assert not list((job.models / bundle.EVENTS).glob(".tmp-*"))
    assert job(log, "--gate", "0") == Outcome.PROMOTED  # nothing new, nothing stuck
    assert len((job.models / bundle.EVENTS / "quarantine.jsonl").read_text().splitlines()) == len(
        quarantine
    )


@pytest.mark.parametrize("pointer", ["\n", "garbage", "../x"])
def test_a_pointer_that_names_no_version_fails_the_job(
    job: Job, tmp_path: Path, pointer: str, capsys
) -> None:
    """Issue 19 (6): a blank CURRENT used to start from scratch, ungated, dropping events."""
    log = FileLog(tmp_path / "events.jsonl")
    log.record([_interaction("new-3", 1, 1e9)])
    assert job(log, "--gate", "0") == Outcome.PROMOTED
    (job.models / bundle.CURRENT).write_text(pointer)
    assert job(log, "--gate", "0") == Outcome.FAILED
    assert "retrain: failed" in capsys.readouterr().out
    assert main(["models", "rollback", "--models-dir", str(job.models)]) == 2
    assert not list((job.models / bundle.EVENTS).glob(".tmp-*"))


def test_a_bad_configuration_is_failed_not_gated(job: Job, tmp_path: Path) -> None:
    """Every error path keeps the exit codes' meaning: 2, never 1 (gated)."""
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    log = FileLog(tmp_path / "events.jsonl")
    assert main([*job.base[:-2], "--config", str(bad), *log.args()]) == Outcome.FAILED


def test_a_moved_file_store_keeps_its_mark(job: Job, tmp_path: Path) -> None:
    """The mark is keyed by the store's id, not its path: a moved folder folds nothing twice."""
    folder = tmp_path / "store"
    folder.mkdir()
    log = FileLog(folder / "events.jsonl")
    from service.state.store import FileStore

    FileStore(log.path).close()  # the service created it, and its id
    log.record([_interaction("new-4", 1, 1e9)])
    assert job(log, "--gate", "0") == Outcome.PROMOTED
    folder.rename(tmp_path / "moved")
    moved = FileLog(tmp_path / "moved" / "events.jsonl")
    moved.record([_interaction("new-4", 2, 1e9 + 1)])
    assert job(moved, "--gate", "0") == Outcome.PROMOTED
    assert sorted(k[2] for k in _folded(job.models).elements()) == ["1", "2"]
    # Issue 19 (10): the manifest (which /model shows) names the store by its id, not a path.
    assert "/" not in _events_state(job.models)["source"]


def test_another_redis_is_another_log(job: Job) -> None:
    """A mark is a stream id of one Redis: a run against another (or a flushed one) refuses
    rather than skip that log's events, or trim them, on a mark that is not its own."""
    log = RedisLog()
    log.record([_interaction("new-5", 1, 1e9)])
    assert job(log, "--gate", "0") == Outcome.PROMOTED
    log.client.flushdb()  # the same URL, but another store now (its id is gone)
    log.record([_interaction("new-5", 2, 1e9 + 1)])
    assert job(log, "--gate", "0", "--trim") == Outcome.FAILED
    assert log.client.xlen(STREAM) == 1  # nothing trimmed
    assert job(log, "--gate", "0", "--new-store") == Outcome.PROMOTED


def test_a_version_from_before_the_trim_is_not_promoted_by_hand(
    job: Job, tmp_path: Path, synthetic_dir: Path
) -> None:
    """After a trim, promoting a version whose place in the log lies before it — or one that
    folded no log at all (a hand-trained export) — would lose the trimmed events: refused
    unless forced, by `models promote` and `export --promote` alike."""
    log = RedisLog()
    log.record([_interaction("new-6", 1, 1e9)])
    assert job(log, "--gate", "0") == Outcome.PROMOTED
    first = bundle.current_version(job.models)
    log.record([_interaction("new-6", 2, 1e9 + 1)])
    assert job(log, "--gate", "0") == Outcome.PROMOTED
    bundle.gc(job.models, keep=1)  # the first version gone: the trim may pass its mark
    log.record([_interaction("new-6", 3, 1e9 + 2)])
    assert job(log, "--gate", "0", "--trim") == Outcome.PROMOTED
    assert first not in bundle.list_versions(job.models)
    checkpoint = tmp_path / "by-hand"
    assert main(["train", "--model", "pop", "--data", str(synthetic_dir), "--output",
                 str(checkpoint), "--quiet"]) == 0  # fmt: skip
    models = ["--models-dir", str(job.models)]
    assert main(["export", "--checkpoint", str(checkpoint), *models, "--promote"]) == 2
    by_hand = bundle.list_versions(job.models)[-1]
    assert bundle.current_version(job.models) != by_hand
    assert main(["models", "promote", by_hand, *models]) == 2
    assert main(["models", "promote", by_hand, *models, "--force"]) == 0
    log.record([_interaction("new-6", 4, 1e9 + 3)])  # a run after the forced promotion
    assert job(log, "--gate", "0", "--new-store") == Outcome.PROMOTED
    # Rolling back to the forced version is the same loss: refused unless forced.
    assert main(["models", "rollback", *models]) == 2
    assert main(["models", "rollback", *models, "--force"]) == 0
    assert bundle.current_version(job.models) == by_hand


def test_gc_keeps_the_quarantine(job: Job, tmp_path: Path) -> None:
    log = FileLog(tmp_path / "events.jsonl")
    log.record([_interaction("new-7", 1, 1e9), {"type": "nonsense"}])
    assert job(log, "--gate", "0") == Outcome.PROMOTED
    bundle.gc(job.models, keep=1)
    assert (job.models / bundle.EVENTS / "quarantine.jsonl").exists()


def test_a_store_that_never_recorded_anything_is_no_error(job: Job, tmp_path: Path) -> None:
    """No folder yet (the service never wrote): the run folds nothing and binds to no store."""
    absent = FileLog(tmp_path / "never" / "events.jsonl")
    assert job(absent, "--gate", "0") == Outcome.PROMOTED
    assert _events_state(job.models)["source"] is None
    log = FileLog(tmp_path / "events.jsonl")  # the store the service then creates
    log.record([_interaction("new-8", 1, 1e9)])
    assert job(log, "--gate", "0") == Outcome.PROMOTED
