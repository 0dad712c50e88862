"""Micro-batching: queries that arrive within a short window share one onnxruntime call.

Off by default (`CDDAE_MICRO_BATCH_MS=0`): a single user's call (about 0.1 ms) then runs on
the event loop, larger ones in a worker thread. docs/PERFORMANCE.md has the measurements.
"""

from __future__ import annotations

import asyncio
from concurrent.futures import Executor

import numpy as np

from service.serving.onnx_model import Model, Query


class MicroBatcher:
    def __init__(
        self, window_seconds: float, max_batch: int = 64, executor: Executor | None = None
    ):
        self.window, self.max_batch, self.executor = window_seconds, max_batch, executor
        self._pending: list[tuple[Model, Query, asyncio.Future]] = []
        self._timer: asyncio.TimerHandle | None = None
        self._running: set[asyncio.Task] = set()

    async def scores(self, model: Model, queries: list[Query]) -> np.ndarray:
        loop = asyncio.get_running_loop()
        futures = []
        for query in queries:
            future = loop.create_future()
            self._pending.append((model, query, future))
            futures.append(future)
        if len(self._pending) >= self.max_batch:
            self._flush()
        elif self._timer is None:
            self._timer = loop.call_later(self.window, self._flush)
        return np.stack(await asyncio.gather(*futures))

    def _flush(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        pending, self._pending = self._pending, []
        groups: dict[int, list[tuple[Model, Query, asyncio.Future]]] = {}
        for entry in pending:  # a model swap mid-window: each model scores its own queries
            groups.setdefault(id(entry[0]), []).append(entry)
        for group in groups.values():
            task = asyncio.ensure_future(self._run(group, self.executor))
            self._running.add(task)
            task.add_done_callback(self._running.discard)

    @staticmethod
    async def _run(
        group: list[tuple[Model, Query, asyncio.Future]], executor: Executor | None
    ) -> None:
        model = group[0][0]
        try:
            queries = [query for _, query, _ in group]
            loop = asyncio.get_running_loop()
            scores = await loop.run_in_executor(executor, model.scores, queries)
        except Exception as error:
            for _, _, future in group:
                if not future.done():
                    future.set_exception(error)
            return
        for row, (_, _, future) in enumerate(group):
            if not future.done():
                future.set_result(scores[row])
