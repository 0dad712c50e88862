"""Export a checkpoint's inference path to ONNX and write it as a versioned model bundle.

For the autoencoders the graph also returns `hidden` and `log_norm`, and the bundle carries the
output layer's item rows and the cold-item head (format 4, service/item_path.py): the service
scores items outside the graph with them — new items and similar items — and export refuses a
bundle where that path does not reproduce the graph.

The exporter is torch's dynamo-based `torch.onnx.export(..., dynamo=True)`: in torch 2.13 it is
the default and the TorchScript exporter is deprecated (it warns, and it silently drops inputs
a model does not read, which would break the bundle's fixed input contract).
"""

from __future__ import annotations

import copy
import json
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import scipy.sparse as sp
import torch
from torch import nn

from service.bundle import ITEM_VALUES, arrays_payload, write_bundle
from service.item_path import cold_weights, item_scores, layer_arrays
from training.evaluation.metrics import top_n
from training.jobs.checkpoint import Checkpoint
from training.jobs.onnx_graph import EXTERNAL_DATA_ABOVE, to_onnx
from training.jobs.pipeline import restore
from training.models.cold_items import Layers
from training.models.linear_path import cond
from training.names import NEURAL

# A user's history goes in as item indices and weights (batch × length, padding has weight 0):
# the graph gathers and sums those rows, so its cost follows the history, not the catalogue.
INPUTS = ("items", "weights", "user_features", "user_index")
# Export refuses a graph that disagrees with PyTorch by more than this (scores are in [0, 1]).
PARITY_MAX_ABS_DIFF = 1e-4
PARITY_MIN_TOP10_AGREEMENT = 0.99
# The neural graphs' outputs: the scores, the decoder's output before the output layer, and the
# log of the softmax's sum over the catalogue (zeros for a sigmoid model): with the item
# vectors these score items outside the graph, new ones included (service.item_path).
NEURAL_OUTPUTS = ("scores", "hidden", "log_norm")
# Parity runs on a seeded sample: 2,000 users bound a disagreement rate of 0.15% with 95%
# confidence when none is seen, and the graph does the same arithmetic for every user.
PARITY_USERS = 2000


class ExportError(RuntimeError):
    """The exported graph does not reproduce the trained model; nothing was written."""


# What the exported CDAE does for a user it never saw: the mean of the learned user vectors.
UNSEEN_USER = "mean of the learned per-user vectors (CDAE V_u / CDDAE user node)"


