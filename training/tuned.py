"""Every model's default settings: the equal-budget tuner's choices.

Chosen by `cddae tune --data data/ml-100k --budget 30` (training/tune.py): 30 seeded random
draws per model, each scored by validation NDCG@10 on tuning split seed 100, never on a test
set (docs/MODELS.md, "Equal budgets, validation only"; the trials in docs/tuning/tune.json).
Each entry is exactly one draw of the tuner's space, so it sets every option the tuner varies;
`--config` or a preset's overrides still take precedence.
"""

from __future__ import annotations

from typing import Any

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
            "hidden": [600, 200],
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


def tuned(kind: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """(model options, training options) the tuner chose for `kind` (empty when none)."""
    chosen = TUNED.get(kind, {})
    return dict(chosen.get("model", {})), dict(chosen.get("train", {}))
