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
from service.state.events import BadEvent, Quarantine, parse
from service.state.store import file_store_id
from training.data.loaders import RawDataset, load_dataset

POSITIVE_RATING = 5.0  # recorded interactions are positives whatever the threshold
PAGE = 10_000  # events per read from the log
QUARANTINE = "quarantine.jsonl"  # in the events folder: records no run could read


class Outcome(IntEnum):
    """The job's exit codes: cron reports anything but 0."""

    PROMOTED = 0
    GATED = 1
    FAILED = 2
    LOCKED = 3


# One record of a log as read: where it lies (for the quarantine), and the decoded record —
# or the BadEvent that says why it could not be decoded.
Record = tuple[str, Any]


class EventSource(Protocol):
    name: str  # identifies the log (a store id, never a path); a mark only means something there
    legacy_names: frozenset[str]  # names older versions recorded for the same log

    def pages(self, after: str | None, size: int) -> Iterator[tuple[list[Record], str]]:
        """(records, mark after them) page by page, from just after `after`."""
        ...

    def lock(self) -> contextlib.AbstractContextManager[None]: ...

    def trim(self, before: str) -> int: ...


class FileEvents:
    """The embedded store's JSON-lines file; the mark is a byte offset after a whole line."""

    def __init__(self, path: Path):
        self.path = path
        # No folder, no store yet (the service never recorded anything): nothing to fold.
        self.name = f"file:{file_store_id(path)}" if path.parent.is_dir() else "file:absent"
        self.legacy_names = frozenset({f"file:{path.resolve()}"})  # before store ids

    def pages(self, after: str | None, size: int) -> Iterator[tuple[list[Record], str]]:
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
            page: list[Record] = []
            for line in iter(handle.readline, b""):
                if not line.endswith(b"\n"):
                    break  # a line still being written: the next run reads it whole
                if line.strip():
                    try:
                        record: Any = json.loads(line)
                    except ValueError as error:
                        record = BadEvent(f"not JSON ({error}): {line[:200]!r}")
                    page.append((f"byte {offset}", record))
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

        from service.state.store import STORE_ID_KEY, STREAM

        self.client = redis.Redis.from_url(url, decode_responses=True)
        self.stream = STREAM
        # The store's identity, set once by whoever comes first: another Redis (or a flushed
        # one) is another log, whose stream ids the mark says nothing about.
        self.client.set(STORE_ID_KEY, secrets.token_hex(8), nx=True)
        self.name = f"redis:{self.client.get(STORE_ID_KEY)}"
        self.legacy_names = frozenset({f"redis:{STREAM}"})  # before store ids

    def pages(self, after: str | None, size: int) -> Iterator[tuple[list[Record], str]]:
        start = f"({after}" if after else "-"
        while True:
            entries = self.client.xrange(self.stream, min=start, max="+", count=size)
            if not entries:
                return
            page: list[Record] = [(f"stream id {entry}", dict(fields)) for entry, fields in entries]
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


def apply_events(raw: RawDataset, events: Iterable[dict[str, Any]]) -> tuple[int, int, int]:
    """Add recorded interactions, profiles and items (normalised events:
    service/state/events.py) to `raw`; return (interactions, profiles, items). A profile is
    projected onto the fields the data has (a field only recorded events know would be a
    column of almost nothing); an item's profile onto the catalogue's fields (title, year,
    genres). Availability is not data: the store keeps it, and the service applies it to
    every version."""
    interactions = profiles = items = 0
    fields = {name for profile in raw.user_profiles.values() for name in profile}
    for event in events:
        if event["type"] == "interaction":
            raw.interactions.add(
                event["user"], event["item"], POSITIVE_RATING, float(event["timestamp"])
            )
            interactions += 1
        elif event["type"] == "profile":
            profile = event["profile"]
            kept = {
                k: v for k, v in profile.items() if v is not None and (not fields or k in fields)
            }
            raw.user_profiles[event["user"]] = kept
            profiles += 1
        elif event["type"] == "item":
            raw.item_profiles[event["item"]] = _item_profile(event["profile"])
            items += 1
    return interactions, profiles, items


