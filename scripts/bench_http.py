"""The service against the framework's floor, open loop, everything in one run.

    python scripts/bench_http.py --models-dir models --checkpoint runs/cddae \\
        [--rates 250,500,1000] [--seconds 10] [--redis-url redis://127.0.0.1:6379/8] \\
        [--profile docs/performance/profile-after.txt] [--out docs/performance/results.json]

Servers, each started on loopback with the same server settings (`service.api.server.run`):
- reference: a bare FastAPI endpoint returning a fixed 10-item list (scripts/bench_apps.py);
- torch: the PyTorch model called in a FastAPI handler (what a user would otherwise write);
- the service with Redis as cache and store, and the service on the embedded default.
Scenarios, each at every rate for `--seconds`, latency from the intended send time
(scripts/loadgen.py): cached GET (50 hot users, warmed first), uncached GET (a random user and
n ≤ 100, every (user, n, exclude_seen) asked once in the whole run, so nothing is a hit),
POST /score (one ad-hoc user, 20 random items, each body different); with --filters, uncached
GET with a filter and an exclusion (a genre of the bundle's item spec, a year range, 5 items:
what issue 20 asks to cost at most 1.2× the same request without). Then the most each
sustains: 32 clients back to back for 5 s. With --profile, py-spy samples the Redis service
during its uncached GET at the middle rate and the top functions are written there.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import socket
import subprocess
import sys
import time
import urllib.parse
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
from loadgen import Request, closed_loop, open_loop

from service.bundle import current_version, load_bundle

HERE = Path(__file__).resolve().parent
BIN = Path(sys.executable).parent


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextlib.contextmanager
def started(command: list[str], env: dict[str, str], port: int) -> Iterator[subprocess.Popen]:
    process = subprocess.Popen(command, env={**os.environ, **env})
    deadline = time.monotonic() + 120
    try:
        while True:
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"http://127.0.0.1:{port}/users/1/recommendations").status_code < 500:
                    break
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"{command[:3]} did not start")
            time.sleep(0.2)
        yield process
    finally:
        process.terminate()
        process.wait(timeout=20)


def service_command(models: Path, port: int) -> list[str]:
    return [str(BIN / "cddae"), "serve", "--models-dir", str(models), "--port", str(port),
            "--log-level", "warning"]  # fmt: skip


class Workload:
    """Request makers over one bundle's users and items, seeded."""

    def __init__(self, models: Path, seed: int = 0):
        bundle = load_bundle(models / str(current_version(models)))
        self.users = bundle.user_ids.tolist()
        self.items = bundle.item_ids.tolist()
        self.rng = random.Random(seed)
        self.fresh()
        spec = {f.name: f for f in bundle.item_spec.fields}
        self.genres = list(spec["genres"].values) if "genres" in spec else []

    def fresh(self) -> None:
        """Uncached GETs anew: each (user, n, exclude_seen) asked once per server (its cache)."""
        users = range(len(self.users))
        triples = [(u, n, e) for u in users for n in range(1, 101) for e in (0, 1)]
        self.rng.shuffle(triples)
        self.unasked = iter(triples)

    def uncached_get(self, _: int) -> Request:
        user, n, exclude = next(self.unasked)
        flag = "true" if exclude else "false"
        return Request(
            "GET", f"/users/{self.users[user]}/recommendations?n={n}&exclude_seen={flag}"
        )

    def filtered_get(self, i: int) -> Request:
        """An uncached GET with conditions: a genre (cycling), years, five excluded items."""
        request = self.uncached_get(i)
        conditions = [f"genres:{self.genres[i % len(self.genres)]}"] if self.genres else []
        conditions.append("year:1970..")
        excluded = self.rng.sample(self.items, 5)
        pairs = [("filter", c) for c in conditions] + [("exclude", e) for e in excluded]
        return Request("GET", f"{request.path}&{urllib.parse.urlencode(pairs)}")

    def hot_get(self, i: int) -> Request:
        return Request("GET", f"/users/{self.users[i % 50]}/recommendations?n=10")

    def random_user_get(self, _: int) -> Request:
        user = self.rng.randrange(len(self.users))
        return Request(
            "GET", f"/users/{self.users[user]}/recommendations?n={self.rng.randint(1, 100)}"
        )

    def score(self, _: int) -> Request:
        items = self.rng.sample(self.items, 20)
        return Request("POST", "/score", json.dumps({"items": items, "n": 10}).encode())


