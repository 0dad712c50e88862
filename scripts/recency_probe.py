"""What a recency-weighted input would buy, measured on a tuning split's validation only.

    python scripts/recency_probe.py --data data/ml-100k --protocol temporal --kind cddae
    python scripts/recency_probe.py --data data/ml-100k --protocol random --kind ease

Fits the model at its defaults on the tuning split (training/experiments/tuning.py; no test
set is read), then scores validation twice over: with the plain 0/1 histories the model was fit
on, and with each entry weighted decay^r, r its rank from the user's latest interaction. The
fit is unchanged: this asks whether serving histories by their order is worth building, not
what a model trained on such inputs would do.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import scipy.sparse as sp

from training.data.prepared import ProtocolConfig, prepare
from training.evaluation.metrics import evaluate_sampled, summary
from training.experiments.tuning import TUNING_SEED, tuning_split
from training.jobs.pipeline import fit_and_evaluate, make_recommender, ranker


def recency_weighted(history: sp.csr_matrix, times: sp.csr_matrix, decay: float) -> sp.csr_matrix:
    """`history` with each entry decay^r, r its rank from the row's latest timestamp."""
    out = history.astype(np.float32, copy=True)
    for row in range(out.shape[0]):
        start, end = out.indptr[row], out.indptr[row + 1]
        rank = np.empty(end - start)
        rank[np.argsort(-times.data[start:end], kind="stable")] = np.arange(end - start)
        out.data[start:end] = decay**rank
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--protocol", choices=["random", "temporal"], default="temporal")
    parser.add_argument("--kind", default="cddae")
    parser.add_argument("--seed", type=int, default=TUNING_SEED)
    parser.add_argument("--decays", type=float, nargs="+", default=[0.95, 0.9, 0.85, 0.8])
    args = parser.parse_args()

    prepared = tuning_split(args.data, args.seed, args.protocol)
    times = prepare(args.data, ProtocolConfig(name=args.protocol, seed=args.seed)).fit_times
    assert times is not None and (times.indices == prepared.train.indices).all()
    model = make_recommender(args.kind, "default")
    results, seconds, _ = fit_and_evaluate(model, prepared, args.seed, progress=False)
    features = prepared.dataset.user_features

    def line(label: str, figures: dict[str, np.ndarray]) -> str:
        s = summary(figures)
        return f"| {label} | {s['P@10']:.4f} | {s['R@10']:.4f} | {s['NDCG@10']:.4f} |"

    print(f"{args.kind}, {args.protocol} tuning split seed {args.seed} (fit {seconds:.0f} s)")
    print("| input | P@10 | R@10 | NDCG@10 |\n|---|---|---|---|")
    print(line("0/1 (as fit)", results))
    for decay in args.decays:
        history = recency_weighted(prepared.train, times, decay)
        figures, _ = evaluate_sampled(ranker(model, features), history, prepared.test)
        print(line(f"{decay}^r", figures))


if __name__ == "__main__":
    main()
