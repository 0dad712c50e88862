"""The MovieLens family as GroupLens ships it: each layout on small files written here, loaded,
prepared into features, and fetched from a zip (no network)."""

from __future__ import annotations

import io
import urllib.error
import urllib.request
import zipfile
from pathlib import Path

import pytest

from training import cli
from training.data import fetch
from training.data.loaders import DataError, load_dataset
from training.data.movielens import (
    ML1M_OCCUPATIONS,
    read_dat_ratings,
    year_of_title,
)
from training.data.prepared import ProtocolConfig, prepare

ML1M_MOVIES = (
    "1::Toy Story (1995)::Animation|Children's|Comedy\n".encode("latin-1")
    + "2::Café (1994)::Drama\n".encode("latin-1")
    + b"3::Two::Colons (1999)::Action|Thriller\n"
)
ML1M_USERS = "1::F::1::10::48067\n2::M::56::16::70072\n3::M::25::15::55117\n4::F::45::0::02460\n"


def _ratings_dat(users: int = 4, items: int = 3) -> str:
    """Every user rates every item, ratings 1..5 in turn: some positives for every user."""
    rows = [
        f"{u}::{i}::{(u + i) % 5 + 1}::{978300000 + u * 10 + i}"
        for u in range(1, users + 1)
        for i in range(1, items + 1)
    ]
    return "\n".join(rows) + "\n"


def _write_ml1m(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "ratings.dat").write_text(_ratings_dat())
    (folder / "users.dat").write_text(ML1M_USERS)
    (folder / "movies.dat").write_bytes(ML1M_MOVIES)
    (folder / "README").write_text("not data\n")
    return folder


def test_ml1m_layout_decodes_latin1_codes_and_robust_titles(tmp_path: Path) -> None:
    data = load_dataset(_write_ml1m(tmp_path / "ml-1m"))
    assert data.source.startswith("movielens-ml-1m:")
    assert len(data.interactions) == 12 and set(data.interactions.ratings) <= {1, 2, 3, 4, 5}
    assert data.item_profiles["2"] == {"title": "Café (1994)", "year": 1994, "genres": ["Drama"]}
    assert data.item_profiles["3"] == {
        "title": "Two::Colons (1999)",
        "year": 1999,
        "genres": ["Action", "Thriller"],
    }
    assert data.user_profiles["1"] == {
        "gender": "F",
        "age": 1,
        "occupation": "K-12 student",
        "zip": "48067",
    }
    assert data.user_profiles["2"]["occupation"] == "self-employed"
    assert data.user_profiles["4"]["occupation"] == "other or not specified"
    assert len(ML1M_OCCUPATIONS) == 21 and ML1M_OCCUPATIONS[20] == "writer"


def test_ml1m_profiles_become_features(tmp_path: Path) -> None:
    prepared = prepare(_write_ml1m(tmp_path / "ml-1m"), ProtocolConfig(seed=0))
    ds = prepared.dataset
    assert ds.user_spec.names == ("gender", "occupation", "age")  # zip kept, not encoded
    assert ds.item_spec.names == ("genres", "year")
    # Age codes are their band's lower bound: 1 → "Under 18", 56 → "56+", as ml-100k's ages.
    age = ds.user_spec.fields[2]
    row = list(ds.user_ids).index("2")
    want = ds.user_spec.encode({"gender": "M", "occupation": "self-employed", "age": 56})
    assert ds.user_features[row].tolist() == want.tolist()
    assert age.width == 7 and want[-7:].tolist() == [0, 0, 0, 0, 0, 0, 1]
    item = list(ds.item_ids).index("3")
    assert (
        ds.item_features[item].tolist()
        == ds.item_spec.encode({"genres": ["Action", "Thriller"], "year": 1999}).tolist()
    )
    assert prepared.positives.sum() > 0


