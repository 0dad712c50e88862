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
import resource
import shutil
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

from service.state.store import scoped_key
from tests.synthetic import write_grouplens

CDDAE = str(Path(sys.executable).parent / "cddae")
DATA_DIR = Path()  # the synthetic data set, set by build_models


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def build_models(work: Path) -> Path:
    from service.bundle import promote
    from training.data.prepared import ProtocolConfig, prepare
    from training.jobs.export import export_checkpoint
    from training.jobs.pipeline import train_and_evaluate

    global DATA_DIR
    models = work / "models"
    DATA_DIR = work / "data"
    if (models / "CURRENT").exists():
        return models
    data = write_grouplens(DATA_DIR)
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
    def __init__(self, models: Path, work: Path, redis_url: str | None, **settings: str):
        self.models, self.work, self.redis_url = models, work, redis_url
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.process: subprocess.Popen | None = None
        self.settings = settings

    def start(self, file_limit: int | None = None) -> Api:
        """`file_limit`: the largest file the process may write (a full disk, simulated)."""
        env = {**os.environ, "CDDAE_REDIS_URL": self.redis_url or "",
               "CDDAE_INTERACTIONS_LOG": str(self.work / "interactions.jsonl"),
               "CDDAE_REDIS_RETRY_SECONDS": "0.3", **self.settings}  # fmt: skip

        def limit() -> None:
            if file_limit is not None:
                resource.setrlimit(resource.RLIMIT_FSIZE, (file_limit, resource.RLIM_INFINITY))

        self.process = subprocess.Popen(
            [CDDAE, "serve", "--models-dir", str(self.models), "--port", str(self.port),
             "--log-level", "error"], env=env, stderr=subprocess.DEVNULL, preexec_fn=limit,
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
    """(user, Idempotency-Key as the client sent it) of each readable write in the log."""
    found: Counter = Counter()
    if path.exists():
        for line in path.read_text().splitlines():
            with contextlib.suppress(ValueError, KeyError, TypeError):  # quarantined lines
                record = json.loads(line)
                found[(record["user"], record.get("key"))] += 1
    return found


def scoped(user: str, key: str) -> tuple[str, str]:
    """How the file store records a client's key: scoped to the route and user."""
    return user, scoped_key("interactions", user, key)


def events_in_stream(url: str) -> Counter:
    found: Counter = Counter()
    for _, fields in redis.Redis.from_url(url).xrange("cddae:events"):
        found[(fields[b"user"].decode(), fields[b"timestamp"].decode())] += 1
    return found


def verdict(name: str, load: Load, found: Counter, keyed: bool) -> dict:
    acknowledged = load.acknowledged
    if keyed:
        present = [found[scoped(user, key)] for user, key in acknowledged]
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


def writes_then_kill(api: Api) -> Load:
    """Two seconds of acknowledged writes, then the API killed: the log as a crash leaves it."""
    load = Load(lambda: api.url, seconds=2, readers=0).run()
    load.join()
    api.kill()
    return load


def torn_tail(models: Path, work: Path) -> dict:
    log = work / "interactions.jsonl"
    api = Api(models, work, None).start()
    load = writes_then_kill(api)
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
    api = Api(models, work, None, CDDAE_MAX_CONNECTIONS_PER_CLIENT="2048").start()
    sockets = []
    try:
        for _ in range(1000):  # from another client address than the load's
            sock = socket.socket()
            sock.bind(("127.0.0.2", 0))
            sock.connect(("127.0.0.1", api.port))
            sockets.append(sock)
        load = Load(lambda: api.url, seconds=3, writers=1, readers=2).run()
        load.join()
        time.sleep(6)  # past the idle timeout (5 s)
        closed = closed_by_server(sockets, wait=1)
        found = events_in_file(work / "interactions.jsonl")
        result = verdict("1,000 idle connections", load, found, keyed=True)
        result["idle sockets closed by the server"] = closed
        return result
    finally:
        for sock in sockets:
            sock.close()
        api.stop()


def closed_by_server(sockets: list[socket.socket], wait: float) -> int:
    """How many of `sockets` the server hung up on (end of stream or a reset)."""
    closed = 0
    for sock in sockets:
        sock.settimeout(wait)
        try:
            closed += sock.recv(1) == b""
        except ConnectionResetError:
            closed += 1
        except OSError:
            pass
    return closed


def disk_full(models: Path, work: Path) -> dict:
    """The file store's disk fills mid-load (a file-size limit just past the log's size), then
    space is freed (the limit lifted with prlimit): clients retry their 503s with the same
    key; every acknowledged write is found once, and the API restarts on the log as left."""
    api = Api(models, work, None).start(file_limit=4 * 1024)
    try:
        load = Load(lambda: api.url, seconds=8, readers=1).run()
        time.sleep(4)
        assert api.process is not None
        subprocess.run(["prlimit", "--pid", str(api.process.pid), "--fsize=unlimited"],
                       check=True)  # fmt: skip
        load.join()
        api.kill()
        api.start()  # must start on the log as the full disk left it
        ready = httpx.get(f"{api.url}/readyz", timeout=5).json()["detail"]
        result = verdict("disk full, then space freed", load,
                         events_in_file(work / "interactions.jsonl"), keyed=True)  # fmt: skip
        result["quarantined"] = ready.get("quarantined_records")
        return result
    finally:
        api.stop()


def retrain(models: Path, work: Path, events: Path) -> int:
    """`cddae retrain` on the suite's data and events, a small model: its exit code."""
    config = work / "fast.json"
    config.write_text(json.dumps({"model": {"hidden": [16]}, "train": {"epochs": 3}}))
    done = subprocess.run(
        [CDDAE, "retrain", "--data", str(DATA_DIR), "--models-dir",
         str(models), "--events", str(events), "--config", str(config), "--gate", "0"],
        capture_output=True, text=True, env={**os.environ, "CDDAE_REDIS_URL": ""},
    )  # fmt: skip
    return done.returncode


def poisoned_log(models: Path, work: Path) -> dict:
    """A torn line in the middle of the log, a foreign record and poisoned events among good
    writes: the API starts and serves, the job promotes twice (nothing stuck), both quarantine."""
    own = work / "models"
    shutil.copytree(models, own)
    log = work / "interactions.jsonl"
    api = Api(own, work, None).start()
    load = writes_then_kill(api)
    with log.open("a") as handle:
        handle.write('{"type": "interactions", "user": "1", "ite\n[1, 2]\n')  # torn, foreign
        for event in ({"type": "interaction", "user": None, "item": "1", "timestamp": 1},
                      {"type": "interaction", "user": "1\u0000", "item": "2", "timestamp": 1},
                      {"type": "profile", "user": "1", "profile": None}):  # fmt: skip
            handle.write(json.dumps(event) + "\n")
    api.start()
    try:
        after = Load(lambda: api.url, seconds=2, readers=1).run()
        after.join()
        odd = httpx.post(f"{api.url}/users/1/interactions", json={"items": ["²"]}, timeout=5)
        load.acknowledged += after.acknowledged
        load.counts.update(after.counts)
        ready = httpx.get(f"{api.url}/readyz", timeout=5).json()["detail"]
        codes = [retrain(own, work, log), retrain(own, work, log)]
        result = verdict("torn line mid-log, poisoned events", load, events_in_file(log), True)
        result["quarantined"] = ready.get("quarantined_records")
        result["job exit codes"] = " ".join(map(str, codes))
        result["'²' recorded"] = odd.status_code
        return result
    finally:
        api.stop()


def long_history(models: Path, work: Path, with_redis: bool) -> dict:
    """100 writes of 1,000 new items to one user (100k items): write latency stays flat, reads
    stay fresh (never degraded), the state stays bounded (CDDAE_MAX_HISTORY, default 5,000)."""
    server = RedisServer(work / "redis").start() if with_redis else None
    api = Api(models, work, server.url if server else None, CDDAE_MAX_BODY_BYTES="200000")
    api.start()
    try:
        load = Load(lambda: api.url, seconds=0, readers=0)
        writes, reads, degraded = [], [], 0
        with httpx.Client(base_url=api.url, timeout=30) as client:
            for write in range(100):
                items = [f"h{write}-{k}" for k in range(1000)]
                started = time.perf_counter()
                answer = client.post("/users/3/interactions", json={"items": items},
                                     headers={"Idempotency-Key": f"long-{write}"})  # fmt: skip
                writes.append(time.perf_counter() - started)
                if answer.status_code == 201:
                    load._count("write acknowledged")
                    load.acknowledged.append(("3", f"long-{write}"))
                else:
                    load._count(f"write {answer.status_code}")
                started = time.perf_counter()
                listed = client.get("/users/3/recommendations")
                reads.append(time.perf_counter() - started)
                load._count("read ok" if listed.status_code == 200 else "read failed")
                degraded += bool(listed.json().get("degraded"))
        rss = _rss_mib(api.process.pid) if api.process else 0
        if server:  # the stream has no key: 1,000 entries of user 3 per recorded write
            entries = sum(f[b"user"] == b"3" for _, f in redis.Redis.from_url(server.url)
                          .xrange("cddae:events"))  # fmt: skip
            result = verdict("100k-item history (Redis)", load, Counter(), keyed=False)
            result["found afterwards"] = entries // 1000 if entries % 1000 == 0 else -1
            result["duplicates"] = max(0, entries // 1000 - len(load.acknowledged))
        else:
            found = events_in_file(work / "interactions.jsonl")
            result = verdict("100k-item history (file store)", load, found, keyed=True)
        result.update({
            "write ms, first 10 → last 10 (median)":
                f"{_median(writes[:10]):.0f} → {_median(writes[-10:]):.0f}",
            "read ms, first 10 → last 10 (median)":
                f"{_median(reads[:10]):.0f} → {_median(reads[-10:]):.0f}",
            "degraded reads": degraded, "API RSS MiB": rss,
        })  # fmt: skip
        return result
    finally:
        api.stop()
        if server:
            server.signal(signal.SIGKILL)


def _median(values: list[float]) -> float:
    return sorted(values)[len(values) // 2] * 1000


def _rss_mib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) // 1024
    return 0


def slowloris(models: Path, work: Path) -> dict:
    """200 sockets from another address each send one byte and go silent, beside a normal
    load: the per-client cap refuses most at once, the request deadline closes the rest."""
    api = Api(models, work, None, CDDAE_MAX_CONNECTIONS="256",
              CDDAE_REQUEST_TIMEOUT_SECONDS="2").start()  # fmt: skip
    sockets = []
    try:
        for _ in range(200):
            sock = socket.socket()
            sock.bind(("127.0.0.2", 0))
            sock.connect(("127.0.0.1", api.port))
            sock.sendall(b"G")
            sockets.append(sock)
        load = Load(lambda: api.url, seconds=4, writers=1, readers=2).run()
        load.join()
        closed = closed_by_server(sockets, wait=10)
        result = verdict("slowloris: 200 one-byte sockets", load,
                         events_in_file(work / "interactions.jsonl"), keyed=True)  # fmt: skip
        result["slow sockets closed by the server"] = closed
        return result
    finally:
        for sock in sockets:
            sock.close()
        api.stop()


def blank_pointer(models: Path, work: Path) -> dict:
    """CURRENT emptied by a careless hand: the API keeps serving what it has (readiness says
    degraded), the job and rollback refuse with exit 2 instead of starting from scratch."""
    own = work / "models"
    shutil.copytree(models, own)
    api = Api(own, work, None).start()
    try:
        (own / "CURRENT").write_text("\n")
        time.sleep(3)  # past the watcher's look (every 2 s)
        load = Load(lambda: api.url, seconds=3, writers=1, readers=2).run()
        load.join()
        ready = httpx.get(f"{api.url}/readyz", timeout=5).json()
        codes = [retrain(own, work, work / "interactions.jsonl")]
        rollback = subprocess.run([CDDAE, "models", "rollback", "--models-dir", str(own)],
                                  capture_output=True)  # fmt: skip
        codes.append(rollback.returncode)
        result = verdict("blank CURRENT", load, events_in_file(work / "interactions.jsonl"),
                         keyed=True)  # fmt: skip
        result["job exit codes"] = " ".join(map(str, codes)) + " (retrain, rollback)"
        result["readiness"] = ready["status"]
        return result
    finally:
        api.stop()


SCENARIOS = {
    "redis-stop": lambda m, w: redis_fault(m, w, "Redis SIGSTOP 3 s", pause),
    "redis-kill": lambda m, w: redis_fault(m, w, "Redis SIGKILL, restarted", kill_and_restart),
    "api-kill-file": lambda m, w: api_kill(m, w, with_redis=False),
    "api-kill-redis": lambda m, w: api_kill(m, w, with_redis=True),
    "torn-tail": torn_tail,
    "idle": idle_connections,
    "disk-full": disk_full,
    "poisoned-log": poisoned_log,
    "long-history-file": lambda m, w: long_history(m, w, with_redis=False),
    "long-history-redis": lambda m, w: long_history(m, w, with_redis=True),
    "slowloris": slowloris,
    "blank-current": blank_pointer,
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
