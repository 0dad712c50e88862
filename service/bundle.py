"""The model bundle: the one contract between training (writer) and the service (reader).

A bundle is a folder `<models_dir>/<version>/` holding:
  manifest.json   format and model version, model kind and hyper-parameters, data fingerprint,
                  metrics and protocol, ONNX input/output names and shapes, sha256 of each file
  model.onnx      the inference path: inputs named in the manifest, output "scores"
  arrays.npz      numpy arrays only (no pickles, no per-user JSON: a million users load in well
                  under a second): user and item ids in matrix order; item titles and genres
                  ("|"-joined); per user, as CSR indptr/indices, `history` (every positive, the
                  model's input) and `seen` (every interaction, any rating: never
                  recommended); encoded user features; whether each user has a profile;
                  popularity
  features.json   the user and item feature specs (service.features.FeatureSpec)
  Format 4 adds, optional in arrays.npz: `item_values__<field>` (each item-spec field's raw
  values, what filters test: text, "|"-joined labels, or numbers with NaN for unknown);
  `item_vectors` and `item_bias` (the output layer's rows: similar items, and the scale new
  items are scored on); `cold_w0, cold_b0, …` (the cold-item head, service.item_path); and the
  graph's outputs `hidden` and `log_norm` beside `scores` where the model has that path.
`<models_dir>/CURRENT` names the version in service; `HISTORY` lists promotions, newest last.
Every write goes to a temporary name, is flushed, then renamed: no reader sees half of anything.
Writers (export, promote, rollback, gc, the retraining job) take `models_lock` first.
Standard library and numpy only.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import fcntl
import hashlib
import io
import json
import os
import re
import shutil
import stat
import tempfile
import threading
import time
from collections.abc import Callable, Collection, Iterator, Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np

from service.features import FeatureSpec
from service.item_path import cold_layers

# 2: separate `history` (model input) and `seen` (exclusion) lists; 3: id and item tables as
# arrays, the history as (items, weights) inputs to the graph; 4: item values, item vectors and
# the cold-item head (all optional: a format-3 bundle reads as one without them).
FORMAT_VERSION = 4
MIN_FORMAT_VERSION = 3
ITEM_VALUES = "item_values__"
MANIFEST = "manifest.json"
CURRENT = "CURRENT"
HISTORY = "HISTORY"
LOCK = ".lock"
EVENTS = "events"  # the retraining job's folded event segments (training.jobs.retrain)
FILES = ("model.onnx", "arrays.npz", "features.json")
OPTIONAL_FILES = ("model.onnx.data",)  # ONNX external weights, when the graph passes 2 GB


class BundleError(RuntimeError):
    """A bundle that is missing, incomplete, corrupt or from another format."""


class LockedError(RuntimeError):
    """Another process holds the models folder's lock."""


_locks_guard = threading.Lock()
_locks: dict[str, tuple[threading.RLock, list[int]]] = {}  # path -> (lock, [fd, depth])


@contextlib.contextmanager
def models_lock(models_dir: Path, wait: float = 10.0) -> Iterator[None]:
    """One writer at a time on a models folder: an exclusive `flock` on `<models_dir>/.lock`,
    released by the kernel if the holder dies. Re-entrant within a thread, so the retraining
    job can hold it for its whole run and still call export and promote."""
    models_dir.mkdir(parents=True, exist_ok=True)
    path = str((models_dir / LOCK).resolve())
    with _locks_guard:
        local, slot = _locks.setdefault(path, (threading.RLock(), [-1, 0]))
    acquired = local.acquire(timeout=wait) if wait > 0 else local.acquire(blocking=False)
    if not acquired:
        raise LockedError(f"{models_dir}: locked by another thread of this process")
    try:
        if slot[1] == 0:
            slot[0] = _flock(Path(path), wait)
        slot[1] += 1
        try:
            yield
        finally:
            slot[1] -= 1
            if slot[1] == 0:
                os.close(slot[0])  # closing the descriptor releases the flock
                slot[0] = -1
    finally:
        local.release()


