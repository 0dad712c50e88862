"""A soak on loopback: mixed reads and writes, hostile ids and long histories, against the API on
its own Redis, for a fixed time; the memory of both is sampled and must stay flat.

    python scripts/soak.py --minutes 20     # figures in docs/RELIABILITY.md

Starts its own `redis-server` (a free port, stopped by PID) and `cddae serve` on a small
synthetic model, then runs client threads at a bounded rate:
- readers: GET a random user's list (known users, and users created through the API);
- writers: a few items for a random user, each write with its own Idempotency-Key, sometimes
  retried (must replay) or reused with another body (must be a 409);
- heavy writers: 1,000 new items at a time to a handful of users (histories far past the cap);
- as the nightly job would after each promotion, the stream is trimmed (here every 30 s, to
  the last minute) and idempotency keys expire (CDDAE_IDEMPOTENCY_TTL_SECONDS=120 here, a day
  by default): Redis's memory is bounded by them, not by the soak's length;
- hostile: ids with control characters, NULs, 129 characters, lone surrogates (must be 422),
  and one-byte connections left silent (the request deadline closes them).
Every 30 s it prints the RSS of the API and of Redis and the answers so far; at the end the
table, and whether memory stayed flat after the warm-up (first quarter): the last sample within
10% (plus 10 MiB) of the first sample after warm-up. Exits 1 on a 5xx, an unexpected status or
growing memory.
"""

from __future__ import annotations

import argparse
import contextlib
import random
import socket
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

import httpx
import redis

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from scripts.fault_suite import Api, RedisServer, build_models
from service.state.store import STREAM

HOSTILE_IDS = ["196%00", "196%0A", "a%1Fb", "x" * 129, "%E2%80%A8"]


