"""Settings: one validated object, read from CDDAE_* environment variables.

A bad value stops the service at start with a message naming the variable, rather than
failing later on a request.
"""

from __future__ import annotations

import os
from pathlib import Path

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict
from redis.asyncio.connection import Connection, UnixDomainSocketConnection, parse_url
from redis.exceptions import RedisError

# Settings renamed since a release: under the old name a value would be silently ignored
# (unknown CDDAE_* names are, for the training jobs' own), so the old name stops the start.
RENAMED = {"CDDAE_CACHE_WRITE_TIMEOUT_SECONDS": "CDDAE_BACKGROUND_WRITE_TIMEOUT_SECONDS"}


class Settings(BaseSettings):
    # Errors never echo a value: a Redis URL or a token may hold a secret.
    model_config = SettingsConfigDict(
        env_prefix="CDDAE_", extra="ignore", hide_input_in_errors=True
    )

    models_dir: Path = Path("models")
    redis_url: str | None = Field(
        default=None, description="redis://host:port/db; unset: in-process cache and stores"
    )
    redis_timeout_seconds: float = Field(default=0.05, gt=0, le=5)
    background_write_timeout_seconds: float = Field(
        default=1.0,
        gt=0,
        le=30,
        description="the writes no request waits on (the cache's, the impressions') and the "
        "catalogue's whole read after an item write: a burst, a large read, or the connection "
        "they reopen, may take this long under load",
    )
    redis_retry_seconds: float = Field(
        default=1.0, gt=0, description="after a Redis failure, bypass it this long, then retry"
    )
    cache_ttl_seconds: int = Field(default=300, ge=1)
    cache_ttl_jitter: float = Field(default=0.1, ge=0, le=1, description="± share of the TTL")
    local_cache_bytes: int = Field(
        default=64 * 2**20, ge=2**16, description="in-process cache bound, bytes of lists"
    )
    max_n: int = Field(default=100, ge=1)
    max_batch: int = Field(default=64, ge=1)
    max_body_bytes: int = Field(default=1_000_000, ge=1024)
    admin_token: SecretStr | None = None
    write_token: SecretStr | None = Field(
        default=None,
        description="when set, recording interactions and profiles needs this bearer token",
    )
    open_writes: bool = Field(
        default=False,
        description="writes need no token, even where a token file is configured (only behind "
        "something else that authenticates writers)",
    )
    write_token_file: Path | None = Field(
        default=None,
        description="the write token read from this file when CDDAE_WRITE_TOKEN is unset "
        "(compose generates one at first start)",
    )
    ort_threads: int = Field(default=1, ge=1, le=64, description="onnxruntime intra-op threads")
    micro_batch_ms: float = Field(
        default=0, ge=0, le=100, description="0: one onnxruntime call per request (see batcher.py)"
    )
    reload_interval_seconds: float = Field(default=2.0, gt=0)
    idle_timeout_seconds: int = Field(
        default=5,
        ge=1,
        description="a connection idle this long (before or between requests) is closed",
    )
    max_connections: int = Field(
        default=2048, ge=16, description="connections and tasks at once; beyond, 503s"
    )
    max_connections_per_client: int | None = Field(
        default=None,
        ge=1,
        description="connections one client address may hold at once (beyond, closed at "
        "once); unset: a quarter of max_connections",
    )
    request_timeout_seconds: float = Field(
        default=10.0,
        gt=0,
        le=600,
        description="a request (headers and body) must arrive whole within this time of its "
        "first byte, else the connection is closed",
    )
    idempotency_ttl_seconds: int = Field(
        default=86_400,
        ge=60,
        description="how long Redis remembers a write's Idempotency-Key (the window for "
        "retries); the file store remembers the newest 100,000",
    )
    max_history: int = Field(
        default=5_000,
        ge=1,
        le=1_000_000,
        description="recorded items kept per user for serving (the most recent); the log "
        "keeps them all for training",
    )
    record_impressions: bool = Field(
        default=True,
        description="give every answer a recommendation_id and record it for online figures "
        "(docs/ONLINE.md); false: neither",
    )
    attribution_window_seconds: int = Field(
        default=86_400,
        ge=60,
        le=30 * 86_400,
        description="an interaction is attributed to the most recent list served to the user "
        "within this time that held the item (and a recommendation_id is accepted this long)",
    )
    impressions_retain: int = Field(
        default=1_000_000,
        ge=1_000,
        description="impressions the Redis stream keeps (about; the counts are kept apart)",
    )
    impressions_log_bytes: int = Field(
        default=256 * 2**20,
        ge=2**16,
        description="the file store's impression log rotates past this size (one old segment "
        "kept; the counts are kept apart)",
    )
    max_api_items: int = Field(
        default=10_000,
        ge=1,
        le=10_000_000,
        description="items that PUT /items/{id} may create beyond the model's catalogue (a "
        "retrain folds them in); each item write makes every process read what changed and "
        "rebuild its view, ~10 ms at 10,000 and ~0.2 s at 100,000, and a process's start "
        "read and build it all, 0.4 s and 5 s (docs/SERVICE.md)",
    )
    max_api_users: int = Field(
        default=100_000,
        ge=1,
        le=100_000_000,
        description="users that PUT /users/{id}/profile may create before a retrain reads "
        "them (then 409); the model in service settles those created before its events' mark",
    )
    workers: int = Field(
        default=1,
        ge=1,
        le=64,
        description="server processes; more than one needs Redis (the embedded store is one "
        "process's)",
    )
    interactions_log: Path = Field(
        default=Path("data/interactions.jsonl"),
        description="append-only store for new interactions and profiles when Redis is unset",
    )

    @model_validator(mode="before")
    @classmethod
    def _no_old_names(cls, data: object) -> object:
        for old, new in RENAMED.items():  # empty: compose passing an unset variable on
            if any(name.upper() == old and value.strip() for name, value in os.environ.items()):
                raise ValueError(f"{old} is now {new} (it covers every background write): "
                                 "remove the old name, set the new one")  # fmt: skip
        return data

    @model_validator(mode="after")
    def _token_from_file(self) -> Settings:
        if self.open_writes:
            if self.write_token is not None:
                raise ValueError("CDDAE_OPEN_WRITES and CDDAE_WRITE_TOKEN contradict each other")
            return self
        if self.write_token is None and self.write_token_file is not None:
            try:
                token = self.write_token_file.read_text().strip()
            except OSError as error:
                raise ValueError(f"CDDAE_WRITE_TOKEN_FILE: cannot read it ({error})") from None
            if not token:
                raise ValueError("CDDAE_WRITE_TOKEN_FILE: the file is empty")
            self.write_token = SecretStr(token)
        return self

    @model_validator(mode="after")
    def _workers_share_redis(self) -> Settings:
        if self.workers > 1 and not self.redis_url:
            raise ValueError("CDDAE_WORKERS > 1 needs CDDAE_REDIS_URL: the embedded store and "
                             "cache belong to one process")  # fmt: skip
        return self

    @property
    def per_client_connections(self) -> int:
        return min(
            self.max_connections_per_client or max(1, self.max_connections // 4),
            self.max_connections,
        )

    @field_validator("admin_token", "write_token", mode="before")
    @classmethod
    def _empty_is_unset(cls, value: object) -> object:
        """`CDDAE_ADMIN_TOKEN=` (as compose passes an unset variable) means no token, never
        "the empty token", which any `Bearer ` header would match."""
        if isinstance(value, str) and not value.strip():
            return None
        return value

    @field_validator("redis_url")
    @classmethod
    def _redis_scheme(cls, value: str | None) -> str | None:
        if value in (None, ""):
            return None
        if not value.startswith(("redis://", "rediss://", "unix://")):
            raise ValueError("must start with redis://, rediss:// or unix://")
        # Every option as redis-py takes it, read now: an option it does not take failed every
        # request on the first connect (500s), a unix URL without a path at the start.
        try:
            options = parse_url(value)
        except ValueError as error:
            raise ValueError(f"CDDAE_REDIS_URL cannot be read: {error}") from None
        kind = options.pop("connection_class", Connection)
        if kind is UnixDomainSocketConnection and not options.get("path", "").startswith("/"):
            raise ValueError("CDDAE_REDIS_URL: a unix:// URL names the socket by its absolute "
                             "path (unix:///run/redis/redis.sock)")  # fmt: skip
        try:
            kind(**options)  # a connection made, not opened
        except (TypeError, ValueError, RedisError) as error:
            raise ValueError(f"CDDAE_REDIS_URL: an option redis-py refuses: {error}") from None
        return value
