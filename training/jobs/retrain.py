"""The batch retraining job (run by cron): base data + what the service recorded → new version.

Keeping its place in the event log:
- Events (new positive interactions, new or changed profiles) are read after a *mark* — the
  Redis stream id, or the file store's byte offset — in pages, never the whole log at once.
- What a run reads is written to a segment file, `<models_dir>/events/<name>.jsonl`. The
  manifest of the version it exports records the chain of segments its data includes and the
  mark after them. A run's data is therefore: the base data set + the segments of the version in
  service + the events after that version's mark — every event exactly once.
- The mark moves only when a version that includes the events is promoted. A run that fails,
  is killed or is gated leaves CURRENT and the mark as they were: the next run reads the same
  events again (the orphan segment is in no chain; `cddae models gc` removes it).
- After a promotion the Redis stream can be trimmed (`--trim`) up to the oldest mark of any
  version still on disk, so a rollback never needs an event that is gone.
- One run at a time: the models folder's lock (and a Redis lock where Redis is the store).
- The quality gate scores the new version and the one in service on the same holdout (the new
  run's test users and items) through their ONNX bundles, as the service would.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import secrets
import threading
from collections.abc import Callable, Iterable, Iterator
from enum import IntEnum
from pathlib import Path
from typing import Any, Protocol

from service.bundle import (
    EVENTS,
    MANIFEST,
    LockedError,
    current_version,
    list_versions,
    models_lock,
    promote,
    promotion_history,
)
from training.data.loaders import RawDataset, load_dataset

POSITIVE_RATING = 5.0  # recorded interactions are positives whatever the threshold
PAGE = 10_000  # events per read from the log


class Outcome(IntEnum):
    """The job's exit codes: cron reports anything but 0."""

    PROMOTED = 0
    GATED = 1
    FAILED = 2
    LOCKED = 3


class EventSource(Protocol):
    name: str  # identifies the log; a mark only means something for the same log

    def pages(self, after: str | None, size: int) -> Iterator[tuple[list[dict[str, Any]], str]]:
        """(events, mark after them) page by page, from just after `after`."""
        ...

    def lock(self) -> contextlib.AbstractContextManager[None]: ...

    def trim(self, before: str) -> int: ...


class FileEvents:
    """The embedded store's JSON-lines file; the mark is a byte offset after a whole line."""

    def __init__(self, path: Path):
        self.path = path
        self.name = f"file:{path.resolve()}"

    def pages(self, after: str | None, size: int) -> Iterator[tuple[list[dict[str, Any]], str]]:
        offset = int(after or 0)
        if not self.path.exists():
            if offset:
                raise RuntimeError(f"{self.path}: missing, but the mark is at byte {offset}")
            return
        if self.path.stat().st_size < offset:
            raise RuntimeError(
                f"{self.path}: shorter than the mark (byte {offset}); was it replaced?"
            )
        with self.path.open("rb") as handle:
            handle.seek(offset)
            page: list[dict[str, Any]] = []
            for line in iter(handle.readline, b""):
                if not line.endswith(b"\n"):
                    break  # a line still being written: the next run reads it whole
                if line.strip():
                    try:
                        page.append(json.loads(line))
                    except json.JSONDecodeError as error:
                        raise RuntimeError(
                            f"{self.path}: bad event at byte {offset}: {error}"
                        ) from None
                offset += len(line)
                if len(page) == size:
                    yield page, str(offset)
                    page = []
            if page:
                yield page, str(offset)

    def lock(self) -> contextlib.AbstractContextManager[None]:
        return contextlib.nullcontext()

    def trim(self, before: str) -> int:
        return 0  # the service replays this file at start: it is never trimmed


