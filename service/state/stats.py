"""Online figures from the store's counts: rates per version with Wilson intervals, and an
experiment's two variants with the difference's interval (Newcombe's)."""

from __future__ import annotations

import datetime as dt
import math
from typing import Any

from service.experiment import CANDIDATE, CONTROL, Experiment
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


def difference(
    clicked_a: int, lists_a: int, clicked_b: int, lists_b: int, z: float = Z95
) -> tuple[float, tuple[float, float]]:
    """(rate a − rate b, its 95% interval) by Newcombe's hybrid score method (his method 10),
    built from the two Wilson intervals: sound where the Wald interval is not (small counts,
    rates near 0)."""
    p_a = clicked_a / lists_a if lists_a else 0.0
    p_b = clicked_b / lists_b if lists_b else 0.0
    lo_a, hi_a = wilson(clicked_a, lists_a, z)
    lo_b, hi_b = wilson(clicked_b, lists_b, z)
    d = p_a - p_b
    lower = d - math.sqrt((p_a - lo_a) ** 2 + (hi_b - p_b) ** 2)
    upper = d + math.sqrt((hi_a - p_a) ** 2 + (p_b - lo_b) ** 2)
    return d, (max(-1.0, lower), min(1.0, upper))


def _rated(lists: int, clicked: int) -> dict[str, Any]:
    return {
        "lists": lists,
        "clicked_lists": clicked,
        "rate": round(clicked / lists, 6) if lists else 0.0,
        "ci95": [round(b, 6) for b in wilson(clicked, lists)],
    }


def experiment_summary(counts: Counts | None, experiment: Experiment) -> dict[str, Any]:
    """Both variants of the experiment (counted by arm, so exact whatever the hour it started
    in, and whichever versions served a variant meanwhile), the candidate's rate less the
    control's with its interval, and in shadow mode the overlap of the candidate's lists."""
    counts = counts or Counts()
    variants = {}
    for variant in (CONTROL, CANDIDATE):
        versions = counts.by_arm(experiment.arm(variant))
        lists = sum(c[0] for c in versions.values())
        clicked = sum(c[1] for c in versions.values())
        variants[variant] = {**_rated(lists, clicked), "versions": sorted(versions)}
    a, b = variants[CANDIDATE], variants[CONTROL]
    d, (lo, hi) = difference(a["clicked_lists"], a["lists"], b["clicked_lists"], b["lists"])
    lists, overlap = counts.shadow.get(f"{experiment.id}|{experiment.candidate}", [0, 0.0])
    return {
        "id": experiment.id,
        "candidate": experiment.candidate,
        "control": experiment.control,
        "share": experiment.share,
        "shadow": experiment.shadow,
        "started": experiment.started,
        "variants": variants,
        "difference": {"value": round(d, 6), "ci95": [round(lo, 6), round(hi, 6)]},
        "shadow_lists": int(lists),
        "shadow_overlap": round(overlap / lists, 6) if lists else None,
    }


def online_table(
    counts: Counts | None,
    since: dt.datetime | None = None,
    variants: dict[str, str] | None = None,
) -> dict[str, dict[str, Any]]:
    """`{version: {lists, clicked_lists, rate, ci95, variant, since}}` from the hours at or
    after `since` (by the hour the list was answered); `variants` names the running
    experiment's versions."""
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
            **_rated(lists, clicked),
            "variant": (variants or {}).get(version),
            "since": start.isoformat(),
        }
    return table
