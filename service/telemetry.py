"""Prometheus metrics, in a registry per app so several apps can live in one process (tests)."""

from __future__ import annotations

import contextlib
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.request_latency = Histogram(
            "cddae_request_seconds", "HTTP request latency", ["route", "method", "status"],
            buckets=LATENCY_BUCKETS, registry=self.registry,
        )  # fmt: skip
        self.inference_latency = Histogram(
            "cddae_inference_seconds", "onnxruntime latency per batch", ["batch"],
            buckets=LATENCY_BUCKETS, registry=self.registry,
        )  # fmt: skip
        self.cache = Counter(
            "cddae_cache_total", "cache lookups", ["result"], registry=self.registry
        )
        self.model_version = Gauge(
            "cddae_model_info",
            "the model versions served (value 1): the one in service, an experiment's candidate",
            ["version"],
            registry=self.registry,
        )
        self.quarantined = Gauge(
            "cddae_store_quarantined_records",
            "records of the interaction store's log that could not be read (set aside, skipped)",
            registry=self.registry,
        )
        # Online figures per version, for the version in service only (labels bounded):
        # exact counts, across processes and restarts, are the store's (GET /stats/online).
        self.lists = Counter(
            "cddae_lists_total", "lists answered (impressions), by model version", ["version"],
            registry=self.registry,
        )  # fmt: skip
        self.impressions_lost = Counter(
            "cddae_impressions_lost_total",
            "impressions the store did not confirm (down, or no reply within the background "
            "write timeout): online counts miss them, unless a late batch did land",
            registry=self.registry,
        )
        self.shadow_skipped = Counter(
            "cddae_shadow_skipped_total",
            "users a shadow experiment's candidate did not score (too many at once, or failed)",
            registry=self.registry,
        )
        # The children every answer touches, looked up once (a label lookup costs 2 µs, more
        # than the increment); created at start, so their series read 0 until used.
        self.cache_hit, self.cache_miss = self.cache.labels("hit"), self.cache.labels("miss")
        self._inference_by_batch = {
            label: self.inference_latency.labels(label) for label in ("1", "2-16", "17+")
        }
        self._versions: set[str] = set()
        # Each (route, method, status) series' child, looked up once: a label lookup per
        # request cost more than the observation. Bounded as the labels are.
        self._request_series: dict[tuple[str, str, int], Any] = {}

    def observe_request(self, route: str, method: str, status: int, seconds: float) -> None:
        """One request's latency. `route` is a route's path template (or "unmatched"),
        `method` one of a fixed set (or "other"): callers keep the labels bounded."""
        key = (route, method, status)
        series = self._request_series.get(key)
        if series is None:
            series = self._request_series[key] = self.request_latency.labels(
                route, method, str(status)
            )
        series.observe(seconds)

    def set_versions(self, versions: set[str]) -> None:
        """The versions served (the one in service, an experiment's candidate): only these
        keep labels."""
        for gone in self._versions - versions:
            with contextlib.suppress(KeyError):
                self.model_version.remove(gone)
            with contextlib.suppress(KeyError):
                self.lists.remove(gone)
        for version in versions - self._versions:
            self.model_version.labels(version).set(1)
        self._versions = set(versions)

    def observe_inference(self, batch: int, seconds: float) -> None:
        """One onnxruntime call's latency, by batch size (three buckets: bounded labels)."""
        label = "1" if batch == 1 else "2-16" if batch <= 16 else "17+"
        self._inference_by_batch[label].observe(seconds)
