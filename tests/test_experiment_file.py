"""Experiments between two versions, below HTTP: the file every replica follows, the stable
assignment, counts per arm through the file store's restarts and rotations, and the
difference's interval (issue 21)."""

from __future__ import annotations

import asyncio
import json
import os
from pathlib import Path

import pytest

from service import bundle
from service.experiment import (
    CANDIDATE,
    EXPERIMENT,
    Experiment,
    ExperimentError,
    bucket,
    collect,
    read_experiment,
    start_experiment,
    stop_experiment,
)
from service.state.online import (
    FileOnline,
    Impression,
    MissingList,
    Shadowed,
    UnknownList,
    read_counts,
)
from service.state.stats import difference, experiment_summary
from tests.test_bundle import _files


def _versions(models: Path, count: int = 2) -> list[str]:
    versions = [bundle.write_bundle(models, _files(bytes([n])), {}) for n in range(count)]
    bundle.promote(models, versions[0])
    return versions


def test_assignment_is_stable_and_splits_by_the_share() -> None:
    experiment = Experiment("a1b2c3d4", "v2", 0.2, False, "2026-11-30T00:00:00+00:00", "v1")
    users = [f"user-{k}" for k in range(20_000)]
    variants = [experiment.variant(u) for u in users]
    share = variants.count(CANDIDATE) / len(users)
    assert abs(share - 0.2) < 0.01
    assert variants == [experiment.variant(u) for u in users]  # the same user, the same variant
    # another experiment draws its users afresh: about share² of users are candidates in both
    other = Experiment("99999999", "v2", 0.2, False, "2026-11-30T00:00:00+00:00", "v1")
    both = sum(
        v == CANDIDATE and other.variant(u) == CANDIDATE
        for u, v in zip(users, variants, strict=True)
    )
    assert abs(both / len(users) - 0.04) < 0.01
    assert 0 <= bucket("s", "") < 1 and bucket("s", "x") == bucket("s", "x")


def test_start_status_stop_and_their_refusals(tmp_path: Path) -> None:
    control, candidate = _versions(tmp_path)
    assert read_experiment(tmp_path) is None
    with pytest.raises(ExperimentError, match="version in service already"):
        start_experiment(tmp_path, control, 0.2)
    with pytest.raises(ExperimentError, match="between 0 and 1"):
        start_experiment(tmp_path, candidate, 1.0)
    with pytest.raises(ExperimentError, match="not a version name"):
        start_experiment(tmp_path, "../escape", 0.2)
    with pytest.raises((bundle.BundleError, OSError)):  # no such version
        start_experiment(tmp_path, "20990101T000000000000Z-00000000", 0.2)
    started = start_experiment(tmp_path, candidate, 0.3, shadow=True)
    assert read_experiment(tmp_path) == started
    assert (started.control, started.candidate, started.shadow) == (control, candidate, True)
    with pytest.raises(ExperimentError, match="an experiment is running"):
        start_experiment(tmp_path, candidate, 0.3)
    assert collect(tmp_path, keep=0) == []  # both versions of a running experiment stay
    assert stop_experiment(tmp_path) == started
    with pytest.raises(ExperimentError, match="no experiment"):
        stop_experiment(tmp_path)


@pytest.mark.parametrize(
    "text",
    [b"", b"{", b'{"id": "x"}', b"[1, 2]", b" " * 5000,
     json.dumps({"id": "x", "candidate": "../x", "share": 0.2, "shadow": False,
                 "started": "2026-11-30T00:00:00+00:00", "control": "v"}).encode(),
     json.dumps({"id": "x", "candidate": "v2", "share": "lots", "shadow": False,
                 "started": "2026-11-30T00:00:00+00:00", "control": "v"}).encode(),
     json.dumps({"id": "x", "candidate": "v2", "share": 0.2, "shadow": False,
                 "started": "yesterday", "control": "v"}).encode(),
     json.dumps({"id": "x", "candidate": "v2", "share": 0.2, "shadow": "false",
                 "started": "2026-11-30T00:00:00+00:00", "control": "v"}).encode(),
     json.dumps({"id": "x", "candidate": "v2", "share": "0.5", "shadow": False,
                 "started": "2026-11-30T00:00:00+00:00", "control": "v"}).encode(),
     json.dumps({"id": "a|b", "candidate": "v2", "share": 0.5, "shadow": False,
                 "started": "2026-11-30T00:00:00+00:00", "control": "v"}).encode(),
     b'{"id": "x", "candidate": "v2", "share": NaN, "shadow": false, '
     b'"started": "2026-11-30T00:00:00+00:00", "control": "v"}'],
)  # fmt: skip
def test_a_file_that_is_not_an_experiment_is_an_error_never_no_experiment(
    tmp_path: Path, text: bytes
) -> None:
    (tmp_path / EXPERIMENT).write_bytes(text)
    with pytest.raises(ExperimentError):
        read_experiment(tmp_path)


