"""The MovieLens family as GroupLens ships it (ml-1m, ml-10m, ml-20m and later), parsed.

Two layouts besides ml-100k's (`loaders.load_grouplens`):
- `::`-separated `.dat` files: ml-1m (`ratings.dat`, `users.dat`, `movies.dat`, latin-1) and
  ml-10m (`ratings.dat`, `movies.dat`, optional `tags.dat`, UTF-8, no user profiles);
- CSV with headers: ml-20m, ml-25m, ml-32m, ml-latest, ml-latest-small (`ratings.csv`,
  `movies.csv` with `movieId,title,genres`, optional `tags.csv`, UTF-8).
Profiles have ml-100k's shapes and field names, so features are encoded the same way: users
`gender`, `age` (a number, bucketed by the service's age bands), `occupation`, `zip`; items
`title`, `year` (from the title) and `genres` (a list). Tag files are accepted but not read: no
feature uses them yet. Ratings files of tens of millions of rows are read as columns, never as
a Python object per row.

This module imports nothing from `loaders`: `loaders.load_dataset` dispatches here, and an
import back would be a circle (tests/test_structure.py). So it returns plain parts
(`MovieLensParts`) that `loaders` wraps into a `RawDataset`; its errors are the readers' one
`DataError` (training.data.errors).
"""

from __future__ import annotations

import csv
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from training.data.columns import CodedInteractions
from training.data.errors import DataError, number

# ml-1m's README: the age codes are each band's lower bound, which is also where the service's
# age bands (service.features.AGE_BAND_EDGES) cut, so the code is kept as the number `age`
# and lands in exactly its documented band.
ML1M_AGE_BANDS = {
    1: "Under 18", 18: "18-24", 25: "25-34", 35: "35-44", 45: "45-49", 50: "50-55", 56: "56+",
}  # fmt: skip
ML1M_OCCUPATIONS = (
    "other or not specified", "academic/educator", "artist", "clerical/admin",
    "college/grad student", "customer service", "doctor/health care", "executive/managerial",
    "farmer", "homemaker", "K-12 student", "lawyer", "programmer", "retired", "sales/marketing",
    "scientist", "self-employed", "technician/engineer", "tradesman/craftsman", "unemployed",
    "writer",
)  # fmt: skip
NO_GENRES = "(no genres listed)"
BOM = b"\xef\xbb\xbf"  # UTF-8's byte-order mark, which some editors put first
MOVIES_CSV_HEADER = ["movieId", "title", "genres"]
DAT_SEP = "::"
# "Toy Story (1995)", "Fawlty Towers (1975-1979)", "Babylon 5" (none): the first year of a
# trailing parenthesis.
_TITLE_YEAR = re.compile(r"\((\d{4})(?:\s*[-\u2013]\s*(?:\d{4})?)?\)\s*$")


@dataclass
class MovieLensParts:
    """What a MovieLens folder holds; `ratings` None: read `ratings.csv` with the generic
    CSV reader (`loaders.load_interactions_csv`, pandas in columns)."""

    source: str
    ratings: CodedInteractions | None
    user_profiles: dict[str, dict[str, Any]] = field(default_factory=dict)
    item_profiles: dict[str, dict[str, Any]] = field(default_factory=dict)


def year_of_title(title: str) -> int | None:
    """The release year MovieLens appends to a title, or None where it has none."""
    found = _TITLE_YEAR.search(title)
    return int(found.group(1)) if found else None


def genre_list(text: str) -> list[str]:
    """`|`-separated genres; "(no genres listed)" means none."""
    return [g for g in text.strip().split("|") if g and g != NO_GENRES]


def _item_profile(title: str, genres: str) -> dict[str, Any]:
    return {"title": title, "year": year_of_title(title), "genres": genre_list(genres)}


# --- Detection ---------------------------------------------------------------------------------


def is_dat_layout(folder: Path) -> bool:
    """ml-1m or ml-10m: `ratings.dat` and `movies.dat` side by side."""
    return (folder / "ratings.dat").is_file() and (folder / "movies.dat").is_file()


def is_csv_layout(folder: Path) -> bool:
    """ml-20m and later: `ratings.csv` next to a `movies.csv` whose header is MovieLens's
    (`movieId,title,genres`); any other `ratings.csv` stays the generic CSV layout."""
    movies = folder / "movies.csv"
    if not ((folder / "ratings.csv").is_file() and movies.is_file()):
        return False
    with movies.open("rb") as handle:  # the header only: a bad byte further on is
        first = handle.readline(4096)  # read_csv_movies's error to name, not a layout miss
    header = first.removeprefix(BOM).decode("utf-8", errors="replace").strip()
    return [h.strip() for h in header.split(",")] == MOVIES_CSV_HEADER


