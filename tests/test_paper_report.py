"""The paper-experiment suite's --quick path end to end on tiny synthetic data: report,
figures, tables, verdicts (a minute of training: `make e2e`)."""

from __future__ import annotations

import re
from pathlib import Path

from training.cli import main
from training.experiments.paper import paper_settings


def test_quick_suite_writes_a_complete_report(synthetic_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "report"
    args = ["experiments", "paper", "--data", str(synthetic_dir), "--quick", "--seeds", "2",
            "--epochs", "3", "--output", str(out)]  # fmt: skip
    assert main(args) == 0
    report = (out / "REPORT.md").read_text()
    assert report.startswith("# Reproducing")
    assert "cddae experiments paper --data" in report and "--quick" in report
    assert "split seeds [0, 1]" in report
    settings = paper_settings(quick=True)
    for experiment in {s.experiment for s in settings}:
        figure = out / f"{experiment}.png"
        assert figure.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert f"]({experiment}.png)" in report
    rows = [line.strip("|").split("|") for line in report.splitlines()]
    table_rows = {r[0].strip(): r[1:-1] for r in rows if len(r) == 14}  # setting, 12 cells, fit s
    for setting in settings:  # every setting has a full row: 12 cells, each mean ± std
        cells = table_rows[setting.label]
        assert all(re.fullmatch(r" \d\.\d{4} ± \d\.\d{4} ", c) for c in cells), cells
    assert (
        "| EASE | " in report and "| EDLAE | " in report and "seeds where CDDAE is ahead" in report
    )
    verdicts = re.findall(r"\*\*(held|did not hold|mixed|not testable)\*\*", report)
    assert len(verdicts) >= 10  # exp1 (twice)..exp4, in the summary and under each section
    # The new-users section: its K table for both metrics, its plot and both goals.
    assert "## New users" in report and (out / "new_users.png").read_bytes()[:4] == b"\x89PNG"
    for metric in ("P@10", "R@10"):
        assert f"| {metric} | K = 0 | K = 1 | K = 3 | K = 5 |" in report
    goal = r"Goal at K = {}, CDDAE's {} ≥ the best of {} \([\w ]+\){}: \*\*(met|missed)\*\*"
    demographic = "popularity by gender, popularity by occupation, popularity by age"
    assert re.search(goal.format(0, "P@10", demographic, " on ≥ 80% of the seeds"), report)
    for k in (1, 3, 5):
        assert re.search(goal.format(k, "R@10", "ease, edlae, itemknn", ""), report), k