def test_the_difference_interval_is_newcombes() -> None:
    # Newcombe (1998), Statistics in Medicine 17:873, table II, example (a): 56/70 − 48/80
    d, (lo, hi) = difference(56, 70, 48, 80)
    assert d == pytest.approx(0.2)
    assert (round(lo, 4), round(hi, 4)) == (0.0524, 0.3339)
    _, (lo, hi) = difference(0, 10, 0, 10)  # no clicks at all: an interval around 0
    assert lo < 0 < hi


def _impression(k: int, arm: str | None, version: str, variant: str | None) -> Impression:
    return Impression(f"{k:032x}", f"u{k}", version, variant, f'["{k}"]', 1_764_000_000 + k, arm)


def test_arms_and_shadow_counts_survive_restarts_and_rotations(tmp_path: Path) -> None:
    log = tmp_path / "interactions.jsonl"
    path = log.with_name(log.name + ".impressions")
    experiment = Experiment("e1", "v2", 0.5, False, "2026-11-30T00:00:00+00:00", "v1")
    store = FileOnline(path, window=10**9, retain_bytes=1_500)  # rotates every few lists

    async def scenario() -> None:
        for k in range(60):
            variant = "candidate" if k % 3 == 0 else "control"
            version = "v2" if variant == "candidate" else "v1"
            await store.record([_impression(k, experiment.arm(variant), version, variant)],
                               [Shadowed("e1", "v2", 0.5)] if k % 10 == 0 else [])  # fmt: skip
        for k in (0, 3, 4):  # clicks: two candidate lists, one control
            await store.attribute(f"u{k}", [str(k)], None, 1_764_000_100)
        await store.record([_impression(99, None, "v1", None)])  # outside the experiment

    asyncio.run(scenario())
    store.close()
    assert path.with_name(path.name + ".1").exists()
    counts = read_counts(None, log)  # read only, as `cddae models experiment status` does
    summary = experiment_summary(counts, experiment)
    assert summary["variants"]["candidate"]["lists"] == 20
    assert summary["variants"]["control"]["lists"] == 40
    assert summary["variants"]["candidate"]["clicked_lists"] == 2
    assert summary["variants"]["control"]["clicked_lists"] == 1
    assert summary["variants"]["candidate"]["versions"] == ["v2"]
    assert (summary["shadow_lists"], summary["shadow_overlap"]) == (6, 0.5)
    by_version = counts.by_version
    assert sum(c[0] for c in by_version["v1"].values()) == 41  # every arm, and none
    assert path.stat().st_size > 0 and not any(tmp_path.glob("*.tmp"))


