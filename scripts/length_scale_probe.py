"""A scale per history length for CDDAE's linear path, chosen on each fit's validation and
reported on test, paired against the fit's one scale.

    python scripts/length_scale_probe.py --data data/ml-100k --protocol random --seeds 0 1

Users are cut by training positives at 10, 20 and 50; the model is CDDAE at its defaults fit
on the split's fit part (no refit, so its validation is untouched), each bucket's scale the
best validation NDCG@10 of the linear path's scales, then test scored with the fit's one scale
and with the buckets' (docs/MODELS.md, "Where the temporal gap sits").
"""

from __future__ import annotations

import argparse
from dataclasses import replace
from pathlib import Path

import numpy as np

from training.data.prepared import ProtocolConfig, prepare
from training.evaluation.metrics import top_n_chunked
from training.jobs.pipeline import make_recommender
from training.models.interface import FitContext
from training.models.linear_path import SCALES

EDGES = (10, 20, 50)  # training positives: ≤ 10, 11–20, 21–50, more
DISCOUNT = 1 / np.log2(np.arange(2, 12))


def per_user(rec, features, history, target, users) -> tuple[np.ndarray, ...]:
    """P@10, R@10 and NDCG@10 (binary relevance) of each user's top 10."""
    lists = top_n_chunked(rec.ranker(features), history, users, 10, 256)
    rows = target[users]
    hit = np.stack(
        [
            np.isin(lists[r], rows.indices[rows.indptr[r] : rows.indptr[r + 1]])
            for r in range(len(users))
        ]
    )
    relevant = np.diff(rows.indptr)
    ideal = np.array([DISCOUNT[: min(10, k)].sum() for k in relevant])
    return hit.sum(1) / 10, hit.sum(1) / relevant, (hit * DISCOUNT).sum(1) / ideal


def set_scale(paths, scale: float) -> None:
    for path in paths:
        path.scale.fill_(scale)


def run(data: Path, protocol: str, seed: int) -> None:
    prepared = prepare(data, ProtocolConfig(name=protocol, seed=seed))
    features = prepared.dataset.user_features
    rec = make_recommender("cddae", "default")
    rec.train_config = replace(rec.train_config, refit=False)
    ctx = FitContext(
        prepared.fit, prepared.valid, features, prepared.dataset.item_features, seed, False
    )
    rec.fit(ctx)
    paths = [n.linear for n in (rec.net, rec.short_net) if n is not None and n.linear is not None]
    chosen = float(paths[0].scale)
    valid_users = np.flatnonzero(np.diff(prepared.valid.indptr) > 0)
    valid_bucket = np.searchsorted(EDGES, np.diff(prepared.fit.indptr)[valid_users])
    ndcg = {}
    for scale in SCALES:
        set_scale(paths, scale)
        ndcg[scale] = per_user(rec, features, prepared.fit, prepared.valid, valid_users)[2]
    best = [
        max(SCALES, key=lambda s, b=b: (ndcg[s][valid_bucket == b].mean(), -s))
        for b in range(len(EDGES) + 1)
    ]
    test_users = np.flatnonzero(np.diff(prepared.test.indptr) > 0)
    test_bucket = np.searchsorted(EDGES, np.diff(prepared.train.indptr)[test_users])
    set_scale(paths, chosen)
    one = per_user(rec, features, prepared.train, prepared.test, test_users)
    by_length = [np.zeros(len(test_users)) for _ in one]
    for bucket, scale in enumerate(best):
        set_scale(paths, scale)
        figures = per_user(rec, features, prepared.train, prepared.test, test_users)
        for mine, theirs in zip(by_length, figures, strict=True):
            mine[test_bucket == bucket] = theirs[test_bucket == bucket]
    line = f"{protocol} seed {seed}: one scale {chosen:g}, by length {best}; test"
    for name, a, b in zip(("P@10", "R@10", "NDCG@10"), one, by_length, strict=True):
        d = b - a
        se = d.std(ddof=1) / np.sqrt(len(d))
        line += f" | {name} {a.mean():.4f} → {b.mean():.4f} ({d.mean() / se:+.1f} SE)"
    print(line, flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--protocol", choices=["random", "temporal"], default="random")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    args = parser.parse_args()
    for seed in args.seeds:
        run(args.data, args.protocol, seed)


if __name__ == "__main__":
    main()