def _flock(path: Path, wait: float) -> int:
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    deadline = time.monotonic() + wait
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            break
        except BlockingIOError:
            if time.monotonic() >= deadline:
                holder = os.pread(fd, 64, 0).decode(errors="replace").strip() or "unknown"
                os.close(fd)
                raise LockedError(
                    f"{path.parent}: another process holds {path.name} (pid {holder})"
                ) from None
            time.sleep(0.05)
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    return fd


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _write_synced(path: Path, payload: bytes) -> None:
    with path.open("wb") as handle:
        handle.write(payload)
        handle.flush()
        os.fsync(handle.fileno())


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def replace_text(path: Path, text: str) -> None:
    """Atomically replace a small text file (pointer, history)."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    _write_synced(tmp, text.encode())
    os.replace(tmp, path)
    _fsync_dir(path.parent)


def new_version(fingerprint: str, now: dt.datetime | None = None) -> str:
    """Sortable: UTC timestamp to the microsecond, then a short hash of the content."""
    now = now or dt.datetime.now(dt.UTC)
    return f"{now:%Y%m%dT%H%M%S%fZ}-{fingerprint[:8]}"


def arrays_payload(arrays: Mapping[str, np.ndarray]) -> bytes:
    """Uncompressed: loading is a read, not a decompression, on the service's start path."""
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    return buffer.getvalue()


def write_bundle(
    models_dir: Path,
    files: Mapping[str, bytes],
    manifest: Mapping[str, Any],
    version: str | None = None,
) -> str:
    """Write a complete bundle and return its version. `files` must hold every name in FILES."""
    if missing := set(FILES) - set(files):
        raise BundleError(f"cannot write a bundle without {sorted(missing)}")
    names = [name for name in (*FILES, *OPTIONAL_FILES) if name in files]
    models_dir.mkdir(parents=True, exist_ok=True)
    version = version or new_version(hashlib.sha256(files["model.onnx"]).hexdigest())
    staging = Path(tempfile.mkdtemp(prefix=f".tmp-{version}-{os.getpid()}-", dir=models_dir))
    try:
        staging.chmod(0o755)  # mkdtemp's 0700 would hide the bundle from a serving user
        for name in names:
            _write_synced(staging / name, files[name])
        full = {
            **manifest,
            "format_version": FORMAT_VERSION,
            "model_version": version,
            "created_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
            "files": {name: hashlib.sha256(files[name]).hexdigest() for name in names},
        }
        _write_synced(staging / MANIFEST, json.dumps(full, indent=2).encode())
        _fsync_dir(staging)
        os.rename(staging, models_dir / version)
        _fsync_dir(models_dir)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return version


# --- Versions and the pointer ------------------------------------------------------------------


def list_versions(models_dir: Path) -> list[str]:
    """Complete bundle folders (those with a manifest), oldest first."""
    if not models_dir.is_dir():
        return []
    return sorted(
        p.name
        for p in models_dir.iterdir()
        if not p.name.startswith(".") and (p / MANIFEST).is_file()
    )


_SEGMENT = re.compile(r"[0-9a-f]{8}-[0-9-]+\.jsonl")  # <store tag>-<mark>-<mark>.jsonl
VERSION_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


def read_small_file(path: Path, limit: int) -> bytes:
    """A small file's bytes, refusing what is not a regular file (a FIFO would block the
    reader for good, a device never ends) or is larger than `limit` (BundleError).
    FileNotFoundError when there is none."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise BundleError(f"{path.name} is not a regular file")
        data = os.read(fd, limit + 1)
    finally:
        os.close(fd)
    if len(data) > limit:
        raise BundleError(f"{path.name} is larger than {limit} bytes")
    return data


def current_version(models_dir: Path) -> str | None:
    """The version CURRENT names; None when there is no CURRENT yet. A CURRENT that is blank
    or names no plain folder (`../x`, a path, garbage bytes) is a BundleError: bookkeeping
    must stop there, never read it as "nothing in service" and start from scratch."""
    try:
        raw = read_small_file(models_dir / CURRENT, 4096)
    except FileNotFoundError:
        return None
    text = raw.decode("utf-8", errors="replace").strip()
    if not text:
        raise BundleError(f"{CURRENT} is blank: name the version in service, or remove it")
    if not VERSION_NAME.fullmatch(text) or ".." in text:
        raise BundleError(f"{CURRENT} holds {text[:80]!r}, which is not a version name")
    return text


def promotion_history(models_dir: Path) -> list[str]:
    try:
        return (models_dir / HISTORY).read_text().split()
    except FileNotFoundError:
        return []


def promote(models_dir: Path, version: str) -> None:
    """Point CURRENT at `version` (checked first), then record the promotion in HISTORY: the
    pointer is what serves, so it is never behind the record."""
    with models_lock(models_dir):
        promote_locked(models_dir, version)


def promote_locked(models_dir: Path, version: str) -> None:
    """`promote`, for a caller that holds the folder's lock (and does more in the same step)."""
    if not VERSION_NAME.fullmatch(version) or ".." in version:
        raise BundleError(f"{version[:80]!r} is not a version name")
    verify_files(models_dir / version)
    history = promotion_history(models_dir)
    replace_text(models_dir / CURRENT, version + "\n")
    replace_text(models_dir / HISTORY, "\n".join([*history, version]) + "\n")


