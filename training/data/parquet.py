"""Parquet as data teams export it: `interactions.parquet`, or a folder of Spark's part files.

A folder holds `interactions.parquet` or `interactions/` (the `part-*.parquet` files Spark
writes; `_SUCCESS`, `.crc` and other non-Parquet files are skipped) and, optionally, user and
item profiles the same way (`users.parquet` or `users/`, `items.parquet` or `items/`). Column
names default to `user_id`, `item_id`, `rating`, `timestamp`; a `columns.json` beside the data
(`{"user": "uid", "item": "sku", "rating": "stars", "timestamp": "ts"}`) names others. The
mapping lives with the data rather than in a training config because every reader of the folder
(train, retrain, tune, the experiments) then reads it the same way without being told.

Interactions are read in record batches of only the needed columns and turned into codes into a
sorted vocabulary of unique ids by Arrow: no Python object per row. Ids become strings (integer
ids as their digits, string ids unchanged, so "007" keeps its zeros); a missing rating column
means implicit feedback (every row a positive), as in the generic CSV reader; a missing
timestamp column means row order.

pyarrow is imported inside the functions: the service image, which never reads Parquet, has
none. Like `movielens`, this module imports nothing from `loaders` (which dispatches here, and
an import back would be a circle): it returns plain parts; its errors are the readers' one
`DataError` (training.data.errors).
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from training.data.columns import CodedInteractions
from training.data.errors import DataError

DEFAULT_COLUMNS = {
    "user": "user_id",
    "item": "item_id",
    "rating": "rating",
    "timestamp": "timestamp",
}
MAPPING_FILE = "columns.json"
BATCH_ROWS = 1 << 20  # a million rows a batch: bounded memory per step, few steps
_UNIT_PER_SECOND = {"s": 1, "ms": 1_000, "us": 1_000_000, "ns": 1_000_000_000}


@dataclass
class ParquetParts:
    """What a Parquet folder holds, for `loaders` to wrap into a `RawDataset`."""

    interactions: CodedInteractions
    source: str
    user_profiles: dict[str, dict[str, Any]] = field(default_factory=dict)
    item_profiles: dict[str, dict[str, Any]] = field(default_factory=dict)


def table_path(folder: Path, name: str) -> Path | None:
    """`<name>.parquet` (a file, or the folder Spark makes of that name) or the folder
    `<name>/`, whichever exists first."""
    for candidate in (folder / f"{name}.parquet", folder / name):
        if candidate.exists():
            return candidate
    return None


def is_parquet_layout(folder: Path) -> bool:
    return table_path(folder, "interactions") is not None


def _files(path: Path) -> tuple[list[Path], tuple[str, ...]]:
    """The Parquet files of a table and its Hive partition keys: the file itself, a folder's
    `*.parquet` files, or those of its `key=value/…` subfolders as Spark and Hive write them
    (every file under the same keys, in the same order). What starts with `_` or `.` is left
    aside at any depth: Spark's `_SUCCESS`, `_temporary/`, hidden `.crc` checksums."""
    if path.is_file():
        return [path], ()

    def hidden(file: Path) -> bool:
        return any(part.startswith(("_", ".")) for part in file.relative_to(path).parts)

    for inner in path.rglob("*"):
        if inner.is_symlink() and inner.is_dir():  # rglob would pass it by without a word
            raise DataError(inner, None, "a linked folder inside a table is not followed: "
                              "copy or move its part files in")  # fmt: skip
        try:
            str(inner).encode()
        except UnicodeEncodeError:
            raise DataError(path, None, f"a file name that is not UTF-8: {inner.name!r}") from None
    found = sorted(p for p in path.rglob("*.parquet") if p.is_file() and not hidden(p))
    if not found:
        raise DataError(path, None, "no .parquet files in the folder")
    layouts: dict[tuple[str, ...], Path] = {}
    for file in found:
        folders = file.relative_to(path).parts[:-1]
        if bad := [f for f in folders if "=" not in f or f.startswith("=")]:
            raise DataError(file, None, f"subfolder {bad[0]!r} is not a Hive partition "
                              "(key=value): write the table flat or partitioned")  # fmt: skip
        keys = tuple(f.split("=", 1)[0] for f in folders)
        if len(set(keys)) < len(keys):
            raise DataError(file, None, f"a partition key twice on one path: {list(keys)}")
        layouts.setdefault(keys, file)
    if len(layouts) > 1:
        (keys_a, file_a), (keys_b, file_b) = list(layouts.items())[:2]
        raise DataError(path, None, f"part files under different partition keys: {file_a.name} "
                          f"under {list(keys_a)}, {file_b.name} under {list(keys_b)}")  # fmt: skip
    return found, next(iter(layouts))


