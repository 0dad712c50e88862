"""What the profile path buys for a user with no history: profile-only CDDAE against popularity.

    python scripts/eval_cold_start.py --checkpoint runs/cddae

Every evaluated user is scored three ways: from the full training history (the usual protocol),
from the profile alone with an empty history (what the service's `profile` source does), and by
popularity (the `popularity` source). Training items are excluded from all three rankings, and
relevance is the user's test items. The users were seen in training, so this is a lower bound
on the gap a true cold-start split would show only in the sense that the model's weights saw
their items, not their profile-only input.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import scipy.sparse as sp

from training.evaluation.metrics import evaluate_scores
from training.jobs.checkpoint import Checkpoint
from training.jobs.pipeline import restore


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--checkpoint", type=Path, required=True)
    args = parser.parse_args()
    checkpoint = Checkpoint.load(args.checkpoint)
    model = restore(checkpoint)
    n_users = checkpoint.train.shape[0]
    users = np.arange(n_users)
    unseen = np.full(n_users, -1)
    empty = sp.csr_matrix(checkpoint.train.shape, dtype=np.float32)
    popularity = np.asarray(checkpoint.train.sum(axis=0), dtype=np.float64).ravel()
    rows = {
        "full history (usual protocol)": model.score(
            checkpoint.train, users, checkpoint.user_features
        ),
        "profile only, empty history": model.score(empty, unseen, checkpoint.user_features),
        "no profile, empty history": model.score(
            empty, unseen, np.zeros_like(checkpoint.user_features)
        ),
        "popularity": np.tile(popularity, (n_users, 1)),
    }
    print(f"{checkpoint.kind} from {args.checkpoint}; training items excluded; N = 10")
    print(f"{'':32}{'P@10':>8}{'R@10':>8}{'NDCG@10':>9}{'COV@10':>8}")
    for label, scores in rows.items():
        m = evaluate_scores(scores, checkpoint.train, checkpoint.test)
        print(f"{label:<32}{m['P'][9]:8.4f}{m['R'][9]:8.4f}{m['NDCG'][9]:9.4f}{m['COV'][9]:8.4f}")


if __name__ == "__main__":
    main()
