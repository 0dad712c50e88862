"""The paper's Experiments 1–4 (SPEC §5) and the baselines (§6), over several split seeds.

Each (setting, seed) is one independent run in a worker process with one torch thread, so two
runs share this 2-core machine and every number is reproducible whatever worker ran it.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterable
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, field
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from service.features import FeatureSpec


@dataclass(frozen=True)
class Setting:
    experiment: str
    label: str
    kind: str
    preset: str = "paper"
    model: dict[str, Any] = field(default_factory=dict)
    user_fields: tuple[str, ...] | None = None  # None: every profile field; (): no profile

    @property
    def key(self) -> str:
        return f"{self.experiment}/{self.label}"


# Experiments 2–4 run CDDAE with gender as its only profile field (the paper's Experiment 2);
# from Experiment 3 on with the output and loss Experiment 2 finds best (sigmoid + BCE).
GENDER = ("gender",)
NO_ITEM_PROFILE = {"use_item_profile": False}
BEST_LOSS = {"output": "sigmoid", "loss": "bce", **NO_ITEM_PROFILE}


def paper_settings(quick: bool = False) -> list[Setting]:
    s: list[Setting] = [
        Setting("baselines", "most-popular", "pop"),
        *(Setting("baselines", label, kind, preset="default")
          for label, kind in (("item-kNN", "itemknn"), ("EASE", "ease"), ("EDLAE", "edlae"))),
        *(Setting("headline", k.upper(), k, preset="default") for k in ("dae", "cdae", "cddae")),
        # The ablation of CDDAE's linear path (EASE's weights beside the network).
        Setting("headline", "CDDAE without linear path", "cddae", preset="default",
                model={"linear_path": "off"}),
        # The ablation of the short head: one network trained for both jobs (before issue 22).
        Setting("headline", "CDDAE one network", "cddae", preset="default",
                model={"short_head_share": 0.0, "short_history_rate": 0.25,
                       "cold_start_rate": 0.1}),
    ]  # fmt: skip
    # Experiment 1 as the paper ran it (sigmoid + MAE), and again under the loss Experiment 2
    # finds best: under MAE the three models can collapse to the popularity ranking.
    for experiment, loss in (("exp1", {}), ("exp1-bce", {"output": "sigmoid", "loss": "bce"})):
        s += [
            Setting(experiment, "DAE", "dae", model=loss, user_fields=()),
            Setting(experiment, "CDAE", "cdae", model=loss, user_fields=()),
            Setting(experiment, "CDDAE", "cddae",
                    model={"user_node": True, **NO_ITEM_PROFILE, **loss}, user_fields=()),
        ]  # fmt: skip
    pairs = (
        [("sigmoid", "bce"), ("softmax", "cce"), ("sigmoid", "mae")]
        if quick
        else [(o, loss) for o in ("sigmoid", "softmax") for loss in ("bce", "cce", "mae")]
    )
    s += [
        Setting("exp2", f"{o}+{loss.upper()}", "cddae",
                model={"output": o, "loss": loss, **NO_ITEM_PROFILE}, user_fields=GENDER)
        for o, loss in pairs
    ]  # fmt: skip
    rates = (0.5, 0.8) if quick else (0.2, 0.5, 0.8)
    penalties = (0.01, 0.1) if quick else (0.001, 0.01, 0.1)
    s += [
        Setting("exp3", f"{kind.upper()} cr={cr} rp={rp}", kind,
                model={"corruption": cr, "l2": rp, **BEST_LOSS}, user_fields=GENDER)
        for kind in ("cdae", "cddae") for cr in rates for rp in penalties
    ]  # fmt: skip
    widths = (10, 50, 200) if quick else (10, 50, 100, 200, 400)
    s += [
        Setting("exp4", f"width {w}", "cddae", model={"hidden": [w], **BEST_LOSS},
                user_fields=GENDER)
        for w in widths
    ]  # fmt: skip
    extra = (200,) if quick else (100, 200, 400)
    for w in extra:
        s.append(Setting("exp4", f"+encoder {w}", "cddae",
                         model={"hidden": [w, 50], **BEST_LOSS}, user_fields=GENDER))  # fmt: skip
        s.append(Setting("exp4", f"+decoder {w}", "cddae",
                         model={"hidden": [50], "decoder_hidden": [w], **BEST_LOSS},
                         user_fields=GENDER))  # fmt: skip
    return s


def user_columns(spec: FeatureSpec, names: Iterable[str] | None) -> np.ndarray:
    """Columns of the encoded profile that belong to the fields `names` (None: all)."""
    columns, start = [], 0
    wanted = set(spec.names if names is None else names)
    for f in spec.fields:
        if f.name in wanted:
            columns.extend(range(start, start + f.width))
        start += f.width
    return np.array(columns, dtype=np.int64)


# --- Workers -----------------------------------------------------------------------------------

_PREPARED: dict[int, Any] = {}


def _init_worker(data: str, seeds: list[int], protocol: str = "random") -> None:
    import torch

    from training.data.loaders import load_dataset
    from training.data.prepared import ProtocolConfig, prepare

    torch.set_num_threads(1)
    raw = load_dataset(data)
    for seed in seeds:
        _PREPARED[seed] = prepare(raw, ProtocolConfig(name=protocol, seed=seed))


def _run(setting: Setting, seed: int, train: dict[str, Any]) -> dict[str, Any]:
    from training.jobs.pipeline import fit_and_evaluate, make_recommender

    prepared = _PREPARED[seed]
    features = prepared.dataset.user_features[
        :, user_columns(prepared.dataset.user_spec, setting.user_fields)
    ]
    neural = setting.kind in ("dae", "cdae", "cddae")
    recommender = make_recommender(
        setting.kind, setting.preset, setting.model or None, train if neural else None
    )
    results, seconds, _ = fit_and_evaluate(recommender, prepared, seed, False, features)
    return {
        "key": setting.key,
        "seed": seed,
        "metrics": {k: v.tolist() for k, v in results.items()},
        "seconds": seconds,
    }


def run_all(
    data: Path,
    settings: list[Setting],
    seeds: list[int],
    train: dict[str, Any] | None = None,
    workers: int = 2,
    progress: bool = True,
    protocol: str = "random",
) -> dict[str, list[dict[str, Any]]]:
    """key -> one result per seed, in seed order; each seed's split of kind `protocol`."""
    results: dict[str, list[dict[str, Any]]] = {s.key: [] for s in settings}
    jobs = [(s, seed) for seed in seeds for s in settings]
    context = get_context("spawn")  # no torch state shared with the parent
    started = time.perf_counter()
    with ProcessPoolExecutor(
        workers, mp_context=context, initializer=_init_worker, initargs=(str(data), seeds, protocol)
    ) as pool:
        futures = [pool.submit(_run, s, seed, train or {}) for s, seed in jobs]
        bar = tqdm(as_completed(futures), total=len(futures), desc="runs", disable=not progress)
        for future in bar:
            result = future.result()
            results[result["key"]].append(result)
            bar.set_postfix_str(result["key"])
    for runs in results.values():
        runs.sort(key=lambda r: r["seed"])
    results["_elapsed"] = [{"seconds": time.perf_counter() - started}]
    return results


def default_workers() -> int:
    return max(1, min(2, os.cpu_count() or 1))