def read_mapping(folder: Path) -> dict[str, str]:
    """The column names: the defaults, overridden by `columns.json` when the folder has one."""
    path = folder / MAPPING_FILE
    if not path.exists():
        return dict(DEFAULT_COLUMNS)
    try:
        given = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise DataError(path, None, f"not JSON: {error}") from None
    if not isinstance(given, dict) or not all(isinstance(v, str) for v in given.values()):
        raise DataError(path, None, 'expected {"user": "<column>", ...} with string names')
    if unknown := set(given) - set(DEFAULT_COLUMNS):
        raise DataError(path, None, f"unknown key(s) {sorted(unknown)}; allowed: "
                          f"{sorted(DEFAULT_COLUMNS)}")  # fmt: skip
    mapping = {**DEFAULT_COLUMNS, **given}
    if len(set(mapping.values())) < len(mapping):
        raise DataError(path, None, f"two roles name one column: {mapping}")
    return mapping


def _pyarrow() -> Any:
    try:
        import pyarrow
    except ImportError:  # the serving image: training extras not installed
        raise DataError(
            Path("pyarrow"), None, "reading Parquet needs pyarrow: pip install 'cddae[train]'"
        ) from None
    return pyarrow


def _dataset(path: Path) -> Any:
    """The table's files as one dataset, on the schema they share. Each file's own schema is
    read: a column that one part file has and another lacks (the first file's schema alone
    would decide), or parts whose types cannot be unified, is an error naming the file."""
    pa = _pyarrow()
    import pyarrow.dataset as ds
    import pyarrow.parquet as pq

    files, keys = _files(path)
    schemas = []
    for file in files:
        try:
            schemas.append(pq.read_schema(file))
        except pa.ArrowException as error:
            raise DataError(file, None, f"not a readable Parquet file ({error})") from None
    for column in sorted(set.union(*(set(s.names) for s in schemas))):
        lacking = [f for f, s in zip(files, schemas, strict=True) if column not in s.names]
        if lacking:
            raise DataError(lacking[0], None, f"column {column!r} is in other part files, "
                              "not this one: every part must have the same columns")  # fmt: skip
    try:
        schema = pa.unify_schemas(schemas)
    except pa.ArrowException as error:
        raise DataError(path, None, f"the part files' columns differ in type ({error})") from None
    if not keys:
        return ds.dataset([str(f) for f in files], schema=schema, format="parquet")
    if both := [k for k in keys if k in schema.names]:
        raise DataError(path, None, f"{both[0]!r} is both a partition key and a column of the "
                          "files: which value is right?")  # fmt: skip
    # Partition values as text, as the paths hold them: ids keep their leading zeros, and
    # numbers (a rating, a day) are read by the same rules as a column of text.
    keyed = pa.schema([(key, pa.string()) for key in keys])
    return ds.dataset(
        [str(f) for f in files], schema=pa.unify_schemas([schema, keyed]), format="parquet",
        partitioning=ds.partitioning(keyed, flavor="hive"), partition_base_dir=str(path),
    )  # fmt: skip


def _batches(path: Path, dataset: Any, **options: Any) -> Iterator[Any]:
    """The dataset's record batches; Arrow's read errors (a corrupt page, invalid UTF-8, a
    value that does not cast) as errors naming the table."""
    pa = _pyarrow()
    try:
        yield from dataset.to_batches(batch_size=BATCH_ROWS, **options)
    except pa.ArrowException as error:
        raise DataError(path, None, f"cannot read: {error}") from None


def _require(path: Path, schema: Any, mapping: dict[str, str], roles: tuple[str, ...]) -> None:
    """A clear error for a missing column: which file, which column, and how to name yours."""
    for role in roles:
        if mapping[role] not in schema.names:
            raise DataError(
                path, None,
                f"missing {role} column {mapping[role]!r} (columns: {schema.names}); name yours "
                f'in {MAPPING_FILE} beside the data, e.g. {{"{role}": "<column>"}}',
            )  # fmt: skip


