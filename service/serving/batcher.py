"""Micro-batching: queries that wait at the same moment share one onnxruntime call.

By default (`CDDAE_MICRO_BATCH_MS=0`) nothing waits on a timer: the queries that reach scoring
in the same turn of the event loop — under load, the answers whose store reads came back
together — go in one call, made on the loop itself when small (one user's call is about
0.07 ms; a thread hop would cost more). A query alone is scored alone, at once. A window
(`CDDAE_MICRO_BATCH_MS` > 0) holds queries that long to gather more, run in a worker thread.
docs/PERFORMANCE.md has the measurements.
"""

from __future__ import annotations

import asyncio
from concurrent.futures import Executor
from typing import Protocol

import numpy as np

from service.serving.onnx_model import Query

INLINE_ITEMS = 2_000  # a batch of at most this many history items …
INLINE_QUERIES = 8  # … and this many users runs on the event loop (well under 1 ms)


class Scorer(Protocol):
    def scores(self, queries: list[Query]) -> np.ndarray: ...


Entry = tuple[Scorer, Query, "asyncio.Future[np.ndarray]"]


class MicroBatcher:
    def __init__(
        self, window_seconds: float = 0.0, max_batch: int = 64, executor: Executor | None = None
    ):
        self.window, self.max_batch, self.executor = window_seconds, max_batch, executor
        self._pending: list[Entry] = []
        self._timer: asyncio.Handle | None = None
        self._running: set[asyncio.Task] = set()

    async def scores(self, model: Scorer, queries: list[Query]) -> np.ndarray:
        loop = asyncio.get_running_loop()
        futures = []
        for query in queries:
            future = loop.create_future()
            self._pending.append((model, query, future))
            futures.append(future)
        if len(self._pending) >= self.max_batch:
            self._flush()
        elif self._timer is None:
            self._timer = (
                loop.call_later(self.window, self._flush)
                if self.window
                else loop.call_soon(self._flush)  # after what is ready in this turn
            )
        if len(futures) == 1:
            return (await futures[0])[np.newaxis]
        return np.stack(await asyncio.gather(*futures))

    def _flush(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        pending, self._pending = self._pending, []
        groups: dict[int, list[Entry]] = {}
        for entry in pending:  # a model swap mid-window: each model scores its own queries
            groups.setdefault(id(entry[0]), []).append(entry)
        for group in groups.values():
            items = sum(len(query.weights) for _, query, _ in group)
            small = items <= INLINE_ITEMS and len(group) <= INLINE_QUERIES
            if not self.window and small:
                self._score(group)
                continue
            task = asyncio.ensure_future(self._run(group, self.executor))
            self._running.add(task)
            task.add_done_callback(self._running.discard)

    @staticmethod
    def _score(group: list[Entry]) -> None:
        """Scores the group here, on the loop, each future given its row (or the error)."""
        try:
            scores = group[0][0].scores([query for _, query, _ in group])
        except Exception as error:
            MicroBatcher._fail(group, error)
            return
        MicroBatcher._deliver(group, scores)

    @staticmethod
    async def _run(group: list[Entry], executor: Executor | None) -> None:
        model = group[0][0]
        try:
            queries = [query for _, query, _ in group]
            loop = asyncio.get_running_loop()
            scores = await loop.run_in_executor(executor, model.scores, queries)
        except Exception as error:
            MicroBatcher._fail(group, error)
            return
        MicroBatcher._deliver(group, scores)

    @staticmethod
    def _fail(group: list[Entry], error: Exception) -> None:
        for _, _, future in group:
            if not future.done():
                future.set_exception(error)

    @staticmethod
    def _deliver(group: list[Entry], scores: np.ndarray) -> None:
        for row, (_, _, future) in enumerate(group):
            if not future.done():  # a caller that went away (cancelled) wants nothing
                future.set_result(scores[row])