class InferencePath(nn.Module):
    """The inference path with the bundle's fixed signature: no corruption, no dropout.

    With a short head (ModelConfig.short_head_share) the graph holds both encoders: a row whose
    non-zero weights all lie in its first `short_max` places (a history of at most that many
    items, entries first as the service builds rows) takes the head's code, every other row the
    network's — the trainer's rule (AutoencoderRecommender._output) — and the shared decoder,
    output layer and linear path run once."""

    def __init__(self, recommender: Any, kind: str):
        super().__init__()
        self.kind = kind
        self.short: nn.Module | None = None
        self.neighbours: nn.Module | None = None  # item-kNN's fold-in on the short head's rows
        self.short_max = -1
        if kind in NEURAL:
            self.net = copy.deepcopy(recommender.net).eval()
            if recommender.short_net is not None:
                self.short = copy.deepcopy(recommender.short_net).eval()
                self.short_max = recommender.model_config.short_history_max
                if recommender.neighbours is not None:
                    self.neighbours = copy.deepcopy(recommender.neighbours).eval()
            for net in (self.net, self.short):
                if net is not None:  # the scale the graph reads is the path's buffer; without
                    # the fit's choice in the copies' options, graphs of one structure are
                    # reused from export to export (training/jobs/onnx_graph.py)
                    net.config = replace(net.config, linear_scale=None)
                vectors = net.user_vector if net is not None else None
                if vectors is not None:  # the reserved last row serves unseen users
                    with torch.no_grad():
                        vectors.weight[-1] = vectors.weight[:-1].mean(dim=0)
        elif kind == "pop":
            self.register_buffer("counts", torch.from_numpy(recommender.counts.astype(np.float32)))
        else:
            self.register_buffer("similarity", torch.from_numpy(recommender.similarity))

    def is_short(self, weights: torch.Tensor) -> torch.Tensor:
        """Rows the short head serves (batch × 1): every non-zero weight within the first
        `short_max` places — a history of at most that many items, as the service and parity
        lay rows out (entries first, padding after)."""
        return (weights[:, self.short_max :] != 0).sum(dim=1, keepdim=True) == 0

    def encoded(self, items, weights, user_features, user_index) -> tuple[torch.Tensor, ...]:
        """(hidden, near): the code each row's encoder gives, and item-kNN's fold-in on the
        short head's rows (zeros elsewhere; without neighbours a batch × 1 placeholder).

        Chosen per call (ONNX `If`s): a batch of short rows only runs the head and the
        neighbours, one of long rows only the network — the service scores one user a call,
        so it runs one encoder, not both (docs/PERFORMANCE.md, "One encoder per call"); a
        mixed batch runs both and picks per row. Same arithmetic row by row either way."""
        short = self.is_short(weights)
        k = self.short_max
        # Without neighbours `near` is unused: a batch × 1 placeholder, not batch × items.
        width = self.net.n_items if self.neighbours is not None else 1

        def head(items, weights, user_features, user_index) -> torch.Tensor:
            return self.short.hidden(
                *self.short.padded_input(items[:, :k], weights[:, :k]), user_features, user_index
            )

        def near(items, weights) -> torch.Tensor:
            if self.neighbours is None:
                return weights.new_zeros((items.shape[0], width))
            return self.neighbours.gathered(items[:, :k], weights[:, :k])

        def network(items, weights, user_features, user_index) -> torch.Tensor:
            net = self.net
            return net.hidden(*net.padded_input(items, weights), user_features, user_index)

        def head_only(items, weights, user_features, user_index, short):
            return head(items, weights, user_features, user_index), near(items, weights)

        def network_only(items, weights, user_features, user_index, short):
            zeros = weights.new_zeros((items.shape[0], width))
            return network(items, weights, user_features, user_index), zeros

        def both(items, weights, user_features, user_index, short):
            hidden = torch.where(
                short,
                head(items, weights, user_features, user_index),
                network(items, weights, user_features, user_index),
            )
            return hidden, torch.where(short, near(items, weights), 0.0)

        def not_all_short(items, weights, user_features, user_index, short):
            operands = (items, weights, user_features, user_index, short)
            return cond(~short.any(), network_only, both, operands)

        operands = (items, weights, user_features, user_index, short)
        return cond(short.all(), head_only, not_all_short, operands)

    @property
    def outputs(self) -> tuple[str, ...]:
        return NEURAL_OUTPUTS if self.kind in NEURAL else ("scores",)

    def coded(self, items, weights, user_features, user_index) -> tuple[torch.Tensor, ...]:
        """(hidden, offset): the decoder's output before the output layer, and the catalogue
        items' logits from outside it — the linear path's, and on the short head's rows
        item-kNN's fold-in (None where there are neither; a new item has none:
        service.item_path)."""
        net = self.net
        offset = net.linear_padded(items, weights)
        if self.short is None:
            return net.hidden(*net.padded_input(items, weights), user_features, user_index), offset
        hidden, near = self.encoded(items, weights, user_features, user_index)
        if self.neighbours is not None:
            offset = near if offset is None else offset + near
        return hidden, offset

    def item_offset(self, items, weights, user_features, user_index) -> torch.Tensor | None:
        """The offset `coded` gives (export parity rebuilds the scores from it)."""
        return self.coded(items, weights, user_features, user_index)[1]

    def forward(self, items, weights, user_features, user_index):
        if self.kind in NEURAL:
            net = self.net
            hidden, offset = self.coded(items, weights, user_features, user_index)
            output = net.with_linear(net.out(hidden), offset)
            logits = output[:, : net.n_items]
            if net.config.output == "softmax":
                log_norm = torch.logsumexp(logits, dim=1)
            else:
                log_norm = hidden[:, 0] * 0.0
            return net.scores(output), hidden, log_norm
        if self.kind == "pop":
            return self.counts.expand(items.shape[0], -1) + 0.0 * weights.sum()
        return (self.similarity[items] * weights.unsqueeze(-1)).sum(dim=1)


