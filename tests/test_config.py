"""Settings: what the environment may say, and what it must not be able to mean."""

from __future__ import annotations

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