def rollback_target(models_dir: Path) -> tuple[str, list[str]]:
    """(the version promoted before the one CURRENT names, HISTORY up to it). HISTORY's last
    entry need not be CURRENT: a hand may have moved the pointer."""
    current = current_version(models_dir)
    history = promotion_history(models_dir)
    if current is None:
        raise BundleError("nothing to roll back to: no version in service")
    if current not in history:
        raise BundleError(f"cannot roll back: {current} is not in {HISTORY}")
    at = len(history) - 1 - history[::-1].index(current)
    if at == 0:
        raise BundleError(f"nothing to roll back to: {current} is the first promotion")
    return history[at - 1], history[:at]


def rollback(models_dir: Path) -> str:
    """Return to the version promoted before the one CURRENT names."""
    with models_lock(models_dir):
        previous, history = rollback_target(models_dir)
        verify_files(models_dir / previous)
        replace_text(models_dir / CURRENT, previous + "\n")
        replace_text(models_dir / HISTORY, "\n".join(history) + "\n")
    return previous


def gc(
    models_dir: Path, keep: int, pinned: Callable[[], Collection[str]] = lambda: ()
) -> list[str]:
    """Remove all versions but the newest `keep`, the current one and those `pinned` names
    (read under the lock: a running experiment's, service.experiment.collect), staging folders
    of dead writers, and event segments no remaining version uses; return the removed
    versions."""
    with models_lock(models_dir):
        versions = list_versions(models_dir)
        current = current_version(models_dir)
        keep_set = set(versions[-keep:] if keep > 0 else []) | {current} | set(pinned())
        removed = [v for v in versions if v not in keep_set]
        for version in removed:
            shutil.rmtree(models_dir / version)
        for stale in models_dir.glob(".tmp-*"):
            if not _writer_alive(stale.name):
                shutil.rmtree(stale, ignore_errors=True)
        used: set[str] = set()
        for version in keep_set - {None}:
            with contextlib.suppress(BundleError, OSError):
                used.update(
                    read_manifest(models_dir / version).get("events", {}).get("segments", [])
                )
        for segment in (models_dir / EVENTS).glob("*.jsonl"):  # segments only: the quarantine
            if _SEGMENT.fullmatch(segment.name) and segment.name not in used:  # stays
                segment.unlink()
    return removed


def _writer_alive(staging_name: str) -> bool:
    """Whether the process that named a staging folder `.tmp-<version>-<pid>-…` still runs."""
    parts = staging_name.split("-")
    pid = int(parts[3]) if len(parts) > 3 and parts[3].isdigit() else None
    if pid is None or pid == os.getpid():
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


# --- Reading -----------------------------------------------------------------------------------


def read_manifest(folder: Path) -> dict[str, Any]:
    path = folder / MANIFEST
    if not path.is_file():
        raise BundleError(f"{folder}: missing {MANIFEST}")
    try:
        manifest = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise BundleError(f"{path}: not valid JSON ({error})") from None
    version = manifest.get("format_version")
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise BundleError(
            f"{path}: format version {version!r} is newer than this reader's {FORMAT_VERSION}"
        )
    if version < MIN_FORMAT_VERSION:
        raise BundleError(
            f"{path}: format version {version} is older than this reader's {FORMAT_VERSION}; "
            "re-export it with `cddae export` (a checkpoint from an older release: train again)"
        )
    return manifest


def verify_files(folder: Path) -> dict[str, Any]:
    """Check the manifest and the sha256 of every file it lists; return the manifest."""
    manifest = read_manifest(folder)
    listed = manifest.get("files", {})
    if missing_entries := set(FILES) - set(listed):
        raise BundleError(f"{folder}: manifest lists no checksum for {sorted(missing_entries)}")
    for name, expected in listed.items():
        path = folder / name
        if not path.is_file():
            raise BundleError(f"{path}: missing file")
        if (actual := _sha256(path)) != expected:
            raise BundleError(f"{path}: sha256 {actual[:12]}… does not match the manifest")
    return manifest


