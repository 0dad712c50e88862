"""A data set with its own profile columns: trained, exported and served with those fields."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import numpy as np

from tests.e2e.conftest import Server
from training.cli import main


def _write_dataset(folder: Path) -> Path:
    rng = np.random.default_rng(0)
    folder.mkdir()
    users = 60
    plans = ["free", "pro", "team"]
    rows = ["user,item"]  # clicks: no rating column, every row a positive
    for user in range(users):
        block = user % 3
        for item in rng.choice(np.arange(block * 10, block * 10 + 10), 6, replace=False):
            rows.append(f"u{user},i{item}")
    (folder / "ratings.csv").write_text("\n".join(rows) + "\n")
    profiles = ["user,plan,country,tenure"]
    profiles += [f"u{u},{plans[u % 3]},{'FR' if u % 2 else 'DE'},{u % 7}" for u in range(users)]
    (folder / "users.csv").write_text("\n".join(profiles) + "\n")
    return folder


def test_custom_profile_fields_reach_the_service(tmp_path: Path) -> None:
    data = _write_dataset(tmp_path / "clicks")
    config = tmp_path / "config.json"
    config.write_text(json.dumps({
        "model": {"hidden": [8]}, "train": {"epochs": 3},
        "features": {"user": {"tenure": "ignore"}},
    }))  # fmt: skip
    checkpoint, models = tmp_path / "ckpt", tmp_path / "models"
    assert main(["train", "--model", "cddae", "--data", str(data), "--config", str(config),
                 "--output", str(checkpoint), "--quiet"]) == 0  # fmt: skip
    assert main(["export", "--checkpoint", str(checkpoint), "--models-dir", str(models),
                 "--promote"]) == 0  # fmt: skip
    server = Server(models, None, tmp_path).start()
    try:
        url = server.url
        fields = {f["name"]: f for f in httpx.get(f"{url}/model").json()["profile_fields"]}
        assert set(fields) == {"plan", "country"} and fields["plan"]["kind"] == "categorical"
        created = httpx.put(f"{url}/users/new/profile", json={"plan": "pro", "country": "FR"})
        assert created.status_code == 201, created.text
        listed = httpx.get(f"{url}/users/new/recommendations", params={"n": 3})
        assert listed.status_code == 200 and listed.json()["source"] == "profile"
        scored = httpx.post(f"{url}/score", json={"items": ["i1"], "profile": {"plan": "team"}})
        assert scored.status_code == 200, scored.text
        for bad in ({"plan": "gold"}, {"age": 30}, {"tenure": 3}):
            answer = httpx.put(f"{url}/users/x/profile", json=bad)
            assert answer.status_code == 422 and str(next(iter(bad))) in answer.text, bad
    finally:
        server.stop()
