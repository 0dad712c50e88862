"""The retraining job's fit in N processes on this machine, under torchrun.

`cddae retrain --nproc N` folds the recorded events into the data set in its own process as
always, then hands the prepared data to `torchrun --standalone --nproc-per-node N -m
training.jobs.launch FOLDER`: every rank loads it, `train_and_evaluate` runs under
DistributedDataParallel (training/models/distributed.py), rank 0 writes the checkpoint, and
the job goes on (export, gate, promote) with it. FOLDER is a private temporary folder the job
created: the pickle in it is the job's own, never read from anywhere else.
"""

from __future__ import annotations

import contextlib
import json
import os
import pickle
import signal
import subprocess
import sys
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from training.data.prepared import Prepared
from training.jobs.checkpoint import Checkpoint
from training.jobs.pipeline import make_recommender, train_and_evaluate
from training.names import NEURAL

PREPARED, REQUEST, CHECKPOINT, ERROR = "prepared.pickle", "request.json", "checkpoint", "error"


def train_in_processes(
    nproc: int, kind: str, prepared: Prepared, seed: int, config: dict[str, Any]
) -> Checkpoint:
    """`train_and_evaluate` in `nproc` torchrun processes; rank 0's checkpoint.

    The options are checked first (`check`), so a bad config fails with its own message.
    However this ends — done, failed, interrupted (Ctrl-C), or stopped (SIGTERM) — torchrun and
    its workers are stopped and the folder with the data is removed before the job's locks are
    released."""
    check(kind, config)
    with tempfile.TemporaryDirectory(prefix="cddae-launch-") as folder, _terminated_as_error():
        work = Path(folder)  # mkdtemp: readable by this user only
        with (work / PREPARED).open("wb") as handle:
            pickle.dump(prepared, handle, protocol=pickle.HIGHEST_PROTOCOL)
        (work / REQUEST).write_text(json.dumps({"kind": kind, "seed": seed, "config": config}))
        command = [
            sys.executable, "-m", "torch.distributed.run", "--standalone",
            "--nproc-per-node", str(nproc), "-m", "training.jobs.launch", str(work),
        ]  # fmt: skip
        threads = max(1, (os.cpu_count() or 1) // nproc)
        env = {"OMP_NUM_THREADS": str(threads), **os.environ}
        launcher = subprocess.Popen(command, env=env)
        try:
            status = launcher.wait()
        finally:
            _stop(launcher)
        if status != 0:
            reasons = sorted({p.read_text().strip() for p in work.glob(f"{ERROR}-*")})
            raise RuntimeError(f"training under torchrun ({nproc} processes) exited {status}"
                               + (f": {'; '.join(reasons)}" if reasons else ""))  # fmt: skip
        return Checkpoint.load(work / CHECKPOINT)


def check(kind: str, config: dict[str, Any]) -> None:
    """Refuse, with the reason, what the workers would fail on: a model torchrun does not
    train, or options the model does not take."""
    if kind not in NEURAL:
        raise ValueError(f"--nproc trains the autoencoders ({', '.join(NEURAL)}); {kind} fits in "
                         "one process")  # fmt: skip
    from training.models.trainer import ALTERNATE_ALONE

    model = make_recommender(kind, "default", config.get("model"), config.get("train"),
                             config.get("cold_items"))  # fmt: skip
    if model.model_config.alternate:  # type: ignore[attr-defined]
        raise ValueError(ALTERNATE_ALONE)


def _stop(launcher: subprocess.Popen) -> None:
    """torchrun stops its workers on SIGTERM (they run in sessions of their own, so only it
    can); SIGKILL only if it does not within a minute."""
    if launcher.poll() is not None:
        return
    launcher.terminate()
    try:
        launcher.wait(timeout=60)
    except subprocess.TimeoutExpired:
        launcher.kill()
        launcher.wait()


@contextlib.contextmanager
def _terminated_as_error() -> Iterator[None]:
    """SIGTERM raised as an exception while the workers run, so the cleanup above happens (by
    default SIGTERM ends Python at once: workers orphaned, the data left on disk)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def stop(signum: int, frame: Any) -> None:
        raise SystemExit(128 + signum)

    previous = signal.signal(signal.SIGTERM, stop)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def main(folder: Path) -> None:
    """One rank: load the prepared data, train, and (rank 0) write the checkpoint. A rank that
    fails leaves its reason for the job's message."""
    try:
        _main(folder)
    except BaseException as error:
        rank = os.environ.get("RANK", "0")
        (folder / f"{ERROR}-{rank}").write_text(f"{type(error).__name__}: {error}")
        raise


def _main(folder: Path) -> None:
    from training.models.distributed import join

    request = json.loads((folder / REQUEST).read_text())
    config = request["config"]
    world = join((config.get("train") or {}).get("device", "cpu"))
    with (folder / PREPARED).open("rb") as handle:
        prepared = pickle.load(handle)  # written by this job, in its own private folder
    _, checkpoint = train_and_evaluate(
        request["kind"], prepared, request["seed"], model=config.get("model"),
        train=config.get("train"), progress=False, cold=config.get("cold_items"),
    )  # fmt: skip
    if world.main:
        checkpoint.save(folder / CHECKPOINT)


if __name__ == "__main__":
    from training.models.distributed import leave

    main(Path(sys.argv[1]))
    leave(0)
