"""The bundle contract: round trip, refused corruptions, atomic writes, promote and roll back."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from service import bundle
from service.bundle import BundleError, load_bundle, write_bundle
from service.features import FeatureSpec, fit_field


def _files(onnx: bytes = b"fake onnx graph") -> dict[str, bytes]:
    spec = FeatureSpec((fit_field("gender", "categorical", ["F", "M"]),))
    return {
        "model.onnx": onnx,
        "arrays.npz": bundle.arrays_payload(
            {
                "user_ids": np.array(["1", "2"]),
                "item_ids": np.array(["10"]),
                "item_titles": np.array(["A"]),
                "item_genres": np.array(["Drama|War"]),
                "has_profile": np.array([True, False]),
                "history_indptr": np.array([0, 1, 1]),
                "history_indices": np.array([0], dtype=np.int32),
                "seen_indptr": np.array([0, 1, 2]),
                "seen_indices": np.array([0, 0], dtype=np.int32),
                "user_features": np.array([[1, 0], [0, 0]], dtype=np.float32),
                "popularity": np.array([1.0], dtype=np.float32),
            }
        ),
        "features.json": json.dumps(
            {"user_spec": spec.to_dict(), "item_spec": FeatureSpec().to_dict()}
        ).encode(),
    }


def test_round_trip(tmp_path: Path) -> None:
    version = write_bundle(tmp_path, _files(), {"model": {"kind": "dae"}})
    loaded = load_bundle(tmp_path / version)
    assert loaded.version == version and loaded.manifest["model"] == {"kind": "dae"}
    assert loaded.item_ids.tolist() == ["10"] and loaded.user_ids.tolist() == ["1", "2"]
    assert loaded.item_genres.tolist() == ["Drama|War"] and loaded.has_profile.tolist() == [1, 0]
    assert loaded.history(0).tolist() == [0] and loaded.history(1).tolist() == []
    assert loaded.seen(0).tolist() == [0] and loaded.seen(1).tolist() == [0]
    assert loaded.user_spec.encode({"gender": "M"}).tolist() == [0.0, 1.0]
    assert loaded.onnx_path.read_bytes() == b"fake onnx graph"
    assert bundle.list_versions(tmp_path) == [version]
    assert (tmp_path / version).stat().st_mode & 0o777 == 0o755  # readable by a serving user


def _corrupt_truncate(folder: Path) -> None:
    (folder / "model.onnx").write_bytes(b"fake")


def _corrupt_arrays(folder: Path) -> None:
    (folder / "arrays.npz").write_bytes(b"PK")


def _corrupt_missing(folder: Path) -> None:
    (folder / "features.json").unlink()


def _corrupt_future(folder: Path) -> None:
    manifest = json.loads((folder / "manifest.json").read_text())
    manifest["format_version"] = bundle.FORMAT_VERSION + 1
    (folder / "manifest.json").write_text(json.dumps(manifest))


def _format_1(folder: Path) -> None:
    """A bundle from before the seen lists: one history list served as both."""
    manifest = json.loads((folder / "manifest.json").read_text())
    manifest["format_version"] = 1
    (folder / "manifest.json").write_text(json.dumps(manifest))


@pytest.mark.parametrize(
    ("corrupt", "message"),
    [
        (_corrupt_truncate, r"model\.onnx: sha256 .* does not match"),
        (_corrupt_arrays, r"arrays\.npz: sha256 .* does not match"),
        (_corrupt_missing, r"features\.json: missing file"),
        (_corrupt_future, r"format version 5 is newer than this reader's 4"),
        (_format_1, r"format version 1 is older .* re-export it with `cddae export`"),
    ],
)
def test_corrupt_bundles_are_refused_with_the_reason(tmp_path: Path, corrupt, message: str) -> None:
    version = write_bundle(tmp_path, _files(), {})
    corrupt(tmp_path / version)
    with pytest.raises(BundleError, match=message):
        load_bundle(tmp_path / version)
    with pytest.raises(BundleError, match=message):
        bundle.promote(tmp_path, version)


def test_interrupted_write_leaves_no_version_and_pointer_untouched(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    first = write_bundle(tmp_path, _files(), {})
    bundle.promote(tmp_path, first)

    def crash(*_args):
        raise OSError("disk gone")

    monkeypatch.setattr(os, "rename", crash)
    with pytest.raises(OSError, match="disk gone"):
        write_bundle(tmp_path, _files(b"another graph"), {})
    assert bundle.list_versions(tmp_path) == [first]
    assert bundle.current_version(tmp_path) == first
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".tmp-")]


def test_promote_rollback_and_gc(tmp_path: Path) -> None:
    versions = [write_bundle(tmp_path, _files(bytes([n])), {}) for n in range(4)]
    assert versions == sorted(versions)
    with pytest.raises(BundleError, match="nothing to roll back"):
        bundle.rollback(tmp_path)
    bundle.promote(tmp_path, versions[0])
    bundle.promote(tmp_path, versions[2])
    assert bundle.current_version(tmp_path) == versions[2]
    assert bundle.rollback(tmp_path) == versions[0]
    assert bundle.current_version(tmp_path) == versions[0]
    removed = bundle.gc(tmp_path, keep=1)
    assert removed == versions[1:3]
    assert bundle.list_versions(tmp_path) == [versions[0], versions[3]]


def test_rollback_goes_to_the_version_before_current(tmp_path: Path) -> None:
    """Issue 19: HISTORY's last entry is not always CURRENT (a hand moved the pointer)."""
    versions = [write_bundle(tmp_path, _files(bytes([n])), {}) for n in range(3)]
    for version in versions:
        bundle.promote(tmp_path, version)
    (tmp_path / bundle.CURRENT).write_text(versions[1] + "\n")
    assert bundle.rollback(tmp_path) == versions[0]
    assert bundle.promotion_history(tmp_path) == [versions[0]]