def test_ml1m_unknown_codes_are_named(tmp_path: Path) -> None:
    folder = _write_ml1m(tmp_path / "ml-1m")
    (folder / "users.dat").write_text("1::F::1::10::48067\n2::M::30::16::70072\n")
    with pytest.raises(DataError, match=r"users\.dat:2: age code '30'"):
        load_dataset(folder)
    (folder / "users.dat").write_text("1::F::1::21::48067\n")
    with pytest.raises(DataError, match=r"users\.dat:1: occupation code '21'"):
        load_dataset(folder)


def test_dat_ratings_column_and_line_readers_agree_and_bad_lines_are_named(
    tmp_path: Path,
) -> None:
    from training.data.movielens import _dat_ratings_rows

    path = tmp_path / "ratings.dat"
    path.write_text(_ratings_dat(7, 11).replace("::3::", "::3.5::") + "\n")
    fast, slow = read_dat_ratings(path), _dat_ratings_rows(path)
    assert fast.user_vocab[fast.user_codes].tolist() == slow.user_vocab[slow.user_codes].tolist()
    assert fast.item_vocab[fast.item_codes].tolist() == slow.item_vocab[slow.item_codes].tolist()
    assert fast.ratings.tolist() == slow.ratings.tolist() and 3.5 in fast.ratings.tolist()
    assert fast.timestamps.tolist() == slow.timestamps.tolist()
    (tmp_path / "movies.dat").write_text("1::A (2000)::Drama\n")
    path.write_text("1::1::5::978300760\n1::1::five::978300761\n")
    with pytest.raises(DataError, match=r"ratings\.dat:2: rating must be a number"):
        load_dataset(tmp_path)
    path.write_text("1::1::5::978300760\n1::1::5\n")
    with pytest.raises(DataError, match=r"ratings\.dat:2: expected UserID::MovieID"):
        load_dataset(tmp_path)


def test_ml10m_layout_has_no_user_profiles_and_reads_utf8(tmp_path: Path) -> None:
    folder = tmp_path / "ml-10M100K"
    folder.mkdir()
    (folder / "ratings.dat").write_text(_ratings_dat().replace("::2::9", "::4.5::9"))
    (folder / "movies.dat").write_text(
        "1::Amélie (Fabuleux destin d'Amélie Poulain, Le) (2001)::Comedy|Romance\n"
        "2::Pulp Fiction (1994)::Comedy|Crime|Drama\n"
        "3::Untitled::(no genres listed)\n",
        encoding="utf-8",
    )
    (folder / "tags.dat").write_text("1::1::quirky::1139045764\n")
    data = load_dataset(folder)
    assert data.source.startswith("movielens-ml-10m:") and data.user_profiles == {}
    assert 4.5 in data.interactions.ratings.tolist()
    assert data.item_profiles["1"]["title"].startswith("Amélie (Fabuleux")
    assert data.item_profiles["1"]["year"] == 2001
    assert data.item_profiles["3"] == {"title": "Untitled", "year": None, "genres": []}
    ds = prepare(folder, ProtocolConfig(seed=0)).dataset
    assert ds.user_spec.names == () and ds.item_spec.names == ("genres", "year")


