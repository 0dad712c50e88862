"""The app's own CPU per request, in-process: no server, no client, no sockets but the store's.

    python scripts/bench_app.py --models-dir /tmp/bench-models [--kind get|cached|score]
        [--concurrency 16] [--requests 6000] [--repeats 5] [--redis-url redis://127.0.0.1:6379/8]
    CDDAE_REDIS_URL= python scripts/bench_app.py ...      # the embedded default

The ASGI app from `create_app` is called directly with each request's scope, `--concurrency`
at a time, its lifespan run as under uvicorn; the process's CPU time per request is printed
per repeat. What the HTTP benchmark (scripts/bench_http.py) cannot tell apart on a noisy
2-core machine — a change of 10–40 µs per request — shows here in an A/B of two checkouts:
take the lowest of the repeats of each.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import time
from pathlib import Path

import redis
import uvloop

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_http import Workload
from loadgen import Request

from service.api.app import create_app
from service.config import Settings


def scope_of(request: Request) -> dict:
    path, _, query = request.path.partition("?")
    headers = [(b"host", b"bench")]
    if request.body:
        headers += [(b"content-type", b"application/json"),
                    (b"content-length", str(len(request.body)).encode())]  # fmt: skip
    return {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1",
            "method": request.method, "scheme": "http", "path": path, "raw_path": path.encode(),
            "query_string": query.encode(), "root_path": "", "headers": headers,
            "client": ("127.0.0.1", 1), "server": ("127.0.0.1", 80), "state": {}}  # fmt: skip


async def call(app, request: Request, statuses: dict[int, int]) -> None:
    sent = False

    async def receive() -> dict:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": request.body, "more_body": False}
        await asyncio.sleep(3600)  # the client never goes away
        return {"type": "http.disconnect"}

    async def send(message: dict) -> None:
        if message["type"] == "http.response.start":
            statuses[message["status"]] = statuses.get(message["status"], 0) + 1

    await app(scope_of(request), receive, send)


async def measure(args: argparse.Namespace) -> None:
    work = Workload(args.models_dir)
    make = {"get": work.uncached_get, "cached": work.hot_get, "score": work.score}[args.kind]
    app = create_app(Settings(models_dir=args.models_dir))
    messages: asyncio.Queue[dict] = asyncio.Queue()
    started = asyncio.Event()

    async def lifespan_send(message: dict) -> None:
        if message["type"] == "lifespan.startup.complete":
            started.set()

    await messages.put({"type": "lifespan.startup"})
    lifespan = asyncio.ensure_future(app({"type": "lifespan", "asgi": {"version": "3.0"},
                                          "state": {}}, messages.get, lifespan_send))  # fmt: skip
    await started.wait()
    statuses: dict[int, int] = {}
    for i in range(300):  # warm-up
        await call(app, make(i), statuses)
    n, c = args.requests, args.concurrency
    for repeat in range(args.repeats):
        cpu = time.process_time()
        for start in range(0, n, c):
            await asyncio.gather(*(call(app, make(i), statuses) for i in range(start, start + c)))
        per_request = 1e6 * (time.process_time() - cpu) / n
        print(f"{args.kind}, {c} at a time, repeat {repeat + 1}: {per_request:.1f} µs of CPU "
              "per request", flush=True)  # fmt: skip
    print(f"statuses: {statuses}")
    await messages.put({"type": "lifespan.shutdown"})
    await lifespan


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models-dir", type=Path, required=True)
    parser.add_argument("--kind", choices=("get", "cached", "score"), default="get")
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--requests", type=int, default=6000)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379/8")
    args = parser.parse_args()
    os.environ.setdefault("CDDAE_REDIS_URL", args.redis_url)  # empty: the embedded default
    if os.environ["CDDAE_REDIS_URL"]:
        redis.Redis.from_url(os.environ["CDDAE_REDIS_URL"]).flushdb()
    else:
        os.environ.setdefault("CDDAE_INTERACTIONS_LOG", f"/tmp/cddae-bench-app-{os.getpid()}.jsonl")
    uvloop.run(measure(args))


if __name__ == "__main__":
    main()