def measure(
    name: str, port: int, make: Callable[[int], Request], rates: list[float], seconds: float,
    results: dict, on_middle: Callable[[], None] | None = None, pid: int | None = None,
) -> None:  # fmt: skip
    """Each rate for `seconds`, open loop; with `pid`, the server's CPU per request too."""
    asyncio.run(open_loop("127.0.0.1", port, make, 100, 1))  # warm-up, not recorded
    for k, rate in enumerate(rates):
        if on_middle is not None and k == len(rates) // 2:
            on_middle()
        cpu = process_cpu_seconds(pid) if pid else 0.0
        result = asyncio.run(open_loop("127.0.0.1", port, make, rate, seconds))
        results.setdefault(name, {})[str(int(rate))] = summary = result.summary()
        if pid:
            spent = process_cpu_seconds(pid) - cpu
            summary["cpu_us_per_request"] = round(1e6 * spent / max(summary["requests"], 1), 1)
        figures = "  ".join(f"{q} {summary[q]:8.2f}" for q in ("p50", "p90", "p99", "max"))
        print(
            f"{name:32s} {rate:6.0f}/s  {figures} ms  errors {summary['errors']}  "
            f"achieved {summary['achieved']}/s  cpu {summary.get('cpu_us_per_request', '-')} µs",
            flush=True,
        )
        time.sleep(1)


def measure_filters(
    label: str, port: int, work: Workload, rates: list[float], seconds: float, results: dict
) -> None:
    """Uncached GETs with and without conditions, interleaved in one run (so both meet the same
    noise), summarised apart: the cost of filtering is their ratio."""

    def make(i: int) -> Request:
        return work.filtered_get(i) if i % 2 else work.uncached_get(i)

    def tag(i: int) -> str:
        return "filter" if i % 2 else "plain"

    for rate in rates:
        result = asyncio.run(open_loop("127.0.0.1", port, make, rate, seconds, tag=tag))
        for kind in ("plain", "filter"):
            name = f"{label} uncached GET, {kind} (interleaved)"
            results.setdefault(name, {})[str(int(rate))] = result.of(kind).summary()
        plain, filtered = (results[f"{label} uncached GET, {k} (interleaved)"][str(int(rate))]
                           for k in ("plain", "filter"))  # fmt: skip
        ratio = {q: round(filtered[q] / plain[q], 2) for q in ("p50", "p90", "p99")}
        results.setdefault("filter_over_plain", {}).setdefault(label, {})[str(int(rate))] = ratio
        print(f"{label:24s} {rate:6.0f}/s  filter / plain: {ratio}  errors "
              f"{sum(result.errors.values())}", flush=True)  # fmt: skip
        time.sleep(1)


def process_cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process and its live children so far (Linux /proc): a
    server of several worker processes counts them all."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:  # gone meanwhile
        return 0.0
    own = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    children = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        with contextlib.suppress(OSError):
            children += [int(c) for c in (task / "children").read_text().split()]
    return own + sum(process_cpu_seconds(child) for child in children)


def redis_cpu_seconds(client) -> float:
    """Redis's own CPU time so far (INFO cpu): the share of the cores the service does not see."""
    info = client.info("cpu")
    return float(info["used_cpu_user"]) + float(info["used_cpu_sys"])