def _write_latest_small(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    rows = ["userId,movieId,rating,timestamp"]
    rows += [
        f"{u},{i},{(u + i) % 5 + 0.5},{964982703 + u + i}" for u in range(1, 5) for i in (1, 2, 3)
    ]
    (folder / "ratings.csv").write_text("\n".join(rows) + "\n")
    (folder / "movies.csv").write_text(
        "movieId,title,genres\n"
        '1,"Dick Tracy, ""The"" Return, Part 2 (1990)",Action|Crime\n'
        "2,Babylon 5,(no genres listed)\n"
        "3,Fawlty Towers (1975-1979),Comedy\n",
        encoding="utf-8",
    )
    (folder / "tags.csv").write_text('userId,movieId,tag,timestamp\n1,1,"funny, odd",1\n')
    (folder / "links.csv").write_text("movieId,imdbId,tmdbId\n1,0099422,8592\n")
    return folder


def test_ml_latest_small_csv_layout_with_quoted_titles(tmp_path: Path) -> None:
    data = load_dataset(_write_latest_small(tmp_path / "ml-latest-small"))
    assert data.source.startswith("movielens-csv:")
    assert len(data.interactions) == 12 and data.user_profiles == {}
    assert data.item_profiles["1"] == {
        "title": 'Dick Tracy, "The" Return, Part 2 (1990)',
        "year": 1990,
        "genres": ["Action", "Crime"],
    }
    assert data.item_profiles["2"] == {"title": "Babylon 5", "year": None, "genres": []}
    assert data.item_profiles["3"]["year"] == 1975
    ds = prepare(tmp_path / "ml-latest-small", ProtocolConfig(seed=0)).dataset
    assert ds.item_spec.names == ("genres", "year")
    row = list(ds.item_ids).index("2")
    assert not ds.item_features[row].any()  # no genres, no year: an all-zero profile
    assert ds.item_features[list(ds.item_ids).index("1")].sum() == 3  # two genres, one band


def test_a_ratings_csv_without_movielens_movies_stays_generic(tmp_path: Path) -> None:
    (tmp_path / "ratings.csv").write_text("userId,movieId,rating,timestamp\n7,3,4.5,1\n")
    (tmp_path / "movies.csv").write_text("id,name\n3,Up\n")
    (tmp_path / "items.csv").write_text("item,title,genres,year\n3,Up,Animation,2009\n")
    data = load_dataset(tmp_path)
    assert data.source.startswith("csv:")
    assert data.item_profiles["3"]["genres"] == ["Animation"]


def test_no_known_layout_names_the_movielens_layouts(tmp_path: Path) -> None:
    (tmp_path / "ratings.dat").write_text("1::1::5::1\n")  # no movies.dat: not a layout
    with pytest.raises(DataError, match=r"no known layout .*ratings\.dat with movies\.dat"):
        load_dataset(tmp_path)


@pytest.mark.parametrize(
    ("title", "year"),
    [("Toy Story (1995)", 1995), ("Babylon 5", None), ("Hamlet (2000) ", 2000),
     ("Fawlty Towers (1975–1979)", 1975), ("Ring (Ringu) (1998)", 1998), ("(500) Days", None)],
)  # fmt: skip
def test_year_of_title(title: str, year: int | None) -> None:
    assert year_of_title(title) == year


# --- fetch -------------------------------------------------------------------------------------


def _ml1m_zip(path: Path, folder: str = "ml-1m") -> Path:
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr(f"{folder}/", "")
        archive.writestr(f"{folder}/ratings.dat", _ratings_dat())
        archive.writestr(f"{folder}/users.dat", ML1M_USERS)
        archive.writestr(f"{folder}/movies.dat", ML1M_MOVIES)
        archive.writestr(f"{folder}/README", "GroupLens's readme\n")
    return path


def test_fetch_ml1m_from_a_zip_round_trip(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    source = _ml1m_zip(tmp_path / "ml-1m.zip")
    dest = tmp_path / "cache"
    assert cli.main(["data", "fetch", "ml-1m", "--from", str(source), "--dest", str(dest)]) == 0
    target = dest / "ml-1m"
    assert {p.name for p in target.iterdir()} >= {"ratings.dat", "users.dat", "movies.dat"}
    assert [p.name for p in dest.iterdir()] == ["ml-1m"]  # no staging left behind
    assert "'ratings': 12, 'users': 4, 'items': 3" in capsys.readouterr().out
    assert load_dataset(target).item_profiles["2"]["title"] == "Café (1994)"
    assert cli.main(["data", "fetch", "ml-1m", "--dest", str(dest)]) == 0  # no download needed
    assert "ml-1m already in" in capsys.readouterr().out


def test_fetch_from_an_unpacked_folder(tmp_path: Path) -> None:
    _write_latest_small(tmp_path / "download" / "ml-latest-small")
    target = fetch.fetch_movielens(
        "ml-latest-small", tmp_path / "cache", tmp_path / "download", log=lambda _: None
    )
    assert (target / "movies.csv").is_file() and (target / "tags.csv").is_file()


def test_fetch_refuses_a_corrupt_or_wrong_zip(tmp_path: Path) -> None:
    good = _ml1m_zip(tmp_path / "ml-1m.zip").read_bytes()
    marker = _ratings_dat().encode()[:20]
    broken = tmp_path / "broken.zip"
    broken.write_bytes(good.replace(marker, marker.upper().replace(b"::", b";;"), 1))
    with pytest.raises(DataError, match=r"corrupt member ml-1m/ratings\.dat"):
        fetch.fetch_movielens("ml-1m", tmp_path / "cache", broken, log=lambda _: None)
    with pytest.raises(DataError, match=r"not GroupLens's ml-25m\.zip: missing"):
        fetch.fetch_movielens("ml-25m", tmp_path / "cache", tmp_path / "ml-1m.zip", log=print)
    with pytest.raises(DataError, match=r"ml-1m\.zip: reads as movielens-ml-1m, not .*ml-10m"):
        fetch.fetch_movielens("ml-10m", tmp_path / "cache", tmp_path / "ml-1m.zip", log=print)
    (tmp_path / "junk.zip").write_bytes(b"not a zip")
    with pytest.raises(DataError, match="not a zip file"):
        fetch.fetch_movielens("ml-1m", tmp_path / "cache", tmp_path / "junk.zip", log=print)
    assert list((tmp_path / "cache").iterdir()) == []


def test_fetch_without_network_says_so_and_suggests_from(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    def unreachable(*_args, **_kwargs):
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(urllib.request, "urlopen", unreachable)
    dest = tmp_path / "cache"
    assert cli.main(["data", "fetch", "ml-25m", "--dest", str(dest)]) == 2
    error = capsys.readouterr().err
    assert "could not reach GroupLens" in error and "--from PATH" in error
    assert "https://files.grouplens.org/datasets/movielens/ml-25m.zip" in error
    assert list(dest.iterdir()) == []


class _Response(io.BytesIO):
    def __enter__(self) -> _Response:
        return self

    def __exit__(self, *_args: object) -> None:
        self.close()


def test_a_download_is_checked_against_the_published_md5(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import hashlib

    payload = _ml1m_zip(tmp_path / "ml-1m.zip").read_bytes()
    published = {"md5": hashlib.md5(payload).hexdigest()}
    urls: list[str] = []

    def serve(url: str, timeout: float) -> _Response:
        urls.append(url)
        if url.endswith(".md5"):
            return _Response(f"{published['md5']}  ml-1m.zip\n".encode())
        return _Response(payload)

    monkeypatch.setattr(urllib.request, "urlopen", serve)
    fetch.fetch_movielens("ml-1m", tmp_path / "a", log=lambda _: None)
    assert urls == [fetch.MOVIELENS_ZIPS["ml-1m"].url, fetch.MOVIELENS_ZIPS["ml-1m"].url + ".md5"]
    published["md5"] = "0" * 32
    with pytest.raises(fetch.FetchError, match="does not match GroupLens's 0000"):
        fetch.fetch_movielens("ml-1m", tmp_path / "b", log=lambda _: None)
    assert list((tmp_path / "b").iterdir()) == []


def test_the_command_offers_every_fetchable_set() -> None:
    parser = cli.build_parser()
    args = parser.parse_args(["data", "fetch", "ml-10m"])
    assert args.dataset == "ml-10m"
    sub = next(a for a in parser._actions if a.dest == "command").choices["data"]
    action = next(a for a in sub._actions if a.dest == "action").choices["fetch"]
    choices = next(a for a in action._actions if a.dest == "dataset").choices
    assert set(choices) == {"ml-100k", *fetch.MOVIELENS_ZIPS}


# --- What an outside attack found (hostile or messy files): fixed, kept fixed ------------------


def test_a_byte_order_mark_never_joins_the_first_id(tmp_path: Path) -> None:
    folder = _write_ml1m(tmp_path / "ml-1m")
    for name in ("ratings.dat", "users.dat", "movies.dat"):
        path = folder / name
        path.write_bytes(b"\xef\xbb\xbf" + path.read_bytes())
    data = load_dataset(folder)
    users = set(data.interactions.columns()[0].vocab.tolist())
    assert users == {"1", "2", "3", "4"} and "1" in data.user_profiles
    assert data.item_profiles["1"]["title"] == "Toy Story (1995)"


def test_a_quote_in_ratings_dat_is_a_character_never_a_merge_of_lines(tmp_path: Path) -> None:
    path = tmp_path / "ratings.dat"
    path.write_text('1::1::5::1\n"2::2::3::4\n3::3::3::4\n4::4::4::4"::5::5::5\n')
    with pytest.raises(DataError):  # the readers' one error (training.data.errors)
        read_dat_ratings(path)


def test_empty_ratings_and_broken_movies_files_are_named_never_a_traceback(
    tmp_path: Path,
) -> None:
    folder = _write_ml1m(tmp_path / "empty")
    (folder / "ratings.dat").write_text("\n\n")
    with pytest.raises(DataError, match="no ratings"):
        load_dataset(folder)
    latest = _write_latest_small(tmp_path / "bad-byte")
    (latest / "movies.csv").write_bytes(
        b"movieId,title,genres\n" + "1,Café (1995),Drama\n".encode("latin-1")
    )
    with pytest.raises(DataError, match="not UTF-8"):
        load_dataset(latest)
    quote = _write_latest_small(tmp_path / "quote")
    (quote / "movies.csv").write_text(
        'movieId,title,genres\n1,"Toy (1995),A\n' + "2,Jumanji (1995),B\n" * 20_000
    )
    with pytest.raises(DataError, match=r"movies\.csv"):
        load_dataset(quote)


def test_one_stray_byte_in_ml10m_movies_garbles_no_other_title(tmp_path: Path) -> None:
    folder = tmp_path / "ml-10m"
    folder.mkdir()
    (folder / "ratings.dat").write_text(_ratings_dat(items=3))
    (folder / "movies.dat").write_bytes(
        "1::Café (1995)::Drama\n".encode() + "2::Señor (1991)::Drama\n".encode("latin-1")
        + "3::Niño (1990)::Drama\n".encode()
    )  # fmt: skip
    titles = {k: v["title"] for k, v in load_dataset(folder).item_profiles.items()}
    assert titles == {"1": "Café (1995)", "2": "Señor (1991)", "3": "Niño (1990)"}


def test_fetch_into_an_unusable_destination_is_an_error_message(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    source = _ml1m_zip(tmp_path / "ml-1m.zip")
    assert cli.main(["data", "fetch", "ml-1m", "--from", str(source), "--dest",
                     str(blocker)]) == 2  # fmt: skip
    assert "cddae: error:" in capsys.readouterr().err


def test_fetches_at_once_a_killed_ones_leftovers_and_extra_members(tmp_path: Path) -> None:
    """Two fetches into one folder at once both end with the set there (one waits for the
    other); a staging folder a killed fetch left is removed; a zip's odd extra member is not
    unpacked."""
    import threading

    source = _ml1m_zip(tmp_path / "ml-1m.zip")
    with zipfile.ZipFile(source, "a") as archive:
        archive.writestr("ml-1m/junk.bin", b"\0" * 1000)
    cache = tmp_path / "cache"
    (cache / ".ml-1m-killed" / "ml-1m").mkdir(parents=True)
    outcomes: list[object] = []

    def fetch_once() -> None:
        try:
            outcomes.append(fetch.fetch_movielens("ml-1m", cache, source, log=lambda _: None))
        except Exception as error:  # collected: a failure must show in the assertion
            outcomes.append(error)

    threads = [threading.Thread(target=fetch_once) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert outcomes == [cache / "ml-1m"] * 3
    assert sorted(p.name for p in cache.iterdir()) == ["ml-1m"]
    assert not (cache / "ml-1m" / "junk.bin").exists()
    assert len(load_dataset(cache / "ml-1m").interactions) == 12
