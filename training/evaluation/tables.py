"""Plain-text tables of metrics for the terminal and for reports."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

COLUMNS = ("P", "R", "PU", "RU", "NDCG", "MAP", "COV")


def metrics_table(metrics: Mapping[str, Sequence[float]], columns: Sequence[str] = COLUMNS) -> str:
    """One row per N = 1..10, one column per metric, four decimals."""
    present = [c for c in columns if c in metrics]
    lines = ["  N  " + "  ".join(f"{c:>7}" for c in present)]
    for n in range(len(metrics[present[0]])):
        lines.append(f"{n + 1:>3}  " + "  ".join(f"{metrics[c][n]:7.4f}" for c in present))
    return "\n".join(lines)
