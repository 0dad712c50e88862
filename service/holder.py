"""Holds the model in service and swaps in newly promoted versions without a restart.

Requests take a reference to the current `Model` once and use it to the end, so a swap never
fails a request in flight. A version that fails its checks is refused, remembered (it is not
retried until the pointer changes again), and the old model keeps serving.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from pathlib import Path

from service.bundle import current_version
from service.recommender import Model

log = logging.getLogger("cddae.service")


class ModelHolder:
    def __init__(self, models_dir: Path, threads: int = 1):
        self.models_dir = models_dir
        self.threads = threads
        self.model: Model | None = None
        self.refused: dict[str, str] = {}
        self._lock = threading.Lock()

    def refresh(self, force: bool = False) -> str:
        """Load the version CURRENT names if it is new; return what happened, for logs/admin."""
        with self._lock:
            version = current_version(self.models_dir)
            if version is None:
                return "no current version"
            if self.model is not None and self.model.version == version and not force:
                return f"{version} already in service"
            if version in self.refused and not force:
                return f"{version} refused: {self.refused[version]}"
            try:
                model = Model.load(self.models_dir / version, self.threads)
            except Exception as error:  # any failure to load keeps the old model serving
                self.refused[version] = str(error)
                log.error("refused model %s: %s", version, error)
                return f"{version} refused: {error}"
            self.model = model
            log.info("serving model %s", version)
            return f"{version} in service"

    async def watch(self, interval: float) -> None:
        while True:
            await asyncio.sleep(interval)
            await asyncio.to_thread(self.refresh)
