"""New items, measured as the service meets them: the item-disjoint (item cold-start) protocol.

A seeded fifth of the items with at least one positive is held out of training entirely: their
interactions leave the matrix and the model's catalogue lacks them. The model is trained as
`cddae train` trains it (evaluation fit, production fit on every warm positive, then the
cold-item head), exported, and the held-out items are put back through the bundle's item path
(`service.item_path`: the head's rows from their profiles, scored against the graph's `hidden`
and `log_norm`). Every user with a held-out positive ranks the held-out items from their warm
history; the held-out positives are the targets.

The head's settings are chosen per seed on a validation split carved out of the warm items the
same way (a network trained without them), never on the test items. Anchors on the same
profiles: random; genre similarity to the user's history; that times the closeness of the
item's year to the years the user watches; genre popularity and profile popularity (genres and
year band; the same list for everyone).
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import scipy.sparse as sp

from service.bundle import load_bundle
from service.item_path import cold_weights, item_scores
from training.data.loaders import RawDataset
from training.data.prepared import Prepared, ProtocolConfig, prepare
from training.data.splits import train_valid_test
from training.evaluation.metrics import evaluate_lists, summary, top_n

METRICS = ("R@10", "NDCG@10")
FRACTION = 0.2  # of the items with at least one positive, per seed: fixed before any run
YEAR_BANDWIDTH = 10.0  # years: the year-closeness kernel's width, fixed beforehand
# The head settings validation chooses from, per seed (hidden width 0: linear).
GRID: tuple[dict[str, Any], ...] = (
    {"hidden": 0, "cold_share": 0.25},
    {"hidden": 256, "cold_share": 0.25},
    {"hidden": 256, "cold_share": 0.5},
    {"hidden": 512, "cold_share": 0.25, "epochs": 60},
)
Scores = Callable[[np.ndarray], np.ndarray]  # users -> users × held items
Results = dict[str, Any]


@dataclass
class ItemDisjoint:
    full: Prepared  # every item
    held: np.ndarray  # held-out item indices (full catalogue)
    warm: np.ndarray  # the others, in order: the model's catalogue
    prepared: Prepared  # the warm items only (columns `warm` of the full matrices)


def hold_out(full: Prepared, among: np.ndarray, fraction: float, seed: int) -> ItemDisjoint:
    """Hold out a seeded `fraction` of the items in `among` that have a positive."""
    counts = np.diff(full.positives.tocsc().indptr)
    eligible = among[counts[among] > 0]
    rng = np.random.default_rng(seed + 30_011)
    held = np.sort(rng.choice(eligible, round(fraction * len(eligible)), replace=False))
    warm = np.setdiff1d(among, held)
    return ItemDisjoint(full, held, warm, restrict(full, warm, seed))


def restrict(full: Prepared, keep: np.ndarray, seed: int) -> Prepared:
    """The data with only the items `keep`: matrices, features and catalogue, split anew."""
    ds = full.dataset
    ids = ds.item_ids[keep]
    kept = {str(i) for i in ids}
    raw = replace(
        ds.raw, item_profiles={k: v for k, v in ds.raw.item_profiles.items() if k in kept}
    )
    positives, timestamps = _columns(ds.positives, keep), _columns(ds.timestamps, keep)
    warm = replace(
        ds, item_ids=ids, positives=positives, timestamps=timestamps,
        item_features=ds.item_features[keep], raw=raw,
    )  # fmt: skip
    outer, inner = train_valid_test(positives, timestamps, "random", 0.2, seed)
    protocol = {"name": "item-disjoint", "seed": seed, "threshold": full.protocol["threshold"]}
    return Prepared(
        warm, outer.train, outer.test, inner.train, inner.test, protocol, positives,
        _columns(full.seen, keep),
    )  # fmt: skip


def _columns(matrix: sp.csr_matrix, keep: np.ndarray) -> sp.csr_matrix:
    out = matrix.tocsc()[:, keep].tocsr()
    out.sort_indices()
    return out


# --- scoring ----------------------------------------------------------------------------------


def rank_held(scores: Scores, users: np.ndarray, test: sp.csr_matrix, held: np.ndarray):
    """R@10, NDCG@10 … of each user's ranking of the held-out items only (`test`: users ×
    held-out items)."""
    lists = np.vstack([top_n(scores(users[s : s + 512]), 10) for s in range(0, len(users), 512)])
    return summary(evaluate_lists(lists, test[users], n_items=len(held)))


def bundle_path(folder: Path, item_features: np.ndarray) -> Callable:
    """(warm history rows, users) -> (graph scores, held scores) through the bundle: the graph's
    outputs from onnxruntime, the held-out items from the head (service.item_path)."""
    import onnxruntime as ort

    from training.jobs.export import INPUTS, padded

    bundle = load_bundle(folder)
    session = ort.InferenceSession(str(bundle.onnx_path), providers=["CPUExecutionProvider"])
    output = bundle.manifest["cold_items"]["output"]
    vectors, biases = cold_weights(bundle.cold_layers, item_features)

    def run(history: sp.csr_matrix, users: np.ndarray, user_features: np.ndarray):
        items, weights = padded(history, min_length=1)
        feeds = dict(
            zip(INPUTS, (items, weights, user_features.astype(np.float32), users.astype(np.int64)),
                strict=True)
        )  # fmt: skip
        scores, hidden, log_norm = session.run(["scores", "hidden", "log_norm"], feeds)
        return scores, item_scores(hidden, log_norm, vectors, biases, output)

    return run


def anchors(split: ItemDisjoint, seed: int) -> dict[str, Scores]:
    """The content baselines on the held-out items' profiles, from each user's warm history."""
    ds = split.full.dataset
    history = split.full.positives[:, split.warm]  # users × warm
    genres = _genre_columns(ds)
    warm_g, held_g = genres[split.warm], genres[split.held]
    years = _years(ds)
    warm_y, held_y = years[split.warm], years[split.held]
    # Genre popularity: the mean positives per warm item of each genre, averaged over the item's.
    counts = np.asarray(history.sum(axis=0)).ravel()
    per_genre = (warm_g.T @ counts) / np.maximum(warm_g.sum(axis=0), 1)
    popularity = (held_g @ per_genre) / np.maximum(held_g.sum(axis=1), 1)
    # Profile popularity: log(1 + positives) of the warm items, least squares on the whole
    # encoded profile (genres and year band): what popularity a profile predicts.
    design = np.hstack([ds.item_features, np.ones((ds.n_items, 1))]).astype(np.float64)
    coef = np.linalg.lstsq(design[split.warm], np.log1p(counts), rcond=None)[0]
    profile_popularity = design[split.held] @ coef
    rng = np.random.default_rng(seed + 50_021)

    def genre(users: np.ndarray) -> np.ndarray:
        mean = (
            np.asarray(history[users] @ warm_g)
            / np.maximum(np.diff(history[users].indptr), 1)[:, None]
        )
        norms = np.linalg.norm(mean, axis=1, keepdims=True) * np.linalg.norm(held_g, axis=1)
        return (mean @ held_g.T) / np.maximum(norms, 1e-12)

    def year(users: np.ndarray) -> np.ndarray:
        out = np.ones((len(users), len(split.held)))
        for row, user in enumerate(users):
            seen = warm_y[history[user].indices]
            seen = seen[np.isfinite(seen)]
            if len(seen):
                gaps = (held_y[None, :] - seen[:, None]) / YEAR_BANDWIDTH
                out[row] = np.exp(-0.5 * gaps**2).mean(axis=0)
        return np.where(np.isfinite(held_y)[None, :], out, 1.0)

    return {
        "random": lambda users: rng.random((len(users), len(split.held))),
        "genre similarity": genre,
        "genre similarity × year closeness": lambda users: genre(users) * (year(users) + 1e-3),
        "genre popularity": lambda users: np.tile(popularity, (len(users), 1)),
        "profile popularity (genres + year band)": lambda users: np.tile(
            profile_popularity, (len(users), 1)
        ),
    }


def _genre_columns(ds: Any) -> np.ndarray:
    start = 0
    for spec in ds.item_spec.fields:
        if spec.kind == "multi":
            return ds.item_features[:, start : start + spec.width].astype(np.float64)
        start += spec.width
    return np.zeros((ds.n_items, 0))


def _years(ds: Any) -> np.ndarray:
    values = [ds.raw.item_profiles.get(str(i), {}).get("year") for i in ds.item_ids]
    return np.array([np.nan if v is None else float(v) for v in values])


# --- the runs ---------------------------------------------------------------------------------


def choose_head(split: ItemDisjoint, seed: int, log: Callable[[str], None]) -> dict[str, Any]:
    """The head's settings by validation R@10: a fifth of the warm items held out the same way,
    a network trained without them, each setting of GRID fit on it and scored on them."""
    import torch

    from training.jobs.export import InferencePath, padded
    from training.jobs.pipeline import fit_cold_items, train_and_evaluate
    from training.models.cold_items import ColdHeadConfig

    inner = hold_out(split.prepared, np.arange(len(split.warm)), FRACTION, seed + 1)
    served, _ = train_and_evaluate(
        "cddae", inner.prepared, seed, progress=False, cold={"epochs": 0}
    )
    test = inner.full.positives[:, inner.held]
    users = np.flatnonzero(np.diff(test.indptr) > 0)
    features = inner.full.dataset.item_features
    history = inner.full.positives[:, inner.warm]
    module = InferencePath(served, "cddae")
    with torch.no_grad():
        items, weights = padded(history[users], min_length=1)
        _, hidden, log_norm = module(
            torch.from_numpy(items), torch.from_numpy(weights),
            torch.from_numpy(inner.full.dataset.user_features[users].astype(np.float32)),
            torch.from_numpy(users.astype(np.int64)),
        )  # fmt: skip
    hidden, log_norm = hidden.numpy(), log_norm.numpy()
    held_test = test[:, :]  # users × held (held-local columns)
    best, chosen = -1.0, GRID[0]
    for setting in GRID:
        served.cold_config = ColdHeadConfig.from_dict(setting)
        fit_cold_items(served, inner.prepared, inner.prepared.positives, seed)
        vectors, biases = cold_weights(served.cold_layers, features[inner.held])
        scores = item_scores(hidden, log_norm, vectors, biases, served.model_config.output)
        lists = top_n(scores, 10)
        figures = summary(evaluate_lists(lists, held_test[users], n_items=len(inner.held)))
        log(f"  seed {seed} validation {setting}: R@10 {figures['R@10']:.4f}, "
            f"NDCG@10 {figures['NDCG@10']:.4f} ({served.cold_figures['seconds']} s)")  # fmt: skip
        if figures["R@10"] > best:
            best, chosen = figures["R@10"], setting
    return {"setting": chosen, "validation R@10": best}


def run_seed(
    data: Path | RawDataset, seed: int, log: Callable[[str], None] = print
) -> dict[str, Any]:
    from training.jobs.export import export_checkpoint
    from training.jobs.pipeline import train_and_evaluate

    full = prepare(data, ProtocolConfig(seed=seed))
    split = hold_out(full, np.arange(full.dataset.n_items), FRACTION, seed)
    chosen = choose_head(split, seed, log)
    _, checkpoint = train_and_evaluate(
        "cddae", split.prepared, seed, progress=False, cold=chosen["setting"]
    )
    test = full.positives[:, split.held]
    users = np.flatnonzero(np.diff(test.indptr) > 0)
    ds = full.dataset
    history = full.positives[:, split.warm]
    with tempfile.TemporaryDirectory() as models:
        version, _ = export_checkpoint(checkpoint, Path(models))
        path = bundle_path(Path(models) / version, ds.item_features[split.held])
        graph, cold = path(history[users], users, ds.user_features[users])
    row_of = {user: row for row, user in enumerate(users)}

    def head(chunk: np.ndarray) -> np.ndarray:
        return cold[[row_of[u] for u in chunk]]

    rows: dict[str, Any] = {"cold-item head (CDDAE)": rank_held(head, users, test, split.held)}
    for name, scores in anchors(split, seed).items():
        rows[name] = rank_held(scores, users, test, split.held)
    # Secondary: the held-out items ranked among every item (warm scores from the graph).
    mixed = np.full((len(users), ds.n_items), -np.inf)
    mixed[:, split.warm] = np.where(history[users].toarray() > 0, -np.inf, graph)
    mixed[:, split.held] = cold
    lists = top_n(mixed, 10)
    in_held = np.isin(lists, split.held)
    is_held = np.isin(np.arange(ds.n_items), split.held).astype(np.float32)
    everything = (full.positives @ sp.diags(is_held)).tocsr()  # the held-out positives
    everything.eliminate_zeros()
    return {
        "seed": seed,
        "items": int(ds.n_items),
        "held_items": len(split.held),
        "users": len(users),
        "head": {**chosen, "trained": checkpoint.meta.get("cold_items")},
        "held only": rows,
        "mixed": {
            **summary(evaluate_lists(lists, everything[users], n_items=ds.n_items)),
            "held share of top-10": float(in_held.mean()),
            "held share of positives": float(test.nnz / full.positives.nnz),
        },
    }


def average(runs: list[dict[str, Any]]) -> dict[str, dict[str, tuple[float, float]]]:
    """Mean and standard deviation over seeds of each row's R@10 and NDCG@10."""
    out: dict[str, dict[str, tuple[float, float]]] = {}
    for name in runs[0]["held only"]:
        out[name] = {
            m: (
                float(np.mean([r["held only"][name][m] for r in runs])),
                float(np.std([r["held only"][name][m] for r in runs])),
            )
            for m in ("R@10", "NDCG@10")
        }
    out["mixed: cold-item head among all items"] = {
        m: (
            float(np.mean([r["mixed"][m] for r in runs])),
            float(np.std([r["mixed"][m] for r in runs])),
        )
        for m in ("R@10", "NDCG@10")
    }
    return out


def table(mean: dict[str, dict[str, tuple[float, float]]]) -> str:
    lines = ["| ranking | R@10 | NDCG@10 |", "| --- | --- | --- |"]
    for name, figures in mean.items():
        cells = " | ".join(
            f"{figures[m][0]:.4f} ± {figures[m][1]:.4f}" for m in ("R@10", "NDCG@10")
        )
        lines.append(f"| {name} | {cells} |")
    return "\n".join(lines)


def plot(mean: dict[str, dict[str, tuple[float, float]]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [n for n in mean if not n.startswith("mixed")]
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.2))
    for axis, metric in zip(axes, ("R@10", "NDCG@10"), strict=True):
        values = [mean[n][metric][0] for n in names]
        errors = [mean[n][metric][1] for n in names]
        axis.barh(names[::-1], values[::-1], xerr=errors[::-1], color="tab:blue", alpha=0.8)
        axis.set_xlabel(f"{metric}, held-out items only\n(mean ± std over split seeds)")
        axis.grid(axis="x", alpha=0.3)
    fig.suptitle("New items: held out of training, scored through the bundle's item path")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