def _item_profile(profile: dict[str, Any]) -> dict[str, Any]:
    """An item's profile as the loaders make them: a title, a year or None, a genre list."""
    year = profile.get("year")
    genres = profile.get("genres")
    return {
        "title": profile.get("title") if isinstance(profile.get("title"), str) else "",
        "year": int(year) if isinstance(year, int | float) and not isinstance(year, bool) else None,
        "genres": [g for g in genres if isinstance(g, str)] if isinstance(genres, list) else [],
    }


def read_segment(path: Path) -> Iterator[dict[str, Any]]:
    """A folded segment's events (written normalised by `fold_new_events`; checked again)."""
    with path.open(encoding="utf-8") as handle:
        for line in handle:
            with contextlib.suppress(ValueError, BadEvent):
                yield from list(parse(json.loads(line)))


def readable(
    records: Iterable[Record], quarantine: Quarantine, source: str
) -> Iterator[dict[str, Any]]:
    """The events of `records`; a record that cannot be read is quarantined and skipped."""
    for at, record in records:
        try:
            if isinstance(record, BadEvent):
                raise record
            yield from list(parse(record))
        except BadEvent as error:
            quarantine.add(f"{source} {at}", str(error), json.dumps(record, default=str))


def fold_new_events(
    raw: RawDataset, source: EventSource, after: str | None, events_dir: Path, page: int = PAGE
) -> tuple[str | None, str | None, tuple[int, int, int], int]:
    """Read the events after `after` page by page into `raw` and into a new segment file;
    return (segment name or None when nothing was new, the new mark, counts, records newly
    quarantined). The temporary file goes whatever happens."""
    events_dir.mkdir(parents=True, exist_ok=True)
    quarantine = Quarantine(events_dir / QUARANTINE)
    before = len(quarantine)
    tmp = events_dir / f".tmp-{os.getpid()}.jsonl"
    mark, counts = after, (0, 0, 0)
    try:
        with tmp.open("w", encoding="utf-8") as out:
            for records, page_mark in source.pages(after, page):
                mark = page_mark
                events = list(readable(records, quarantine, source.name))
                out.write("".join(json.dumps(e, separators=(",", ":")) + "\n" for e in events))
                added = apply_events(raw, events)
                counts = (counts[0] + added[0], counts[1] + added[1], counts[2] + added[2])
            out.flush()
            os.fsync(out.fileno())
        if mark == after:
            return None, after, counts, len(quarantine) - before
        tag = hashlib.sha256(source.name.encode()).hexdigest()[:8]
        name = f"{tag}-{after or 0}-{mark}.jsonl"  # same range, same content: a rerun may replace
        os.replace(tmp, events_dir / name)
        return name, mark, counts, len(quarantine) - before
    finally:
        tmp.unlink(missing_ok=True)


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
    new_store: bool = False,
    nproc: int = 1,
) -> Outcome:
    try:
        with models_lock(models_dir, wait=0), source.lock():
            return _run(
                data,
                models_dir,
                source,
                kind,
                seed,
                gate,
                output,
                config or {},
                trim,
                log,
                new_store,
                nproc,
            )
    except LockedError as error:
        log(f"retrain: locked — {error}")
        return Outcome.LOCKED
    except Exception as error:  # every other way to fail is "failed": 1 means gated
        log(f"retrain: failed — {type(error).__name__}: {error}")
        return Outcome.FAILED


