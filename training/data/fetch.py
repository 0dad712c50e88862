"""Fetch MovieLens-100K into a cache folder, checked, from GroupLens or from the RecBole wheel.

MovieLens's licence forbids redistribution, so the project never ships the data: it copies it
from a local path (`--from`, or the CDDAE_ML100K environment variable), downloads GroupLens's
zip, or, where that host is out of reach, takes the copy inside the `recbole==1.2.1` wheel
through pip. Whatever the source, the result must hold 100,000 ratings, 943 users, 1,682 items.
"""

from __future__ import annotations

import hashlib
import io
import os
import shutil
import subprocess
import sys
import tempfile
import urllib.request
import zipfile
from collections.abc import Callable
from pathlib import Path

from training.data.loaders import DataError, load_dataset

GROUPLENS_URL = "https://files.grouplens.org/datasets/movielens/ml-100k.zip"
GROUPLENS_FILES = ("u.data", "u.user", "u.item", "u.genre", "u.occupation", "README")
RECBOLE_WHEEL = "recbole==1.2.1"
RECBOLE_SHA256 = "9c9948202011f37eb0a7c6768129313f00d6403ad221ec940d5e2d5d5f33a407"
RECBOLE_PREFIX = "recbole/dataset_example/ml-100k/"
RECBOLE_FILES = ("ml-100k.inter", "ml-100k.user", "ml-100k.item")
EXPECTED = {"ratings": 100_000, "users": 943, "items": 1_682}
ENV_SOURCE = "CDDAE_ML100K"


def verify(folder: Path) -> dict[str, int]:
    """Load the folder and compare its counts with MovieLens-100K's; raise DataError if off."""
    data = load_dataset(folder)
    counts = {
        "ratings": len(data.interactions),
        "users": len(set(data.interactions.users)),
        "items": len(set(data.interactions.items)),
    }
    if counts != EXPECTED:
        raise DataError(folder, None, f"not MovieLens-100K: found {counts}, expected {EXPECTED}")
    return counts


def _copy_local(source: Path, target: Path) -> None:
    names = [*GROUPLENS_FILES, *RECBOLE_FILES]
    found = [source / n for n in names if (source / n).is_file()]
    if not found:
        raise DataError(source, None, "no MovieLens-100K files (u.data or ml-100k.inter)")
    for path in found:
        shutil.copy2(path, target / path.name)


def _download_grouplens(target: Path, timeout: float = 20.0) -> None:
    with urllib.request.urlopen(GROUPLENS_URL, timeout=timeout) as response:
        payload = response.read()
    with zipfile.ZipFile(io.BytesIO(payload)) as archive:
        for name in GROUPLENS_FILES:
            member = f"ml-100k/{name}"
            if member in archive.namelist():
                (target / name).write_bytes(archive.read(member))


def _from_recbole_wheel(target: Path) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run(
            [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", RECBOLE_WHEEL,
             "--dest", tmp],
            check=True,
        )  # fmt: skip
        wheel = next(Path(tmp).glob("recbole-*.whl"))
        digest = hashlib.sha256(wheel.read_bytes()).hexdigest()
        if digest != RECBOLE_SHA256:
            raise DataError(wheel, None, f"sha256 {digest} does not match the pinned one")
        with zipfile.ZipFile(wheel) as archive:
            for name in RECBOLE_FILES:
                (target / name).write_bytes(archive.read(RECBOLE_PREFIX + name))


def fetch_ml100k(
    dest: Path, source: Path | None = None, log: Callable[[str], None] = print
) -> Path:
    """Return a checked `dest/ml-100k`, filling it first if it is missing or incomplete."""
    target = dest / "ml-100k"
    try:
        verify(target)
        log(f"ml-100k already in {target}")
        return target
    except DataError:
        pass
    source = source or (Path(os.environ[ENV_SOURCE]) if os.environ.get(ENV_SOURCE) else None)
    dest.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".ml-100k-", dir=dest))
    try:
        if source is not None:
            log(f"copying ml-100k from {source}")
            _copy_local(Path(source), staging)
        else:
            try:
                log(f"downloading {GROUPLENS_URL}")
                _download_grouplens(staging)
            except OSError as error:
                log(f"GroupLens unreachable ({error}); using the {RECBOLE_WHEEL} wheel")
                _from_recbole_wheel(staging)
        counts = verify(staging)
        if target.exists():
            shutil.rmtree(target)
        staging.rename(target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    log(f"ml-100k ready in {target}: {counts}")
    return target
