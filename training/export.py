"""Export a checkpoint's inference path to ONNX and write it as a versioned model bundle.

The exporter is torch's dynamo-based `torch.onnx.export(..., dynamo=True)`: in torch 2.13 it is
the default and the TorchScript exporter is deprecated (it warns, and it silently drops inputs
a model does not read, which would break the bundle's fixed input contract).
"""

from __future__ import annotations

import copy
import json
import logging
import tempfile
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from service.bundle import arrays_payload, write_bundle
from training.checkpoint import Checkpoint
from training.metrics import top_n
from training.names import NEURAL
from training.pipeline import restore

INPUTS = ("interactions", "user_features", "user_index")
# What the exported CDAE does for a user it never saw: the mean of the learned user vectors.
UNSEEN_USER = "mean of the learned per-user vectors (CDAE V_u / CDDAE user node)"


class InferencePath(nn.Module):
    """The inference path with the bundle's fixed signature: no corruption, no dropout."""

    def __init__(self, recommender: Any, kind: str):
        super().__init__()
        self.kind = kind
        if kind in NEURAL:
            self.net = copy.deepcopy(recommender.net).eval()
            vectors = self.net.user_vector
            if vectors is not None:  # the reserved last row serves unseen users
                with torch.no_grad():
                    vectors.weight[-1] = vectors.weight[:-1].mean(dim=0)
        elif kind == "pop":
            self.register_buffer("counts", torch.from_numpy(recommender.counts.astype(np.float32)))
        else:
            self.register_buffer("similarity", torch.from_numpy(recommender.similarity))

    def forward(self, interactions, user_features, user_index):
        if self.kind in NEURAL:
            return self.net.scores(self.net(interactions, user_features, user_index))
        if self.kind == "pop":
            return self.counts.expand(interactions.shape[0], -1) + 0.0 * interactions
        return interactions @ self.similarity


def model_inputs(checkpoint: Checkpoint, rows: int | None = None) -> tuple[torch.Tensor, ...]:
    """The bundle's three inputs for the first `rows` training users (all by default)."""
    n = checkpoint.train.shape[0] if rows is None else rows
    return (
        torch.from_numpy(checkpoint.train[:n].toarray().astype(np.float32)),
        torch.from_numpy(checkpoint.user_features[:n].astype(np.float32)),
        torch.arange(n, dtype=torch.int64),
    )


def to_onnx(
    module: nn.Module, example: tuple[torch.Tensor, ...], outputs: tuple[str, ...] = ("scores",)
) -> bytes:
    batch = torch.export.Dim("batch", min=1)
    quiet = logging.getLogger("torch.onnx")
    level = quiet.level
    with tempfile.TemporaryDirectory() as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the exporter's own deprecation chatter
        quiet.setLevel(logging.ERROR)  # and its notes on torchvision ops it skips
        path = Path(tmp) / "model.onnx"
        torch.onnx.export(
            module.eval(),
            example,
            str(path),
            input_names=list(INPUTS),
            output_names=list(outputs),
            dynamic_shapes=({0: batch}, {0: batch}, {0: batch}),
            dynamo=True,
            external_data=False,
            verbose=False,
        )
        quiet.setLevel(level)
        return path.read_bytes()


def parity(onnx_bytes: bytes, module: nn.Module, checkpoint: Checkpoint) -> dict[str, float]:
    """onnxruntime against PyTorch on every training user: largest score difference and the
    share of users whose top-10 (training items excluded) is the same."""
    import onnxruntime as ort

    from training.metrics import mask_seen

    session = ort.InferenceSession(onnx_bytes, providers=["CPUExecutionProvider"])
    inputs = model_inputs(checkpoint)
    feeds = {name: tensor.numpy() for name, tensor in zip(INPUTS, inputs, strict=True)}
    got = session.run(["scores"], feeds)[0]
    with torch.no_grad():
        want = module(*inputs).numpy()
    same = (
        top_n(mask_seen(got, checkpoint.train), 10) == top_n(mask_seen(want, checkpoint.train), 10)
    ).all(axis=1)
    return {"max_abs_diff": float(np.abs(got - want).max()), "top10_agreement": float(same.mean())}


def bundle_files(checkpoint: Checkpoint, onnx_bytes: bytes) -> dict[str, bytes]:
    items = []
    for item_id in checkpoint.item_ids:
        profile = checkpoint.item_catalogue.get(str(item_id), {})
        items.append(
            {
                "id": str(item_id),
                "title": profile.get("title", ""),
                "genres": profile.get("genres", []),
                "year": profile.get("year"),
            }
        )
    users = {
        "ids": [str(u) for u in checkpoint.user_ids],
        "profiles": [checkpoint.user_profiles.get(str(u), {}) for u in checkpoint.user_ids],
    }
    popularity = np.asarray(checkpoint.train.sum(axis=0), dtype=np.float32).ravel()
    arrays = {
        "history_indptr": checkpoint.train.indptr.astype(np.int64),
        "history_indices": checkpoint.train.indices.astype(np.int32),
        "user_features": checkpoint.user_features.astype(np.float32),
        "popularity": popularity,
    }
    features = {
        "user_spec": checkpoint.user_spec.to_dict(),
        "item_spec": checkpoint.item_spec.to_dict(),
    }
    return {
        "model.onnx": onnx_bytes,
        "items.json": json.dumps(items).encode(),
        "users.json": json.dumps(users).encode(),
        "arrays.npz": arrays_payload(arrays),
        "features.json": json.dumps(features).encode(),
    }


def export_checkpoint(checkpoint: Checkpoint, models_dir: Path) -> tuple[str, dict[str, float]]:
    """Export, check parity, write the bundle; return (version, parity figures)."""
    module = InferencePath(restore(checkpoint), checkpoint.kind)
    onnx_bytes = to_onnx(module, model_inputs(checkpoint, rows=2))
    figures = parity(onnx_bytes, module, checkpoint)
    n_users, n_items = checkpoint.train.shape
    meta = checkpoint.meta
    manifest = {
        "model": {"kind": checkpoint.kind, "params": meta.get("params", {})},
        "data": meta.get("data", {}),
        "protocol": meta.get("protocol", {}),
        "metrics": {f"{k}@10": v[9] for k, v in meta.get("metrics", {}).items()},
        "parity": figures,
        "unseen_user": UNSEEN_USER if checkpoint.kind in ("cdae", "cddae") else "not used",
        "inputs": [
            {"name": "interactions", "dtype": "float32", "shape": ["batch", n_items]},
            {
                "name": "user_features",
                "dtype": "float32",
                "shape": ["batch", checkpoint.user_spec.width],
            },
            {"name": "user_index", "dtype": "int64", "shape": ["batch"], "unseen": -1},
        ],
        "outputs": [{"name": "scores", "dtype": "float32", "shape": ["batch", n_items]}],
        "users": n_users,
        "items": n_items,
    }
    version = write_bundle(models_dir, bundle_files(checkpoint, onnx_bytes), manifest)
    return version, figures
