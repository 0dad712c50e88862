"""New users, measured as the service meets them: the user-disjoint protocol.

A seeded share of the users is held out whole: none of their interactions is in training. Each
is then asked for through the exported bundle exactly as `POST /score` asks for an ad-hoc user
— K of their positives revealed (the first K by time: what a new visitor has done so far), the
profile, no user index — and judged on the rest of their positives, the revealed ones excluded.
The same users are kept at every K (those with more than max K positives).

Baselines on the same users and lists: global popularity; demographic popularity (the
popularity among training users who share one profile field's value, one row per field); and
item-item models (EASE, EDLAE, item-kNN) folding in the revealed items through their bundles.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import scipy.sparse as sp

from service.serving.onnx_model import Model, Query
from training.data.loaders import RawDataset
from training.data.prepared import Prepared, ProtocolConfig, prepare
from training.data.splits import _select, split
from training.evaluation.bundle_holdout import item_maps, profile_features
from training.evaluation.metrics import evaluate_chunked, rank_by_scores, summary
from training.jobs.pipeline import train_and_evaluate

REVEALED = (0, 1, 3, 5)
RankChunk = Callable[[sp.csr_matrix, np.ndarray, int], np.ndarray]
Results = dict[str, dict[int, dict[str, float]]]  # row -> K -> metric -> value


@dataclass
class UserDisjoint:
    prepared: Prepared  # training users only; the held-out users' rows are empty
    held: np.ndarray  # held-out users with more than max(REVEALED) positives
    positives: sp.csr_matrix  # every positive (the held-out users' included)
    timestamps: sp.csr_matrix


def user_disjoint(
    data: Path | RawDataset, fraction: float = 0.2, seed: int = 0, most_revealed: int = 5
) -> UserDisjoint:
    full = prepare(data, ProtocolConfig(seed=seed))
    ds = full.dataset
    rng = np.random.default_rng(seed + 20_011)
    held_mask = np.zeros(ds.n_users, dtype=bool)
    held_mask[rng.choice(ds.n_users, round(fraction * ds.n_users), replace=False)] = True
    rows = np.repeat(np.arange(ds.n_users), np.diff(ds.positives.indptr))
    training = ~held_mask[rows]
    train = _select(ds.positives, training)
    times = _select(ds.timestamps, training)
    inner = split(train, times, "random", 0.2, seed + 10_007)
    seen_rows = np.repeat(np.arange(ds.n_users), np.diff(full.seen.indptr))
    seen = _select(full.seen, ~held_mask[seen_rows])
    protocol = {"name": "user-disjoint", "fraction": fraction, "seed": seed,
                "threshold": full.protocol["threshold"]}  # fmt: skip
    test = _select(ds.positives, ~training)
    prepared = Prepared(ds, train, test, inner.train, inner.test, protocol, train, seen)
    counts = np.diff(ds.positives.indptr)
    held = np.flatnonzero(held_mask & (counts > most_revealed))
    return UserDisjoint(prepared, held, ds.positives, ds.timestamps)


def reveal(split_: UserDisjoint, k: int) -> tuple[sp.csr_matrix, sp.csr_matrix]:
    """(revealed, target): each held-out user's first k positives by time, and the rest."""
    positives, times = split_.positives, split_.timestamps
    first = np.zeros(positives.nnz, dtype=bool)
    in_held = np.zeros(positives.nnz, dtype=bool)
    for user in split_.held:
        start, end = positives.indptr[user], positives.indptr[user + 1]
        in_held[start:end] = True
        order = np.argsort(times.data[start:end], kind="stable")[:k]
        first[start + order] = True
    return _select(positives, first), _select(positives, in_held & ~first)


def ad_hoc_queries(
    model: Model, prepared: Prepared, history: sp.csr_matrix, users: np.ndarray
) -> list[Query]:
    """One query per row of `history`, as the service builds it for an ad-hoc user: the row's
    items (under the bundle's ids) as the history, the user's profile, user index unknown."""
    ours_to_theirs, _ = item_maps(model, prepared)
    queries = []
    for row, user in enumerate(users):
        items = ours_to_theirs[history.indices[history.indptr[row] : history.indptr[row + 1]]]
        items = items[items >= 0].tolist()
        features, has_profile = profile_features(model, prepared, int(user))
        queries.append(Query(dict.fromkeys(items, 1.0), features, -1, has_profile, items))
    return queries


def bundle_ranker(folder: Path, prepared: Prepared) -> RankChunk:
    """Lists from an exported bundle, each user asked for as an ad-hoc user of the service."""
    model = Model.load(folder)
    _, theirs_to_ours = item_maps(model, prepared)

    def rank(history: sp.csr_matrix, users: np.ndarray, n: int) -> np.ndarray:
        queries = ad_hoc_queries(model, prepared, history, users)
        scored = [q for q in queries if model.source(q) != "popularity"]
        scores = iter(model.scores(scored)) if scored else iter(())
        lists = np.full((len(users), n), -1, dtype=np.int64)
        for row, q in enumerate(queries):
            values = next(scores) if model.source(q) != "popularity" else None
            ranked = model.rank(q, values, n, q.excluded())
            top = theirs_to_ours[ranked.indices]
            lists[row, : len(top)] = top
        return lists

    return rank