class RedisEvents:
    """The Redis stream the service appends to; the mark is a stream id."""

    LOCK_KEY = "cddae:retrain:lock"
    LOCK_TTL_MS = 60_000  # renewed every third of it while the run lives

    def __init__(self, url: str):
        import redis

        from service.state.store import STREAM

        self.client = redis.Redis.from_url(url, decode_responses=True)
        self.stream = STREAM
        self.name = f"redis:{self.stream}"

    def pages(self, after: str | None, size: int) -> Iterator[tuple[list[dict[str, Any]], str]]:
        start = f"({after}" if after else "-"
        while True:
            entries = self.client.xrange(self.stream, min=start, max="+", count=size)
            if not entries:
                return
            page = []
            for _, fields in entries:
                event: dict[str, Any] = dict(fields)
                if event["type"] == "profile":
                    event["profile"] = json.loads(event["profile"])
                page.append(event)
            last = entries[-1][0]
            yield page, last
            start = f"({last}"

    @contextlib.contextmanager
    def lock(self) -> Iterator[None]:
        """A Redis lock beside the file lock: runs on other machines share the stream."""
        token = secrets.token_hex(16)
        if not self.client.set(self.LOCK_KEY, token, nx=True, px=self.LOCK_TTL_MS):
            raise LockedError(f"another retraining run holds {self.LOCK_KEY} in Redis")
        done = threading.Event()

        def renew() -> None:
            while not done.wait(self.LOCK_TTL_MS / 3000):
                with contextlib.suppress(Exception):
                    self.client.eval(_RENEW, 1, self.LOCK_KEY, token, self.LOCK_TTL_MS)

        renewer = threading.Thread(target=renew, daemon=True)
        renewer.start()
        try:
            yield
        finally:
            done.set()
            renewer.join()
            self.client.eval(_RELEASE, 1, self.LOCK_KEY, token)

    def trim(self, before: str) -> int:
        return int(self.client.xtrim(self.stream, minid=before, approximate=False))


_RENEW = """if redis.call('get', KEYS[1]) == ARGV[1] then
  return redis.call('pexpire', KEYS[1], ARGV[2]) else return 0 end"""
_RELEASE = """if redis.call('get', KEYS[1]) == ARGV[1] then
  return redis.call('del', KEYS[1]) else return 0 end"""


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


def read_segment(path: Path) -> Iterator[dict[str, Any]]:
    with path.open(encoding="utf-8") as handle:
        for line in handle:
            yield json.loads(line)


def fold_new_events(
    raw: RawDataset, source: EventSource, after: str | None, events_dir: Path, page: int = PAGE
) -> tuple[str | None, str | None, tuple[int, int]]:
    """Read the events after `after` page by page into `raw` and into a new segment file;
    return (segment name or None when nothing was new, the new mark, counts)."""
    events_dir.mkdir(parents=True, exist_ok=True)
    tmp = events_dir / f".tmp-{os.getpid()}.jsonl"
    mark, counts = after, (0, 0)
    with tmp.open("w", encoding="utf-8") as out:
        for events, page_mark in source.pages(after, page):
            mark = page_mark
            out.write("".join(json.dumps(e, separators=(",", ":")) + "\n" for e in events))
            added = apply_events(raw, events)
            counts = (counts[0] + added[0], counts[1] + added[1])
        out.flush()
        os.fsync(out.fileno())
    if mark == after:
        tmp.unlink()
        return None, after, counts
    tag = hashlib.sha256(source.name.encode()).hexdigest()[:8]
    name = f"{tag}-{after or 0}-{mark}.jsonl"  # same range, same content: a rerun may replace
    os.replace(tmp, events_dir / name)
    return name, mark, counts


def retrain(
    data: Path,
    models_dir: Path,
    source: EventSource,
    kind: str = "cddae",
    seed: int = 0,
    gate: float = 0.9,
    output: Path | None = None,
    config: dict[str, Any] | None = None,
    trim: bool = False,
    log: Callable[[str], None] = print,
) -> Outcome:
    try:
        with models_lock(models_dir, wait=0), source.lock():
            return _run(data, models_dir, source, kind, seed, gate, output, config or {}, trim, log)
    except LockedError as error:
        log(f"retrain: locked — {error}")
        return Outcome.LOCKED


