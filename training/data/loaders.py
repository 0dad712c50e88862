"""Loaders for MovieLens-style data: GroupLens raw files, RecBole atomic files, generic CSV.

Every loader returns a `RawDataset` with raw string ids; `implicit.py` turns it into matrices.
Malformed input raises `DataError` naming the file and line, never a traceback from deep inside.
"""

from __future__ import annotations

import csv
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from training.data import movielens, parquet
from training.data.errors import DataError, number

# GroupLens's u.genre, in flag order (u.item's last 19 columns).
ML100K_GENRES = (
    "unknown", "Action", "Adventure", "Animation", "Children's", "Comedy", "Crime",
    "Documentary", "Drama", "Fantasy", "Film-Noir", "Horror", "Musical", "Mystery", "Romance",
    "Sci-Fi", "Thriller", "War", "Western",
)  # fmt: skip
USER_FIELDS = ("age", "gender", "occupation", "zip")
ITEM_FIELDS = ("title", "year", "genres")


@dataclass
class IdColumn:
    """Raw ids as codes into a vocabulary of unique strings: 8 bytes a row, not a Python string
    per row (a 50M-row file would otherwise take gigabytes in string objects alone)."""

    codes: np.ndarray  # int64, one per row
    vocab: np.ndarray  # object array of unique str

    @classmethod
    def from_values(cls, values: Any) -> IdColumn:
        vocab, codes = np.unique(np.asarray(values, dtype=object).astype(str), return_inverse=True)
        return cls(codes.astype(np.int64).ravel(), vocab.astype(object))

    def values(self) -> np.ndarray:
        return self.vocab[self.codes]


class Interactions:
    """(user, item, rating, timestamp) rows as columns. Small loaders `add` rows one by one;
    large files arrive as whole columns (`extend`). `implicit`: the source had no rating column,
    so every row is a positive whatever the threshold."""

    def __init__(self, implicit: bool = False) -> None:
        self.implicit = implicit
        self._rows: tuple[list, list, list, list] = ([], [], [], [])
        self._columns: list[tuple[IdColumn, IdColumn, np.ndarray, np.ndarray]] = []

    def add(self, user: str, item: str, rating: float, timestamp: float) -> None:
        for column, value in zip(self._rows, (user, item, rating, timestamp), strict=True):
            column.append(value)

    def extend(
        self, users: IdColumn, items: IdColumn, ratings: np.ndarray, timestamps: np.ndarray
    ) -> None:
        self._flush()
        self._columns.append(
            (users, items, ratings.astype(np.float32), timestamps.astype(np.float64))
        )

    def _flush(self) -> None:
        users, items, ratings, times = self._rows
        if users:
            self._columns.append((
                IdColumn.from_values(users), IdColumn.from_values(items),
                np.asarray(ratings, np.float32), np.asarray(times, np.float64),
            ))  # fmt: skip
            self._rows = ([], [], [], [])

    def columns(self) -> tuple[IdColumn, IdColumn, np.ndarray, np.ndarray]:
        """Every row so far as one set of columns (merged once, then kept)."""
        self._flush()
        if len(self._columns) != 1:
            parts = self._columns or [
                (IdColumn.from_values([]), IdColumn.from_values([]), np.zeros(0), np.zeros(0))
            ]
            self._columns = [(
                _merge([p[0] for p in parts]), _merge([p[1] for p in parts]),
                np.concatenate([p[2] for p in parts]).astype(np.float32),
                np.concatenate([p[3] for p in parts]).astype(np.float64),
            )]  # fmt: skip
        return self._columns[0]

    def __len__(self) -> int:
        return sum(len(c[2]) for c in self._columns) + len(self._rows[0])

    @property
    def users(self) -> np.ndarray:
        """Raw user ids, one per row (a Python object per row: small data only)."""
        return self.columns()[0].values()

    @property
    def items(self) -> np.ndarray:
        return self.columns()[1].values()

    @property
    def ratings(self) -> np.ndarray:
        return self.columns()[2]


def _merge(parts: list[IdColumn]) -> IdColumn:
    if len(parts) == 1:
        return parts[0]
    vocab = np.unique(np.concatenate([p.vocab for p in parts]).astype(str)).astype(object)
    codes = [np.searchsorted(vocab.astype(str), p.vocab.astype(str))[p.codes] for p in parts]
    return IdColumn(np.concatenate(codes).astype(np.int64), vocab)


