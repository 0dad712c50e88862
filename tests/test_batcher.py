"""Micro-batching: concurrent queries share one call; each gets its own row; errors reach all."""

import asyncio

import numpy as np
import pytest

from service.serving.batcher import MicroBatcher
from service.serving.onnx_model import Query


class FakeModel:
    def __init__(self, fail: bool = False):
        self.calls: list[int] = []
        self.fail = fail

    def scores(self, queries):
        self.calls.append(len(queries))
        if self.fail:
            raise RuntimeError("session broke")
        return np.array([[q.user_index, q.user_index * 10] for q in queries], dtype=np.float32)


def _query(user: int) -> Query:
    return Query({}, np.zeros(0, np.float32), user)


def test_concurrent_queries_share_one_call() -> None:
    async def scenario():
        model, batcher = FakeModel(), MicroBatcher(0.01)
        results = await asyncio.gather(*(batcher.scores(model, [_query(u)]) for u in range(5)))
        return model, results

    model, results = asyncio.run(scenario())
    assert model.calls == [5]
    assert [r.tolist() for r in results] == [[[u, u * 10]] for u in range(5)]


def test_a_full_batch_goes_at_once_and_models_are_not_mixed() -> None:
    async def scenario():
        old, new, batcher = FakeModel(), FakeModel(), MicroBatcher(10.0, max_batch=4)
        a = batcher.scores(old, [_query(1), _query(2)])
        b = batcher.scores(new, [_query(3), _query(4)])  # reaches max_batch: no 10 s wait
        return old, new, await asyncio.wait_for(asyncio.gather(a, b), timeout=2)

    old, new, (a, b) = asyncio.run(scenario())
    assert old.calls == [2] and new.calls == [2]
    assert a[:, 0].tolist() == [1, 2] and b[:, 0].tolist() == [3, 4]


def test_errors_reach_every_waiter() -> None:
    async def scenario():
        batcher, model = MicroBatcher(0.001), FakeModel(fail=True)
        return await asyncio.gather(
            *(batcher.scores(model, [_query(u)]) for u in range(3)), return_exceptions=True
        )

    results = asyncio.run(scenario())
    assert all(isinstance(r, RuntimeError) for r in results)
    with pytest.raises(RuntimeError, match="session broke"):
        raise results[0]
