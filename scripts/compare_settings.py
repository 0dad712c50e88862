"""Settings side by side on the reported split seeds, paired per seed against a reference.

    python scripts/compare_settings.py --data data/ml-100k --settings S.json --seeds 0 1 2 3 4
    python scripts/compare_settings.py --data data/ml-100k --settings S.json --protocol temporal

S.json is a list of {"label", "kind", "model"?, "train"?, "preset"?} (preset "default": the
tuned defaults with `model` over them). The first entry is the reference each other is paired
against: mean P@10 / R@10 / NDCG@10 over the seeds, the relative change, and on how many seeds
the setting is ahead. For figures that decide nothing: settings are chosen on validation
(`cddae tune`), this reports them on the test seeds afterwards.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from training.experiments.paper import Setting, default_workers, run_all

METRICS = ("P", "R", "NDCG")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--settings", type=Path, required=True)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    parser.add_argument("--protocol", choices=["random", "temporal"], default="random")
    parser.add_argument("--workers", type=int, default=default_workers())
    parser.add_argument("--json", type=Path, help="per-seed figures")
    args = parser.parse_args()

    entries = json.loads(args.settings.read_text())
    settings = [
        Setting("compare", e["label"], e["kind"], preset=e.get("preset", "default"),
                model=e.get("model", {}))
        for e in entries
    ]  # fmt: skip
    trains = {e["label"]: e.get("train") for e in entries}
    if any(trains.values()):
        raise SystemExit("per-setting training options are not supported; put them in `model`")
    results = run_all(args.data, settings, args.seeds, workers=args.workers,
                      protocol=args.protocol)  # fmt: skip
    figures = {
        s.label: {m: np.array([r["metrics"][m][9] for r in results[s.key]]) for m in METRICS}
        for s in settings
    }
    seconds = {s.label: float(np.mean([r["seconds"] for r in results[s.key]])) for s in settings}
    reference = settings[0].label
    print(f"{args.protocol} split, seeds {args.seeds}; paired against {reference}")
    print("| setting | P@10 | R@10 | NDCG@10 | ΔP@10 | ΔR@10 | ahead in P@10 / R@10 | fit s |")
    print("|---|---|---|---|---|---|---|---|")
    ref = figures[reference]
    for s in settings:
        f = figures[s.label]
        change = {m: (f[m].mean() / ref[m].mean() - 1) * 100 for m in METRICS}
        ahead = f"{int((f['P'] > ref['P']).sum())} / {int((f['R'] > ref['R']).sum())}"
        print(f"| {s.label} | {f['P'].mean():.4f} | {f['R'].mean():.4f} | "
              f"{f['NDCG'].mean():.4f} | {change['P']:+.1f}% | {change['R']:+.1f}% | "
              f"{ahead} of {len(args.seeds)} | {seconds[s.label]:.0f} |")  # fmt: skip
    if args.json:
        args.json.write_text(json.dumps({
            "protocol": args.protocol, "seeds": args.seeds,
            "figures": {k: {m: v.tolist() for m, v in f.items()} for k, f in figures.items()},
            "seconds": seconds,
        }, indent=1))  # fmt: skip


if __name__ == "__main__":
    main()