@pytest.mark.parametrize("pointer", ["\n", "   ", "../x", "a/b", "garbage\x00", "..hidden"])
def test_a_pointer_that_names_no_version_stops_the_bookkeeping(
    tmp_path: Path, pointer: str
) -> None:
    """Issue 19 (6): a blank CURRENT read as "nothing in service" made retrain start from
    scratch with no gate; now it is an error, as garbage is."""
    (tmp_path / bundle.CURRENT).write_text(pointer)
    with pytest.raises(BundleError, match=r"blank|not a version name"):
        bundle.current_version(tmp_path)
    with pytest.raises(BundleError):
        bundle.rollback(tmp_path)
    with pytest.raises(BundleError, match="not a version name"):
        bundle.promote(tmp_path, "../x")


def test_promote_refuses_an_unknown_version(tmp_path: Path) -> None:
    with pytest.raises(BundleError, match=r"missing manifest\.json"):
        bundle.promote(tmp_path, "20990101T000000000000Z-deadbeef")
    assert bundle.current_version(tmp_path) is None


def test_service_and_cli_import_no_torch() -> None:
    code = (
        "import sys, service, service.bundle, service.features\n"
        "import importlib, pkgutil\n"
        "for m in pkgutil.walk_packages(service.__path__, 'service.'):\n"
        "    importlib.import_module(m.name)\n"
        "import training.cli\n"
        "training.cli.build_parser()  # what `cddae serve` runs before serving\n"
        "for heavy in ('torch', 'scipy'):\n"
        "    assert heavy not in sys.modules, heavy + ' imported'\n"
        "print(len(sys.modules))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert int(result.stdout) > 100  # the walk really imported the service's sub-packages


def test_id_index_finds_ids_by_binary_search() -> None:
    index = bundle.IdIndex(np.array(["10", "2", "abc", "1"]))
    assert index.get("2") == 1 and index["abc"] == 2 and index.get("3") is None
    assert "10" in index and "x" not in index
    assert index.lookup(np.array(["1", "nope", "10"])).tolist() == [3, -1, 0]
    assert bundle.IdIndex(np.array([], dtype=str)).lookup(np.array(["1"])).tolist() == [-1]


def test_a_longer_id_is_never_cut_to_a_known_one() -> None:
    """Ids stored as <U2 once turned "80999" into item "80" (a write recorded the wrong item)."""
    index = bundle.IdIndex(np.array([str(k) for k in range(1, 81)]))
    assert index.lookup(["80999", "8000x", "80", "1²", "zz"]).tolist() == [-1, -1, 79, -1, -1]
    assert index.get("80999") is None and index.lookup([]).tolist() == []
