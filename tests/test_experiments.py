"""The paper-experiment suite's --quick path on tiny synthetic data: report, figures, tables."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from service.features import FeatureSpec, fit_field
from training.cli import main
from training.experiments import paper_settings, user_columns


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
    assert "| EASE | " in report and "seeds where CDDAE is ahead" in report
    verdicts = re.findall(r"\*\*(held|did not hold|mixed)\*\*", report)
    assert len(verdicts) >= 8  # exp1..exp4, in the summary table and under each section


def test_quick_is_a_subset_of_the_full_suite() -> None:
    quick = {s.key for s in paper_settings(quick=True)}
    full = {s.key for s in paper_settings(quick=False)}
    assert quick < full and len(full) == 44


def test_user_columns_select_fields() -> None:
    spec = FeatureSpec(
        (fit_field("gender", "categorical", ["F", "M"]), fit_field("age", "bucket", []))
    )
    assert user_columns(spec, ["gender"]).tolist() == [0, 1]
    assert user_columns(spec, ["age"]).tolist() == list(range(2, 9))
    assert user_columns(spec, ()).tolist() == []
    assert np.array_equal(user_columns(spec, None), np.arange(spec.width))
