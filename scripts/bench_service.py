"""Service latency from a load generator in its own process, against `cddae serve`.

    python scripts/bench_service.py --models-dir models [--redis-url redis://127.0.0.1:6379/8]

Starts the service (uvicorn, one worker) on a free port, then measures from this process, one
request at a time over a kept-alive connection: an uncached GET (each user's first request
after the cache is flushed), a cached GET (the same request again), POST /score for one ad-hoc
user and for a batch of 64 (distinct bodies, so nothing is served from the cache), and the same
again with several concurrent clients to show throughput. Prints medians and p99s.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import numpy as np


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _start(
    models: Path, redis_url: str | None, env_extra: dict[str, str]
) -> tuple[subprocess.Popen, str]:
    port = _free_port()
    env = {
        **os.environ,
        "CDDAE_REDIS_URL": redis_url or "",
        "CDDAE_MAX_BATCH": "64",
        "CDDAE_INTERACTIONS_LOG": "/tmp/cddae-bench-interactions.jsonl",
        **env_extra,
    }
    process = subprocess.Popen(
        [sys.executable, "-m", "training.cli", "serve", "--models-dir", str(models),
         "--port", str(port), "--log-level", "warning"], env=env,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    for _ in range(300):
        try:
            if httpx.get(f"{url}/readyz", timeout=1).status_code == 200:
                return process, url
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise RuntimeError("service did not start")


def _stats(label: str, seconds: list[float]) -> None:
    ms = np.array(seconds) * 1e3
    print(f"  {label:<34} n={len(ms):5d}  median {np.median(ms):7.2f} ms  p99 "
          f"{np.percentile(ms, 99):7.2f} ms")  # fmt: skip


def _timed(client: httpx.Client, method: str, path: str, **kw) -> float:
    start = time.perf_counter()
    response = client.request(method, path, **kw)
    elapsed = time.perf_counter() - start
    response.raise_for_status()
    return elapsed


def sequential(url: str, users: list[str], items: list[str], rounds: int) -> None:
    rng = random.Random(0)
    with httpx.Client(base_url=url, timeout=30) as client:
        for _ in range(20):  # warm-up
            client.get(f"/users/{users[0]}/recommendations")
        uncached = [_timed(client, "GET", f"/users/{u}/recommendations?n=10") for u in users]
        cached = [_timed(client, "GET", f"/users/{u}/recommendations?n=10") for u in users]
        one = [
            _timed(client, "POST", "/score", json={"items": rng.sample(items, 20), "n": 10})
            for _ in range(rounds)
        ]
        batch = [
            _timed(client, "POST", "/score",
                   json={"users": [{"items": rng.sample(items, 20)} for _ in range(64)]})
            for _ in range(max(rounds // 10, 20))
        ]  # fmt: skip
    _stats("GET uncached", uncached)
    _stats("GET cached", cached)
    _stats("POST /score, 1 user", one)
    _stats("POST /score, batch of 64", batch)


async def concurrent(url: str, items: list[str], clients: int, per_client: int) -> None:
    rng = random.Random(1)
    latencies: list[float] = []

    async def worker(client: httpx.AsyncClient) -> None:
        for _ in range(per_client):
            body = {"items": rng.sample(items, 20), "n": 10}
            start = time.perf_counter()
            response = await client.post("/score", json=body)
            latencies.append(time.perf_counter() - start)
            response.raise_for_status()

    async with httpx.AsyncClient(base_url=url, timeout=30) as client:
        started = time.perf_counter()
        await asyncio.gather(*(worker(client) for _ in range(clients)))
        wall = time.perf_counter() - started
    _stats(f"POST /score, {clients} concurrent clients", latencies)
    print(f"  {'':<34} throughput {len(latencies) / wall:7.1f} requests/s")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--models-dir", type=Path, default=Path("models"))
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379/8")
    parser.add_argument("--rounds", type=int, default=500)
    parser.add_argument("--micro-batch-ms", default="0", help="comma list: settings to compare")
    args = parser.parse_args()
    if args.redis_url:
        import redis

        redis.Redis.from_url(args.redis_url).flushdb()
    for micro in args.micro_batch_ms.split(","):
        process, url = _start(args.models_dir, args.redis_url, {"CDDAE_MICRO_BATCH_MS": micro})
        try:
            manifest = httpx.get(f"{url}/model").json()
            from service.bundle import load_bundle

            bundle = load_bundle(args.models_dir / manifest["model_version"])
            print(f"model {manifest['model_version']} ({manifest['model']['kind']}), cache "
                  f"{'redis' if args.redis_url else 'memory'}, micro-batch {micro} ms")  # fmt: skip
            if args.redis_url:
                import redis

                redis.Redis.from_url(args.redis_url).flushdb()
            sequential(url, bundle.user_ids, bundle.item_ids, args.rounds)
            asyncio.run(concurrent(url, bundle.item_ids, clients=8, per_client=args.rounds // 4))
        finally:
            process.terminate()
            process.wait(timeout=10)


if __name__ == "__main__":
    main()
