"""Each loader on small fixture files, malformed ones included: errors name file and line."""

from pathlib import Path

import pytest

from training.data.implicit import ImplicitDataset
from training.data.loaders import DataError, load_dataset


def _write(folder: Path, name: str, text: str, encoding: str = "utf-8") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    path.write_text(text, encoding=encoding)
    return path


def test_grouplens_layout(tmp_path: Path) -> None:
    _write(tmp_path, "u.data", "1\t10\t5\t100\n1\t20\t3\t101\n2\t10\t4\t102\n")
    _write(tmp_path, "u.user", "1|24|M|technician|85711\n2|53|F|other|94043\n")
    flags = "|".join(["0", "1"] + ["0"] * 17)
    _write(tmp_path, "u.item", f"10|Café (1995)|01-Jan-1995||url|{flags}\n", encoding="latin-1")
    data = load_dataset(tmp_path)
    assert data.interactions.users.tolist() == ["1", "1", "2"]
    assert data.interactions.ratings.tolist() == [5.0, 3.0, 4.0]
    assert data.user_profiles["2"] == {
        "age": 53,
        "gender": "F",
        "occupation": "other",
        "zip": "94043",
    }
    assert data.item_profiles["10"] == {"title": "Café (1995)", "year": 1995, "genres": ["Action"]}


def test_recbole_layout(tmp_path: Path) -> None:
    _write(tmp_path, "x.inter", "user_id:token\titem_id:token\trating:float\ttimestamp:float\n"
           "1\t10\t5\t100\n")  # fmt: skip
    _write(tmp_path, "x.user", "user_id:token\tage:token\tgender:token\toccupation:token\n"
           "1\t30\tF\twriter\n")  # fmt: skip
    _write(tmp_path, "x.item", "item_id:token\tmovie_title:token_seq\trelease_year:token\t"
           "class:token_seq\n10\tHeat\tV\tAction Crime\n")  # fmt: skip
    data = load_dataset(tmp_path)
    assert data.interactions.items.tolist() == ["10"]
    assert data.user_profiles["1"]["age"] == 30
    assert data.item_profiles["10"] == {
        "title": "Heat",
        "year": None,
        "genres": ["Action", "Crime"],
    }


def test_generic_csv_with_profiles(tmp_path: Path) -> None:
    _write(tmp_path, "ratings.csv", "userId,movieId,rating,timestamp\n7,3,4.5,1\n7,4,1,2\n")
    _write(tmp_path, "users.csv", "user,gender,age\n7,M,40\n")
    _write(tmp_path, "items.csv", "item,title,genres,year\n3,Up,Animation|Comedy,2009\n")
    data = load_dataset(tmp_path)
    assert data.interactions.ratings.tolist() == [4.5, 1.0]
    assert data.user_profiles["7"] == {"gender": "M", "age": 40}
    assert data.item_profiles["3"]["genres"] == ["Animation", "Comedy"]


@pytest.mark.parametrize(
    ("name", "text", "message"),
    [
        ("u.data", "1\t10\t5\t100\n1\t20\n", "u.data:2: expected 4 fields, found 2"),
        ("u.data", "1\t10\tfive\t100\n", "u.data:1: rating must be a number, got 'five'"),
        ("ratings.csv", "user,item,stars\n1,2,3\n", "ratings.csv:1: unknown column 'stars'"),
        ("ratings.csv", "user,item,rating\n1,2,3\n1,2\n", "ratings.csv:3: expected 3 fields"),
        ("ratings.csv", "user,item,rating\n1,2,3\n1,2,3,4\n", "ratings.csv:3: expected 3 fields"),
        ("ratings.csv", "user,item,rating\n1,2,x\n", "ratings.csv:2: rating must be a number"),
        ("ratings.csv", "user,item,rating\n1,2,nan\n", "ratings.csv:2: rating must be finite"),
        (
            "x.inter",
            "user_id:token\tcolour:token\n1\tred\n",
            "x.inter:1: unknown column 'colour:token'",
        ),
    ],
)
def test_malformed_files_name_file_and_line(
    tmp_path: Path, name: str, text: str, message: str
) -> None:
    _write(tmp_path, name, text)
    with pytest.raises(DataError, match=message.replace("(", r"\(")):
        load_dataset(tmp_path)


def test_missing_profile_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="no known layout"):
        load_dataset(tmp_path)
    with pytest.raises(DataError, match=r"nope\.csv: no such file or folder"):
        load_dataset(tmp_path / "nope.csv")


