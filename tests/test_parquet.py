"""Parquet as data teams export it: one file, Spark's part-file folders, renamed columns."""

import json
from datetime import UTC, datetime
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from training.data.implicit import ImplicitDataset
from training.data.loaders import DataError, load_dataset
from training.data.prepared import ProtocolConfig, prepare


def _table(**columns: list) -> "pa.Table":
    return pa.table(columns)


def _ratings(users: list, items: list, ratings: list, times: list) -> "pa.Table":
    return _table(user_id=users, item_id=items, rating=ratings, timestamp=times)


def test_a_single_file_with_string_ids_keeps_leading_zeros(tmp_path: Path) -> None:
    pq.write_table(
        _ratings(["007", "007", "010"], ["a", "b", "a"], [5, 3, 4], [100, 101, 102]),
        tmp_path / "interactions.parquet",
    )
    data = load_dataset(tmp_path)
    assert data.interactions.users.tolist() == ["007", "007", "010"]
    assert data.interactions.items.tolist() == ["a", "b", "a"]
    assert data.interactions.ratings.tolist() == [5.0, 3.0, 4.0]
    assert data.interactions.columns()[3].tolist() == [100.0, 101.0, 102.0]
    assert not data.interactions.implicit
    assert data.source.startswith("parquet:")


def test_a_parquet_file_given_directly_reads_as_interactions(tmp_path: Path) -> None:
    pq.write_table(_ratings([1, 2], [3, 4], [5.0, 4.5], [1.5, 2.5]), tmp_path / "x.parquet")
    data = load_dataset(tmp_path / "x.parquet")
    assert data.interactions.users.tolist() == ["1", "2"]
    assert data.interactions.items.tolist() == ["3", "4"]
    assert data.interactions.columns()[3].tolist() == [1.5, 2.5]


def test_a_spark_folder_of_part_files(tmp_path: Path) -> None:
    folder = tmp_path / "interactions"
    folder.mkdir()
    pq.write_table(
        _ratings([1, 2], [10, 20], [5, 4], [1, 2]), folder / "part-00000-x.snappy.parquet"
    )
    pq.write_table(_ratings([3], [10], [3], [3]), folder / "part-00001-x.snappy.parquet")
    (folder / "_SUCCESS").write_text("")
    (folder / ".part-00000-x.snappy.parquet.crc").write_bytes(b"\x00crc")
    data = load_dataset(tmp_path)
    pairs = zip(data.interactions.users.tolist(), data.interactions.items.tolist(), strict=True)
    assert sorted(pairs) == [
        ("1", "10"), ("2", "20"), ("3", "10"),
    ]  # fmt: skip
    assert len(data.interactions) == 3


def test_integer_ids_sort_numerically_in_the_id_maps(tmp_path: Path) -> None:
    table = _ratings([10, 9, 100], [2, 10, 1], [5, 5, 5], [1, 2, 3])
    pq.write_table(table, tmp_path / "interactions.parquet")
    ds = ImplicitDataset.from_raw(load_dataset(tmp_path))
    assert list(ds.user_ids) == ["9", "10", "100"] and list(ds.item_ids) == ["1", "2", "10"]


@pytest.mark.parametrize("unit", ["s", "ms", "us", "ns"])
def test_an_arrow_timestamp_becomes_seconds_since_the_epoch(tmp_path: Path, unit: str) -> None:
    when = [datetime(2024, 1, 1, tzinfo=UTC), datetime(2024, 1, 2, 0, 0, 1, tzinfo=UTC)]
    table = _table(
        user_id=["u", "v"], item_id=["i", "i"], rating=[4.0, 5.0],
        timestamp=pa.array(when, pa.timestamp(unit, tz="UTC")),
    )  # fmt: skip
    pq.write_table(table, tmp_path / "interactions.parquet")
    times = load_dataset(tmp_path).interactions.columns()[3].tolist()
    assert times == [w.timestamp() for w in when]


def test_without_a_rating_column_every_row_is_a_positive(tmp_path: Path) -> None:
    pq.write_table(_table(user_id=[1, 1, 2], item_id=["a", "b", "a"]), tmp_path / "x.parquet")
    data = load_dataset(tmp_path / "x.parquet")
    assert data.interactions.implicit
    ds = ImplicitDataset.from_raw(data)  # the default threshold (4) does not apply
    assert ds.positives.toarray().tolist() == [[1, 1], [1, 0]]


