"""The ml-100k fetch: local copies are checked, bad sources refused, nothing half-written."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from training.data import fetch
from training.data.loaders import DataError


def test_a_local_copy_that_is_not_ml100k_is_refused(synthetic_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"not MovieLens-100K: found .*'ratings': 1560"):
        fetch.fetch_ml100k(tmp_path / "cache", synthetic_dir, log=lambda _: None)
    assert list((tmp_path / "cache").iterdir()) == []  # no target, no staging left behind


def test_a_wheel_with_the_wrong_checksum_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def fake_pip(command, check):
        dest = Path(command[command.index("--dest") + 1])
        (dest / "recbole-1.2.1-py3-none-any.whl").write_bytes(b"not the real wheel")
        return subprocess.CompletedProcess(command, 0)

    def unreachable(*_args, **_kwargs):
        raise OSError("no route to host")

    monkeypatch.setattr(fetch.subprocess, "run", fake_pip)
    monkeypatch.setattr(fetch, "_download_grouplens", unreachable)
    monkeypatch.delenv(fetch.ENV_SOURCE, raising=False)
    messages: list[str] = []
    with pytest.raises(DataError, match=r"sha256 .* does not match the pinned one"):
        fetch.fetch_ml100k(tmp_path, log=messages.append)
    assert any("GroupLens unreachable" in m for m in messages)
    assert not (tmp_path / "ml-100k").exists()


def test_the_environment_variable_names_the_source(
    synthetic_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(fetch.ENV_SOURCE, str(synthetic_dir))
    messages: list[str] = []
    with pytest.raises(DataError, match="not MovieLens-100K"):
        fetch.fetch_ml100k(tmp_path, log=messages.append)
    assert messages == [f"copying ml-100k from {synthetic_dir}"]
