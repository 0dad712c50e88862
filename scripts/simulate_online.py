"""An online experiment on loopback: two versions, simulated users, the counts checked exactly.

    python scripts/simulate_online.py [--data ../shared/data/ml-100k] [--work DIR] [--seed 0] \\
        [--share 0.5] [--n 10] [--redis-url redis://127.0.0.1:6379/7] [--out docs/online]

Why: offline P@10 is a proxy, and the online figures (docs/ONLINE.md) are only worth reading if
they count what happened and rank versions as the offline metrics do. Here the "future" is
known: a seeded share of each user's positives (rating ≥ the project's threshold, split by
the project's own rule) is held out, both versions are trained on the rest, and every user is
then served once by a real server and "clicks" the held-out positives that appear in the list.

1. Split (training.data.splits, "random", 20%) and write the training part in the layout the
   source came in (RecBole atomic files or GroupLens's), profiles copied unchanged.
2. `cddae train` popularity and CDDAE (project defaults) on it, `cddae export` both into one
   models folder; popularity is promoted (the control) and CDDAE runs as the candidate for
   `--share` of users: a new model is tried against the one in service, never the reverse.
3. `cddae serve` on loopback; the experiment is started while it serves (`cddae models
   experiment start`), and the script waits until /readyz names it.
4. Every user: GET its list; one POST with the list's recommendation_id for the held-out
   positives in it, if any. What was sent is counted per variant.
5. Checks (exit 1 if any fails): /stats/online and `cddae models experiment status` count
   exactly what was sent; every answer's variant is the user's hash assignment; the
   candidate's share of users is within 2 points of --share; the online rates rank the
   versions as the offline rate ("a top-N list holds ≥ 1 held-out positive", all users, the
   bundle scored in process as the service scores it) does.
6. Into --out: simulation.json, simulation.png, `cddae report online`'s report-online.png and
   .json, and a screenshot of /ui/ (ui-simulation.png) when the server has that page.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import math
import os
import re
import secrets
import shlex
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import httpx
import numpy as np

from service.bundle import read_manifest
from service.experiment import CANDIDATE, CONTROL, Experiment, read_experiment
from service.serving.onnx_model import Model
from service.state.stats import difference, wilson
from training.data.implicit import DEFAULT_THRESHOLD, ImplicitDataset
from training.data.loaders import RawDataset, load_dataset
from training.data.splits import split
from training.evaluation.metrics import metrics_from_hits

REPO = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
HOLDOUT_FRACTION = 0.2  # as the project's own evaluation protocol holds out
SPLIT_TOLERANCE = 0.02  # the goal: the candidate's share of users within 2 points of --share
READY_SECONDS = 120.0  # a busy 2-core machine slows the start, never the verdict
SETTLE_SECONDS = 30.0  # impressions are recorded in the background: wait until counts rest
VARIANTS = (CONTROL, CANDIDATE)
CHROMIUM_FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                  "--window-size=1280,1600")  # fmt: skip


# --- time and progress ------------------------------------------------------------------------


class Clock:
    """The run's budget: every wait and subprocess gets what is left of it, so a stuck step
    ends the run with a message instead of hanging it."""

    def __init__(self, budget: float):
        self.start = time.monotonic()
        self.end = self.start + budget

    def left(self, cap: float | None = None) -> float:
        left = self.end - time.monotonic()
        if left <= 0:
            raise TimeoutError("the run's time budget (--timeout) is spent")
        return left if cap is None else min(left, cap)

    def log(self, message: str) -> None:
        elapsed = time.monotonic() - self.start
        print(f"[{int(elapsed // 60):02d}:{elapsed % 60:04.1f}] {message}", flush=True)


def cddae(*words: str | Path) -> list[str]:
    """A `cddae` command line, the console script installed beside this Python."""
    return [str(BIN / "cddae"), *map(str, words)]


def run(command: list[str], env: dict[str, str], clock: Clock, log: Path) -> str:
    """A CLI step as users run it; its output kept in `log`, shown if it fails."""
    try:
        done = subprocess.run(
            command, env=env, capture_output=True, text=True, timeout=clock.left(), check=False
        )
    except subprocess.TimeoutExpired as error:
        raise TimeoutError(f"{shlex.join(command[:3])} ran out of time") from error
    log.parent.mkdir(parents=True, exist_ok=True)
    log.write_text(f"$ {shlex.join(command)}\n{done.stdout}{done.stderr}")
    if done.returncode != 0:
        raise RuntimeError(
            f"{shlex.join(command)} exited {done.returncode}:\n"
            f"{done.stdout[-2000:]}{done.stderr[-2000:]}"
        )
    return done.stdout


# --- 1. the held-out future ------------------------------------------------------------------


@dataclass
class Holdout:
    train_dir: Path
    users: list[str]  # every user of the data, in the loader's order
    held: dict[str, set[str]]  # user -> held-out positive item ids (the future clicks)
    summary: dict[str, Any]


def split_holdout(source: Path, dest: Path, fraction: float, seed: int) -> Holdout:
    """Hold out `fraction` of each user's positives with the project's own split and write
    the rest where `cddae train --data` reads it."""
    raw = load_dataset(source)
    data = ImplicitDataset.from_raw(raw, DEFAULT_THRESHOLD)
    parts = split(data.positives, data.timestamps, "random", fraction, seed)
    held: dict[str, set[str]] = {}
    cells = parts.test.tocoo()
    for user, item in zip(cells.row.tolist(), cells.col.tolist(), strict=True):
        held.setdefault(str(data.user_ids[user]), set()).add(str(data.item_ids[item]))
    removed = write_training_part(raw, dest, held)
    kept = load_dataset(dest)
    expected_rows = len(raw.interactions) - removed
    if len(kept.interactions) != expected_rows or (
        len(kept.user_profiles),
        len(kept.item_profiles),
    ) != (len(raw.user_profiles), len(raw.item_profiles)):
        raise RuntimeError(f"{dest}: the training part does not read back as written")
    summary = {
        "source": str(source),
        "layout": raw.source.split(":", 1)[0],
        "threshold": DEFAULT_THRESHOLD,
        "protocol": "random",
        "fraction": fraction,
        "seed": seed,
        "users": data.n_users,
        "items": data.n_items,
        "ratings": len(raw.interactions),
        "positives": int(data.positives.nnz),
        "held_out_positives": int(parts.test.nnz),
        "users_with_held_out": len(held),
        "training_rows": len(kept.interactions),
    }
    return Holdout(dest, [str(u) for u in data.user_ids], held, summary)


def write_training_part(raw: RawDataset, dest: Path, held: dict[str, set[str]]) -> int:
    """The interactions file the loader read, minus every row of a held-out (user, item)
    pair, beside unchanged copies of the profile files; the rows removed."""
    layout, folder = raw.source.split(":", 1)
    folder_path = Path(folder)
    if layout == "recbole":
        inter = sorted(folder_path.glob("*.inter"))[0]
        files = [inter, inter.with_suffix(".user"), inter.with_suffix(".item")]
    elif layout == "grouplens":
        inter = folder_path / "u.data"
        files = [inter, folder_path / "u.user", folder_path / "u.item"]
    else:
        raise ValueError(f"{raw.source}: only the RecBole and GroupLens layouts are split here")
    dest.mkdir(parents=True, exist_ok=True)
    for path in files[1:]:
        if path.exists():
            shutil.copy2(path, dest / path.name)
    return _filter_rows(inter, dest / inter.name, held, header=layout == "recbole")


def _filter_rows(source: Path, target: Path, held: dict[str, set[str]], header: bool) -> int:
    """Copy tab-separated rows, leaving out held-out pairs; the user and item columns found by
    name in a RecBole header (GroupLens's u.data: the first two)."""
    removed = 0
    with source.open(encoding="utf-8") as inp, target.open("w", encoding="utf-8") as out:
        columns = (0, 1)
        if header:
            line = inp.readline()
            names = [c.split(":", 1)[0] for c in line.rstrip("\r\n").split("\t")]
            columns = (names.index("user_id"), names.index("item_id"))
            out.write(line)
        for line in inp:
            parts = line.rstrip("\r\n").split("\t")
            if len(parts) > max(columns) and parts[columns[1]] in held.get(parts[columns[0]], ()):
                removed += 1
                continue
            out.write(line)
    return removed


# --- 2. two versions ------------------------------------------------------------------------


def train_and_export(
    kind: str,
    holdout: Holdout,
    work: Path,
    models: Path,
    seed: int,
    env: dict[str, str],
    clock: Clock,
    promote: bool,
) -> str:
    """`cddae train` (evaluation, then the production fit on all of the training part) and
    `cddae export`; the new version's name."""
    checkpoint = work / "runs" / kind
    started = time.monotonic()
    command = cddae("train", "--model", kind, "--data", holdout.train_dir, "--seed", seed)
    command += ["--output", str(checkpoint), "--quiet", "--device", "cpu"]
    run(command, env, clock, work / "logs" / f"train-{kind}.log")
    clock.log(f"trained {kind} in {time.monotonic() - started:.0f} s")
    command = cddae("export", "--checkpoint", checkpoint, "--models-dir", models)
    command += ["--promote"] if promote else []
    out = run(command, env, clock, work / "logs" / f"export-{kind}.log")
    found = re.search(r"wrote bundle (\S+) to", out)
    if found is None:
        raise RuntimeError(f"cddae export did not name the version it wrote:\n{out}")
    clock.log(f"exported {kind} as {found.group(1)}" + (", promoted" if promote else ""))
    return found.group(1)


# --- the offline figure: the same rate, computed without the server --------------------------


@dataclass
class Offline:
    version: str
    kind: str
    lists: dict[str, list[str]]  # every user's top-n, as the service would answer it
    figures: dict[str, Any]


def offline_figures(models: Path, version: str, holdout: Holdout, n: int) -> Offline:
    """Each user's top-n from the bundle through onnxruntime, one user per call and ranked by
    the service's own rule (its history as input, everything seen excluded), so that the
    offline rate is the online one's definition: the share of ALL users whose list holds at
    least one held-out positive. P@n and R@n (training.evaluation.metrics) on the users with
    held-out positives, for comparison with the usual offline figures."""
    model = Model.load(models / version)
    ids = model.bundle.item_ids
    lists: dict[str, list[str]] = {}
    for user in holdout.users:
        index = model.user_index.get(user)
        if index is None:
            raise RuntimeError(f"user {user} is not in bundle {version}")
        query = model.known_user(index)
        scores = None if model.source(query) == "popularity" else model.scores([query])[0]
        ranked = model.rank(query, scores, n, query.excluded())
        lists[user] = [str(ids[i]) for i in ranked.indices.tolist()]
    hit_users = sum(bool(set(lists[u]) & holdout.held.get(u, set())) for u in holdout.users)
    evaluated = [u for u in holdout.users if holdout.held.get(u)]
    hits = np.array([[i in holdout.held[u] for i in _padded(lists[u], n)] for u in evaluated])
    relevant = np.array([len(holdout.held[u]) for u in evaluated], dtype=np.float64)
    indices = np.array(
        [[model.item_index.get(i, -1) for i in _padded(lists[u], n)] for u in evaluated]
    )
    metrics = metrics_from_hits(hits, relevant, indices, model.n_items)
    figures = {
        "users": len(holdout.users),
        "lists_with_held_out": hit_users,
        "rate": hit_users / len(holdout.users),
        "ci95": list(wilson(hit_users, len(holdout.users))),
        "evaluated_users": len(evaluated),
        f"P@{n}": float(metrics["P"][n - 1]),
        f"R@{n}": float(metrics["R"][n - 1]),
        f"NDCG@{n}": float(metrics["NDCG"][n - 1]),
    }
    kind = read_manifest(models / version)["model"]["kind"]
    return Offline(version, kind, lists, figures)


def _padded(items: list[str], n: int) -> list[str]:
    return items + [""] * (n - len(items))


# --- 3. a real server -----------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def store_env(redis_url: str | None, work: Path) -> dict[str, str]:
    """What tells the service and the CLI where counts live; the caller's own CDDAE_*
    settings are dropped so that nothing outside the run changes it."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("CDDAE_")}
    env["CDDAE_REDIS_URL"] = redis_url or ""
    env["CDDAE_INTERACTIONS_LOG"] = str(work / "store" / "interactions.jsonl")
    return env


def store_name(redis_url: str | None) -> str:
    return f"Redis database {redis_url}" if redis_url else "file store"


def fresh_store(redis_url: str | None, work: Path) -> None:
    """Counts from zero: an empty folder for the file store; for Redis, a flush of the one
    database the URL names explicitly (never database 0 by default)."""
    shutil.rmtree(work / "store", ignore_errors=True)
    (work / "store").mkdir(parents=True)
    if redis_url:
        import redis

        check_redis_url(redis_url)
        redis.Redis.from_url(redis_url, socket_timeout=5).flushdb()


def check_redis_url(redis_url: str) -> None:
    """Refuse a URL that names no database, or database 0: it is flushed (checked before the
    minutes of training, so a typo fails at once)."""
    database = urlparse(redis_url).path.strip("/")
    if not database.isdigit() or database == "0":
        raise SystemExit(f"--redis-url must name a database of its own (…/7): {redis_url}")


@contextlib.contextmanager
def serving(models: Path, env: dict[str, str], work: Path, clock: Clock) -> Iterator[str]:
    """`cddae serve` on loopback until /readyz answers 200; always stopped afterwards."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log = (work / "logs" / "server.log").open("w")
    command = cddae("serve", "--models-dir", models, "--port", port, "--log-level", "warning")
    process = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + clock.left(READY_SECONDS)
        while not _ready(url):
            if process.poll() is not None:
                raise RuntimeError(f"the server exited with {process.returncode}; see {log.name}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"the server was not ready in {READY_SECONDS:.0f} s")
            time.sleep(0.2)
        yield url
    finally:
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        log.close()


def _ready(url: str) -> bool:
    with contextlib.suppress(httpx.HTTPError):
        return httpx.get(f"{url}/readyz", timeout=5).status_code == 200
    return False


def start_experiment(
    models: Path,
    candidate: str,
    share: float,
    url: str,
    env: dict[str, str],
    work: Path,
    clock: Clock,
) -> Experiment:
    """`cddae models experiment start` beside the running server, then wait until the
    server follows the file (it rereads it every reload interval)."""
    command = cddae("models", "experiment", "start", candidate, "--share", share)
    run([*command, "--models-dir", str(models)], env, clock, work / "logs" / "experiment.log")
    experiment = read_experiment(models)
    if experiment is None:
        raise RuntimeError("the experiment file is missing after `experiment start`")
    deadline = time.monotonic() + clock.left(60)
    while time.monotonic() < deadline:
        detail = httpx.get(f"{url}/readyz", timeout=5).json().get("detail", {})
        if (detail.get("experiment") or {}).get("id") == experiment.id:
            return experiment
        time.sleep(0.2)
    raise TimeoutError(f"the server did not take up experiment {experiment.id}")


# --- 4. users -------------------------------------------------------------------------------


@dataclass
class Sent:
    """What the simulation sent, counted on its side of the wire."""

    lists: dict[str, int] = field(default_factory=lambda: dict.fromkeys(VARIANTS, 0))
    clicked: dict[str, int] = field(default_factory=lambda: dict.fromkeys(VARIANTS, 0))
    by_version: dict[str, list[int]] = field(default_factory=dict)  # version -> [lists, clicked]
    served: dict[str, dict[str, Any]] = field(default_factory=dict)  # user -> what it got
    problems: list[str] = field(default_factory=list)


def simulate(url: str, holdout: Holdout, n: int, token: str, clock: Clock) -> Sent:
    """Each user once: the list, then one click POST (with the list's id) for the held-out
    positives in it. Sequential: the counts, not the throughput, are under test."""
    sent = Sent()
    headers = {"Authorization": f"Bearer {token}"}
    with httpx.Client(base_url=url, timeout=10, headers=headers) as client:
        for done, user in enumerate(holdout.users, start=1):
            clock.left()
            answer = client.get(f"/users/{user}/recommendations", params={"n": n})
            answer.raise_for_status()
            body = answer.json()
            items = [item["item_id"] for item in body["items"]]
            variant, version = body["variant"], body["model_version"]
            clicks = [item for item in items if item in holdout.held.get(user, set())]
            if variant not in VARIANTS:
                sent.problems.append(f"user {user}: variant {variant!r}")
                continue
            sent.lists[variant] += 1
            sent.by_version.setdefault(version, [0, 0])[0] += 1
            if clicks:
                _click(client, user, clicks, body["recommendation_id"], sent)
                sent.clicked[variant] += 1
                sent.by_version[version][1] += 1
            sent.served[user] = {
                "variant": variant,
                "version": version,
                "items": items,
                "clicks": clicks,
            }
            if done % 200 == 0 or done == len(holdout.users):
                clock.log(
                    f"users {done}/{len(holdout.users)}: lists {sent.lists}, clicked {sent.clicked}"
                )
    return sent


def _click(client: httpx.Client, user: str, items: list[str], list_id: str, sent: Sent) -> None:
    answer = client.post(
        f"/users/{user}/interactions", json={"items": items, "recommendation_id": list_id}
    )
    answer.raise_for_status()
    if answer.json().get("attributed_to") != [list_id]:
        sent.problems.append(f"user {user}: attributed to {answer.json().get('attributed_to')}")


# --- 5. what the service counted ------------------------------------------------------------


def settled_stats(url: str, token: str, clock: Clock) -> tuple[dict[str, Any], float]:
    """/stats/online once two reads a second apart agree (impressions are written in the
    background); the seconds waited. Stability, not the expected figures, ends the wait, so
    a count that is off stays off."""
    started = time.monotonic()
    headers = {"Authorization": f"Bearer {token}"}
    previous = None
    deadline = started + clock.left(SETTLE_SECONDS)
    while True:
        answer = httpx.get(f"{url}/stats/online", headers=headers, timeout=10)
        answer.raise_for_status()
        stats = answer.json()
        if stats == previous or time.monotonic() > deadline:
            return stats, time.monotonic() - started
        previous = stats
        time.sleep(1.0)


def cli_status(models: Path, env: dict[str, str], work: Path, clock: Clock) -> tuple[str, dict]:
    """`cddae models experiment status` as an operator runs it, and its variant rows parsed."""
    command = cddae("models", "experiment", "status", "--models-dir", models)
    out = run(command, env, clock, work / "logs" / "experiment-status.log")
    rows = {
        m.group(1): {"lists": int(m.group(2)), "clicked_lists": int(m.group(3))}
        for m in re.finditer(r"^(control|candidate)\s+(\d+)\s+(\d+)\s", out, re.MULTILINE)
    }
    return out, rows


def cli_report(models: Path, out_dir: Path, env: dict[str, str], work: Path, clock: Clock) -> str:
    """`cddae report online`: its table, and its plot and JSON written into the outputs."""
    command = cddae("report", "online", "--models-dir", models)
    command += ["--plot", str(out_dir / "report-online.png")]
    command += ["--json", str(out_dir / "report-online.json")]
    return run(command, env, clock, work / "logs" / "report-online.log")


def screenshot_ui(url: str, token: str, out: Path, work: Path, clock: Clock) -> dict[str, Any]:
    """/ui/ in headless Chromium, when the server has the page. With an admin token set the
    page wants a header or a login cookie, which a command-line screenshot cannot send: the
    page is then fetched with the token and rendered from a file whose <base> points at the
    server (the stylesheet still comes from it)."""
    out.unlink(missing_ok=True)  # never a screenshot of an earlier run passed off as this one's
    headers = {"Authorization": f"Bearer {token}"}
    page = httpx.get(f"{url}/ui/", headers=headers, timeout=10)
    if page.status_code != 200:
        return {"taken": False, "why": f"GET /ui/ answered {page.status_code}: no page yet"}
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        return {"taken": False, "why": "chromium is not installed (apt-get install chromium)"}
    target = f"{url}/ui/"
    if httpx.get(target, timeout=10).status_code != 200:
        snapshot = work / "ui-snapshot.html"
        snapshot.write_text(page.text.replace("<head>", f'<head><base href="{url}/ui/">', 1))
        target = snapshot.as_uri()
    profile = tempfile.mkdtemp(prefix="chromium-", dir=work)
    command = [chromium, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", f"--screenshot={out}"]
    try:
        subprocess.run([*command, target], capture_output=True, timeout=clock.left(90), check=True)
    except (subprocess.SubprocessError, OSError) as error:
        return {"taken": False, "why": f"chromium failed: {error}"}
    return {
        "taken": out.exists(),
        "file": out.name,
        "page": f"{url}/ui/",
        "rendered_from": "the server"
        if target.startswith("http")
        else "the page fetched with the admin token",
    }


# --- checks, figures, outputs ---------------------------------------------------------------


def online_figures(sent: Sent, experiment: Experiment, versions: dict[str, str]) -> dict:
    """Both variants' rates with Wilson intervals and the candidate − control difference with
    Newcombe's interval, from the simulation's own counts (service.state.stats)."""
    figures: dict[str, Any] = {}
    for variant in VARIANTS:
        lists, clicked = sent.lists[variant], sent.clicked[variant]
        figures[variant] = {
            "version": versions[variant],
            "lists": lists,
            "clicked_lists": clicked,
            "rate": clicked / lists if lists else 0.0,
            "ci95": list(wilson(clicked, lists)),
        }
    value, ci = difference(
        sent.clicked[CANDIDATE], sent.lists[CANDIDATE], sent.clicked[CONTROL], sent.lists[CONTROL]
    )
    figures["difference"] = {"value": value, "ci95": list(ci)}
    users = sum(sent.lists.values())
    figures["candidate_share"] = sent.lists[CANDIDATE] / users if users else 0.0
    figures["share"] = experiment.share
    # One standard deviation of the observed share by chance alone (binomial, one list each):
    # how strict the 2-point tolerance is for this many users.
    figures["share_sd"] = math.sqrt(experiment.share * (1 - experiment.share) / max(users, 1))
    return figures


def expected_from_offline(sent: Sent, offline: dict[str, Offline], holdout: Holdout) -> dict:
    """What each variant's counts would be had every user been served its offline list, and
    how many served lists are exactly the offline ones (the two paths share the rule)."""
    expected = {v: {"lists": 0, "clicked_lists": 0} for v in VARIANTS}
    same = 0
    for user, got in sent.served.items():
        reference = offline[got["variant"]].lists[user]
        same += reference == got["items"]
        expected[got["variant"]]["lists"] += 1
        expected[got["variant"]]["clicked_lists"] += bool(
            set(reference) & holdout.held.get(user, set())
        )
    return {"variants": expected, "served_lists_equal_offline": same, "lists": len(sent.served)}


def checks(
    sent: Sent,
    stats: dict,
    status_rows: dict,
    experiment: Experiment,
    offline: dict[str, Offline],
    online: dict,
    holdout: Holdout,
) -> list[dict[str, Any]]:
    """Each goal as (name, passed, what was seen)."""
    counted = {
        v: {k: stats["experiment"]["variants"][v][k] for k in ("lists", "clicked_lists")}
        for v in VARIANTS
    }
    ours = {v: {"lists": sent.lists[v], "clicked_lists": sent.clicked[v]} for v in VARIANTS}
    by_version = {v: [row["lists"], row["clicked_lists"]] for v, row in stats["versions"].items()}
    wrong_arm = [
        u
        for u, got in sent.served.items()
        if got["variant"] != experiment.variant(u)
        or got["version"] != offline[got["variant"]].version
    ]
    share, observed = experiment.share, online["candidate_share"]
    offline_order = _order(offline[CANDIDATE].figures["rate"], offline[CONTROL].figures["rate"])
    online_order = _order(online[CANDIDATE]["rate"], online[CONTROL]["rate"])
    return [
        _check(
            "every user served once, every click attributed to its list",
            not sent.problems and len(sent.served) == len(holdout.users),
            f"{len(sent.served)} of {len(holdout.users)} users; problems: "
            f"{sent.problems[:5] or 'none'}",
        ),
        _check(
            "/stats/online experiment counts equal what was sent",
            counted == ours,
            f"counted {counted}, sent {ours}",
        ),
        _check(
            "/stats/online per-version counts equal what was sent",
            by_version == sent.by_version,
            f"counted {by_version}, sent {sent.by_version}",
        ),
        _check(
            "`cddae models experiment status` prints the same counts",
            status_rows == ours,
            f"printed {status_rows}",
        ),
        _check(
            "each answer's variant and version are the user's hash assignment",
            not wrong_arm,
            f"{len(wrong_arm)} answers differ: {wrong_arm[:5]}",
        ),
        _check(
            f"candidate share of users within {100 * SPLIT_TOLERANCE:.0f} points of --share",
            abs(observed - share) <= SPLIT_TOLERANCE,
            f"{sent.lists[CANDIDATE]} of {sum(sent.lists.values())} users = "
            f"{observed:.2%} (share {share:.0%}, off by {100 * (observed - share):+.2f} "
            f"points; one SD by chance {100 * online['share_sd']:.2f} points)",
        ),
        _check(
            "online rates rank the versions as the offline rate does",
            offline_order == online_order and online_order != "=",
            f"offline candidate {offline_order} control, online candidate {online_order} control",
        ),
    ]


def _order(a: float, b: float) -> str:
    return ">" if a > b else "<" if a < b else "="


def _check(name: str, passed: bool, seen: str) -> dict[str, Any]:
    return {"check": name, "passed": bool(passed), "seen": seen}


def plot(offline: dict[str, Offline], online: dict, n: int, path: Path) -> None:
    """Offline and online rate per version, side by side, with 95% Wilson intervals."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7.5, 4.5))
    for x, variant in enumerate(VARIANTS):
        off, on = offline[variant].figures, online[variant]
        for dx, figures, label, colour in (
            (-0.12, off, "offline (all users)", "tab:blue"),
            (0.12, on, "online (its variant)", "tab:orange"),
        ):
            rate, (lo, hi) = figures["rate"], figures["ci95"]
            ax.errorbar(
                x + dx,
                rate,
                yerr=[[rate - lo], [hi - rate]],
                fmt="o",
                capsize=6,
                color=colour,
                label=label if x == 0 else None,
            )
            ax.annotate(
                f"{rate:.1%}",
                (x + dx, hi),
                textcoords="offset points",
                xytext=(0, 4),
                ha="center",
                fontsize=8,
            )
        ax.annotate(
            f"P@{n} {off[f'P@{n}']:.3f}, R@{n} {off[f'R@{n}']:.3f}",
            (x, 0),
            textcoords="offset points",
            xytext=(0, 6),
            ha="center",
            fontsize=8,
            color="dimgray",
        )
    ax.set_xticks(
        range(len(VARIANTS)),
        [f"{v}: {offline[v].kind}\n{offline[v].version}" for v in VARIANTS],
        fontsize=8,
    )
    ax.set_xlim(-0.6, len(VARIANTS) - 0.4)
    ax.set_ylim(0, min(1.0, max(o["ci95"][1] for o in (online[v] for v in VARIANTS)) * 1.25))
    ax.set_ylabel(f"share of lists (top {n}) with ≥ 1 held-out positive")
    diff = online["difference"]
    ax.set_title(
        f"Loopback experiment: candidate − control {100 * diff['value']:+.1f} points "
        f"[{100 * diff['ci95'][0]:+.1f}, {100 * diff['ci95'][1]:+.1f}]",
        fontsize=10,
    )
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=8, loc="upper left")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


def git_state() -> dict[str, Any]:
    """The commit the run was made from, and whether the tree had changes on top of it."""

    def git(*words: str) -> str:
        done = subprocess.run(["git", "-C", str(REPO), *words], capture_output=True, text=True)
        return done.stdout.strip()

    return {"commit": git("rev-parse", "HEAD"), "dirty": bool(git("status", "--porcelain"))}


def summary_lines(result: dict[str, Any]) -> list[str]:
    """The table the run ends with: each variant's offline and online figures, then checks."""
    n = result["n"]
    lines = [
        f"{'variant':<10}{'model':<7}{'offline rate':>13}{f'P@{n}':>8}{f'R@{n}':>8}"
        f"{'lists':>7}{'clicked':>8}{'online rate':>12}  95% interval"
    ]
    for variant in VARIANTS:
        off, on = result["offline"][variant], result["online"][variant]
        lo, hi = on["ci95"]
        lines.append(
            f"{variant:<10}{off['kind']:<7}{off['rate']:>13.2%}{off[f'P@{n}']:>8.4f}"
            f"{off[f'R@{n}']:>8.4f}{on['lists']:>7}{on['clicked_lists']:>8}"
            f"{on['rate']:>12.2%}  [{lo:.2%}, {hi:.2%}]"
        )
    diff = result["online"]["difference"]
    lines.append(
        f"candidate − control: {100 * diff['value']:+.2f} points, 95% interval "
        f"[{100 * diff['ci95'][0]:+.2f}, {100 * diff['ci95'][1]:+.2f}]"
    )
    lines += [
        f"{'PASS' if c['passed'] else 'FAIL'}  {c['check']}: {c['seen']}" for c in result["checks"]
    ]
    return lines


# --- the run --------------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data" / "ml-100k")
    parser.add_argument(
        "--work",
        type=Path,
        help="scratch folder, kept (default: a new temporary one, removed after a run that "
        "finishes)",
    )
    parser.add_argument("--seed", type=int, default=0, help="the split's and training's seed")
    parser.add_argument("--share", type=float, default=0.5, help="the candidate's share of users")
    parser.add_argument("--n", type=int, default=10, help="list length")
    parser.add_argument(
        "--redis-url",
        help="count in this Redis database (flushed first; it "
        "must name one, e.g. redis://127.0.0.1:6379/7); default: the file store",
    )
    parser.add_argument("--out", type=Path, default=REPO / "docs" / "online")
    parser.add_argument("--timeout", type=float, default=1800, help="seconds for the whole run")
    return parser.parse_args(argv)


def simulate_run(args: argparse.Namespace, work: Path, clock: Clock) -> dict[str, Any]:
    """Every step in order; the result as simulation.json holds it."""
    env = store_env(args.redis_url, work)
    clock.log(f"splitting {args.data}: {HOLDOUT_FRACTION:.0%} of each user's positives held out")
    holdout = split_holdout(args.data, work / "data" / "ml-100k", HOLDOUT_FRACTION, args.seed)
    clock.log(
        f"{holdout.summary['held_out_positives']} held-out positives of "
        f"{holdout.summary['users_with_held_out']} users; training part in "
        f"{holdout.train_dir}"
    )
    models = work / "models"
    versions = {
        CONTROL: train_and_export(
            "pop", holdout, work, models, args.seed, env, clock, promote=True
        ),
        CANDIDATE: train_and_export(
            "cddae", holdout, work, models, args.seed, env, clock, promote=False
        ),
    }
    offline = {v: offline_figures(models, versions[v], holdout, args.n) for v in VARIANTS}
    for variant, off in offline.items():
        clock.log(
            f"offline {variant} ({off.kind}): rate {off.figures['rate']:.2%}, "
            f"P@{args.n} {off.figures[f'P@{args.n}']:.4f}"
        )
    fresh_store(args.redis_url, work)
    token = secrets.token_hex(16)
    env["CDDAE_ADMIN_TOKEN"] = token
    env["CDDAE_RELOAD_INTERVAL_SECONDS"] = "0.5"
    with serving(models, env, work, clock) as url:
        clock.log(f"server ready at {url}, counting in the {store_name(args.redis_url)}")
        experiment = start_experiment(
            models, versions[CANDIDATE], args.share, url, env, work, clock
        )
        clock.log(
            f"experiment {experiment.id} in effect: candidate {experiment.candidate} for "
            f"{experiment.share:.0%} of users, control {experiment.control}"
        )
        sent = simulate(url, holdout, args.n, token, clock)
        stats, waited = settled_stats(url, token, clock)
        clock.log(f"/stats/online settled after {waited:.1f} s")
        status_text, status_rows = cli_status(models, env, work, clock)
        report_text = cli_report(models, args.out, env, work, clock)
        ui = screenshot_ui(url, token, args.out / "ui-simulation.png", work, clock)
        clock.log("ui: " + (f"screenshot {ui['file']}" if ui["taken"] else ui["why"]))
    clock.log("server stopped")
    online = online_figures(sent, experiment, versions)
    result = {
        "command": shlex.join([Path(sys.executable).name, *sys.argv]),
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "git": git_state(),
        "store": store_name(args.redis_url),
        "n": args.n,
        "data": holdout.summary,
        "experiment": {
            "id": experiment.id,
            "control": experiment.control,
            "candidate": experiment.candidate,
            "share": experiment.share,
            "started": experiment.started,
            "why": "popularity is in service (control) and CDDAE is the new model "
            "tried on a share of users (candidate), as a release would",
        },
        "offline": {
            v: {"version": o.version, "kind": o.kind, **o.figures} for v, o in offline.items()
        },
        "online": online,
        "online_expected_from_offline_lists": expected_from_offline(sent, offline, holdout),
        "stats_online": stats,
        "stats_settle_seconds": round(waited, 2),
        "experiment_status": status_text,
        "report_online": report_text,
        "ui": ui,
        "seconds": round(time.monotonic() - clock.start, 1),
    }
    result["checks"] = checks(sent, stats, status_rows, experiment, offline, online, holdout)
    plot(offline, online, args.n, args.out / "simulation.png")
    return result


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if not 0 < args.share < 1:
        raise SystemExit("--share must be between 0 and 1")
    if args.redis_url:
        check_redis_url(args.redis_url)
    clock = Clock(args.timeout)
    args.out = args.out.resolve()
    args.out.mkdir(parents=True, exist_ok=True)
    work = args.work.resolve() if args.work else Path(tempfile.mkdtemp(prefix="cddae-sim-"))
    work.mkdir(parents=True, exist_ok=True)
    clock.log(f"work folder {work}; outputs into {args.out}")
    try:
        result = simulate_run(args, work, clock)
    except BaseException:
        clock.log(f"the run stopped; its logs are in {work / 'logs'}")
        raise
    if args.work is None:
        shutil.rmtree(work, ignore_errors=True)
    (args.out / "simulation.json").write_text(json.dumps(result, indent=2) + "\n")
    for line in summary_lines(result):
        print(line)
    passed = all(c["passed"] for c in result["checks"])
    clock.log(
        f"{'all checks passed' if passed else 'a check FAILED'}; "
        f"{args.out / 'simulation.json'}, {args.out / 'simulation.png'}"
    )
    return 0 if passed else 1


if __name__ == "__main__":
    sys.exit(main())