def test_implicit_view_thresholds_and_keeps_latest_rating(tmp_path: Path) -> None:
    # user 1 rated item 10 twice: 2 then 5 (later) -> positive; item 20 rated 3 -> negative.
    _write(tmp_path, "u.data", "1\t10\t2\t100\n1\t20\t3\t101\n1\t10\t5\t102\n2\t20\t4\t103\n")
    ds = ImplicitDataset.from_raw(load_dataset(tmp_path))
    assert list(ds.user_ids) == ["1", "2"] and list(ds.item_ids) == ["10", "20"]
    assert ds.positives.toarray().tolist() == [[1, 0], [0, 1]]
    assert ds.timestamps.toarray().tolist() == [[102, 0], [0, 103]]


def test_id_maps_sort_numeric_ids_numerically(tmp_path: Path) -> None:
    _write(tmp_path, "u.data", "10\t2\t5\t1\n9\t10\t5\t2\n100\t1\t5\t3\n")
    ds = ImplicitDataset.from_raw(load_dataset(tmp_path))
    assert list(ds.user_ids) == ["9", "10", "100"] and list(ds.item_ids) == ["1", "2", "10"]


def test_csv_without_ratings_makes_every_row_a_positive(tmp_path: Path) -> None:
    _write(tmp_path, "clicks.csv", "user,item\n1,a\n1,b\n2,a\n")
    data = load_dataset(tmp_path / "clicks.csv")
    assert data.interactions.implicit
    ds = ImplicitDataset.from_raw(data)  # the default threshold (4) does not apply
    assert ds.positives.toarray().tolist() == [[1, 1], [1, 0]]


def test_csv_columns_and_rows_read_the_same(tmp_path: Path) -> None:
    from training.data.loaders import _read_rows, load_interactions_csv

    lines = ["user,item,rating,timestamp"]
    lines += [f"u{n % 7},{n % 11:03d},{n % 5 + 0.5},{1000 + n}" for n in range(200)]
    _write(tmp_path, "r.csv", "\n".join(lines) + "\n\n")
    fast, slow = load_interactions_csv(tmp_path / "r.csv"), _read_rows(tmp_path / "r.csv")
    assert fast.users.tolist() == slow.users.tolist()
    assert fast.items.tolist() == slow.items.tolist()  # "007" stays "007"
    assert fast.ratings.tolist() == slow.ratings.tolist()
    assert fast.columns()[3].tolist() == slow.columns()[3].tolist()


def test_profile_fields_are_inferred_from_the_data_and_overridable(tmp_path: Path) -> None:
    from training.data.implicit import fit_user_spec

    _write(tmp_path, "ratings.csv", "user,item,rating\n1,a,5\n2,b,5\n3,a,4\n")
    _write(tmp_path, "users.csv", "user,country,tenure,interests,gender,zip,nickname\n"
           "1,FR,3.5,jazz|film,F,75001,x1\n2,DE,10,film,M,10115,x2\n3,,1,,F,,x3\n")  # fmt: skip
    data = load_dataset(tmp_path)
    assert data.user_profiles["3"] == {"tenure": "1", "gender": "F", "nickname": "x3"}
    spec = fit_user_spec(data.user_profiles)
    kinds = {f.name: f.kind for f in spec.fields}
    assert kinds == {"gender": "categorical", "country": "categorical", "interests": "multi",
                     "nickname": "categorical", "tenure": "numeric"}  # fmt: skip
    assert spec.encode({"country": "DE", "interests": ["jazz"], "tenure": 10}).sum() > 0
    spec = fit_user_spec(data.user_profiles, {"nickname": "ignore", "zip": "categorical"})
    assert "nickname" not in spec.names and "zip" in spec.names
    with pytest.raises(ValueError, match="unknown kind"):
        fit_user_spec(data.user_profiles, {"zip": "colour"})


def test_an_absurd_number_neither_skews_the_fit_nor_swamps_the_input() -> None:
    """Issue 19: one recorded age of 1e9 used to make every other user's age the same z."""
    import numpy as np

    from service.features import Z_LIMIT, fit_field

    ages = [20.0 + k % 40 for k in range(500)] + [1e9]
    spec = fit_field("age", "numeric", ages)
    assert spec.std < 20  # fit on the bulk, not on the outlier
    young, old = np.zeros(1, np.float32), np.zeros(1, np.float32)
    spec.encode_into(young, 20)
    spec.encode_into(old, 59)
    assert old[0] - young[0] > 2  # ages still tell users apart
    absurd = np.zeros(1, np.float32)
    spec.encode_into(absurd, 1e9)
    assert absurd[0] == Z_LIMIT
