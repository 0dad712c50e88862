"""The paper-experiment suite's --quick path on tiny synthetic data: report, figures, tables."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from service.features import FeatureSpec, fit_field
from training.cli import main
from training.experiments.paper import paper_settings, user_columns
from training.experiments.paper_report import Stats, _exp1_claim


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


def test_quick_is_a_subset_of_the_full_suite() -> None:
    quick = {s.key for s in paper_settings(quick=True)}
    full = {s.key for s in paper_settings(quick=False)}
    assert quick < full and len(full) == 50  # 48 of the paper and baselines, two ablations


def test_new_users_files_are_checked_before_any_run(
    synthetic_dir: Path, tmp_path: Path, capsys
) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text("[1, 2]")
    base = ["experiments", "paper", "--data", str(synthetic_dir), "--seeds", "1",
            "--output", str(tmp_path / "report")]  # fmt: skip
    assert main([*base, "--new-users-json", str(bad), str(bad)]) == 2
    assert "one file per seed (1), got 2" in capsys.readouterr().err
    assert main([*base, "--new-users-json", str(bad)]) == 2
    assert "bad.json: not a `cddae new-users --json` file" in capsys.readouterr().err
    assert not (tmp_path / "report").exists()


def test_a_model_at_popularitys_figures_is_reported_as_collapsed() -> None:
    def stats(p: float, r: float) -> Stats:
        metrics = {"P": [p] * 10, "R": [r] * 10}
        return Stats([{"metrics": metrics, "seconds": 1.0, "seed": 0}])

    popular, best = stats(0.1155, 0.1300), stats(0.2278, 0.2530)
    # CDDAE: 0.4% and 2.3% of the best baseline's lift over popularity, still a copy of it.
    copies = {"DAE": stats(0.1156, 0.1301), "CDAE": stats(0.1157, 0.1299),
              "CDDAE": stats(0.1159, 0.1328)}  # fmt: skip
    _, measured, verdict = _exp1_claim(copies, popular, best)
    assert verdict == "not testable" and "collapsed" in measured
    assert "CDDAE 0.4% / 2.3%" in measured and "DAE 0.1% / 0.1%" in measured
    learned = {"DAE": stats(0.20, 0.22), "CDAE": stats(0.19, 0.21), "CDDAE": stats(0.22, 0.25)}
    _, measured, verdict = _exp1_claim(learned, popular, best)
    assert "collapsed" not in measured and verdict == "held"


def test_user_columns_select_fields() -> None:
    spec = FeatureSpec(
        (fit_field("gender", "categorical", ["F", "M"]), fit_field("age", "bucket", []))
    )
    assert user_columns(spec, ["gender"]).tolist() == [0, 1]
    assert user_columns(spec, ["age"]).tolist() == list(range(2, 9))
    assert user_columns(spec, ()).tolist() == []
    assert np.array_equal(user_columns(spec, None), np.arange(spec.width))