def _renamed(folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    table = _table(uid=["1", "1", "2"], sku=["a", "b", "a"], stars=[5, 2, 4], ts=[3, 2, 1])
    pq.write_table(table, folder / "interactions.parquet")


def test_columns_are_renamed_by_columns_json(tmp_path: Path) -> None:
    _renamed(tmp_path)
    mapping = {"user": "uid", "item": "sku", "rating": "stars", "timestamp": "ts"}
    (tmp_path / "columns.json").write_text(json.dumps(mapping))
    data = load_dataset(tmp_path)
    assert data.interactions.users.tolist() == ["1", "1", "2"]
    assert data.interactions.ratings.tolist() == [5.0, 2.0, 4.0]
    assert data.interactions.columns()[3].tolist() == [3.0, 2.0, 1.0]


def test_a_missing_column_names_the_file_the_column_and_the_mapping(tmp_path: Path) -> None:
    _renamed(tmp_path)
    with pytest.raises(DataError, match=r"interactions\.parquet: missing user column 'user_id'.*"
                       r"columns\.json.*\"user\""):  # fmt: skip
        load_dataset(tmp_path)


def test_a_bad_mapping_or_column_type_is_named(tmp_path: Path) -> None:
    _renamed(tmp_path)
    (tmp_path / "columns.json").write_text(json.dumps({"usr": "uid"}))
    with pytest.raises(DataError, match=r"columns\.json: unknown key\(s\) \['usr'\]"):
        load_dataset(tmp_path)
    (tmp_path / "columns.json").write_text(
        json.dumps({"user": "uid", "item": "stars", "rating": "sku"})
    )
    with pytest.raises(DataError, match=r"column 'sku' must be numeric"):
        load_dataset(tmp_path)


def _profiles(folder: Path) -> None:
    users = _table(
        user_id=["1", "2", "3"], age=[24, None, 40], gender=["M", "F", ""],
        occupation=["technician", "other", "writer"],
    )  # fmt: skip
    items = _table(
        item_id=["a", "b"], title=["A (1995)", "B"], year=[1995, None],
        genres=pa.array([["Action", "Comedy"], []], pa.list_(pa.string())),
    )  # fmt: skip
    pq.write_table(users, folder / "users.parquet")
    (folder / "items").mkdir()
    pq.write_table(items, folder / "items" / "part-00000.parquet")
    (folder / "items" / "_SUCCESS").write_text("")


def test_profiles_have_the_csv_readers_shapes(tmp_path: Path) -> None:
    pq.write_table(
        _ratings(["1", "2", "3"], ["a", "b", "a"], [5, 4, 5], [1, 2, 3]),
        tmp_path / "interactions.parquet",
    )
    _profiles(tmp_path)
    data = load_dataset(tmp_path)
    assert data.user_profiles["1"] == {"age": 24, "gender": "M", "occupation": "technician"}
    assert data.user_profiles["3"] == {"age": 40, "occupation": "writer"}  # blank: unknown
    assert data.item_profiles["a"] == {
        "title": "A (1995)", "year": 1995, "genres": ["Action", "Comedy"],
    }  # fmt: skip
    assert data.item_profiles["b"] == {"title": "B", "year": None, "genres": []}


def test_prepare_turns_parquet_profiles_into_features(tmp_path: Path) -> None:
    rows = [(u, i) for u in ("1", "2", "3") for i in ("a", "b")]
    pq.write_table(
        _ratings([u for u, _ in rows], [i for _, i in rows], [5] * 6, list(range(6))),
        tmp_path / "interactions.parquet",
    )
    _profiles(tmp_path)
    prepared = prepare(tmp_path, ProtocolConfig(seed=0))
    dataset = prepared.dataset
    assert list(dataset.user_ids) == ["1", "2", "3"]
    assert {"gender", "occupation", "age"} <= set(dataset.user_spec.names)
    assert set(dataset.item_spec.names) == {"genres", "year"}
    assert prepared.positives.sum() == 6


# --- What an outside attack found: fixed, kept fixed ------------------------------------------


def _parts(folder: Path, *tables: "pa.Table") -> Path:
    (folder / "interactions").mkdir(parents=True)
    for k, table in enumerate(tables):
        pq.write_table(table, folder / "interactions" / f"part-{k:05d}.parquet")
    return folder


def test_a_part_without_a_column_the_others_have_is_named_never_silently_implicit(
    tmp_path: Path,
) -> None:
    folder = _parts(tmp_path / "d", _table(user_id=[1, 2], item_id=[10, 20]),
                    _table(user_id=[3, 4], item_id=[10, 20], rating=[1.0, 5.0]))  # fmt: skip
    with pytest.raises(DataError, match=r"part-00000\.parquet.*'rating' is in other part files"):
        load_dataset(folder)


def test_parts_of_different_id_types_and_corrupt_files_are_named(tmp_path: Path) -> None:
    mixed = _parts(tmp_path / "mixed", _table(user_id=[1, 2], item_id=[1, 2]),
                   _table(user_id=["a", "b"], item_id=[1, 2]))  # fmt: skip
    with pytest.raises(DataError, match="differ in type"):
        load_dataset(mixed)
    corrupt = tmp_path / "corrupt"
    corrupt.mkdir()
    (corrupt / "interactions.parquet").write_bytes(b"PAR1garbage")
    with pytest.raises(DataError, match="not a readable Parquet file"):
        load_dataset(corrupt)


def test_a_mapping_must_name_columns_that_exist_and_one_role_each(tmp_path: Path) -> None:
    folder = tmp_path / "d"
    folder.mkdir()
    pq.write_table(_table(user_id=[1, 2], item_id=[1, 2], rating=[1.0, 2.0]),
                   folder / "interactions.parquet")  # fmt: skip
    (folder / "columns.json").write_text(json.dumps({"rating": "stars"}))
    with pytest.raises(DataError, match="missing rating column 'stars'"):
        load_dataset(folder)
    (folder / "columns.json").write_text(json.dumps({"user": "uid", "item": "uid"}))
    with pytest.raises(DataError, match="two roles name one column"):
        load_dataset(folder)


def test_a_profile_table_naming_an_id_twice_is_refused(tmp_path: Path) -> None:
    folder = tmp_path / "d"
    folder.mkdir()
    pq.write_table(_table(user_id=[1, 2], item_id=[1, 2]), folder / "interactions.parquet")
    pq.write_table(_table(user_id=[1, 1], age=[30, 60]), folder / "users.parquet")
    with pytest.raises(DataError, match="appear more than once"):
        load_dataset(folder)


def _pairs(data) -> list[tuple[str, str, float]]:
    columns = data.interactions
    return sorted(zip(columns.users.tolist(), columns.items.tolist(),
                      columns.ratings.tolist(), strict=True))  # fmt: skip


def test_hive_partitioned_folders_read_as_the_flat_table(tmp_path: Path) -> None:
    """Partitioned by day (Spark's partitionBy, with its _SUCCESS and a _temporary leftover),
    and by user: the same interactions as one flat file; partition values as text (leading
    zeros kept), a rating partition read as a number."""
    table = _table(user_id=["007", "007", "010", "011"], item_id=["a", "b", "a", "c"],
                   rating=[5.0, 3.0, 4.0, 2.0], timestamp=[100, 101, 102, 103],
                   day=["2024-01-01", "2024-01-02", "2024-01-02", "2024-01-03"])  # fmt: skip
    flat = tmp_path / "flat"
    flat.mkdir()
    pq.write_table(table.drop_columns(["day"]), flat / "interactions.parquet")
    expected = _pairs(load_dataset(flat))
    for name, keys in (("by-day", ["day"]), ("by-user", ["user_id"]), ("two", ["day", "rating"])):
        folder = tmp_path / name
        pq.write_to_dataset(table, folder / "interactions", partition_cols=keys)
        (folder / "interactions" / "_SUCCESS").write_text("")
        (folder / "interactions" / "_temporary" / "0").mkdir(parents=True)
        pq.write_table(table, folder / "interactions" / "_temporary" / "0" / "part-9.parquet")
        data = load_dataset(folder)
        assert _pairs(data) == expected, name
        assert sorted(data.interactions.columns()[3].tolist()) == [100.0, 101.0, 102.0, 103.0]


def test_partition_folders_that_do_not_agree_are_named(tmp_path: Path) -> None:
    mixed = tmp_path / "mixed" / "interactions"
    (mixed / "dt=2024-01-01").mkdir(parents=True)
    pq.write_table(_table(user_id=[1], item_id=[1]), mixed / "dt=2024-01-01" / "part-0.parquet")
    pq.write_table(_table(user_id=[2], item_id=[2]), mixed / "part-0.parquet")
    with pytest.raises(DataError, match="under different partition keys"):
        load_dataset(mixed.parent)
    plain = tmp_path / "plain" / "interactions" / "january"
    plain.mkdir(parents=True)
    pq.write_table(_table(user_id=[1], item_id=[1]), plain / "part-0.parquet")
    with pytest.raises(DataError, match="'january' is not a Hive partition"):
        load_dataset(plain.parent.parent)
    clash = tmp_path / "clash" / "interactions" / "user_id=5"
    clash.mkdir(parents=True)
    pq.write_table(_table(user_id=[1], item_id=[1]), clash / "part-0.parquet")
    with pytest.raises(DataError, match="both a partition key and a column"):
        load_dataset(clash.parent.parent)


def test_a_partition_value_that_should_be_a_number_and_is_not_is_named(tmp_path: Path) -> None:
    folder = tmp_path / "bad" / "interactions" / "rating=high"
    folder.mkdir(parents=True)
    pq.write_table(_table(user_id=[1], item_id=[1]), folder / "part-0.parquet")
    with pytest.raises(DataError, match="partition 'rating' holds a value that is not a number"):
        load_dataset(folder.parent.parent)


def test_linked_folders_and_a_key_twice_on_one_path_are_named(tmp_path: Path) -> None:
    outside = tmp_path / "elsewhere" / "day=2"
    outside.mkdir(parents=True)
    pq.write_table(_table(user_id=[2], item_id=[2]), outside / "part-0.parquet")
    table = tmp_path / "linked" / "interactions"
    (table / "day=1").mkdir(parents=True)
    pq.write_table(_table(user_id=[1], item_id=[1]), table / "day=1" / "part-0.parquet")
    (table / "day=2").symlink_to(outside, target_is_directory=True)
    with pytest.raises(DataError, match="linked folder"):
        load_dataset(table.parent)
    twice = tmp_path / "twice" / "interactions" / "day=1" / "day=2"
    twice.mkdir(parents=True)
    pq.write_table(_table(user_id=[1], item_id=[1]), twice / "part-0.parquet")
    with pytest.raises(DataError, match="a partition key twice"):
        load_dataset(twice.parent.parent.parent)
