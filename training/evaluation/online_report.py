"""Online figures for people: the experiment's status, the table of versions and a plot of
their rates over time (`cddae models experiment status`, `cddae report online`).

The counts come from the store the service writes (service.state.online.read_counts); the
offline metrics from each version's manifest.
"""

from __future__ import annotations

import contextlib
import datetime as dt
from pathlib import Path
from typing import Any

from service import bundle
from service.experiment import CANDIDATE, CONTROL, Experiment, ExperimentError, read_experiment
from service.state.online import Counts
from service.state.stats import experiment_summary, online_table, wilson


def _percent(value: float) -> str:
    return f"{100 * value:.2f}%"


def _interval(ci: list[float] | tuple[float, float]) -> str:
    return f"[{_percent(ci[0])}, {_percent(ci[1])}]"


def experiment_status(counts: Counts, experiment: Experiment) -> str:
    """Both variants' rates with intervals, and the difference with its interval."""
    summary = experiment_summary(counts, experiment)
    mode = "shadow" if experiment.shadow else f"{experiment.share:.0%} of users"
    lines = [
        f"experiment {experiment.id} since {experiment.started}: candidate "
        f"{experiment.candidate} ({mode}), control {experiment.control}",
        f"{'variant':<10}{'lists':>10}{'clicked':>10}{'rate':>9}  95% interval   versions",
    ]
    for name, row in summary["variants"].items():
        lines.append(
            f"{name:<10}{row['lists']:>10}{row['clicked_lists']:>10}{_percent(row['rate']):>9}"
            f"  {_interval(row['ci95'])}  {' '.join(row['versions']) or '-'}"
        )
    diff = summary["difference"]
    lo, hi = diff["ci95"]
    verdict = " (includes 0: no difference shown yet)" if lo <= 0 <= hi else ""
    lines.append(
        f"candidate − control: {100 * diff['value']:+.2f} points, 95% interval "
        f"[{100 * lo:+.2f}, {100 * hi:+.2f}]{verdict}"
    )
    if experiment.shadow:
        overlap = summary["shadow_overlap"]
        lines.append(
            f"shadow: {summary['shadow_lists']} users scored by the candidate on the side; "
            f"mean overlap with the served list " + ("-" if overlap is None else _percent(overlap))
        )
    return "\n".join(lines)


def online_rows(models_dir: Path, counts: Counts, since: dt.datetime | None) -> list[dict]:
    """One row per version with online figures: its online rate and interval, and the offline
    P@10 / R@10 its manifest records."""
    variants: dict[str, str] = {}
    with contextlib.suppress(ExperimentError):
        if (experiment := read_experiment(models_dir)) is not None:
            current = bundle.current_version(models_dir)
            variants = {experiment.control: CONTROL, **({current: CONTROL} if current else {}),
                        experiment.candidate: CANDIDATE}  # fmt: skip
    rows = []
    for version, row in online_table(counts, since, variants).items():
        offline: dict[str, Any] = {}
        with contextlib.suppress(bundle.BundleError, OSError):  # a version since removed:
            offline = bundle.read_manifest(models_dir / version).get("metrics", {})  # counts
        rows.append({"version": version, **row, "P@10": offline.get("P@10"),
                     "R@10": offline.get("R@10")})  # fmt: skip
    return rows


def online_text(rows: list[dict]) -> str:
    def offline(value: float | None) -> str:
        return f"{value:.4f}" if value is not None else "-"

    lines = [
        f"{'version':<34}{'lists':>9}{'clicked':>9}{'rate':>9}  {'95% interval':<18}"
        f"{'P@10':>8}{'R@10':>8}  since"
    ]
    for r in rows:
        lines.append(
            f"{r['version']:<34}{r['lists']:>9}{r['clicked_lists']:>9}{_percent(r['rate']):>9}"
            f"  {_interval(r['ci95']):<18}{offline(r['P@10']):>8}{offline(r['R@10']):>8}"
            f"  {r['since']}"
        )
    return "\n".join(lines)


def plot_rates(counts: Counts, since: dt.datetime | None, path: Path, hours: int = 1) -> None:
    """Each version's rate per time bucket (`hours` wide) with its Wilson interval shaded."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    first = int(since.timestamp() // 3600) if since is not None else None
    fig, ax = plt.subplots(figsize=(8, 4.5))
    spans: list[dt.datetime] = []
    for version, by_hour in sorted(counts.by_version.items()):
        buckets: dict[int, list[int]] = {}
        for hour, (lists, clicked) in by_hour.items():
            if first is not None and hour < first:
                continue
            cell = buckets.setdefault(hour // hours * hours, [0, 0])
            cell[0] += lists
            cell[1] += clicked
        if not buckets:
            continue
        keys = sorted(buckets)
        times = [dt.datetime.fromtimestamp(h * 3600, dt.UTC) for h in keys]
        rates = [buckets[h][1] / buckets[h][0] if buckets[h][0] else 0.0 for h in keys]
        bands = [wilson(buckets[h][1], buckets[h][0]) for h in keys]
        below = [r - b[0] for r, b in zip(rates, bands, strict=True)]
        above = [b[1] - r for r, b in zip(rates, bands, strict=True)]
        ax.errorbar(times, rates, yerr=[below, above], marker="o", capsize=4, label=version)
        spans.extend(times)
    if spans:  # a day at least, or one hour's point fills the axis with years
        low, high = min(spans), max(spans)
        pad = max((high - low) * 0.05, dt.timedelta(hours=12))
        ax.set_xlim(low - pad, high + pad)
    ax.set_ylabel("clicked lists / lists")
    ax.set_xlabel("time (UTC)")
    ax.set_title("Online rate per version (95% Wilson intervals)")
    ax.grid(alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=8)
    fig.autofmt_xdate()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