class IdIndex:
    """Raw id → matrix index by binary search over a sorted copy: for a million ids, a few
    arrays instead of a dict of a million Python strings."""

    def __init__(self, ids: np.ndarray):
        self.ids = ids
        self._order = np.argsort(ids, kind="stable")
        self._sorted = ids[self._order]

    def __len__(self) -> int:
        return len(self.ids)

    def get(self, key: str, default: int | None = None) -> int | None:
        at = int(np.searchsorted(self._sorted, key))
        if at < len(self._sorted) and self._sorted[at] == key:
            return int(self._order[at])
        return default

    def __contains__(self, key: str) -> bool:
        return self.get(key) is not None

    def __getitem__(self, key: str) -> int:
        found = self.get(key)
        if found is None:
            raise KeyError(key)
        return found

    def lookup(self, keys: np.ndarray) -> np.ndarray:
        """Indices of many keys at once; -1 where a key is unknown."""
        keys = np.asarray(keys)
        if keys.dtype.kind != "U":
            keys = keys.astype(str)
        if not len(self._sorted) or not len(keys):
            return np.full(len(keys), -1, dtype=np.int64)
        # A key longer than every id cannot be one, and must not be cut to the ids' width to
        # be compared ("80999" is not "80"): such keys are unknown; the rest cast losslessly.
        fits = np.char.str_len(keys) <= self._sorted.dtype.itemsize // 4
        narrow = keys.astype(self._sorted.dtype)
        at = np.searchsorted(self._sorted, narrow).clip(0, len(self._sorted) - 1)
        found = (self._sorted[at] == narrow) & fits
        return np.where(found, self._order[at], -1)


@dataclass
class Bundle:
    """A verified bundle, loaded: what the service needs besides the ONNX session."""

    path: Path
    manifest: dict[str, Any]
    item_ids: np.ndarray  # str, matrix order
    item_titles: np.ndarray
    item_genres: np.ndarray  # "|"-joined
    user_ids: np.ndarray  # str, matrix order
    has_profile: np.ndarray  # bool per user
    history_indptr: np.ndarray
    history_indices: np.ndarray
    seen_indptr: np.ndarray
    seen_indices: np.ndarray
    user_features: np.ndarray
    popularity: np.ndarray
    user_spec: FeatureSpec
    item_spec: FeatureSpec
    # Format 4, optional (see the module's docstring).
    item_values: dict[str, np.ndarray] = field(default_factory=dict)
    item_vectors: np.ndarray | None = None
    item_bias: np.ndarray | None = None
    cold_layers: list[tuple[np.ndarray, np.ndarray]] = field(default_factory=list)

    @property
    def version(self) -> str:
        return self.manifest["model_version"]

    @property
    def onnx_path(self) -> Path:
        return self.path / "model.onnx"

    def history(self, user: int) -> np.ndarray:
        """Item indices of a known user's positives: the model's input."""
        return self.history_indices[self.history_indptr[user] : self.history_indptr[user + 1]]

    def seen(self, user: int) -> np.ndarray:
        """Item indices of everything a known user interacted with, any rating."""
        return self.seen_indices[self.seen_indptr[user] : self.seen_indptr[user + 1]]


ARRAYS = tuple(f.name for f in fields(Bundle) if f.type == "np.ndarray")


def load_bundle(folder: Path) -> Bundle:
    manifest = verify_files(folder)
    try:
        features = json.loads((folder / "features.json").read_text())
        with np.load(folder / "arrays.npz", allow_pickle=False) as arrays:
            data = {name: arrays[name] for name in ARRAYS}
            optional = {name: arrays[name] for name in arrays.files if name not in ARRAYS}
        bundle = Bundle(
            path=folder,
            manifest=manifest,
            user_spec=FeatureSpec.from_dict(features["user_spec"]),
            item_spec=FeatureSpec.from_dict(features["item_spec"]),
            item_values={
                name.removeprefix(ITEM_VALUES): values
                for name, values in optional.items()
                if name.startswith(ITEM_VALUES)
            },
            item_vectors=optional.get("item_vectors"),
            item_bias=optional.get("item_bias"),
            cold_layers=cold_layers(optional),
            **data,
        )
    except (KeyError, ValueError, TypeError, OSError) as error:
        raise BundleError(f"{folder}: unreadable content ({error})") from None
    users, items = len(bundle.user_ids), len(bundle.item_ids)
    if not len(bundle.history_indptr) == len(bundle.seen_indptr) == users + 1:
        raise BundleError(f"{folder}: history, seen and user table disagree")
    if not len(bundle.item_titles) == len(bundle.item_genres) == len(bundle.popularity) == items:
        raise BundleError(f"{folder}: item tables disagree")
    per_item = [*bundle.item_values.values(), bundle.item_vectors, bundle.item_bias]
    if any(values is not None and len(values) != items for values in per_item):
        raise BundleError(f"{folder}: item values or vectors disagree with the item table")
    if bundle.cold_layers and (bundle.item_vectors is None or bundle.item_bias is None):
        raise BundleError(f"{folder}: a cold-item head without item vectors")
    return bundle
