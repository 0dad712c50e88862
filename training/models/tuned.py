"""Every model's default settings: the equal-budget tuner's choices.

Chosen by `cddae tune --data data/ml-100k --budget 30` (training/experiments/tuning.py):
30 seeded random draws per model, each scored by validation NDCG@10 on tuning split seed 100,
never on a test set (docs/MODELS.md, "Equal budgets, validation only"; the trials in
docs/tuning/tune.json).
Each entry is exactly one draw of the tuner's space, so it sets every option the tuner varies;
NEW_USERS adds options chosen on the new-users protocol. `--config` overrides either.
"""

from __future__ import annotations

from typing import Any

BUDGET = 30  # trials per model
TUNED: dict[str, dict[str, dict[str, Any]]] = {
    "ease": {  # validation NDCG@10 0.2160
        "model": {"lambdas": [289.0]},
    },
    "edlae": {  # validation NDCG@10 0.2156
        "model": {"lambdas": [717.0], "dropouts": [0.4]},
    },
    "itemknn": {  # validation NDCG@10 0.2031
        "model": {"k": 193, "shrink": 21.1},
    },
    "dae": {  # validation NDCG@10 0.2175
        "model": {
            "hidden": [600],
            "code_width": 200,
            "beta": 0.0,
            "corruption": 0.28,
            "l2": 0.00205,
            "emphasis": 1.0,
            "rescale": True,
            "output": "softmax",
            "loss": "cce",
            "input_norm": True,
        },
        "train": {"lr": 0.000452, "batch_size": 32},
    },
    "cdae": {  # validation NDCG@10 0.2140
        "model": {
            "hidden": [600],
            "code_width": 200,
            "beta": 0.0,
            "corruption": 0.34,
            "l2": 0.0417,
            "emphasis": 4.0,
            "rescale": False,
            "output": "softmax",
            "loss": "cce",
            "input_norm": True,
        },
        "train": {"lr": 0.00212, "batch_size": 32},
    },
    "cddae": {  # validation NDCG@10 0.2196
        "model": {
            "hidden": [600],
            "code_width": 200,
            "beta": 0.79,
            "corruption": 0.15,
            "l2": 0.0087,
            "emphasis": 1.0,
            "rescale": True,
            "output": "softmax",
            "loss": "cce",
            "input_norm": True,
            "cold_start_rate": 0.1,
            "profile_norm": True,
            "side_weight": 0.1,
        },
        "train": {"lr": 0.000449, "batch_size": 128},
    },
}


# Two jobs, two heads (docs/MODELS.md, "Two heads"): CDDAE's network without the new-user
# options (short_history_rate 0.25 and cold_start_rate 0.1 before), which won on validation of
# both tuning splits (random NDCG@10 0.2186 -> 0.2283, temporal 0.1477 -> 0.1488), and a short
# head for histories of at most 5 items whose share and rates were chosen on the user-disjoint
# protocol of split seed 100 (new users' NDCG@10 averaged over K = 0, 1, 3, 5: 0.3430 -> 0.3535).
NEW_USERS: dict[str, dict[str, dict[str, Any]]] = {
    "cddae": {
        "model": {
            "short_history_rate": 0.0,
            "cold_start_rate": 0.0,
            "short_head_share": 0.4,
            "short_head_history_rate": 0.9,
            "short_head_cold_rate": 0.3,
            "short_head_lr_scale": 3.0,
            # Item-kNN's fold-in on the head's rows (docs/MODELS.md, "The short head's
            # neighbours"): weight 8 had the best new users' R@10 (mean over K = 1, 3, 5) on the
            # user-disjoint protocol of split seeds 100 and 101 both, every neighbour kept.
            "short_head_neighbours": 8.0,
            "short_head_neighbour_shrink": TUNED["itemknn"]["model"]["shrink"],
        }
    },
}


# Chosen after the tuner and the new-users choice (docs/MODELS.md, "The linear path"): EASE's
# weights beside CDDAE's network where they fit, at EASE's tuned λ; the scale is chosen on
# validation inside every fit. Kept because it beat the previous default on validation of both
# tuning splits, random (NDCG@10 +1.1%) and temporal (+7.2%), with new users unchanged.
LINEAR_PATH: dict[str, dict[str, dict[str, Any]]] = {
    "cddae": {
        "model": {"linear_path": "auto", "linear_lambda": TUNED["ease"]["model"]["lambdas"][0]}
    },
}


def tuned(kind: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """(model options, training options) chosen for `kind` (empty when none)."""
    parts = [TUNED.get(kind, {}), NEW_USERS.get(kind, {}), LINEAR_PATH.get(kind, {})]
    model = {k: v for part in parts for k, v in part.get("model", {}).items()}
    return model, {k: v for part in parts for k, v in part.get("train", {}).items()}
