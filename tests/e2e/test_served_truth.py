"""What the service recommends is true: through the CLI (train, export, promote) and the app,
no user is offered an item they have rated, at any rating, and every list stays full."""

from __future__ import annotations

import csv
import json
from collections import defaultdict
from pathlib import Path

import httpx

from tests.e2e.conftest import Server
from training.cli import main

FAST = {"model": {"hidden": [16]}, "train": {"epochs": 8, "lr": 0.01, "batch_size": 16}}


def _rated(data: Path) -> dict[str, set[str]]:
    rated: dict[str, set[str]] = defaultdict(set)
    with (data / "u.data").open() as handle:
        for user, item, _rating, _ in csv.reader(handle, delimiter="\t"):
            rated[user].add(item)
    return rated


def test_no_user_is_offered_an_item_they_rated(synthetic_dir: Path, tmp_path: Path) -> None:
    config, checkpoint, models = tmp_path / "fast.json", tmp_path / "ckpt", tmp_path / "models"
    config.write_text(json.dumps(FAST))
    assert main(["train", "--model", "cddae", "--data", str(synthetic_dir), "--quiet",
                 "--config", str(config), "--output", str(checkpoint)]) == 0  # fmt: skip
    assert main(["export", "--checkpoint", str(checkpoint), "--models-dir", str(models),
                 "--promote"]) == 0  # fmt: skip
    rated = _rated(synthetic_dir)
    offered_rated_without_exclusion = 0
    server = Server(models, None, tmp_path).start()  # uvicorn, the embedded default
    try:
        with httpx.Client(base_url=server.url, timeout=10) as client:
            assert client.get("/model").json()["served"]["fit_on"] == "all data"
            for user, items in rated.items():
                response = client.get(f"/users/{user}/recommendations", params={"n": 10})
                assert response.status_code == 200, response.text
                offered = [item["item_id"] for item in response.json()["items"]]
                assert len(offered) == 10, user
                assert not set(offered) & items, f"user {user} offered rated {set(offered) & items}"
                everything = client.get(
                    f"/users/{user}/recommendations", params={"n": 10, "exclude_seen": "false"}
                )
                offered_rated_without_exclusion += bool(
                    {i["item_id"] for i in everything.json()["items"]} & items
                )
    finally:
        server.stop()
    # The exclusion is what keeps them out: the model itself ranks rated items high.
    assert offered_rated_without_exclusion > len(rated) // 2
