"""An attempt logged in docs/MODELS.md: a popularity prior blended into new users' lists.

For a history of K revealed items the served distribution would be
    p = (1 - w) · p_model + w · p_popularity,   w = k0 / (k0 + K)   (K ≥ 1),
the model's scores normalised to sum 1. This measures it on the user-disjoint protocol
(training/experiments/new_users.py) for CDDAE's bundle, one split seed, several k0. The model is the
default with `--model` over it: by default short_history_rate 0, the setting the figures in
docs/MODELS.md were measured with (before that option became a default).

    python scripts/new_user_prior.py --data data/ml-100k --seed 100 --k0 0,1,2,4,8,16
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import numpy as np

from service.serving.onnx_model import Model
from training.data.loaders import load_dataset
from training.evaluation.bundle_holdout import item_maps
from training.evaluation.metrics import evaluate_chunked, summary
from training.experiments.new_users import ad_hoc_queries, reveal, user_disjoint
from training.jobs.export import export_checkpoint
from training.jobs.pipeline import train_and_evaluate


def blended_ranker(model: Model, prepared, weight: float):
    _, theirs_to_ours = item_maps(model, prepared)
    prior = model.popularity / max(float(model.popularity.sum()), 1e-12)

    def rank(history, users, n):
        queries = ad_hoc_queries(model, prepared, history, users)
        scores = model.scores(queries)
        lists = np.full((len(users), n), -1, dtype=np.int64)
        for row, query in enumerate(queries):
            p = scores[row] / max(float(scores[row].sum()), 1e-12)
            ranked = model.rank(query, (1 - weight) * p + weight * prior, n, query.excluded())
            lists[row, : len(ranked.indices)] = theirs_to_ours[ranked.indices]
        return lists

    return rank


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--seed", type=int, default=100)
    parser.add_argument("--k0", default="0,1,2,4,8,16")
    parser.add_argument("--model", default='{"short_history_rate": 0.0}', help="JSON options")
    args = parser.parse_args()
    strengths = [float(k) for k in args.k0.split(",")]
    split_ = user_disjoint(load_dataset(args.data), 0.2, args.seed, 5)
    with tempfile.TemporaryDirectory() as models:
        _, checkpoint = train_and_evaluate(
            "cddae", split_.prepared, args.seed, model=json.loads(args.model),
            progress=False, final_fit=False,
        )  # fmt: skip
        version, _ = export_checkpoint(checkpoint, Path(models))
        model = Model.load(Path(models) / version)
        print("| K | k0 | P@10 | R@10 | NDCG@10 |\n|---|---|---|---|---|")
        for k in (1, 3, 5):
            shown, target = reveal(split_, k)
            for k0 in strengths:
                rank = blended_ranker(model, split_.prepared, k0 / (k0 + k))
                s = summary(evaluate_chunked(rank, shown, target, split_.held))
                print(f"| {k} | {k0:g} | {s['P@10']:.4f} | {s['R@10']:.4f} | {s['NDCG@10']:.4f} |")


if __name__ == "__main__":
    main()