# --- `::` layout (ml-1m, ml-10m) ---------------------------------------------------------------


def _dat_lines(path: Path, encoding: str) -> Iterator[tuple[int, list[str]]]:
    """(line number, `::`-split fields) of every non-blank line. A byte-order mark is dropped
    (else it joins the first id). Read as UTF-8, a line that is not decodes as latin-1 (that
    line only: one stray byte must not garble every other title)."""
    if not path.is_file():
        raise DataError(path, None, "file not found")
    with path.open("rb") as handle:
        for number, raw in enumerate(handle, start=1):
            if number == 1 and raw.startswith(BOM):
                raw = raw[len(BOM) :]
            try:
                line = raw.decode(encoding)
            except UnicodeDecodeError:
                line = raw.decode("latin-1")
            line = line.rstrip("\r\n")
            if line.strip():
                yield number, line.split(DAT_SEP)


def read_dat_ratings(path: Path) -> CodedInteractions:
    """`UserID::MovieID::Rating::Timestamp` as columns (pandas' C parser, ids as codes); a file
    it cannot read cleanly is read again line by line, which names the first bad line."""
    if not path.is_file():
        raise DataError(path, None, "file not found")
    try:
        columns = _dat_ratings_columns(path)
    except (ValueError, OverflowError, IndexError):  # IndexError: pandas on an empty file
        columns = None
    return columns if columns is not None else _dat_ratings_rows(path)


def _dat_ratings_columns(path: Path) -> CodedInteractions | None:
    """Columns, or None when a field is missing or not a finite number.

    The C parser takes one-character separators only; split at ":" a clean line has exactly
    seven fields, the values at 0, 2, 4, 6 (ids and numbers never hold a colon). A line with
    more fields raises; one with fewer leaves a gap that makes this return None."""
    import pandas as pd

    with path.open("rb") as handle:
        if handle.read(len(BOM)) == BOM:
            return None  # the row reader drops it; here it would join the first id
    frame = pd.read_csv(
        path, sep=":", header=None, usecols=[0, 2, 4, 6], names=list(range(7)),
        dtype={0: "category", 2: "category", 4: "float64", 6: "float64"}, engine="c",
        on_bad_lines="error", encoding="latin-1", quoting=csv.QUOTE_NONE,
    )  # fmt: skip
    users, items = _codes(frame[0]), _codes(frame[2])
    ratings, times = frame[4].to_numpy(), frame[6].to_numpy()
    if users is None or items is None:
        return None
    if not (np.isfinite(ratings).all() and np.isfinite(times).all()):
        return None
    return CodedInteractions(*users, *items, ratings, times)


def _codes(column: Any) -> tuple[np.ndarray, np.ndarray] | None:
    """A pandas categorical column as (codes, vocabulary); None if a cell is missing/blank."""
    codes = column.cat.codes.to_numpy()
    vocab = column.cat.categories.to_numpy(dtype=object).astype(str)
    if (codes < 0).any() or any(not v.strip() for v in vocab.tolist()):
        return None
    return codes.astype(np.int64), vocab.astype(object)


def _dat_ratings_rows(path: Path) -> CodedInteractions:
    """The slow reader, for files the column reader refused: names the first bad line."""
    users, items, ratings, times = [], [], [], []
    for n, parts in _dat_lines(path, "latin-1"):
        if len(parts) != 4 or not parts[0].strip() or not parts[1].strip():
            raise DataError(path, n, f"expected UserID::MovieID::Rating::Timestamp, got {parts}")
        users.append(parts[0])
        items.append(parts[1])
        ratings.append(number(path, n, "rating", parts[2]))
        times.append(number(path, n, "timestamp", parts[3]))
    if not users:
        raise DataError(path, None, "no ratings")
    user_vocab, user_codes = np.unique(np.asarray(users, dtype=str), return_inverse=True)
    item_vocab, item_codes = np.unique(np.asarray(items, dtype=str), return_inverse=True)
    return CodedInteractions(
        user_codes.astype(np.int64).ravel(), user_vocab.astype(object),
        item_codes.astype(np.int64).ravel(), item_vocab.astype(object),
        np.asarray(ratings, np.float32), np.asarray(times, np.float64),
    )  # fmt: skip