@dataclass
class RawDataset:
    """Ratings plus optional profiles keyed by raw id (user: age, gender, occupation, zip;
    item: title, year, genres as a list)."""

    interactions: Interactions
    user_profiles: dict[str, dict[str, Any]] = field(default_factory=dict)
    item_profiles: dict[str, dict[str, Any]] = field(default_factory=dict)
    source: str = ""


def _rows(path: Path, sep: str, width: int, encoding: str = "utf-8") -> Iterator[tuple[int, list]]:
    """Yield (line number, fields) of a delimited file with at least `width` fields per line."""
    if not path.is_file():
        raise DataError(path, None, "file not found")
    with path.open(encoding=encoding, newline="") as handle:
        for number, line in enumerate(handle, start=1):
            line = line.rstrip("\r\n")
            if not line.strip():
                continue
            parts = line.split(sep)
            if len(parts) < width:
                raise DataError(path, number, f"expected {width} fields, found {len(parts)}")
            yield number, parts


def _year(text: str) -> int | None:
    digits = text.strip()[-4:]
    return int(digits) if len(digits) == 4 and digits.isdigit() else None


# --- GroupLens raw layout ----------------------------------------------------------------------


def load_grouplens(folder: Path) -> RawDataset:
    """`u.data` (tab-separated ratings), optional `u.user` and `u.item` (pipe, latin-1)."""
    inter = Interactions()
    path = folder / "u.data"
    for n, (user, item, rating, ts, *_) in _rows(path, "\t", 4):
        inter.add(user, item, number(path, n, "rating", rating), number(path, n, "timestamp", ts))
    data = RawDataset(inter, source=f"grouplens:{folder}")
    if (folder / "u.user").exists():
        for n, (uid, age, gender, occupation, zip_code, *_) in _rows(folder / "u.user", "|", 5):
            number(folder / "u.user", n, "age", age)
            data.user_profiles[uid] = {
                "age": int(float(age)), "gender": gender, "occupation": occupation,
                "zip": zip_code,
            }  # fmt: skip
    if (folder / "u.item").exists():
        path = folder / "u.item"
        for n, parts in _rows(path, "|", 5 + len(ML100K_GENRES), encoding="latin-1"):
            flags = parts[5 : 5 + len(ML100K_GENRES)]
            if any(f not in ("0", "1") for f in flags):
                raise DataError(path, n, "genre flags must be 0 or 1")
            genres = [g for g, f in zip(ML100K_GENRES, flags, strict=True) if f == "1"]
            data.item_profiles[parts[0]] = {
                "title": parts[1], "year": _year(parts[2]), "genres": genres,
            }  # fmt: skip
    return data


# --- RecBole atomic files ----------------------------------------------------------------------

_RECBOLE_NAMES = {
    "user_id": "user", "item_id": "item", "rating": "rating", "timestamp": "timestamp",
    "age": "age", "gender": "gender", "occupation": "occupation", "zip_code": "zip",
    "movie_title": "title", "release_year": "year", "class": "genres", "genre": "genres",
}  # fmt: skip


def _atomic(path: Path, allowed: set[str]) -> Iterator[tuple[int, dict[str, str]]]:
    """Rows of a RecBole atomic file as dicts keyed by the project's field names."""
    rows = _rows(path, "\t", 1)
    try:
        _, header = next(rows)
    except StopIteration:
        raise DataError(path, 1, "empty file, expected a typed header line") from None
    names = []
    for column in header:
        base = column.split(":", 1)[0]
        name = _RECBOLE_NAMES.get(base)
        if name is None or name not in allowed:
            raise DataError(path, 1, f"unknown column {column!r}")
        names.append(name)
    for n, parts in rows:
        if len(parts) != len(names):
            raise DataError(path, n, f"expected {len(names)} fields, found {len(parts)}")
        yield n, dict(zip(names, parts, strict=True))


def load_recbole(folder: Path) -> RawDataset:
    """`<name>.inter`, optional `<name>.user` and `<name>.item` (tab-separated, typed header)."""
    found = sorted(folder.glob("*.inter"))
    if not found:
        raise DataError(folder, None, "no .inter file")
    path = found[0]
    with path.open(encoding="utf-8") as handle:
        header = [c.split(":", 1)[0] for c in handle.readline().rstrip("\r\n").split("\t")]
    inter = Interactions(implicit="rating" not in header)
    for n, row in _atomic(path, {"user", "item", "rating", "timestamp"}):
        rating = number(path, n, "rating", row["rating"]) if "rating" in row else 1.0
        ts = number(path, n, "timestamp", row["timestamp"]) if "timestamp" in row else float(n)
        inter.add(row["user"], row["item"], rating, ts)
    data = RawDataset(inter, source=f"recbole:{folder}")
    users = path.with_suffix(".user")
    if users.exists():
        for n, row in _atomic(users, {"user", *USER_FIELDS}):
            user = row.pop("user")
            data.user_profiles[user] = _user_profile(users, n, row)
    items = path.with_suffix(".item")
    if items.exists():
        for _, row in _atomic(items, {"item", *ITEM_FIELDS}):
            item = row.pop("item")
            data.item_profiles[item] = _item_profile(row, sep=" ")
    return data