class Soak:
    def __init__(self, url: str, port: int, seconds: float):
        self.url, self.port, self.deadline = url, port, time.monotonic() + seconds
        self.counts: Counter = Counter()
        self.unexpected: Counter = Counter()
        self.lock = threading.Lock()

    def running(self) -> bool:
        return time.monotonic() < self.deadline

    def count(self, what: str, status: int, expected: tuple[int, ...]) -> None:
        with self.lock:
            self.counts[f"{what} {status}"] += 1
            if status not in expected:
                self.unexpected[f"{what} {status}"] += 1

    def reader(self, seed: int) -> None:
        rng = random.Random(seed)
        with httpx.Client(base_url=self.url, timeout=10) as client:
            while self.running():
                user = rng.choice([str(rng.randint(1, 120)), f"api-{rng.randint(0, 50)}"])
                answer = client.get(f"/users/{user}/recommendations", params={"n": 10})
                # 503: Redis did not answer within CDDAE_REDIS_TIMEOUT_SECONDS (for a user the
                # bundle knows, a degraded list instead); counted, a client retries.
                self.count("read", answer.status_code, (200, 404, 503))
                time.sleep(0.01)

    def writer(self, seed: int) -> None:
        rng = random.Random(seed)
        with httpx.Client(base_url=self.url, timeout=10) as client:
            k = 0
            while self.running():
                k += 1
                user = f"api-{rng.randint(0, 50)}"
                put = client.put(f"/users/{user}/profile", json={"gender": "F"},
                                 headers={"Idempotency-Key": f"p{seed}-{k}"})  # fmt: skip
                self.count("profile", put.status_code, (200, 201, 503))
                body = {"items": [str(rng.randint(1, 80)) for _ in range(3)]}
                key = {"Idempotency-Key": f"w{seed}-{k}"}
                first = client.post(f"/users/{user}/interactions", json=body, headers=key)
                self.count("write", first.status_code, (201, 503))
                if k % 5 == 0 and first.status_code == 201:  # a 503: not confirmed, unknown
                    again = client.post(f"/users/{user}/interactions", json=body, headers=key)
                    ok = again.status_code == 201 and again.json()["replayed"]
                    self.count("retry", again.status_code if ok else 599, (201,))
                    other = client.post(f"/users/{user}/interactions", json={"items": ["1"]},
                                        headers=key)  # fmt: skip
                    self.count("reused key", other.status_code, (409, 503))
                time.sleep(0.02)

    def heavy_writer(self, seed: int) -> None:
        rng = random.Random(seed)
        with httpx.Client(base_url=self.url, timeout=30) as client:
            k = 0
            while self.running():
                k += 1
                user = f"api-{rng.randint(0, 4)}"
                items = [f"long-{seed}-{k}-{j}" for j in range(1000)]
                answer = client.post(f"/users/{user}/interactions", json={"items": items})
                self.count("1,000-item write", answer.status_code, (201, 404, 503))
                time.sleep(0.5)

    def hostile(self, seed: int) -> None:
        rng = random.Random(seed)
        with httpx.Client(base_url=self.url, timeout=10) as client:
            while self.running():
                bad = rng.choice(HOSTILE_IDS)
                answer = client.get(f"/users/{bad}/recommendations")
                self.count("hostile id", answer.status_code, (422,))
                item = client.post("/users/3/interactions", json={"items": ["1\u0000"]})
                self.count("hostile item", item.status_code, (422,))
                with (
                    contextlib.suppress(OSError),
                    socket.create_connection(("127.0.0.1", self.port), timeout=5) as sock,
                ):
                    sock.sendall(b"G")  # and silence: closed by the request deadline
                    sock.settimeout(10)
                    with contextlib.suppress(ConnectionResetError):
                        closed = sock.recv(1) == b""
                        self.count("silent socket", 200 if closed else 599, (200,))
                time.sleep(0.2)


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=20)
    parser.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "cddae-soak")
    args = parser.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    models = build_models(args.work)
    work = Path(tempfile.mkdtemp(prefix="run-", dir=args.work))
    server = RedisServer(work / "redis").start()
    settings = {"CDDAE_MAX_BODY_BYTES": "200000", "CDDAE_REQUEST_TIMEOUT_SECONDS": "2",
                "CDDAE_IDEMPOTENCY_TTL_SECONDS": "120"}  # fmt: skip
    api = Api(models, work, server.url, **settings).start()
    seconds = args.minutes * 60
    soak = Soak(api.url, api.port, seconds)
    jobs = [soak.reader] * 3 + [soak.writer] * 2 + [soak.heavy_writer, soak.hostile]
    threads = [threading.Thread(target=job, args=(n,)) for n, job in enumerate(jobs)]
    samples: list[tuple[float, float, float]] = []
    log, trimmed = redis.Redis.from_url(server.url), 0
    started = time.monotonic()
    try:
        for thread in threads:
            thread.start()
        assert api.process is not None and server.process is not None
        while any(t.is_alive() for t in threads):
            elapsed = time.monotonic() - started
            samples.append((elapsed, rss_mib(api.process.pid), rss_mib(server.process.pid)))
            total = sum(soak.counts.values())
            print(f"{elapsed / 60:5.1f} min  API {samples[-1][1]:6.1f} MiB  Redis "
                  f"{samples[-1][2]:6.1f} MiB  {total} answers, {sum(soak.unexpected.values())} "
                  "unexpected", flush=True)  # fmt: skip
            for _ in range(30):
                if not any(t.is_alive() for t in threads):
                    break
                time.sleep(1)
            # What the nightly job does after a promotion: the stream trimmed to its mark.
            # Exact, as the job trims: an approximate trim removes at most 10,000 entries a call.
            minid = f"{int(time.time() * 1000) - 60_000}-0"
            trimmed += log.xtrim(STREAM, minid=minid, approximate=False)
        samples.append((time.monotonic() - started, rss_mib(api.process.pid),
                        rss_mib(server.process.pid)))  # fmt: skip
    finally:
        for thread in threads:
            thread.join()
        api.stop()
        server.signal(9)
    warm = next(s for s in samples if s[0] >= seconds / 4)
    last = samples[-1]
    flat = all(last[i] <= warm[i] * 1.1 + 10 for i in (1, 2))
    print("\n| answer | count |\n|---|---|")
    for what, n in sorted(soak.counts.items()):
        print(f"| {what} | {n} |")
    verdict = "flat" if flat else "GROWING"
    print(f"\nRSS after warm-up ({warm[0] / 60:.0f} min) → end ({last[0] / 60:.0f} min): "
          f"API {warm[1]:.1f} → {last[1]:.1f} MiB, Redis {warm[2]:.1f} → {last[2]:.1f} MiB "
          f"({verdict}); stream entries trimmed as the nightly job would: {trimmed}; "
          f"unexpected answers: {dict(soak.unexpected)}")  # fmt: skip
    return 0 if flat and not soak.unexpected else 1


if __name__ == "__main__":
    sys.exit(main())
