"""Same data, any layout: ml-100k rewritten as ml-1m and ml-25m ship, trained like the copy.

    python scripts/layouts_check.py --data data/ml-100k [--seeds 0 1 2] [--out docs/layouts]

The RecBole copy of ml-100k is read once and written again in GroupLens's ml-1m layout
(`::`-separated latin-1 `ratings.dat`, `users.dat` with ml-1m's age bands and occupation
codes, `movies.dat` with the year in the title) and its ml-20m-and-later layout (`ratings.csv`,
`movies.csv` with quoted titles and `|` genres; those sets have no user profiles). Each copy
goes through `cddae train --model cddae --no-final-fit` per seed, as a user would run it; the
table compares P@10 and R@10 with the RecBole copy's (mean ± standard deviation over seeds).
The ml-1m copy's profiles are coarser than the original's (age bands, ml-1m's 21
occupations), so a small difference there is the data, not the reader.
"""

from __future__ import annotations

import argparse
import csv
import json
import statistics
import subprocess
import sys
from pathlib import Path

from training.data.loaders import load_dataset

BIN = Path(sys.executable).parent
AGE_BANDS = (1, 18, 25, 35, 45, 50, 56)  # ml-1m: a band's lower bound (1: under 18)
OCCUPATION_CODES = {  # ml-100k's names → ml-1m's codes (its README)
    "other": 0, "educator": 1, "librarian": 1, "artist": 2, "administrator": 3, "student": 4,
    "doctor": 6, "healthcare": 6, "executive": 7, "homemaker": 9, "lawyer": 11,
    "programmer": 12, "retired": 13, "marketing": 14, "salesman": 14, "scientist": 15,
    "engineer": 17, "technician": 17, "writer": 20, "none": 19, "entertainment": 0,
}  # fmt: skip


def band(age: int) -> int:
    return max(b for b in AGE_BANDS if b <= max(age, 1))


def titled(profile: dict) -> str:
    year = profile.get("year")
    return f"{profile.get('title', '')} ({year})" if year else profile.get("title", "")


def write_ml1m(data, folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    i = data.interactions
    times = i.columns()[3]
    with (folder / "ratings.dat").open("w", encoding="latin-1") as out:
        for u, m, r, t in zip(i.users, i.items, i.ratings, times, strict=True):
            out.write(f"{u}::{m}::{int(r)}::{int(t)}\n")
    with (folder / "users.dat").open("w", encoding="latin-1") as out:
        for user, p in data.user_profiles.items():
            occupation = OCCUPATION_CODES.get(p.get("occupation", "other"), 0)
            out.write(f"{user}::{p['gender']}::{band(int(p['age']))}::{occupation}::{p['zip']}\n")
    with (folder / "movies.dat").open("w", encoding="latin-1", errors="replace") as out:
        for item, p in data.item_profiles.items():
            out.write(f"{item}::{titled(p)}::{'|'.join(p.get('genres', []))}\n")


def write_ml25m(data, folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    i = data.interactions
    times = i.columns()[3]
    with (folder / "ratings.csv").open("w", newline="", encoding="utf-8") as out:
        rows = csv.writer(out)
        rows.writerow(["userId", "movieId", "rating", "timestamp"])
        for u, m, r, t in zip(i.users, i.items, i.ratings, times, strict=True):
            rows.writerow([u, m, f"{r:.1f}", int(t)])
    with (folder / "movies.csv").open("w", newline="", encoding="utf-8") as out:
        rows = csv.writer(out)
        rows.writerow(["movieId", "title", "genres"])
        for item, p in data.item_profiles.items():
            rows.writerow([item, titled(p), "|".join(p.get("genres", [])) or "(no genres listed)"])


def train(folder: Path, seed: int, out: Path) -> dict:
    result = out / f"{folder.name}-seed{seed}.json"
    subprocess.run(
        [str(BIN / "cddae"), "train", "--model", "cddae", "--data", str(folder), "--seed",
         str(seed), "--no-final-fit", "--quiet", "--json", str(result)],
        check=True, stdout=subprocess.DEVNULL,
    )  # fmt: skip
    meta = json.loads(result.read_text())
    shape = {k: meta["data"][k] for k in ("users", "items", "interactions", "source")}
    return {"P@10": meta["metrics"]["P"][9], "R@10": meta["metrics"]["R"][9], **shape}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", type=Path, default=Path("data/ml-100k"))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--work", type=Path, default=Path("/tmp/cddae-layouts"))
    parser.add_argument("--out", type=Path, default=Path("docs/layouts"))
    args = parser.parse_args()
    data = load_dataset(args.data)
    copies = {"recbole": args.data, "ml-1m layout": args.work / "ml-1m-layout",
              "ml-25m layout": args.work / "ml-25m-layout"}  # fmt: skip
    write_ml1m(data, copies["ml-1m layout"])
    write_ml25m(data, copies["ml-25m layout"])
    args.out.mkdir(parents=True, exist_ok=True)
    results: dict[str, list[dict]] = {}
    for name, folder in copies.items():
        for seed in args.seeds:
            results.setdefault(name, []).append(train(folder, seed, args.work))
            print(f"{name} seed {seed}: {results[name][-1]}", flush=True)
    (args.out / "results.json").write_text(json.dumps(results, indent=1) + "\n")
    print("| copy | read as | users × items × interactions | P@10 | R@10 |\n|---|---|---|---|---|")
    for name, runs in results.items():
        cells = []
        for metric in ("P@10", "R@10"):
            values = [r[metric] for r in runs]
            spread = statistics.stdev(values) if len(values) > 1 else 0.0
            cells.append(f"{statistics.mean(values):.4f} ± {spread:.4f}")
        first = runs[0]
        size = f"{first['users']} × {first['items']} × {first['interactions']}"
        print(f"| {name} | {first['source'].split(':')[0]} | {size} | {' | '.join(cells)} |")


if __name__ == "__main__":
    main()
