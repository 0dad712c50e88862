"""ONNX export of the model variants beyond the default (each a trace of its own, ~20 s):
part of `make e2e`, as tests/test_export.py's checks."""

from pathlib import Path

import pytest

from tests.test_export import check_export


@pytest.mark.parametrize("kind", ["cdae", "cddae-vae", "cddae-linear", "cddae-recvae"])
def test_export_parity_and_bundle(synthetic_dir: Path, tmp_path: Path, kind: str) -> None:
    check_export(synthetic_dir, tmp_path, kind)
