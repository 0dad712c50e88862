"""The `cddae` commands on synthetic data: train, evaluate, recommend, explicit split files."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from training.cli import main
from training.jobs.checkpoint import Checkpoint

FAST = {"model": {"hidden": [16]}, "train": {"epochs": 8, "patience": 4, "batch_size": 16}}


@pytest.fixture(scope="module")
def config(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("config") / "fast.json"
    path.write_text(json.dumps(FAST))
    return path


def _write_split(checkpoint: Checkpoint, matrix, path: Path) -> None:
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["user", "item", "rating", "timestamp"])
        for row, user in enumerate(checkpoint.user_ids):
            for item in matrix[row].indices:
                writer.writerow([user, checkpoint.item_ids[item], 5, 1])


@pytest.mark.parametrize("kind", ["ease", "dae"])
def test_explicit_split_files_reproduce_the_builtin_split(
    synthetic_dir: Path, tmp_path: Path, config: Path, kind: str
) -> None:
    builtin, explicit = tmp_path / "builtin.json", tmp_path / "explicit.json"
    args = ["train", "--model", kind, "--data", str(synthetic_dir), "--seed", "3", "--quiet"]
    if kind == "dae":
        args += ["--config", str(config)]
    assert main([*args, "--output", str(tmp_path / "ckpt"), "--json", str(builtin)]) == 0
    checkpoint = Checkpoint.load(tmp_path / "ckpt")
    _write_split(checkpoint, checkpoint.train, tmp_path / "train.csv")
    _write_split(checkpoint, checkpoint.test, tmp_path / "test.csv")
    split_args = [
        "--train-file",
        str(tmp_path / "train.csv"),
        "--test-file",
        str(tmp_path / "test.csv"),
    ]
    assert main([*args, *split_args, "--json", str(explicit)]) == 0
    a, b = json.loads(builtin.read_text()), json.loads(explicit.read_text())
    assert a["metrics"] == b["metrics"]
    assert b["protocol"]["name"] == "explicit"

    evaluated = tmp_path / "evaluated.json"
    assert main(["evaluate", "--checkpoint", str(tmp_path / "ckpt"), "--test-file",
                 str(tmp_path / "test.csv"), "--json", str(evaluated)]) == 0  # fmt: skip
    report = json.loads(evaluated.read_text())
    assert report["metrics"] == a["metrics"]
    assert report["evaluation"]["sampled"] is False  # 120 users: every one, as train did
    assert report["evaluation"]["users"] == a["evaluation"]["users"]


def test_recommend_writes_n_unseen_items_per_user(
    synthetic_dir: Path, tmp_path: Path, config: Path
) -> None:
    assert main(["train", "--model", "cddae", "--data", str(synthetic_dir), "--quiet",
                 "--config", str(config), "--output", str(tmp_path / "ckpt")]) == 0  # fmt: skip
    out = tmp_path / "recs.tsv"
    assert main(["recommend", "--checkpoint", str(tmp_path / "ckpt"), "--n", "10",
                 "--output", str(out)]) == 0  # fmt: skip
    checkpoint = Checkpoint.load(tmp_path / "ckpt")
    with out.open() as handle:
        rows = list(csv.DictReader(handle, delimiter="\t"))
    assert list(rows[0]) == ["user", "item", "rank", "score"]
    by_user: dict[str, list[str]] = {}
    for row in rows:
        by_user.setdefault(row["user"], []).append(row["item"])
    assert set(by_user) == set(checkpoint.user_ids)
    for n, user in enumerate(checkpoint.user_ids):
        seen = {checkpoint.item_ids[i] for i in checkpoint.train[n].indices}
        assert len(by_user[user]) == 10 and not seen & set(by_user[user])


def test_errors_are_one_line_not_tracebacks(tmp_path: Path, capsys) -> None:
    (tmp_path / "u.data").write_text("1\t2\tx\t4\n")
    assert main(["train", "--model", "pop", "--data", str(tmp_path)]) == 2
    assert "u.data:1: rating must be a number, got 'x'" in capsys.readouterr().err


def test_train_on_a_user_sample_states_it_with_intervals(
    synthetic_dir: Path, tmp_path: Path, capsys, monkeypatch: pytest.MonkeyPatch
) -> None:
    import training.evaluation.metrics as metrics

    monkeypatch.setattr(metrics, "MIN_SAMPLE", 20)  # the synthetic set has a few hundred users
    out = tmp_path / "run.json"
    args = ["train", "--model", "pop", "--data", str(synthetic_dir), "--quiet", "--json", str(out)]
    assert main([*args, "--eval-users", "40"]) == 0
    printed = capsys.readouterr().out
    evaluation = json.loads(out.read_text())["evaluation"]
    assert evaluation["sampled"] and evaluation["users"] == 40 and evaluation["of"] > 40
    assert "evaluated on a random sample of 40 of" in printed and "P@10 ±" in printed
    assert main([*args, "--eval-users", "all"]) == 0
    assert not json.loads(out.read_text())["evaluation"]["sampled"]
    with pytest.raises(SystemExit):  # below the intervals' minimum: argparse, exit 2
        main([*args, "--eval-users", "19"])