def measure_online(
    models: Path, redis_url: str, work: Workload, rates: list[float], seconds: float,
    results: dict, repeats: int = 3,
) -> None:  # fmt: skip
    """What recording impressions costs: the Redis service with and without them, alternating
    servers `repeats` times (so that drift of the machine shows between repeats); per run the
    latency and the CPU per request of the service and of Redis; medians over the repeats."""
    import statistics

    import redis

    client = redis.Redis.from_url(redis_url)
    runs: dict[str, dict[str, list[dict]]] = {"on": {}, "off": {}}
    for repeat in range(1, repeats + 1):
        for label, flag in (("on", "true"), ("off", "false")):
            client.flushdb()
            port = free_port()
            env = {"CDDAE_REDIS_URL": redis_url, "CDDAE_RECORD_IMPRESSIONS": flag}
            with started(service_command(models, port), env, port) as process:
                name = f"service redis uncached GET, impressions {label} #{repeat}"
                for rate in rates:
                    cpu, redis_cpu = process_cpu_seconds(process.pid), redis_cpu_seconds(client)
                    measure(name, port, work.uncached_get, [rate], seconds, results)
                    summary = results[name][str(int(rate))]
                    done = max(summary["requests"], 1)
                    summary["service_cpu_ms_per_request"] = round(
                        1000 * (process_cpu_seconds(process.pid) - cpu) / done, 3
                    )
                    summary["redis_cpu_ms_per_request"] = round(
                        1000 * (redis_cpu_seconds(client) - redis_cpu) / done, 3)  # fmt: skip
                    runs[label].setdefault(str(int(rate)), []).append(summary)
    figures = ("p50", "p90", "p99", "service_cpu_ms_per_request", "redis_cpu_ms_per_request")
    for rate in (str(int(r)) for r in rates):
        medians = {label: {q: statistics.median(run[q] for run in runs[label][rate])
                           for q in figures} for label in ("on", "off")}  # fmt: skip
        ratios = {q: round(medians["on"][q] / medians["off"][q], 3) for q in ("p50", "p90", "p99")}
        results.setdefault("impressions_medians", {})[rate] = medians
        results.setdefault("impressions_on_over_off", {})[rate] = ratios
        print(f"at {rate}/s, medians of {repeats}: on {medians['on']}\n  off {medians['off']}\n"
              f"  on / off: {ratios}", flush=True)  # fmt: skip


def saturate(
    name: str, port: int, make: Callable[[int], Request], results: dict, pid: int | None = None
) -> float:
    """The most `name` sustains (32 clients back to back for 5 s); with `pid`, the server's
    CPU per request meanwhile (recorded under "cpu_us_at_most"). Returns the rate."""
    cpu = process_cpu_seconds(pid) if pid else 0.0
    result = asyncio.run(closed_loop("127.0.0.1", port, make, clients=32, seconds=5))
    results.setdefault("max_throughput", {})[name] = round(result.achieved, 1)
    if pid:
        done = max(len(result.latencies_ms), 1)
        per_request = round(1e6 * (process_cpu_seconds(pid) - cpu) / done, 1)
        results.setdefault("cpu_us_at_most", {})[name] = per_request
    print(f"{name:32s} sustains {result.achieved:8.1f}/s ({sum(result.errors.values())} errors)")
    return result.achieved


def model_seconds(models: Path, users: int = 300, repeats: int = 3) -> float:
    """t_model: the bundle's onnxruntime call for one known user (input built, scores out),
    median over `users` users, `repeats` times, in this process, before any server starts."""
    import statistics

    from service.serving.onnx_model import Model

    model = Model.load(models / str(current_version(models)))
    queries = [model.known_user(u) for u in range(min(users, len(model.bundle.user_ids)))]
    times = []
    for _ in range(repeats):
        for query in queries:
            started = time.perf_counter()
            model.scores([query])
            times.append(time.perf_counter() - started)
    return statistics.median(times)


def physical_limit(results: dict) -> None:
    """1 / (t_ref + t_model): what one process could sustain if the service cost nothing
    beyond the bare framework's request and the model's call; each service's share of it."""
    t_ref = results["cpu_us_at_most"]["reference"] / 1e6
    t_model = results["t_model_us"] / 1e6
    limit = 1 / (t_ref + t_model)
    shares = {name: round(rate / limit, 3) for name, rate in results["max_throughput"].items()
              if name.startswith("service")}  # fmt: skip
    results["physical_limit"] = {"t_ref_us": round(t_ref * 1e6, 1),
                                 "t_model_us": round(t_model * 1e6, 1),
                                 "per_second": round(limit, 1), "shares": shares}  # fmt: skip
    print(f"physical limit 1/(t_ref {t_ref * 1e6:.1f} µs + t_model {t_model * 1e6:.1f} µs) = "
          f"{limit:.0f}/s; sustained shares {shares}", flush=True)  # fmt: skip


