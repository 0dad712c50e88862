"""An experiment between two versions: the file every replica follows, and who sees what.

`EXPERIMENT` in the models folder (beside CURRENT, written atomically like it) names a
*candidate* version, the *share* of users it is for and whether it is only a *shadow*. The
version CURRENT names is the *control*. A user's variant is a stable hash of the experiment's
id and the user's id: the same user sees the same variant in every replica and across
restarts, and the next experiment (a new id) draws its users afresh. In shadow mode nobody is
served the candidate: it scores the share's users on the side, and how far its lists overlap
the served ones is counted. Shared by the service and the `cddae models experiment` commands
(stdlib only).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import re
import secrets
from dataclasses import asdict, dataclass
from pathlib import Path

from service.bundle import (
    VERSION_NAME,
    BundleError,
    current_version,
    gc,
    models_lock,
    promote_locked,
    read_small_file,
    replace_text,
    verify_files,
)

EXPERIMENT = "EXPERIMENT"
MAX_FILE_BYTES = 4096  # the file is a few lines; anything larger is not ours
CONTROL, CANDIDATE = "control", "candidate"


class ExperimentError(BundleError):
    """The experiment file cannot be read, or the experiment cannot start or stop."""


@dataclass(frozen=True)
class Experiment:
    id: str  # drawn at start: the salt of the assignment
    candidate: str
    share: float  # of users, in (0, 1)
    shadow: bool
    started: str  # ISO time, UTC
    control: str  # the version CURRENT named at the start (CURRENT may move on since)

    def variant(self, unit: str) -> str:
        """CANDIDATE for about `share` of units (users), CONTROL for the others; stable."""
        return CANDIDATE if bucket(self.id, unit) < self.share else CONTROL

    def arm(self, variant: str) -> str:
        """How the counts name this experiment's variant: `<id>:<variant>`."""
        return f"{self.id}:{variant}"

    @property
    def started_at(self) -> dt.datetime:
        return dt.datetime.fromisoformat(self.started)


def bucket(salt: str, unit: str) -> float:
    """A uniform number in [0, 1) from the salt and the unit, the same on every machine."""
    digest = hashlib.sha256(f"{salt}\x00{unit}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2.0**64


def read_experiment(models_dir: Path) -> Experiment | None:
    """The running experiment; None when there is none. A file that is not one (torn,
    hand-edited, names no version, a FIFO) is an ExperimentError: the caller keeps what it
    had."""
    try:
        raw = read_small_file(models_dir / EXPERIMENT, MAX_FILE_BYTES)
    except FileNotFoundError:
        return None
    except BundleError as error:
        raise ExperimentError(str(error)) from None
    except OSError as error:
        raise ExperimentError(f"cannot read {EXPERIMENT}: {error.strerror or error}") from None
    try:
        data = json.loads(raw)
        fields = {name: data[name] for name in ("id", "candidate", "started", "control")}
        share, shadow = data["share"], data["shadow"]
    except (ValueError, KeyError, TypeError) as error:
        raise ExperimentError(f"{EXPERIMENT} is not an experiment: {error}") from None
    if not all(isinstance(v, str) for v in fields.values()):
        raise ExperimentError(f"{EXPERIMENT}: id, candidate, started and control are text")
    if isinstance(share, bool) or not isinstance(share, int | float):
        raise ExperimentError(f"{EXPERIMENT}: share is a number, got {share!r}")
    if not isinstance(shadow, bool):
        raise ExperimentError(f"{EXPERIMENT}: shadow is true or false, got {shadow!r}")
    if not re.fullmatch(r"[0-9A-Za-z_-]{1,64}", fields["id"]):
        raise ExperimentError(f"{EXPERIMENT}: id {fields['id'][:80]!r} is not an experiment id")
    experiment = Experiment(share=float(share), shadow=shadow, **fields)
    try:
        experiment.started_at  # noqa: B018 — a time it can parse
    except ValueError as error:
        raise ExperimentError(f"{EXPERIMENT}: started is not a time: {error}") from None
    _check(experiment.candidate, experiment.share)
    return experiment


def _check(candidate: str, share: float) -> None:
    if not VERSION_NAME.fullmatch(candidate) or ".." in candidate:
        raise ExperimentError(f"{candidate[:80]!r} is not a version name")
    if not 0.0 < share < 1.0:
        raise ExperimentError(f"share must be between 0 and 1 (exclusive), got {share}")


def start_experiment(
    models_dir: Path, candidate: str, share: float, shadow: bool = False
) -> Experiment:
    """Write the experiment file: the candidate's files are checked, it must not be the
    version in service, and only one experiment runs at a time."""
    _check(candidate, share)
    with models_lock(models_dir):
        if (running := read_experiment(models_dir)) is not None:
            raise ExperimentError(
                f"an experiment is running (candidate {running.candidate}); stop it first"
            )
        control = current_version(models_dir)
        if control is None:
            raise ExperimentError("no version in service (CURRENT) to compare the candidate with")
        if candidate == control:
            raise ExperimentError(f"{candidate} is the version in service already")
        verify_files(models_dir / candidate)
        now = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
        experiment = Experiment(secrets.token_hex(4), candidate, share, shadow, now, control)
        replace_text(models_dir / EXPERIMENT, json.dumps(asdict(experiment), indent=2) + "\n")
    return experiment


def stop_experiment(models_dir: Path, promote: Experiment | None = None) -> Experiment | None:
    """Remove the experiment file; the experiment it held (None when the file could not be
    read: an unreadable file is removed all the same, so that a hand's mistake can be undone
    with the command). `promote`: the experiment the caller read — its candidate is put in
    service in the same locked step, refused if the file changed since."""
    with models_lock(models_dir):
        try:
            experiment = read_experiment(models_dir)
        except ExperimentError:
            if promote is not None:
                raise
            experiment = None
        else:
            if experiment is None:
                raise ExperimentError("no experiment is running")
        if promote is not None:
            if experiment != promote:
                raise ExperimentError("the experiment changed meanwhile: nothing promoted")
            promote_locked(models_dir, promote.candidate)
        (models_dir / EXPERIMENT).unlink()
    return experiment


def collect(models_dir: Path, keep: int) -> list[str]:
    """`bundle.gc`, keeping both versions of a running experiment (read under the folder's
    lock; of an unreadable experiment file, nothing is removed: it may name any version)."""

    def pinned() -> set[str]:
        experiment = read_experiment(models_dir)
        return {experiment.candidate, experiment.control} if experiment is not None else set()

    return gc(models_dir, keep, pinned)
