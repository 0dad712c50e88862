"""Faults under a bounded load, against real processes on loopback: what fails, what is lost.

    python scripts/fault_suite.py            # or: make faults  (about two minutes)

Each scenario starts its own `cddae serve` (and, where it needs one, its own `redis-server` on a
free port, stopped by PID — never the machine's shared Redis), drives reads and writes from
client threads for a few seconds, injects the fault, and counts: requests, failed requests
(5xx other than a write's 503, or no answer), acknowledged writes, acknowledged writes found
afterwards, and duplicates. Writes carry an Idempotency-Key and a write answered 503 is
retried with the same key until it is acknowledged, as a careful client would.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

import httpx
import redis

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.synthetic import write_grouplens

CDDAE = str(Path(sys.executable).parent / "cddae")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def build_models(work: Path) -> Path:
    from service.bundle import promote
    from training.data.prepared import ProtocolConfig, prepare
    from training.jobs.export import export_checkpoint
    from training.jobs.pipeline import train_and_evaluate

    models = work / "models"
    if (models / "CURRENT").exists():
        return models
    data = write_grouplens(work / "data")
    prepared = prepare(data, ProtocolConfig(seed=0))
    _, checkpoint = train_and_evaluate(
        "cddae", prepared, model={"hidden": [16]}, train={"epochs": 3}, progress=False
    )
    version, _ = export_checkpoint(checkpoint, models)
    promote(models, version)
    return models


class RedisServer:
    def __init__(self, folder: Path):
        self.folder, self.port = folder, free_port()
        self.process: subprocess.Popen | None = None

    def start(self) -> RedisServer:
        self.folder.mkdir(parents=True, exist_ok=True)
        self.process = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--dir",
             str(self.folder), "--appendonly", "yes", "--appendfsync", "always", "--save", ""],
            stdout=subprocess.DEVNULL,
        )  # fmt: skip
        client = redis.Redis(port=self.port)
        for _ in range(100):
            with contextlib.suppress(redis.RedisError):
                if client.ping():
                    return self
            time.sleep(0.05)
        raise RuntimeError("redis-server did not start")

    def signal(self, sig: int) -> None:
        assert self.process is not None
        os.kill(self.process.pid, sig)
        if sig == signal.SIGKILL:
            self.process.wait()

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"


class Api:
    def __init__(self, models: Path, work: Path, redis_url: str | None):
        self.models, self.work, self.redis_url = models, work, redis_url
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.process: subprocess.Popen | None = None

    def start(self) -> Api:
        env = {**os.environ, "CDDAE_REDIS_URL": self.redis_url or "",
               "CDDAE_INTERACTIONS_LOG": str(self.work / "interactions.jsonl"),
               "CDDAE_REDIS_RETRY_SECONDS": "0.3"}  # fmt: skip
        self.process = subprocess.Popen(
            [CDDAE, "serve", "--models-dir", str(self.models), "--port", str(self.port),
             "--log-level", "error"], env=env, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        for _ in range(300):
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{self.url}/healthz", timeout=1).status_code == 200:
                    return self
            time.sleep(0.05)
        raise RuntimeError("the API did not start")

    def kill(self) -> None:
        assert self.process is not None
        self.process.kill()
        self.process.wait()

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(timeout=10)


class Load:
    """Reader and writer threads; each write is a new (user, item) pair with its own key."""

    def __init__(self, url_of, seconds: float, writers: int = 2, readers: int = 2):
        self.url_of, self.seconds = url_of, seconds
        self.counts: Counter = Counter()
        self.acknowledged: list[tuple[str, str]] = []
        self.threads = [threading.Thread(target=self._write, args=(w,)) for w in range(writers)]
        self.threads += [threading.Thread(target=self._read) for _ in range(readers)]
        self.lock = threading.Lock()

    def run(self) -> Load:
        for thread in self.threads:
            thread.start()
        return self

    def join(self) -> None:
        for thread in self.threads:
            thread.join()

    def _count(self, what: str) -> None:
        with self.lock:
            self.counts[what] += 1

    def _read(self) -> None:
        deadline = time.monotonic() + self.seconds
        k = 0
        while time.monotonic() < deadline:
            k += 1
            try:
                answer = httpx.get(f"{self.url_of()}/users/{k % 100 + 1}/recommendations",
                                   timeout=3)  # fmt: skip
                self._count("read ok" if answer.status_code == 200 else "read failed")
            except httpx.HTTPError:
                self._count("read failed")
                time.sleep(0.05)

    def _write(self, writer: int) -> None:
        deadline = time.monotonic() + self.seconds
        k = 0
        while time.monotonic() < deadline:
            k += 1
            user, item = str(writer * 50 + k % 50 + 1), str(k % 80 + 1)
            key = f"w{writer}-{k}"
            for _ in range(200):  # retry with the same key until acknowledged
                try:
                    answer = httpx.post(
                        f"{self.url_of()}/users/{user}/interactions",
                        json={"items": [{"item": item, "timestamp": float(k)}]},
                        headers={"Idempotency-Key": key},
                        timeout=3,
                    )
                except httpx.HTTPError:
                    self._count("write no answer")
                    time.sleep(0.05)
                    continue
                if answer.status_code == 201:
                    self._count("write acknowledged")
                    with self.lock:
                        self.acknowledged.append((user, key))
                    break
                self._count(f"write {answer.status_code}")
                time.sleep(0.05)


def events_in_file(path: Path) -> Counter:
    found: Counter = Counter()
    if path.exists():
        for line in path.read_text().splitlines():
            event = json.loads(line)
            found[(event["user"], event.get("key"))] += 1
    return found


def events_in_stream(url: str) -> Counter:
    found: Counter = Counter()
    for _, fields in redis.Redis.from_url(url).xrange("cddae:events"):
        found[(fields[b"user"].decode(), fields[b"timestamp"].decode())] += 1
    return found


def verdict(name: str, load: Load, found: Counter, keyed: bool) -> dict:
    acknowledged = load.acknowledged
    if keyed:
        present = [found[(user, key)] for user, key in acknowledged]
    else:  # the stream has no key: a write is (user, timestamp k), unique per writer
        present = [found[(user, f"{float(key.split('-')[1])}")] for user, key in acknowledged]
    counts = load.counts
    return {
        "scenario": name,
        "requests": sum(counts.values()),
        "failed reads": counts["read failed"],
        "write 503s (retried)": counts["write 503"],
        "writes without answer (retried)": counts["write no answer"],
        "acknowledged writes": len(acknowledged),
        "found afterwards": sum(1 for n in present if n >= 1),
        "duplicates": sum(n - 1 for n in present if n > 1),
    }


def redis_fault(models: Path, work: Path, name: str, fault) -> dict:
    """Load for 8 s; two seconds in, `fault(server)` (it returns when Redis is back)."""
    server = RedisServer(work / "redis").start()
    api = Api(models, work, server.url).start()
    try:
        load = Load(lambda: api.url, seconds=8).run()
        time.sleep(2)
        fault(server)
        load.join()
        return verdict(name, load, events_in_stream(server.url), keyed=False)
    finally:
        api.stop()
        server.signal(signal.SIGKILL)


def pause(server: RedisServer) -> None:
    server.signal(signal.SIGSTOP)
    time.sleep(3)
    server.signal(signal.SIGCONT)


def kill_and_restart(server: RedisServer) -> None:
    server.signal(signal.SIGKILL)
    time.sleep(2)
    server.start()  # same port, same AOF


def api_kill(models: Path, work: Path, with_redis: bool) -> dict:
    server = RedisServer(work / "redis").start() if with_redis else None
    holder = {"api": Api(models, work, server.url if server else None).start()}
    try:
        load = Load(lambda: holder["api"].url, seconds=6, readers=0).run()
        time.sleep(2)
        holder["api"].kill()
        holder["api"] = Api(models, work, server.url if server else None)
        holder["api"].start()
        load.join()
        found = (
            events_in_stream(server.url) if server else events_in_file(work / "interactions.jsonl")
        )
        name = f"API SIGKILL during writes ({'Redis' if server else 'file store'})"
        return verdict(name, load, found, keyed=server is None)
    finally:
        holder["api"].stop()
        if server:
            server.signal(signal.SIGKILL)


def torn_tail(models: Path, work: Path) -> dict:
    log = work / "interactions.jsonl"
    api = Api(models, work, None).start()
    load = Load(lambda: api.url, seconds=2, readers=0).run()
    load.join()
    api.kill()
    with log.open("a") as handle:
        handle.write('{"type": "interaction", "user": "1", "ite')  # a crash mid-write
    api = Api(models, work, None).start()  # must start, cutting the torn line
    try:
        load2 = Load(lambda: api.url, seconds=2, readers=0).run()
        load2.join()
        load.acknowledged += load2.acknowledged
        load.counts.update(load2.counts)
        return verdict("torn log tail, restarted", load, events_in_file(log), keyed=True)
    finally:
        api.stop()


def idle_connections(models: Path, work: Path) -> dict:
    api = Api(models, work, None).start()
    sockets = []
    try:
        for _ in range(1000):
            sockets.append(socket.create_connection(("127.0.0.1", api.port)))
        load = Load(lambda: api.url, seconds=3, writers=1, readers=2).run()
        load.join()
        time.sleep(6)  # past the idle timeout (5 s)
        closed = 0
        for sock in sockets:
            sock.settimeout(1)
            with contextlib.suppress(OSError):
                closed += sock.recv(1) == b""
        found = events_in_file(work / "interactions.jsonl")
        result = verdict("1,000 idle connections", load, found, keyed=True)
        result["idle sockets closed by the server"] = closed
        return result
    finally:
        for sock in sockets:
            sock.close()
        api.stop()


SCENARIOS = {
    "redis-stop": lambda m, w: redis_fault(m, w, "Redis SIGSTOP 3 s", pause),
    "redis-kill": lambda m, w: redis_fault(m, w, "Redis SIGKILL, restarted", kill_and_restart),
    "api-kill-file": lambda m, w: api_kill(m, w, with_redis=False),
    "api-kill-redis": lambda m, w: api_kill(m, w, with_redis=True),
    "torn-tail": torn_tail,
    "idle": idle_connections,
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "cddae-faults")
    parser.add_argument("--only", nargs="*", choices=SCENARIOS)
    args = parser.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    models = build_models(args.work)
    rows = []
    for name in args.only or SCENARIOS:
        work = Path(tempfile.mkdtemp(prefix=f"{name}-", dir=args.work))
        started = time.monotonic()
        rows.append(SCENARIOS[name](models, work))
        print(f"{name}: {rows[-1]} ({time.monotonic() - started:.0f} s)", flush=True)
    columns = list(rows[0])
    for row in rows:
        columns += [c for c in row if c not in columns]
    print("\n| " + " | ".join(columns) + " |")
    print("|" + "---|" * len(columns))
    for row in rows:
        print("| " + " | ".join(str(row.get(c, "")) for c in columns) + " |")
    failed = [r["scenario"] for r in rows
              if r["found afterwards"] < r["acknowledged writes"] or r["duplicates"]]  # fmt: skip
    if failed:
        print(f"LOST OR DUPLICATED WRITES: {failed}")
        sys.exit(1)


if __name__ == "__main__":
    main()
