"""How cost grows with the data: synthetic catalogues from 10k to 1M users through the CLI.

    python scripts/bench_scale.py                       # 10k, 50k, 200k users (about 20 min)
    python scripts/bench_scale.py --sizes 10k 50k 200k 1m --work /tmp/cddae-scale
    python scripts/bench_scale.py --sizes 50k --train '{"negatives": 0}' --label full

`--config default` (the default) trains `cddae train --model cddae` with the shipped defaults
and two epochs; `--config pinned` with the model issue 9's figures were measured on.
`--train` overlays training options; `--label` names the row (results are kept by size/label).

For each size it generates (seeded, cached in --work) a generic CSV data set with profiles —
users in taste groups, Zipf popularity inside and across groups, ratings 1-5, so that a model
must learn who likes what to beat popularity — then runs, each as its own process:
`cddae train --model cddae` (evaluation and the production fit), `cddae export --promote`, and
`cddae serve`; it records wall time and peak RSS of each step, the bundle's size, the service's
time to ready, its RSS, and uncached GET latency one request at a time. It prints the table,
writes results.json and a plot next to them (--out).
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

SIZES = {  # users, items, interactions
    "10k": (10_000, 5_000, 500_000),
    "50k": (50_000, 20_000, 2_500_000),
    "200k": (200_000, 100_000, 10_000_000),
    "1m": (1_000_000, 100_000, 50_000_000),
}
GROUPS = 40
OCCUPATIONS = [f"job{k}" for k in range(21)]
GENRES = [f"genre{k}" for k in range(18)]
# The shipped defaults, two epochs (early stopping's patience no longer than that).
DEFAULT = {"train": {"epochs": 2, "patience": 2}}
# Issue 9's figures: two epochs; the loss over each batch's positives and 2,000 sampled items
# (sigmoid + BCE); batches of 256 users; a 200-wide model.
PINNED = {
    "model": {"hidden": [200], "corruption": 0.5, "l2": 0.05, "emphasis": 1.0, "rescale": True,
              "output": "sigmoid", "loss": "bce", "input_norm": False, "cold_start_rate": 0.0,
              "profile_norm": False, "side_weight": 1.0},
    "train": {"epochs": 2, "negatives": 2000, "batch_size": 256, "patience": 2, "lr": 1e-3},
}  # fmt: skip


def generate(folder: Path, users: int, items: int, interactions: int, seed: int = 0) -> Path:
    """A generic CSV data set with user and item profiles; written once, then reused."""
    done = folder / "ratings.csv"
    if done.exists():
        return folder
    import pandas as pd

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    group = rng.integers(0, GROUPS, users)
    item_group = rng.integers(0, GROUPS, items)
    popularity = 1.0 / np.arange(1, items + 1) ** 0.8  # Zipf over a shuffled catalogue
    popularity = popularity[rng.permutation(items)]
    popularity /= popularity.sum()
    activity = rng.lognormal(0, 1, users)
    activity /= activity.sum()
    u = rng.choice(users, interactions, p=activity)
    from_group = rng.random(interactions) < 0.7
    i = rng.choice(items, interactions, p=popularity)
    # In-group draws: an item of the user's group, by popularity within the group.
    by_group = np.argsort(item_group, kind="stable")
    starts = np.searchsorted(item_group[by_group], np.arange(GROUPS + 1))
    g = group[u[from_group]]
    sizes = starts[g + 1] - starts[g]
    pick = starts[g] + (rng.power(0.3, len(g)) * sizes).astype(np.int64).clip(0, sizes - 1)
    i[from_group] = by_group[pick]
    liked = item_group[i] == group[u]
    rating = np.where(liked, rng.choice([3, 4, 5], interactions, p=[0.1, 0.3, 0.6]),
                      rng.choice([1, 2, 3, 4, 5], interactions))  # fmt: skip
    frame = pd.DataFrame({"user": u, "item": i, "rating": rating,
                          "timestamp": 1_600_000_000 + np.arange(interactions)})  # fmt: skip
    frame.to_csv(folder / ".ratings.csv", index=False, chunksize=1_000_000)
    noise = rng.random(users) < 0.2
    pd.DataFrame({
        "user": np.arange(users),
        "gender": np.where((group % 2 == 0) ^ noise, "F", "M"),
        "age": 18 + (group * 7 + rng.integers(0, 6, users)) % 50,
        "occupation": np.array(OCCUPATIONS)[(group + noise * rng.integers(0, 21, users)) % 21],
    }).to_csv(folder / "users.csv", index=False)  # fmt: skip
    pd.DataFrame({
        "item": np.arange(items),
        "title": [f"Item {k}" for k in range(items)],
        "genres": [f"{GENRES[k % 18]}|{GENRES[(k * 7) % 18]}" for k in item_group],
        "year": 1950 + rng.integers(0, 70, items),
    }).to_csv(folder / "items.csv", index=False)  # fmt: skip
    os.replace(folder / ".ratings.csv", done)
    return folder


def run(command: list[str], log: Path) -> tuple[float, float]:
    """Run a command to the end; (wall seconds, peak RSS in GB) of that process."""
    started = time.perf_counter()
    with log.open("w") as out:
        process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT)
        _, status, usage = os.wait4(process.pid, 0)
    if os.waitstatus_to_exitcode(status) != 0:
        raise RuntimeError(f"{' '.join(command)} failed; see {log}")
    return time.perf_counter() - started, usage.ru_maxrss / 2**20


def measure_service(cddae: str, models: Path, requests: int) -> dict[str, float]:
    import httpx

    version = (models / "CURRENT").read_text().strip()
    with np.load(models / version / "arrays.npz") as arrays:
        users = arrays["user_ids"]
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    env = {**os.environ, "CDDAE_REDIS_URL": "", "CDDAE_INTERACTIONS_LOG": str(models / "i.jsonl")}
    started = time.perf_counter()
    server = subprocess.Popen(
        [cddae, "serve", "--models-dir", str(models), "--port", str(port), "--log-level", "error"],
        env=env,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        while True:
            try:
                if httpx.get(f"{url}/readyz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if server.poll() is not None or time.perf_counter() - started > 300:
                raise RuntimeError("the service did not become ready")
            time.sleep(0.05)
        ready = time.perf_counter() - started
        rng = np.random.default_rng(1)
        latencies = []
        with httpx.Client(base_url=url, timeout=10) as client:
            for user in rng.choice(users, min(requests, len(users)), replace=False):  # uncached
                begin = time.perf_counter()
                response = client.get(f"/users/{user}/recommendations", params={"n": 10})
                latencies.append((time.perf_counter() - begin) * 1e3)
                response.raise_for_status()
        status = Path(f"/proc/{server.pid}/status").read_text()
        rss = int(next(line for line in status.splitlines() if line.startswith("VmRSS")).split()[1])
    finally:
        server.terminate()
        server.wait(timeout=30)
    latencies.sort()
    return {
        "ready_s": ready,
        "service_rss_gb": rss / 2**20,
        "p50_ms": statistics.median(latencies),
        "p99_ms": latencies[int(0.99 * (len(latencies) - 1))],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", nargs="+", default=["10k", "50k", "200k"], choices=SIZES)
    parser.add_argument("--work", type=Path, default=Path("/tmp/cddae-scale"))
    parser.add_argument("--out", type=Path, default=Path("docs/scale"))
    parser.add_argument("--requests", type=int, default=500)
    parser.add_argument("--config", choices=["default", "pinned"], default="default")
    parser.add_argument("--train", type=json.loads, default={}, help="training options (JSON)")
    parser.add_argument("--label", default="", help="the row's name after the size")
    args = parser.parse_args()
    base = DEFAULT if args.config == "default" else PINNED
    config_options = {**base, "train": {**base["train"], **args.train}}
    label = args.label or args.config
    cddae = str(Path(sys.executable).parent / "cddae")
    args.out.mkdir(parents=True, exist_ok=True)
    results_path = args.out / "results.json"
    results = json.loads(results_path.read_text()) if results_path.exists() else {}
    for name in args.sizes:
        users, items, interactions = SIZES[name]
        work = args.work / name
        print(f"== {name}: {users:,} users × {items:,} items × {interactions:,} interactions")
        began = time.perf_counter()
        data = generate(work / "data", users, items, interactions)
        print(f"   data ready in {time.perf_counter() - began:.0f} s")
        config = work / "config.json"
        config.write_text(json.dumps(config_options))
        checkpoint, models = work / "checkpoint", work / "models"
        subprocess.run(["rm", "-rf", str(models)], check=True)
        train_s, train_gb = run(
            [cddae, "train", "--model", "cddae", "--data", str(data), "--config", str(config),
             "--output", str(checkpoint), "--quiet", "--json", str(work / "train.json")],
            work / "train.log",
        )  # fmt: skip
        print(f"   train {train_s:.0f} s, peak {train_gb:.2f} GB")
        export_s, export_gb = run(
            [cddae, "export", "--checkpoint", str(checkpoint), "--models-dir", str(models),
             "--promote"], work / "export.log",
        )  # fmt: skip
        version = (models / "CURRENT").read_text().strip()
        bundle_mb = sum(f.stat().st_size for f in (models / version).iterdir()) / 1e6
        print(f"   export {export_s:.0f} s, peak {export_gb:.2f} GB, bundle {bundle_mb:.0f} MB")
        service = measure_service(cddae, models, args.requests)
        _, _ = run(
            [cddae, "train", "--model", "pop", "--data", str(data), "--no-final-fit", "--quiet",
             "--json", str(work / "pop.json")], work / "pop.log",
        )  # fmt: skip
        popularity = json.loads((work / "pop.json").read_text())["metrics"]
        trained = json.loads((work / "train.json").read_text())
        results[f"{name}/{label}"] = {
            "config": config_options, "negatives": trained["params"].get("sampled_negatives"),
            "evaluation": trained.get("evaluation"),
            "users": users, "items": items, "interactions": interactions,
            "train_s": train_s, "train_peak_gb": train_gb,
            "fit_s": trained["fit_seconds"], "served_fit_s": trained["served"]["fit_seconds"],
            "P@10": trained["metrics"]["P"][9], "R@10": trained["metrics"]["R"][9],
            "pop_P@10": popularity["P"][9], "pop_R@10": popularity["R"][9],
            "export_s": export_s, "export_peak_gb": export_gb, "bundle_mb": bundle_mb,
            **service,
        }  # fmt: skip
        print(f"   service ready {service['ready_s']:.1f} s, RSS "
              f"{service['service_rss_gb']:.2f} GB, uncached p50/p99 {service['p50_ms']:.1f}/"
              f"{service['p99_ms']:.1f} ms; P@10 {trained['metrics']['P'][9]:.4f} (popularity "
              f"{popularity['P'][9]:.4f})")  # fmt: skip
        results_path.write_text(json.dumps(results, indent=2))
    print_table(results)
    plot(results, args.out / "scale.png")


def _pop(r: dict) -> str:
    if r["pop_P@10"] != r["pop_P@10"]:  # NaN: not measured
        return "not run"
    return f"{r['pop_P@10']:.4f} / {r['pop_R@10']:.4f}"


def print_table(results: dict) -> None:
    print(
        "| size | users × items × interactions | train s (peak GB) | P@10 / R@10 (popularity) "
        "| export s (peak GB) | bundle MB | ready s | service RSS GB | uncached p50 / p99 ms |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for name, r in sorted(results.items(), key=lambda kv: kv[1]["interactions"]):
        print(f"| {name} | {r['users']:,} × {r['items']:,} × {r['interactions']:,} | "
              f"{r['train_s']:.0f} ({r['train_peak_gb']:.1f}) | {r['P@10']:.4f} / {r['R@10']:.4f} "
              f"({_pop(r)}) | {r['export_s']:.0f} "
              f"({r['export_peak_gb']:.1f}) | {r['bundle_mb']:.0f} | "
              f"{r['ready_s']:.1f} | {r['service_rss_gb']:.2f} | "
              f"{r['p50_ms']:.1f} / {r['p99_ms']:.1f} |")  # fmt: skip


def plot(results: dict, path: Path) -> None:
    """Time and memory against interactions, one line per label (configuration)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = sorted({key.partition("/")[2] or "pinned" for key in results})
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    for label in labels:
        rows = sorted((r for key, r in results.items() if (key.partition("/")[2] or "pinned")
                       == label), key=lambda r: r["interactions"])  # fmt: skip
        x = [r["interactions"] / 1e6 for r in rows]
        left.plot(x, [r["train_s"] for r in rows], "o-", label=f"train, {label}")
        right.plot(x, [r["train_peak_gb"] for r in rows], "o-", label=f"train peak RSS, {label}")
        right.plot(x, [r["service_rss_gb"] for r in rows], "s--", label=f"service RSS, {label}")
    left.set(xlabel="interactions (millions)", ylabel="seconds (evaluation + production fit)",
             xscale="log", yscale="log", title="train time")  # fmt: skip
    left.legend(fontsize=7)
    right.set(xlabel="interactions (millions)", ylabel="GB", xscale="log", yscale="log",
              title="memory")  # fmt: skip
    right.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


if __name__ == "__main__":
    main()
