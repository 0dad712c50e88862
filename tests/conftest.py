from __future__ import annotations

from pathlib import Path

import pytest

from tests.synthetic import write_grouplens


@pytest.fixture(scope="session")
def synthetic_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_grouplens(tmp_path_factory.mktemp("synthetic") / "ml-tiny")
