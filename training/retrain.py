"""The batch retraining job (run by cron): base data + what the service recorded → new version.

1. Load the base data set and the events the service stored (the Redis stream `cddae:events`
   or the file store's JSON lines): new positive interactions and new or changed profiles.
2. Train and evaluate under the usual protocol; export a bundle.
3. Promote it only if its P@10 is at least `gate` × the P@10 of the version in service, so a
   broken run never replaces a working model. The service picks the promotion up by itself.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from service.bundle import current_version, promote, read_manifest
from training.data import RawDataset, load_dataset
from training.export import export_checkpoint
from training.pipeline import ProtocolConfig, prepare, train_and_evaluate

POSITIVE_RATING = 5.0  # recorded interactions are positives whatever the threshold


def events_from_file(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    with path.open(encoding="utf-8") as handle:
        return [json.loads(line) for line in handle if line.strip()]


def events_from_redis(url: str) -> list[dict[str, Any]]:
    import redis

    from service.store import STREAM

    client = redis.Redis.from_url(url, decode_responses=True)
    events = []
    for _, fields in client.xrange(STREAM):
        event: dict[str, Any] = dict(fields)
        if event["type"] == "profile":
            event["profile"] = json.loads(event["profile"])
        events.append(event)
    return events


def apply_events(raw: RawDataset, events: Iterable[dict[str, Any]]) -> tuple[int, int]:
    """Add recorded interactions and profiles to `raw`; return (interactions, profiles)."""
    interactions = profiles = 0
    for event in events:
        if event["type"] == "interaction":
            raw.interactions.add(
                str(event["user"]), str(event["item"]), POSITIVE_RATING, float(event["timestamp"])
            )
            interactions += 1
        elif event["type"] == "profile":
            raw.user_profiles[str(event["user"])] = dict(event["profile"])
            profiles += 1
    return interactions, profiles


def retrain(
    data: Path,
    models_dir: Path,
    events: list[dict[str, Any]],
    kind: str = "cddae",
    seed: int = 0,
    gate: float = 0.9,
    output: Path | None = None,
    config: dict[str, Any] | None = None,
    log: Callable[[str], None] = print,
) -> tuple[str, bool]:
    """Return (new version, whether it was promoted)."""
    raw = load_dataset(data)
    added, profiles = apply_events(raw, events)
    log(f"{len(raw.interactions)} ratings from {data}, {added} recorded interactions, "
        f"{profiles} recorded profiles")  # fmt: skip
    config = config or {}
    prepared = prepare(raw, ProtocolConfig(seed=seed))
    _, checkpoint = train_and_evaluate(
        kind, prepared, seed, model=config.get("model"), train=config.get("train"), progress=False
    )
    checkpoint.meta["retrain"] = {"recorded_interactions": added, "recorded_profiles": profiles}
    if output is not None:
        checkpoint.save(output)
    version, parity = export_checkpoint(checkpoint, models_dir)
    new_p = checkpoint.meta["metrics"]["P"][9]
    current = current_version(models_dir)
    old_p = read_manifest(models_dir / current)["metrics"]["P@10"] if current else 0.0
    log(f"new version {version}: P@10 {new_p:.4f} (in service: {old_p:.4f}); parity {parity}")
    if new_p < gate * old_p:
        log(f"not promoted: P@10 below {gate} × the version in service")
        return version, False
    promote(models_dir, version)
    log(f"promoted {version}")
    return version, True