def _run(data, models_dir, source, kind, seed, gate, output, config, trim, log) -> Outcome:
    from training.data.prepared import ProtocolConfig, prepare
    from training.evaluation.bundle_holdout import evaluate_bundle, holdout_users
    from training.jobs.export import export_checkpoint
    from training.jobs.pipeline import train_and_evaluate

    current = current_version(models_dir)
    state = _events_state(models_dir, current)
    after = state.get("mark") if state.get("source") == source.name else None
    chain = list(state.get("segments", []))
    raw = load_dataset(data)
    base = len(raw.interactions)
    folded = [apply_events(raw, read_segment(models_dir / EVENTS / s)) for s in chain]
    segment, mark, new = fold_new_events(raw, source, after, models_dir / EVENTS)
    if segment is not None:
        chain.append(segment)
    earlier = sum(f[0] for f in folded)
    log(f"{base} ratings from {data}; recorded interactions: {earlier} folded before, "
        f"{new[0]} new (mark {after} → {mark}); recorded profiles: {new[1]} new")  # fmt: skip
    user_fields = config.get("features", {}).get("user")
    prepared = prepare(raw, ProtocolConfig(seed=seed), user_fields=user_fields)
    _, checkpoint = train_and_evaluate(
        kind, prepared, seed, model=config.get("model"), train=config.get("train"), progress=False
    )
    extra = {
        "events": {"source": source.name, "mark": mark, "segments": chain},
        "retrain": {
            "base_ratings": base,
            "recorded_interactions": earlier + new[0],
            "new_interactions": new[0],
            "new_profiles": new[1],
        },
    }
    checkpoint.meta["retrain"] = extra["retrain"]
    if output is not None:
        checkpoint.save(output)
    version, parity = export_checkpoint(checkpoint, models_dir, extra)
    # The gate compares what can be compared honestly: the new run's evaluation (its model fit
    # without its holdout) against the evaluation recorded in the manifest of the version in
    # service, same protocol and metric. The served models cannot be compared on a holdout:
    # both were fit on all the data, so such a score measures how much each memorised, and a
    # model that stopped earlier (and generalises better) would lose. Then the new bundle
    # itself, through onnxruntime as the service scores it, must hold its own evaluated level
    # on that holdout (it has seen it): a broken export or a collapsed final fit stops here.
    new_eval = float(checkpoint.meta["metrics"]["P"][9])
    old_eval = _evaluated_p10(models_dir, current, kind, log)
    users = holdout_users(prepared, seed=seed)
    served = float(evaluate_bundle(models_dir / version, prepared, users)["P"][9])
    versus = (
        f"in service {old_eval:.4f}" if old_eval is not None else "nothing comparable in service"
    )
    log(f"new version {version}: evaluated P@10 {new_eval:.4f} vs {versus}; the bundle scores "
        f"{served:.4f} on that holdout of {len(users)} users; parity max |Δ| "
        f"{parity['max_abs_diff']:.1e}")  # fmt: skip
    if old_eval is not None and new_eval < gate * old_eval:
        log(f"retrain: gated {version} (evaluated P@10 {new_eval:.4f} < {gate} × {old_eval:.4f}"
            f"); mark stays at {after}")  # fmt: skip
        return Outcome.GATED
    if served < gate * new_eval:
        log(f"retrain: gated {version} (the bundle scores {served:.4f} < {gate} × its evaluated "
            f"{new_eval:.4f}: export or final fit broken); mark stays at {after}")  # fmt: skip
        return Outcome.GATED
    promote(models_dir, version)
    trimmed = _trim(models_dir, source) if trim else 0
    log(f"retrain: promoted {version} (evaluated P@10 {new_eval:.4f}, {versus}); {new[0]} new "
        f"interactions, mark {mark}, {trimmed} events trimmed")  # fmt: skip
    return Outcome.PROMOTED


def _evaluated_p10(
    models_dir: Path, version: str | None, kind: str, log: Callable[[str], None]
) -> float | None:
    """P@10 of the evaluation recorded in a version's manifest, when it is comparable: the same
    protocol family as this job's (a random holdout; the model kind may differ)."""
    if version is None:
        return None
    try:
        manifest = json.loads((models_dir / version / MANIFEST).read_text())
        if manifest.get("protocol", {}).get("name") != "random":
            log(f"{version} was evaluated on another protocol; gating on nothing")
            return None
        return float(manifest["metrics"]["P@10"])
    except (OSError, ValueError, KeyError, TypeError) as error:
        log(f"the version in service has no readable evaluation ({error}); gating on nothing")
        return None


def _events_state(models_dir: Path, version: str | None) -> dict[str, Any]:
    """The event bookkeeping of a version's manifest, read leniently: a bundle of an older
    format (which the service would refuse) still tells where the log was folded up to."""
    if version is None:
        return {}
    try:
        manifest = json.loads((models_dir / version / MANIFEST).read_text())
    except (OSError, ValueError) as error:
        raise RuntimeError(f"{version}: cannot read its manifest ({error})") from None
    return manifest.get("events", {})


def _trim(models_dir: Path, source: EventSource) -> int:
    """Trim the log up to the oldest mark any version on disk still depends on."""
    marks = []
    on_disk = set(list_versions(models_dir))
    for version in promotion_history(models_dir):
        if version not in on_disk:
            continue
        events = _events_state(models_dir, version)
        if events.get("source") != source.name or not events.get("mark"):
            return 0  # a version that would reread the log from its start: keep it all
        marks.append(events["mark"])
    return source.trim(min(marks, key=_stream_order)) if marks else 0


def _stream_order(mark: str) -> tuple[int, ...]:
    return tuple(int(part) for part in mark.split("-"))
