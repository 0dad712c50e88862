"""The admin page in a real browser: screenshots of every page, checked for errors and layout.

    python scripts/ui_screenshots.py            # or: make ui-test  (about a minute)

Trains a small model on synthetic data and exports it twice (two versions), starts an
experiment between them, seeds three days of online history through the file store's own
`FileOnline` (simulated traffic: the plot has hours to show), then starts a real
`cddae serve` (embedded store, no admin token, a temporary folder) and serves a few live
lists with clicks. Debian's chromium, headless, screenshots each page at a desktop and a phone
size into docs/ui/. A page fails when the server answers it with an error, the browser's DOM
lacks what the page must show, the screenshot is blank or unstyled, or, on the phone, content
reaches the right edge (the page overflows sideways instead of tables scrolling in their box).
A second server, with an admin token, checks the sign-in: 401 page, bearer, login cookie.
Exits non-zero on any failure.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np
from PIL import Image, ImageStat

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from service.bundle import promote
from service.experiment import CANDIDATE, CONTROL, Experiment, start_experiment
from service.state.online import FileOnline, Impression, impressions_log
from tests.synthetic import write_grouplens

ROOT = Path(__file__).resolve().parents[1]
CDDAE = str(Path(sys.executable).parent / "cddae")
# "tall": the whole overview on a desktop, for the docs (the plot is below the first screen)
SIZES = {"desktop": (1280, 900), "phone": (390, 844), "tall": (1280, 1400)}
PAPER, INK = (0xF5, 0xF7, 0xF9), (0x1D, 0x23, 0x29)  # ui.css: --paper, --ink (the header)
TOKEN = "ui-test-token"
SEEDED_HOURS = 72


@dataclass(frozen=True)
class Page:
    name: str
    path: str
    must_show: tuple[str, ...]  # text the browser's DOM must hold
    sizes: tuple[str, ...] = ("desktop", "phone")


PAGES = (
    Page(
        "overview",
        "/ui/",
        ("In service", "Experiment", "<svg", "<polyline", "<polygon", "Versions", "candidate"),
        ("desktop", "phone", "tall"),
    ),
    Page("user", "/ui/users/1", ("Recommendations now", "History", "Movie ")),
    Page("item", "/ui/items/1", ("Similar items", "Movie 1 (1995)", "available")),
)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def build_models(work: Path) -> tuple[Path, str, str]:
    """Two versions of a small CDDAE model (one training, two exports), the first promoted."""
    from training.data.prepared import ProtocolConfig, prepare
    from training.jobs.export import export_checkpoint
    from training.jobs.pipeline import train_and_evaluate

    data = write_grouplens(work / "data")
    prepared = prepare(data, ProtocolConfig(seed=0))
    _, checkpoint = train_and_evaluate(
        "cddae", prepared, model={"hidden": [16]}, train={"epochs": 5}, progress=False
    )
    models = work / "models"
    control, _ = export_checkpoint(checkpoint, models)
    promote(models, control)
    candidate, _ = export_checkpoint(checkpoint, models)
    return models, control, candidate


def simulated_lists(
    rng: np.random.Generator, version: str, variant: str, arm: str, hour: int, count: int
) -> list[Impression]:
    """`count` one-item lists served to random synthetic users within `hour`."""
    return [
        Impression(uuid.uuid4().hex, str(rng.integers(1, 121)), version, variant,
                   json.dumps([str(rng.integers(1, 81))]),
                   hour * 3600 + float(rng.uniform(0, 3500)), arm)
        for _ in range(count)
    ]  # fmt: skip


async def seed_history(log: Path, experiment: Experiment, hours: int) -> None:
    """Lists and clicks in the past hours, recorded through FileOnline as the service records
    them: the control all along, the candidate for the experiment's last day; a daily cycle."""
    online = FileOnline(impressions_log(log), 86_400, 256 * 2**20)
    rng = np.random.default_rng(0)
    now_hour = int(time.time() // 3600)
    try:
        for hour in range(now_hour - hours, now_hour):
            daily = 1 + 0.6 * np.sin(2 * np.pi * (hour % 24) / 24)
            served = [(experiment.control, CONTROL, 0.11)]
            if hour >= now_hour - 24:
                served.append((experiment.candidate, CANDIDATE, 0.15))
            for version, variant, rate in served:
                count = int(rng.poisson(40 * daily)) + 1
                lists = simulated_lists(rng, version, variant, experiment.arm(variant), hour, count)
                await online.record(lists)
                for shown in lists:
                    if rng.random() < rate * daily:
                        await online.attribute(shown.user, shown.items, shown.id, shown.time + 60)
    finally:
        online.close()


class Server:
    """`cddae serve` on a free port, embedded store, in `work`."""

    def __init__(self, models: Path, work: Path, admin_token: str = ""):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.env = {**os.environ, "CDDAE_REDIS_URL": "", "CDDAE_ADMIN_TOKEN": admin_token,
                    "CDDAE_INTERACTIONS_LOG": str(work / "interactions.jsonl"),
                    "CDDAE_RELOAD_INTERVAL_SECONDS": "0.5"}  # fmt: skip
        self.command = [CDDAE, "serve", "--models-dir", str(models), "--port", str(self.port),
                        "--log-level", "warning"]  # fmt: skip
        self.process: subprocess.Popen | None = None

    def __enter__(self) -> Server:
        self.process = subprocess.Popen(self.command, env=self.env)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{self.url}/readyz", timeout=5).status_code == 200:
                    return self
            if self.process.poll() is not None:
                raise RuntimeError(f"the server exited with {self.process.returncode}")
            time.sleep(0.2)
        raise RuntimeError("the server did not become ready in 120 s")

    def __exit__(self, *_: object) -> None:
        if self.process is not None:
            self.process.terminate()
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()


def serve_live_lists(url: str, users: int = 30) -> None:
    """Lists served now, and a click on every third: the current hour has figures too."""
    with httpx.Client(base_url=url, timeout=30) as client:
        for user in range(1, users + 1):
            answer = client.get(f"/users/{user}/recommendations").raise_for_status().json()
            if user % 3 == 0:
                body = {"items": [answer["items"][0]["item_id"]],
                        "recommendation_id": answer["recommendation_id"]}  # fmt: skip
                client.post(f"/users/{user}/interactions", json=body).raise_for_status()


def chromium(*args: str) -> subprocess.CompletedProcess:
    """Headless chromium, one page: its own profile, no GPU, no scrollbars (they would paint
    the right edge that the overflow check reads)."""
    with tempfile.TemporaryDirectory(prefix="cddae-chromium-") as profile:
        command = ["chromium", "--headless", "--no-sandbox", "--disable-gpu",
                   "--disable-dev-shm-usage", "--hide-scrollbars", "--no-first-run",
                   f"--user-data-dir={profile}", "--run-all-compositor-stages-before-draw",
                   "--virtual-time-budget=2000", *args]  # fmt: skip
        return subprocess.run(command, capture_output=True, text=True, timeout=120, check=False)


def check_html(url: str, page: Page) -> list[str]:
    """The server's answer, then the DOM as chromium built it."""
    problems = []
    answer = httpx.get(url + page.path, timeout=30)
    if answer.status_code != 200 or "text/html" not in answer.headers.get("content-type", ""):
        problems.append(f"{page.name}: HTTP {answer.status_code} {answer.text[:200]!r}")
    dom = chromium("--dump-dom", url + page.path).stdout
    problems += [f"{page.name}: the DOM lacks {text!r}" for text in page.must_show
                 if text not in dom]  # fmt: skip
    if "Internal Server Error" in dom or "Traceback" in dom:
        problems.append(f"{page.name}: a server error in the page")
    return problems


def check_screenshot(path: Path, size: str) -> list[str]:
    """Not blank, styled (the page's background), and on the phone nothing at the right edge:
    its last columns are the page's background or the header's."""
    problems = []
    image = Image.open(path).convert("RGB")
    width, height = image.size
    if (width, height) != SIZES[size]:
        problems.append(f"{path.name}: {width}x{height}, not {SIZES[size]}")
    if ImageStat.Stat(image.convert("L")).stddev[0] < 8 or len(image.getcolors(2**24)) < 16:
        problems.append(f"{path.name}: blank")
    colours = {colour: count for count, colour in image.getcolors(2**24)}
    if colours.get(PAPER, 0) < 0.05 * width * height:  # the stylesheet's background
        problems.append(f"{path.name}: unstyled (hardly any of the page's background colour)")
    if size == "phone":
        edge = {image.getpixel((x, y)) for x in range(width - 4, width) for y in range(height)}
        if stray := edge - {PAPER, INK}:
            problems.append(f"{path.name}: content at the right edge (overflow): {stray.pop()}")
    return problems


def screenshot(url: str, page: Page, size: str, out: Path, work: Path) -> list[str]:
    width, height = SIZES[size]
    raw = work / f"{page.name}-{size}.png"
    done = chromium(f"--screenshot={raw}", f"--window-size={width},{height}", url + page.path)
    if not raw.is_file():
        return [f"{page.name} ({size}): no screenshot; chromium said {done.stderr[-300:]!r}"]
    problems = check_screenshot(raw, size)
    Image.open(raw).convert("RGB").quantize(64).save(out / raw.name, optimize=True)  # small
    return problems


def check_sign_in(models: Path, work: Path) -> list[str]:
    """With a token: 401 page linking to the login; bearer and the login's cookie let in."""
    problems = []
    (work / "token").mkdir()
    with (
        Server(models, work / "token", admin_token=TOKEN) as server,
        httpx.Client(base_url=server.url, timeout=30) as client,
    ):
        denied = client.get("/ui/")
        if denied.status_code != 401 or 'href="/ui/login"' not in denied.text:
            problems.append(f"without the token: {denied.status_code}, no link to the login")
        bearer = client.get("/ui/", headers={"Authorization": f"Bearer {TOKEN}"})
        if bearer.status_code != 200:
            problems.append(f"with the bearer token: {bearer.status_code}")
        login = client.post("/ui/login", data={"token": TOKEN})
        cookie = login.headers.get("set-cookie", "")
        if login.status_code != 303 or "HttpOnly" not in cookie or "Path=/ui" not in cookie:
            problems.append(f"login: {login.status_code} {cookie!r}")
        if client.get("/ui/").status_code != 200:
            problems.append("with the login's cookie: not let in")
    return problems


@contextlib.contextmanager
def workdir(keep: Path | None) -> Iterator[Path]:
    if keep is not None:
        if keep.exists() and any(keep.iterdir()):
            raise SystemExit(f"--keep {keep}: not empty (a new folder each run)")
        keep.mkdir(parents=True, exist_ok=True)
        yield keep
        return
    with tempfile.TemporaryDirectory(prefix="cddae-ui-") as tmp:
        yield Path(tmp)


def run(out: Path, keep: Path | None) -> list[str]:
    if shutil.which("chromium") is None:
        return ["chromium is not installed (apt-get install -y chromium)"]
    out.mkdir(parents=True, exist_ok=True)
    with workdir(keep) as work:
        print("training and exporting two versions …", flush=True)
        models, _, candidate = build_models(work)
        experiment = start_experiment(models, candidate, 0.5)
        asyncio.run(seed_history(work / "interactions.jsonl", experiment, SEEDED_HOURS))
        problems = []
        with Server(models, work) as server:
            serve_live_lists(server.url)
            for page in PAGES:
                problems += check_html(server.url, page)
                for size in page.sizes:
                    problems += screenshot(server.url, page, size, out, work)
                    print(f"  {page.name} ({size}) → {out / f'{page.name}-{size}.png'}")
        problems += check_sign_in(models, work)
    return problems


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "ui", help="the PNGs' folder")
    parser.add_argument("--keep", type=Path, help="work here (kept) instead of a temp folder")
    args = parser.parse_args()
    problems = run(args.out, args.keep)
    for problem in problems:
        print("FAIL", problem)
    print("ui-test:", "FAILED" if problems else "passed")
    sys.exit(1 if problems else 0)


if __name__ == "__main__":
    main()