def read_dat_movies(path: Path, encoding: str) -> dict[str, dict[str, Any]]:
    """`MovieID::Title::Genres`: the id is the first field and the genres the last, the title
    everything between (so a title holding "::" survives)."""
    profiles: dict[str, dict[str, Any]] = {}
    for n, parts in _dat_lines(path, encoding):
        if len(parts) < 3:
            raise DataError(path, n, f"expected MovieID::Title::Genres, found {len(parts)} fields")
        profiles[parts[0]] = _item_profile(DAT_SEP.join(parts[1:-1]), parts[-1])
    return profiles


def read_dat_users(path: Path) -> dict[str, dict[str, Any]]:
    """`UserID::Gender::Age::Occupation::Zip-code` with age and occupation decoded from
    ml-1m's documented codes (an unknown code is an error: the file is not ml-1m's)."""
    profiles: dict[str, dict[str, Any]] = {}
    for n, parts in _dat_lines(path, "latin-1"):
        if len(parts) != 5:
            raise DataError(path, n, f"expected 5 fields, found {len(parts)}")
        user, gender, age, occupation, zip_code = (p.strip() for p in parts)
        profiles[user] = {
            "gender": gender, "age": _age_code(path, n, age),
            "occupation": _occupation_name(path, n, occupation), "zip": zip_code,
        }  # fmt: skip
    return profiles


def _age_code(path: Path, line: int, text: str) -> int:
    code = int(number(path, line, "age", text))
    if code not in ML1M_AGE_BANDS:
        raise DataError(path, line, f"age code {text!r} is not one of {sorted(ML1M_AGE_BANDS)}")
    return code


def _occupation_name(path: Path, line: int, text: str) -> str:
    if not (text.isascii() and text.isdigit() and int(text) < len(ML1M_OCCUPATIONS)):
        raise DataError(path, line, f"occupation code {text!r} is not 0-20")
    return ML1M_OCCUPATIONS[int(text)]


def read_dat_folder(folder: Path) -> MovieLensParts:
    """ml-1m (with `users.dat`: latin-1) or ml-10m (without: UTF-8)."""
    users = folder / "users.dat"
    name, encoding = ("ml-1m", "latin-1") if users.is_file() else ("ml-10m", "utf-8")
    parts = MovieLensParts(f"movielens-{name}:{folder}", read_dat_ratings(folder / "ratings.dat"))
    parts.item_profiles = read_dat_movies(folder / "movies.dat", encoding)
    if users.is_file():
        parts.user_profiles = read_dat_users(users)
    return parts


# --- CSV layout (ml-20m and later) -------------------------------------------------------------


def read_csv_movies(path: Path) -> dict[str, dict[str, Any]]:
    """`movieId,title,genres` (RFC 4180 quoting: titles with commas or doubled quotes)."""
    profiles: dict[str, dict[str, Any]] = {}
    with path.open(encoding="utf-8-sig", newline="") as handle:
        reader = csv.reader(handle)
        try:
            next(reader, None)
            for row in reader:
                if not row or not any(cell.strip() for cell in row):
                    continue
                if len(row) != 3:
                    raise DataError(path, reader.line_num, f"expected 3 fields, found {len(row)}")
                item, title, genres = row
                profiles[item.strip()] = _item_profile(title.strip(), genres)
        except UnicodeDecodeError as error:
            raise DataError(path, None, f"not UTF-8 ({error})") from None
        except csv.Error as error:  # an unterminated quote, a field past the limit
            raise DataError(path, reader.line_num, f"not CSV: {error}") from None
    return profiles


def read_csv_folder(folder: Path) -> MovieLensParts:
    """`movies.csv` parsed; `ratings.csv` (`userId,movieId,rating,timestamp`) is left to the
    generic CSV reader, which reads it as columns."""
    parts = MovieLensParts(f"movielens-csv:{folder}", ratings=None)
    parts.item_profiles = read_csv_movies(folder / "movies.csv")
    return parts


def read_folder(folder: Path) -> MovieLensParts | None:
    """The folder's MovieLens parts, or None when it holds neither MovieLens layout."""
    if is_dat_layout(folder):
        return read_dat_folder(folder)
    if is_csv_layout(folder):
        return read_csv_folder(folder)
    return None
