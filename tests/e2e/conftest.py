"""Real processes: uvicorn serving a bundle built here, against the real Redis or embedded."""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import redis

from service import bundle
from service.bundle import promote
from training.data.prepared import ProtocolConfig, prepare
from training.jobs.export import export_checkpoint
from training.jobs.pipeline import train_and_evaluate

REDIS_URL = "redis://127.0.0.1:6379/9"  # a database of its own, flushed by each server start
ADMIN_TOKEN = "test-token"
READY_SECONDS = 120  # generous: a busy machine slows the start, never the verdict


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="session")
def base_models(tmp_path_factory: pytest.TempPathFactory, synthetic_dir: Path) -> Path:
    """A models folder with one promoted CDDAE bundle trained on the synthetic data."""
    prepared = prepare(synthetic_dir, ProtocolConfig(seed=0))
    _, checkpoint = train_and_evaluate(
        "cddae", prepared, model={"hidden": [16]}, train={"epochs": 5}, progress=False
    )
    models = tmp_path_factory.mktemp("models")
    version, _ = export_checkpoint(checkpoint, models)
    promote(models, version)
    return models


class Server:
    def __init__(self, models: Path, redis_url: str | None, workdir: Path, **settings: str):
        self.models, self.port = models, free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.env = {
            **os.environ,
            "CDDAE_REDIS_URL": redis_url or "",
            "CDDAE_INTERACTIONS_LOG": str(workdir / "interactions.jsonl"),
            "CDDAE_RELOAD_INTERVAL_SECONDS": "0.3",
            "CDDAE_MAX_BATCH": "8",
            "CDDAE_MAX_N": "50",
            "CDDAE_MAX_BODY_BYTES": "20000",
            "CDDAE_ADMIN_TOKEN": ADMIN_TOKEN,
            "CDDAE_REDIS_RETRY_SECONDS": "0.3",
            **settings,
        }
        self.process: subprocess.Popen | None = None

    def start(self) -> Server:
        # The installed console script, as the Dockerfile's CMD runs it.
        cddae = str(Path(sys.executable).parent / "cddae")
        command = [cddae, "serve", "--models-dir", str(self.models),
                   "--port", str(self.port), "--log-level", "warning"]  # fmt: skip
        self.process = subprocess.Popen(command, env=self.env)
        deadline = time.monotonic() + READY_SECONDS
        while time.monotonic() < deadline:
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{self.url}/readyz", timeout=5).status_code == 200:
                    return self
            if self.process.poll() is not None:
                raise RuntimeError(f"server exited with {self.process.returncode}")
            time.sleep(0.1)
        raise RuntimeError(f"server did not become ready in {READY_SECONDS} s")

    def stop(self) -> None:
        if self.process is not None:
            self.process.terminate()
            try:
                self.process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.process.kill()


@contextlib.contextmanager
def running(
    base_models: Path, tmp: Path, redis_url: str | None, **settings: str
) -> Iterator[Server]:
    models = tmp / "models"
    shutil.copytree(base_models, models)
    if redis_url:
        redis.Redis.from_url(redis_url).flushdb()
    server = Server(models, redis_url, tmp, **settings).start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module", params=["redis", "embedded", "redis-microbatch"])
def server(request, base_models: Path, tmp_path_factory) -> Iterator[Server]:
    url = REDIS_URL if request.param.startswith("redis") else None
    extra = {"CDDAE_MICRO_BATCH_MS": "2"} if request.param.endswith("microbatch") else {}
    with running(base_models, tmp_path_factory.mktemp(request.param), url, **extra) as srv:
        yield srv


@pytest.fixture(scope="session")
def candidate_bundle(
    base_models: Path, synthetic_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> Path:
    """A second, different model's bundle folder (in a folder of its own: copy it beside the
    base models' to run an experiment)."""
    prepared = prepare(synthetic_dir, ProtocolConfig(seed=0))
    _, checkpoint = train_and_evaluate(
        "cddae", prepared, model={"hidden": [8]}, train={"epochs": 2}, progress=False
    )
    folder = tmp_path_factory.mktemp("candidate")
    candidate, _ = export_checkpoint(checkpoint, folder)
    assert candidate != bundle.current_version(base_models)
    return folder / candidate