def read_folder(folder: Path) -> ParquetParts | None:
    """The folder's Parquet tables, or None when it has no `interactions` table."""
    path = table_path(folder, "interactions")
    if path is None:
        return None
    mapping = read_mapping(folder)
    parts = ParquetParts(read_interactions(path, mapping), f"parquet:{folder}")
    if (users := table_path(folder, "users")) is not None:
        parts.user_profiles = _profiles(users, mapping["user"], _user_profile)
    if (items := table_path(folder, "items")) is not None:
        parts.item_profiles = _profiles(items, mapping["item"], _item_profile)
    return parts


def _profiles(path: Path, id_name: str, shape: Any) -> dict[str, dict[str, Any]]:
    """One profile per id: a table naming an id twice is an error (which row is right?)."""
    profiles: dict[str, dict[str, Any]] = {}
    repeated: list[str] = []
    for key, row in _rows(path, id_name):
        if key in profiles:
            repeated.append(key)
        profiles[key] = shape(row)
    if repeated:
        raise DataError(path, None, f"{len(repeated)} id(s) appear more than once, e.g. "
                          f"{sorted(set(repeated))[:5]}")  # fmt: skip
    return profiles


def read_interactions(path: Path, mapping: dict[str, str] | None = None) -> CodedInteractions:
    """A Parquet file or folder of interactions, in record batches of the needed columns."""
    pa = _pyarrow()
    mapping = mapping or dict(DEFAULT_COLUMNS)
    dataset = _dataset(path)
    named = [r for r in ("rating", "timestamp") if mapping[r] != DEFAULT_COLUMNS[r]]
    _require(path, dataset.schema, mapping, ("user", "item", *named))  # named: must be there
    present = [r for r in ("rating", "timestamp") if mapping[r] in dataset.schema.names]
    roles = ("user", "item", *present)
    users, items, ratings, times = [], [], [], []
    keys = set(dataset.partitioning.schema.names) if dataset.partitioning else set()
    for batch in _batches(path, dataset, columns=[mapping[r] for r in roles]):
        users.append(_ids(path, mapping["user"], batch.column(0)))
        items.append(_ids(path, mapping["item"], batch.column(1)))
        for role, column in zip(present, batch.columns[2:], strict=True):
            if mapping[role] in keys:  # a partition's value: text in a folder name
                column = _parsed(path, mapping[role], column)
            convert = _number if role == "rating" else _seconds
            (ratings if role == "rating" else times).append(convert(path, mapping[role], column))
    user_codes, user_vocab = _encode(
        path, mapping["user"], pa.chunked_array(users, pa.large_string())
    )
    item_codes, item_vocab = _encode(
        path, mapping["item"], pa.chunked_array(items, pa.large_string())
    )
    rows = len(user_codes)
    in_order = np.arange(rows, dtype=np.float64)  # no timestamp: the rows' order
    return CodedInteractions(
        user_codes, user_vocab, item_codes, item_vocab,
        np.concatenate([*ratings, np.zeros(0)]) if "rating" in present else np.ones(rows),
        np.concatenate([*times, np.zeros(0)]) if "timestamp" in present else in_order,
        implicit="rating" not in present,
    )  # fmt: skip


def _ids(path: Path, name: str, column: Any) -> Any:
    """An id column as Arrow strings: integers as their digits, strings as they are."""
    import pyarrow as pa
    import pyarrow.compute as pc

    kind = column.type.value_type if pa.types.is_dictionary(column.type) else column.type
    if not (
        pa.types.is_integer(kind) or pa.types.is_string(kind) or pa.types.is_large_string(kind)
    ):
        raise DataError(path, None, f"id column {name!r} must hold integers or strings, "
                          f"found {column.type}")  # fmt: skip
    if column.null_count:
        raise DataError(path, None, f"id column {name!r} has {column.null_count} empty cell(s)")
    return pc.cast(column, pa.large_string())


def _encode(path: Path, name: str, ids: Any) -> tuple[np.ndarray, np.ndarray]:
    """(codes, sorted vocabulary) computed by Arrow: Python strings for the unique ids only."""
    import pyarrow.compute as pc

    vocab = pc.unique(ids)
    vocab = vocab.take(pc.array_sort_indices(vocab))
    if pc.any(pc.equal(pc.utf8_trim_whitespace(vocab), "")).as_py():
        raise DataError(path, None, f"id column {name!r} has a blank id")
    codes = pc.index_in(ids, value_set=vocab).to_numpy()
    return codes.astype(np.int64), np.asarray(vocab.to_pylist(), dtype=object)


