"""A service that never read the catalogue (Redis down since it started) does not know which
items are hidden: it says so (503) when asked whether an item is available, and marks the lists
it still serves as degraded. Once read, the last catalogue answers while the store is down."""

from __future__ import annotations

import shutil
import socket
from pathlib import Path

from tests.inprocess import serving


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_an_unread_catalogue_reports_no_availability(two_small_bundles: Path, tmp_path: Path):
    models = Path(shutil.copytree(two_small_bundles, tmp_path / "models"))
    down = f"redis://127.0.0.1:{_closed_port()}/0"
    with serving(models, tmp_path, redis_url=down) as client:
        model = client.state.recommendations.model()
        item, user = model.bundle.item_ids[0], model.bundle.user_ids[0]
        answer = client.get(f"/items/{item}")
        assert answer.status_code == 503, answer.text
        assert "availability not known" in answer.json()["detail"]
        served = client.get(f"/users/{user}/recommendations?n=3")
        assert served.status_code == 200 and served.json()["degraded"] is True
