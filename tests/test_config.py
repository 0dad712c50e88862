"""Settings: what the environment may say, and what it must not be able to mean."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from service.config import Settings


def test_an_empty_token_is_no_token(monkeypatch: pytest.MonkeyPatch) -> None:
    """Compose passes an unset ${CDDAE_ADMIN_TOKEN:-} as "": that must switch the endpoint off,
    not make "Bearer " the password."""
    monkeypatch.setenv("CDDAE_ADMIN_TOKEN", "")
    monkeypatch.setenv("CDDAE_WRITE_TOKEN", "  ")
    settings = Settings()
    assert settings.admin_token is None and settings.write_token is None


def test_several_workers_need_redis(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CDDAE_WORKERS", "2")
    monkeypatch.setenv("CDDAE_REDIS_URL", "")
    with pytest.raises(ValidationError, match="CDDAE_WORKERS > 1 needs CDDAE_REDIS_URL"):
        Settings()
    monkeypatch.setenv("CDDAE_REDIS_URL", "redis://127.0.0.1:6379/0")
    assert Settings().workers == 2


def test_the_write_token_can_come_from_a_file(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """Compose generates a token at first start into a volume only the API reads."""
    token = tmp_path / "write-token"
    token.write_text("s3cret\n")
    monkeypatch.setenv("CDDAE_WRITE_TOKEN_FILE", str(token))
    assert Settings().write_token.get_secret_value() == "s3cret"
    monkeypatch.setenv("CDDAE_WRITE_TOKEN", "given")  # an explicit token wins
    assert Settings().write_token.get_secret_value() == "given"
    monkeypatch.delenv("CDDAE_WRITE_TOKEN")
    token.write_text("")
    with pytest.raises(ValueError, match="CDDAE_WRITE_TOKEN_FILE: the file is empty"):
        Settings()
    monkeypatch.setenv("CDDAE_WRITE_TOKEN_FILE", str(tmp_path / "absent"))
    with pytest.raises(ValueError, match="cannot read it"):
        Settings()


def test_open_writes_ignore_the_token_file(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("CDDAE_WRITE_TOKEN_FILE", str(tmp_path / "never-made"))
    monkeypatch.setenv("CDDAE_OPEN_WRITES", "true")
    assert Settings().write_token is None
    monkeypatch.setenv("CDDAE_WRITE_TOKEN", "t")
    with pytest.raises(ValueError, match="contradict"):
        Settings()


def test_a_renamed_setting_stops_the_start_naming_its_new_name(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Ignored like any unknown name, the old timeout would have left the default in force."""
    monkeypatch.setenv("CDDAE_CACHE_WRITE_TIMEOUT_SECONDS", "2")
    with pytest.raises(ValueError, match="is now CDDAE_BACKGROUND_WRITE_TIMEOUT_SECONDS"):
        Settings()
    monkeypatch.delenv("CDDAE_CACHE_WRITE_TIMEOUT_SECONDS")
    monkeypatch.setenv("CDDAE_BACKGROUND_WRITE_TIMEOUT_SECONDS", "2")
    assert Settings().background_write_timeout_seconds == 2


@pytest.mark.parametrize(
    ("url", "why"),
    [
        ("redis://127.0.0.1:6379/0?ssl_cert_reqs=none", "an option redis-py refuses"),
        ("rediss://h:6380/0?socket_connect_timeout_ms=5", "an option redis-py refuses"),
        ("rediss://h:6380/0?ssl_cert_reqs=bogus", "an option redis-py refuses"),
        ("unix://redis.sock", "absolute path"),
        ("redis://h:port/0", "cannot be read"),
    ],
)
def test_a_redis_url_redis_py_would_refuse_stops_the_start(url: str, why: str) -> None:
    """Read only at the first connect, such options made every request a 500, and a unix URL
    without a path crashed the start without naming the setting."""
    with pytest.raises(ValueError, match=f"CDDAE_REDIS_URL.*{why}"):
        Settings(redis_url=url)
    for fine in ("rediss://u:p@h:6380/2?ssl_cert_reqs=none", "unix:///run/redis.sock?db=2"):
        assert Settings(redis_url=fine).redis_url == fine


def test_a_refused_setting_never_echoes_its_value(monkeypatch: pytest.MonkeyPatch) -> None:
    """A Redis URL (or a token) may hold a secret; the start's message goes to the logs."""
    monkeypatch.setenv("CDDAE_REDIS_URL", "redis://user:s3cret-pw@h:port/0")
    with pytest.raises(ValueError) as refused:
        Settings()
    assert "CDDAE_REDIS_URL" in str(refused.value) and "s3cret-pw" not in str(refused.value)


def test_the_old_name_left_empty_is_no_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    """Compose passes an unset variable as empty: that sets nothing, old name or not."""
    monkeypatch.setenv("CDDAE_CACHE_WRITE_TIMEOUT_SECONDS", "")
    assert Settings().background_write_timeout_seconds == 1.0