# --- Generic CSV -------------------------------------------------------------------------------

_CSV_ALIASES = {"userid": "user", "user_id": "user", "movieid": "item", "item_id": "item"}


def _csv_header(path: Path, allowed: set[str] | None, required: set[str]) -> list[str]:
    """The header's column names (aliases resolved), checked against what the file may hold
    (`allowed` None: any column, as in a profile file)."""
    if not path.is_file():
        raise DataError(path, None, "file not found")
    with path.open(encoding="utf-8", newline="") as handle:
        header = next(csv.reader(handle), None)
    if header is None:
        raise DataError(path, 1, "empty file, expected a header line")
    names = [_CSV_ALIASES.get(h.strip().lower(), h.strip().lower()) for h in header]
    for name in names:
        if allowed is not None and name not in allowed:
            raise DataError(path, 1, f"unknown column {name!r}; allowed: {sorted(allowed)}")
    if len(set(names)) != len(names):
        raise DataError(path, 1, f"a column named twice in {names}")
    if missing := required - set(names):
        raise DataError(path, 1, f"missing column(s) {sorted(missing)}")
    return names


def _csv(path: Path, allowed: set[str] | None, required: set[str]) -> Iterator[tuple[int, dict]]:
    names = _csv_header(path, allowed, required)
    with path.open(encoding="utf-8", newline="") as handle:
        reader = csv.reader(handle)
        next(reader)
        for row in reader:
            if not row or not any(cell.strip() for cell in row):
                continue
            if len(row) != len(names):
                raise DataError(
                    path, reader.line_num, f"expected {len(names)} fields, found {len(row)}"
                )
            yield reader.line_num, dict(zip(names, (c.strip() for c in row), strict=True))


def load_interactions_csv(path: Path) -> Interactions:
    """`user,item[,rating][,timestamp]` with a header (MovieLens `ratings.csv` also reads).

    Without a rating column (clicks, purchases) every row is a positive. Read as columns by
    pandas' C parser (tens of millions of rows in seconds, ids as codes); a file it cannot read
    cleanly is read again row by row, which names the first bad line."""
    names = _csv_header(path, {"user", "item", "rating", "timestamp"}, {"user", "item"})
    try:
        inter = _read_columns(path, names)
    except (ValueError, OverflowError):
        inter = None
    return inter if inter is not None else _read_rows(path)


def _read_columns(path: Path, names: list[str]) -> Interactions | None:
    """Columns, or None when a cell is missing or not a finite number (the row reader then
    reports where)."""
    import pandas as pd

    dtypes = {"user": "category", "item": "category", "rating": "float64", "timestamp": "float64"}
    frame = pd.read_csv(
        path, header=0, names=names, dtype={n: dtypes[n] for n in names}, engine="c",
        skipinitialspace=True, on_bad_lines="error", encoding="utf-8",
    )  # fmt: skip
    columns = []
    for name in ("user", "item"):
        codes = frame[name].cat.codes.to_numpy()
        if (codes < 0).any():
            return None
        vocab = frame[name].cat.categories.to_numpy(dtype=object).astype(str).astype(object)
        columns.append(IdColumn(codes.astype(np.int64), vocab))
    rows = len(frame)
    ratings = frame["rating"].to_numpy() if "rating" in names else np.ones(rows)
    times = (
        frame["timestamp"].to_numpy()
        if "timestamp" in names
        else np.arange(2, rows + 2, dtype=np.float64)  # the line number, as the row reader
    )
    if not (np.isfinite(ratings).all() and np.isfinite(times).all()):
        return None
    inter = Interactions(implicit="rating" not in names)
    inter.extend(columns[0], columns[1], ratings, times)
    return inter


def _read_rows(path: Path) -> Interactions:
    names = _csv_header(path, {"user", "item", "rating", "timestamp"}, {"user", "item"})
    inter = Interactions(implicit="rating" not in names)
    for n, row in _csv(path, {"user", "item", "rating", "timestamp"}, {"user", "item"}):
        rating = number(path, n, "rating", row["rating"]) if "rating" in row else 1.0
        ts = number(path, n, "timestamp", row["timestamp"]) if "timestamp" in row else float(n)
        inter.add(row["user"], row["item"], rating, ts)
    return inter