def padded(rows: sp.csr_matrix, min_length: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """CSR rows as (items, weights), batch × longest row, padded with item 0 at weight 0."""
    lengths = np.diff(rows.indptr)
    width = max(int(lengths.max(initial=0)), min_length)
    items = np.zeros((rows.shape[0], width), dtype=np.int64)
    weights = np.zeros((rows.shape[0], width), dtype=np.float32)
    positions = np.arange(rows.nnz) - np.repeat(rows.indptr[:-1], lengths)
    which = np.repeat(np.arange(rows.shape[0]), lengths)
    items[which, positions] = rows.indices
    weights[which, positions] = rows.data
    return items, weights


def at_least(rows: sp.csr_matrix, length: int) -> sp.csr_matrix:
    """Each row with fewer than `length` entries filled up with the lowest items it lacks, at
    weight 1 (a new matrix): histories long enough for the network's side of a short head."""
    out = sp.lil_matrix(rows)
    for row in np.flatnonzero(np.diff(rows.indptr) < length):
        have = set(rows.indices[rows.indptr[row] : rows.indptr[row + 1]].tolist())
        # At most len(have) of the first length + len(have) items are in the row: enough.
        pool = range(min(rows.shape[1], length + len(have)))
        extra = [i for i in pool if i not in have][: length - len(have)]
        out[row, extra] = 1.0
    return out.tocsr()


def first_entries(rows: sp.csr_matrix, cut: int) -> sp.csr_matrix:
    """Each row's first `cut` stored entries (a new matrix; `rows` is left as it is)."""
    lengths = np.diff(rows.indptr)
    keep = np.arange(rows.nnz) - np.repeat(rows.indptr[:-1], lengths) < cut
    indptr = np.concatenate([[0], np.cumsum(np.minimum(lengths, cut))])
    return sp.csr_matrix((rows.data[keep], rows.indices[keep], indptr), shape=rows.shape)


def model_inputs(checkpoint: Checkpoint, users: np.ndarray) -> tuple[torch.Tensor, ...]:
    """The bundle's inputs for `users`, as the service builds them: every positive."""
    return inputs_of(checkpoint, checkpoint.positives[users], users)


def inputs_of(
    checkpoint: Checkpoint, rows: sp.csr_matrix, users: np.ndarray
) -> tuple[torch.Tensor, ...]:
    """The bundle's inputs for `users` with these histories."""
    items, weights = padded(rows, min_length=3)
    return (
        torch.from_numpy(items),
        torch.from_numpy(weights),
        torch.from_numpy(checkpoint.user_features[users].astype(np.float32)),
        torch.from_numpy(np.asarray(users, dtype=np.int64)),
    )


def parity_sample(n_users: int, seed: int = 0) -> np.ndarray:
    """A seeded sample of users for the parity check (all of them on small data)."""
    if n_users <= PARITY_USERS:
        return np.arange(n_users)
    return np.sort(np.random.default_rng(seed).choice(n_users, PARITY_USERS, replace=False))


def graph_of(
    module: InferencePath,
    example: tuple[torch.Tensor, ...],
    external_above: int = EXTERNAL_DATA_ABOVE,
) -> dict[str, bytes]:
    """The inference path as bundle files, batch and history length left free."""
    batch, length = torch.export.Dim("batch", min=1), torch.export.Dim("length", min=1)
    dynamic = ({0: batch, 1: length}, {0: batch, 1: length}, {0: batch}, {0: batch})
    return to_onnx(module, example, INPUTS, dynamic, module.outputs, external_above)


@dataclass
class ItemPath:
    """The served network's item side as the bundle carries it: the output layer's item rows
    and biases, the output activation, and the cold-item head (may be empty)."""

    vectors: np.ndarray  # items × width, float32
    bias: np.ndarray  # items, float32
    output: str  # softmax | sigmoid
    head: list[tuple[np.ndarray, np.ndarray]]

    @classmethod
    def of(cls, module: InferencePath, cold_layers: Layers) -> ItemPath | None:
        if module.kind not in NEURAL:
            return None
        net = module.net
        n = net.n_items
        return cls(
            net.out.weight[:n].detach().cpu().numpy().astype(np.float32),
            net.out.bias[:n].detach().cpu().numpy().astype(np.float32),
            net.config.output,
            list(cold_layers),
        )


def largest_difference(got: np.ndarray, want: np.ndarray) -> float:
    """max |got − want|, infinite where either side is not finite (`max` would skip a NaN)."""
    if not (np.isfinite(got).all() and np.isfinite(want).all()):
        return float("inf")
    return float(np.abs(got - want).max(initial=0.0))


def parity(
    graph: dict[str, bytes],
    module: nn.Module,
    checkpoint: Checkpoint,
    path: ItemPath | None = None,
    scorer: Callable[[sp.csr_matrix, np.ndarray], np.ndarray] | None = None,
) -> dict[str, float]:
    """onnxruntime against PyTorch on a seeded sample of users, in chunks: largest score
    difference and the share of users whose top-10 (seen items excluded) is the same; with an
    item path, also the largest difference between the graph's scores and
    `service.item_path.item_scores` of its `hidden` and `log_norm` outputs.

    `scorer(histories, users)` is what PyTorch's side is (the module by default): for the
    autoencoders the trainer's own scoring, what evaluation measured. With a short head every
    user goes in twice, on each side of its rule: the first `short_max` items, and a history of
    more than `short_max` (filled up with items where the user has fewer)."""
    import onnxruntime as ort

    from training.evaluation.metrics import mask_seen

    with tempfile.TemporaryDirectory() as tmp:  # from files, as the service loads it
        for name, payload in graph.items():
            (Path(tmp) / name).write_bytes(payload)
        session = ort.InferenceSession(
            str(Path(tmp) / "model.onnx"), providers=["CPUExecutionProvider"]
        )
    names = list(NEURAL_OUTPUTS if path is not None else ("scores",))
    sample = parity_sample(checkpoint.positives.shape[0])
    worst, worst_item_path, same = 0.0, 0.0, 0
    short_max = getattr(module, "short_max", -1)
    # With a short head the graph has three branches (InferencePath.encoded): batches of
    # long rows, of short rows, and of both (every other row short).
    sides = ["whole"] if short_max < 0 else ["long", "short", "mixed"]
    # Chunks of 256 users, and the first 16 again one at a time: a graph may take another
    # branch for one user than for a batch (the linear path's gathered and dense forms).
    spans = [(start, 256) for start in range(0, len(sample), 256)]
    spans += [(start, 1) for start in range(min(16, len(sample)))]
    checked = 0
    for (start, size), side in [(span, side) for side in sides for span in spans]:
        users = sample[start : start + size]
        rows = checkpoint.positives[users]
        if side == "long":
            rows = at_least(rows, short_max + 1)
        elif side == "short":
            rows = first_entries(rows, short_max)
        elif side == "mixed":
            if len(users) < 2:
                continue
            half = (len(users) + 1) // 2
            users = np.concatenate([users[::2], users[1::2]])
            short_rows = first_entries(checkpoint.positives[users[:half]], short_max)
            long_rows = at_least(checkpoint.positives[users[half:]], short_max + 1)
            rows = sp.vstack([short_rows, long_rows], format="csr")
        checked += len(users)
        inputs = inputs_of(checkpoint, rows, users)
        feeds = {name: tensor.numpy() for name, tensor in zip(INPUTS, inputs, strict=True)}
        results = session.run(names, feeds)
        got = results[0]
        if scorer is not None:
            want = scorer(rows, users)
        else:
            with torch.no_grad():
                want = module(*inputs)
                want = (want[0] if isinstance(want, tuple) else want).numpy()
        worst = max(worst, largest_difference(got, want))
        if path is not None:
            with torch.no_grad():  # the catalogue items' logits besides the output layer's
                offset = module.item_offset(*inputs)
            offset = offset.numpy() if offset is not None else None
            rebuilt = item_scores(
                results[1], results[2], path.vectors, path.bias, path.output, offset
            )
            worst_item_path = max(worst_item_path, largest_difference(rebuilt, got))
        seen = checkpoint.seen[users]
        same += int(
            (top_n(mask_seen(got, seen), 10) == top_n(mask_seen(want, seen), 10)).all(1).sum()
        )
    figures = {"max_abs_diff": worst, "top10_agreement": same / checked, "users": len(sample)}
    if path is not None:
        figures["item_path_max_abs_diff"] = worst_item_path
    if path is not None and path.head:
        figures["cold_head_max_abs_diff"] = cold_head_parity(path.head, checkpoint.item_features)
    return figures


def cold_head_parity(layers: list[tuple[np.ndarray, np.ndarray]], features: np.ndarray) -> float:
    """Largest difference between `service.item_path.cold_weights` and the torch head, over
    every item's profile and the empty one."""
    from training.models.cold_items import ColdHead

    x = np.vstack([features, np.zeros((1, features.shape[1]))]).astype(np.float32)
    vectors, biases = cold_weights(layers, x)
    with torch.no_grad():
        want = ColdHead.from_arrays(layers)(torch.from_numpy(x)).numpy()
    got = np.concatenate([vectors, biases[:, None]], axis=1)
    return float(np.abs(got - want).max())


def check_parity(figures: dict[str, float]) -> None:
    paths = ("item_path_max_abs_diff", "cold_head_max_abs_diff")
    if (
        figures["max_abs_diff"] > PARITY_MAX_ABS_DIFF
        or figures["top10_agreement"] < PARITY_MIN_TOP10_AGREEMENT
        or any(figures.get(name, 0.0) > PARITY_MAX_ABS_DIFF for name in paths)
    ):
        raise ExportError(
            f"ONNX parity failed: max |Δ| {figures['max_abs_diff']:.2e} (limit "
            f"{PARITY_MAX_ABS_DIFF:.0e}), top-10 agreement {figures['top10_agreement']:.2%} "
            f"(limit {PARITY_MIN_TOP10_AGREEMENT:.0%}), item path max |Δ| "
            f"{figures.get('item_path_max_abs_diff', 0.0):.2e}, cold head max |Δ| "
            f"{figures.get('cold_head_max_abs_diff', 0.0):.2e}; no bundle written"
        )


def item_values(checkpoint: Checkpoint) -> dict[str, np.ndarray]:
    """`item_values__<field>` for every field of the item spec, from the raw catalogue: what the
    service's filters test. Multi: "|"-joined labels; bucket/numeric: float64, NaN unknown;
    categorical: text, "" unknown."""
    catalogue = checkpoint.item_catalogue
    profiles = [catalogue.get(str(item_id), {}) for item_id in checkpoint.item_ids]
    arrays = {}
    for spec in checkpoint.item_spec.fields:
        raw = [p.get(spec.name) for p in profiles]
        if spec.kind == "multi":
            values = np.array(
                ["|".join(v) if isinstance(v, list | tuple) else (v or "") for v in raw], dtype=str
            )
        elif spec.kind in ("bucket", "numeric"):
            values = np.array([_number(v) for v in raw], dtype=np.float64)
        else:
            values = np.array(["" if v is None else str(v) for v in raw], dtype=str)
        arrays[f"{ITEM_VALUES}{spec.name}"] = values
    return arrays


def _number(value: Any) -> float:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return float("nan")
    return number if np.isfinite(number) else float("nan")


def bundle_files(
    checkpoint: Checkpoint, graph: dict[str, bytes], path: ItemPath | None = None
) -> dict[str, bytes]:
    catalogue = checkpoint.item_catalogue
    profiles = [catalogue.get(str(item_id), {}) for item_id in checkpoint.item_ids]
    popularity = np.asarray(checkpoint.positives.sum(axis=0), dtype=np.float32).ravel()
    user_profiles = checkpoint.user_profiles
    arrays = {
        "user_ids": np.asarray(checkpoint.user_ids, dtype=str),
        "item_ids": np.asarray(checkpoint.item_ids, dtype=str),
        "item_titles": np.array([p.get("title", "") for p in profiles], dtype=str),
        "item_genres": np.array(["|".join(p.get("genres", [])) for p in profiles], dtype=str),
        "has_profile": np.array([bool(user_profiles.get(str(u))) for u in checkpoint.user_ids]),
        "history_indptr": checkpoint.positives.indptr.astype(np.int64),
        "history_indices": checkpoint.positives.indices.astype(np.int32),
        "seen_indptr": checkpoint.seen.indptr.astype(np.int64),
        "seen_indices": checkpoint.seen.indices.astype(np.int32),
        "user_features": checkpoint.user_features.astype(np.float32),
        "popularity": popularity,
        **item_values(checkpoint),
    }
    if path is not None:
        arrays["item_vectors"] = np.ascontiguousarray(path.vectors, dtype=np.float32)
        arrays["item_bias"] = np.ascontiguousarray(path.bias, dtype=np.float32)
        arrays.update(layer_arrays(path.head))
    features = {
        "user_spec": checkpoint.user_spec.to_dict(),
        "item_spec": checkpoint.item_spec.to_dict(),
    }
    return {
        **graph,
        "arrays.npz": arrays_payload(arrays),
        "features.json": json.dumps(features).encode(),
    }


def output_shapes(module: InferencePath, n_items: int) -> list[dict[str, Any]]:
    """The manifest's "outputs": every graph output with its shape."""
    shapes: dict[str, list[Any]] = {"scores": ["batch", n_items], "log_norm": ["batch"]}
    if module.kind in NEURAL:
        shapes["hidden"] = ["batch", int(module.net.out.in_features)]
    return [{"name": name, "dtype": "float32", "shape": shapes[name]} for name in module.outputs]


def cold_section(checkpoint: Checkpoint, path: ItemPath | None) -> dict[str, Any] | None:
    """The manifest's "cold_items": how the head was trained (absent without a head)."""
    if path is None or not path.head:
        return None
    params = (checkpoint.meta.get("served") or {}).get("params") or checkpoint.meta.get(
        "params", {}
    )
    config = params.get("cold_items", {})
    figures = dict(checkpoint.meta.get("cold_items") or {})
    widths = [path.head[0][0].shape[0], *(w.shape[1] for w, _ in path.head)]
    return {
        "output": path.output,
        "head": "→".join(map(str, widths)) + (" (ReLU)" if len(path.head) > 1 else " (linear)"),
        "cold_share": config.get("cold_share"),
        "empty_share": config.get("empty_share"),
        "config": config,
        "training": figures,
        "empty_profile": "the head's output for an all-zero profile (trained on cold items "
        "whose profile was hidden): an average item",
    }


def export_checkpoint(
    checkpoint: Checkpoint,
    models_dir: Path,
    extra: dict[str, Any] | None = None,
    external_above: int = EXTERNAL_DATA_ABOVE,
) -> tuple[str, dict[str, float]]:
    """Export the served model, check parity (refusing a graph that fails it), write the bundle;
    return (version, parity figures). `extra` adds manifest sections (the retraining job's)."""
    from service.bundle import models_lock

    recommender = restore(checkpoint, served=True)
    module = InferencePath(recommender, checkpoint.kind)
    example = model_inputs(checkpoint, np.arange(2))
    graph = graph_of(module, example, external_above)
    path = ItemPath.of(module, getattr(recommender, "cold_layers", []))
    scorer = None
    if checkpoint.kind in NEURAL:  # against what evaluation measured: the trainer's scoring

        def scorer(rows: sp.csr_matrix, users: np.ndarray) -> np.ndarray:
            return recommender.score(rows, users, checkpoint.user_features[users])

    figures = parity(graph, module, checkpoint, path, scorer)
    check_parity(figures)
    n_users, n_items = checkpoint.train.shape
    meta = checkpoint.meta
    served = meta.get("served") or {"fit_on": "training split (checkpoint without a final fit)"}
    manifest = {
        "model": {
            "kind": checkpoint.kind,
            "params": meta.get("params", {}),
            "world_size": meta.get("world_size", 1),  # training processes (torchrun)
        },
        "data": meta.get("data", {}),
        # What was measured (the evaluated model on the holdout) and what is served.
        "protocol": meta.get("protocol", {}),
        "metrics": {f"{k}@10": v[9] for k, v in meta.get("metrics", {}).items()},
        "evaluation": {
            "model": "the same settings fit on the training split only",
            "protocol": meta.get("protocol", {}),
            "evaluated_users": meta.get("evaluated_users"),
        },
        "served": {
            **served,
            "history": "every positive of every user (the model's input)",
            "seen": "every interaction of every user, any rating (never recommended)",
        },
        "parity": figures,
        "unseen_user": UNSEEN_USER if checkpoint.kind in ("cdae", "cddae") else "not used",
        "inputs": [
            {"name": "items", "dtype": "int64", "shape": ["batch", "length"]},
            {"name": "weights", "dtype": "float32", "shape": ["batch", "length"], "pad": 0},
            {
                "name": "user_features",
                "dtype": "float32",
                "shape": ["batch", checkpoint.user_spec.width],
            },
            {"name": "user_index", "dtype": "int64", "shape": ["batch"], "unseen": -1},
        ],
        "outputs": output_shapes(module, n_items),
        "users": n_users,
        "items": n_items,
    }
    if (cold := cold_section(checkpoint, path)) is not None:
        manifest["cold_items"] = cold
    if module.short is not None:
        manifest["short_head"] = {
            "max_history": module.short_max,
            "rule": f"a history of at most {module.short_max} items (new users, POST /score "
            "with a handful) is encoded by the short head, a longer one by the network; one "
            "graph, one decoder",
            "options": (meta.get("params") or {}).get("short_head"),
            "neighbours": recommender.neighbours_note,  # what the graph holds, not the options
        }
    manifest.update(extra or {})
    with models_lock(models_dir):
        version = write_bundle(models_dir, bundle_files(checkpoint, graph, path), manifest)
    return version, figures
