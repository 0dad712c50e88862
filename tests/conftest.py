from __future__ import annotations

from pathlib import Path

import pytest

from tests.synthetic import write_grouplens


@pytest.fixture(scope="session")
def synthetic_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_grouplens(tmp_path_factory.mktemp("synthetic") / "ml-tiny")


@pytest.fixture(scope="session")
def two_small_bundles(tmp_path_factory: pytest.TempPathFactory, synthetic_dir: Path) -> Path:
    """Two real exports of one small CDDAE, the first promoted: a models folder for in-process
    tests to copy (made once: a trace costs seconds)."""
    from tests.inprocess import small_bundles

    models = tmp_path_factory.mktemp("small-models")
    small_bundles(synthetic_dir, models, count=2)
    return models
