"""What an item write costs each serving process as the catalogue created through the API
grows: Redis's read of the whole catalogue and the view rebuilt from it (first, and after one
profile changed, the common case), on the bundle in service.

    python scripts/bench_catalogue.py --models-dir M [--sizes 2000 10000 30000 100000]

Every item write bumps the catalogue's generation, and every process then reads the catalogue
and rebuilds its view before its next answer (docs/SERVICE.md, "New items"); this is what sets
CDDAE_MAX_API_ITEMS. The items are written straight into a Redis database of the benchmark's
own (default db 5: flushed before and after).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from pathlib import Path

import redis

from service.bundle import current_version
from service.serving.catalogue import CatalogueView
from service.serving.onnx_model import Model
from service.state.cache import redis_client
from service.state.lane import Lane
from service.state.store import CATALOGUE_GEN, ITEM_PROFILES, PENDING_ITEMS, RedisStore


def fill(sync: redis.Redis, count: int) -> None:
    sync.flushdb()
    pipe = sync.pipeline(transaction=False)
    for k in range(count):
        profile = {"title": f"Item {k}", "genres": ["Comedy"], "year": 2000 + k % 20}
        pipe.hset(ITEM_PROFILES, f"api-{k}", json.dumps(profile))
        pipe.sadd(PENDING_ITEMS, f"api-{k}")
        if k % 10_000 == 9_999:
            pipe.execute()
    pipe.set(CATALOGUE_GEN, count)
    pipe.execute()


async def measure(model: Model, url: str, sizes: list[int]) -> None:
    sync = redis.Redis.from_url(url)
    print("| API-created items | catalogue read (Redis) | first view | view after one change |")
    print("| --- | --- | --- | --- |")
    try:
        for count in sizes:
            fill(sync, count)
            lane = Lane.from_url(url, 30.0)
            store = RedisStore(redis_client(url, 30.0), catalogue_lane=lane)
            started = time.perf_counter()
            catalogue = await store.catalogue()
            read = time.perf_counter() - started
            started = time.perf_counter()
            view = CatalogueView(model, catalogue, None)
            first = time.perf_counter() - started
            catalogue.profiles["api-0"] = {"title": "changed", "genres": ["Drama"], "year": 1999}
            started = time.perf_counter()
            CatalogueView(model, catalogue, view)
            again = time.perf_counter() - started
            print(f"| {count:,} | {read * 1e3:.0f} ms | {first * 1e3:.0f} ms | "
                  f"{again * 1e3:.0f} ms |", flush=True)  # fmt: skip
            store.close()
    finally:
        sync.flushdb()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models-dir", type=Path, required=True)
    parser.add_argument("--sizes", type=int, nargs="+", default=[2_000, 10_000, 30_000, 100_000])
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379/5")
    args = parser.parse_args()
    model = Model.load(args.models_dir / current_version(args.models_dir))
    asyncio.run(measure(model, args.redis_url, args.sizes))


if __name__ == "__main__":
    main()
