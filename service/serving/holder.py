"""Holds the model in service and swaps in newly promoted versions without a restart.

Requests take a reference to the current `Model` once and use it to the end, so a swap never
fails a request in flight. A version that fails its checks is refused and remembered: it is not
retried while the pointer stays on it, and is tried again once the pointer has moved away and
back. The old model keeps serving meanwhile.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from service.bundle import BundleError, current_version
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
        self._lock = threading.Lock()
        # Model loads have a thread of their own: a slow load never holds up inference or
        # the store's writes (which have their own executors).
        self._loader = ThreadPoolExecutor(max_workers=1, thread_name_prefix="model-load")

    async def refresh_async(self, force: bool = False) -> str:
        return await asyncio.get_running_loop().run_in_executor(self._loader, self.refresh, force)

    def refresh(self, force: bool = False) -> str:
        """Load the version CURRENT names if it is new; return what happened, for logs/admin."""
        with self._lock:
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
