"""Online figures from the store's counts: rates per version with Wilson intervals."""

from __future__ import annotations

import datetime as dt
import math
from typing import Any

from service.state.online import Counts

Z95 = 1.959964


def wilson(successes: int, trials: int, z: float = Z95) -> tuple[float, float]:
    """The Wilson score interval of a proportion: sound at small counts and near 0 or 1, where
    the normal approximation gives intervals outside [0, 1]."""
    if trials <= 0:
        return 0.0, 1.0
    p = successes / trials
    denominator = 1 + z * z / trials
    centre = (p + z * z / (2 * trials)) / denominator
    half = z * math.sqrt(p * (1 - p) / trials + z * z / (4 * trials * trials)) / denominator
    return max(0.0, centre - half), min(1.0, centre + half)


def online_table(
    counts: Counts | None, since: dt.datetime | None = None
) -> dict[str, dict[str, Any]]:
    """`{version: {lists, clicked_lists, rate, ci95, variant, since}}` from the hours at or
    after `since` (by the hour the list was answered)."""
    if counts is None:
        return {}
    if since is not None and since.tzinfo is None:
        since = since.replace(tzinfo=dt.UTC)
    first = int(since.timestamp() // 3600) if since is not None else None
    table = {}
    for version, hours in sorted(counts.by_version.items()):
        kept = {h: c for h, c in hours.items() if first is None or h >= first}
        lists = sum(c[0] for c in kept.values())
        clicked = sum(c[1] for c in kept.values())
        if not lists:
            continue
        start = dt.datetime.fromtimestamp(min(kept) * 3600, dt.UTC)
        table[version] = {
            "lists": lists,
            "clicked_lists": clicked,
            "rate": round(clicked / lists, 6),
            "ci95": [round(b, 6) for b in wilson(clicked, lists)],
            "variant": None,
            "since": start.isoformat(),
        }
    return table