def test_the_online_report_names_variants_and_plots_one_hour(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from training.cli import main

    models = tmp_path / "models"
    control, candidate = _versions(models)
    experiment = start_experiment(models, candidate, 0.5)
    log = tmp_path / "interactions.jsonl"
    store = FileOnline(log.with_name(log.name + ".impressions"), window=10**9, retain_bytes=10**9)

    async def served() -> None:
        for k in range(10):
            variant = "candidate" if k % 2 else "control"
            version = candidate if k % 2 else control
            await store.record([_impression(k, experiment.arm(variant), version, variant)])
        await store.attribute("u1", ["1"], None, 1_764_000_100)

    asyncio.run(served())
    store.close()
    monkeypatch.setenv("CDDAE_REDIS_URL", "")
    monkeypatch.setenv("CDDAE_INTERACTIONS_LOG", str(log))
    plot, table = tmp_path / "online.png", tmp_path / "online.json"
    assert main(["report", "online", "--models-dir", str(models), "--plot", str(plot),
                 "--json", str(table)]) == 0  # fmt: skip
    rows = {r["version"]: r for r in json.loads(table.read_text())["versions"]}
    assert rows[candidate]["variant"] == "candidate" and rows[control]["variant"] == "control"
    assert (rows[candidate]["lists"], rows[candidate]["clicked_lists"]) == (5, 1)
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert candidate in capsys.readouterr().out


def test_a_fifo_is_refused_at_once_and_an_unreadable_file_can_be_stopped(tmp_path: Path) -> None:
    """Neither the replicas' loader nor the commands block on a FIFO in the models folder;
    `stop` removes a file that cannot be read (a hand's mistake undone with the command)."""
    os.mkfifo(tmp_path / EXPERIMENT)
    os.mkfifo(tmp_path / bundle.CURRENT)
    with pytest.raises(ExperimentError, match="not a regular file"):
        read_experiment(tmp_path)
    with pytest.raises(bundle.BundleError, match="not a regular file"):
        bundle.current_version(tmp_path)
    (tmp_path / EXPERIMENT).unlink()
    (tmp_path / EXPERIMENT).write_text("{ torn")
    assert stop_experiment(tmp_path) is None and not (tmp_path / EXPERIMENT).exists()


def test_stop_and_promote_is_one_step_refused_when_the_experiment_changed(tmp_path: Path) -> None:
    control, candidate = _versions(tmp_path)
    first = start_experiment(tmp_path, candidate, 0.5)
    stop_experiment(tmp_path)
    second = start_experiment(tmp_path, candidate, 0.5)  # another experiment since `first`
    with pytest.raises(ExperimentError, match="changed meanwhile"):
        stop_experiment(tmp_path, promote=first)
    assert bundle.current_version(tmp_path) == control and read_experiment(tmp_path) == second
    assert stop_experiment(tmp_path, promote=second) == second
    assert bundle.current_version(tmp_path) == candidate and read_experiment(tmp_path) is None


def test_a_torn_tail_of_the_impression_log_is_cut_before_appending(tmp_path: Path) -> None:
    path = tmp_path / "log.impressions"
    store = FileOnline(path, window=10**9, retain_bytes=10**9)
    asyncio.run(store.record([_impression(k, None, "v1", None) for k in range(3)]))
    store.close()
    with path.open("ab") as handle:
        handle.write(b'{"t":"list","id":"torn')  # a crash mid-write
    for restart in range(2):
        store = FileOnline(path, window=10**9, retain_bytes=10**9)
        asyncio.run(store.record([_impression(10 + restart, None, "v1", None)]))
        counts = asyncio.run(store.counts())
        store.close()
        assert sum(c[0] for c in counts.by_version["v1"].values()) == 4 + restart


def test_a_list_the_store_does_not_hold_is_missing_not_foreign(tmp_path: Path) -> None:
    store = FileOnline(tmp_path / "log.impressions", window=100, retain_bytes=10**9)
    asyncio.run(store.record([_impression(1, None, "v1", None)]))
    with pytest.raises(MissingList):
        asyncio.run(store.attribute("u1", ["1"], "0" * 32, 1_764_000_010))
    with pytest.raises(MissingList):  # expired with the window
        asyncio.run(store.attribute("u1", ["1"], f"{1:032x}", 1_764_000_500))
    with pytest.raises(UnknownList):  # another user's
        asyncio.run(store.attribute("u2", ["1"], f"{1:032x}", 1_764_000_010))
    store.close()


def test_report_hours_must_be_positive(capsys: pytest.CaptureFixture[str]) -> None:
    from training.cli import main

    with pytest.raises(SystemExit):
        main(["report", "online", "--hours", "0"])
    assert "must be at least 1" in capsys.readouterr().err
