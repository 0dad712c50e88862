"""The two yardsticks the service is measured against, served by the service's own server.

    python scripts/bench_apps.py reference --port 8001
    python scripts/bench_apps.py torch --checkpoint runs/cddae --port 8002

- reference: a bare FastAPI endpoint returning a fixed 10-item list: the framework's own cost
  per request, the floor no recommender can go under.
- torch: what a user would otherwise write: the training code's PyTorch model called in the
  handler (a plain `def`, so FastAPI runs it in its thread pool), top-N with numpy.

Both run through `service.api.server.run`, with the settings the service gets.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
from fastapi import FastAPI, HTTPException

from service.api.server import run
from service.config import Settings

FIXED = {
    "model_version": "reference",
    "items": [
        {"item_id": str(i), "score": 0.5, "title": f"Movie {i}", "genres": ["Drama"]}
        for i in range(10)
    ],
    "source": "model",
    "cached": False,
}


def reference_app() -> FastAPI:
    app = FastAPI()

    @app.get("/users/{user_id}/recommendations")
    async def recommendations(user_id: str, n: int = 10) -> dict:
        return FIXED

    return app


def torch_app(checkpoint_dir: Path) -> FastAPI:
    from training.jobs.checkpoint import Checkpoint
    from training.jobs.pipeline import restore

    checkpoint = Checkpoint.load(checkpoint_dir)
    model = restore(checkpoint, served=True)
    users = {u: i for i, u in enumerate(checkpoint.user_ids.tolist())}
    items = checkpoint.item_ids.tolist()
    titles = [checkpoint.item_catalogue.get(i, {}).get("title", "") for i in items]
    app = FastAPI()

    @app.get("/users/{user_id}/recommendations")
    def recommendations(user_id: str, n: int = 10) -> dict:
        index = users.get(user_id)
        if index is None:
            raise HTTPException(404, "unknown user")
        row = checkpoint.positives[index]
        scores = model.score(row, np.array([index]), checkpoint.user_features[index : index + 1])[0]
        scores[checkpoint.seen[index].indices] = -np.inf
        best = np.argsort(-scores)[:n]
        return {
            "items": [
                {"item_id": items[i], "score": float(scores[i]), "title": titles[i]} for i in best
            ]
        }

    return app


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("app", choices=["reference", "torch"])
    parser.add_argument("--checkpoint", type=Path)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--workers", type=int, default=1)
    args = parser.parse_args()
    if args.workers > 1:  # as the service does: each process builds its own app
        if args.app != "reference":
            parser.error("--workers > 1 is for the reference only")
        sys.path.insert(0, str(Path(__file__).resolve().parent))
        run("bench_apps:reference_app", Settings(), "127.0.0.1", args.port, "warning", args.workers)
        return
    app = reference_app() if args.app == "reference" else torch_app(args.checkpoint)
    run(app, Settings(), "127.0.0.1", args.port, "warning")


if __name__ == "__main__":
    main()