def _run(
    data, models_dir, source, kind, seed, gate, output, config, trim, log, new_store, nproc
) -> Outcome:
    from training.data.prepared import ProtocolConfig, prepare
    from training.evaluation.bundle_holdout import evaluate_bundle, holdout_users
    from training.jobs.export import export_checkpoint
    from training.jobs.pipeline import train_and_evaluate

    if nproc > 1:  # before any work: what the torchrun workers would fail on
        from training.jobs.launch import check

        check(kind, config)
    current = current_version(models_dir)  # blank, unreadable or not a version: BundleError
    state = _events_state(models_dir, current)
    known = state.get("source")
    if new_store:
        log(f"retrain: --new-store: folding {source.name} from its start")
        after = None
    elif current is not None and known not in (None, source.name, *source.legacy_names):
        raise RuntimeError(
            f"{current} folded events from {known}, not from this store ({source.name}): run "
            "with the store the service uses, or --new-store if the store really changed"
        )
    else:
        after = state.get("mark") if known is not None else None
    chain = list(state.get("segments", []))
    raw = load_dataset(data)
    base = len(raw.interactions)
    folded = [apply_events(raw, read_segment(models_dir / EVENTS / s)) for s in chain]
    segment, mark, new, bad = fold_new_events(raw, source, after, models_dir / EVENTS)
    if segment is not None:
        chain.append(segment)
    earlier = sum(f[0] for f in folded)
    log(f"{base} ratings from {data}; recorded interactions: {earlier} folded before, "
        f"{new[0]} new (mark {after} → {mark}); recorded profiles: {new[1]} new; items "
        f"created or re-described: {new[2]} new; "
        f"{bad} unreadable record(s) quarantined in {EVENTS}/{QUARANTINE}")  # fmt: skip
    user_fields = config.get("features", {}).get("user")
    prepared = prepare(raw, ProtocolConfig(seed=seed), user_fields=user_fields)
    if nproc > 1:
        from training.jobs.launch import train_in_processes

        log(f"retrain: training in {nproc} processes (torchrun, DistributedDataParallel)")
        checkpoint = train_in_processes(nproc, kind, prepared, seed, config)
    else:
        _, checkpoint = train_and_evaluate(
            kind, prepared, seed, model=config.get("model"), train=config.get("train"),
            progress=False, cold=config.get("cold_items"),
        )  # fmt: skip
    # A version that folded nothing binds to no store: a later store is read from its start.
    bound = source.name if chain or mark is not None else None
    extra = {
        "events": {"source": bound, "mark": mark, "segments": chain},
        "retrain": {
            "base_ratings": base,
            "recorded_interactions": earlier + new[0],
            "new_interactions": new[0],
            "new_profiles": new[1],
            "new_items": new[2],
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


TRIMMED = "TRIMMED.json"  # in the events folder: where the log was last trimmed


def trimmed_before(models_dir: Path) -> dict[str, str]:
    """{"source", "before"}: the last trim, or {} when the log was never trimmed."""
    try:
        return dict(json.loads((models_dir / EVENTS / TRIMMED).read_text()))
    except FileNotFoundError:
        return {}


def lost_to_trim(models_dir: Path, version: str) -> str | None:
    """Why promoting `version` would lose events (its mark lies before the last trim: a
    retrain from it could not read what came between), or None."""
    trim = trimmed_before(models_dir)
    events = _events_state(models_dir, version)
    if not trim or events.get("source") not in (None, trim.get("source")):
        return None  # another store's version: the retrain refuses it on its own
    mark = events.get("mark")  # none: a retrain from it would read the log from its start
    if mark is None or _stream_order(mark) < _stream_order(trim["before"]):
        return (
            f"{version} folded events up to {mark}, but the log was trimmed before "
            f"{trim['before']}: a retrain from it would lose the events in between"
        )
    return None


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
    if not marks:
        return 0
    oldest = min(marks, key=_stream_order)
    trimmed = source.trim(oldest)
    record = json.dumps({"source": source.name, "before": oldest})
    tmp = models_dir / EVENTS / f".{TRIMMED}.{os.getpid()}"
    tmp.write_text(record + "\n")
    os.replace(tmp, models_dir / EVENTS / TRIMMED)
    return trimmed


def _stream_order(mark: str) -> tuple[int, ...]:
    return tuple(int(part) for part in mark.split("-"))
