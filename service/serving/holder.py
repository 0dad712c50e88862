"""Holds the model in service (and an experiment's candidate) and swaps in newly promoted
versions without a restart.

Requests take a reference to the current `Model` once and use it to the end, so a swap never
fails a request in flight. A version that fails its checks is refused and remembered: it is not
retried while the pointer stays on it, and is tried again once the pointer has moved away and
back. The old model keeps serving meanwhile.

While an experiment runs (service.experiment), its candidate is loaded beside the model in
service, both stay in memory, and `trial` is the experiment in effect with its candidate: None
until the candidate has loaded (a candidate that fails its checks leaves everyone on the
control).
"""

from __future__ import annotations

import asyncio
import logging
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from service.bundle import BundleError, current_version
from service.experiment import Experiment, ExperimentError, read_experiment
from service.serving.onnx_model import Model

log = logging.getLogger("cddae.service")


class ModelHolder:
    def __init__(self, models_dir: Path, threads: int = 1):
        self.models_dir = models_dir
        self.threads = threads
        self.model: Model | None = None
        self.refused: dict[str, str] = {}
        self.pointer: str | None = None  # what CURRENT named at the last look
        self.pointer_error: str | None = None  # why CURRENT could not be read, if it could not
        # The experiment in effect and its candidate, loaded (None: no experiment in effect)
        self.trial: tuple[Experiment, Model] | None = None
        self._experiment_seen: str | None = None
        self.experiment_error: str | None = None  # why EXPERIMENT could not be followed
        self._lock = threading.Lock()
        # Model loads have a thread of their own: a slow load never holds up inference or
        # the store's writes (which have their own executors).
        self._loader = ThreadPoolExecutor(max_workers=1, thread_name_prefix="model-load")

    async def refresh_async(self, force: bool = False) -> str:
        return await asyncio.get_running_loop().run_in_executor(self._loader, self.refresh, force)

    def refresh(self, force: bool = False) -> str:
        """Load the version CURRENT names if it is new, and follow the experiment file; return
        what happened, for logs/admin."""
        with self._lock:
            outcome = self._refresh_current(force)
            self._follow_experiment(force)
            return outcome

    def _follow_experiment(self, force: bool) -> None:
        """The experiment file as it stands: its candidate loaded (kept while it runs), or the
        experiment dropped when the file is gone. An unreadable file keeps what was in effect.
        A refused candidate is tried again when another experiment starts."""
        try:
            experiment = read_experiment(self.models_dir)
        except ExperimentError as error:
            self.experiment_error = str(error)
            return
        self.experiment_error = None
        if experiment is None or self.model is None:
            self.trial = None
            return
        if experiment.id != self._experiment_seen:
            self.refused.pop(experiment.candidate, None)
            self._experiment_seen = experiment.id
        if experiment.candidate == self.model.version:  # promoted: nothing left to compare
            self.trial = None
            return
        loaded = self.trial[1] if self.trial is not None else None
        if loaded is None or loaded.version != experiment.candidate or force:
            version = experiment.candidate
            if version in self.refused and not force:
                self.experiment_error = f"candidate {version} refused: {self.refused[version]}"
                self.trial = None
                return
            try:
                loaded = Model.load(self.models_dir / version, self.threads)
            except Exception as error:
                self.refused[version] = str(error).replace(f"{self.models_dir}/", "")
                self.experiment_error = f"candidate {version} refused: {self.refused[version]}"
                self.trial = None
                log.error("refused the experiment's candidate %s: %s", version, error)
                return
            log.info("experiment %s: candidate %s loaded", experiment.id, version)
        self.trial = (experiment, loaded)  # one assignment: requests see both or neither

    @property
    def experiment(self) -> Experiment | None:
        trial = self.trial
        return trial[0] if trial is not None else None

    def _refresh_current(self, force: bool) -> str:
        try:
            version = current_version(self.models_dir)
        except OSError as error:  # a directory where CURRENT should be, permissions, …
            self.pointer_error = f"cannot read CURRENT: {error.strerror or error}"
            return self.pointer_error
        except BundleError as error:  # blank, or not a version name: keep serving
            self.pointer_error = str(error)
            return self.pointer_error
        self.pointer_error = None
        if version != self.pointer:  # the pointer moved: what it names gets a fresh try
            self.refused.pop(version or "", None)
            self.pointer = version
        if version is None:
            return "no current version"
        if self.model is not None and self.model.version == version and not force:
            return f"{version} already in service"
        if version in self.refused and not force:
            return f"{version} refused: {self.refused[version]}"
        try:
            model = Model.load(self.models_dir / version, self.threads)
        except Exception as error:  # any failure to load keeps the old model serving
            # Reasons are shown on /readyz: name files inside the models folder only.
            self.refused[version] = str(error).replace(f"{self.models_dir}/", "")
            log.error("refused model %s: %s", version, error)
            return f"{version} refused: {error}"
        self.model = model
        log.info("serving model %s", version)
        return f"{version} in service"

    @property
    def serving_current(self) -> bool:
        """Whether the model in service is the version CURRENT names (as last read)."""
        if self.pointer_error is not None:
            return False
        return self.model is not None and self.model.version == self.pointer

    async def watch(self, interval: float) -> None:
        """Poll the pointer forever: an error in one look is logged, never the end of it."""
        while True:
            await asyncio.sleep(interval)
            try:
                await self.refresh_async()
            except Exception:
                log.exception("model watcher: this look failed; trying again in %s s", interval)
