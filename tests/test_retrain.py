"""The retraining job: recorded events reach the new bundle; the gate protects the service."""

from __future__ import annotations

import json
from pathlib import Path

from service import bundle
from training.cli import main

FAST = {"model": {"hidden": [16]}, "train": {"epochs": 3}}


def test_retrain_folds_in_recorded_events_and_promotes(synthetic_dir: Path, tmp_path: Path) -> None:
    models, config = tmp_path / "models", tmp_path / "fast.json"
    config.write_text(json.dumps(FAST))
    events = tmp_path / "events.jsonl"
    lines = [{"type": "profile", "user": "new-1", "profile": {"gender": "F", "age": 30}}]
    lines += [
        {"type": "interaction", "user": "new-1", "item": str(i), "timestamp": 1e9 + i}
        for i in (1, 2, 3, 4, 5)
    ]
    events.write_text("".join(json.dumps(e) + "\n" for e in lines))
    base = ["--data", str(synthetic_dir), "--models-dir", str(models), "--events", str(events),
            "--config", str(config)]  # fmt: skip

    assert main(["retrain", *base]) == 0  # no version in service yet: promoted
    first = bundle.current_version(models)
    loaded = bundle.load_bundle(models / first)
    user = loaded.user_ids.index("new-1")
    held = {loaded.item_ids[i] for i in loaded.history(user)}
    assert held and held <= {"1", "2", "3", "4", "5"}  # the rest is the user's test split
    assert loaded.user_profiles[user] == {"gender": "F", "age": 30}
    assert loaded.manifest["data"]["users"] == 121

    assert main(["retrain", *base, "--gate", "100"]) == 1
    assert bundle.current_version(models) == first  # not promoted
    assert len(bundle.list_versions(models)) == 2