def profile(pid: int, seconds: float, out: Path) -> subprocess.Popen:
    """py-spy on the service for `seconds`; raw stacks next to `out`, summarised into it."""
    raw = out.with_suffix(".raw")
    return subprocess.Popen(
        [str(BIN / "py-spy"), "record", "--pid", str(pid), "--duration", str(int(seconds)),
         "--rate", "250", "--format", "raw", "--output", str(raw), "--nonblocking"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip


def summarise_profile(raw: Path, out: Path, top: int = 25) -> None:
    """Self and inclusive share of samples per function, from py-spy's collapsed stacks."""
    own: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    total = 0
    for line in raw.read_text(errors="replace").splitlines():
        stack, _, count = line.rpartition(" ")
        if not count.isdigit():  # a frame py-spy could not name in one piece: skipped
            continue
        frames = [f.split(" (")[0] + " (" + f.split(" (")[-1].split(":")[0].rsplit("/", 1)[-1]
                  + ")" for f in stack.split(";") if f]  # fmt: skip
        n = int(count)
        total += n
        if frames:
            own[frames[-1]] += n
        for frame in set(frames):
            inclusive[frame] += n
    lines = [f"# py-spy, {total} samples; share of samples (self / including callees)", ""]
    lines += [f"{100 * n / total:5.1f}% self   {name}" for name, n in own.most_common(top)]
    lines += [""]
    lines += [f"{100 * n / total:5.1f}% incl   {name}" for name, n in inclusive.most_common(top)]
    out.write_text("\n".join(lines) + "\n")


SKIP = (
    "max_throughput",
    "p99_over_reference",
    "cpu_us_at_most",
    "physical_limit",
    "relative_rates",
    "impressions_medians",
    "impressions_on_over_off",
    "filter_over_plain",
)


def markdown(results: dict) -> str:
    """The results as the tables in docs/PERFORMANCE.md (one run; with several, the medians)."""
    if "runs" in results:
        return medians_markdown(results)
    rows = ["| server, scenario | rate/s | achieved/s | p50 ms | p90 ms | p99 ms | max ms | errors "
            "| CPU µs/request | p99 / reference |",
            "|---|---|---|---|---|---|---|---|---|---|"]  # fmt: skip
    ratios = results.get("p99_over_reference", {})
    for name, by_rate in results.items():
        if not isinstance(by_rate, dict) or name in SKIP:
            continue
        for rate, s in by_rate.items():
            ratio = ratios.get(name, {}).get(rate, 1.0 if name == "reference" else "")
            shown = f"{rate} ({s['rate']:.0f})" if rate.endswith("%") else rate
            rows.append(f"| {name} | {shown} | {s['achieved']} | {s['p50']} | {s['p90']} | "
                        f"{s['p99']} | {s['max']} | {s['errors']} | "
                        f"{s.get('cpu_us_per_request', '')} | {ratio} |")  # fmt: skip
    most = results.get("max_throughput", {})
    if most:
        header = ("| server, scenario | most sustained, requests/s | share of the reference "
                  "| CPU µs/request | share of the physical limit |")  # fmt: skip
        rows += ["", header, "|---|---|---|---|---|"]
        reference = most.get("reference")
        cpu = results.get("cpu_us_at_most", {})
        shares = results.get("physical_limit", {}).get("shares", {})
        for name, rate in most.items():
            share = f"{100 * rate / reference:.0f}%" if reference else ""
            limit = f"{100 * shares[name]:.0f}%" if name in shares else ""
            rows.append(f"| {name} | {rate} | {share} | {cpu.get(name, '')} | {limit} |")
    if "physical_limit" in results:
        limit = results["physical_limit"]
        rows += ["", f"Physical limit: 1 / (t_ref {limit['t_ref_us']} µs + t_model "
                 f"{limit['t_model_us']} µs) = {limit['per_second']} requests/s."]  # fmt: skip
    return "\n".join(rows)


def medians(runs: list[dict]) -> dict:
    """Per scenario and rate, the median over runs of p99 / reference; the median sustained
    share of the physical limit; each with its spread (min–max)."""
    import statistics

    def spread(values: list[float]) -> dict:
        return {"median": round(statistics.median(values), 2), "min": round(min(values), 2),
                "max": round(max(values), 2)}  # fmt: skip

    ratios: dict[str, dict[str, list[float]]] = {}
    shares: dict[str, list[float]] = {}
    for run in runs:
        for name, by_rate in run.get("p99_over_reference", {}).items():
            for rate, ratio in by_rate.items():
                ratios.setdefault(name, {}).setdefault(rate, []).append(ratio)
        for name, share in run.get("physical_limit", {}).get("shares", {}).items():
            shares.setdefault(name, []).append(share)
    return {
        "p99_over_reference": {
            name: {rate: spread(v) for rate, v in by_rate.items()}
            for name, by_rate in ratios.items()
        },
        "physical_limit_share": {name: spread(v) for name, v in shares.items()},
    }


def medians_markdown(results: dict) -> str:
    summary = results["medians"]
    rows = [f"Median of {len(results['runs'])} runs (min–max).", "",
            "| server, scenario | rate | p99 / reference |", "|---|---|---|"]  # fmt: skip
    for name, by_rate in summary["p99_over_reference"].items():
        for rate, s in by_rate.items():
            rows.append(f"| {name} | {rate} | {s['median']} ({s['min']}–{s['max']}) |")
    rows += ["", "| server, scenario | sustained share of the physical limit |", "|---|---|"]
    for name, s in summary["physical_limit_share"].items():
        rows.append(f"| {name} | {100 * s['median']:.0f}% ({100 * s['min']:.0f}–"
                    f"{100 * s['max']:.0f}%) |")  # fmt: skip
    return "\n".join(rows)


def one_run(args: argparse.Namespace, work: Workload, only: set[str]) -> dict:
    """Every server and scenario once. With the reference, first its sustained rate (and CPU
    per request: t_ref), so that every server is also measured at `--relative` shares of it."""
    import redis

    rates = [float(r) for r in args.rates.split(",") if r]
    fractions = [float(f) for f in args.relative.split(",") if f]
    results: dict = {"rates": rates, "seconds": args.seconds, "started": time.strftime("%FT%T")}
    points: list[tuple[str, float]] = [(str(int(r)), r) for r in rates]

    def measure_all(name: str, port: int, make: Callable[[int], Request], pid: int,
                    on_middle: Callable[[], None] | None = None) -> None:  # fmt: skip
        for k, (key, rate) in enumerate(points):
            middle = on_middle if k == len(points) // 2 else None
            measure(name, port, make, [rate], args.seconds, results, middle, pid)
            if key != str(int(rate)):  # a relative point: filed under its share
                results[name][key] = results[name].pop(str(int(rate)))

    def run_service(label: str, env: dict[str, str], profiled: bool = False) -> None:
        port = free_port()
        work.fresh()
        with started(service_command(args.models_dir, port), env, port) as process:
            pid = process.pid
            measure_all(f"{label} cached GET", port, work.hot_get, pid)
            if env.get("CDDAE_REDIS_URL"):
                redis.Redis.from_url(env["CDDAE_REDIS_URL"]).flushdb()
            spy = None

            def start_profile() -> None:
                nonlocal spy
                if profiled and args.profile:
                    spy = profile(pid, args.seconds, args.profile)

            measure_all(f"{label} uncached GET", port, work.uncached_get, pid, start_profile)
            if spy is not None:
                spy.wait()
                summarise_profile(args.profile.with_suffix(".raw"), args.profile)
            if args.filters:
                measure_filters(label, port, work, rates, args.seconds, results)
            measure_all(f"{label} POST /score", port, work.score, pid)
            saturate(f"{label} uncached GET", port, work.uncached_get, results, pid)

    def run_yardstick(label: str, app_args: list[str], make: Callable[[int], Request],
                      first: Callable[[float], None] | None = None) -> None:  # fmt: skip
        port = free_port()
        command = [sys.executable, str(HERE / "bench_apps.py"), *app_args, "--port", str(port)]
        with started(command, {}, port) as process:
            asyncio.run(open_loop("127.0.0.1", port, make, 100, 1))  # warm-up
            most = saturate(label, port, make, results, process.pid)
            if first is not None:
                first(most)
            measure_all(label, port, make, process.pid)

    def relative_points(most: float) -> None:
        for fraction in fractions:
            key = f"{100 * fraction:g}%"
            points.append((key, round(fraction * most)))
            results.setdefault("relative_rates", {})[key] = round(fraction * most)

    if not only or "reference" in only:
        results["t_model_us"] = round(1e6 * model_seconds(args.models_dir), 1)
        workers = ["--workers", str(args.workers)]
        run_yardstick("reference", ["reference", *workers], work.hot_get, relative_points)
    if not only or "torch" in only:
        torch_args = ["torch", "--checkpoint", str(args.checkpoint)]
        run_yardstick("torch in handler", torch_args, work.random_user_get)
    if not only or "redis" in only:
        redis.Redis.from_url(args.redis_url).flushdb()
        env = {"CDDAE_REDIS_URL": args.redis_url, "CDDAE_WORKERS": str(args.workers)}
        run_service("service redis", env, profiled=args.workers == 1)
    if not only or "embedded" in only:
        log = Path(f"/tmp/cddae-bench-{os.getpid()}.jsonl")
        run_service("service embedded", {"CDDAE_REDIS_URL": "", "CDDAE_INTERACTIONS_LOG": str(log)})
        log.unlink(missing_ok=True)
    if "reference" in results:
        ratios = {}
        for name, by_rate in results.items():
            if isinstance(by_rate, dict) and name not in ("reference", *SKIP):
                ratios[name] = {
                    rate: round(s["p99"] / results["reference"][rate]["p99"], 2)
                    for rate, s in by_rate.items()
                    if rate in results["reference"]
                }
        results["p99_over_reference"] = ratios
        print(json.dumps(ratios, indent=1))
        if args.workers == 1:
            physical_limit(results)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models-dir", type=Path)
    parser.add_argument("--checkpoint", type=Path)
    parser.add_argument("--rates", default="500", help="fixed rates, comma-separated")
    parser.add_argument(
        "--relative", default="0.25,0.5",
        help="and these shares of the reference's sustained rate, measured first in each run",
    )  # fmt: skip
    parser.add_argument("--seconds", type=float, default=10)
    parser.add_argument("--runs", type=int, default=1, help="whole runs; medians across them")
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379/8")
    parser.add_argument("--profile", type=Path)
    parser.add_argument("--out", type=Path)
    parser.add_argument("--table", type=Path, help="print this results file as markdown, exit")
    parser.add_argument("--only", default="", help="comma-separated servers to run")
    parser.add_argument("--filters", action="store_true", help="also uncached GET with filters")
    parser.add_argument(
        "--online", action="store_true",
        help="only: the Redis service's uncached GET with impressions recorded and without, "
        "alternating servers (on, off, on, off), each at every rate",
    )  # fmt: skip
    parser.add_argument("--repeats", type=int, default=3, help="with --online: on/off pairs")
    parser.add_argument(
        "--workers", type=int, default=1, help="processes for the reference and Redis service"
    )
    args = parser.parse_args()
    if args.table:
        print(markdown(json.loads(args.table.read_text())))
        return
    if args.models_dir is None or args.checkpoint is None:
        parser.error("--models-dir and --checkpoint are needed to measure")
    work = Workload(args.models_dir)
    only = set(filter(None, args.only.split(",")))
    if args.online:
        results: dict = {"started": time.strftime("%FT%T")}
        rates = [float(r) for r in args.rates.split(",")]
        measure_online(args.models_dir, args.redis_url, work, rates, args.seconds, results,
                       args.repeats)  # fmt: skip
    elif args.runs == 1:
        results = one_run(args, work, only)
    else:
        runs: list[dict] = []
        for k in range(args.runs):
            print(f"--- run {k + 1} of {args.runs}", flush=True)
            runs.append(one_run(args, work, only))
            results = {"runs": runs, "medians": medians(runs)}
            if args.out:  # each run kept as it ends: a later failure loses only itself
                args.out.parent.mkdir(parents=True, exist_ok=True)
                args.out.write_text(json.dumps(results, indent=1) + "\n")
        print(medians_markdown(results))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(results, indent=1) + "\n")


if __name__ == "__main__":
    main()
