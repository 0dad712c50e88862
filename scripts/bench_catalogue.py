"""What an item write costs each serving process as the catalogue created through the API
grows: Redis's read of the whole catalogue and the first view (a process's start), then, for
each kind of write (an item re-described, created, hidden), the read of what changed since the
process's last read and the view rebuilt from the last one — on the bundle in service.

    python scripts/bench_catalogue.py --models-dir M [--sizes 2000 10000 30000 100000]

Every item write bumps the catalogue's generation, and every process then reads what changed
and rebuilds its view before its next answer (docs/SERVICE.md, "New items"); this is what sets
CDDAE_MAX_API_ITEMS. The items are written straight into a Redis database of the benchmark's
own (default db 5: flushed before and after).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
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


async def measure(model: Model, url: str, sizes: list[int], repeats: int) -> None:
    sync = redis.Redis.from_url(url)
    print(
        "| API-created items | whole read | first view | a write, then per process: "
        "read of what changed + view (re-described / created / hidden), medians |"
    )
    print("| --- | --- | --- | --- |")
    try:
        for count in sizes:
            fill(sync, count)
            lane = Lane.from_url(url, 30.0)
            store = RedisStore(redis_client(url, 30.0), catalogue_lane=lane)
            await store.set_item("api-0", {"title": "Item 0"}, True, count + 10**6)  # an epoch
            started = time.perf_counter()
            catalogue = await store.catalogue()
            whole = time.perf_counter() - started
            started = time.perf_counter()
            view = CatalogueView(model, catalogue, None)
            first = time.perf_counter() - started
            costs: dict[str, list[tuple[float, float]]] = {"re": [], "new": [], "hide": []}
            for k in range(repeats):
                for kind, costs_of in costs.items():
                    if kind == "re":
                        profile = {"title": f"changed {k}", "genres": ["Drama"], "year": 1999}
                        await store.set_item(f"api-{k}", profile, True, count + 10**6)
                    elif kind == "new":
                        await store.set_item(f"fresh-{k}", {"title": "new"}, True, count + 10**6)
                    else:
                        await store.set_availability(f"api-{k + 1}", False)
                    started = time.perf_counter()
                    catalogue = await store.catalogue(catalogue)
                    read = time.perf_counter() - started
                    started = time.perf_counter()
                    view = CatalogueView(model, catalogue, view)
                    costs_of.append((read, time.perf_counter() - started))
            cells = " / ".join(
                f"{statistics.median(r for r, _ in c) * 1e3:.1f} + "
                f"{statistics.median(v for _, v in c) * 1e3:.1f} ms"
                for c in costs.values()
            )
            print(f"| {count:,} | {whole * 1e3:.0f} ms | {first * 1e3:.0f} ms | {cells} |",
                  flush=True)  # fmt: skip
            store.close()
    finally:
        sync.flushdb()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models-dir", type=Path, required=True)
    parser.add_argument("--sizes", type=int, nargs="+", default=[2_000, 10_000, 30_000, 100_000])
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379/5")
    parser.add_argument("--repeats", type=int, default=5, help="writes of each kind")
    args = parser.parse_args()
    model = Model.load(args.models_dir / current_version(args.models_dir))
    asyncio.run(measure(model, args.redis_url, args.sizes, args.repeats))


if __name__ == "__main__":
    main()
