"""The retraining job's fit in N processes on this machine, under torchrun.

`cddae retrain --nproc N` folds the recorded events into the data set in its own process as
always, then hands the prepared data to `torchrun --standalone --nproc-per-node N -m
training.jobs.launch FOLDER`: every rank loads it, `train_and_evaluate` runs under
DistributedDataParallel (training/models/distributed.py), rank 0 writes the checkpoint, and
the job goes on (export, gate, promote) with it. FOLDER is a private temporary folder the job
created: the pickle in it is the job's own, never read from anywhere else.
"""

from __future__ import annotations

import json
import os
import pickle
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from training.data.prepared import Prepared
from training.jobs.checkpoint import Checkpoint

PREPARED, REQUEST, CHECKPOINT = "prepared.pickle", "request.json", "checkpoint"


def train_in_processes(
    nproc: int, kind: str, prepared: Prepared, seed: int, config: dict[str, Any]
) -> Checkpoint:
    """`train_and_evaluate` in `nproc` torchrun processes; rank 0's checkpoint."""
    with tempfile.TemporaryDirectory(prefix="cddae-launch-") as folder:
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
        status = subprocess.run(command, env=env).returncode
        if status != 0:
            raise RuntimeError(f"training under torchrun ({nproc} processes) exited {status}")
        return Checkpoint.load(work / CHECKPOINT)


def main(folder: Path) -> None:
    """One rank: load the prepared data, train, and (rank 0) write the checkpoint."""
    from training.jobs.pipeline import train_and_evaluate
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
    main(Path(sys.argv[1]))
