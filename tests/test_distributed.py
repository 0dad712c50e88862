"""Training under torchrun: 2 gloo ranks on this machine (a few seconds each)."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from service import bundle
from tests.ddp_broadcast import SHAPE, train
from tests.ddp_step import CASES, step
from tests.test_retrain import FileLog, Job, _interaction
from training.cli import main
from training.jobs.checkpoint import Checkpoint
from training.jobs.retrain import Outcome
from training.models import neighbours
from training.models.distributed import World
from training.models.linear_path import ease_start

TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"]


def _torchrun(args: list[str], cwd: Path, expect: int = 0) -> subprocess.CompletedProcess:
    """torchrun to the end; on a timeout its whole process group is killed (the workers too)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(Path.cwd())}
    command = [*TORCHRUN, *args]
    process = subprocess.Popen(
        command, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        start_new_session=True,
    )  # fmt: skip
    try:
        stdout, stderr = process.communicate(timeout=240 if expect == 0 else 60)
    except subprocess.TimeoutExpired:
        # torchrun starts each worker in a session of its own: killing its group alone left
        # hung workers holding the pipes, and this wait with them.
        for pid in [process.pid, *_descendants(process.pid)]:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        process.communicate()
        raise
    assert (process.returncode == 0) == (expect == 0), stdout[-2000:] + stderr[-4000:]
    return subprocess.CompletedProcess(command, process.returncode, stdout, stderr)


def _descendants(pid: int) -> list[int]:
    """Every process below `pid`, read from /proc."""
    parents: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        try:
            stat = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            parents[int(entry.name)] = int(stat[1])
        except (ValueError, OSError, IndexError):
            continue
    found, frontier = [], [pid]
    while frontier:
        children = [child for child, parent in parents.items() if parent in frontier]
        found += children
        frontier = children
    return found


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


@pytest.mark.parametrize("linear", ["auto", "ease"])
def test_ranks_follow_rank_0s_decision_to_build_the_item_item_paths(
    synthetic_dir: Path, tmp_path: Path, linear: str
) -> None:
    """Rank 1 reads a memory limit the items × items paths do not fit (another node's memory):
    it follows rank 0, which builds them; deciding for itself, it waited in another collective
    than rank 0 until gloo's 30-minute timeout (`auto`), or refused the run (`ease`)."""
    config = tmp_path / "config.json"
    config.write_text(json.dumps({
        "model": {"hidden": [16], "linear_path": linear, "short_head_share": 0.5,
                  "short_head_neighbours": 0.5},
        "train": {"epochs": 3, "patience": 3, "batch_size": 32, "negatives": 0},
    }))  # fmt: skip
    out = tmp_path / "out.json"
    _torchrun(
        ["-m", "tests.ddp_limited", "train", "--model", "cddae", "--data", str(synthetic_dir),
         "--config", str(config), "--output", str(tmp_path / "ck"), "--json", str(out),
         "--quiet"], tmp_path,
    )  # fmt: skip
    params = json.loads(out.read_text())["params"]
    assert params["linear_path"].startswith("ease"), params
    assert params["short_head_neighbours"].startswith("item cosine"), params


def test_a_shape_rank_0_did_not_announce_stops_every_rank(tmp_path: Path) -> None:
    """Rank 1 announces another shape than rank 0 computed: every rank raises, at once;
    rank 1 received into a buffer of its own shape, silently, before."""
    started = time.monotonic()
    _torchrun(["-m", "tests.ddp_broadcast", str(tmp_path), "disagree"], Path.cwd(), expect=3)
    assert time.monotonic() - started < 60
    assert sorted(p.name for p in tmp_path.iterdir()) == ["refused0", "refused1"]


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


def test_retrain_refuses_what_it_cannot_run_before_any_work(
    synthetic_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    events = FileLog(tmp_path / "events.jsonl")
    events.record([_interaction("new-1", 1, 1e9)])
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"model": {"output": "sigmoid", "loss": "mse"},
                               "train": {"negatives": 50}}))  # fmt: skip
    models = tmp_path / "models"
    base = ["retrain", "--data", str(synthetic_dir), "--models-dir", str(models),
            "--events", str(events.path), "--nproc", "2"]  # fmt: skip
    assert main([*base, "--config", str(bad)]) == Outcome.FAILED
    assert "train.negatives 50: a sampled loss needs" in capsys.readouterr().out
    assert main([*base, "--model", "pop"]) == Outcome.FAILED
    assert "--nproc trains the autoencoders" in capsys.readouterr().out
    alternate = tmp_path / "alternate.json"  # RecVAE's passes switch what DDP would reduce
    alternate.write_text(json.dumps({"model": {"alternate": 1}}))
    assert main([*base, "--config", str(alternate)]) == Outcome.FAILED
    assert "'alternate' needs a single process" in capsys.readouterr().out
    assert [p.name for p in models.iterdir()] == [".lock"]  # no events folded, no version


