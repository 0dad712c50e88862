"""The paper-experiment suite's --quick path on tiny synthetic data: report, figures, tables."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from service.features import FeatureSpec, fit_field
from training.cli import main
from training.experiments.paper import paper_settings, user_columns
from training.experiments.paper_report import Stats, _exp1_claim


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