def _parsed(path: Path, name: str, column: Any) -> Any:
    """A partition key's text as the number it spells (`rating=4.5/`)."""
    pa = _pyarrow()
    try:
        return column.cast(pa.float64())
    except pa.ArrowException:
        raise DataError(
            path, None, f"partition {name!r} holds a value that is not a number"
        ) from None


def _number(path: Path, name: str, column: Any) -> np.ndarray:
    """A numeric column as finite float64."""
    import pyarrow as pa

    kind = column.type
    if not (pa.types.is_integer(kind) or pa.types.is_floating(kind) or pa.types.is_decimal(kind)):
        raise DataError(path, None, f"column {name!r} must be numeric, found {kind}")
    return _finite(path, name, column.cast(pa.float64()))


def _seconds(path: Path, name: str, column: Any) -> np.ndarray:
    """A timestamp as seconds since the epoch: numbers as they are, Arrow timestamps (any unit,
    any zone: stored as UTC) and dates converted."""
    import pyarrow as pa

    kind = column.type
    if pa.types.is_timestamp(kind):
        return _ticks(path, name, column.cast(pa.int64()), _UNIT_PER_SECOND[kind.unit])
    if pa.types.is_date32(kind):
        return _ticks(path, name, column.cast(pa.int32()), 1) * 86_400.0
    if pa.types.is_date64(kind):
        return _ticks(path, name, column.cast(pa.int64()), 1_000)
    return _number(path, name, column)


def _ticks(path: Path, name: str, column: Any, per_second: int) -> np.ndarray:
    """Integer ticks as float seconds, split into whole seconds and a fraction first: a
    nanosecond count does not fit a float's 53 bits, its seconds do."""
    if column.null_count:
        raise DataError(path, None, f"column {name!r} has {column.null_count} empty cell(s)")
    ticks = column.to_numpy(zero_copy_only=False).astype(np.int64)
    whole, rest = np.divmod(ticks, per_second)
    return whole.astype(np.float64) + rest / per_second


def _finite(path: Path, name: str, column: Any) -> np.ndarray:
    if column.null_count:
        raise DataError(path, None, f"column {name!r} has {column.null_count} empty cell(s)")
    values = column.to_numpy(zero_copy_only=False).astype(np.float64)
    if not np.isfinite(values).all():
        raise DataError(path, None, f"column {name!r} must be finite")
    return values


def _rows(path: Path, id_name: str) -> Iterator[tuple[str, dict[str, Any]]]:
    """(id, {field: value}) per row of a profile table: profiles are per-id dicts by nature,
    and such tables have one row per user or item, not per interaction."""
    import pyarrow as pa

    dataset = _dataset(path)
    _require(path, dataset.schema, {"id": id_name}, ("id",))
    for batch in _batches(path, dataset):
        ids = _ids(path, id_name, batch.column(id_name)).to_pylist()
        others = {n: batch.column(n) for n in batch.schema.names if n != id_name}
        columns = {
            n: (c.cast(pa.string()) if pa.types.is_temporal(c.type) else c).to_pylist()
            for n, c in others.items()
        }
        for i, key in enumerate(ids):
            yield key, {n: _plain(values[i]) for n, values in columns.items()}


def _plain(value: Any) -> Any:
    """A JSON-ready value, None for unknown (null, NaN, blank)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, list):
        return [str(v) for v in value if v is not None and str(v) != ""]
    if isinstance(value, str) and not value.strip():
        return None
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    return str(value)  # decimals, bytes: as text


def _user_profile(row: dict[str, Any]) -> dict[str, Any]:
    """Every known field (the CSV reader's shape: age a whole number, unknowns left out)."""
    profile = {k: v for k, v in row.items() if v is not None}
    if isinstance(profile.get("age"), (int, float)):
        profile["age"] = int(profile["age"])
    return profile


def _item_profile(row: dict[str, Any]) -> dict[str, Any]:
    """title, year and genres as the CSV reader makes them (genres a list column or `a|b`
    text; a year an integer or four-digit text, else unknown); other fields kept as they are."""
    profile = {k: v for k, v in row.items() if v is not None}
    profile["title"] = str(row.get("title") or "")
    profile["year"] = _year(row.get("year"))
    genres = row.get("genres") or []
    profile["genres"] = genres if isinstance(genres, list) else [
        g for g in str(genres).split("|") if g
    ]  # fmt: skip
    return profile


def _year(value: Any) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        return int(value) if 1000 <= value <= 9999 else None
    digits = str(value or "").strip()[-4:]
    return int(digits) if len(digits) == 4 and digits.isdigit() else None