def popularity_ranker(train: sp.csr_matrix) -> RankChunk:
    counts = np.asarray(train.sum(axis=0), dtype=np.float64).ravel()
    return rank_by_scores(lambda history, users: np.tile(counts, (len(users), 1)))


def demographic_rankers(prepared: Prepared) -> dict[str, RankChunk]:
    """Per categorical or banded profile field: the popularity among training users in the
    same group (users with no value for the field get the global popularity)."""
    ds = prepared.dataset
    train = prepared.train
    overall = np.asarray(train.sum(axis=0), dtype=np.float64).ravel()
    rankers: dict[str, RankChunk] = {}
    start = 0
    for field in ds.user_spec.fields:
        columns = ds.user_features[:, start : start + field.width]
        start += field.width
        if field.kind not in ("categorical", "bucket") or field.width == 0:
            continue
        group = np.where(columns.any(axis=1), columns.argmax(axis=1), -1)
        members = sp.csr_matrix(
            (np.ones(int((group >= 0).sum())), (group[group >= 0], np.flatnonzero(group >= 0))),
            shape=(field.width, ds.n_users),
        )
        per_group = np.asarray((members @ train).todense(), dtype=np.float64)

        def score(history, users, g=group, table=per_group):
            rows = g[users]
            out = np.tile(overall, (len(users), 1))
            out[rows >= 0] = table[rows[rows >= 0]]
            return out

        rankers[f"popularity by {field.name}"] = rank_by_scores(score)
    return rankers


def run(
    data: Path | RawDataset,
    kinds: tuple[str, ...] = ("cddae", "ease", "edlae", "itemknn"),
    seed: int = 0,
    fraction: float = 0.2,
    revealed: tuple[int, ...] = REVEALED,
    config: dict[str, Any] | None = None,
    log: Callable[[str], None] = print,
) -> Results:
    """{row: {K: {"P@10": …, …}}} for every model and baseline at every K."""
    config = config or {}
    split_ = user_disjoint(data, fraction, seed, max(revealed))
    prepared = split_.prepared
    log(f"user-disjoint: {int(np.diff(prepared.test.indptr).astype(bool).sum())} users held out "
        f"whole, {len(split_.held)} of them with more than {max(revealed)} positives")  # fmt: skip
    rankers: dict[str, RankChunk] = {"popularity": popularity_ranker(prepared.train)}
    rankers.update(demographic_rankers(prepared))
    from training.jobs.export import export_checkpoint

    with tempfile.TemporaryDirectory() as models:
        for kind in kinds:
            options = config.get(kind, {})
            _, checkpoint = train_and_evaluate(
                kind, prepared, seed, model=options.get("model"), train=options.get("train"),
                progress=False, final_fit=False,
            )  # fmt: skip
            version, _ = export_checkpoint(checkpoint, Path(models))
            rankers[kind] = bundle_ranker(Path(models) / version, prepared)
            log(f"trained and exported {kind} ({checkpoint.meta['params']})")
        results: Results = {}
        for k in revealed:
            shown, target = reveal(split_, k)
            for name, rank in rankers.items():
                metrics = evaluate_chunked(rank, shown, target, split_.held)
                results.setdefault(name, {})[k] = summary(metrics)
    return results


def average(runs: list[Results]) -> Results:
    """The mean over split seeds of every row, K and metric."""
    first = runs[0]
    return {
        name: {
            k: {m: float(np.mean([run[name][k][m] for run in runs])) for m in metrics}
            for k, metrics in by_k.items()
        }
        for name, by_k in first.items()
    }


def table(results: Results, metric: str) -> str:
    ks = sorted(next(iter(results.values())))
    lines = [f"| {metric} | " + " | ".join(f"K = {k}" for k in ks) + " |",
             "|---|" + "---|" * len(ks)]  # fmt: skip
    for name, by_k in results.items():
        lines.append(f"| {name} | " + " | ".join(f"{by_k[k][metric]:.4f}" for k in ks) + " |")
    return "\n".join(lines)


def plot(results: Results, path: Path, title: str = "") -> None:
    """P@10 and R@10 against K, one line per model or baseline."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(13, 4))
    for axis, metric in zip(axes, ("P@10", "R@10"), strict=True):
        for name, by_k in results.items():
            ks = sorted(by_k)
            style = "--" if name.startswith("popularity") else "-"
            axis.plot(ks, [by_k[k][metric] for k in ks], style, marker="o", label=name)
        axis.set_xlabel("K: a new user's revealed items (the first K), plus the profile")
        axis.set_ylabel(metric)
        axis.set_xticks(sorted(next(iter(results.values()))))
        axis.grid(alpha=0.3)
    axes[1].legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.02, 1.0))
    fig.suptitle(title or "New users (user-disjoint), scored through the bundles")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
