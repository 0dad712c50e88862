"""Training under torchrun: 2 gloo ranks on this machine (a few seconds each)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from service import bundle
from tests.ddp_step import CASES, step
from tests.test_retrain import FileLog, Job, _interaction
from training.jobs.checkpoint import Checkpoint
from training.jobs.retrain import Outcome
from training.models.distributed import World

TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"]


def _torchrun(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    """torchrun to the end; on a timeout its whole process group is killed (the workers too)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(Path.cwd())}
    command = [*TORCHRUN, *args]
    process = subprocess.Popen(
        command, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        start_new_session=True,
    )  # fmt: skip
    try:
        stdout, stderr = process.communicate(timeout=240)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.communicate()
        raise
    assert process.returncode == 0, stdout[-2000:] + stderr[-4000:]
    return subprocess.CompletedProcess(command, process.returncode, stdout, stderr)


def test_two_ranks_step_the_weights_one_process_steps_on_the_averaged_shares(
    tmp_path: Path,
) -> None:
    """DistributedDataParallel all-reduces the dense gradients and the sampled loss's
    row-sparse ones: after one step, rank 0's weights are the one-process reference's."""
    _torchrun(["-m", "tests.ddp_step", str(tmp_path)], Path.cwd())
    for name, negatives in CASES.items():
        before, reference = step(negatives, World())
        got = np.load(tmp_path / f"{name}.npz")
        assert sorted(got.files) == sorted(reference)
        moved = max(float(np.abs(reference[k] - before[k]).max()) for k in reference)
        assert moved > 1e-4, "the step must move the weights"
        for key, value in reference.items():
            np.testing.assert_allclose(got[key], value, rtol=0, atol=1e-6, err_msg=key)


def test_cddae_trains_under_torchrun_and_rank_0_writes(synthetic_dir: Path, tmp_path: Path) -> None:
    """The sampled loss's path (row-sparse all-reduce) through `cddae train`; the dense one is
    the retraining test's."""
    negatives = 20
    config = tmp_path / "config.json"
    config.write_text(json.dumps({
        "model": {"hidden": [32]},
        "train": {"epochs": 40, "patience": 8, "batch_size": 16, "negatives": negatives},
    }))  # fmt: skip
    out = tmp_path / "out.json"
    run = _torchrun(
        ["-m", "training.cli", "train", "--model", "cddae", "--data", str(synthetic_dir),
         "--config", str(config), "--output", str(tmp_path / "ck"), "--json", str(out),
         "--quiet"], tmp_path,
    )  # fmt: skip
    assert run.stdout.count("trained in 2 processes") == 1  # rank 0 alone reports
    meta = json.loads(out.read_text())
    assert meta["world_size"] == 2
    assert meta["params"]["sampled_negatives"] == negatives
    assert meta["metrics"]["R"][9] > 0.5  # the planted pattern; chance ≈ 0.14
    assert Checkpoint.load(tmp_path / "ck").meta["world_size"] == 2


def test_retrain_trains_in_two_processes_and_promotes(
    synthetic_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`cddae retrain --nproc 2`: the events folded as always, the fit under torchrun, and the
    version it promotes records the world size; a bad count is refused before any work."""
    monkeypatch.setenv("PYTHONPATH", str(Path.cwd()))
    events = FileLog(tmp_path / "events.jsonl")
    events.record([_interaction("new-1", i, 1e9 + i) for i in (1, 2, 3, 4, 5)])
    job = Job(synthetic_dir, tmp_path)
    assert job(events, "--gate", "0", "--nproc", "2") == Outcome.PROMOTED
    version = bundle.current_version(job.models)
    manifest = bundle.read_manifest(job.models / version)
    assert manifest["retrain"]["new_interactions"] == 5
    assert manifest["model"]["world_size"] == 2
    loaded = bundle.load_bundle(job.models / version)
    assert "new-1" in loaded.user_ids.tolist()
    with pytest.raises(SystemExit):
        job(events, "--nproc", "0")
