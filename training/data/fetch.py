"""Fetch MovieLens into a cache folder, checked: ml-100k from GroupLens or the RecBole wheel;
ml-1m, ml-10m, ml-20m, ml-25m, ml-32m and ml-latest-small from GroupLens's zips (or --from).

MovieLens's licence forbids redistribution, so the project never ships the data: it copies it
from a local path (`--from`, or the CDDAE_ML100K environment variable), downloads GroupLens's
zip, or, where that host is out of reach, takes the copy inside the `recbole==1.2.1` wheel
through pip. Whatever the source, ml-100k must hold 100,000 ratings, 943 users, 1,682 items.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import io
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import urllib.request
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
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


# --- The rest of the MovieLens family (ml-1m and later) ----------------------------------------
#
# No pinned checksums: GroupLens publishes `<zip>.md5` next to each zip, which a download checks,
# but the values were not at hand to pin here and a made-up pin would refuse the real file. A
# zip given with --from is checked by its members' CRC-32s (`testzip`), its expected members and
# a full load in the expected layout instead.

MOVIELENS_URL = "https://files.grouplens.org/datasets/movielens/{zip}"
FETCHED_MARKER = ".cddae-fetched.json"
# Every data file the MovieLens family ships (but the tag genome): kept when a zip holds it,
# so that the layout check sees what the zip really is (ml-1m's users.dat in an "ml-10m")
MOVIELENS_FILES = ("ratings.dat", "movies.dat", "users.dat", "tags.dat", "ratings.csv",
                   "movies.csv", "tags.csv", "links.csv")  # fmt: skip


@dataclass(frozen=True)
class MovieLensZip:
    """One of GroupLens's zips: its file name, the folder it unpacks to, the files it must
    hold, and the `source` prefix its layout loads as (training.data.movielens)."""

    zip: str
    folder: str
    required: tuple[str, ...]
    layout: str

    @property
    def url(self) -> str:
        return MOVIELENS_URL.format(zip=self.zip)


_DAT = ("ratings.dat", "movies.dat")
_CSV = ("ratings.csv", "movies.csv")
MOVIELENS_ZIPS = {
    "ml-1m": MovieLensZip("ml-1m.zip", "ml-1m", (*_DAT, "users.dat"), "movielens-ml-1m"),
    "ml-10m": MovieLensZip("ml-10m.zip", "ml-10M100K", _DAT, "movielens-ml-10m"),
    "ml-20m": MovieLensZip("ml-20m.zip", "ml-20m", _CSV, "movielens-csv"),
    "ml-25m": MovieLensZip("ml-25m.zip", "ml-25m", _CSV, "movielens-csv"),
    "ml-32m": MovieLensZip("ml-32m.zip", "ml-32m", _CSV, "movielens-csv"),
    "ml-latest-small": MovieLensZip(
        "ml-latest-small.zip", "ml-latest-small", _CSV, "movielens-csv"
    ),
}


class FetchError(RuntimeError):
    """A data set that could not be fetched; the message says what to do instead."""


def fetch_movielens(
    name: str,
    dest: Path,
    source: Path | None = None,
    log: Callable[[str], None] = print,
    timeout: float = 60.0,
) -> Path:
    """Return a checked `dest/<name>`: unpacked from `source` (GroupLens's zip, or a folder
    holding its files) or from a download; nothing is left half-written."""
    spec = MOVIELENS_ZIPS[name]
    target = dest / name
    if _already_fetched(target, name, spec):
        log(f"{name} already in {target}")
        return target
    dest.mkdir(parents=True, exist_ok=True)
    with _fetch_lock(dest, name):  # one fetch of a set at a time into a folder
        if _already_fetched(target, name, spec):  # the one we waited for fetched it
            log(f"{name} already in {target}")
            return target
        for stale in dest.glob(f".{name}-*"):  # a fetch killed before its cleanup
            shutil.rmtree(stale, ignore_errors=True)
        return _fetch_locked(name, spec, dest, target, source, log, timeout)


@contextlib.contextmanager
def _fetch_lock(dest: Path, name: str) -> Iterator[None]:
    """An exclusive lock on the destination folder itself (flock on its descriptor: no lock
    file is left behind); `name` is for the message while waiting."""
    fd = os.open(dest, os.O_RDONLY)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            print(f"waiting for another fetch into {dest} ({name})")
            fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # releases the lock


def _fetch_locked(
    name: str, spec: MovieLensZip, dest: Path, target: Path, source: Path | None,
    log: Callable[[str], None], timeout: float,
) -> Path:  # fmt: skip
    work = Path(tempfile.mkdtemp(prefix=f".{name}-", dir=dest))
    staging = work / name
    staging.mkdir()
    try:
        if source is None:
            source = work / spec.zip
            _download_movielens(spec, source, timeout, log)
        else:
            log(f"copying {name} from {source}")
        if Path(source).is_dir():
            _copy_movielens_folder(Path(source), staging, spec)
        else:
            _unpack_movielens_zip(Path(source), staging, spec)
        counts = verify_movielens(staging, spec, source)
        (staging / FETCHED_MARKER).write_text(json.dumps({"name": name, "counts": counts}))
        if target.exists():
            shutil.rmtree(target)
        staging.rename(target)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    log(f"{name} ready in {target}: {counts}")
    return target


def _already_fetched(target: Path, name: str, spec: MovieLensZip) -> bool:
    """A previous fetch finished here (its marker and files are there): loading tens of
    millions of ratings again only to say so would take minutes."""
    try:
        marker = json.loads((target / FETCHED_MARKER).read_text())
    except (OSError, ValueError):
        return False
    return marker.get("name") == name and all((target / f).is_file() for f in spec.required)


def _download_movielens(
    spec: MovieLensZip, path: Path, timeout: float, log: Callable[[str], None]
) -> None:
    log(f"downloading {spec.url}")
    try:
        with urllib.request.urlopen(spec.url, timeout=timeout) as response, path.open("wb") as out:
            shutil.copyfileobj(response, out, 1 << 20)
    except OSError as error:
        raise FetchError(
            f"could not reach GroupLens to download {spec.url} ({error}). Download "
            f"{spec.zip} where the internet is reachable and pass it with --from PATH "
            "(the zip, or the folder it unpacks to)."
        ) from None
    _check_published_md5(spec, path, timeout, log)


def _check_published_md5(
    spec: MovieLensZip, path: Path, timeout: float, log: Callable[[str], None]
) -> None:
    """Compare the download with the `.md5` GroupLens publishes next to it; if that file cannot
    be had, say so and rely on the zip's CRCs and the load check."""
    try:
        with urllib.request.urlopen(spec.url + ".md5", timeout=timeout) as response:
            published = response.read().decode("ascii", "replace")
    except OSError as error:
        log(f"no checksum from {spec.url}.md5 ({error}); checking the zip's CRCs only")
        return
    found = re.search(r"\b[0-9a-fA-F]{32}\b", published)
    if found is None:
        log(f"{spec.url}.md5 holds no md5; checking the zip's CRCs only")
        return
    digest = hashlib.md5()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    if digest.hexdigest() != found.group(0).lower():
        raise FetchError(
            f"{spec.zip}: md5 {digest.hexdigest()} does not match GroupLens's {found.group(0)}"
        )


