"""A trained model on disk: config, id maps, split, profiles and weights, self-describing.

Layout of a checkpoint folder:
  checkpoint.json  kind, hyper-parameters, protocol, data source, metrics, feature specs
  data.npz         id maps, training history, test positives, every positive and every
                   interaction (CSR parts), encoded features
  profiles.json    raw user profiles and the item catalogue (title, year, genres)
  state.npz        the evaluated model's arrays (weights, or a baseline's vectors/matrices)
  final.npz        the served model's arrays: the same settings fit on all data (optional)
  An autoencoder's served arrays also hold its cold-item head as `cold_w0, cold_b0, …`
  (training/models/cold_items.py, the layout of service/item_path.py).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import scipy.sparse as sp

from service.features import FeatureSpec

FORMAT = 2


def _csr_parts(prefix: str, matrix: sp.csr_matrix) -> dict[str, np.ndarray]:
    return {
        f"{prefix}_indptr": matrix.indptr.astype(np.int64),
        f"{prefix}_indices": matrix.indices.astype(np.int32),
    }


def _csr(arrays: Any, prefix: str, shape: tuple[int, int]) -> sp.csr_matrix:
    indices = arrays[f"{prefix}_indices"]
    data = np.ones(len(indices), dtype=np.float32)
    return sp.csr_matrix((data, indices, arrays[f"{prefix}_indptr"]), shape=shape)


@dataclass
class Checkpoint:
    kind: str
    user_ids: np.ndarray
    item_ids: np.ndarray
    train: sp.csr_matrix  # the full training history (validation included)
    test: sp.csr_matrix
    positives: sp.csr_matrix  # every positive: the served model's input history
    seen: sp.csr_matrix  # every interaction, any rating: never recommended back
    user_features: np.ndarray
    item_features: np.ndarray
    user_spec: FeatureSpec
    item_spec: FeatureSpec
    user_profiles: dict[str, dict[str, Any]]
    item_catalogue: dict[str, dict[str, Any]]
    state: dict[str, np.ndarray]
    final_state: dict[str, np.ndarray] | None = None  # fit on all data; None: final fit off
    meta: dict[str, Any] = field(default_factory=dict)  # params, protocol, data, metrics, timing

    def save(self, folder: Path) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        shape = self.train.shape
        np.savez_compressed(
            folder / "data.npz",
            user_ids=self.user_ids.astype(str),
            item_ids=self.item_ids.astype(str),
            shape=np.array(shape),
            user_features=self.user_features,
            item_features=self.item_features,
            **_csr_parts("train", self.train),
            **_csr_parts("test", self.test),
            **_csr_parts("positives", self.positives),
            **_csr_parts("seen", self.seen),
        )
        np.savez(folder / "state.npz", **self.state)
        final = folder / "final.npz"
        if self.final_state is not None:
            np.savez(final, **self.final_state)
        else:
            final.unlink(missing_ok=True)
        profiles = {"users": self.user_profiles, "items": self.item_catalogue}
        (folder / "profiles.json").write_text(json.dumps(profiles))
        meta = {
            "format": FORMAT,
            "kind": self.kind,
            "user_spec": self.user_spec.to_dict(),
            "item_spec": self.item_spec.to_dict(),
            **self.meta,
        }
        (folder / "checkpoint.json").write_text(json.dumps(meta, indent=2, default=_jsonable))

    @classmethod
    def load(cls, folder: Path) -> Checkpoint:
        folder = Path(folder)
        if not (folder / "checkpoint.json").is_file():
            raise FileNotFoundError(f"{folder}: not a checkpoint (no checkpoint.json)")
        meta = json.loads((folder / "checkpoint.json").read_text())
        if meta.get("format") != FORMAT:
            raise ValueError(
                f"{folder}: checkpoint format {meta.get('format')}, expected {FORMAT}; "
                "train it again with this version"
            )
        with np.load(folder / "data.npz", allow_pickle=False) as arrays:
            shape = tuple(int(s) for s in arrays["shape"])
            data = {k: arrays[k] for k in arrays.files}
        with np.load(folder / "state.npz", allow_pickle=False) as state_file:
            state = {k: state_file[k] for k in state_file.files}
        final_state = None
        if (folder / "final.npz").is_file():
            with np.load(folder / "final.npz", allow_pickle=False) as final_file:
                final_state = {k: final_file[k] for k in final_file.files}
        profiles = json.loads((folder / "profiles.json").read_text())
        return cls(
            kind=meta.pop("kind"),
            user_ids=data["user_ids"].astype(object),
            item_ids=data["item_ids"].astype(object),
            train=_csr(data, "train", shape),
            test=_csr(data, "test", shape),
            positives=_csr(data, "positives", shape),
            seen=_csr(data, "seen", shape),
            user_features=data["user_features"],
            item_features=data["item_features"],
            user_spec=FeatureSpec.from_dict(meta.pop("user_spec")),
            item_spec=FeatureSpec.from_dict(meta.pop("item_spec")),
            user_profiles=profiles["users"],
            item_catalogue=profiles["items"],
            state=state,
            final_state=final_state,
            meta=meta,
        )


def _jsonable(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, tuple | set):
        return list(value)
    raise TypeError(f"cannot serialise {type(value).__name__}")
