"""Similar items, measured: the co-occurrence lift of each method's lists against popularity.

For each of the most popular items a, a method returns 10 items b ≠ a; each scores its lift
P(b|a) / P(b) over the users' ratings (any rating is a co-occurrence: P(b|a) = users who rated
both / users who rated a; P(b) = users who rated b / all users). A method's figure is the mean
lift of its lists divided by that of the popularity list (the 10 most popular items but a).
Anchors: item-item cosine on the rating matrix and EASE's rows; candidates from the served
CDDAE: cosine of its output vectors (what a new item has, through the head), of its input
vectors, its answer to a one-item history, and simple combinations of those.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import scipy.sparse as sp

Similar = Callable[[int], np.ndarray]  # item a -> scores of every item (a itself ignored)


def lifts(ratings: sp.csr_matrix, anchors: np.ndarray, lists: np.ndarray) -> np.ndarray:
    """Mean lift P(b|a)/P(b) of each anchor's list (anchors × 10 item indices)."""
    binary = (ratings > 0).astype(np.float64).tocsc()
    users = ratings.shape[0]
    counts = np.asarray(binary.sum(axis=0)).ravel()
    both = (binary[:, anchors].T @ binary).toarray()  # anchors × items: users who rated both
    given = both[np.arange(len(anchors))[:, None], lists] / counts[anchors][:, None]
    return (given / (counts[lists] / users)).mean(axis=1)


def top_lists(similar: Similar, anchors: np.ndarray, n: int = 10) -> np.ndarray:
    out = []
    for a in anchors:
        scores = np.asarray(similar(int(a)), dtype=np.float64).copy()
        scores[a] = -np.inf
        order = np.lexsort((np.arange(len(scores)), -scores))  # ties: the lower index first
        out.append(order[:n])
    return np.array(out)


def cosine(rows: np.ndarray) -> Similar:
    unit = rows / np.maximum(np.linalg.norm(rows, axis=1, keepdims=True), 1e-12)
    return lambda a: unit @ unit[a]


def rank_scale(similar: Similar) -> Similar:
    """Scores as ranks in [0, 1] (for adding two methods on one scale)."""

    def scaled(a: int) -> np.ndarray:
        scores = similar(a)
        return np.argsort(np.argsort(scores)) / max(len(scores) - 1, 1)

    return scaled


def network_methods(recommender: Any) -> dict[str, Similar]:
    """The CDDAE's candidates: cosine of output vectors, of input vectors, the answer to a
    one-item history (profile unknown, user unknown), that answer over the answer to an empty
    history (the model's own lift), and the input and output cosines added by rank."""
    import torch

    net = recommender.net
    n = net.n_items
    out_rows = net.out.weight[:n].detach().numpy()
    in_rows = net.item_in.detach().numpy()
    width = net.user_in.in_features if net.user_in is not None else 0

    @torch.no_grad()
    def answer(items: list[int]) -> np.ndarray:
        idx = torch.tensor([items or [0]], dtype=torch.int64)
        weight = torch.tensor([[1.0] * len(items) or [0.0]])
        output = net.forward_padded(idx, weight, torch.zeros(1, width), torch.tensor([-1]))
        return net.scores(output)[0].numpy().astype(np.float64)

    empty = answer([])
    out_cos, in_cos = cosine(out_rows), cosine(in_rows)
    return {
        "CDDAE: cosine of output vectors (item_vectors)": out_cos,
        "CDDAE: cosine of output vectors, centred on their mean": cosine(
            out_rows - out_rows.mean(axis=0)
        ),
        "CDDAE: cosine of input vectors (item_in)": in_cos,
        "CDDAE: answer to a one-item history": lambda a: answer([a]),
        "CDDAE: one-item answer / empty-history answer": lambda a: answer([a]) / empty,
        "CDDAE: input + output cosine (by rank)": lambda a: (
            rank_scale(in_cos)(a) + rank_scale(out_cos)(a)
        ),
    }


def anchor_methods(ratings: sp.csr_matrix, positives: sp.csr_matrix) -> dict[str, Similar]:
    """Item-item cosine on the rating matrix; EASE's rows (λ as tuned) on the positives."""
    from training.models.tuned import tuned

    binary = (ratings > 0).astype(np.float64)
    gram = (binary.T @ binary).toarray()
    norms = np.sqrt(np.diag(gram))
    item_cosine = gram / np.maximum(np.outer(norms, norms), 1e-12)
    lam = tuned("ease")[0]["lambdas"][0]
    ease = ease_weights(positives, lam)
    return {
        "item-item cosine (rating matrix)": lambda a: item_cosine[a],
        f"EASE rows (λ {lam:g}, positives)": lambda a: ease[a],
    }


def ease_weights(positives: sp.csr_matrix, lam: float) -> np.ndarray:
    """EASE's closed form B = I − P / diag(P), P = (XᵀX + λI)⁻¹, zero diagonal."""
    gram = (positives.T @ positives).toarray().astype(np.float64)
    gram[np.diag_indices_from(gram)] += lam
    inverse = np.linalg.inv(gram)
    weights = -inverse / np.diag(inverse)[None, :]
    weights[np.diag_indices_from(weights)] = 0.0
    return weights.astype(np.float32)


def run(
    data: Path, anchor_items: int = 40, seed: int = 0, checkpoint: Path | None = None
) -> dict[str, Any]:
    """Lifts relative to popularity of every method, on the `anchor_items` most rated items."""
    from training.jobs.checkpoint import Checkpoint
    from training.jobs.pipeline import restore, train_and_evaluate

    if checkpoint is not None:
        loaded = Checkpoint.load(checkpoint)
        served = restore(loaded, served=True)
    else:
        from training.data.prepared import ProtocolConfig, prepare

        prepared = prepare(data, ProtocolConfig(seed=seed))
        served, loaded = train_and_evaluate("cddae", prepared, seed, progress=False)
    ratings, positives = loaded.seen.tocsr(), loaded.positives.tocsr()
    counts = np.asarray((ratings > 0).sum(axis=0)).ravel()
    anchors = np.lexsort((np.arange(len(counts)), -counts))[:anchor_items]

    def popular(a: int) -> np.ndarray:
        return counts.astype(np.float64)

    base = lifts(ratings, anchors, top_lists(popular, anchors))
    methods = {"popularity": popular, **anchor_methods(ratings, positives)}
    methods.update(network_methods(served))
    rows = {}
    for name, similar in methods.items():
        lists = top_lists(similar, anchors)
        lift = lifts(ratings, anchors, lists)
        rows[name] = {
            "mean lift": float(lift.mean()),
            "× popularity": float(lift.mean() / base.mean()),
            "anchors ahead of popularity": int((lift > base).sum()),
            "median ratings of a returned item": float(np.median(counts[lists])),
        }
    return {"anchors": len(anchors), "checkpoint": str(checkpoint or "trained"), "rows": rows}


def table(results: dict[str, Any]) -> str:
    lines = [
        f"| method ({results['anchors']} most rated items, 10 each) | mean lift | × popularity "
        "| anchors ahead of popularity | median ratings of a returned item |",
        "| --- | --- | --- | --- | --- |",
    ]
    for name, row in results["rows"].items():
        lines.append(
            f"| {name} | {row['mean lift']:.3f} | {row['× popularity']:.3f} "
            f"| {row['anchors ahead of popularity']} "
            f"| {row['median ratings of a returned item']:.0f} |"
        )
    return "\n".join(lines)
