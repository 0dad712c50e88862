"""Ask a running service for every user's top-N and count items the user has already rated.

    python scripts/audit_served.py --data data/ml-100k --url http://127.0.0.1:8000 --n 10

Any rating counts as consumed (a film rated 1 is not a recommendation either). Prints users
checked, items returned, already-rated items returned (must be 0) and short lists.
"""

from __future__ import annotations

import argparse
from collections import defaultdict
from pathlib import Path

import httpx

from training.data.loaders import load_dataset


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--url", default="http://127.0.0.1:8000")
    parser.add_argument("--n", type=int, default=10)
    args = parser.parse_args()

    raw = load_dataset(args.data)
    rated: dict[str, set[str]] = defaultdict(set)
    for user, item in zip(raw.interactions.users, raw.interactions.items, strict=True):
        rated[user].add(item)
    returned = already = short = affected = 0
    with httpx.Client(base_url=args.url, timeout=10) as client:
        for user, items in rated.items():
            response = client.get(f"/users/{user}/recommendations", params={"n": args.n})
            response.raise_for_status()
            offered = {item["item_id"] for item in response.json()["items"]}
            returned += len(offered)
            overlap = len(offered & items)
            already += overlap
            affected += bool(overlap)
            short += len(offered) < args.n
    print(f"users checked {len(rated)}, items returned {returned}, already rated {already} "
          f"({affected} users affected), short lists {short}")  # fmt: skip


if __name__ == "__main__":
    main()