def load_csv(ratings: Path, users: Path | None = None, items: Path | None = None) -> RawDataset:
    data = RawDataset(load_interactions_csv(ratings), source=f"csv:{ratings}")
    if (
        users is not None
    ):  # any columns: profile fields are data (training.data.implicit infers them)
        for n, row in _csv(users, None, {"user"}):
            user = row.pop("user")
            data.user_profiles[user] = _user_profile(users, n, row)
    if items is not None:
        for _, row in _csv(items, {"item", *ITEM_FIELDS}, {"item"}):
            item = row.pop("item")
            data.item_profiles[item] = _item_profile(row, sep="|")
    return data


def _user_profile(path: Path, line: int, row: dict[str, str]) -> dict[str, Any]:
    profile: dict[str, Any] = {k: v for k, v in row.items() if v != ""}  # empty: not known
    if row.get("age"):
        profile["age"] = int(number(path, line, "age", row["age"]))
    return profile


def _item_profile(row: dict[str, str], sep: str) -> dict[str, Any]:
    profile: dict[str, Any] = {"title": row.get("title", "")}
    # Real files carry junk years (RecBole's ml-100k.item: "unkonwn", "V"): a year is optional
    # side information, so anything but a four-digit year reads as unknown.
    profile["year"] = _year(row.get("year", ""))
    profile["genres"] = [g for g in row.get("genres", "").split(sep) if g]
    return profile


# --- Layout detection --------------------------------------------------------------------------


def load_dataset(path: Path | str) -> RawDataset:
    """Load a folder in any supported layout, or a single interactions CSV."""
    path = Path(path)
    if path.is_file() and path.suffix == ".parquet":
        return _load_parquet(path)
    if path.is_file():
        return load_csv(path)
    if not path.is_dir():
        raise DataError(path, None, "no such file or folder")
    # GroupLens's layout first, unless only the RecBole files carry the item profiles.
    grouplens, recbole = (path / "u.data").exists(), any(path.glob("*.inter"))
    if grouplens and ((path / "u.item").exists() or not recbole):
        return load_grouplens(path)
    if recbole:
        return load_recbole(path)
    if (shipped := _load_movielens(path)) is not None:
        return shipped
    if parquet.is_parquet_layout(path):
        return _load_parquet(path)
    for name in ("ratings.csv", "interactions.csv"):
        if (path / name).exists():
            users, items = path / "users.csv", path / "items.csv"
            return load_csv(
                path / name, users if users.exists() else None, items if items.exists() else None
            )
    raise DataError(
        path,
        None,
        "no known layout (ml-100k's u.data; RecBole's *.inter; ml-1m/ml-10m's ratings.dat with "
        "movies.dat [and users.dat]; ml-20m and later's ratings.csv with movies.csv; "
        "ratings.csv or interactions.csv; interactions.parquet or interactions/ of part files)",
    )


def _load_movielens(folder: Path) -> RawDataset | None:
    """MovieLens 1M and later as GroupLens ships them (`training.data.movielens` parses), or
    None when the folder holds neither of their layouts."""
    parts = movielens.read_folder(folder)
    if parts is None:
        return None
    if parts.ratings is None:
        inter = load_interactions_csv(folder / "ratings.csv")
    else:
        r = parts.ratings
        inter = Interactions()
        inter.extend(
            IdColumn(r.user_codes, r.user_vocab), IdColumn(r.item_codes, r.item_vocab),
            r.ratings, r.timestamps,
        )  # fmt: skip
    return RawDataset(inter, parts.user_profiles, parts.item_profiles, parts.source)


def _load_parquet(path: Path) -> RawDataset:
    """A Parquet folder (`training.data.parquet` reads it in Arrow batches), or one Parquet
    file of interactions with the default column names."""
    if path.is_file():
        parts = parquet.ParquetParts(parquet.read_interactions(path), f"parquet:{path}")
    else:
        found = parquet.read_folder(path)
        assert found is not None  # the caller checked the layout
        parts = found
    c = parts.interactions
    inter = Interactions(implicit=c.implicit)
    inter.extend(
        IdColumn(c.user_codes, c.user_vocab), IdColumn(c.item_codes, c.item_vocab),
        c.ratings, c.timestamps,
    )  # fmt: skip
    return RawDataset(inter, parts.user_profiles, parts.item_profiles, parts.source)
