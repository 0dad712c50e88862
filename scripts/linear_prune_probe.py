"""What keeping only each row's k largest entries of CDDAE's linear path B would cost, on a
tuning split's validation only.

    python scripts/linear_prune_probe.py --data data/ml-100k --protocol random --keep 400 200 100

Fits CDDAE at its defaults on the tuning split (training/experiments/tuning.py; no test set is
read), then scores validation with B as fit and with B cut to its k largest |entries| per row
(the same cut on the short head's shared path). The fit is unchanged: this asks whether a
sparse B — k entries gathered per history item instead of a whole row — is worth building for
serving speed (docs/PERFORMANCE.md), not what a fit on a sparse B would do.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from training.evaluation.metrics import evaluate_sampled, summary
from training.experiments.tuning import TUNING_SEED, tuning_split
from training.jobs.pipeline import fit_and_evaluate, make_recommender, ranker


def keep_largest(weight: torch.Tensor, keep: int) -> torch.Tensor:
    """A copy of `weight` with all but each row's `keep` largest |entries| set to 0."""
    cut = weight.clone()
    if keep < cut.shape[1]:
        drop = torch.topk(cut.abs(), cut.shape[1] - keep, dim=1, largest=False).indices
        cut.scatter_(1, drop, 0.0)
    return cut


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--protocol", choices=["random", "temporal"], default="random")
    parser.add_argument("--seed", type=int, default=TUNING_SEED)
    parser.add_argument("--keep", type=int, nargs="+", default=[400, 200, 100, 50])
    args = parser.parse_args()

    prepared = tuning_split(args.data, args.seed, args.protocol)
    model = make_recommender("cddae", "default")
    results, seconds, _ = fit_and_evaluate(model, prepared, args.seed, progress=False)
    nets = [net for net in (model.net, model.short_net) if net is not None]
    paths = [net.linear for net in nets if net.linear is not None]
    if not paths:
        raise SystemExit("this fit has no linear path (past its size rule?)")
    full = paths[0].weight.clone()
    features = prepared.dataset.user_features

    def line(label: str, figures) -> str:
        s = summary(figures)
        return f"| {label} | {s['P@10']:.4f} | {s['R@10']:.4f} | {s['NDCG@10']:.4f} |"

    print(f"CDDAE, {args.protocol} tuning split seed {args.seed} (fit {seconds:.0f} s)")
    print("| B, entries kept per row | P@10 | R@10 | NDCG@10 |\n|---|---|---|---|")
    print(line(f"all {full.shape[1]:,}", results))
    for keep in args.keep:
        cut = keep_largest(full, keep)
        for path in paths:
            path.weight.copy_(cut)
        figures, _ = evaluate_sampled(ranker(model, features), prepared.train, prepared.test)
        print(line(f"{keep:,}", figures))


if __name__ == "__main__":
    main()