def _unpack_movielens_zip(path: Path, staging: Path, spec: MovieLensZip) -> None:
    """Every file of the zip's data folder into `staging`, after checking the zip is whole."""
    try:
        with zipfile.ZipFile(path) as archive:
            broken = archive.testzip()
            if broken is not None:
                raise DataError(path, None, f"corrupt member {broken} (CRC mismatch)")
            prefix = _data_folder(path, archive.namelist(), spec)
            for member in archive.infolist():
                name = member.filename[len(prefix) :]
                if member.is_dir() or not member.filename.startswith(prefix) or "/" in name:
                    continue
                if not _wanted(name, spec):
                    continue
                with archive.open(member) as source, (staging / name).open("wb") as out:
                    shutil.copyfileobj(source, out, 1 << 20)
    except zipfile.BadZipFile as error:
        raise DataError(path, None, f"not a zip file ({error})") from None


def _wanted(name: str, spec: MovieLensZip) -> bool:
    """The files a data set's folder keeps: what the loaders read, tags and the README; not
    whatever else a zip holds (an odd extra member could be gigabytes)."""
    return name in spec.required or name in MOVIELENS_FILES or name.startswith("README")


def _data_folder(path: Path, names: list[str], spec: MovieLensZip) -> str:
    """The prefix under which the zip holds its files: GroupLens's folder, else the zip's root
    or a single other folder (a zip re-made by hand), as long as every required file is there."""
    for prefix in (f"{spec.folder}/", "", *{n.split("/", 1)[0] + "/" for n in names if "/" in n}):
        if all(prefix + f in names for f in spec.required):
            return prefix
    raise DataError(path, None, f"not GroupLens's {spec.zip}: missing {list(spec.required)}")


def _copy_movielens_folder(source: Path, staging: Path, spec: MovieLensZip) -> None:
    """The files of an already unpacked copy (the folder itself or its GroupLens subfolder)."""
    for folder in (source, source / spec.folder):
        if all((folder / f).is_file() for f in spec.required):
            for path in folder.iterdir():
                if path.is_file() and _wanted(path.name, spec):
                    shutil.copy2(path, staging / path.name)
            return
    raise DataError(source, None, f"no {spec.zip} files here: missing {list(spec.required)}")


def verify_movielens(
    folder: Path, spec: MovieLensZip, origin: Path | str | None = None
) -> dict[str, int]:
    """Load the folder and check it reads in the expected layout with ratings and movies;
    errors name `origin` (what the files came from) rather than a staging folder."""
    data = load_dataset(folder)
    origin = origin or folder
    if not data.source.startswith(spec.layout + ":"):
        layout = data.source.split(":")[0]
        raise DataError(origin, None, f"reads as {layout}, not {spec.layout} ({spec.zip})")
    users, items, _, _ = data.interactions.columns()
    counts = {
        "ratings": len(data.interactions),
        "users": len(users.vocab),
        "items": len(items.vocab),
        "movies": len(data.item_profiles),
    }
    if not counts["ratings"] or not counts["movies"]:
        raise DataError(origin, None, f"no ratings or no movies: {counts}")
    return counts