def test_a_stopped_retrain_stops_its_workers_and_removes_the_data(
    synthetic_dir: Path, tmp_path: Path
) -> None:
    """SIGTERM to `cddae retrain --nproc 2` while the ranks train: the job stops torchrun and
    the ranks, removes the pickled data, and exits; nothing is promoted."""
    events = FileLog(tmp_path / "events.jsonl")
    events.record([_interaction("new-1", 1, 1e9)])
    slow = tmp_path / "slow.json"
    train = {"epochs": 5000, "patience": 5000, "batch_size": 8}
    slow.write_text(json.dumps({"model": {"hidden": [16]}, "train": train}))
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    env = {**os.environ, "TMPDIR": str(scratch), "PYTHONPATH": str(Path.cwd())}
    job = subprocess.Popen(
        [sys.executable, "-m", "training.cli", "retrain", "--data", str(synthetic_dir),
         "--models-dir", str(tmp_path / "models"), "--events", str(events.path), "--config",
         str(slow), "--gate", "0", "--nproc", "2"],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    try:
        workers = _wait_for_workers(str(scratch), count=2)
        job.send_signal(signal.SIGTERM)
        out, _ = job.communicate(timeout=90)
    finally:
        if job.poll() is None:
            job.kill()
    assert job.returncode != 0, out
    deadline = time.monotonic() + 30
    while any(_alive(pid) for pid in workers) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not any(_alive(pid) for pid in workers), "torchrun's workers outlived the job"
    assert list(scratch.glob("cddae-launch-*")) == []  # the pickled data removed
    assert not (tmp_path / "models" / "CURRENT").exists()


def _wait_for_workers(folder: str, count: int) -> list[int]:
    """The pids of the `training.jobs.launch` ranks working in `folder`, once they train."""
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        pids = []
        for entry in Path("/proc").iterdir():
            try:
                command = (entry / "cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            if b"training.jobs.launch" in command and any(folder.encode() in c for c in command):
                pids.append(int(entry.name))
        if len(pids) >= count:
            time.sleep(3)  # past loading: in the fit
            return pids
        time.sleep(0.2)
    raise AssertionError("the torchrun workers did not start")


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0]
    except OSError:
        return False
    return state != "Z"


def test_items_by_items_matrices_are_computed_once_and_received_by_every_rank(
    tmp_path: Path,
) -> None:
    """EASE's closed form and the neighbours' similarities: rank 0 computes them, the other
    rank computes nothing and holds the same numbers as one process computes."""
    _torchrun(["-m", "tests.ddp_broadcast", str(tmp_path)], Path.cwd())
    ranks = [np.load(tmp_path / f"rank{r}.npz") for r in (0, 1)]
    assert ranks[0]["calls"].tolist() == ["ease", "neighbours"]
    assert ranks[1]["calls"].tolist() == []
    expected = {
        "ease": ease_start(train(), 5.0).numpy(),
        "neighbours": neighbours.similarities(train(), 10.0).numpy(),
    }
    for name, value in expected.items():
        assert value.shape == SHAPE and np.abs(value).max() > 0
        for rank in ranks:
            np.testing.assert_array_equal(rank[name], value, err_msg=name)


def test_an_error_on_rank_0_ends_every_rank_at_once(tmp_path: Path) -> None:
    """Rank 0's compute fails while rank 1 waits in the broadcast: the failed rank leaves
    without a barrier (which would wait beside the broadcast for gloo's 30 minutes) and
    torchrun ends the run with an error, within the minute."""
    started = time.monotonic()
    _torchrun(["-m", "tests.ddp_broadcast", str(tmp_path), "fail"], Path.cwd(), expect=2)
    assert time.monotonic() - started < 60
