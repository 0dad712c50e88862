"""Hyper-parameters chosen honestly: the same budget for every model, validation only.

Each model gets `budget` trials drawn at random (seeded) from its documented space. A trial is
fit on the tuning split's training-minus-validation part (early stopping, where a model has
it, carves its own validation from that) and scored by NDCG@10 on the validation part; the
test part of the tuning split is never read, and the tuning split's seed is not one of the
seeds a report averages. EASE and EDLAE tune their λ (and p) here, one setting per trial, not
through their own built-in grids, so that every model's budget is the same count of fits.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

from training.data.loaders import RawDataset
from training.data.prepared import Prepared, ProtocolConfig, prepare
from training.data.splits import split
from training.evaluation.metrics import summary
from training.jobs.pipeline import fit_and_evaluate, make_recommender

TUNING_SEED = 100  # reports average split seeds 0-4; tuning happens on another split

Draw = Callable[[random.Random], dict[str, Any]]


def _log(rng: random.Random, low: float, high: float) -> float:
    return float(f"{math.exp(rng.uniform(math.log(low), math.log(high))):.3g}")


# The two objectives the literature backs: the paper's sigmoid + BCE, and Mult-DAE's multinomial
# likelihood on an L2-normalised input (Liang et al., 2018).
RECIPES = (
    {"output": "sigmoid", "loss": "bce", "input_norm": False},
    {"output": "softmax", "loss": "cce", "input_norm": True},
)


def _autoencoder(kind: str) -> Draw:
    def draw(rng: random.Random) -> dict[str, Any]:
        width = rng.choice([100, 200, 400, 600])
        # Half the draws plain, half Mult-VAE's variational code behind the first layer.
        variational = rng.random() < 0.5
        model: dict[str, Any] = {
            "hidden": [width],
            "code_width": rng.choice([50, 100, 200]) if variational else 200,
            "beta": _log(rng, 0.05, 1.0) if variational else 0.0,
            "corruption": round(rng.uniform(0.1, 0.8), 2),
            "l2": _log(rng, 1e-3, 1.0),
            "emphasis": rng.choice([1.0, 1.0, 2.0, 4.0]),
            "rescale": rng.choice([True, False]),
            **rng.choice(RECIPES),
        }
        if kind == "cddae":  # the options of its profile inputs
            model["cold_start_rate"] = rng.choice([0.0, 0.0, 0.1, 0.25])
            model["profile_norm"] = rng.choice([True, False])
            model["side_weight"] = rng.choice([0.1, 0.3, 1.0])
        train = {"lr": _log(rng, 3e-4, 3e-3), "batch_size": rng.choice([32, 64, 128])}
        return {"model": model, "train": train}

    return draw


def _edlae(rng: random.Random) -> dict[str, Any]:
    lam, p = _log(rng, 1, 1000), round(rng.uniform(0.05, 0.85), 2)
    return {"model": {"lambdas": [lam], "dropouts": [p]}}


SPACES: dict[str, Draw] = {
    "ease": lambda rng: {"model": {"lambdas": [_log(rng, 5, 5000)]}},
    "edlae": _edlae,
    "itemknn": lambda rng: {
        "model": {"k": int(_log(rng, 10, 1000)), "shrink": rng.choice([0.0, _log(rng, 1, 100)])}
    },
    "dae": _autoencoder("dae"),
    "cdae": _autoencoder("cdae"),
    "cddae": _autoencoder("cddae"),
}
SPACE_DOC = {
    "ease": "λ log-uniform in [5, 5000]",
    "edlae": "λ log-uniform in [1, 1000], dropout p uniform in [0.05, 0.85]",
    "itemknn": "k log-uniform in [10, 1000], shrink 0 or log-U[1, 100] (even odds)",
    "dae/cdae/cddae": "width {100, 200, 400, 600}; even odds of a Mult-VAE code behind it (code "
    "width {50, 100, 200}, β log-U[0.05, 1] annealed over 1,000 steps); corruption U[0.1, 0.8], "
    "l2 log-U[1e-3, 1], "
    "emphasis {1 (×2), 2, 4}, rescale {yes, no}, objective {sigmoid + BCE, softmax + CCE on an "
    "L2-normalised input}, lr log-U[3e-4, 3e-3], batch {32, 64, 128}; cddae also "
    "cold_start_rate {0 (×2), 0.1, 0.25}, profile_norm {yes, no}, side_weight {0.1, 0.3, 1}",
}


def tuning_split(
    data: Path | RawDataset, seed: int = TUNING_SEED, protocol: str = "random"
) -> Prepared:
    """The tuning split seen as a fresh problem: its training part is the data, its validation
    part the test; early stopping carves its own validation from the training part. With
    `temporal`, validation is each user's latest positives of the training part (the split's
    own test part, later still, is never read either way), and early stopping's validation is
    carved by time as well, as a reported temporal fit carves it."""
    outer = prepare(data, ProtocolConfig(name=protocol, seed=seed))
    assert outer.fit_times is not None
    inner = split(outer.fit, outer.fit_times, protocol, 0.2, seed + 20_021)
    return replace(outer, train=outer.fit, test=outer.valid, fit=inner.train, valid=inner.test)


def tune(
    data: Path | RawDataset,
    kinds: tuple[str, ...],
    budget: int,
    seed: int = TUNING_SEED,
    log: Callable[[str], None] = print,
    settings: list[dict[str, Any]] | None = None,
    protocol: str = "random",
) -> dict[str, Any]:
    """Each kind's best of `budget` draws; or, with `settings`, those settings scored the same
    way on each kind (a setting's options over the kind's defaults: how attempts are logged)."""
    prepared = tuning_split(data, seed, protocol)
    report: dict[str, Any] = {"seed": seed, "protocol": protocol, "budget": budget,
                              "metric": "validation NDCG@10", "spaces": SPACE_DOC,
                              "models": {}}  # fmt: skip
    for kind in kinds:
        rng = random.Random(f"{kind}-{seed}")
        trials = []
        draws = settings or [SPACES[kind](rng) for _ in range(budget)]
        # Draws start from the plain option defaults, given settings from the current ones.
        preset = "default" if settings else "untuned"
        for trial, setting in enumerate(draws):
            recommender = make_recommender(kind, preset, setting.get("model"),
                                           {**setting.get("train", {})})  # fmt: skip
            results, seconds, _ = fit_and_evaluate(recommender, prepared, seed, progress=False)
            score = summary(results)["NDCG@10"]
            trials.append({"setting": setting, "NDCG@10": score, "seconds": round(seconds, 1)})
            log(f"{kind} trial {trial + 1}/{len(draws)}: NDCG@10 {score:.4f} {setting}")
        best = max(trials, key=lambda t: t["NDCG@10"])
        report["models"][kind] = {"chosen": best["setting"], "NDCG@10": best["NDCG@10"],
                                  "trials": trials}  # fmt: skip
    return report
